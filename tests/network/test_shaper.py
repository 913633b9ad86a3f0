"""The tc HTB shaper in a network namespace: v2.0's tree, idempotent set, exact unset, change and root change."""

from __future__ import annotations

import subprocess

import pytest

from tests.network.nets import EXT_V4, EXT_V6, VPS_V4, VPS_V6, Topology, UdpSink, udp_send
from vpsadmind.firewall import ShapedIp, Shaper

pytestmark = pytest.mark.timeout(120)


def tc(topo: Topology, *args: str) -> str:
    return subprocess.run([*topo.prefix_argv(), "tc", *args], capture_output=True, text=True, check=True).stdout


def filters(topo: Topology, dev: str) -> list[str]:
    return [ln for ln in tc(topo, "filter", "show", "dev", dev, "parent", "1:").splitlines() if "flowid" in ln]


async def test_init_builds_v2s_tree_and_filters_match_v4_and_v6(topo: Topology, shaper: Shaper) -> None:
    a = ShapedIp.of(VPS_V4[0], 10, 1_000_000, 2_000_000)
    b = ShapedIp.of(VPS_V6[0], 11, 3_000_000, 4_000_000)
    unshaped = ShapedIp.of(VPS_V4[1], 12, 0, 5)
    assert await shaper.init(235929600, 117964800, [a, b, unshaped]) == 2
    venet = await shaper.classes(topo.venet)
    netdev = await shaper.classes(topo.netdev)
    assert set(venet) == set(netdev) == {"1:1", "1:10", "1:11"}
    assert "rate 943718Kbit" in venet["1:1"] and "rate 1887Mbit" in netdev["1:1"]  # rx on venet, tx out
    assert "rate 16Mbit" in venet["1:10"] and "rate 8Mbit" in netdev["1:10"]
    assert "leaf 10:" in venet["1:10"] and "leaf 11:" in netdev["1:11"]
    assert len(filters(topo, topo.venet)) == len(filters(topo, topo.netdev)) == 2
    # traffic toward the VPSes goes through their classes, IPv6 included (v2.0's v6 filter never matched)
    for addr, port, remote in ((VPS_V4[0], 6001, EXT_V4), (VPS_V6[0], 6002, EXT_V6)):
        sink = await UdpSink.start(topo.vps, addr, port)
        await udp_send(topo.ext, remote, addr, port, 20, 100)
        await sink.stop((topo.ext, remote))
    stats = tc(topo, "-s", "class", "show", "dev", topo.venet)
    for cls in ("1:10", "1:11"):
        block = stats.split(f"class htb {cls} ")[1]
        sent = int(block.split("Sent ")[1].split()[0])
        assert sent > 20 * 100, (cls, block)
    await shaper.flush()
    assert await shaper.classes(topo.venet) == {}
    await shaper.flush()  # nothing left: fine


async def test_set_is_idempotent_and_unset_removes_only_its_own(topo: Topology, shaper: Shaper) -> None:
    a = ShapedIp.of(VPS_V4[0], 10, 1000, 2000)
    b = ShapedIp.of(VPS_V4[1], 20, 1000, 2000)
    await shaper.init(10**8, 10**8, [b])
    await shaper.set(a)
    await shaper.set(a)
    assert len(filters(topo, topo.venet)) == 2
    await shaper.unset(a)
    await shaper.unset(a)
    assert set(await shaper.classes(topo.venet)) == {"1:1", "1:20"}
    (left,) = filters(topo, topo.venet)
    assert "flowid 1:20" in left
    assert "20:" in tc(topo, "qdisc", "show", "dev", topo.netdev)


async def test_change_and_root_change(topo: Topology, shaper: Shaper) -> None:
    a = ShapedIp.of(VPS_V4[0], 10, 1000, 2000)
    await shaper.init(10**8, 10**8, [a])
    await shaper.change(ShapedIp.of(VPS_V4[0], 10, 5000, 7000))
    assert "rate 56Kbit" in (await shaper.classes(topo.venet))["1:10"]
    assert "rate 40Kbit" in (await shaper.classes(topo.netdev))["1:10"]
    await shaper.change(ShapedIp.of(VPS_V4[0], 10, 0, 7000))  # 0 frees the address
    assert "1:10" not in await shaper.classes(topo.venet)
    await shaper.change(ShapedIp.of(VPS_V4[0], 10, 5000, 7000))  # missing: created, tx and rx not swapped
    assert "rate 56Kbit" in (await shaper.classes(topo.venet))["1:10"]
    assert "rate 40Kbit" in (await shaper.classes(topo.netdev))["1:10"]
    assert await shaper.root_change(1000, 3000) is True
    assert "rate 24Kbit" in (await shaper.classes(topo.venet))["1:1"]
    await shaper.flush()
    assert await shaper.root_change(1000, 3000) is False
