"""Traffic accounting with iptables (contract 9.1), applied as whole rule sets and read without losing a packet.

Every change goes through ``iptables-restore --noflush`` (``ip6tables-restore`` for IPv6) with the rules on
standard input, so registering an address, initialising 10,000 of them or repairing the chain is one atomic
commit and one process per address family, never one process per rule.

All mutations and all counter reads of one :class:`Firewall` are serialised by ``Firewall.lock`` (v2.0's
global firewall mutex). Counting and registration therefore never interleave (the race fixed upstream in
2016, contract 13): a read sees a rule set either before or after a registration, and every read folds its
counts into one in-memory ``pending`` table that :meth:`Firewall.collect` hands out and empties.

Counter modes (measured, see docs/network.md):

``delta`` (the default, both backends)
    The chains are only listed, never zeroed, and the difference to the previous listing is counted (a
    counter that went down was reset and counts from zero). Lossless while the daemon runs, on any backend,
    because the counters only grow. The traffic reporter stores, in the transaction that stores the traffic,
    the counter values that traffic reaches (:meth:`Firewall.marks`); the first read after a start diffs
    against them (:attr:`Firewall.resume`), so a crash loses nothing and counts nothing twice.
``zero``
    v2.0's ``iptables -L accounting -nvx -Z`` (``counter_mode="zero"`` only). Atomic on legacy (libiptc
    subtracts the counts it read from the counters it writes back), lossy on nf_tables (``-Z`` replaces every
    rule with a zeroed copy after listing it: 7,603 of 1.8 M packets lost under load); a crash between the
    read and the DB commit loses that read.

The layout (:class:`~vpsadmind.firewall.rules.Layout`) follows the backend: legacy keeps v2.0's single chain,
nf_tables (``iptables -V`` says ``nf_tables``) splits the rules over 64 sub-chains that ``accounting`` jumps
to, because iptables-nft lists (and, to delete a rule, fetches) one chain of 60,000 rules in ~0.55 s but 64
chains of ~940 rules in ~0.2 s. Either way ``FORWARD`` jumps to ``accounting`` and each rule is v2.0's.

Unregistering reads the address's counters and deletes its rules in the same locked section; packets of that
address arriving between the two (a few milliseconds) are not counted, where v2.0 lost everything counted
since the last 10-second read. ``reinit`` keeps every rule that should stay untouched (their counters run on,
nothing to copy), deletes by number only the rules of addresses that are no longer active on the node,
duplicates, misplaced and foreign rules (their last counts are collected first), creates missing chains and
jumps, appends what is missing and repairs the ``FORWARD`` jump, in one commit. Moving a v2.0 flat chain to
the split layout is such a reinit: only the packets counted between its listing and its commit (milliseconds)
are not counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import structlog

from vpsadmind import system
from vpsadmind.firewall.addresses import IPAddress, parse_address
from vpsadmind.firewall.rules import (
    CHAIN,
    DEFAULT_BUCKETS,
    Layout,
    Listed,
    Listing,
    RuleKey,
    gc_paused,
    parse_chains,
    render_restore,
    rules_for,
)

__all__ = ["CounterMode", "Firewall", "MarkLoader", "Marks", "Traffic", "restore_binary", "VERSIONS"]

log = structlog.get_logger("vpsadmind.firewall")

CounterMode: TypeAlias = Literal["zero", "delta"]
#: Per IP version, the kernel's counter values (packets, bytes) per rule that the traffic handed out so far
#: reaches: stored with that traffic, they tell a restarted daemon where its predecessor stopped counting.
Marks: TypeAlias = dict[int, dict[RuleKey, tuple[int, int]]]
#: Loads the stored marks of one IP version; None when none were ever stored (see :meth:`Firewall._resume`).
MarkLoader: TypeAlias = Callable[[int], Awaitable[Mapping[RuleKey, tuple[int, int]] | None]]
VERSIONS: Final = (4, 6)
_RETRIES: Final = 3
_BUSY: Final = "Resource temporarily unavailable"


def restore_binary(binary: str) -> str:
    """``iptables`` -> ``iptables-restore``, ``/usr/sbin/ip6tables-nft`` -> ``/usr/sbin/ip6tables-nft-restore``."""
    return f"{binary}-restore"


@dataclass(slots=True)
class Traffic:
    """Counted traffic of one address and protocol, as a ``transfered_recent`` row wants it."""

    ip: str
    proto: str
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, direction: str, packets: int, nbytes: int) -> None:
        if direction == "in":
            self.packets_in += packets
            self.bytes_in += nbytes
        else:
            self.packets_out += packets
            self.bytes_out += nbytes

    def merge(self, other: Traffic) -> None:
        self.packets_in += other.packets_in
        self.packets_out += other.packets_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out

    @property
    def empty(self) -> bool:
        return not (self.packets_in or self.packets_out or self.bytes_in or self.bytes_out)

    def as_dict(self) -> dict[str, int | str]:
        return {"ip": self.ip, "proto": self.proto, "packets_in": self.packets_in,
                "packets_out": self.packets_out, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


def group_by_version(addrs: Iterable[IPAddress | str]) -> dict[int, list[IPAddress]]:
    """Validate every address (before any command runs) and split them by IP version, without duplicates."""
    out: dict[int, list[IPAddress]] = {4: [], 6: []}
    seen: set[IPAddress] = set()
    for i, a in enumerate(addrs):
        ip = parse_address(a, field=f"addrs[{i}]")
        if ip not in seen:
            seen.add(ip)
            out[ip.version].append(ip)
    return out


class Firewall:
    """The ``accounting`` chains of one network namespace (the node's, or a test's via ``argv_prefix``).

    ``buckets``: None picks the layout (split into :data:`DEFAULT_BUCKETS` sub-chains on nf_tables or with an
    explicit ``counter_mode="delta"``, v2.0's flat chain on legacy and with ``zero``), 0 forces the flat
    layout, n > 0 n sub-chains (``delta`` only: ``-L -Z`` is atomic for one chain, and zeroing the whole table
    would zero other tools' counters).
    """

    def __init__(self, *, iptables: str = "iptables", ip6tables: str = "ip6tables",
                 argv_prefix: Sequence[str] = (), counter_mode: Literal["auto", "zero", "delta"] = "auto",
                 wait: int = 30, chain: str = CHAIN, buckets: int | None = None) -> None:
        if counter_mode == "zero" and buckets:
            raise ValueError("the zero counter mode needs the flat layout (buckets=0)")
        Layout(chain, buckets or 0)  # validates the chain name and the bucket count now, not at the first use
        self.binaries: dict[int, str] = {4: iptables, 6: ip6tables}
        self.argv_prefix = list(argv_prefix)
        self.counter_mode = counter_mode
        self.wait = wait
        self.chain = chain
        self.buckets = buckets
        self.lock = asyncio.Lock()
        self._nft: dict[int, bool] = {}
        self._layouts: dict[int, Layout] = {}
        self._baseline: dict[int, dict[RuleKey, tuple[int, int]]] = {4: {}, 6: {}}
        self._primed: dict[int, bool] = {4: False, 6: False}
        self._pending: dict[tuple[str, str], Traffic] = {}
        self.reads = 0
        #: set by the traffic reporter: where counting resumes after a restart (delta mode)
        self.resume: MarkLoader | None = None

    # -- commands ---------------------------------------------------------------------------------------------

    async def _run(self, argv: list[str], *, input: bytes | None = None,
                   valid_rcs: Sequence[int] = (0,)) -> system.Completed:
        for attempt in range(_RETRIES + 1):
            try:
                return await system.run([*self.argv_prefix, *argv], input=input, valid_rcs=valid_rcs)
            except system.CommandFailed as exc:
                if _BUSY not in (exc.stderr + exc.stdout) or attempt == _RETRIES:
                    raise
                log.warning("iptables busy, retrying", argv=argv[:3], attempt=attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    async def iptables(self, version: int, *args: str, valid_rcs: Sequence[int] = (0,)) -> system.Completed:
        return await self._run([self.binaries[version], "-w", str(self.wait), *args], valid_rcs=valid_rcs)

    async def restore(self, version: int, text: str) -> None:
        """Apply ``text`` (``iptables-restore`` format) atomically, keeping everything else in the table."""
        argv = [restore_binary(self.binaries[version]), "-w", str(self.wait), "--noflush"]
        await self._run(argv, input=text.encode())

    async def mode(self, version: int) -> CounterMode:
        """``delta`` unless ``zero`` was asked for: with the marks stored beside the traffic (:meth:`marks`) it
        is exact across a crash too, on either backend (see the module doc)."""
        return "zero" if self.counter_mode == "zero" else "delta"

    async def nf_tables(self, version: int) -> bool:
        """Whether the iptables of ``version`` is iptables-nft (``iptables -V`` says ``nf_tables``)."""
        if version not in self._nft:
            out = await self._run([self.binaries[version], "-V"])
            self._nft[version] = "nf_tables" in out.stdout + out.stderr
        return self._nft[version]

    async def layout(self, version: int) -> Layout:
        if version not in self._layouts:
            mode = await self.mode(version)
            if self.buckets is not None:
                n = self.buckets
            elif mode == "zero":
                n = 0
            else:  # auto: split for nf_tables only (see the module doc); an explicit delta splits anyway
                n = DEFAULT_BUCKETS if self.counter_mode == "delta" or await self.nf_tables(version) else 0
            self._layouts[version] = Layout(self.chain, n)
        return self._layouts[version]

    # -- reading ----------------------------------------------------------------------------------------------

    async def _read(self, version: int) -> Listing:
        """List the chains (and zero them in ``zero`` mode); their counts go into ``pending``."""
        layout = await self.layout(version)
        zero = await self.mode(version) == "zero"
        if layout.buckets:
            # the whole filter table in one process: cheaper than one process per sub-chain
            res = await self.iptables(version, "-L", "-nvx")
        else:
            res = await self.iptables(version, "-L", layout.root, "-nvx", *(["-Z"] if zero else []),
                                      valid_rcs=(0, 1))
        self.reads += 1
        chains = parse_chains(res.stdout, version, set(layout.chains)) if res.exitstatus == 0 else {}
        listing = Listing(layout, chains)
        if not chains:  # nothing counted; rules created later count from zero
            self._baseline[version] = {}
            self._primed[version] = True
            return listing
        if not zero and not self._primed[version] and not await self._resume(version):
            return listing  # nothing folded: the counts stay in the kernel until the marks can be loaded
        with gc_paused():
            self._fold(version, listing, zeroed=zero)
        return listing

    def _fold(self, version: int, listing: Listing, *, zeroed: bool) -> None:
        sums: dict[RuleKey, tuple[int, int]] = {}
        for r in listing.rules():
            if r.key is not None:
                p, b = sums.get(r.key, (0, 0))
                sums[r.key] = (p + r.packets, b + r.bytes)
        if zeroed:
            deltas = sums
            self._baseline[version] = {}
        else:
            if not self._primed[version]:
                self._primed[version] = True
                self._baseline[version] = sums
                return
            base = self._baseline[version]
            deltas = {}
            for key, (p, b) in sums.items():
                p0, b0 = base.get(key, (0, 0))
                deltas[key] = (p - p0, b - b0) if p >= p0 and b >= b0 else (p, b)  # reset: count from zero
            self._baseline[version] = sums
        for key, (p, b) in deltas.items():
            if p or b:
                entry = self._pending.setdefault((key.addr, key.proto), Traffic(key.addr, key.proto))
                entry.add(key.direction, p, b)

    async def _resume(self, version: int) -> bool:
        """The baseline of the first read after a start: the marks stored with the last saved traffic, so that
        what was counted after that save (before the crash and while no daemon ran) is counted now, and what
        was saved is not counted again. False when they cannot be loaded now (the read folds nothing)."""
        if self.resume is None:
            return True  # no store: _fold takes this listing as the baseline
        try:
            marks = await self.resume(version)
        except Exception as exc:
            log.warning("traffic_marks_unavailable", version=version, error=f"{type(exc).__name__}: {exc}")
            return False
        if marks is None and await self.nf_tables(version):
            return True  # never stored (an older daemon counted here): the listing is the baseline
        # without marks on legacy, v2.0 and older versions of this daemon zeroed at every read, so everything
        # the kernel holds was never stored
        self._baseline[version] = dict(marks or {})
        self._primed[version] = True
        return True

    def _forget(self, version: int, deleted: Iterable[Listed]) -> None:
        """Deleted rules leave the baseline, so that their counters are not subtracted from the survivors."""
        base = self._baseline[version]
        for r in deleted:
            if r.key is not None and r.key in base:
                p, b = base[r.key]
                p, b = max(0, p - r.packets), max(0, b - r.bytes)
                base[r.key] = (p, b)
        drained = [k for k, v in base.items() if v == (0, 0)]
        for k in drained:
            del base[k]

    async def _forward_jumps(self, version: int) -> int:
        res = await self.iptables(version, "-S", "FORWARD")
        return sum(1 for line in res.stdout.splitlines() if line.split() == ["-A", "FORWARD", "-j", self.chain])

    # -- public operations ------------------------------------------------------------------------------------

    async def register(self, addr: IPAddress | str, version: int | None = None) -> int:
        """Add the six rules of ``addr`` that are missing from their chain (none when it is registered already);
        creates missing chains, and the ``FORWARD`` jump with a missing root chain. Returns the rules added."""
        ip = parse_address(addr, version)
        async with self.lock:
            v = ip.version
            listing = await self._read(v)
            placed = listing.placed()
            missing = [k for k in rules_for(ip) if k not in placed]
            declare, jumps = listing.missing_chains(), listing.missing_jumps()
            if not (missing or declare or jumps):
                return 0
            if declare:
                log.warning("accounting chains missing, creating them", version=v, chains=len(declare))
            forward = [] if listing.exists else [f"-A FORWARD -j {self.chain}"]
            await self.restore(v, render_restore(v, declare=declare, append=_placed(listing.layout, missing),
                                                 extra=[*jumps, *forward]))
            return len(missing)

    async def unregister(self, addr: IPAddress | str, version: int | None = None) -> int:
        """Collect the counts of ``addr``'s rules and delete them (all copies). Returns how many were deleted."""
        ip = parse_address(addr, version)
        async with self.lock:
            v, text = ip.version, str(ip)
            listing = await self._read(v)
            doomed = [r for r in listing.rules() if r.key is not None and r.key.addr == text]
            if not doomed:
                return 0
            await self.restore(v, render_restore(v, delete=[(r.chain, r.number) for r in doomed]))
            self._forget(v, doomed)
            return len(doomed)

    async def registered(self, version: int) -> set[str]:
        """Addresses with at least one accounting rule (their counts are collected as a side effect)."""
        async with self.lock:
            listing = await self._read(version)
        return {k.addr for k in listing.rule_keys()}

    async def init(self, addrs: Iterable[IPAddress | str]) -> dict[int, int | None]:
        """v2.0's init: per IP version, if the chain exists nothing is done (None), otherwise the chains, the
        rules of ``addrs`` and the ``FORWARD`` jump are created in one commit (the number of addresses)."""
        groups = group_by_version(addrs)
        async with self.lock:
            counts = await asyncio.gather(*(self._init_family(v, groups[v]) for v in VERSIONS))
        return dict(zip(VERSIONS, counts, strict=True))

    async def _init_family(self, version: int, ips: list[IPAddress]) -> int | None:
        listing = await self._read(version)
        if listing.exists:
            log.info("accounting chain exists, init skipped", version=version)
            return None
        rules = _placed(listing.layout, [k for ip in ips for k in rules_for(ip)])
        await self.restore(version, render_restore(
            version, declare=listing.missing_chains(), append=rules,
            extra=[*listing.missing_jumps(), f"-A FORWARD -j {self.chain}"]))
        return len(ips)

    async def flush(self) -> dict[int, bool]:
        """Collect the counts, then remove the ``FORWARD`` jumps and the chains (per version: was there one)."""
        async with self.lock:
            done = await asyncio.gather(*(self._flush_family(v) for v in VERSIONS))
        return dict(zip(VERSIONS, done, strict=True))

    async def _flush_family(self, version: int) -> bool:
        listing = await self._read(version)
        if not listing.chains:
            return False
        jumps = await self._forward_jumps(version)
        names = [c for c in listing.layout.chains if c in listing.chains]  # the root first: it jumps to the rest
        extra = [f"-D FORWARD -j {self.chain}"] * jumps + [f"-F {c}" for c in names] + [f"-X {c}" for c in names]
        await self.restore(version, render_restore(version, extra=extra))
        self._baseline[version] = {}
        return True

    async def reinit(self, addrs: Iterable[IPAddress | str]) -> dict[int, int]:
        """Make the chains hold exactly the rules of ``addrs`` without losing a count (see the module doc)."""
        groups = group_by_version(addrs)
        async with self.lock:
            counts = await asyncio.gather(*(self._reinit_family(v, groups[v]) for v in VERSIONS))
        return dict(zip(VERSIONS, counts, strict=True))

    async def _reinit_family(self, version: int, ips: list[IPAddress]) -> int:
        # the wanted rules are built in a thread while iptables lists (a quarter of a second for 60,000 rules)
        listing, jumps, wanted = await asyncio.gather(
            self._read(version), self._forward_jumps(version),
            asyncio.to_thread(lambda: [k for ip in ips for k in rules_for(ip)]))
        with gc_paused():
            doomed, kept = _sort_out(listing, set(wanted))
            append = _placed(listing.layout, [k for k in wanted if k not in kept])
        declare = listing.missing_chains()
        extra = listing.missing_jumps()
        extra += [f"-A FORWARD -j {self.chain}"] if jumps == 0 else [f"-D FORWARD -j {self.chain}"] * (jumps - 1)
        if doomed or append or declare or extra:
            await self.restore(version, render_restore(version, declare=declare, append=append, extra=extra,
                                                       delete=[(r.chain, r.number) for r in doomed]))
            self._forget(version, doomed)
        log.info("accounting reinitialised", version=version, kept=len(kept), deleted=len(doomed),
                 added=len(append), created=len(declare))
        return len(ips)

    async def collect(self) -> list[Traffic]:
        """Read both chains and hand out (and forget) everything counted since the last collect."""
        async with self.lock:
            await asyncio.gather(*(self._read(v) for v in VERSIONS))
            return self._take()

    async def collect_marked(self) -> tuple[list[Traffic], Marks]:
        """:meth:`collect`, and the :meth:`marks` that the handed-out traffic reaches (taken under the lock)."""
        async with self.lock:
            await asyncio.gather(*(self._read(v) for v in VERSIONS))
            return self._take(), self.marks()

    def take_pending(self) -> list[Traffic]:
        """Hand out (and forget) what earlier reads counted, without reading the chains again."""
        return self._take()

    def take_marked(self) -> tuple[list[Traffic], Marks]:
        """:meth:`take_pending` and the :meth:`marks` it reaches (every read updates both at once)."""
        return self._take(), self.marks()

    def marks(self) -> Marks:
        """The counter values per rule that the traffic handed out so far reaches, for each IP version whose
        baseline is known (delta mode; the zero mode leaves nothing in the kernel that was handed out)."""
        if self.counter_mode == "zero":
            return {}
        return {v: dict(self._baseline[v]) for v in VERSIONS if self._primed[v]}

    def _take(self) -> list[Traffic]:
        out = [t for t in self._pending.values() if not t.empty]
        self._pending = {}
        return sorted(out, key=lambda t: (ipaddress.ip_address(t.ip).version, t.ip, t.proto))

    def give_back(self, traffic: Iterable[Traffic]) -> None:
        """Return collected traffic that could not be stored; the next :meth:`collect` hands it out again."""
        for t in traffic:
            entry = self._pending.setdefault((t.ip, t.proto), Traffic(t.ip, t.proto))
            entry.merge(t)

    def pending(self) -> Mapping[tuple[str, str], Traffic]:
        return dict(self._pending)


def _placed(layout: Layout, keys: Iterable[RuleKey]) -> list[tuple[str, RuleKey]]:
    return [(layout.chain_of(k), k) for k in keys]


def _sort_out(listing: Listing, wanted: set[RuleKey]) -> tuple[list[Listed], set[RuleKey]]:
    """Split the listed rules into the ones to delete and the wanted keys that are in place (each once): the
    first copy of a wanted rule in its layout chain stays, and so does the root's first jump to each
    sub-chain; duplicates, rules of inactive addresses, misplaced rules (another layout's) and foreign rules
    are deleted (their counts were collected by the listing)."""
    layout = listing.layout
    subchains = set(layout.subchains)
    kept: set[RuleKey] = set()
    jumped: set[str] = set()
    doomed: list[Listed] = []
    for r in listing.rules():
        if r.key is not None and r.key in wanted and r.key not in kept and layout.chain_of(r.key) == r.chain:
            kept.add(r.key)
        elif r.chain == layout.root and r.jump is not None and r.jump in subchains and r.jump not in jumped:
            jumped.add(r.jump)
        else:
            doomed.append(r)
    return doomed, kept
