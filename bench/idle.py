"""idle: one daemon with nothing to do (MQTT on, ``check_interval`` 1.0) over 60 s (15 s with ``--quick``).

Measured with psutil from READY on (start-up excluded): RSS every second (max and at the end) and CPU as the
user + system time the process used over the window divided by the wall time. Measured in the same window as
a baseline: a bare Python process that only imports what the daemon imports and sleeps, i.e. the floor of the
interpreter and its libraries.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psutil

from bench.common import DB_PREFIX, Api, BenchContext, BenchDaemon, BenchResult, bench_database, daemons

NAME = "idle"
SECONDS = 60.0
QUICK_SECONDS = 15.0
TARGET_RSS_MB = 80.0
TARGET_CPU = 1.0
_BASELINE = ("import asyncio, aiomysql, aiomqtt, structlog, yaml, vpsadmind.daemon, vpsadmind.bus; "
             "asyncio.run(asyncio.sleep(3600))")


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def sample(proc: psutil.Process, base: psutil.Process, seconds: float) -> dict[str, float]:
    """RSS each second and the CPU used by ``proc`` (and ``base``) over ``seconds``."""
    rss: list[int] = []
    t0, c0, b0 = time.monotonic(), _cpu(proc), _cpu(base)
    while time.monotonic() - t0 < seconds:
        rss.append(proc.memory_info().rss)
        await asyncio.sleep(1.0)
    wall = time.monotonic() - t0
    rss.append(proc.memory_info().rss)
    return {"wall": wall, "rss_max_mb": max(rss) / 2**20, "rss_end_mb": rss[-1] / 2**20,
            "rss_start_mb": rss[0] / 2**20, "cpu_pct": (_cpu(proc) - c0) / wall * 100,
            "base_rss_mb": base.memory_info().rss / 2**20, "base_cpu_pct": (_cpu(base) - b0) / wall * 100,
            "threads": proc.num_threads()}


async def run(ctx: BenchContext) -> BenchResult:
    seconds = QUICK_SECONDS if ctx.quick else SECONDS
    result = BenchResult(NAME, f"idle: one daemon with no work, MQTT on, over {seconds:.0f} s")
    base = subprocess.Popen([sys.executable, "-c", _BASELINE])
    try:
        async with bench_database(ctx, NAME) as _conn, Api(ctx, watch_chains=False) as api:
            daemon = BenchDaemon(ctx, DB_PREFIX + NAME, 1, mqtt=True)
            async with daemons(daemon):
                await daemon.start()
                await api.wait_subscribed(daemon)
                figures = await sample(psutil.Process(daemon.pid), psutil.Process(base.pid), seconds)
            await api.clear_status([1])
    finally:
        base.kill()
        base.wait()
    _report(result, figures, ctx.quick)
    return result


def _report(result: BenchResult, f: dict[str, float], quick: bool) -> None:
    base = f"bare Python + imports: {f['base_rss_mb']:.1f} MB"
    result.add("RSS max", f["rss_max_mb"], "MB", target=f"<= {TARGET_RSS_MB:.0f} MB",
               ok=f["rss_max_mb"] <= TARGET_RSS_MB, baseline=base)
    result.add("RSS at the end", f["rss_end_mb"], "MB", target=f"<= {TARGET_RSS_MB:.0f} MB",
               ok=f["rss_end_mb"] <= TARGET_RSS_MB, baseline=base)
    result.add("CPU (user + system) / wall", f["cpu_pct"], "%", target=f"<= {TARGET_CPU:g} %",
               ok=f["cpu_pct"] <= TARGET_CPU, baseline=f"bare Python + imports: {f['base_cpu_pct']:.2f} %")
    result.add("threads", f["threads"], "")
    result.notes.append(f"Window {f['wall']:.0f} s from READY; RSS grew from {f['rss_start_mb']:.1f} MB at its "
                        "start." + ("  --quick: not the recorded 60 s figure." if quick else ""))
    result.data = f
