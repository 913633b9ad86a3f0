"""Network namespaces for the firewall and shaper tests, and python3 traffic generators run inside them.

Topology (all inside namespaces the test creates; nothing touches the root namespace)::

    <p>v (the VPSes)  --veth <p>a|<p>b--  <p>n (the node: forwards, runs iptables/tc)  --veth <p>c|<p>d--  <p>e
    10.1.0.2-.9, fd00:1::2-::9          10.1.0.1 / 10.2.0.1, fd00:1::1 / fd00:2::1          10.2.0.2, fd00:2::2

VPS traffic crosses FORWARD in ``<p>n``, as venet traffic does on an OpenVZ node. In the node, ``<p>b`` faces
the VPSes (v2.0's venet0, rx) and ``<p>c`` the outside (the node's netdev, tx).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from vpsadmind.testing import services

VPS_V4: Final = [f"10.1.0.{i}" for i in range(2, 10)]
VPS_V6: Final = [f"fd00:1::{i}" for i in range(2, 10)]
EXT_V4: Final = "10.2.0.2"
EXT_V6: Final = "fd00:2::2"
BACKENDS: Final = ("nft", "legacy")
UDP_OVERHEAD: Final = {4: 28, 6: 48}  # IP + UDP header bytes, as iptables counts them


def unavailable(reason: str) -> None:
    """Fail under CI (the machine must have it), skip elsewhere."""
    services.unavailable(reason)


def require_tools(*names: str) -> None:
    missing = [n for n in ("ip", *names) if shutil.which(n) is None]
    if missing:
        unavailable(f"not installed: {', '.join(missing)}")
    if os.geteuid() != 0:
        unavailable("network namespaces need root")


def _sh(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Topology:
    prefix: str = field(default_factory=lambda: "vt" + secrets.token_hex(4))
    created: list[str] = field(default_factory=list)

    @property
    def vps(self) -> str:
        return self.prefix + "v"

    @property
    def node(self) -> str:
        return self.prefix + "n"

    @property
    def ext(self) -> str:
        return self.prefix + "e"

    @property
    def venet(self) -> str:
        return self.prefix + "b"

    @property
    def netdev(self) -> str:
        return self.prefix + "c"

    def prefix_argv(self, ns: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", ns or self.node]

    def create(self) -> None:
        p = self.prefix
        for ns in (self.vps, self.node, self.ext):
            _sh(["ip", "netns", "add", ns])
            self.created.append(ns)
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            # no duplicate address detection: a tentative link-local address delays neighbour discovery
            _sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                 "net.ipv6.conf.default.accept_dad=0"])
        cmds = [
            ["ip", "-n", self.vps, "link", "add", p + "a", "type", "veth", "peer", p + "b", "netns", self.node],
            ["ip", "-n", self.node, "link", "add", p + "c", "type", "veth", "peer", p + "d", "netns", self.ext],
            *(["ip", "-n", self.vps, "addr", "add", f"{a}/24", "dev", p + "a"] for a in VPS_V4),
            *(["ip", "-n", self.vps, "addr", "add", f"{a}/64", "dev", p + "a", "nodad"] for a in VPS_V6),
            ["ip", "-n", self.node, "addr", "add", "10.1.0.1/24", "dev", p + "b"],
            ["ip", "-n", self.node, "addr", "add", "fd00:1::1/64", "dev", p + "b", "nodad"],
            ["ip", "-n", self.node, "addr", "add", "10.2.0.1/24", "dev", p + "c"],
            ["ip", "-n", self.node, "addr", "add", "fd00:2::1/64", "dev", p + "c", "nodad"],
            ["ip", "-n", self.ext, "addr", "add", f"{EXT_V4}/24", "dev", p + "d"],
            ["ip", "-n", self.ext, "addr", "add", f"{EXT_V6}/64", "dev", p + "d", "nodad"],
            ["ip", "-n", self.vps, "link", "set", p + "a", "up"],
            ["ip", "-n", self.node, "link", "set", p + "b", "up"],
            ["ip", "-n", self.node, "link", "set", p + "c", "up"],
            ["ip", "-n", self.ext, "link", "set", p + "d", "up"],
            ["ip", "-n", self.vps, "route", "add", "default", "via", "10.1.0.1"],
            ["ip", "-n", self.vps, "-6", "route", "add", "default", "via", "fd00:1::1"],
            ["ip", "-n", self.ext, "route", "add", "default", "via", "10.2.0.1"],
            ["ip", "-n", self.ext, "-6", "route", "add", "default", "via", "fd00:2::1"],
            [*self.prefix_argv(), "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        ]
        for argv in cmds:
            _sh(argv)
        self.warm_up()

    def warm_up(self) -> None:
        """Resolve every neighbour (ARP/ND) before a test counts: packets queued behind an unresolved neighbour
        are dropped beyond 64 KiB, which would make a burst look lossy."""
        code = ("import socket, sys, time\n"
                "for pair in sys.argv[1:]:\n"
                "    src, dst = pair.split(',')\n"
                "    fam = socket.AF_INET6 if ':' in src else socket.AF_INET\n"
                "    s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((src, 0)); s.sendto(b'w', (dst, 9))\n"
                "time.sleep(0.3)\n")
        out = [f"{a},{EXT_V4}" for a in VPS_V4] + [f"{a},{EXT_V6}" for a in VPS_V6]
        back = [f"{EXT_V4},{a}" for a in VPS_V4] + [f"{EXT_V6},{a}" for a in VPS_V6]
        for _ in range(50):
            _sh(["ip", "netns", "exec", self.vps, sys.executable, "-c", code, *out])
            _sh(["ip", "netns", "exec", self.ext, sys.executable, "-c", code, *back])
            if self._neighbours_settled():
                break
        time.sleep(0.5)  # late ICMP errors of the warm-up must not reach a counting test

    def _neighbours_settled(self) -> bool:
        for ns in (self.vps, self.node, self.ext):
            for family in ("-4", "-6"):
                out = _sh(["ip", "-n", ns, family, "neigh", "show"]).stdout
                if any(state in out for state in ("INCOMPLETE", "FAILED")):
                    return False
        return True

    def destroy(self) -> None:
        for ns in reversed(self.created):
            _sh(["ip", "netns", "del", ns], check=False)
        self.created.clear()


# ------------------------------------------------------------------------------------------------------------
# Traffic: python3 snippets run with `ip netns exec`

_UDP_SINK = """
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
s.settimeout(float(sys.argv[3]))
n = b = 0
try:
    while True:
        d = s.recv(65535)
        if d == b'STOP':
            break
        n += 1; b += len(d)
except socket.timeout:
    pass
print(n, b, flush=True)
"""

_UDP_SEND = """
import socket, sys, time
src, dst, port, count, size, pace = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), float(sys.argv[6])
fam = socket.AF_INET6 if ':' in src else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((src, 0))
payload = b'x' * size
for i in range(count):
    s.sendto(payload, (dst, port))
    if pace and i % 50 == 49:
        time.sleep(pace)
print(count, flush=True)
"""

_STOP = """
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); s.sendto(b'STOP', (sys.argv[2], int(sys.argv[3])))
"""

_TCP_SINK = """
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print('ready', flush=True)
c, _ = s.accept()
n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    n += len(d)
c.close()
print(n, flush=True)
"""

_TCP_SEND = """
import socket, sys
src, dst, port, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ':' in src else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.bind((src, 0)); s.connect((dst, port))
s.sendall(b'y' * total); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print(total, flush=True)
"""


async def py(ns: str, code: str, *args: object) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", code, *map(str, args),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _ready(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    if line.strip() != b"ready":
        err = await proc.stderr.read() if proc.stderr else b""
        raise RuntimeError(f"sink did not start: {line!r} {err!r}")


async def _result(proc: asyncio.subprocess.Process, timeout: float = 60) -> list[int]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"traffic helper failed ({proc.returncode}): {err.decode()[-500:]}")
    return [int(x) for x in out.split()]


@dataclass
class UdpSink:
    ns: str
    addr: str
    port: int
    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, ns: str, addr: str, port: int, idle: float = 30.0) -> UdpSink:
        proc = await py(ns, _UDP_SINK, addr, port, idle)
        await _ready(proc)
        return cls(ns, addr, port, proc)

    async def stop(self, stop_from: tuple[str, str]) -> tuple[int, int]:
        """Send STOP from (namespace, source address); returns (datagrams, payload bytes) received."""
        ns, src = stop_from
        await _result(await py(ns, _STOP, src, self.addr, self.port))
        n, b = await _result(self.proc)
        return n, b


async def udp_send(ns: str, src: str, dst: str, port: int, count: int, size: int, pace: float = 0.001) -> int:
    (sent,) = await _result(await py(ns, _UDP_SEND, src, dst, port, count, size, pace))
    return sent


async def tcp_transfer(sink_ns: str, sink_addr: str, src_ns: str, src: str, port: int, total: int) -> int:
    sink = await py(sink_ns, _TCP_SINK, sink_addr, port)
    await _ready(sink)
    await _result(await py(src_ns, _TCP_SEND, src, sink_addr, port, total))
    (received,) = await _result(sink)
    return received
