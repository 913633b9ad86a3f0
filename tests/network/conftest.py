"""Fixtures: a fresh namespace topology per test, and the iptables backend (nft and legacy) as a parameter."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.network.nets import BACKENDS, Topology, require_tools, unavailable
from vpsadmind.firewall import Firewall, Shaper


@pytest.fixture
def topo() -> Iterator[Topology]:
    require_tools("tc")
    t = Topology()
    try:
        t.create()
    except Exception as exc:
        t.destroy()
        unavailable(f"cannot create network namespaces: {exc}")
    try:
        yield t
    finally:
        t.destroy()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    for binary in (f"iptables-{name}", f"ip6tables-{name}", f"iptables-{name}-restore",
                   f"ip6tables-{name}-restore"):
        if shutil.which(binary) is None:
            unavailable(f"{binary} is not installed")
    return name


def make_firewall(topo: Topology, backend: str, **kwargs: object) -> Firewall:
    return Firewall(iptables=f"iptables-{backend}", ip6tables=f"ip6tables-{backend}",
                    argv_prefix=topo.prefix_argv(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def fw(topo: Topology, backend: str) -> Firewall:
    return make_firewall(topo, backend)


@pytest.fixture
def shaper(topo: Topology) -> Shaper:
    return Shaper(netdev=topo.netdev, venet=topo.venet, argv_prefix=topo.prefix_argv(), leaf_qdisc=("pfifo",))
