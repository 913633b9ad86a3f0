"""The accounting rule set of vpsAdmin v2.0 (contract 9.1) as data: layout, rendering and parsing.

Per address and protocol (``tcp``, ``udp``, ``all``, in this order) two rules, source first::

    -A accounting -s <addr> -p tcp -j ACCEPT
    -A accounting -d <addr> -p tcp -j ACCEPT
    ...
    -A accounting -s <addr> -p all -j ACCEPT
    -A accounting -d <addr> -p all -j ACCEPT

and ``-A FORWARD -j accounting``. Rules are built as ``iptables-restore`` input so that any number of them is
applied in one atomic commit.

Two layouts (:class:`Layout`):

``flat`` (``buckets == 0``)
    v2.0's: every rule in chain ``accounting``.
``split`` (``buckets > 0``)
    ``accounting`` holds only ``-j accounting-00`` ... ``-j accounting-3f`` and each address's six rules live in
    the sub-chain its address hashes to (CRC-32 of the address text, so stable across runs and versions). The
    kernel dumps a chain's rules restarting from the chain's first rule for every netlink message, so listing
    one chain of 60,000 rules costs iptables-nft ~0.4 s of system time, and any restore that deletes a rule
    pays that listing again; 64 chains of ~940 rules list in ~0.2 s in total and a delete fetches only the
    chains it touches (docs/benchmarks.md, "firewall").

Counters are read from ``iptables -L [chain] -nvx [-Z]``. Its columns are ``pkts bytes target prot opt in out
source destination``; iptables 1.4 (v2.0's era) printed protocol names and no ``opt`` column for IPv6,
iptables 1.8 prints protocol numbers (``6``, ``17``, ``0``) and ``--`` for IPv6 too: both are understood.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final, Literal, NamedTuple, TypeAlias

from vpsadmind.firewall.addresses import IPAddress

__all__ = [
    "CHAIN", "DEFAULT_BUCKETS", "DIRECTIONS", "PROTOCOLS", "ChainListing", "Direction", "Layout", "Listed",
    "Listing", "Proto", "RuleKey", "parse_chains", "parse_listing", "render_restore", "rule_spec", "rules_for",
]

CHAIN: Final = "accounting"
#: Sub-chains of the split layout: ~940 rules each with 10,000 addresses, fine up to ~100,000 addresses.
DEFAULT_BUCKETS: Final = 64
MAX_BUCKETS: Final = 256
PROTOCOLS: Final = ("tcp", "udp", "all")
#: ``out``: the address is the source (traffic leaving the VPS); ``in``: the address is the destination.
DIRECTIONS: Final = ("out", "in")

Proto: TypeAlias = Literal["tcp", "udp", "all"]
Direction: TypeAlias = Literal["out", "in"]

_PROTO_NAMES: Final[dict[str, Proto]] = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "all": "all",
                                         "0": "all"}
_ANY: Final = {4: "0.0.0.0/0", 6: "::/0"}
_OPT: Final = frozenset({"--", "-f", "!f"})


class RuleKey(NamedTuple):
    """One accounting rule: ``addr`` is the canonical text of the address. A tuple, because 60,000 of them are
    built, hashed and compared per listing and a tuple does that in C."""

    addr: str
    proto: Proto
    direction: Direction


def rules_for(addr: IPAddress) -> list[RuleKey]:
    """v2.0's six rules of one address, in v2.0's order."""
    text = str(addr)
    return [RuleKey(text, p, d) for p in PROTOCOLS for d in DIRECTIONS]


def rule_spec(key: RuleKey, version: int, chain: str = CHAIN) -> str:
    """The rule without its command: ``<chain> -s 1.2.3.4/32 -p tcp -j ACCEPT``."""
    plen = 32 if version == 4 else 128
    flag = "-s" if key.direction == "out" else "-d"
    return f"{chain} {flag} {key.addr}/{plen} -p {key.proto} -j ACCEPT"


@dataclass(frozen=True)
class Layout:
    """Where the rules of an address live: ``root`` alone (``buckets == 0``) or one of ``buckets`` sub-chains."""

    root: str = CHAIN
    buckets: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.buckets <= MAX_BUCKETS:
            raise ValueError(f"buckets must be 0-{MAX_BUCKETS}, got {self.buckets}")
        # iptables chain names have at most 28 characters; the sub-chains add 3
        if not self.root or len(self.root) > 25 or not self.root.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"invalid accounting chain name {self.root!r}")

    @cached_property
    def subchains(self) -> list[str]:
        return [f"{self.root}-{i:02x}" for i in range(self.buckets)]

    @property
    def chains(self) -> list[str]:
        """Every chain of the layout, the root first."""
        return [self.root, *self.subchains]

    def chain_of(self, key: RuleKey) -> str:
        if not self.buckets:
            return self.root
        return self.subchains[zlib.crc32(key.addr.encode()) % self.buckets]


def render_restore(version: int, *, declare: Iterable[str] = (), delete: Iterable[tuple[str, int]] = (),
                   append: Iterable[tuple[str, RuleKey]] = (), extra: Sequence[str] = ()) -> str:
    """``iptables-restore --noflush`` input: declare (create) chains, delete rules by ``(chain, number)`` (the
    highest number of a chain first, so that the numbers stay valid), append ``(chain, key)`` rules, then
    ``extra`` raw lines. Only chains that do not exist may be declared: restore flushes a declared user chain."""
    lines = ["*filter", *(f":{chain} - [0:0]" for chain in declare)]
    lines += [f"-D {chain} {n}" for chain, n in sorted(set(delete), key=lambda d: (d[0], -d[1]))]
    lines += [f"-A {rule_spec(key, version, chain)}" for chain, key in append]
    lines += list(extra)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class Listed(NamedTuple):
    """One listed rule: its 1-based number and counters, its key (None if it is not an accounting rule), its
    chain and ``jump``, the target of a rule that only jumps (no match at all), else None."""

    number: int
    packets: int
    bytes: int
    key: RuleKey | None
    chain: str = CHAIN
    jump: str | None = None


@dataclass(slots=True)
class ChainListing:
    exists: bool
    references: int = 0
    rules: list[Listed] | None = None

    def rule_keys(self) -> set[RuleKey]:
        return {r.key for r in self.rules or () if r.key is not None}

    def by_key(self) -> dict[RuleKey, list[Listed]]:
        out: dict[RuleKey, list[Listed]] = {}
        for r in self.rules or ():
            if r.key is not None:
                out.setdefault(r.key, []).append(r)
        return out


@dataclass(slots=True)
class Listing:
    """The chains of a :class:`Layout` as listed: the ones that exist, with their rules."""

    layout: Layout
    chains: dict[str, ChainListing] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        """The root chain exists (v2.0's ``-N accounting`` would fail)."""
        return self.layout.root in self.chains

    def rules(self) -> Iterator[Listed]:
        for listing in self.chains.values():
            yield from listing.rules or ()

    def rule_keys(self) -> set[RuleKey]:
        return {r.key for r in self.rules() if r.key is not None}

    def placed(self) -> set[RuleKey]:
        """Keys that have a rule in the chain the layout puts them in."""
        chain_of = self.layout.chain_of
        return {r.key for r in self.rules() if r.key is not None and chain_of(r.key) == r.chain}

    def missing_chains(self) -> list[str]:
        return [c for c in self.layout.chains if c not in self.chains]

    def missing_jumps(self) -> list[str]:
        """``-A root -j root-XX`` lines for the sub-chains the root does not jump to."""
        root = self.chains.get(self.layout.root)
        have = {r.jump for r in (root.rules or ()) if r.jump} if root else set()
        return [f"-A {self.layout.root} -j {sub}" for sub in self.layout.subchains if sub not in have]


_MISS: Final = object()


def _host(text: str, version: int, cache: dict[str, str | None]) -> str | None:
    """The canonical address of a listed ``source``/``destination`` host (``/32``, ``/128`` or none), else None."""
    value = cache.get(text, _MISS)
    if value is _MISS:
        value = cache[text] = _parse_host(text, version)
    return value  # type: ignore[return-value]


def _parse_host(text: str, version: int) -> str | None:
    host = text.split("/", 1)
    if len(host) == 2 and host[1] != str(32 if version == 4 else 128):
        return None
    try:
        addr = ipaddress.ip_address(host[0])
    except ValueError:
        return None
    return str(addr) if addr.version == version else None


def _rule(number: int, f: list[str], version: int, chain: str, cache: dict[str, str | None]) -> Listed:
    """One rule line, split: ``pkts bytes target prot [opt] in out source destination [matches...]``. Indexes,
    not slices: this runs 60,000 times per listing of a big node."""
    n = len(f)
    if n < 8 or not f[1].isdigit():
        return Listed(number, 0, 0, None, chain)
    i = 5 if n >= 9 and f[4] in _OPT else 4  # the ``in`` column
    target, proto = f[2], _PROTO_NAMES.get(f[3])
    key: RuleKey | None = None
    jump: str | None = None
    if proto is not None and n == i + 4 and f[i] == "*" and f[i + 1] == "*":
        src, dst, any_ = f[i + 2], f[i + 3], _ANY[version]
        if target == "ACCEPT":
            if dst == any_ and src != any_ and (a := _host(src, version, cache)):
                key = RuleKey(a, proto, "out")
            elif src == any_ and dst != any_ and (a := _host(dst, version, cache)):
                key = RuleKey(a, proto, "in")
        elif proto == "all" and src == any_ and dst == any_:
            jump = target
    return Listed(number, int(f[0]), int(f[1]), key, chain, jump)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around synchronous code that allocates ~100,000 objects and no
    cycle: it would otherwise walk the growing heap again and again for nothing (~25 % of a big parse)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_chains(text: str, version: int, chains: Collection[str] | None = None) -> dict[str, ChainListing]:
    """Parse ``iptables -L [chain] -nvx [-Z]`` output of one or all chains: each ``Chain <name>`` header gives
    the reference count, each rule line its counters. Only ``chains`` are kept (all when None); the column
    headers, the ``Zeroing chain`` trailer and blank lines are skipped."""
    with gc_paused():
        return _parse_chains(text, version, chains)


def _parse_chains(text: str, version: int, chains: Collection[str] | None) -> dict[str, ChainListing]:
    out: dict[str, ChainListing] = {}
    cache: dict[str, str | None] = {}  # every address appears in six rules
    current: ChainListing | None = None
    name = ""
    number = 0
    for line in text.splitlines():
        if line.startswith("Chain "):
            fields = line.split()
            name, number = fields[1], 0
            if chains is not None and name not in chains:
                current = None
                continue
            refs = line[line.find("(") + 1:].split(" ", 1)[0]
            current = out[name] = ChainListing(exists=True, references=int(refs) if refs.isdigit() else 0,
                                               rules=[])
            continue
        if current is None:
            continue
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue
        number += 1
        assert current.rules is not None
        current.rules.append(_rule(number, fields, version, name, cache))
    return out


def parse_listing(text: str, version: int) -> ChainListing:
    """The first chain of a ``iptables -L <chain> -nvx [-Z]`` listing (an empty, existing chain if none)."""
    for listing in parse_chains(text, version).values():
        return listing
    return ChainListing(exists=True, rules=[])
