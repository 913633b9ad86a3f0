"""``python -m bench.soak [--chains N] [--duration S] [--seed N] [--faults a,b] [--json FILE] [--workdir DIR]``:
the reliability soak of issue 9 (see :mod:`bench.soak`). Bounded by ``--chains`` and ``--duration`` (plus at
most 5 minutes for the chains still running then); exits 0 when every invariant holds, 1 otherwise."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench.soak.cluster import start_cluster, stop_cluster
from bench.soak.faults import FAULT_KINDS, Chaos
from bench.soak.runner import Soak, final_checks, traffic_checks, wait_quiet
from vpsadmind.demo import say, table
from vpsadmind.testing.fakevz.mounts import mountpoints


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--chains", type=int, default=150, help="chains to fire at most (default 150)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds to fire chains for (default 600)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    p.add_argument("--faults", default=",".join(FAULT_KINDS),
                   help=f"fault kinds to inject, comma separated (default all: {','.join(FAULT_KINDS)}; '' none)")
    p.add_argument("--concurrency", type=int, default=5, help="chains in flight at most (default 5)")
    p.add_argument("--fault-gap", type=float, default=4.0,
                   help="mean seconds between the end of one fault and the next (default 4)")
    p.add_argument("--vps", type=int, default=8, help="VPSes the chains work on (default 8)")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/vpsadmind-soak"),
                   help="pools, logs and configs (default /tmp/vpsadmind-soak, recreated)")
    return p


async def soak(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    kinds = tuple(k for k in args.faults.split(",") if k)
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        say(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        return 2
    _clean(args.workdir)
    say(f"soak: seed {seed}, at most {args.chains} chains in {args.duration:g} s, faults: {', '.join(kinds) or 'none'}")
    began = time.monotonic()
    cluster = await start_cluster(args.workdir, check_interval=0.5)
    say(f"cluster up in {time.monotonic() - began:.1f} s: " + ", ".join(
        f"{n.name} ({n.ip}, pool {n.pool.name}, pid {n.daemon.pid})" for n in cluster.nodes.values()))
    problems: list[str] = []
    try:
        run = Soak(cluster, rng, Chaos(cluster, random.Random(seed + 1), kinds), args.chains, args.duration,
                   concurrency=args.concurrency, vps_count=args.vps, fault_gap=args.fault_gap)
        began = time.monotonic()
        await run.run()
        await wait_quiet(run)
        elapsed = time.monotonic() - began
        checks = await final_checks(run)
        checks.update(await traffic_checks(run))
    finally:
        problems = await stop_cluster(cluster)
    return report(args, seed, run, checks, elapsed, problems)


def report(args: argparse.Namespace, seed: int, run: Soak, checks: dict[str, list[str]], elapsed: float,
           problems: list[str]) -> int:
    say(f"\nChains: {run.fired} fired in {elapsed:.0f} s (seed {seed}), by outcome")
    table(["chain kind and end", "count"], sorted(run.outcomes.items()))
    if run.unplanned:
        say("\nChains that failed without a planned failure, by their first error (numbers as N)")
        table(["first failed transaction: error", "chains"], run.unplanned.most_common(12))
    for refused in run.refused:
        say(f"  refused by the API (resource locked): {refused}")
    say("\nFaults injected (missed: the moment did not come within 30 s)")
    table(["fault", "injected", "missed"], [[k, run.chaos.counts[k], run.chaos.missed[k]] for k in run.chaos.kinds])
    if run.chaos.zfs_faults:
        say("  zfs errors met on the fake pools: " + ", ".join(f"{k} {v}" for k, v in run.chaos.zfs_faults.items()))
    pumped = {ip: c for net in run.cluster.traffic.values() for ip, c in net.expected().items()}
    say(f"\nTraffic pumped through the hypervisors' accounting: {len(pumped)} addresses, "
        f"{sum(c.bytes_in + c.bytes_out for c in pumped.values())} bytes in "
        f"{sum(c.packets_in + c.packets_out for c in pumped.values())} packets")
    rec = run.chaos.recoveries
    if rec:
        say("\nRecovery after a kill -9 (kill -> serving again; kill -> next saved result of that node)")
        worst = max(rec, key=lambda r: r.serving)
        saves = [r.next_save for r in rec if r.next_save is not None]
        say(f"  kills: {len(rec)}, serving again: max {worst.serving:.2f} s ({worst.node}, {worst.kind}), "
            f"mean {sum(r.serving for r in rec) / len(rec):.2f} s; next save: "
            + (f"max {max(saves):.2f} s, mean {sum(saves) / len(saves):.2f} s" if saves else "none seen"))
    say("\nInvariants")
    table(["invariant", "violations"], [[name, len(items)] for name, items in checks.items()])
    bad = {name: items for name, items in checks.items() if items}
    for name, items in bad.items():
        say(f"\n  {name}:")
        for item in items[:20]:
            say(f"    - {item}")
    for chain_id, lines in run.evidence.items():
        say(f"\n  evidence of fatal chain {chain_id}:")
        for line in lines:
            say(f"    {line}")
    for p in problems:
        say(f"  clean-up: {p}")
    say("\nFault log")
    for line in run.chaos.log:
        say(f"  {line}")
    if args.json:
        args.json.write_text(json.dumps({
            "seed": seed, "fired": run.fired, "refused": run.refused, "elapsed": elapsed,
            "outcomes": dict(run.outcomes),
            "states": dict(run.states), "faults": dict(run.chaos.counts), "missed": dict(run.chaos.missed),
            "zfs_faults": dict(run.chaos.zfs_faults), "unplanned": dict(run.unplanned),
            "evidence": {str(k): v for k, v in run.evidence.items()},
            "recoveries": [{"node": r.node, "kind": r.kind, "serving": r.serving, "next_save": r.next_save}
                           for r in rec],
            "invariants": {k: len(v) for k, v in checks.items()}, "violations": bad, "cleanup": problems}, indent=1))
    verdict = not bad and not problems
    say(f"\nSOAK {'OK' if verdict else 'FAILED'}: {sum(len(v) for v in bad.values())} invariant violations")
    return 0 if verdict else 1


def _clean(workdir: Path) -> None:
    base = str(workdir.resolve()) + "/"
    if any(m.startswith(base) for m in mountpoints()):
        raise SystemExit(f"something is still mounted below {workdir}: unmount it first")
    shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(soak(args))
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
