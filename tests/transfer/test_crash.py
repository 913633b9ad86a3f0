"""The sending daemon killed with SIGKILL in the middle of a stream: when it comes back, its Send fails as
interrupted, the chain rolls back, the target is as before and no hold, receiver or secret is left."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomysql

from tests.storage.conftest import output, sh
from tests.transfer.conftest import Node, assert_no_leftovers, take_snapshot, write_files
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain
from vpsadmind.testing.process import DaemonProcess, write_config
from vpsadmind.testing.transfers import Side, append_initial, append_transfer


async def _wait_bytes(engine_progress: object, minimum: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        items = engine_progress.items()  # type: ignore[attr-defined]
        if any(i["kind"] == "recv" and i["bytes"] >= minimum for i in items):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no stream of {minimum} bytes arrived")


async def test_sender_killed_mid_stream(db: aiomysql.Connection, nodes: tuple[Node, Node], tmp_path: Path,
                                        db_settings: TestDbSettings, test_database: str) -> None:
    n1, n2 = nodes
    sh("zfs", "create", f"{n1.pool.name}/101")
    branch = f"{n2.pool.name}/backup/101/tree.0/branch-a"
    sh("zfs", "create", "-p", branch)
    write_files(n1.pool.mounted_path(f"{n1.pool.name}/101"), "a", count=16, size=1024 * 1024)
    s1 = await take_snapshot(db, n1.pool, "101", "2026-11-25T01:00:00")
    before = n2.pool.state()
    config = write_config(tmp_path / "node1.yml", db_settings, test_database, server_id=1,
                          journal=tmp_path / "journal-node1",
                          extra_vpsadmin={"queues": {"zfs_send": {"threads": 1, "start_delay": 0}}},
                          sections={"transfer": {"rate_limit": 2 * 1024 * 1024, "stall_timeout": 30}})
    sender = DaemonProcess(config, tmp_path / "node1.log")
    fired = await append_initial(ChainBuilder("backup"), Side(1, n1.pool.name, "101"),
                                 Side(2, f"{n2.pool.name}/backup", "101", "tree.0", "branch-a"), [s1]).fire(db)
    async with running_engine(n2.cfg) as receiver:
        await asyncio.to_thread(sender.start)
        try:
            await _wait_bytes(receiver.ctx.progress, 2 * 1024 * 1024)
            sender.kill()
            assert receiver.chain_blocked(fired.chain_id)  # still waiting for a sender
            await asyncio.to_thread(sender.start)
            chain = await wait_chain(db, fired.chain_id, timeout=60)
        finally:
            await asyncio.to_thread(sender.terminate)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.FAILED, [output(r) for r in rows]
    assert "interrupted" in output(rows[1])["error"].lower(), output(rows[1])
    assert n2.pool.state() == before
    await assert_no_leftovers(db, n1, n2)
    async with db.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM vpsadmind_transfers")
        assert (await cur.fetchone())[0] == 0


async def test_sender_killed_in_an_incremental_stream_leaves_no_hold(
        db: aiomysql.Connection, nodes: tuple[Node, Node], tmp_path: Path, db_settings: TestDbSettings,
        test_database: str) -> None:
    """zfs-fuse's ``zfs send -I`` holds its whole range (``.send-<pid>-0``) and keeps the holds for ever when the
    daemon that ran it dies: the soak saw the rollback of the chain's own snapshot end fatal on it. The ledger
    keeps the tag from the start of the stream, so Send's crash recovery releases it on the whole range."""
    n1, n2 = nodes
    sh("zfs", "create", f"{n1.pool.name}/101")
    sh("zfs", "create", "-p", f"{n2.pool.name}/backup/101/tree.0/branch-a")
    private = n1.pool.mounted_path(f"{n1.pool.name}/101")
    write_files(private, "a", count=2, size=64 * 1024)
    s1 = await take_snapshot(db, n1.pool, "101", "2026-11-25T01:00:00")
    src, dst = Side(1, n1.pool.name, "101"), Side(2, f"{n2.pool.name}/backup", "101", "tree.0", "branch-a")
    write_files(private, "b", count=8, size=1024 * 1024)
    s2 = await take_snapshot(db, n1.pool, "101", "2026-11-25T02:00:00")
    write_files(private, "c", count=8, size=1024 * 1024)
    s3 = await take_snapshot(db, n1.pool, "101", "2026-11-25T03:00:00")
    config = write_config(tmp_path / "node1.yml", db_settings, test_database, server_id=1,
                          journal=tmp_path / "journal-node1",
                          extra_vpsadmin={"queues": {"zfs_send": {"threads": 1, "start_delay": 0}}},
                          sections={"transfer": {"rate_limit": 2 * 1024 * 1024, "stall_timeout": 30}})
    sender = DaemonProcess(config, tmp_path / "node1.log")
    builder = append_initial(ChainBuilder("first"), src, dst, [s1])
    append_transfer(builder, src, dst, [s1, s2, s3])
    fired = await builder.fire(db)
    async with running_engine(n2.cfg) as receiver:
        await asyncio.to_thread(sender.start)
        try:
            for _ in range(600):  # until the -I stream runs (its receiver is the second Recv)
                items = receiver.ctx.progress.items()
                if any(i["kind"] == "recv" and i["transaction"] == fired.transaction_ids[3]
                       and i["bytes"] >= 1024 * 1024 for i in items):
                    break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError("the incremental stream never started")
            sender.kill()
            await asyncio.to_thread(sender.start)
            chain = await wait_chain(db, fired.chain_id, timeout=60)
        finally:
            await asyncio.to_thread(sender.terminate)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.FAILED, [output(r) for r in rows]
    await assert_no_leftovers(db, n1, n2)  # userrefs 0 on every snapshot of both pools
    for snap in (s3, s2):
        sh("zfs", "destroy", f"{n1.pool.name}/101@{snap.name}")
