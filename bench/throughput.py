"""throughput: 200 chains x 10 NoOp transactions on one node, all fired before the daemon starts.

The daemon runs with the default queues (``general``: 6 slots + 6 urgent; NoOps are not urgent, so six chains
run at a time), ``check_interval`` 1.0 and MQTT on. The clock starts at the daemon's READY=1 (systemd notify)
and stops when the last chain is done (the DB is polled every 10 ms). The wake-ups the API published with
each chain were lost while no daemon listened, so the benchmark publishes one wake-up as soon as the new
daemon's bus has subscribed; without it the engine would start at its first poll, one check_interval after
READY (see docs/benchmarks.md).

Measured against the same server in the same run: a bare SQL loop (:mod:`bench.bare`) that runs the
statements the engine needs per transaction and per chain, on six connections in parallel, with no engine:
the floor of what the database allows. Both are run three times, interleaved.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psutil

from bench.bare import bare_loop
from bench.common import (
    DB_PREFIX,
    NOOP,
    Api,
    BenchContext,
    BenchDaemon,
    BenchResult,
    bench_database,
    chain_states,
    daemons,
    wait_chains_final,
)
from vpsadmind.testing.chains import ChainBuilder, register_node
from vpsadmind.testing.db import truncate_all

NAME = "throughput"
CHAINS = 200
SIZE = 10
TOTAL = CHAINS * SIZE
RUNS = 3
TARGET = 500.0


async def reset_and_fire(conn: Any) -> list[int]:
    """Empty the database, register node 1, fire the chains as the API does; returns their ids."""
    await truncate_all(conn)
    await register_node(conn, 1, name="node1", ip4="127.0.1.1")
    ids = []
    for _ in range(CHAINS):
        builder = ChainBuilder("throughput")
        for _ in range(SIZE):
            builder.append(NOOP, server=1)
        ids.append((await builder.fire(conn)).chain_id)
    return ids


def _mariadb() -> psutil.Process | None:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("mariadbd", "mysqld"):
            return proc
    return None


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


async def daemon_run(ctx: BenchContext, conn: Any, api: Api, database: str, run: int) -> dict[str, float]:
    ids = await reset_and_fire(conn)
    daemon = BenchDaemon(ctx, database, 1, mqtt=True, tag=f"-run{run}")
    db_proc = _mariadb()
    async with daemons(daemon):
        ready = await daemon.start()
        proc = psutil.Process(daemon.pid)
        cpu0, db0 = _cpu(proc), _cpu(db_proc)
        subscribed = await api.wait_subscribed(daemon)
        await api.publish_wake(1, {"reason": "benchmark start"})
        end = await wait_chains_final(conn, CHAINS, timeout=120, interval=0.01)
        cpu1, db1 = _cpu(proc), _cpu(db_proc)
    states = await chain_states(conn, ids)
    if sorted(set(states.values())) != [2]:
        raise RuntimeError(f"not every chain ended done: {sorted(set(states.values()))}")
    wall = end - ready
    return {"seconds": wall, "tx_s": TOTAL / wall, "subscribed_s": subscribed - ready,
            "daemon_cpu": (cpu1 - cpu0) / wall * 100, "mariadb_cpu": (db1 - db0) / wall * 100}


async def bare_run(conn: Any, ctx: BenchContext, database: str) -> dict[str, float]:
    ids = await reset_and_fire(conn)
    db_proc = _mariadb()
    db0 = _cpu(db_proc)
    t0 = time.monotonic()
    await bare_loop(ctx.settings, database, server_id=1, workers=6)
    wall = time.monotonic() - t0
    db1 = _cpu(db_proc)
    states = await chain_states(conn, ids)
    if sorted(set(states.values())) != [2]:
        raise RuntimeError(f"bare loop left chains not done: {sorted(set(states.values()))}")
    return {"seconds": wall, "tx_s": TOTAL / wall, "mariadb_cpu": (db1 - db0) / wall * 100}


async def run(ctx: BenchContext) -> BenchResult:
    result = BenchResult(NAME, f"throughput: {CHAINS} chains x {SIZE} NoOps on one node, default queues")
    database = DB_PREFIX + NAME
    runs: list[dict[str, float]] = []
    bare: list[dict[str, float]] = []
    async with bench_database(ctx, NAME) as conn, Api(ctx, watch_chains=False) as api:
        for i in range(RUNS):
            bare.append(await bare_run(conn, ctx, database))
            runs.append(await daemon_run(ctx, conn, api, database, i))
        await api.clear_status([1])
    _report(result, runs, bare)
    return result


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f} - {max(values):.0f} tx/s"


def _report(result: BenchResult, runs: list[dict[str, float]], bare: list[dict[str, float]]) -> None:
    d = [r["tx_s"] for r in runs]
    b = [r["tx_s"] for r in bare]
    dm, bm = statistics.median(d), statistics.median(b)
    result.add(f"daemon, median of {len(d)}", dm, "tx/s", target=f">= {TARGET:.0f} tx/s", ok=dm >= TARGET,
               baseline=f"bare SQL loop: {bm:.0f} tx/s")
    result.add("daemon, spread (min - max)", max(d) - min(d), "tx/s", text=_spread(d))
    result.add(f"bare SQL loop, median of {len(b)}", bm, "tx/s")
    result.add("bare SQL loop, spread (min - max)", max(b) - min(b), "tx/s", text=_spread(b))
    result.add("ratio daemon / bare loop", dm / bm * 100, "%")
    result.add("daemon CPU while running, median", statistics.median(r["daemon_cpu"] for r in runs), "%")
    result.add("MariaDB CPU: daemon run / bare loop, median",
               statistics.median(r["mariadb_cpu"] for r in runs), "%",
               baseline=f"bare loop: {statistics.median(r['mariadb_cpu'] for r in bare):.0f} %")
    result.notes.append(
        f"{TOTAL} transactions per run. The daemon's time runs from READY=1 to the last chain done and includes "
        f"the wait for its MQTT subscription (median {statistics.median(r['subscribed_s'] for r in runs) * 1000:.0f}"
        " ms) before the benchmark's wake-up. CPU figures are percent of one core (the machine has "
        f"{psutil.cpu_count()}).")
    result.data = {"daemon": runs, "bare": bare, "daemon_median_tx_s": dm, "bare_median_tx_s": bm}
