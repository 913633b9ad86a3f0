"""latency: a 10-transaction NoOp chain on one node, from the API's insert to the chain's ``done``.

Each chain is fired the way the API fires it (one DB transaction, then the wake-up publish after the commit);
the clock starts before the insert and stops when the daemon's ``chain/<id>/state`` event with state done
arrives (the daemon publishes it after its commit; the DB state is checked afterwards). Chains are fired one
after another, each after the previous one is done. The daemon runs with v2.0's ``check_interval`` 1.0 and
MQTT on. The same is then measured with MQTT off (polling only) for a few chains, each fired after a random
pause so that the fire falls at a random point of the daemon's poll period.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

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
    fire_noop_chain,
    fmt_ms,
    private_broker,
    summarize,
)

NAME = "latency"
SIZE = 10
CHAINS = 50
WARMUP = 3
POLLING_CHAINS = 5
NODELAY_CHAINS = 30
TARGET_P50 = 0.100
TARGET_P99 = 0.300


async def measure_polling(conn: Any, api: Api, n: int, seed: int = 10001) -> list[float]:
    rng = random.Random(seed)
    out: list[float] = []
    for _ in range(n):
        await asyncio.sleep(rng.uniform(0, CHECK_INTERVAL))
        t0 = time.monotonic()
        fired = await fire_noop_chain(conn, [1] * SIZE, name="latency-poll")
        await api.wake(1, fired)  # the API publishes it; the daemon does not listen
        while (await chain_states(conn, [fired.chain_id])).get(fired.chain_id) != 2:
            if time.monotonic() - t0 > 15:
                raise TimeoutError(f"chain {fired.chain_id} not done after 15 s (polling only)")
            await asyncio.sleep(0.005)
        out.append(time.monotonic() - t0)
    return out


async def measure_nodelay_broker(ctx: BenchContext, conn: Any, database: str) -> list[dict[str, float]]:
    """The same against a private Mosquitto with ``set_tcp_nodelay true`` (see docs/benchmarks.md)."""
    with private_broker(ctx) as pctx:
        async with Api(pctx) as api:
            daemon = BenchDaemon(pctx, database, 1, mqtt=True, tag="-nodelay")
            async with daemons(daemon):
                await daemon.start()
                await api.wait_subscribed(daemon)
                return await api.timed_chains(conn, [1] * SIZE, NODELAY_CHAINS, warmup=WARMUP)


async def run(ctx: BenchContext) -> BenchResult:
    result = BenchResult(NAME, f"latency: {SIZE}-transaction NoOp chain, insert to done, one node")
    database = DB_PREFIX + NAME
    async with bench_database(ctx, NAME) as conn, Api(ctx) as api:
        daemon = BenchDaemon(ctx, database, 1, mqtt=True)
        async with daemons(daemon):
            await daemon.start()
            await api.wait_subscribed(daemon)
            samples = await api.timed_chains(conn, [1] * SIZE, CHAINS, warmup=WARMUP)
        nodelay = await measure_nodelay_broker(ctx, conn, database)
        poller = BenchDaemon(ctx, database, 1, mqtt=False, tag="-polling")
        async with daemons(poller):
            await poller.start()
            polling = await measure_polling(conn, api, POLLING_CHAINS)
        await api.clear_status([1])
    _report(result, samples, polling, nodelay)
    return result


def _report(result: BenchResult, samples: list[dict[str, float]], polling: list[float],
            nodelay: list[dict[str, float]]) -> None:
    total = summarize([s["total"] for s in samples])
    poll = summarize(polling)
    model = SIZE * CHECK_INTERVAL
    result.add("p50, MQTT on", total["p50"] * 1000, "ms", target=f"<= {TARGET_P50 * 1000:.0f} ms",
               ok=total["p50"] <= TARGET_P50, baseline=f"v2.0 model: >= {model:.0f} s")
    result.add("p99, MQTT on", total["p99"] * 1000, "ms", target=f"<= {TARGET_P99 * 1000:.0f} ms",
               ok=total["p99"] <= TARGET_P99, baseline=f"v2.0 model: >= {model:.0f} s")
    result.add("max, MQTT on", total["max"] * 1000, "ms")
    fast = summarize([s["total"] for s in nodelay])
    result.add(f"p50, broker set_tcp_nodelay ({len(nodelay)} chains)", fast["p50"] * 1000, "ms")
    result.add(f"p99, broker set_tcp_nodelay ({len(nodelay)} chains)", fast["p99"] * 1000, "ms")
    result.add(f"p50, MQTT off ({len(polling)} chains)", poll["p50"] * 1000, "ms",
               baseline=f"v2.0 model: >= {model:.0f} s")
    result.add(f"max, MQTT off ({len(polling)} chains)", poll["max"] * 1000, "ms")
    parts = {k: summarize([s[k] for s in samples]) for k in ("fire", "first", "step")}
    result.notes.append(
        f"The API's insert (one DB transaction) is {fmt_ms(parts['fire']['p50'])} of it (p50). With the "
        "broker's set_tcp_nodelay the daemon is faster: both the broker and the daemon's MQTT socket use "
        "Nagle's algorithm by default, which holds a small write back until the peer's delayed ACK (up to "
        "40 ms); see docs/benchmarks.md.")
    result.notes.append(
        f"v2.0 model: v2.0 starts each transaction at a poll, once per check_interval, so a {SIZE}-transaction "
        f"chain needs about {SIZE} x {CHECK_INTERVAL:g} s = {model:.0f} s. Polling only, this daemon waits for "
        "one poll (the first transaction) and runs the rest at once.")
    result.data = {"chains": len(samples), "total": total, "broker_nodelay": fast, "polling": poll,
                   "parts_from_events": parts, "v2_model_s": model,
                   "samples_ms": [round(s["total"] * 1000, 2) for s in samples],
                   "polling_ms": [round(v * 1000, 1) for v in polling]}
