"""Hostile ``t_param`` for the firewall and shaper transactions (2009-2012, 2014, 2015), run in a network
namespace of their own with iptables (nft) and tc (issue 9, item 3).

The node already accounts and shapes a neighbour address (192.0.2.99, class 199) beside the input's target.
After every input the rules and tc objects that belong to neither the input's address nor its classes must be
exactly as before: a hostile address, class or rate may fail the transaction, never touch the neighbour.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.cases import VALID, family
from tests.fuzz.conftest import next_t_id
from tests.fuzz.harness import count, fuzz_settings, run_input
from tests.fuzz.mutate import mutated
from tests.fuzz.sandbox import VEID, Sandbox, Scope
from tests.network.nets import unavailable
from vpsadmind.firewall import Firewall, Shaper
from vpsadmind.firewall.addresses import parse_address
from vpsadmind.firewall.services import Network, install
from vpsadmind.firewall.shaper import ShapedIp
from vpsadmind.handlers.base import HandlerContext

CODES = family("network")
NEIGHBOUR = ("192.0.2.99", 199)
NEIGHBOUR_HEX = "c0000263"  # 192.0.2.99 as tc's u32 filters print it


_COUNTERS = re.compile(r"direct_packets_stat \d+ ")


class Netns:
    """One namespace with two devices standing for the node's uplink and venet."""

    def __init__(self) -> None:
        self.name = "fz" + secrets.token_hex(4)
        self.netdev, self.venet = self.name + "c", self.name + "b"

    def sh(self, *argv: str) -> str:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def in_ns(self, *argv: str) -> str:
        return self.sh("ip", "netns", "exec", self.name, *argv)

    def create(self) -> None:
        self.sh("ip", "netns", "add", self.name)
        # a veth pair (this kernel has no dummy devices): both ends in the namespace
        self.sh("ip", "-n", self.name, "link", "add", self.netdev, "type", "veth", "peer", "name", self.venet)
        for dev in (self.netdev, self.venet):
            self.sh("ip", "-n", self.name, "link", "set", dev, "up")

    def destroy(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def state(self, scope: Scope) -> list[str]:
        """The rules and tc objects outside ``scope`` (its ``paths`` hold the addresses and class ids)."""
        lines = []
        for tool in ("iptables-nft-save", "ip6tables-nft-save"):
            for line in self.in_ns(tool).splitlines():
                if line.startswith("#") or (line.startswith(":") and "[" in line):
                    continue
                if not any(f"{a}/" in line or f" {a} " in line for a in scope.paths):
                    lines.append(line)
        for dev in (self.netdev, self.venet):
            for kind in ("class", "qdisc"):
                for line in self.in_ns("tc", kind, "show", "dev", dev).splitlines():
                    if not any(f"1:{c} " in line or line.endswith(f"1:{c}") for c in scope.datasets):
                        lines.append(f"{dev} {_COUNTERS.sub('', line)}")
            filters = self.in_ns("tc", "filter", "show", "dev", dev)
            lines.append(f"{dev} neighbour filter: {NEIGHBOUR_HEX in filters} {'flowid 1:199' in filters}")
        return lines


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if shutil.which("tc") is None or shutil.which("iptables-nft") is None:
        unavailable("tc and iptables-nft are needed")
    ns = Netns()
    try:
        ns.create()
    except AssertionError as exc:
        ns.destroy()
        unavailable(f"cannot create a network namespace: {exc}")
    try:
        yield ns
    finally:
        ns.destroy()


@pytest_asyncio.fixture
async def nctx(hctx: HandlerContext, netns: Netns) -> AsyncIterator[HandlerContext]:
    prefix = ["ip", "netns", "exec", netns.name]
    fw = Firewall(iptables="iptables-nft", ip6tables="ip6tables-nft", argv_prefix=prefix)
    shaper = Shaper(netdev=netns.netdev, venet=netns.venet, argv_prefix=prefix, leaf_qdisc=("pfifo",))
    install(hctx, Network(hctx.db, hctx.server_id, firewall=fw, shaper=shaper, max_tx=10**8, max_rx=10**8))
    addr, class_id = NEIGHBOUR
    await fw.init([addr])
    await shaper.init(10**8, 10**8, [ShapedIp(parse_address(addr, 4), class_id, 10**6, 10**6)])
    yield hctx


def network_scope(code: int, params: Any) -> Scope:
    """Addresses in ``paths`` and tc class ids in ``datasets`` (see :meth:`Netns.state`)."""
    s = Scope()
    if hasattr(params, "addr"):
        s.paths.add(params.addr)
        s.paths.add(str(params.ip if hasattr(params, "ip") else parse_address(params.addr, params.version)))
    for spec in (getattr(params, "shaper", None), getattr(params, "shaper_original", None)):
        if spec is not None:
            s.datasets.add(str(spec.class_id))
    if code == 2012:
        s.datasets.add("1")  # the root class: its rates are what RootChange changes
    return s


class NetBox(Sandbox):
    """The sandbox's checks with the namespace's rules and tc objects as the state."""

    netns: Netns

    def fingerprint(self, scope: Scope) -> dict[str, Any]:
        return {"files": dict.fromkeys(self.netns.state(scope), True), "zfs": {}}


@pytest.fixture
def netbox(box: Sandbox, netns: Netns) -> NetBox:
    nb = NetBox(box.root)
    nb.netns = netns
    return nb


@pytest.mark.parametrize("code", CODES)
async def test_valid_example_is_accepted(netbox: NetBox, nctx: HandlerContext, code: int) -> None:
    verdict = await run_input(netbox, nctx, code, VALID[code][1], vps=VEID, t_id=next_t_id(),
                              scope_of=network_scope)
    assert (verdict.refused, verdict.exec_status) == (None, "ok"), verdict.notes


@pytest.mark.parametrize("code", CODES)
@fuzz_settings(8)
@given(data=st.data())
async def test_hostile_params(netbox: NetBox, nctx: HandlerContext, code: int, data: st.DataObject) -> None:
    params, _what = data.draw(mutated(VALID[code][1]), label="input")
    verdict = await run_input(netbox, nctx, code, params, vps=VEID, t_id=next_t_id(), scope_of=network_scope)
    count(f"network:{code}")
    count(f"network:{verdict.kind}")
