"""Where the accounting rules live: v2.0's single chain (zero mode, legacy) or ``accounting`` jumping to 64
sub-chains (delta mode, nft), and reinit moving a v2.0 chain to the sub-chains without losing a count."""

from __future__ import annotations

import subprocess
import zlib

import pytest

from tests.network.conftest import make_firewall
from tests.network.nets import EXT_V4, UDP_OVERHEAD, VPS_V4, Topology, UdpSink, udp_send
from vpsadmind.firewall import Firewall
from vpsadmind.firewall.rules import DEFAULT_BUCKETS, Layout, RuleKey, parse_chains

pytestmark = pytest.mark.timeout(120)


def rules_by_chain(topo: Topology, binary: str) -> dict[str, list[str]]:
    out = subprocess.run([*topo.prefix_argv(), f"{binary}-save", "-t", "filter"], capture_output=True, text=True,
                         check=True).stdout
    chains: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith(":accounting"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            fields = line.split()
            chains.setdefault(fields[1], []).append(" ".join(fields[2:]))
    return chains


async def send(topo: Topology, src: str, port: int, count: int, size: int = 100) -> None:
    sink = await UdpSink.start(topo.ext, EXT_V4, port)
    await udp_send(topo.vps, src, EXT_V4, port, count, size)
    assert await sink.stop((topo.vps, src)) == (count, count * size)


def test_layout_places_an_address_by_a_stable_hash() -> None:
    split = Layout("accounting", DEFAULT_BUCKETS)
    key = RuleKey("10.1.0.2", "tcp", "out")
    assert split.chain_of(key) == f"accounting-{zlib.crc32(b'10.1.0.2') % 64:02x}"
    # all six rules of an address in one chain; ::1-style addresses still spread over the chains
    assert {split.chain_of(RuleKey("10.1.0.2", p, d)) for p in ("tcp", "udp", "all") for d in ("in", "out")} == {
        split.chain_of(key)}
    assert len({split.chain_of(RuleKey(f"2a03:3b40:{i:x}::1", "all", "in")) for i in range(1000)}) == 64
    assert split.chains[:2] == ["accounting", "accounting-00"] and len(split.chains) == 65
    assert Layout().chain_of(key) == "accounting" and Layout().chains == ["accounting"]
    for bad in ({"root": "a" * 26}, {"root": "acc ounting"}, {"buckets": 257}, {"buckets": -1}):
        with pytest.raises(ValueError):
            Layout(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero counter mode"):
        Firewall(counter_mode="zero", buckets=4)


def test_parser_reads_every_chain_and_the_jumps() -> None:
    text = """Chain FORWARD (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
     100    10000 accounting  0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain accounting (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      50     5000 accounting-00  0    --  *      *       0.0.0.0/0            0.0.0.0/0
       1        1 accounting-01  6    --  *      *       0.0.0.0/0            0.0.0.0/0
       2        2 accounting-01  0    --  eth0   *       0.0.0.0/0            0.0.0.0/0

Chain accounting-00 (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       7      700 ACCEPT     17   --  *      *       10.0.0.1             0.0.0.0/0
"""
    chains = parse_chains(text, 4, {"accounting", "accounting-00", "accounting-01"})
    assert set(chains) == {"accounting", "accounting-00"}  # FORWARD not asked for, accounting-01 not listed
    root = chains["accounting"].rules or []
    assert [(r.number, r.jump, r.key) for r in root] == [(1, "accounting-00", None), (2, None, None),
                                                         (3, None, None)]
    (rule,) = chains["accounting-00"].rules or []
    assert (rule.chain, rule.number, rule.packets, rule.key) == ("accounting-00", 1, 7,
                                                                 RuleKey("10.0.0.1", "udp", "out"))


async def test_layout_follows_the_backend(topo: Topology, fw: Firewall, backend: str) -> None:
    a, b = VPS_V4[0], VPS_V4[1]
    assert await fw.init([a, b]) == {4: 2, 6: 0}
    chains = rules_by_chain(topo, f"iptables-{backend}")
    assert chains["FORWARD"] == ["-j accounting"]
    if backend == "legacy":  # zero mode: v2.0's single chain
        assert set(chains) == {"FORWARD", "accounting"} and len(chains["accounting"]) == 12
        return
    layout = await fw.layout(4)
    assert layout == Layout("accounting", DEFAULT_BUCKETS)
    assert chains["accounting"] == [f"-j {sub}" for sub in layout.subchains]
    for addr in (a, b):
        chain = layout.chain_of(RuleKey(addr, "all", "in"))
        assert f"-s {addr}/32 -p tcp -j ACCEPT" in chains[chain]
        assert sum(addr + "/" in r for rules in chains.values() for r in rules) == 6
    assert set(rules_by_chain(topo, f"ip6tables-{backend}")) == {"FORWARD", *layout.chains}
    assert await fw.flush() == {4: True, 6: True}
    assert rules_by_chain(topo, f"iptables-{backend}") == {}  # no chain of ours, no FORWARD rule


async def test_reinit_moves_a_v2_chain_into_sub_chains_keeping_the_counts(topo: Topology, backend: str) -> None:
    """A node upgraded from v2.0 has the flat chain; the first reinit in delta mode moves it, counts included."""
    a, b = VPS_V4[0], VPS_V4[1]
    v2 = make_firewall(topo, backend, counter_mode="delta", buckets=0)
    await v2.init([a, b])
    fw = make_firewall(topo, backend, counter_mode="delta")
    assert await fw.collect() == []  # the baseline
    await send(topo, a, 7101, 300)
    assert await fw.reinit([a, b]) == {4: 2, 6: 0}
    chains = rules_by_chain(topo, f"iptables-{backend}")
    assert len(chains["accounting"]) == DEFAULT_BUCKETS and all(r.startswith("-j accounting-")
                                                                 for r in chains["accounting"])
    await send(topo, a, 7102, 200)
    (got,) = await fw.collect()
    assert (got.ip, got.proto, got.packets_out, got.bytes_out) == (
        a, "udp", 502, 500 * (100 + UDP_OVERHEAD[4]) + 2 * (4 + UDP_OVERHEAD[4]))
    assert await fw.registered(4) == {a, b}


async def test_reinit_repairs_jumps_and_chains_and_drops_foreign_rules(topo: Topology, fw: Firewall,
                                                                       backend: str) -> None:
    a = VPS_V4[0]
    await fw.init([a])
    layout = await fw.layout(4)
    binary = [*topo.prefix_argv(), f"iptables-{backend}", "-w", "30"]
    subprocess.run([*binary, "-A", "accounting", "-s", "192.0.2.1", "-p", "icmp", "-j", "ACCEPT"], check=True)
    if layout.buckets:
        own = layout.chain_of(RuleKey(a, "all", "in"))
        other = next(c for c in layout.subchains if c != own)
        subprocess.run([*binary, "-D", "accounting", "-j", other], check=True)
        subprocess.run([*binary, "-F", other], check=True)
        subprocess.run([*binary, "-X", other], check=True)
    subprocess.run([*binary, "-A", "FORWARD", "-j", "accounting"], check=True)  # a second jump
    await fw.collect()
    await send(topo, a, 7103, 100)
    assert await fw.reinit([a]) == {4: 1, 6: 0}
    chains = rules_by_chain(topo, f"iptables-{backend}")
    assert chains["FORWARD"] == ["-j accounting"]
    assert not any("192.0.2.1" in r for r in chains["accounting"])
    if layout.buckets:
        assert sorted(chains["accounting"]) == sorted(f"-j {sub}" for sub in layout.subchains)
        assert set(chains) == {"FORWARD", *layout.chains}
    (got,) = await fw.collect()
    assert (got.ip, got.packets_out) == (a, 101)
