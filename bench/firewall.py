"""firewall: accounting reinit with 10,000 addresses (60,000 rules) in a network namespace, per iptables backend.

Measured with the real :class:`vpsadmind.firewall.Firewall` (``iptables-restore --noflush``, one commit per
address family) in a throw-away namespace:

- cold reinit: no chain yet, so the chain, 60,000 rules and the FORWARD jump are created in one commit;
- warm reinit: the chain holds the 10,000 addresses; 100 of them are no longer active and 100 new ones are
  (600 rules deleted by number, 600 appended, everything else untouched with its counters running on);
- no-op reinit: the chain is already right (one listing, no commit);
- counter read: one :meth:`Firewall.collect` of the 60,000 rules.

Each backend runs with its default layout (nft: ``accounting`` jumping to 64 sub-chains; legacy: v2.0's single
chain). For comparison, nft also runs with v2.0's single chain (``buckets=0``), without a target: that is where
iptables-nft spends ~0.55 s listing one chain of 60,000 rules, and again inside any restore that deletes one.

Baseline, in the same run: v2.0's way, one ``iptables -A`` process per rule, for the first 250 addresses (1,500
commands; 50 with ``--quick``), extrapolated linearly to 10,000 addresses. The extrapolation flatters the
baseline: each ``-A`` gets slower as the chain grows (legacy rewrites the whole table on every command).
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import subprocess
import time
from typing import Final

from bench.common import BenchContext, BenchResult
from vpsadmind import system
from vpsadmind.firewall import Firewall
from vpsadmind.firewall.rules import rule_spec, rules_for

NAME = "firewall"
IPS: Final = 10_000
BASELINE_IPS: Final = 250
QUICK_BASELINE_IPS: Final = 50
TARGET_S: Final = 1.0
TARGET_SPEEDUP: Final = 20.0
BACKENDS: Final = ("nft", "legacy")


def _addrs(start: int, n: int) -> list[str]:
    base = ipaddress.IPv4Address("10.100.0.0")
    return [str(base + start + i) for i in range(n)]


async def _timed(coro: object) -> float:
    started = time.perf_counter()
    await coro  # type: ignore[misc]
    return time.perf_counter() - started


async def _reinits(fw: Firewall) -> dict[str, float]:
    ips = _addrs(0, IPS)
    f: dict[str, float] = {}
    f["cold"] = await _timed(fw.reinit(ips))
    f["warm"] = await _timed(fw.reinit(ips[100:] + _addrs(20_000, 100)))
    f["noop"] = await _timed(fw.reinit(ips[100:] + _addrs(20_000, 100)))
    f["collect"] = await _timed(fw.collect())
    f["rules"] = float(len(await fw.registered(4)) * 6)
    f["chains"] = float(len((await fw.layout(4)).chains))
    await fw.flush()
    return f


async def _one_backend(backend: str, n_baseline: int, buckets: int | None = None) -> dict[str, float]:
    """The reinit figures of ``backend``; with the default layout also the one-command-per-rule baseline."""
    ns = "vtbench" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    try:
        fw = Firewall(iptables=f"iptables-{backend}", ip6tables=f"ip6tables-{backend}", argv_prefix=prefix,
                      buckets=buckets)
        f = await _reinits(fw)
        if buckets is not None:
            return f
        # baseline: one process per rule, as v2.0's reg_ip did
        binary = f"iptables-{backend}"
        await system.run([*prefix, binary, "-w", "30", "-N", "accounting"])
        started = time.perf_counter()
        for addr in _addrs(0, n_baseline):
            for key in rules_for(ipaddress.IPv4Address(addr)):
                await system.run([*prefix, binary, "-w", "30", "-A", *rule_spec(key, 4).split()])
        f["baseline_sample"] = time.perf_counter() - started
        f["baseline"] = f["baseline_sample"] * IPS / n_baseline
        return f
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


async def run(ctx: BenchContext) -> BenchResult:
    n_baseline = QUICK_BASELINE_IPS if ctx.quick else BASELINE_IPS
    result = BenchResult(NAME, f"firewall: reinit with {IPS:,} addresses ({IPS * 6:,} rules) in a netns")
    for backend in BACKENDS:
        if shutil.which(f"iptables-{backend}-restore") is None:
            result.notes.append(f"{backend}: not installed, skipped")
            continue
        f = await _one_backend(backend, n_baseline)
        result.data[backend] = f
        base = f"one -A per rule: {f['baseline']:.0f} s (extrapolated from {n_baseline} addresses)"
        for label, key in (("cold reinit", "cold"), ("warm reinit (100 out, 100 in)", "warm")):
            result.add(f"{backend}: {label}", f[key], "s", target=f"< {TARGET_S:g} s", ok=f[key] < TARGET_S,
                       baseline=base)
            speedup = f["baseline"] / f[key]
            result.add(f"{backend}: {label} speed-up", speedup, "x", target=f">= {TARGET_SPEEDUP:g} x",
                       ok=speedup >= TARGET_SPEEDUP, text=f"{speedup:.0f} x")
        result.add(f"{backend}: no-op reinit", f["noop"], "s")
        result.add(f"{backend}: collect (read {int(f['rules']):,} counters)", f["collect"], "s")
        result.notes.append(f"{backend}: {int(f['chains'])} chain(s) per address family")
        if backend == "nft":
            flat = await _one_backend(backend, n_baseline, buckets=0)
            result.data["nft-single-chain"] = flat
            for label, key in (("cold reinit", "cold"), ("warm reinit", "warm"), ("collect", "collect")):
                result.add(f"nft, v2.0's single chain: {label}", flat[key], "s")
    result.notes.append(f"Baseline: {n_baseline * 6:,} separate iptables -A processes timed in the same run and "
                        f"extrapolated linearly to {IPS:,} addresses (an underestimate: -A slows down as the "
                        "chain grows).")
    return result
