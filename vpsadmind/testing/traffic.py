"""Real traffic through a real daemon's accounting rules, for tests and the soak harness (no pytest needed).

A :class:`TrafficNode` is one hypervisor's network as three namespaces it creates (with a unique prefix) and
deletes again::

    <p>v (the VPSes: <p>a)  --veth--  <p>n (the node: venet0 | <p>c, forwards, runs iptables/tc)  --veth--  <p>e (<p>d)

VPS addresses are /32 (/128) host routes on ``venet0`` as on an OpenVZ node, so any address works and two nodes
of one soak can use disjoint ones (``transfered_recent`` is keyed by the address only). Neighbour entries are
permanent, so no ARP/ND is ever in flight when traffic is counted (a packet queued behind an unresolved
neighbour would be counted by FORWARD and then dropped).

The daemon runs in the root namespace (it must reach MariaDB); :attr:`TrafficNode.bin` are wrapper scripts
that run ``iptables``/``ip6tables`` (and their ``-restore``), ``tc`` and ``nft`` inside the node namespace, and
:meth:`TrafficNode.vpsadmin` the ``vpsadmin`` keys that turn on ``init`` and ``track_transfers``.

:meth:`TrafficNode.pump` sends UDP datagrams to or from an address and checks that every one arrived; its
ledger (:meth:`TrafficNode.expected`) is what the accounting rules must count, headers included.
:meth:`TrafficNode.kernel_totals` reads what they did count (cumulative in the daemon's ``delta`` counter
mode, which never zeroes), :func:`db_totals` what the daemon stored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from vpsadmind.firewall.rules import CHAIN, parse_chains

__all__ = ["Counts", "TrafficNode", "db_totals", "UDP_HEADERS"]

#: IP + UDP header bytes of one datagram, as iptables counts them
UDP_HEADERS: Final = {4: 28, 6: 48}
#: payload per datagram: below the veth MTU (1500) for both IP versions, so nothing is fragmented
PAYLOAD: Final = 1400
_STOP: Final = b"STOP"
_GW: Final = {4: "172.31.254.1", 6: "fd00:fe::1"}           # the node's address on venet0
_LINK: Final = {4: ("172.31.255.1", "172.31.255.2", 30), 6: ("fd00:ff::1", "fd00:ff::2", 64)}  # node, outside


@dataclass(frozen=True, slots=True)
class Counts:
    """Packets and bytes to (``in``) and from (``out``) an address, as in ``transfered_recent``."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.packets_in + other.packets_in, self.packets_out + other.packets_out,
                      self.bytes_in + other.bytes_in, self.bytes_out + other.bytes_out)

    @classmethod
    def of(cls, direction: str, packets: int, nbytes: int) -> Counts:
        return cls(packets_in=packets, bytes_in=nbytes) if direction == "in" else \
            cls(packets_out=packets, bytes_out=nbytes)


def _sh(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, input=input)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _version(addr: str) -> int:
    return ipaddress.ip_address(addr).version


# A sink and a sender, run with `ip netns exec` in the namespace of their address. The sink prints "ready" once
# bound, then the number of datagrams and payload bytes it got before the sender's STOP datagram.
_SINK = """
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
s.settimeout(30)
n = b = 0
while True:
    d = s.recv(65535)
    if d == b'STOP':
        break
    n += 1; b += len(d)
print(n, b, flush=True)
"""

_SEND = """
import socket, sys, time
src, dst, port, sizes = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(x) for x in sys.argv[4].split(',')]
fam = socket.AF_INET6 if ':' in src else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((src, 0))
for i, size in enumerate(sizes):
    s.sendto(b'x' * size, (dst, port))
    if i % 32 == 31:
        time.sleep(0.001)
time.sleep(0.01)
s.sendto(b'STOP', (dst, port))
"""


class TrafficNode:
    """The network of one node; see the module doc. ``backend`` is ``nft`` or ``legacy`` (``iptables-<backend>``).

    Use as a context manager, or call :meth:`create` and :meth:`close` (which never raises)."""

    _ports = itertools.count(30000)

    def __init__(self, workdir: Path, *, backend: Literal["nft", "legacy"] = "nft", prefix: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.backend = backend
        self.prefix = prefix or "tn" + secrets.token_hex(4)
        if len(self.prefix) > 12:
            raise ValueError("prefix: at most 12 characters (interface names are limited to 15)")
        self.vps_ns, self.node_ns, self.ext_ns = self.prefix + "v", self.prefix + "n", self.prefix + "e"
        self.netdev = self.prefix + "c"
        self.ips: list[str] = []
        self._ledger: dict[str, Counts] = {}
        self._created: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def __enter__(self) -> TrafficNode:
        return self.create()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def create(self) -> TrafficNode:
        """The namespaces, links, routes and wrapper scripts; on any failure what was made is removed again."""
        for tool in ("ip", "tc", f"iptables-{self.backend}", f"ip6tables-{self.backend}"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed")
        try:
            self._create_namespaces()
            self._create_links()
            self._write_wrappers()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for ns in reversed(self._created):
            _sh(["ip", "netns", "del", ns], check=False)
        self._created.clear()

    def _create_namespaces(self) -> None:
        for ns in (self.vps_ns, self.node_ns, self.ext_ns):
            _sh(["ip", "netns", "add", ns])
            self._created.append(ns)
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            _sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                 "net.ipv6.conf.default.accept_dad=0"])
        _sh(["ip", "netns", "exec", self.node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
             "net.ipv6.conf.all.forwarding=1"])

    def _create_links(self) -> None:
        p, vps, node, ext = self.prefix, self.vps_ns, self.node_ns, self.ext_ns
        _sh(["ip", "-n", vps, "link", "add", p + "a", "type", "veth", "peer", "venet0", "netns", node])
        _sh(["ip", "-n", node, "link", "add", self.netdev, "type", "veth", "peer", p + "d", "netns", ext])
        for ns, dev in ((vps, p + "a"), (node, "venet0"), (node, self.netdev), (ext, p + "d")):
            _sh(["ip", "-n", ns, "link", "set", dev, "up"])
        for v in (4, 6):
            fam, full = f"-{v}", 32 if v == 4 else 128
            mine, theirs, plen = _LINK[v]
            nodad = ["nodad"] if v == 6 else []
            _sh(["ip", "-n", node, fam, "addr", "add", f"{_GW[v]}/{full}", "dev", "venet0", *nodad])
            _sh(["ip", "-n", vps, fam, "route", "add", _GW[v], "dev", p + "a"])
            _sh(["ip", "-n", vps, fam, "route", "add", "default", "via", _GW[v], "dev", p + "a"])
            _sh(["ip", "-n", node, fam, "addr", "add", f"{mine}/{plen}", "dev", self.netdev, *nodad])
            _sh(["ip", "-n", ext, fam, "addr", "add", f"{theirs}/{plen}", "dev", p + "d", *nodad])
            _sh(["ip", "-n", ext, fam, "route", "add", "default", "via", mine])
            # permanent neighbours: no resolution is ever pending when packets are counted
            self._neigh(vps, p + "a", _GW[v], self._mac(node, "venet0"))
            self._neigh(node, self.netdev, theirs, self._mac(ext, p + "d"))
            self._neigh(ext, p + "d", mine, self._mac(node, self.netdev))

    @staticmethod
    def _mac(ns: str, dev: str) -> str:
        return str(json.loads(_sh(["ip", "-n", ns, "-j", "link", "show", dev]))[0]["address"])

    @staticmethod
    def _neigh(ns: str, dev: str, addr: str, mac: str) -> None:
        _sh(["ip", "-n", ns, "neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent"])

    def _write_wrappers(self) -> None:
        bindir = self.workdir / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        targets = {"iptables": f"iptables-{self.backend}", "ip6tables": f"ip6tables-{self.backend}", "tc": "tc",
                   "nft": "nft"}
        for name in ("iptables", "ip6tables"):
            targets[f"{name}-restore"] = f"{targets[name]}-restore"
            targets[f"{name}-save"] = f"{targets[name]}-save"
        for name, real in targets.items():
            script = bindir / name
            if name == "tc":  # a kernel without sch_sfq (docs/network.md): v2.0's sfq becomes pfifo
                text = f"sed 's/ sfq perturb 10$/ pfifo/' | exec ip netns exec {self.node_ns} tc \"$@\"\n"
            else:  # a line per finished call, so that a harness can kill the daemon right after a read
                text = (f'ip netns exec {self.node_ns} {real} "$@"\nrc=$?\n'
                        f'echo "{name} $* -> $rc" >> {self.calls_log}\nexit $rc\n')
            script.write_text("#!/bin/sh\n" + text)
            script.chmod(0o755)

    @property
    def calls_log(self) -> Path:
        """One line per finished iptables/ip6tables(-restore/-save) call of the wrappers: ``name args -> rc``."""
        return self.workdir / "calls.log"

    def calls(self) -> list[str]:
        return self.calls_log.read_text().splitlines() if self.calls_log.exists() else []

    # -- configuration ------------------------------------------------------------------------------------------

    @property
    def bin(self) -> dict[str, str]:
        """The daemon's ``bin`` section (``write_config(bin=...)``). The config has no ``bin.nft``: the daemon runs
        nft only through iptables-nft; ``<workdir>/bin/nft`` is there for a harness that wants to look."""
        return {name: str(self.workdir / "bin" / name) for name in ("iptables", "ip6tables", "tc")}

    def vpsadmin(self, *, interval: float = 0.5, init: bool = True, max_rate: int = 10**9) -> dict[str, Any]:
        """``vpsadmin`` keys (``write_config(extra_vpsadmin=...)``): init and traffic accounting every ``interval``."""
        return {"init": init, "track_transfers": True, "transfers_interval": interval, "netdev": self.netdev,
                "max_tx": max_rate, "max_rx": max_rate}

    def config(self, *, interval: float = 0.5, **vpsadmin: Any) -> dict[str, Any]:
        """Keyword arguments for :func:`~vpsadmind.testing.process.write_config`; ``vpsadmin`` adds keys."""
        return {"bin": self.bin, "extra_vpsadmin": {**self.vpsadmin(interval=interval), **vpsadmin}}

    # -- addresses ----------------------------------------------------------------------------------------------

    def add_ip(self, addr: str) -> None:
        """Put ``addr`` on the VPS side, routed through ``venet0`` (the daemon learns it from ``vps_ip`` rows)."""
        v, text = _version(addr), str(ipaddress.ip_address(addr))
        full = 32 if v == 4 else 128
        dev = self.prefix + "a"
        _sh(["ip", "-n", self.vps_ns, f"-{v}", "addr", "add", f"{text}/{full}", "dev", dev,
             *(["nodad"] if v == 6 else [])])
        _sh(["ip", "-n", self.node_ns, f"-{v}", "route", "add", f"{text}/{full}", "dev", "venet0"])
        self._neigh(self.node_ns, "venet0", text, self._mac(self.vps_ns, dev))
        self.ips.append(text)

    def remove_ip(self, addr: str) -> None:
        text = str(ipaddress.ip_address(addr))
        v = _version(text)
        full = 32 if v == 4 else 128
        _sh(["ip", "-n", self.node_ns, f"-{v}", "route", "del", f"{text}/{full}", "dev", "venet0"], check=False)
        _sh(["ip", "-n", self.vps_ns, f"-{v}", "addr", "del", f"{text}/{full}", "dev", self.prefix + "a"],
            check=False)
        if text in self.ips:
            self.ips.remove(text)

    # -- traffic ------------------------------------------------------------------------------------------------

    async def pump(self, ip: str, nbytes: int, direction: Literal["in", "out"] = "out") -> Counts:
        """Send ``nbytes`` of UDP payload to (``in``) or from (``out``) ``ip``, across the node's FORWARD chain,
        plus one STOP datagram; returns what the accounting rules must count for it (headers included) and adds
        it to the ledger. Raises if a datagram did not arrive (then the ledger would not be exact)."""
        text = str(ipaddress.ip_address(ip))
        if text not in self.ips:
            raise ValueError(f"{ip} was not added with add_ip")
        v = _version(text)
        peer = _LINK[v][1]
        sizes = [PAYLOAD] * (nbytes // PAYLOAD) + ([nbytes % PAYLOAD] if nbytes % PAYLOAD else [])
        (src_ns, src), (dst_ns, dst) = ((self.vps_ns, text), (self.ext_ns, peer)) if direction == "out" else \
            ((self.ext_ns, peer), (self.vps_ns, text))
        port = next(self._ports)
        sink = await _py(dst_ns, _SINK, dst, port)
        try:
            assert sink.stdout is not None
            line = await asyncio.wait_for(sink.stdout.readline(), 20)
            if line.strip() != b"ready":
                raise RuntimeError(f"traffic sink did not start: {line!r}")
            sender = await _py(src_ns, _SEND, src, dst, port, ",".join(map(str, sizes or [0])))
            await _finish(sender, 60)
            got = (await _finish(sink, 60)).split()
        finally:
            if sink.returncode is None:
                sink.kill()
                await sink.wait()
        sent = (len(sizes or [0]), sum(sizes))
        if (int(got[0]), int(got[1])) != sent:
            raise RuntimeError(f"{ip} {direction}: {got} of {sent} datagrams/bytes arrived")
        counted = Counts.of(direction, sent[0] + 1, sent[1] + len(_STOP) + (sent[0] + 1) * UDP_HEADERS[v])
        self._ledger[text] = self._ledger.get(text, Counts()) + counted
        return counted

    def expected(self, ips: Iterable[str] | None = None) -> dict[str, Counts]:
        """What :meth:`pump` sent per address (all of ``ips``, zero for an address that got nothing)."""
        wanted = self.ips if ips is None else [str(ipaddress.ip_address(a)) for a in ips]
        return {a: self._ledger.get(a, Counts()) for a in wanted}

    def kernel_totals(self, ips: Iterable[str] | None = None) -> dict[str, Counts]:
        """The accounting rules' counters per address (every protocol), read inside the node namespace. With the
        ``delta`` counter mode they never go down while the rules exist, so they are the totals since init."""
        wanted = self.ips if ips is None else [str(ipaddress.ip_address(a)) for a in ips]
        out = {a: Counts() for a in wanted}
        for v in (4, 6):
            text = _sh(["ip", "netns", "exec", self.node_ns, f"ip{'6' if v == 6 else ''}tables-{self.backend}",
                        "-w", "-L", "-nvx"])
            for name, chain in parse_chains(text, v).items():
                if name != CHAIN and not name.startswith(CHAIN + "-"):
                    continue
                for rule in chain.rules or []:
                    if rule.key is not None and rule.key.addr in out:
                        out[rule.key.addr] += Counts.of(rule.key.direction, rule.packets, rule.bytes)
        return out


async def db_totals(conn: Any, ips: Iterable[str]) -> dict[str, Counts]:
    """What the daemon stored per address (an aiomysql connection): ``transfered_recent`` plus ``transfered``,
    where v2.0's cron moves the rows to."""
    wanted = [str(ipaddress.ip_address(a)) for a in ips]
    out = {a: Counts() for a in wanted}
    if not wanted:
        return out
    marks = ", ".join(["%s"] * len(wanted))
    sql = " UNION ALL ".join(
        f"SELECT tr_ip, SUM(tr_packets_in), SUM(tr_packets_out), SUM(tr_bytes_in), SUM(tr_bytes_out) FROM {t} "
        f"WHERE tr_ip IN ({marks}) GROUP BY tr_ip" for t in ("transfered_recent", "transfered"))
    async with conn.cursor() as cur:
        await cur.execute(sql, wanted * 2)
        for ip, pin, pout, bin_, bout in await cur.fetchall():
            out[ip] += Counts(int(pin), int(pout), int(bin_), int(bout))
    return out


async def _py(ns: str, code: str, *args: object) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", code, *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONSAFEPATH": "1"})


async def _finish(proc: asyncio.subprocess.Process, timeout: float) -> bytes:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"traffic helper failed ({proc.returncode}): {err.decode()[-500:]}")
    return out
