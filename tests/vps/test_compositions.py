"""The API's VPS chains of contract 5.6 on one node: create, reinstall, clone (the dataset copied with LocalSend
instead of a transfer between nodes) and restore, through a real engine, MariaDB, zfs-fuse and the fake vzctl.
Each ends in the expected conf files, datasets and rows; each also fails halfway (the failing probe appended) and
rolls back to the state before the chain.

Private areas live in the pool's datasets (``<pool mountpoint>/<veid>/private``), as v2.0's
``servers.ve_private`` on a ZFS hypervisor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch
from tests.transfer.conftest import take_snapshot, tree_digest
from tests.vps.conftest import TEMPLATE, FakeVz, Pool, conf, errors, run, running
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.transfers import Snap

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAIL = (90001, {"fail": True})
SAMPLE = 'PHYSPAGES="0:512M"\nSWAPPAGES="0:256M"\nNUMPROC="400"\n'
FEATURES_OFF = {n: {"enabled": False, "original": False} for n in ("iptables", "tun", "fuse", "nfs", "ppp", "bridge")}


def steps(builder: ChainBuilder, vps: int, *items: tuple[int, dict[str, Any]]) -> ChainBuilder:
    for code, params in items:
        builder.append(code, server=1, vps=vps, params=params)
    return builder


def create_steps(pool: Pool, vps: int = 101, hostname: str = "ct101") -> list[tuple[int, dict[str, Any]]]:
    """VPS create: 5201 -> 3001 -> 2008 -> NoOp (IP confirmations) -> 2005 -> 2003 -> 1001."""
    return [
        (5201, {"pool_fs": pool.name, "name": str(vps), "options": {"refquota": 2048}, "create_private": True}),
        (3001, {"hostname": hostname, "template": TEMPLATE, "onboot": True}),
        (2008, {"configs": ["vswap-512m"], "pool_fs": pool.name, "dataset_name": str(vps)}),
        (10001, {}),
        (2005, {"nameserver": ["192.0.2.53"], "original": []}),
        (2003, {"resources": [{"resource": "cpu", "value": 2, "original": None},
                              {"resource": "memory", "value": 1024, "original": None}]}),
        (1001, {"onboot": True}),
    ]


def files_of(fakevz: FakeVz, vps: int) -> list[str]:
    """This VPS's files in the conf dir."""
    return sorted(p.name for p in fakevz.conf_dir.iterdir() if p.name.startswith(f"{vps}."))


async def create_vps(db: Any, cfg: Config, fakevz: FakeVz, pool: Pool, vps: int = 101) -> Path:
    (fakevz.conf_dir / "ve-vswap-512m.conf-sample").write_text(SAMPLE)
    state, rows = await run(db, cfg, steps(ChainBuilder("create"), vps, *create_steps(pool, vps)))
    assert state["state"] == ChainState.DONE, errors(rows)
    return pool.mounted_path(f"{pool.name}/{vps}") / "private"


async def test_create(db: Any, zfs_private: Config, fakevz: FakeVz, pool: Pool) -> None:
    (fakevz.conf_dir / "ve-vswap-512m.conf-sample").write_text(SAMPLE)
    before = pool.state()
    state, rows = await run(db, zfs_private, steps(ChainBuilder("create"), 101, *create_steps(pool), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert [r["t_done"] for r in rows[:-1]] == [2] * 7, errors(rows)
    assert pool.state() == before, "the dataset is gone"
    assert files_of(fakevz, 101) == ["101.conf.destroyed"] and not (fakevz.root / "vz/root/101").exists()
    assert not running(fakevz)
    (status,) = await fetch(db, "SELECT vps_up FROM vps_status WHERE vps_id = 101")
    assert status["vps_up"] == 0

    private = await create_vps(db, zfs_private, fakevz, pool)
    c = conf(fakevz)
    assert c["VE_PRIVATE"] == str(private) and c["HOSTNAME"] == "ct101" and c["OSTEMPLATE"] == TEMPLATE
    assert (c["NAMESERVER"], c["CPUS"], c["CPULIMIT"], c["ONBOOT"]) == ("192.0.2.53", "2", "200", "yes")
    assert (c["PHYSPAGES"], c["SWAPPAGES"], c["NUMPROC"], c["ORIGIN_SAMPLE"]) == ("0:262144", "0:65536", "400",
                                                                                  "vswap-512m")
    assert (private / "sbin/init").is_file() and running(fakevz)
    assert pool.prop(f"{pool.name}/101", "refquota") == (str(2048 * 1024 * 1024), "local")
    (status,) = await fetch(db, "SELECT vps_up, vps_nproc, vps_vm_used_mb FROM vps_status WHERE vps_id = 101")
    assert status == {"vps_up": 1, "vps_nproc": 12, "vps_vm_used_mb": 128}   # 1 GiB, the fake uses an eighth


def reinstall_steps(pool: Pool) -> list[tuple[int, dict[str, Any]]]:
    """Stop -> destroy the dataset -> 3002 -> 5201 -> 3001 -> 2008 -> 2003 -> 2006 per IP -> 2005 -> Start."""
    create = dict(create_steps(pool, hostname="reinstalled"))
    return [(1002, {}), (5203, {"pool_fs": pool.name, "name": "101"}), (3002, {}), (5201, create[5201]),
            (3001, create[3001]), (2008, create[2008]), (2003, create[2003]),
            (2006, {"addr": "192.0.2.10", "version": 4, "register": False}), (2005, create[2005]), (1001, {})]


async def test_reinstall(db: Any, zfs_private: Config, fakevz: FakeVz, pool: Pool) -> None:
    private = await create_vps(db, zfs_private, fakevz, pool)
    (private / "root-file").write_text("user data\n")
    before, conf_before = pool.state(), (fakevz.conf_dir / "101.conf").read_text()

    # fails after the stop, before anything irreversible: the VPS runs again with its data
    state, rows = await run(db, zfs_private, steps(ChainBuilder("reinstall"), 101, reinstall_steps(pool)[0], FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert running(fakevz) and (private / "root-file").read_text() == "user data\n"
    assert pool.state() == before and (fakevz.conf_dir / "101.conf").read_text() == conf_before

    state, rows = await run(db, zfs_private, steps(ChainBuilder("reinstall"), 101, *reinstall_steps(pool)))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert not (private / "root-file").exists() and (private / "sbin/init").is_file()
    c = conf(fakevz)
    assert (c["HOSTNAME"], c["IP_ADDRESS"], c["ONBOOT"]) == ("reinstalled", "192.0.2.10", "yes") and running(fakevz)
    assert files_of(fakevz, 101) == ["101.conf", "101.conf.backup", "101.conf.backup.tid", "101.conf.destroyed"]


async def test_reinstall_failing_after_the_destroy_is_fatal(db: Any, zfs_private: Config, fakevz: FakeVz,
                                                            pool: Pool) -> None:
    """As v2.0: 5203 and 3002 are irreversible, so a failure after them cannot roll the chain back."""
    await create_vps(db, zfs_private, fakevz, pool)
    state, rows = await run(db, zfs_private, steps(ChainBuilder("reinstall"), 101, *reinstall_steps(pool)[:5],
                                                    FAIL))
    assert state["state"] == ChainState.FATAL
    rolled = {r["t_type"]: r["t_done"] for r in rows}
    assert rolled[3001] == 2 and rolled[5201] == 2, "the reversible part after the destroy was undone"
    assert "3002" in str(errors(rows)) and "irreversible" in str(errors(rows))


async def test_clone(db: Any, zfs_private: Config, fakevz: FakeVz, pool: Pool) -> None:
    private = await create_vps(db, zfs_private, fakevz, pool)
    (private / "data.txt").write_text("cloned data\n")
    snap: Snap = await take_snapshot(db, pool, "101", "2026-11-25T10:00:00")
    features = {"features": {**FEATURES_OFF, "kvm": {"enabled": True, "original": False}}}
    clone = [(4002, {}), (4003, {"os_template": TEMPLATE}),
             (5223, {"src_pool_fs": pool.name, "dst_pool_fs": pool.name, "src_dataset_name": "101",
                     "dst_dataset_name": "102", "snapshots": [snap.param()]}),
             (2005, {"nameserver": ["192.0.2.54"], "original": []}), (8001, features), (1001, {})]
    before, conf101 = pool.state(), (fakevz.conf_dir / "101.conf").read_text()

    state, rows = await run(db, zfs_private, steps(ChainBuilder("clone"), 102, *clone, FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert pool.state() == before and files_of(fakevz, 102) == []
    assert not (fakevz.root / "vz/root/102").exists() and not running(fakevz, 102)

    state, rows = await run(db, zfs_private, steps(ChainBuilder("clone"), 102, *clone))
    assert state["state"] == ChainState.DONE, errors(rows)
    clone_private = pool.mounted_path(f"{pool.name}/102") / "private"
    changed = {"etc/resolv.conf", "dev/kvm"}   # written by the clone's own start (its DNS) and 8001
    assert {k: v for k, v in tree_digest(clone_private).items() if k not in changed} == \
        {k: v for k, v in tree_digest(private).items() if k not in changed}
    assert (clone_private / "data.txt").read_text() == "cloned data\n"
    c = conf(fakevz, 102)
    assert c["VE_PRIVATE"] == str(clone_private) and c["VE_ROOT"] == f"{fakevz.root}/vz/root/102"
    assert (c["NAMESERVER"], c["DEVICES"], c["ONBOOT"]) == ("192.0.2.54", "c:10:232:rw ", "yes")
    assert (clone_private / "dev/kvm").read_text().strip() == "fake-vz device node: c 10 232"
    assert running(fakevz, 102) and running(fakevz, 101)
    assert (fakevz.conf_dir / "101.conf").read_text() == conf101


async def test_restore(db: Any, zfs_private: Config, fakevz: FakeVz, pool: Pool) -> None:
    private = await create_vps(db, zfs_private, fakevz, pool)
    (private / "state.txt").write_text("v1\n")
    snap = await take_snapshot(db, pool, "101", "2026-11-25T11:00:00")
    (private / "state.txt").write_text("v2\n")
    restore = [(1002, {}), (5208, {"pool_fs": pool.name, "dataset_name": "101", "snapshot": snap.name}),
               (1001, {})]

    state, rows = await run(db, zfs_private, steps(ChainBuilder("restore"), 101, restore[0], FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert running(fakevz) and (private / "state.txt").read_text() == "v2\n"

    state, rows = await run(db, zfs_private, steps(ChainBuilder("restore"), 101, *restore))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert (private / "state.txt").read_text() == "v1\n" and running(fakevz)
    assert conf(fakevz)["ONBOOT"] == "yes"
    (status,) = await fetch(db, "SELECT vps_up FROM vps_status WHERE vps_id = 101")
    assert status["vps_up"] == 1 and os.path.islink(fakevz.root / "vz/root/101")
