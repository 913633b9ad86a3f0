"""``python -m bench [--only NAME ...] [--quick] [--json FILE] [--keep-workdir]``: run the benchmarks, print a
table per benchmark, optionally write the results as JSON. The exit code is 1 only when a benchmark could not
run (a missed target is a figure, not an error)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench import firewall, hop, idle, latency, throughput, transfer
from bench.common import BenchContext, BenchResult, describe_machine, load_average
from vpsadmind.testing.db import TestDbSettings

BENCHMARKS: dict[str, Callable[[BenchContext], Awaitable[BenchResult]]] = {
    "latency": latency.run,
    "hop": hop.run,
    "throughput": throughput.run,
    "idle": idle.run,
    "firewall": firewall.run,
    "transfer": transfer.run,
}
TIMEOUT = 240.0  # per benchmark


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", action="append", choices=sorted(BENCHMARKS), metavar="NAME",
                   help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="shorter runs for development (idle: 15 s instead of 60)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results to FILE as JSON")
    p.add_argument("--keep-workdir", action="store_true", help="keep the daemons' configs and logs")
    return p


def say(text: str = "") -> None:
    print(text, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        say(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            say(indent + "  ".join("-" * w for w in widths))


def print_result(result: BenchResult) -> None:
    say(f"\n== {result.title}  ({result.seconds:.0f} s; load average before {result.data['load_before']}, "
        f"after {result.data['load_after']})")
    verdict = {True: "ok", False: "MISSED", None: ""}
    table(["figure", "value", "target", "", "baseline (same run)"],
          [[r.metric, r.shown(), r.target, verdict[r.ok], r.baseline] for r in result.rows])
    for note in result.notes:
        say(f"  - {note}")


async def run_one(name: str, ctx: BenchContext) -> BenchResult | None:
    say(f"\n-- running {name} ...")
    started = time.monotonic()
    load_before = load_average()
    try:
        result = await asyncio.wait_for(BENCHMARKS[name](ctx), TIMEOUT)
    except Exception:
        say(f"!! {name} failed:\n{traceback.format_exc()}")
        return None
    result.seconds = time.monotonic() - started
    result.data["load_before"], result.data["load_after"] = load_before, load_average()
    print_result(result)
    return result


async def main_async(args: argparse.Namespace) -> int:
    settings = TestDbSettings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="vpsadmind-bench-"))
    ctx = BenchContext(settings=settings, workdir=workdir, quick=args.quick)
    machine = await describe_machine(settings)
    say("vpsadmind benchmarks" + ("  (--quick: not for the record)" if args.quick else ""))
    for key, value in machine.items():
        say(f"  {key:<10} {value}")
    names = args.only or list(BENCHMARKS)
    started = time.monotonic()
    results: list[BenchResult] = []
    failed: list[str] = []
    for name in names:
        res = await run_one(name, ctx)
        if res is None:
            failed.append(name)
        else:
            results.append(res)
    summary(results, failed, time.monotonic() - started)
    if args.json:
        doc: dict[str, Any] = {"machine": machine, "quick": args.quick, "failed": failed,
                               "results": [r.to_json() for r in results]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"results written to {args.json}")
    if args.keep_workdir or failed:
        say(f"daemon configs and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def summary(results: list[BenchResult], failed: list[str], seconds: float) -> None:
    missed = [(r.name, row.metric) for r in results for row in r.missed]
    say(f"\n== summary: {len(results)} benchmark(s) in {seconds:.0f} s")
    for name, metric in missed:
        say(f"  MISSED target: {name}: {metric}")
    for name in failed:
        say(f"  FAILED to run: {name}")
    if not missed and not failed:
        say("  every target met")


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
