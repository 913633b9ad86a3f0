"""The delayed mounter: retries of ``mount_later`` mounts on a running VPS until their source appears, the state
reported to ``mounts.current_state``, VPSes that stopped forgotten, parents before children, and the mounts the
database calls delayed loaded again at start."""

from __future__ import annotations

import asyncio

import aiomysql
import pytest

from tests.mounts.conftest import (
    VEID,
    Node,
    chain,
    handler_context,
    insert_vps_and_mounts,
    mount_hash,
    mount_states,
    needs_root,
    run_mounts_chain,
    start,
)
from vpsadmind.engine.model import ChainState
from vpsadmind.mounts.delayed import RETRY_INTERVAL, DelayedMounter
from vpsadmind.mounts.node import mount_node

pytestmark = [pytest.mark.slow, needs_root]

MOUNTED, DELAYED = 1, 4


def test_retry_interval_is_v2s() -> None:
    assert RETRY_INTERVAL == 180.0


async def test_retries_until_the_source_appears(db: aiomysql.Connection, node: Node) -> None:
    await insert_vps_and_mounts(db, 1)
    await start(node)
    late = mount_hash(1, "/mnt/late", "101/late", node=node)
    async with handler_context(node.cfg) as ctx:
        registry = mount_node(ctx).registry
        registry.delay(VEID, late)  # what the action script's delayed_mount does
        await registry.reporter.flush()
        assert await mount_states(db) == {1: DELAYED}

        mounter = DelayedMounter(ctx)
        assert await mounter.retry() == {VEID: []}
        assert list(registry.delayed.pending(VEID)) == [1]
        assert not (node.ve_root / "mnt/late/hello").exists()

        node.make_dataset("101/late", "appeared\n")
        assert await mounter.retry() == {VEID: [1]}
        assert registry.delayed.pending(VEID) == {}
        assert (node.ve_root / "mnt/late/hello").read_text() == "appeared\n"
        await registry.reporter.flush()
        assert await mount_states(db) == {1: MOUNTED}
        assert await mounter.retry() == {}  # nothing left to do


async def test_the_loop_mounts_when_the_source_appears(db: aiomysql.Connection, node: Node) -> None:
    await insert_vps_and_mounts(db, 1)
    await start(node)
    async with handler_context(node.cfg) as ctx:
        registry = mount_node(ctx).registry
        registry.delay(VEID, mount_hash(1, "/mnt/late", "101/late", node=node))
        mounter = DelayedMounter(ctx, interval=0.2)
        task = asyncio.create_task(mounter.run())
        try:
            while mounter.rounds < 2:
                await asyncio.sleep(0.05)
            assert registry.delayed.count() == 1
            node.make_dataset("101/late")
            for _ in range(200):
                if registry.delayed.count() == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            mounter.stop()
            await asyncio.wait_for(task, 10)
        assert registry.delayed.count() == 0 and (node.ve_root / "mnt/late/hello").exists()
        await registry.reporter.flush()
        assert await mount_states(db) == {1: MOUNTED}


async def test_parents_before_children_in_one_round(db: aiomysql.Connection, node: Node) -> None:
    await start(node)
    node.make_dataset("101/data/sub", "child\n")
    async with handler_context(node.cfg) as ctx:
        registry = mount_node(ctx).registry
        registry.delay(VEID, mount_hash(2, "/mnt/data/sub", "101/data/sub", node=node))
        registry.delay(VEID, mount_hash(1, "/mnt/data", "101/missing", node=node))
        mounter = DelayedMounter(ctx)
        assert await mounter.retry() == {VEID: []}  # the child waits for its parent
        assert not (node.ve_root / "mnt/data/sub").exists()
        registry.delayed.unregister(VEID, 1)
        registry.delay(VEID, mount_hash(1, "/mnt/data", node=node))
        (node.private("101/data") / "sub").mkdir()
        assert await mounter.retry() == {VEID: [1, 2]}
        assert (node.ve_root / "mnt/data/sub/hello").read_text() == "child\n"


async def test_stopped_vps_is_forgotten(node: Node) -> None:
    async with handler_context(node.cfg) as ctx:
        registry = mount_node(ctx).registry
        registry.delay(VEID, mount_hash(1, "/mnt/late", "101/late", node=node))
        assert await DelayedMounter(ctx).retry() == {}
        assert registry.delayed.count() == 0


async def test_start_loads_what_the_database_calls_delayed(db: aiomysql.Connection, node: Node) -> None:
    mounts = [mount_hash(1, "/mnt/a", node=node), mount_hash(2, "/mnt/b", "101/b", node=node),
              mount_hash(3, "/mnt/c", "101/c", node=node)]
    run = await run_mounts_chain(db, node.cfg, chain((5301, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE
    await insert_vps_and_mounts(db, 1, 2)  # current_state 0
    async with db.cursor() as cur:
        await cur.execute("UPDATE mounts SET current_state = 4 WHERE id = 2")
        await cur.execute("INSERT INTO mounts (id, vps_id, dst, mount_opts, umount_opts, mount_type, mode, "
                          "object_state, current_state) VALUES (9, 101, '/gone', '', '', 'bind', 'rw', 0, 4)")
    async with handler_context(node.cfg) as ctx:
        assert await DelayedMounter(ctx).load() == 1
        pending = mount_node(ctx).registry.delayed.pending(VEID)
        assert list(pending) == [2] and pending[2]["dst"] == "/mnt/b"  # 9 is in no mounts file: skipped


async def test_an_invalid_registered_mount_is_dropped(node: Node) -> None:
    """``delayed_mount`` over the socket registers any hash with an id; the retry validates it first."""
    await start(node)
    async with handler_context(node.cfg) as ctx:
        registry = mount_node(ctx).registry
        registry.delayed.register(VEID, {**mount_hash(1, "/mnt/x", node=node), "dst": "/mnt/../../etc"})
        assert await DelayedMounter(ctx).retry() == {VEID: []}
        assert registry.delayed.count() == 0
        assert not (node.ve_root / "mnt").exists()
