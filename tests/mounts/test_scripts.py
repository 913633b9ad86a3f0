"""The action scripts as vzctl runs them (fake vzctl, bind mode): the start-time failure policies, and the state
reports and "mount later" requests reaching the daemon over the real control socket."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomysql
import pytest

from tests.mounts.conftest import (
    VEID,
    Node,
    chain,
    insert_vps_and_mounts,
    mount_hash,
    mount_states,
    needs_root,
    run_mounts_chain,
)
from tests.vz.conftest import create_ct
from vpsadmind.config import Config
from vpsadmind.control.server import ControlServer
from vpsadmind.db import Database
from vpsadmind.engine.model import ChainState
from vpsadmind.mount_registry import Mounts
from vpsadmind.vz import ActionScriptFailed

pytestmark = [pytest.mark.slow, needs_root]

MOUNTED, UNMOUNTED, SKIPPED, DELAYED = 1, 2, 3, 4


@dataclass
class StubDaemon:
    """What the control commands ``delayed_mount``/``mount_state`` need of the daemon."""

    config: Config
    mounts: Mounts
    config_path: str = ""
    engine: Any = None

    def request_stop(self) -> None:  # pragma: no cover - not used here
        pass

    def reload(self) -> None:  # pragma: no cover
        pass


@contextlib.asynccontextmanager
async def control_socket(node: Node) -> AsyncIterator[Mounts]:
    """The daemon side: its mount registry behind a real ControlServer on ``remote.socket``."""
    database = Database(node.cfg.db)
    mounts = Mounts(database)
    server = ControlServer(StubDaemon(node.cfg, mounts))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(200):
            if server.listening:
                break
            await asyncio.sleep(0.01)
        yield mounts
    finally:
        await server.close()
        await asyncio.gather(task, return_exceptions=True)
        await database.close()


async def write_mounts(db: aiomysql.Connection, node: Node, mounts: list[dict[str, Any]]) -> None:
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE, run.rows


async def test_policies_at_start_report_over_the_socket(db: aiomysql.Connection, node: Node) -> None:
    await insert_vps_and_mounts(db, 1, 2, 3, 4)
    await write_mounts(db, node, [
        mount_hash(1, "/mnt/data", node=node),
        mount_hash(2, "/mnt/later", "101/later", node=node),                  # mount_later (the default)
        mount_hash(3, "/mnt/later/child", node=node, on_start_fail="skip"),   # inherits its parent's policy
        mount_hash(4, "/mnt/skipped", "101/gone", node=node, on_start_fail="skip"),
    ])
    async with control_socket(node) as mounts:
        await node.vz.start(VEID)
        assert [m for m in node.mounted() if m.startswith(str(node.ve_root) + "/")] == [f"{node.ve_root}/mnt/data"]
        assert sorted(mounts.delayed.pending(VEID)) == [2, 3]
        assert mounts.delayed.pending(VEID)[2]["dataset_name"] == "101/later"
        await mounts.reporter.flush()
        assert await mount_states(db) == {1: MOUNTED, 2: DELAYED, 3: DELAYED, 4: SKIPPED}

        await node.vz.stop(VEID)
        await mounts.reporter.flush()
        assert await mount_states(db) == {1: UNMOUNTED, 2: UNMOUNTED, 3: UNMOUNTED, 4: UNMOUNTED}
    assert not [m for m in node.mounted() if m.startswith(str(node.root))]


async def test_fail_start_keeps_the_vps_down_and_leaves_nothing_mounted(db: aiomysql.Connection, node: Node) -> None:
    await insert_vps_and_mounts(db, 1, 2)
    await write_mounts(db, node, [mount_hash(1, "/mnt/data", node=node),
                                  mount_hash(2, "/mnt/must", "101/gone", node=node, on_start_fail="fail_start")])
    async with control_socket(node) as mounts:
        with pytest.raises(ActionScriptFailed) as info:
            await node.vz.start(VEID)
        assert info.value.exitstatus == 79
        assert "mount 2 (/mnt/must)" in info.value.stderr
        await mounts.reporter.flush()
        assert await mount_states(db) == {1: UNMOUNTED, 2: UNMOUNTED}
    status = await node.vz.status(VEID)
    assert not status.running and not status.mounted  # vzctl could unmount the root: nothing was left in it
    assert not [m for m in node.mounted() if m.startswith(str(node.root))]


async def test_scripts_work_without_the_daemon(db: aiomysql.Connection, node: Node) -> None:
    """v2.0's ``send_or_not``: reports are lost when the daemon is down, the VPS starts anyway."""
    await write_mounts(db, node, [mount_hash(1, "/mnt/data", node=node),
                                  mount_hash(2, "/mnt/later", "101/later", node=node)])
    await node.vz.start(VEID)
    assert (node.ve_root / "mnt/data/hello").read_text() == "from 101/data\n"
    await node.vz.stop(VEID)
    assert not (await node.vz.status(VEID)).mounted


async def test_escape_attempt_at_start_is_refused(db: aiomysql.Connection, node: Node) -> None:
    """The container's files are in place before the mount script runs: a symlink planted in the private area
    makes the mount fail under its policy, and nothing reaches the host directory."""
    host = node.tmp / "host"
    host.mkdir()
    private = node.root / "vz" / "private" / str(VEID)
    (private / "mnt").mkdir(exist_ok=True)
    (private / "mnt" / "data").symlink_to(host)
    await write_mounts(db, node, [mount_hash(1, "/mnt/data/sub", node=node, on_start_fail="skip")])
    await node.vz.start(VEID)
    assert list(host.iterdir()) == [] and not host.is_mount()
    assert not [m for m in node.mounted() if m.startswith(str(node.ve_root) + "/")]


async def test_a_copied_script_does_not_act_for_another_vps(db: aiomysql.Connection, node: Node) -> None:
    """4001 CopyConfigs copies ``101.mount`` to ``102.mount``: started as 102, it must not mount 101's mounts."""
    await write_mounts(db, node, [mount_hash(1, "/mnt/data", node=node)])
    await create_ct(node.vz, 102)
    for action in ("mount", "umount"):
        shutil.copy2(node.vz.script_path(VEID, action), node.vz.script_path(102, action))
    with pytest.raises(ActionScriptFailed) as info:
        await node.vz.start(102)
    assert "belongs to VPS 101, vzctl runs it for VPS 102" in info.value.stderr
    assert not [m for m in node.mounted() if m.startswith(str(node.root / "vz" / "root"))]
    node.vz.script_path(102, "mount").unlink()
    await node.vz.mount(102)
    await node.vz.umount(102)  # the copied umount script does not hold up a stop
    assert not (await node.vz.status(102)).mounted
