"""Traffic shaping with tc HTB (contract 9.2), v2.0's tree:

- root qdisc ``htb handle 1:`` on the node's ``netdev`` (tx, traffic leaving VPSes) and on ``venet0`` (rx,
  traffic toward VPSes), class ``1:1`` with the node's limits (rate = ceil, ``burst 1M``);
- per address: class ``1:<class_id>`` under ``1:1`` (rate = ceil = its rx on venet0 / tx on netdev,
  ``burst 300k``), u32 filters (venet0 matches the destination, netdev the source) with ``flowid
  1:<class_id>``, and a leaf qdisc ``<class_id>:`` (``sfq perturb 10`` by default). Skipped when tx or rx is 0.

Rates are bytes per second (tc's ``bps``). ``class_id`` is written into the class id as v2.0 did, so tc reads
its digits as hexadecimal: it must be 2-9999 (1 is the root class, larger values overflow 16 bits).

Differences from v2.0, each a bug fix:

- IPv6 filters use ``protocol ipv6`` at prio 17: v2.0 added ``protocol ip ... match ip6`` at prio 16, which
  the kernel accepts but which never matches an IPv6 packet (one prio holds one protocol);
- unset deletes exactly the filters of its class, by handle, instead of deleting every prio-16 filter and
  re-adding the other addresses' filters from the database (which left all VPSes unshaped in between and
  re-added the filter of the address being removed, whose row still exists until the chain ends);
- change re-creating a missing class passes tx and rx in the right order (v2.0 swapped them);
- set uses ``class replace``/``qdisc replace`` and replaces its own filters, so it is idempotent (v2.0 added
  a duplicate filter each time).

Multi-command operations run as one ``tc -force -batch -`` process. As v2.0 (which accepted exit code 2),
"File exists" and "No such file or directory" answers are tolerated; any other error fails the operation.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from vpsadmind import system
from vpsadmind.errors import ParamError
from vpsadmind.firewall.addresses import IPAddress, parse_address

__all__ = ["Shaper", "ShapedIp", "check_class_id", "check_rate", "ROOT_BURST", "IP_BURST"]

log = structlog.get_logger("vpsadmind.shaper")

ROOT_BURST: Final = "1M"
IP_BURST: Final = "300k"
MAX_RATE: Final = 2**40
#: "Exclusivity flag on" is what kernels with extended acks (4.x+) say instead of "File exists" when a
#: ``qdisc add`` meets an existing root: init on a node whose tree exists (a daemon restart) is fine.
_TOLERATED: Final = ("File exists", "No such file or directory", "Exclusivity flag on, cannot modify")
#: What deleting something that is not there answers, besides ENOENT.
_GONE: Final = ("Invalid handle", "Specified class not found", "Cannot find specified qdisc",
                "Cannot delete qdisc with handle of zero")
_FILTER: Final = re.compile(r"^filter (?:parent \S+ )?protocol (\S+) pref (\d+) u32 .*?\bfh (\S+) .*?flowid (\S+)")


def check_class_id(value: object, field: str = "shaper.class_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 9999:
        raise ParamError(f"expected an integer 2-9999 (tc reads it as a hexadecimal minor), got {value!r:.40}",
                         field=field)
    return value


def check_rate(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RATE:
        raise ParamError(f"expected bytes per second 0-{MAX_RATE}, got {value!r:.40}", field=field)
    return value


@dataclass(frozen=True, slots=True)
class ShapedIp:
    addr: IPAddress
    class_id: int
    max_tx: int
    max_rx: int

    @classmethod
    def of(cls, addr: object, class_id: object, max_tx: object, max_rx: object, version: int | None = None,
           *, field: str = "shaper") -> ShapedIp:
        return cls(parse_address(addr, version), check_class_id(class_id, f"{field}.class_id"),
                   check_rate(max_tx, f"{field}.max_tx"), check_rate(max_rx, f"{field}.max_rx"))

    @property
    def shaped(self) -> bool:
        return self.max_tx != 0 and self.max_rx != 0


class Shaper:
    """The HTB trees of one network namespace; all operations are serialised by ``Shaper.lock``."""

    def __init__(self, *, tc: str = "tc", netdev: str = "eth0", venet: str = "venet0",
                 argv_prefix: Sequence[str] = (), leaf_qdisc: Sequence[str] = ("sfq", "perturb", "10")) -> None:
        for name in (netdev, venet):
            if not name or len(name) > 15 or not re.fullmatch(r"[A-Za-z0-9_.:@-]+", name) or name[0] == "-":
                raise ParamError(f"invalid network device name {name!r}")
        self.tc = tc
        self.netdev = netdev
        self.venet = venet
        self.argv_prefix = list(argv_prefix)
        self.leaf_qdisc = " ".join(leaf_qdisc)
        self.lock = asyncio.Lock()

    # -- commands ---------------------------------------------------------------------------------------------

    async def _tc(self, *args: str) -> system.Completed:
        """One tc command; exit code 2 (v2.0: "No such file", "File exists") is returned, not raised."""
        return await system.run([*self.argv_prefix, self.tc, *args], valid_rcs=(0, 2))

    async def batch(self, lines: Sequence[str], *, deleting: bool = False) -> list[str]:
        """Run ``lines`` in one ``tc -force -batch -``; returns the tolerated errors, raises on any other."""
        if not lines:
            return []
        argv = [*self.argv_prefix, self.tc, "-force", "-batch", "-"]
        res = await system.run(argv, input=("\n".join(lines) + "\n").encode(), valid_rcs=(0, 1, 2))
        errors = [ln for ln in res.stderr.splitlines()
                  if ln.strip() and not ln.startswith(("Command failed", "Warning:", "We have an error"))]
        tolerated = _TOLERATED + (_GONE if deleting else ())
        bad = [ln for ln in errors if not any(t in ln for t in tolerated)]
        if bad:
            raise system.CommandFailed(argv, res.exitstatus, res.stdout, res.stderr)
        return errors

    # -- command lines ----------------------------------------------------------------------------------------

    def _root_lines(self, verb: str, max_tx: int, max_rx: int) -> list[str]:
        return [f"class {verb} dev {dev} parent 1: classid 1:1 htb rate {r}bps ceil {r}bps burst {ROOT_BURST}"
                for dev, r in ((self.venet, max_rx), (self.netdev, max_tx))]

    def _class_lines(self, verb: str, ip: ShapedIp) -> list[str]:
        return [f"class {verb} dev {dev} parent 1:1 classid 1:{ip.class_id} htb rate {r}bps ceil {r}bps "
                f"burst {IP_BURST}" for dev, r in ((self.venet, ip.max_rx), (self.netdev, ip.max_tx))]

    def _filter_lines(self, ip: ShapedIp) -> list[str]:
        proto, prio, match = ("ip", 16, "ip") if ip.addr.version == 4 else ("ipv6", 17, "ip6")
        return [f"filter add dev {dev} parent 1: protocol {proto} prio {prio} u32 match {match} {way} {ip.addr} "
                f"flowid 1:{ip.class_id}" for dev, way in ((self.venet, "dst"), (self.netdev, "src"))]

    def _ip_lines(self, ip: ShapedIp) -> list[str]:
        if not ip.shaped:
            return []
        leaf = [f"qdisc replace dev {dev} parent 1:{ip.class_id} handle {ip.class_id}: {self.leaf_qdisc}"
                for dev in (self.netdev, self.venet)]
        return [*self._class_lines("replace", ip), *self._filter_lines(ip), *leaf]

    async def _filters_of(self, class_id: int) -> list[str]:
        """Delete commands for every u32 filter of ``1:<class_id>`` on both devices (found by flowid)."""
        out: list[str] = []
        for dev in (self.venet, self.netdev):
            res = await self._tc("filter", "show", "dev", dev, "parent", "1:")
            for line in res.stdout.splitlines():
                m = _FILTER.match(line)
                if m and m.group(4) == f"1:{class_id}":
                    proto, prio, handle = m.group(1), m.group(2), m.group(3)
                    out.append(f"filter del dev {dev} parent 1: protocol {proto} prio {prio} handle {handle} u32")
        return out

    # -- operations -------------------------------------------------------------------------------------------

    async def init(self, max_tx: int, max_rx: int, ips: Iterable[ShapedIp]) -> int:
        """Root qdiscs and classes with the node's limits, then every address; returns how many were shaped."""
        check_rate(max_tx, "max_tx")
        check_rate(max_rx, "max_rx")
        ips = list(ips)
        lines = [f"qdisc add dev {dev} root handle 1: htb" for dev in (self.netdev, self.venet)]
        lines += self._root_lines("replace", max_tx, max_rx)
        for ip in ips:
            lines += self._ip_lines(ip)
        async with self.lock:
            await self.batch(lines)
        return sum(1 for ip in ips if ip.shaped)

    async def flush(self) -> None:
        async with self.lock:
            await self.batch([f"qdisc del dev {dev} root handle 1:" for dev in (self.netdev, self.venet)],
                             deleting=True)

    async def reinit(self, max_tx: int, max_rx: int, ips: Iterable[ShapedIp]) -> int:
        await self.flush()
        return await self.init(max_tx, max_rx, ips)

    async def root_change(self, max_tx: int, max_rx: int) -> bool:
        """Change class 1:1 on both devices; False if it is missing (the caller then runs init)."""
        check_rate(max_tx, "max_tx")
        check_rate(max_rx, "max_rx")
        async with self.lock:
            rcs = [(await self._tc(*line.split())).exitstatus for line in self._root_lines("change", max_tx, max_rx)]
        return 2 not in rcs

    async def set(self, ip: ShapedIp) -> None:
        """Class, filters and leaf qdisc of ``ip`` (its old filters are replaced); nothing when tx or rx is 0."""
        if not ip.shaped:
            return
        async with self.lock:
            await self.batch([*await self._filters_of(ip.class_id), *self._ip_lines(ip)])

    async def unset(self, ip: ShapedIp) -> None:
        """Leaf qdiscs, the filters of the class and the classes of ``ip``; missing pieces are fine."""
        async with self.lock:
            await self._unset(ip.class_id)

    async def _unset(self, class_id: int) -> None:
        lines = [f"qdisc del dev {dev} parent 1:{class_id} handle {class_id}:" for dev in (self.netdev, self.venet)]
        lines += await self._filters_of(class_id)
        lines += [f"class del dev {dev} parent 1:1 classid 1:{class_id}" for dev in (self.venet, self.netdev)]
        await self.batch(lines, deleting=True)

    async def change(self, ip: ShapedIp) -> None:
        """v2.0's Shaper::Change: tx or rx 0 frees the address; a missing class is created."""
        if not ip.shaped:
            async with self.lock:
                await self._unset(ip.class_id)
            return
        async with self.lock:
            rcs = [(await self._tc(*line.split())).exitstatus for line in self._class_lines("change", ip)]
            if 2 in rcs:
                log.info("shaper class missing, creating it", class_id=ip.class_id)
                await self.batch([*await self._filters_of(ip.class_id), *self._ip_lines(ip)])

    async def classes(self, dev: str) -> dict[str, str]:
        """``{classid: "rate ceil"}`` as tc shows them (for checks and tests)."""
        res = await self._tc("class", "show", "dev", dev)
        out: dict[str, str] = {}
        for line in res.stdout.splitlines():
            f = line.split()
            if len(f) > 2 and f[0] == "class":
                out[f[2]] = line
        return out
