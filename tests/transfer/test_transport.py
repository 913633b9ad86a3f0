"""The transport's options between two nodes: TLS with the cluster CA, v2.0's plain nc stream, rate limit
and progress (on the bus sink and in ``vpsadmindctl status``), a receiver that comes back after its daemon
restarted, and LocalSend between two pools of one node."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import aiomysql

from tests.storage.conftest import output, sh
from tests.transfer.conftest import Node, assert_no_leftovers, cluster, run, take_snapshot, tree_digest, write_files
from vpsadmind.config import TlsConfig
from vpsadmind.control.commands import cmd_status
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain
from vpsadmind.testing.transfers import Side, Snap, append_initial, append_local, append_transfer


async def _source(db: aiomysql.Connection, n1: Node, n2: Node, *, count: int = 5,
                  size: int = 64 * 1024) -> tuple[Side, Side, Snap, str]:
    sh("zfs", "create", f"{n1.pool.name}/101")
    branch = f"{n2.pool.name}/backup/101/tree.0/branch-a"
    sh("zfs", "create", "-p", branch)
    write_files(n1.pool.mounted_path(f"{n1.pool.name}/101"), "a", count=count, size=size)
    s1 = await take_snapshot(db, n1.pool, "101", "2026-11-25T01:00:00")
    return Side(1, n1.pool.name, "101"), Side(2, f"{n2.pool.name}/backup", "101", "tree.0", "branch-a"), s1, branch


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(crt))
    return crt, key


def _node_cert(directory: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, crt = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-out", str(crt))
    return crt, key


def _with_transfer(n: Node, **changes: Any) -> None:
    n.cfg = dataclasses.replace(n.cfg, transfer=dataclasses.replace(n.cfg.transfer, **changes))


async def test_tls_between_nodes_and_a_sender_of_another_ca_is_refused(
        db: aiomysql.Connection, nodes: tuple[Node, Node], tmp_path: Path) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2)
    ca = _ca(tmp_path, "cluster-ca")
    for n in (n1, n2):
        crt, key = _node_cert(tmp_path, f"node{n.server_id}", ca)
        _with_transfer(n, tls=TlsConfig(str(crt), str(key), str(ca[0])))
    chain, rows = await run(db, append_initial(ChainBuilder("backup"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    assert tree_digest(n2.pool.mounted_path(branch)) == tree_digest(n1.pool.mounted_path(f"{n1.pool.name}/101"))

    rogue_ca = _ca(tmp_path, "rogue-ca")
    crt, key = _node_cert(tmp_path, "rogue", rogue_ca)
    _with_transfer(n1, tls=TlsConfig(str(crt), str(key), str(ca[0])))
    sh("zfs", "snapshot", f"{n1.pool.name}/101@2026-11-26T01:00:00")
    s2 = await take_snapshot(db, n1.pool, "101", "2026-11-27T01:00:00")
    before = n2.pool.state()
    chain, rows = await run(db, append_transfer(ChainBuilder("backup"), src, dst, [s1, s2]), n1, n2)
    assert chain["state"] == ChainState.FAILED
    assert n2.pool.state() == before
    await assert_no_leftovers(db, n1, n2)


async def test_nc_protocol_talks_v2_plain_streams(db: aiomysql.Connection, nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2)
    for n in (n1, n2):
        _with_transfer(n, protocol="nc")
    chain, rows = await run(db, append_initial(ChainBuilder("backup"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    assert n2.pool.snapshots(branch) == [s1.name]
    await assert_no_leftovers(db, n1, n2)


class Sink:
    def __init__(self) -> None:
        self.progress: list[dict[str, Any]] = []

    def progress_event(self, payload: dict[str, Any]) -> None:
        self.progress.append(payload)

    def wake_node(self, server_id: int, payload: dict[str, Any]) -> None: ...
    def transaction_event(self, payload: dict[str, Any]) -> None: ...
    def chain_event(self, chain_id: int, payload: dict[str, Any]) -> None: ...


class FakeDaemon:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.config = engine.config
        self.config_path = "-"
        self.exit_code = 0

    def request_stop(self) -> None: ...
    def reload(self) -> None: ...


async def test_rate_limit_progress_events_and_ctl_status(db: aiomysql.Connection,
                                                         nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2, count=6, size=1024 * 1024)
    _with_transfer(n1, rate_limit=2 * 1024 * 1024)
    fired = await append_initial(ChainBuilder("backup"), src, dst, [s1]).fire(db)
    sinks = (Sink(), Sink())
    seen: list[dict[str, Any]] = []
    started = asyncio.get_running_loop().time()
    async with running_engine(n2.cfg, events=sinks[1]), running_engine(n1.cfg, events=sinks[0]) as sender:
        for _ in range(300):
            status = await cmd_status(FakeDaemon(sender), {})
            seen = [t for t in status["transfers"] if t["kind"] == "send" and t["bytes"] > 0]
            if seen:
                break
            await asyncio.sleep(0.1)
        assert seen, await transactions_of(db, fired.chain_id)
        chain = await wait_chain(db, fired.chain_id, timeout=60)
    elapsed = asyncio.get_running_loop().time() - started
    assert chain["state"] == ChainState.DONE
    send = output((await transactions_of(db, fired.chain_id))[1])
    assert send["bytes"] > 6 * 1024 * 1024
    assert send["rate"] <= 2.3 * 1024 * 1024, send   # the limit, with the last chunk's slack
    assert elapsed >= send["bytes"] / (2 * 1024 * 1024) - 1
    assert seen[0]["total"] and seen[0]["total"] >= 6 * 1024 * 1024
    sent = [e for e in sinks[0].progress if e["kind"] == "send"]
    received = [e for e in sinks[1].progress if e["kind"] == "recv"]
    assert len(sent) >= 3 and sent[-1]["state"] == "done" and sent[-1]["bytes"] == send["bytes"]
    assert received[-1]["state"] == "done" and received[-1]["bytes"] == send["bytes"]
    assert any(0 < e["bytes"] < send["bytes"] and e["eta"] is not None for e in sent)


async def test_receiver_listens_again_after_its_daemon_restarted(db: aiomysql.Connection,
                                                                 nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2)
    fired = await append_initial(ChainBuilder("backup"), src, dst, [s1]).fire(db)
    async with running_engine(n2.cfg):
        while not (await transactions_of(db, fired.chain_id))[0]["t_done"]:
            await asyncio.sleep(0.05)
    async with cluster(n2, n1):
        chain = await wait_chain(db, fired.chain_id, timeout=60)
    assert chain["state"] == ChainState.DONE
    assert n2.pool.snapshots(branch) == [s1.name]
    await assert_no_leftovers(db, n1, n2)


async def test_local_send_between_two_pools_and_its_rollback(db: aiomysql.Connection,
                                                             nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    # both pools on node 1 for this one: LocalSend runs where both live
    sh("zfs", "create", f"{n1.pool.name}/101")
    data = n1.pool.mounted_path(f"{n1.pool.name}/101")
    write_files(data, "a")
    s1 = await take_snapshot(db, n1.pool, "101", "2026-11-25T01:00:00")
    src, dst = Side(1, n1.pool.name, "101"), Side(1, n2.pool.name, "copy")
    chain, rows = await run(db, append_local(ChainBuilder("local"), src, dst, [s1]), n1)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    assert tree_digest(n2.pool.mounted_path(f"{n2.pool.name}/copy")) == tree_digest(data)
    write_files(data, "b")
    s2 = await take_snapshot(db, n1.pool, "101", "2026-11-26T01:00:00")
    builder = append_local(ChainBuilder("local"), src, dst, [s1, s2])
    builder.append(90001, server=1, params={"fail": True})
    chain, rows = await run(db, builder, n1)
    assert chain["state"] == ChainState.FAILED
    assert n2.pool.snapshots(f"{n2.pool.name}/copy") == [s1.name]
    chain, rows = await run(db, append_local(ChainBuilder("local"), src, dst, [s1, s2]), n1)
    assert chain["state"] == ChainState.DONE
    assert n2.pool.snapshots(f"{n2.pool.name}/copy") == [s1.name, s2.name]
    assert tree_digest(n2.pool.mounted_path(f"{n2.pool.name}/copy")) == tree_digest(data)
    await assert_no_leftovers(db, n1, n2)


async def _break_when_moving(sender: Any, action: list[str]) -> list[str]:
    """Run ``action`` once the Send has moved 1 MiB; returns what it printed (pids, sockets)."""
    for _ in range(1000):
        if any(t["kind"] == "send" and t["bytes"] > 1 << 20 for t in sender.ctx.progress.items()):
            return subprocess.run(action, capture_output=True, text=True).stdout.split()
        await asyncio.sleep(0.02)
    raise AssertionError("the stream never moved")


async def test_a_broken_connection_is_redone_cleanly_on_zfs_fuse(db: aiomysql.Connection,
                                                                  nodes: tuple[Node, Node]) -> None:
    """zfs-fuse has no resumable receive: when the connection breaks in the middle (here ``ss -K`` closes
    it), the receiver's zfs recv fails and leaves nothing, and the sender's next attempt starts over."""
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2, count=8, size=1024 * 1024)
    _with_transfer(n1, rate_limit=3 * 1024 * 1024)
    fired = await append_initial(ChainBuilder("backup"), src, dst, [s1]).fire(db)
    async with running_engine(n2.cfg), running_engine(n1.cfg) as sender:
        closed = await _break_when_moving(sender, ["ss", "-K", "-t", "dst", "127.0.0.3", "dport", "= :10000"])
        assert closed, "ss -K closed no socket"
        chain = await wait_chain(db, fired.chain_id, timeout=60)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    sent = output(rows[1])
    assert sent["attempts"] == 2 and sent["resumed"] is False, sent
    assert sent["bytes"] >= 8 * 1024 * 1024  # counted from zero again: the whole stream went twice
    assert n2.pool.snapshots(branch) == [s1.name]
    assert tree_digest(n2.pool.mounted_path(branch)) == tree_digest(n1.pool.mounted_path(f"{n1.pool.name}/101"))
    await assert_no_leftovers(db, n1, n2)


async def test_a_broken_incremental_stream_redone_leaves_no_hold(db: aiomysql.Connection,
                                                                  nodes: tuple[Node, Node]) -> None:
    """The same with ``-I``: the first attempt's zfs send, killed when its connection broke, left zfs-fuse's
    temporary holds on the whole range although the retry succeeded (found by the soak: a later Vps::Destroy
    could not destroy those snapshots). Only the last, successful run releases its holds by itself."""
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2, count=1, size=64 * 1024)
    chain, rows = await run(db, append_initial(ChainBuilder("first"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    write_files(n1.pool.mounted_path(f"{n1.pool.name}/101"), "b", count=4, size=1024 * 1024)
    s2 = await take_snapshot(db, n1.pool, "101", "2026-11-26T01:00:00")
    write_files(n1.pool.mounted_path(f"{n1.pool.name}/101"), "c", count=4, size=1024 * 1024)
    s3 = await take_snapshot(db, n1.pool, "101", "2026-11-27T01:00:00")
    _with_transfer(n1, rate_limit=3 * 1024 * 1024)
    fired = await append_transfer(ChainBuilder("incr"), src, dst, [s1, s2, s3]).fire(db)
    async with running_engine(n2.cfg), running_engine(n1.cfg) as sender:
        closed = await _break_when_moving(sender, ["ss", "-K", "-t", "dst", "127.0.0.3", "dport", "= :10000"])
        assert closed, "ss -K closed no socket"
        chain = await wait_chain(db, fired.chain_id, timeout=60)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    assert output(rows[1])["attempts"] == 2, output(rows[1])
    assert n2.pool.snapshots(branch) == [s1.name, s2.name, s3.name]
    await assert_no_leftovers(db, n1, n2)  # userrefs 0 on every snapshot


async def test_zfs_send_killed_after_its_stream_is_not_sent_twice(db: aiomysql.Connection,
                                                                  nodes: tuple[Node, Node]) -> None:
    """On zfs-fuse the daemon writes the stream, not the ``zfs send`` client: killed, the client exits -9
    but the stream still arrives whole, without the end mark. The retry learns from the receiver that the
    snapshot is there (same guid) and does not send again (a full stream onto it would fail)."""
    n1, n2 = nodes
    src, dst, s1, branch = await _source(db, n1, n2, count=8, size=1024 * 1024)
    _with_transfer(n1, rate_limit=3 * 1024 * 1024)
    fired = await append_initial(ChainBuilder("backup"), src, dst, [s1]).fire(db)
    async with running_engine(n2.cfg), running_engine(n1.cfg) as sender:
        killed = await _break_when_moving(sender, ["pkill", "-9", "-e", "-f", f"zfs send {n1.pool.name}/101"])
        assert killed, "no zfs send was running"
        chain = await wait_chain(db, fired.chain_id, timeout=60)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
    assert output(rows[1])["attempts"] == 2, output(rows[1])
    assert n2.pool.snapshots(branch) == [s1.name]
    assert tree_digest(n2.pool.mounted_path(branch)) == tree_digest(n1.pool.mounted_path(f"{n1.pool.name}/101"))
    await assert_no_leftovers(db, n1, n2)
