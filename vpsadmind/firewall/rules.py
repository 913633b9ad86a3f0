"""The accounting rule set of vpsAdmin v2.0 (contract 9.1) as data: rendering and parsing.

Per address and protocol (``tcp``, ``udp``, ``all``, in this order) two rules in chain ``accounting``,
source first::

    -A accounting -s <addr> -p tcp -j ACCEPT
    -A accounting -d <addr> -p tcp -j ACCEPT
    ...
    -A accounting -s <addr> -p all -j ACCEPT
    -A accounting -d <addr> -p all -j ACCEPT

and ``-A FORWARD -j accounting``. Rules are built as ``iptables-restore`` input so that any number of them is
applied in one atomic commit.

Counters are read from ``iptables -L accounting -nvx [-Z]``. Its columns are ``pkts bytes target prot opt in
out source destination``; iptables 1.4 (v2.0's era) printed protocol names and no ``opt`` column for IPv6,
iptables 1.8 prints protocol numbers (``6``, ``17``, ``0``) and ``--`` for IPv6 too: both are understood.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from vpsadmind.firewall.addresses import IPAddress

__all__ = [
    "CHAIN", "DIRECTIONS", "PROTOCOLS", "ChainListing", "Direction", "Listed", "Proto", "RuleKey",
    "parse_listing", "render_restore", "rule_spec", "rules_for",
]

CHAIN: Final = "accounting"
PROTOCOLS: Final = ("tcp", "udp", "all")
#: ``out``: the address is the source (traffic leaving the VPS); ``in``: the address is the destination.
DIRECTIONS: Final = ("out", "in")

Proto: TypeAlias = Literal["tcp", "udp", "all"]
Direction: TypeAlias = Literal["out", "in"]

_PROTO_NAMES: Final[dict[str, Proto]] = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "all": "all",
                                         "0": "all"}
_ANY: Final = {4: "0.0.0.0/0", 6: "::/0"}
_OPT: Final = frozenset({"--", "-f", "!f"})


@dataclass(frozen=True, slots=True, order=True)
class RuleKey:
    """One accounting rule: ``addr`` is the canonical text of the address."""

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


def render_restore(version: int, *, create: bool = False, delete_numbers: Iterable[int] = (),
                   append: Iterable[RuleKey] = (), extra: Sequence[str] = (), chain: str = CHAIN) -> str:
    """``iptables-restore --noflush`` input: optionally declare (create) the chain, delete rules by number
    (highest first, so that the numbers stay valid), append rules, then ``extra`` raw lines."""
    lines = ["*filter"]
    if create:
        lines.append(f":{chain} - [0:0]")
    lines += [f"-D {chain} {n}" for n in sorted(set(delete_numbers), reverse=True)]
    lines += [f"-A {rule_spec(k, version, chain)}" for k in append]
    lines += list(extra)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Listed:
    """One listed rule: its 1-based number, counters, and its key (None if it is not an accounting rule)."""

    number: int
    packets: int
    bytes: int
    key: RuleKey | None


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


def _canonical(text: str, version: int, cache: dict[str, str | None]) -> str | None:
    if text in cache:
        return cache[text]
    cache[text] = value = _parse_host(text, version)
    return value


def _parse_host(text: str, version: int) -> str | None:
    host = text.split("/", 1)
    if len(host) == 2 and host[1] != str(32 if version == 4 else 128):
        return None
    try:
        addr = ipaddress.ip_address(host[0])
    except ValueError:
        return None
    return str(addr) if addr.version == version else None


def _rule(number: int, fields: Sequence[str], version: int, cache: dict[str, str | None]) -> Listed | None:
    if len(fields) < 8 or not fields[0].isdigit() or not fields[1].isdigit():
        return None
    rest = list(fields[4:])
    if len(rest) >= 5 and rest[0] in _OPT:
        rest = rest[1:]
    target, proto = fields[2], _PROTO_NAMES.get(fields[3])
    src, dst, extra = rest[2], rest[3], rest[4:]
    key: RuleKey | None = None
    if target == "ACCEPT" and proto is not None and not extra and rest[0] == "*" and rest[1] == "*":
        any_ = _ANY[version]
        if dst == any_ and src != any_ and (a := _canonical(src, version, cache)):
            key = RuleKey(a, proto, "out")
        elif src == any_ and dst != any_ and (a := _canonical(dst, version, cache)):
            key = RuleKey(a, proto, "in")
    return Listed(number, int(fields[0]), int(fields[1]), key)


def parse_listing(text: str, version: int) -> ChainListing:
    """Parse ``iptables -L <chain> -nvx [-Z]``: the header gives the reference count, each rule line its
    counters; the ``Zeroing chain`` trailer and blank lines are skipped."""
    listing = ChainListing(exists=True, rules=[])
    cache: dict[str, str | None] = {}  # every address appears in six rules
    number = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "Chain":
            refs = line[line.find("(") + 1:].split(" ", 1)[0]
            listing.references = int(refs) if refs.isdigit() else 0
            continue
        if fields[0] in ("pkts", "Zeroing") or not fields[0].isdigit():
            continue
        number += 1
        rule = _rule(number, fields, version, cache)
        assert listing.rules is not None
        listing.rules.append(rule if rule is not None else Listed(number, 0, 0, None))
    return listing
