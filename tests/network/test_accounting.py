"""Accounting with real iptables (nft and legacy backends) in network namespaces, with real traffic."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess

import pytest

from tests.network.conftest import make_firewall
from tests.network.nets import EXT_V4, EXT_V6, UDP_OVERHEAD, VPS_V4, VPS_V6, Topology, UdpSink, tcp_transfer, udp_send
from vpsadmind.firewall import Firewall, Traffic

pytestmark = pytest.mark.timeout(300)


def save(topo: Topology, binary: str) -> list[str]:
    out = subprocess.run([*topo.prefix_argv(), f"{binary}-save", "-t", "filter"], capture_output=True, text=True,
                         check=True).stdout
    return out.splitlines()


def chain_rules(topo: Topology, binary: str) -> list[str]:
    """The accounting rules as v2.0 wrote them, whatever the layout: a sub-chain's rule ``-A accounting-1f ...``
    reads ``-A accounting ...`` and the root's jumps to its sub-chains are left out."""
    out = []
    for line in save(topo, binary):
        fields = line.split()
        if line.startswith("-A FORWARD") or (line.startswith("-A accounting") and fields[2] != "-j"):
            out.append(" ".join(["-A", "accounting" if fields[1].startswith("accounting") else fields[1],
                                 *fields[2:]]))
    return out


def totals(traffic: list[Traffic]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    out: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for t in traffic:
        a = out.get((t.ip, t.proto), (0, 0, 0, 0))
        out[(t.ip, t.proto)] = (a[0] + t.packets_in, a[1] + t.packets_out, a[2] + t.bytes_in, a[3] + t.bytes_out)
    return out


def add(acc: dict[tuple[str, str], tuple[int, int, int, int]], traffic: list[Traffic]) -> None:
    for key, v in totals(traffic).items():
        a = acc.get(key, (0, 0, 0, 0))
        acc[key] = (a[0] + v[0], a[1] + v[1], a[2] + v[2], a[3] + v[3])


async def test_rule_shapes_are_v2s_and_registration_is_idempotent(topo: Topology, fw: Firewall,
                                                                  backend: str) -> None:
    assert await fw.init(["10.1.0.2", "fd00:1::2"]) == {4: 1, 6: 1}
    assert await fw.init(["10.1.0.2"]) == {4: None, 6: None}  # the chain exists: v2.0 skips
    assert await fw.register("10.1.0.3") == 6
    assert await fw.register("10.1.0.3") == 0
    assert await fw.register("10.1.0.3", 4) == 0
    expected4 = ["-A FORWARD -j accounting"] + [
        f"-A accounting -{flag} {ip}/32{'' if p == 'all' else f' -p {p}'} -j ACCEPT"
        for ip in ("10.1.0.2", "10.1.0.3") for p in ("tcp", "udp", "all") for flag in ("s", "d")]
    assert sorted(chain_rules(topo, f"iptables-{backend}")) == sorted(expected4)
    rules6 = chain_rules(topo, f"ip6tables-{backend}")
    assert "-A accounting -s fd00:1::2/128 -p tcp -j ACCEPT" in rules6
    assert "-A accounting -d fd00:1::2/128 -j ACCEPT" in rules6
    assert len(rules6) == 7
    assert await fw.unregister("10.1.0.3") == 6
    assert await fw.unregister("10.1.0.3") == 0
    assert await fw.registered(4) == {"10.1.0.2"}
    assert await fw.flush() == {4: True, 6: True}
    assert chain_rules(topo, f"iptables-{backend}") == []
    assert await fw.flush() == {4: False, 6: False}


async def test_counter_mode_is_delta_on_both_backends(topo: Topology, fw: Firewall, backend: str) -> None:
    """Diffs of never-zeroed counters, with the marks stored beside the traffic, are exact across a crash on
    either backend; only the layout follows the backend."""
    assert await fw.mode(4) == "delta"
    assert await fw.nf_tables(4) is (backend == "nft")
    assert await make_firewall(topo, backend, counter_mode="zero").mode(4) == "zero"


async def test_udp_is_counted_exactly_per_ip_and_direction(topo: Topology, fw: Firewall) -> None:
    a, b, c6 = VPS_V4[0], VPS_V4[1], VPS_V6[0]
    await fw.init([a, b, c6])
    assert await fw.collect() == []
    out_sink = await UdpSink.start(topo.ext, EXT_V4, 5001)
    in_sink = await UdpSink.start(topo.vps, b, 5002)
    v6_sink = await UdpSink.start(topo.ext, EXT_V6, 5003)
    await udp_send(topo.vps, a, EXT_V4, 5001, 1000, 200)
    await udp_send(topo.ext, EXT_V4, b, 5002, 700, 300)
    await udp_send(topo.vps, c6, EXT_V6, 5003, 500, 100)
    # STOP datagrams: one more packet each, from the same addresses
    assert await out_sink.stop((topo.vps, a)) == (1000, 200_000)
    assert await in_sink.stop((topo.ext, EXT_V4)) == (700, 210_000)
    assert await v6_sink.stop((topo.vps, c6)) == (500, 50_000)
    got = totals(await fw.collect())
    stop4, stop6 = 4 + UDP_OVERHEAD[4], 4 + UDP_OVERHEAD[6]
    assert got[(a, "udp")] == (0, 1001, 0, 1000 * (200 + UDP_OVERHEAD[4]) + stop4)
    assert got[(b, "udp")] == (701, 0, 700 * (300 + UDP_OVERHEAD[4]) + stop4, 0)
    assert got[(c6, "udp")] == (0, 501, 0, 500 * (100 + UDP_OVERHEAD[6]) + stop6)
    assert set(got) == {(a, "udp"), (b, "udp"), (c6, "udp")}  # no ICMP: every datagram had a listener
    assert await fw.collect() == []  # read and zeroed (or diffed): nothing twice


async def test_tcp_is_counted_with_its_handshake(topo: Topology, fw: Firewall) -> None:
    a = VPS_V4[0]
    await fw.init([a])
    total = 3_000_000
    assert await tcp_transfer(topo.ext, EXT_V4, topo.vps, a, 5010, total) == total
    got = totals(await fw.collect())
    p_in, p_out, b_in, b_out = got[(a, "tcp")]
    assert p_out > 0 and p_in > 0
    # each counted packet carries 40-60 header bytes (IP + TCP with options; GSO packets count once);
    # on a loaded machine TCP may retransmit a little, which the firewall rightly counts again
    assert total + 40 * p_out <= b_out <= total * 1.05 + 60 * p_out
    assert 40 * p_in <= b_in <= 60 * p_in + 1  # ACKs only (the sink sends no data)
    assert set(got) == {(a, "tcp")}


async def test_reinit_during_traffic_loses_nothing(topo: Topology, fw: Firewall) -> None:
    a, b, stale, new = VPS_V4[0], VPS_V4[1], VPS_V4[2], VPS_V4[3]
    await fw.init([a, b, stale, VPS_V6[0]])
    await fw.register(a)  # a duplicate attempt must not add rules
    sink = await UdpSink.start(topo.ext, EXT_V4, 5020)
    count, size = 20_000, 120
    sender = asyncio.create_task(udp_send(topo.vps, a, EXT_V4, 5020, count, size, pace=0.0005))
    acc: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    reinits = 0
    while not sender.done():
        assert await fw.reinit([a, b, new] if reinits % 2 else [a, b, stale, VPS_V6[0]]) in (
            {4: 3, 6: 0}, {4: 3, 6: 1})
        reinits += 1
        add(acc, await fw.collect())
    assert await sender == count
    received, _ = await sink.stop((topo.vps, a))
    assert received == count
    add(acc, await fw.collect())
    assert reinits >= 3
    assert acc[(a, "udp")] == (0, count + 1, 0, count * (size + UDP_OVERHEAD[4]) + 4 + UDP_OVERHEAD[4])
    last = [a, b, new] if (reinits - 1) % 2 else [a, b, stale]
    assert sorted(await fw.registered(4)) == sorted(last)


async def test_concurrent_registration_and_counting_lose_and_double_nothing(topo: Topology, fw: Firewall) -> None:
    a, b = VPS_V4[0], VPS_V4[1]
    churn = [*VPS_V4[2:], *VPS_V6[1:]]
    await fw.init([a, b])
    out_sink = await UdpSink.start(topo.ext, EXT_V4, 5030)
    in_sink = await UdpSink.start(topo.vps, b, 5031)
    n_out, n_in = 15_000, 10_000
    senders = asyncio.gather(udp_send(topo.vps, a, EXT_V4, 5030, n_out, 100, pace=0.0005),
                             udp_send(topo.ext, EXT_V4, b, 5031, n_in, 150, pace=0.0005))
    acc: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    done = asyncio.Event()

    # at least two rounds and reads each, even when a loaded machine sends the datagrams before they are done
    async def churner() -> int:
        rounds = 0
        while not done.is_set() or rounds < 2:
            await asyncio.gather(*(fw.register(ip) for ip in churn))
            await asyncio.gather(*(fw.unregister(ip) for ip in churn[::2]))
            rounds += 1
        return rounds

    async def counter() -> int:
        reads = 0
        while not done.is_set() or reads < 2:
            add(acc, await fw.collect())
            reads += 1
            await asyncio.sleep(0.01)
        return reads

    tasks = [asyncio.create_task(churner()), asyncio.create_task(counter()), asyncio.create_task(counter())]
    assert await senders == [n_out, n_in]
    done.set()
    rounds, reads1, reads2 = await asyncio.gather(*tasks)
    assert await out_sink.stop((topo.vps, a)) == (n_out, n_out * 100)
    assert await in_sink.stop((topo.ext, EXT_V4)) == (n_in, n_in * 150)
    add(acc, await fw.collect())
    assert rounds >= 2 and reads1 + reads2 >= 4
    assert acc[(a, "udp")] == (0, n_out + 1, 0, n_out * (100 + 28) + 32)
    assert acc[(b, "udp")] == (n_in + 1, 0, n_in * (150 + 28) + 32, 0)
    assert {k for k, v in acc.items() if any(v)} == {(a, "udp"), (b, "udp")}
    # every churned address is registered once or not at all: no duplicated rules
    for version in (4, 6):
        binary = "iptables" if version == 4 else "ip6tables"
        rules = [r for r in chain_rules(topo, fw.binaries[version].replace(binary, binary)) if "accounting -" in r]
        assert len(rules) == len(set(rules))


async def test_ten_thousand_addresses_apply_and_read_back(topo: Topology, backend: str) -> None:
    fw = make_firewall(topo, backend)
    base4 = ipaddress.IPv4Address("10.100.0.0")
    ips = [str(base4 + i) for i in range(10_000)]
    assert await fw.init(ips) == {4: 10_000, 6: 0}
    assert await fw.registered(4) == set(ips)
    assert len(chain_rules(topo, f"iptables-{backend}")) == 60_001
    moved = [str(base4 + 20_000 + i) for i in range(100)]
    assert await fw.reinit(ips[100:] + moved) == {4: 10_000, 6: 0}
    assert await fw.registered(4) == set(ips[100:] + moved)
    assert len(chain_rules(topo, f"iptables-{backend}")) == 60_001
