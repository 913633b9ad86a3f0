"""transfer: dataset transfers between two nodes, server 1 (source) and server 2 (destination), each with its
own throw-away zfs-fuse pool, one MariaDB.

a. Throughput. A dataset with 256 MiB of incompressible random data (64 MiB with ``--quick``) and one snapshot
   is sent from node 1 to node 2 by two real daemon processes, as the API chains it (Recv@2, Send@1,
   RecvCheck@2, :func:`vpsadmind.testing.transfers.append_transfer`): the time from the chain's fire to its done
   event, and the Send's own ``bytes``/``seconds`` from its ``t_output``. Baseline in the same run, between the
   same pools: the raw pipe ``zfs send pool1/ds@s | zfs recv pool2/dsN`` (two processes, no shell, no copy in
   between). The two alternate (raw first in even rounds), each into a new dataset destroyed afterwards.
b. zfs call counts of an initial transfer (:func:`~vpsadmind.testing.transfers.append_initial`) of a dataset
   with 100 snapshots, and of a one-snapshot incremental, on both nodes together; the same for 3 snapshots, to
   show nothing is done per snapshot. A daemon process cannot be counted from outside, so this part runs the
   two engines in this process, where :func:`vpsadmind.system.record_calls` sees every command; each engine's
   once-per-lifetime capability probe is run before counting. tests/transfer/test_budget.py pins the counts.
c. Chain time of a one-snapshot incremental backup between the daemons (fire to done event), with MQTT on:
   the API wakes node 2, node 2 wakes node 1 after Recv, node 1 wakes node 2 after Send. v2.0 has no wake-ups:
   each of the 3 hops between nodes waits for the next poll of the node it goes to (``check_interval``).

The daemons run with v2.0's check interval and MQTT on the system broker, and with the ``zfs_send`` queue open
at once (v2.0 opens it 4 hours after the start).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from bench.common import (
    CHECK_INTERVAL,
    DB_PREFIX,
    Api,
    BenchContext,
    BenchDaemon,
    BenchResult,
    bench_database,
    chain_states,
    daemons,
)
from vpsadmind import system
from vpsadmind.config import QueueConfig
from vpsadmind.handlers.storage_common import zfs_driver
from vpsadmind.log import configure_logging
from vpsadmind.system import CallLog, record_calls
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain
from vpsadmind.testing.transfers import Side, Snap, append_initial, append_transfer
from vpsadmind.testing.zfspool import TempPool, zfs_unavailable

NAME: Final = "transfer"
MIB: Final = 1024 * 1024
SIZE: Final = 256 * MIB
QUICK_SIZE: Final = 64 * MIB
ROUNDS: Final = 5                 # of each kind (raw pipe, daemons); 2 with --quick
INCREMENTALS: Final = 5
SNAPSHOT_COUNTS: Final = (3, 100)
TARGET_RATIO: Final = 0.9
POOL_SIZE: Final = 1024 * MIB     # sparse: the big dataset, one copy in flight and the kept copy fit
HOPS: Final = 3                   # API -> node 2 (Recv), node 2 -> node 1 (Send), node 1 -> node 2 (RecvCheck)
SEND: Final = 5221
SOURCE: Final = "big"
#: The zfs_send queue opens at once (v2.0: 4 h after the start, which would hold every Send here).
SEND_QUEUE: Final = {"zfs_send": {"threads": 1, "start_delay": 0}}


@dataclass(frozen=True, slots=True)
class Pools:
    src: TempPool   # node 1's
    dst: TempPool   # node 2's


# ----------------------------------------------------------------------------------------------------------
# zfs helpers (not counted: part b records only inside its chains)


_names = iter(range(10**6))


def snapshot_name() -> str:
    """A name as the API gives snapshots (a UTC time), unique within the run."""
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=next(_names))
    return at.strftime("%Y-%m-%dT%H:%M:%S")


async def take_snapshot(conn: Any, dataset: str) -> Snap:
    """``zfs snapshot`` and the ``snapshots`` row the API would have (confirmed)."""
    name = snapshot_name()
    await system.run(["zfs", "snapshot", f"{dataset}@{name}"], timeout=60)
    async with conn.cursor() as cur:
        await cur.execute("INSERT INTO snapshots (name, dataset_id, confirmed) VALUES (%s, 1, 1)", (name,))
        return Snap(int(cur.lastrowid), name)


def write_random(path: Path, size: int) -> None:
    """``size`` bytes that no compression can shrink, 1 MiB at a time."""
    with open(path, "wb") as fh:
        for _ in range(size // MIB):
            fh.write(os.urandom(MIB))


async def destroy(dataset: str, tries: int = 40) -> None:
    """``zfs destroy -r``, retried: zfs-fuse calls a dataset busy for a moment after a receive mounted it."""
    for attempt in range(tries):
        try:
            await system.run(["zfs", "destroy", "-r", dataset], timeout=60)
            return
        except system.CommandFailed:
            if attempt == tries - 1:
                raise
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def two_pools(ctx: BenchContext) -> AsyncIterator[Pools]:
    """One TempPool per node, always destroyed."""
    problem = await zfs_unavailable()
    if problem is not None:
        raise RuntimeError(f"the transfer benchmark needs zfs-fuse: {problem}")
    async with contextlib.AsyncExitStack() as stack:
        made = []
        for node in (1, 2):
            base = ctx.workdir / f"{NAME}-pool{node}"
            base.mkdir(parents=True, exist_ok=True)
            made.append(await stack.enter_async_context(TempPool(size=POOL_SIZE, base_dir=str(base))))
        yield Pools(made[0], made[1])


# ----------------------------------------------------------------------------------------------------------
# b. zfs calls, engines in this process


def zfs_calls(log: CallLog) -> int:
    return log.count("zfs") + log.count("zpool")


async def counted_chain(conn: Any, builder: ChainBuilder) -> CallLog:
    """Fire and wait for a chain while recording the commands of the (already running) engines."""
    with record_calls() as log:
        fired = await builder.fire(conn)
        chain = await wait_chain(conn, fired.chain_id, timeout=120)
    if chain["state"] != 2:
        raise RuntimeError(f"chain {fired.chain_id} ended {chain}: {await transactions_of(conn, fired.chain_id)}")
    return log


async def calls_for(conn: Any, pools: Pools, count: int) -> dict[str, Any]:
    """Initial transfer of a new dataset with ``count`` snapshots, then a one-snapshot incremental."""
    dataset = f"{pools.src.name}/calls{count}"
    await system.run(["zfs", "create", dataset], timeout=60)
    root = Path(pools.src.mountpoint) / f"calls{count}"
    snaps = []
    for i in range(count):
        (root / f"f{i}").write_bytes(os.urandom(4096))  # each snapshot carries a little data
        snaps.append(await take_snapshot(conn, dataset))
    src, dst = Side(1, pools.src.name, f"calls{count}"), Side(2, pools.dst.name, f"calls{count}")
    initial = await counted_chain(conn, append_initial(ChainBuilder("bench_calls"), src, dst, snaps))
    (root / "next").write_bytes(os.urandom(4096))
    last = await take_snapshot(conn, dataset)
    incremental = await counted_chain(conn, append_transfer(ChainBuilder("bench_calls"), src, dst, [snaps[-1], last]))
    return {"initial": zfs_calls(initial), "incremental": zfs_calls(incremental),
            "initial_commands": _commands(initial), "incremental_commands": _commands(incremental)}


def _commands(log: CallLog) -> dict[str, int]:
    """``{"zfs get": 3, ...}``: what the calls were, for the JSON and the docs."""
    return dict(Counter(" ".join([os.path.basename(argv[0]), *argv[1:2]]) for argv in log.calls))


async def measure_calls(ctx: BenchContext, conn: Any, database: str, pools: Pools) -> dict[int, dict[str, Any]]:
    """Part b, before the daemons start (an engine and a daemon of the same node cannot run together)."""
    configure_logging("warning")  # the in-process engines would print every transaction
    configs = [make_config(ctx.settings, database, server_id=node, journal=str(ctx.workdir / f"{NAME}-journal{node}"),
                           queues={"zfs_send": QueueConfig(1, 0, 0)}) for node in (1, 2)]
    out: dict[int, dict[str, Any]] = {}
    async with contextlib.AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(running_engine(cfg)) for cfg in configs]
        for engine in engines:
            await zfs_driver(engine.ctx)  # each daemon probes zfs once in its life: not a cost of a transfer
        for count in SNAPSHOT_COUNTS:
            out[count] = await calls_for(conn, pools, count)
    return out


# ----------------------------------------------------------------------------------------------------------
# a. and c.: two daemon processes


def transfer_daemon(ctx: BenchContext, database: str, server_id: int) -> BenchDaemon:
    daemon = BenchDaemon(ctx, database, server_id, mqtt=True, tag=f"-{NAME}")
    cfg = yaml.safe_load(daemon.process.config.read_text())
    cfg["vpsadmin"]["queues"] = SEND_QUEUE
    daemon.process.config.write_text(yaml.safe_dump(cfg))
    return daemon


async def timed_transfer(api: Api, conn: Any, src: Side, dst: Side, snaps: list[Snap], *,
                         timeout: float = 120.0) -> dict[str, float]:
    """Fire a Recv/Send/RecvCheck chain and wake its first node as the API does; seconds from before the
    insert to the done event (``total``) and the Send's ``bytes`` and ``seconds``."""
    builder = append_transfer(ChainBuilder("bench_transfer"), src, dst, snaps)
    t0 = time.monotonic()
    fired = await builder.fire(conn)
    watch = api.watch(fired.chain_id)
    await api.wake(dst.node, fired)  # Recv, the first transaction, runs on the destination
    try:
        done_at = await asyncio.wait_for(watch.done, timeout)
    except TimeoutError:
        rows = await transactions_of(conn, fired.chain_id)
        raise RuntimeError(f"transfer chain {fired.chain_id} not done after {timeout} s: {rows}") from None
    rows = await transactions_of(conn, fired.chain_id)
    state = (await chain_states(conn, [fired.chain_id]))[fired.chain_id]
    if state != 2:
        raise RuntimeError(f"transfer chain {fired.chain_id} ended in state {state}: "
                           f"{[(r['t_type'], r['t_output']) for r in rows]}")
    send = json.loads(next(r for r in rows if r["t_type"] == SEND)["t_output"])
    return {"chain": fired.chain_id, "total": done_at - t0, "bytes": float(send["bytes"]),
            "send_seconds": float(send["seconds"])}


def raw_pipe(snapshot: str, target: str) -> float:
    """``zfs send snapshot | zfs recv target``: the two processes joined by a pipe; seconds to both ends."""
    t0 = time.monotonic()
    sender = subprocess.Popen(["zfs", "send", snapshot], stdout=subprocess.PIPE)
    assert sender.stdout is not None
    try:
        receiver = subprocess.Popen(["zfs", "recv", target], stdin=sender.stdout)
    finally:
        sender.stdout.close()  # only the receiver holds the read end: it sees EOF, the sender EPIPE
    rc_recv, rc_send = receiver.wait(timeout=600), sender.wait(timeout=600)
    seconds = time.monotonic() - t0
    if rc_recv or rc_send:
        raise RuntimeError(f"raw pipe into {target}: zfs send exited {rc_send}, zfs recv {rc_recv}")
    return seconds


async def throughput(api: Api, conn: Any, pools: Pools, snap: Snap, rounds: int
                     ) -> tuple[list[dict[str, float]], list[float], str]:
    """Part a: ``rounds`` of each, alternating which goes first. Returns the chains, the raw pipe's seconds,
    and the daemons' last copy (kept: part c sends increments onto it)."""
    chains: list[dict[str, float]] = []
    raw: list[float] = []
    src = Side(1, pools.src.name, SOURCE)
    kept = f"copy{rounds - 1}"
    for i in range(rounds):
        for kind in (("raw", "chain") if i % 2 == 0 else ("chain", "raw")):
            if kind == "raw":
                raw.append(await asyncio.to_thread(raw_pipe, f"{pools.src.name}/{SOURCE}@{snap.name}",
                                                   f"{pools.dst.name}/raw{i}"))
                await destroy(f"{pools.dst.name}/raw{i}")
            else:
                chains.append(await timed_transfer(api, conn, src, Side(2, pools.dst.name, f"copy{i}"), [snap]))
                if f"copy{i}" != kept:
                    await destroy(f"{pools.dst.name}/copy{i}")
    return chains, raw, kept


async def incrementals(api: Api, conn: Any, pools: Pools, base: Snap, target: str, count: int
                       ) -> list[dict[str, float]]:
    """Part c: ``count`` one-snapshot incrementals (1 MiB of new data each) onto the daemons' copy."""
    src, dst = Side(1, pools.src.name, SOURCE), Side(2, pools.dst.name, target)
    out = []
    prev = base
    for k in range(count):
        await asyncio.to_thread(write_random, Path(pools.src.mountpoint) / SOURCE / f"inc{k}.bin", MIB)
        snap = await take_snapshot(conn, f"{pools.src.name}/{SOURCE}")
        out.append(await timed_transfer(api, conn, src, dst, [prev, snap]))
        prev = snap
    return out


async def measure_daemons(ctx: BenchContext, conn: Any, database: str, pools: Pools, size: int
                          ) -> dict[str, Any]:
    """Parts a and c with two daemon processes on the system MQTT broker."""
    await system.run(["zfs", "create", f"{pools.src.name}/{SOURCE}"], timeout=60)
    started = time.monotonic()
    await asyncio.to_thread(write_random, Path(pools.src.mountpoint) / SOURCE / "data.bin", size)
    written = time.monotonic() - started
    snap = await take_snapshot(conn, f"{pools.src.name}/{SOURCE}")
    rounds = 2 if ctx.quick else ROUNDS
    async with Api(ctx) as api:
        nodes = [transfer_daemon(ctx, database, server) for server in (1, 2)]
        async with daemons(*nodes):
            for node in nodes:
                await node.start()
                await api.wait_subscribed(node)
            chains, raw, kept = await throughput(api, conn, pools, snap, rounds)
            incs = await incrementals(api, conn, pools, snap, kept, INCREMENTALS)
        await api.clear_status([1, 2])
    return {"chains": chains, "raw": raw, "incrementals": incs, "write_seconds": written}


async def run(ctx: BenchContext) -> BenchResult:
    size = QUICK_SIZE if ctx.quick else SIZE
    result = BenchResult(NAME, f"transfer: {size // MIB} MiB dataset node 1 -> node 2 through two daemons, "
                               "zfs call counts, incremental chain time")
    database = DB_PREFIX + NAME
    async with bench_database(ctx, NAME, nodes=(1, 2)) as conn, two_pools(ctx) as pools:
        calls = await measure_calls(ctx, conn, database, pools)
        measured = await measure_daemons(ctx, conn, database, pools, size)
    _report(result, size, calls, measured)
    return result


# ----------------------------------------------------------------------------------------------------------
# Report


def _rate(nbytes: float, seconds: float) -> float:
    return nbytes / MIB / seconds


def _mib_s(value: float) -> str:
    return f"{value:.1f} MiB/s"


def _report(result: BenchResult, size: int, calls: dict[int, dict[str, Any]], m: dict[str, Any]) -> None:
    chains, raw = m["chains"], m["raw"]
    stream = statistics.median(c["bytes"] for c in chains)  # the same snapshot: the same stream each time
    chain_rates = [_rate(c["bytes"], c["total"]) for c in chains]
    send_rates = [_rate(c["bytes"], c["send_seconds"]) for c in chains]
    raw_rates = [_rate(stream, s) for s in raw]
    med, raw_med = statistics.median(chain_rates), statistics.median(raw_rates)
    ratio = med / raw_med
    raw_txt = f"raw pipe: {_mib_s(raw_med)}"
    result.add(f"a. chain fire -> done, median of {len(chains)}", med, "MiB/s", text=_mib_s(med),
               target=f">= {TARGET_RATIO:g} x raw pipe", ok=ratio >= TARGET_RATIO, baseline=raw_txt)
    result.add("a. chain / raw pipe, median / median", ratio * 100, "%")
    result.add("a. chain fire -> done, best", max(chain_rates), "MiB/s", text=_mib_s(max(chain_rates)),
               baseline=f"raw pipe best: {_mib_s(max(raw_rates))}")
    result.add("a. Send's own bytes / seconds (t_output), median", statistics.median(send_rates), "MiB/s",
               text=_mib_s(statistics.median(send_rates)))
    result.add("a. Send's own / raw pipe, median / median", statistics.median(send_rates) / raw_med * 100, "%")
    result.add(f"a. raw zfs send | zfs recv, median of {len(raw)}", raw_med, "MiB/s", text=_mib_s(raw_med))
    result.add("a. chain time, median", statistics.median(c["total"] for c in chains), "s",
               baseline=f"raw pipe: {statistics.median(raw):.2f} s")
    result.add("a. chain time outside the Send (fire -> done minus Send seconds), median",
               statistics.median(c["total"] - c["send_seconds"] for c in chains) * 1000, "ms")
    _report_calls(result, calls)
    _report_incrementals(result, m["incrementals"])
    result.notes.append(
        f"a. {size // MIB} MiB of random data, a stream of {stream / MIB:.1f} MiB; the same snapshot goes into a new "
        f"dataset each time, raw pipe and daemons alternating (raw first in even rounds). The chain's time runs "
        f"from before the API's insert to the done event over MQTT: three transactions, two wake-ups between "
        f"nodes and the stream through the daemons' authenticated framing; the raw pipe has none of that. "
        f"Writing the data took {m['write_seconds']:.1f} s.")
    result.data = {"stream_bytes": stream, "chain_rates": chain_rates, "send_rates": send_rates,
                   "raw_rates": raw_rates, "chains": chains, "raw_seconds": raw, "calls": calls,
                   "incrementals": m["incrementals"]}


def _report_calls(result: BenchResult, calls: dict[int, dict[str, Any]]) -> None:
    few, many = calls[min(SNAPSHOT_COUNTS)], calls[max(SNAPSHOT_COUNTS)]
    same = (few["initial"], few["incremental"]) == (many["initial"], many["incremental"])
    result.add(f"b. zfs/zpool calls, initial transfer of {max(SNAPSHOT_COUNTS)} snapshots", many["initial"], "",
               target=f"a few, same as for {min(SNAPSHOT_COUNTS)}", ok=same,
               baseline=f"{min(SNAPSHOT_COUNTS)} snapshots: {few['initial']}")
    result.add("b. zfs/zpool calls, one-snapshot incremental", many["incremental"], "",
               target=f"a few, same as for {min(SNAPSHOT_COUNTS)}", ok=same,
               baseline=f"after {min(SNAPSHOT_COUNTS)} snapshots: {few['incremental']}")
    result.notes.append(
        "b. Both nodes together, engines in this process, the capability probe each daemon runs once excluded. "
        f"Initial: {_fmt_commands(many['initial_commands'])}. Incremental: "
        f"{_fmt_commands(many['incremental_commands'])}.")


def _fmt_commands(commands: dict[str, int]) -> str:
    return ", ".join(f"{n} x {cmd}" for cmd, n in sorted(commands.items(), key=lambda kv: (-kv[1], kv[0])))


def _report_incrementals(result: BenchResult, incs: list[dict[str, float]]) -> None:
    times = [i["total"] for i in incs]
    v2 = f"v2.0 needs >= {HOPS} poll cycles ({HOPS} x {CHECK_INTERVAL:g} s at worst)"
    result.add(f"c. incremental backup chain, fire -> done, median of {len(times)}", statistics.median(times) * 1000,
               "ms", baseline=v2)
    result.add("c. incremental backup chain, min - max", 0.0, "ms",
               text=f"{min(times) * 1000:.0f} - {max(times) * 1000:.0f} ms")
    result.notes.append(
        f"c. One snapshot with 1 MiB of new data per run (stream median "
        f"{statistics.median(i['bytes'] for i in incs) / MIB:.2f} MiB). v2.0 has no wake-ups: each of the {HOPS} "
        f"transactions (Recv@2, Send@1, RecvCheck@2) sits until the next poll of its node, every "
        f"check_interval ({CHECK_INTERVAL:g} s): >= {HOPS} poll cycles, {HOPS / 2 * CHECK_INTERVAL:g} s on average "
        f"and up to {HOPS * CHECK_INTERVAL:g} s of waiting before the stream's own time (reasoned, not measured).")
