"""What needs a human, what waits, and the odd states: reserved names without a new name, foreign snapshot names,
a foreign ``.v2-upgrade`` dataset, a double registration, an unshared pool, a stopped daemon, the hypervisor
unmount, the prerequisites, and the command line with its exit codes and prompt."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.upgrade.conftest import Env, FakeDaemon
from tests.upgrade.layout import all_names, assert_v2_layout, fetch, record, sh, snapshot_guids, zfs_set_shared
from vpsadmind.config import DbConfig, TransferConfig
from vpsadmind.upgrade import ExitCode, Status
from vpsadmind.upgrade.nas import mounted_paths

pytestmark = pytest.mark.timeout(300)


def _rows(env: Env, step: str, status: Status) -> list[str]:
    """``object: found`` of the rows of ``step`` with ``status`` in the last run's report."""
    lines = env.output.split("\napplying\n")[-1].split("== ")
    block = next((b for b in lines if b.startswith(step + ":")), "")
    word = {Status.TODO: "would do"}.get(status, status.value)
    return [line.strip() for line in block.splitlines()[2:] if line.rstrip().endswith(word)]


async def test_reserved_names_wait_for_a_new_name(env: Env) -> None:
    before = record(env.node)
    first = await env.run(rename_private=None, sharenfs_options=None)  # shared pools: see layout.build_zfs
    assert first.code == ExitCode.HUMAN, env.output
    assert any("nas/1001/private" in r for r in _rows(env, "reserved-names", Status.HUMAN))
    assert any("nas/1001 " in r and "child dataset is mounted at private/" in r
               for r in _rows(env, "nas", Status.HUMAN))
    assert sh("zfs", "list", "-H", "-o", "name", f"{env.node.nas}/1001/private").strip()
    assert sorted(os.listdir(sh("zfs", "get", "-H", "-o", "value", "mountpoint", f"{env.node.nas}/1001").strip())) \
        == ["data.txt", "private"]  # untouched: the child dataset is in the way
    second = await env.run()
    assert second.code == ExitCode.DONE, env.output
    assert_v2_layout(env.node, before)


async def test_unknown_snapshot_names_leave_the_backup_alone(env: Env) -> None:
    ds = f"{env.node.backup}/101"
    sh("zfs", "snapshot", f"{ds}@emergency-migration-p1")
    snaps = snapshot_guids(ds)
    result = await env.run(steps=["backups"])
    assert result.code == ExitCode.HUMAN, env.output
    assert any("@emergency-migration-p1 is not a v1.22 backup name" in r for r in _rows(env, "backups", Status.HUMAN))
    assert snapshot_guids(ds) == snaps  # not even the backup- names were renamed
    branch = f"{env.node.backup}/102/tree.0/branch-2015-07-01T02:00:00.0"  # the others were done
    assert [n for n, _ in snapshot_guids(branch)] == ["2015-07-01T02:00:00", "2015-07-02T02:00:00"]


async def test_a_foreign_temporary_dataset_needs_a_human(env: Env) -> None:
    sh("zfs", "create", f"{env.node.backup}/101.v2-upgrade")
    result = await env.run(steps=["backups"])
    assert result.code == ExitCode.HUMAN, env.output
    assert any("101.v2-upgrade exists, but not as this tool leaves it" in r
               for r in _rows(env, "backups", Status.HUMAN))
    assert snapshot_guids(f"{env.node.backup}/101")[0][0].startswith("backup-")


async def test_double_registration_is_reported(env: Env) -> None:
    async with env.db.cursor() as cur:
        await cur.execute("INSERT INTO dataset_trees (dataset_in_pool_id, `index`, head, confirmed) "
                          "VALUES (104, 0, 0, 1)")
    result = await env.run(apply=False, steps=["backups"])
    assert result.code == ExitCode.HUMAN
    assert any("2 trees with index 0" in r for r in _rows(env, "backups", Status.HUMAN))


async def test_an_unshared_pool_needs_export_options(env: Env) -> None:
    result = await env.run(steps=["sharenfs"], sharenfs_options=None)
    assert result.code == ExitCode.HUMAN, env.output
    assert len([r for r in _rows(env, "sharenfs", Status.HUMAN) if "sharenfs=off: not shared" in r]) == 2


async def test_sharenfs_lets_in_the_missing_nodes(env: Env) -> None:
    zfs_set_shared("sharenfs=rw=@10.1.0.1/32,no_root_squash", env.node.nas)
    zfs_set_shared("sharenfs=rw=@10.1.0.0/31", env.node.backup)
    zfs_set_shared("sharenfs=off", f"{env.node.nas}/1002")
    check = await env.run(apply=False, steps=["sharenfs"], sharenfs_options=None)
    assert check.code == ExitCode.PENDING, env.output
    assert any("sharenfs=off set locally" in r for r in _rows(env, "sharenfs", Status.NOTE))
    result = await env.run(steps=["sharenfs"], sharenfs_options=None)
    assert result.code == ExitCode.DONE, env.output
    value = sh("zfs", "get", "-H", "-o", "value", "sharenfs", env.node.nas).strip()
    assert value == "rw=@10.1.0.1/32:@10.1.0.2/32,no_root_squash"  # the mailer is not a node
    assert sh("zfs", "get", "-H", "-o", "value", "sharenfs", env.node.backup).strip() == \
        "rw=@10.1.0.0/31:@10.1.0.2/32"
    assert sh("zfs", "get", "-H", "-o", "value", "sharenfs", f"{env.node.nas}/1002").strip() == "off"
    assert (await env.run(steps=["sharenfs"], sharenfs_options=None)).code == ExitCode.NOTHING


async def test_firewall_waits_for_the_daemon(env: Env) -> None:
    await env.daemon.stop()
    result = await env.run(steps=["firewall"])
    assert result.code == ExitCode.PENDING, env.output
    assert any("daemon not running" in r for r in _rows(env, "firewall", Status.PENDING))
    await env.daemon.start()
    assert (await env.run(steps=["firewall"])).code == ExitCode.DONE
    assert [r["command"] for r in env.daemon.requests][-1] == "reinit"
    assert (await env.run(steps=["firewall"])).code == ExitCode.NOTHING


async def test_hypervisor_unmounts_nas_mounts_of_its_vpses(env: Env) -> None:
    async with env.db.cursor() as cur:
        await cur.execute("INSERT INTO vps (vps_id, m_id, vps_server, vps_config, object_state) "
                          "VALUES (201, 1, 1, '', 0)")
        await cur.execute("INSERT INTO mounts (vps_id, dst, mount_opts, umount_opts, mount_type, dataset_in_pool_id,"
                          " mode, object_state) VALUES (201, '/mnt/my nas', '', '', 'nfs', 1000, 'rw', 0), "
                          "(201, '/mnt/gone', '', '', 'nfs', 1020, 'rw', 0)")
    source = env.tmp / "export"
    target = Path(env.cfg.vz.vz_root) / "root" / "201" / "mnt" / "my nas"
    source.mkdir()
    target.mkdir(parents=True)
    sh("mount", "--bind", str(source), str(target))
    try:
        steps = ["reserved-names", "nas"]  # nas/1001 waits for its child dataset named private to be renamed
        check = await env.run(apply=False, steps=steps)
        assert check.code == ExitCode.PENDING
        assert any(f"umount -f {target}" in r for r in _rows(env, "nas", Status.TODO))
        assert any("/mnt/gone: not mounted" in r for r in _rows(env, "nas", Status.OK))
        result = await env.run(steps=steps)
        assert result.code == ExitCode.DONE, env.output
        assert str(target) not in mounted_paths()
    finally:
        if str(target) in mounted_paths():
            sh("umount", str(target), check=False)


async def test_prerequisites(env: Env) -> None:
    env.cfg = replace(env.cfg, transfer=TransferConfig(protocol="nc"), bin={**env.cfg.bin, "nc": "/nonexistent/nc"})
    result = await env.run(steps=["prerequisites"])
    assert result.code == ExitCode.HUMAN
    assert any("/nonexistent/nc not found" in r for r in _rows(env, "prerequisites", Status.HUMAN))
    assert os.path.isdir(env.cfg.mounts_dir)  # made although nc is missing


async def test_no_database_blocks_every_step(env: Env) -> None:
    env.cfg = replace(env.cfg, db=DbConfig(hosts=["127.0.0.1:1"], user="x", password="x", name="x",
                                           connect_timeout=1.0))
    names = all_names(env.node.pool)
    result = await env.run()
    assert result.code == ExitCode.HUMAN
    assert "skipped: the prerequisites are not met" in env.output
    assert all_names(env.node.pool) == names


def _config_file(env: Env, db_settings: Any) -> Path:
    path = env.tmp / "vpsadmind.yml"
    path.write_text(yaml.safe_dump({
        "db": {"hosts": env.cfg.db.hosts, "user": env.cfg.db.user, "pass": env.cfg.db.password,
               "name": env.cfg.db.name},
        "vpsadmin": {"server_id": 1, "mounts_dir": env.cfg.mounts_dir},
        "vz": {"vz_root": env.cfg.vz.vz_root},
        "remote": {"socket": env.cfg.remote_socket},
        "journal": {"path": str(env.tmp / "journal")},
        "mqtt": {"enabled": False},
    }))
    return path


async def _cli(*args: str, stdin: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vpsadmind.cli", "upgrade", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_command_line(env: Env, db_settings: Any) -> None:
    before = record(env.node)
    cfg = str(_config_file(env, db_settings))
    common = ["-c", cfg, "--state-file", env.state_file, "--rename-private", "private-data", "--register-db",
              "--sharenfs-options", "no_root_squash"]
    code, out = await _cli("check", *common)
    assert code == ExitCode.PENDING and "would do" in out and "work remains (exit 4)" in out, out
    code, out = await _cli("apply", *common, stdin=b"n\n")
    assert code == ExitCode.PENDING and "nothing changed" in out, out
    code, out = await _cli("apply", *common, stdin=b"")  # no terminal, no answer: no change
    assert code == ExitCode.PENDING and "nothing changed" in out, out
    code, out = await _cli("apply", *common, stdin=b"yes\n")
    assert code == ExitCode.DONE and "done" in out, out
    assert_v2_layout(env.node, before)
    code, out = await _cli("apply", "--yes", *common)
    assert code == ExitCode.NOTHING and "apply: nothing to do, 0 operations (exit 0)" in out, out
    code, out = await _cli("apply", "--step", "nonsense", "-c", cfg)
    assert code == ExitCode.USAGE, out
    code, out = await _cli("check", "-c", str(env.tmp / "missing.yml"))
    assert code == ExitCode.FAILED and "does not exist" in out, out
    with contextlib.suppress(Exception):
        assert await fetch(env.db, "SELECT 1 AS one") == [{"one": 1}]


__all__ = ["FakeDaemon"]
