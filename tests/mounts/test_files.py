"""5301 Vps::Mounts through a real engine: the action scripts and the data file, their backups, the rollback,
and the scripts run by (fake) vzctl doing the mounts."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from tests.mounts.conftest import (
    VEID,
    Node,
    chain,
    handler_context,
    make_handler,
    mount_hash,
    needs_root,
    run_mounts_chain,
)
from vpsadmind.engine.model import ChainState
from vpsadmind.mount_registry import Mounts
from vpsadmind.mounts.files import MountFiles, load_data, written_by
from vpsadmind.mounts.node import mount_node
from vpsadmind.testing.fakevz.mounts import mountpoints

pytestmark = [pytest.mark.slow, needs_root]


def files_of(node: Node) -> MountFiles:
    return MountFiles(node.vz.script_path(VEID, "mount"), node.vz.script_path(VEID, "umount"),
                      Path(node.cfg.mounts_dir) / f"{VEID}.mounts")


def snapshot_files(f: MountFiles) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for path in f.all():
        for p in (path, MountFiles.backup(path)):
            out[p.name] = p.read_text() if p.exists() else None
    return out


async def test_writes_scripts_and_data_file(db: aiomysql.Connection, node: Node) -> None:
    mounts = [mount_hash(1, "/mnt/data", node=node), mount_hash(2, "/mnt/data/deeper", "101/data/deeper", node=node)]
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE, run.rows
    f = files_of(node)
    t_id = run.rows[0]["t_id"]
    for action, path in (("mount", f.mount_script), ("umount", f.umount_script)):
        text = path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert text.startswith("#!/bin/sh\n")
        assert subprocess.run(["sh", "-n", str(path)], capture_output=True).returncode == 0
        assert f"-m vpsadmind.mounts.script {action} " in text
        assert f"--data '{f.data}'" in text and f"--conf-dir '{node.root}/etc/vz/conf'" in text
        assert f"--socket '{node.cfg.remote_socket}'" in text
        assert "/mnt/data" not in text  # no mount ever becomes shell text
        assert written_by(path) == t_id
        # every argument is one single-quoted word
        args = [line.strip().rstrip("\\").strip() for line in text.splitlines() if line.startswith("    --")]
        assert args and all(a.split(" ", 1)[1].startswith("'") and a.endswith("'") for a in args)
    doc = json.loads(f.data.read_text())
    assert doc["format"] == "vpsadmind-mounts/1" and doc["vps_id"] == VEID and doc["transaction"] == t_id
    assert doc["mounts"] == mounts
    assert [m.id for m in load_data(f.data, VEID)] == [1, 2]
    assert not any(MountFiles.backup(p).exists() for p in f.all())  # nothing existed before
    assert run.output(0)["mounts"] == 2


async def test_rollback_restores_the_backups(db: aiomysql.Connection, node: Node) -> None:
    first = [mount_hash(1, "/mnt/old", node=node)]
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": first})))
    assert run.state["state"] == ChainState.DONE
    f = files_of(node)
    before = {p: p.read_text() for p in f.all()}

    second = [mount_hash(1, "/mnt/new", node=node), mount_hash(3, "/srv", node=node)]
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": second}), fail=True))
    assert run.state["state"] == ChainState.FAILED
    assert run.rows[0]["t_done"] == 2, run.rows  # rolled back
    assert {p: p.read_text() for p in f.all()} == before
    assert not any(MountFiles.backup(p).exists() for p in f.all())
    assert [m.dst for m in load_data(f.data, VEID)] == ["/mnt/old"]

    # a successful second run keeps the previous files as .backup (v2.0's cp -p)
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": second})))
    assert run.state["state"] == ChainState.DONE
    assert {p: MountFiles.backup(p).read_text() for p in f.all()} == before
    assert [m.dst for m in load_data(f.data, VEID)] == ["/mnt/new", "/srv"]


async def test_rollback_removes_files_that_did_not_exist(db: aiomysql.Connection, node: Node) -> None:
    f = files_of(node)
    stale = MountFiles.backup(f.data)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("a stale backup of an earlier run\n")
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": [mount_hash(1, "/mnt/x", node=node)]}),
                                                     fail=True))
    assert run.state["state"] == ChainState.FAILED and run.rows[0]["t_done"] == 2
    assert not any(p.exists() for p in f.all())
    assert not stale.exists()  # not restored over a file that did not exist
    assert run.output(0)["execute_output"]


async def test_rerun_after_a_crash_keeps_the_true_original(node: Node) -> None:
    """A crash after the files were written runs exec again (idempotent): the backup must stay the original."""
    f = files_of(node)
    async with handler_context(node.cfg) as ctx:
        def make(t_id: int, dst: str) -> Any:
            return make_handler(ctx, 5301, {"mounts": [mount_hash(1, dst, node=node)]}, t_id=t_id)

        await make(10, "/mnt/one").exec()
        original = {p: p.read_text() for p in f.all()}
        await make(11, "/mnt/two").exec()
        await make(11, "/mnt/two").exec()  # the re-run
        assert {p: MountFiles.backup(p).read_text() for p in f.all()} == original
        assert [m.dst for m in load_data(f.data, VEID)] == ["/mnt/two"]
        await make(11, "/mnt/two").rollback()
        await make(11, "/mnt/two").rollback()  # and its re-run
        assert {p: p.read_text() for p in f.all()} == original


async def test_hostile_params_fail_naming_the_field(db: aiomysql.Connection, node: Node) -> None:
    for bad, field in (({"dst": "/mnt/../../etc"}, "mounts[0].dst"), ({"dst": "/mnt/x\n/etc"}, "mounts[0].dst"),
                       ({"dst": "/mnt/'x'"}, "mounts[0].dst"), ({"mount_opts": "--bind -o remount"},
                                                                 "mounts[0].mount_opts")):
        run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": [{**mount_hash(1, "/mnt/a", node=node),
                                                                               **bad}]})))
        assert run.state["state"] == ChainState.FAILED
        out = run.output(0)
        assert out["field"] == field and out["error"].startswith("Bad param: " + field), out
        assert not any(p.exists() for p in files_of(node).all())


async def test_skip_drops_a_delayed_mount(db: aiomysql.Connection, node: Node) -> None:
    """v2.0's change_mount: a registered delayed mount changed to ``skip`` is dropped and reported unmounted."""
    from vpsadmind.testing.engine import running_engine, wait_chain

    fired = await chain((5301, {"mounts": [mount_hash(1, "/mnt/a", node=node, on_start_fail="skip"),
                                           mount_hash(2, "/mnt/b", node=node, mode="ro")]})).fire(db)
    async with running_engine(node.cfg) as engine:
        registry: Mounts = mount_node(engine.ctx).registry
        registry.delayed.register(VEID, mount_hash(1, "/mnt/a", node=node))
        registry.delayed.register(VEID, mount_hash(2, "/mnt/b", node=node))
        state = await wait_chain(db, fired.chain_id)
        assert state["state"] == ChainState.DONE
        pending = registry.delayed.pending(VEID)
        assert list(pending) == [2] and pending[2]["mode"] == "ro"  # the new definition is retried
        assert registry.reporter._pending == {1: (VEID, "unmounted")}


async def test_scripts_mount_at_start_and_unmount_at_stop(db: aiomysql.Connection, node: Node) -> None:
    """The generated scripts under (fake) vzctl: start mounts in file order, stop unmounts, children first."""
    node.make_dataset("101/data/sub", "child\n")
    (node.private("101/data") / "sub").mkdir()  # the parent is read-only: its mountpoint for the child must exist
    mounts = [mount_hash(1, "/mnt/data", node=node, mode="ro"),
              mount_hash(2, "/mnt/data/sub", "101/data/sub", node=node)]
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE
    await node.vz.start(VEID)
    root = node.ve_root
    assert str(root / "mnt/data") in mountpoints() and str(root / "mnt/data/sub") in mountpoints()
    assert (root / "mnt/data/hello").read_text() == "from 101/data\n"
    assert (root / "mnt/data/sub/hello").read_text() == "child\n"
    with pytest.raises(OSError):
        (root / "mnt/data/new").write_text("read-only")
    await node.vz.stop(VEID)  # fails (51) if the umount script left anything mounted
    assert not [m for m in node.mounted() if m.startswith(str(node.root))]
    assert not (await node.vz.status(VEID)).mounted
