"""Bad addresses and shaper values are rejected before any command runs (no namespace needed)."""

from __future__ import annotations

from typing import Any

import pytest

from vpsadmind import system
from vpsadmind.errors import ParamError
from vpsadmind.firewall import Firewall, ShapedIp, Shaper
from vpsadmind.firewall.rules import parse_listing
from vpsadmind.handlers.firewall import IpParams
from vpsadmind.handlers.params import parse_params
from vpsadmind.handlers.shaper import RootChangeParams, ShaperChangeParams, ShaperIpParams

BAD = ["1.2.3.4; rm", "999.1.1.1", "-A", "::1::2", "", " 1.2.3.4", "1.2.3.4/32", "fe80::1%eth0", "1.2.3.4\n",
       "10.0.0.1 -j DROP", "$(reboot)"]


@pytest.mark.parametrize("addr", BAD)
async def test_bad_address_runs_no_command(addr: str) -> None:
    fw = Firewall(argv_prefix=["false"])
    shaper = Shaper(argv_prefix=["false"])
    with system.record_calls() as calls:
        for call in (fw.register(addr), fw.unregister(addr), fw.init(["10.0.0.1", addr]),
                     fw.reinit([addr, "10.0.0.2"])):
            with pytest.raises(ParamError):
                await call
        with pytest.raises(ParamError):
            await shaper.set(ShapedIp.of(addr, 10, 1, 1))
    assert calls.calls == []


@pytest.mark.parametrize("params", [
    {"addr": "1.2.3.4; rm", "version": 4},
    {"addr": "999.1.1.1", "version": 4},
    {"addr": "-A", "version": 4},
    {"addr": "::1::2", "version": 6},
    {"addr": "10.0.0.1", "version": 6},
    {"addr": "::1", "version": 4},
    {"addr": "10.0.0.1", "version": 5},
    {"addr": "10.0.0.1", "version": "4"},
    {"addr": 167772161, "version": 4},
])
def test_ip_params_reject(params: dict[str, Any]) -> None:
    with pytest.raises(ParamError):
        parse_params(IpParams, params)


@pytest.mark.parametrize("shaper", [
    {"class_id": 1, "max_tx": 1, "max_rx": 1},
    {"class_id": 10000, "max_tx": 1, "max_rx": 1},
    {"class_id": "10", "max_tx": 1, "max_rx": 1},
    {"class_id": 10, "max_tx": -1, "max_rx": 1},
    {"class_id": 10, "max_tx": 1, "max_rx": 2**41},
    {"class_id": 10, "max_tx": True, "max_rx": 1},
])
def test_shaper_params_reject(shaper: dict[str, Any]) -> None:
    with pytest.raises(ParamError):
        parse_params(ShaperIpParams, {"addr": "10.0.0.1", "version": 4, "shaper": shaper})


def test_params_accept_v2_shapes() -> None:
    p = parse_params(ShaperChangeParams, {"addr": "fd00::1", "version": 6,
                                          "shaper": {"class_id": 11, "max_tx": 5, "max_rx": 6},
                                          "shaper_original": {"class_id": 11, "max_tx": 1, "max_rx": 2}})
    assert p.shaped().max_rx == 6 and p.shaper_original is not None
    r = parse_params(RootChangeParams, {"max_tx": 1, "max_rx": 2, "original": {"max_tx": 3, "max_rx": 4}})
    assert r.original is not None and r.original.max_rx == 4
    assert parse_params(IpParams, {"addr": "10.0.0.1", "version": 4, "vps_id": 101}).ip.version == 4


def test_listing_parser_reads_old_and_new_iptables() -> None:
    old = """Chain accounting (1 references)
    pkts      bytes target     prot opt in     out     source               destination
      10     1000 ACCEPT     tcp  --  *      *       10.0.0.1             0.0.0.0/0
       5      500 ACCEPT     all  --  *      *       0.0.0.0/0            10.0.0.1
       1        1 DROP       all  --  *      *       0.0.0.0/0            10.0.0.2
Zeroing chain `accounting'
"""
    listing = parse_listing(old, 4)
    assert listing.references == 1
    assert [(r.number, r.packets, r.key and (r.key.addr, r.key.proto, r.key.direction))
            for r in listing.rules or ()] == [(1, 10, ("10.0.0.1", "tcp", "out")),
                                              (2, 5, ("10.0.0.1", "all", "in")), (3, 1, None)]
    v6_old = """Chain accounting (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       7      700 ACCEPT     udp      *      *       fd00::2/128          ::/0
"""
    v6_new = """Chain accounting (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       7      700 ACCEPT     17   --  *      *       fd00::2              ::/0
"""
    for text in (v6_old, v6_new):
        (rule,) = parse_listing(text, 6).rules or []
        assert rule.key is not None and (rule.key.addr, rule.key.proto, rule.key.direction) == ("fd00::2", "udp",
                                                                                                  "out")
