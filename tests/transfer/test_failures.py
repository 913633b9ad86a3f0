"""What goes wrong between two nodes: a rogue client on the receive port, a full disk, a failing later step,
a stalled stream, hostile params. After each, the target is as before and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from typing import Any

import aiomysql

from tests.storage.conftest import output, sh
from tests.transfer.conftest import (
    NODE_IPS,
    Node,
    assert_no_leftovers,
    run,
    take_snapshot,
    tree_digest,
    write_files,
)
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain
from vpsadmind.testing.transfers import Side, Snap, append_initial, append_transfer


async def _source(db: aiomysql.Connection, n1: Node, n2: Node, *, size: int = 64 * 1024,
                  count: int = 5) -> tuple[Side, Side, Snap, str]:
    sh("zfs", "create", f"{n1.pool.name}/101")
    sh("zfs", "create", "-p", f"{n2.pool.name}/backup/101/tree.0/branch-a")
    write_files(n1.pool.mounted_path(f"{n1.pool.name}/101"), "a", count=count, size=size)
    s1 = await take_snapshot(db, n1.pool, "101", "2026-11-25T01:00:00")
    src = Side(1, n1.pool.name, "101")
    dst = Side(2, f"{n2.pool.name}/backup", "101", "tree.0", "branch-a")
    return src, dst, s1, f"{n2.pool.name}/backup/101/tree.0/branch-a"


async def _wait_listening(db: aiomysql.Connection, chain_id: int, timeout: float = 20.0) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        rows = await transactions_of(db, chain_id)
        if rows[0]["t_done"]:
            return int(json.loads(rows[0]["t_output"])["port"])
        await asyncio.sleep(0.05)
    raise TimeoutError("Recv did not run")


def _rogue(port: int, payload: bytes) -> bytes:
    """Connect, read the greeting, send ``payload`` and return whatever comes back until the close."""
    with socket.create_connection((NODE_IPS[2], port), timeout=10) as s:
        got = s.recv(4096)
        s.sendall(payload)
        with contextlib.suppress(ConnectionResetError):  # dropped with unread bytes: a reset
            while chunk := s.recv(4096):
                got += chunk
    return got


async def test_rogue_client_is_rejected_and_the_real_sender_gets_through(
        db: aiomysql.Connection, nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2)
    fired = await append_initial(ChainBuilder("backup"), src, dst, [s1]).fire(db)
    async with running_engine(n2.cfg) as receiver_engine:
        port = await _wait_listening(db, fired.chain_id)
        greeting = await asyncio.to_thread(_rogue, port, b'{"chain": 1, "mac": "00"}\n')
        assert b"vpsadmind-transfer/1" in greeting and b'"ok"' not in greeting
        raw = await asyncio.to_thread(_rogue, port, os.urandom(4096) + b"\n")  # a raw zfs stream, say
        assert b'"ok"' not in raw
        assert n2.pool.snapshots(branch) == []
        assert receiver_engine.chain_blocked(fired.chain_id)
        async with running_engine(n1.cfg):
            chain = await wait_chain(db, fired.chain_id, timeout=60)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    assert n2.pool.snapshots(branch) == [s1.name]
    assert tree_digest(n2.pool.mounted_path(branch)) == tree_digest(n1.pool.mounted_path(f"{n1.pool.name}/101"))
    await assert_no_leftovers(db, n1, n2)


async def test_full_disk_on_the_receiver_rolls_back_cleanly(db: aiomysql.Connection,
                                                             nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2, size=1024 * 1024, count=8)
    sh("zfs", "set", "quota=2M", f"{n2.pool.name}/backup")
    before = n2.pool.state()
    chain, rows = await run(db, append_initial(ChainBuilder("backup"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.FAILED
    send = output(rows[1])
    assert "zfs recv on the receiver failed" in send["error"], send
    assert "quota" in send["error"] or "space" in send["error"], send
    assert n2.pool.state() == before
    await assert_no_leftovers(db, n1, n2)


async def test_rollback_destroys_only_what_the_transfer_received(db: aiomysql.Connection,
                                                                  nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2)
    chain, _ = await run(db, append_initial(ChainBuilder("backup"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.DONE
    write_files(n1.pool.mounted_path(f"{n1.pool.name}/101"), "b")
    s2 = await take_snapshot(db, n1.pool, "101", "2026-11-26T01:00:00")
    s3 = await take_snapshot(db, n1.pool, "101", "2026-11-27T01:00:00")
    builder = append_transfer(ChainBuilder("backup"), src, dst, [s1, s2, s3])
    builder.append(90001, server=2, params={"fail": True})
    chain, rows = await run(db, builder, n1, n2)
    assert chain["state"] == ChainState.FAILED, [output(r) for r in rows]
    assert n2.pool.snapshots(branch) == [s1.name]  # the common base stays
    assert output(rows[0])["destroyed"] == [s3.name, s2.name]
    await assert_no_leftovers(db, n1, n2)


async def test_rollback_destroys_the_intermediate_snapshots_of_an_i_stream(db: aiomysql.Connection,
                                                                           nodes: tuple[Node, Node]) -> None:
    """``zfs send -I s1 s3`` brings s2 along; a params list naming only s1 and s3 must not leave s2 behind on a
    rollback (found by the soak): Recv destroys what the target did not have before, whatever the list says."""
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2)
    chain, _ = await run(db, append_initial(ChainBuilder("backup"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.DONE
    write_files(n1.pool.mounted_path(f"{n1.pool.name}/101"), "b")
    await take_snapshot(db, n1.pool, "101", "2026-11-26T01:00:00")
    s3 = await take_snapshot(db, n1.pool, "101", "2026-11-27T01:00:00")
    builder = append_transfer(ChainBuilder("backup"), src, dst, [s1, s3])
    builder.append(90001, server=2, params={"fail": True})
    chain, rows = await run(db, builder, n1, n2)
    assert chain["state"] == ChainState.FAILED, [output(r) for r in rows]
    assert n2.pool.snapshots(branch) == [s1.name]
    assert output(rows[0])["destroyed"] == [s3.name, "2026-11-26T01:00:00"]
    await assert_no_leftovers(db, n1, n2)


async def test_restore_from_the_backup_into_a_rollback_dataset(db: aiomysql.Connection,
                                                               nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2)
    chain, _ = await run(db, append_initial(ChainBuilder("backup"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.DONE
    expected = tree_digest(n2.pool.mounted_path(branch))
    builder = ChainBuilder("rollback")
    builder.append(5209, server=1, params={"pool_fs": n1.pool.name, "dataset_name": "101"})
    append_transfer(builder, dst, Side(1, n1.pool.name, "101.rollback"), [s1])
    chain, rows = await run(db, builder, n1, n2)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    restored = f"{n1.pool.name}/101.rollback"
    assert n1.pool.snapshots(restored) == [s1.name]
    sh("zfs", "mount", restored)
    try:
        assert tree_digest(n1.pool.mounted_path(restored)) == expected
    finally:
        sh("zfs", "unmount", restored)
    guid = sh("zfs", "get", "-H", "-p", "-o", "value", "guid", f"{restored}@{s1.name}").strip()
    assert output(rows[3])["guid"] == guid


async def _frozen_until_the_end(db: aiomysql.Connection, chain_id: int, pattern: str) -> dict[str, Any]:
    """SIGSTOP the processes matching ``pattern`` as soon as they run, wait for the chain to end, continue them."""
    stopped: list[int] = []
    for _ in range(400):
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        if found.stdout.split():
            stopped = [int(p) for p in found.stdout.split()]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            break
        await asyncio.sleep(0.01)
    assert stopped, f"{pattern} never ran"
    try:
        return await wait_chain(db, chain_id, timeout=60)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


async def test_stalled_stream_is_ended_and_the_chain_rolls_back(db: aiomysql.Connection,
                                                                nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2, size=1024 * 1024, count=24)
    import dataclasses
    for n in (n1, n2):
        n.cfg = dataclasses.replace(n.cfg, transfer=dataclasses.replace(n.cfg.transfer, stall_timeout=2.0))
    target = f"{n2.pool.name}/backup/101/tree.0/branch-a"
    before = n2.pool.state()
    fired = await append_initial(ChainBuilder("backup"), src, dst, [s1]).fire(db)
    async with running_engine(n2.cfg), running_engine(n1.cfg):
        # freeze zfs recv as soon as it runs: the stream stops moving
        chain = await _frozen_until_the_end(db, fired.chain_id, f"zfs recv -F {target}")
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.FAILED
    error = output(rows[1])["error"]
    assert "no progress" in error or "stall" in error.lower(), error
    await asyncio.sleep(0.5)
    assert n2.pool.state() == before
    await assert_no_leftovers(db, n1, n2)


async def test_hostile_params_fail_before_any_command(db: aiomysql.Connection, nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    bad = [
        ({"addr": "127.0.0.3; rm -rf /", "port": 10000}, "addr"),
        ({"addr": "127.0.0.3", "port": 70000}, "port"),
        ({"addr": "127.0.0.3", "port": 10000, "dataset_name": "../etc"}, "dataset_name"),
        ({"addr": "127.0.0.3", "port": 10000, "snapshots": []}, "snapshots"),
        ({"addr": "127.0.0.3", "port": 10000, "snapshots": [{"id": 1, "name": "x y@z", "confirmed": 1}]},
         "snapshots[0].name"),
        ({"addr": "127.0.0.3", "port": 10000, "tree": "t/../x", "branch": "b"}, "tree"),
    ]
    for change, field in bad:
        params = {"addr": "127.0.0.3", "port": 10000, "dst_pool_fs": n2.pool.name, "dataset_name": "101",
                  "snapshots": [{"id": 1, "name": "s1", "confirmed": 1}], **change}
        builder = ChainBuilder("hostile").append(5220, server=2, params=params)
        before = n2.pool.state()
        chain, rows = await run(db, builder, n2)
        assert chain["state"] == ChainState.FAILED
        assert field in output(rows[0])["error"], (field, output(rows[0]))
        assert n2.pool.state() == before


async def test_stalled_incremental_sender_leaves_no_hold_on_its_range(db: aiomysql.Connection,
                                                                     nodes: tuple[Node, Node]) -> None:
    """zfs-fuse's ``zfs send -I`` holds every snapshot of its range (tag ``.send-<pid>-0``) and keeps those holds
    for ever when it is killed: the stall watchdog's kill made the next destroy of any of them fail as held (the
    soak found it as a fatal rollback of Dataset::Snapshot). Send releases them when its stream fails."""
    n1, n2 = nodes
    src, dst, s1, _branch = await _source(db, n1, n2, size=1024 * 1024, count=4)
    state, rows = await run(db, append_initial(ChainBuilder("first"), src, dst, [s1]), n1, n2)
    assert state["state"] == ChainState.DONE, [output(r) for r in rows]
    private = n1.pool.mounted_path(f"{n1.pool.name}/101")
    write_files(private, "b", count=12, size=1024 * 1024)
    s2 = await take_snapshot(db, n1.pool, "101", "2026-11-25T02:00:00")
    write_files(private, "c", count=12, size=1024 * 1024)
    s3 = await take_snapshot(db, n1.pool, "101", "2026-11-25T03:00:00")
    import dataclasses
    for n in (n1, n2):
        n.cfg = dataclasses.replace(n.cfg, transfer=dataclasses.replace(n.cfg.transfer, stall_timeout=2.0))
    fired = await append_transfer(ChainBuilder("incr"), src, dst, [s1, s2, s3]).fire(db)
    async with running_engine(n2.cfg), running_engine(n1.cfg):
        # freeze the sender's zfs send as soon as it runs (zfs-fuse shows "@" as " ")
        chain = await _frozen_until_the_end(db, fired.chain_id, f"zfs send -I {n1.pool.name}/101")
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.FAILED, [output(r) for r in rows]
    await assert_no_leftovers(db, n1, n2)  # userrefs 0 on every snapshot of both pools
    for snap in (s2, s3):
        sh("zfs", "destroy", f"{n1.pool.name}/101@{snap.name}")
