"""2006/2007 with registration: the shaper class and the accounting rules (the code paths of 2010/2011 and
2014/2015) in a network namespace, plus ``--ipadd``/``--ipdel`` on the fake vzctl, and the rollback of each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.network.conftest import backend, fw, shaper, topo  # noqa: F401  (fixtures)
from tests.network.nets import VPS_V4, Topology
from tests.vps.conftest import FakeVz, chain, conf, errors, make_ct, make_vz, run
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.firewall import Firewall, Shaper
from vpsadmind.firewall.services import Network, install
from vpsadmind.handlers.vps_common import install_vz
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain

pytestmark = pytest.mark.timeout(120)

A = VPS_V4[0]
SHAPE = {"class_id": 10, "max_tx": 1_000_000, "max_rx": 2_000_000}


async def run_net(db: Any, cfg: Config, builder: ChainBuilder, fw: Firewall,  # noqa: F811
                  shaper: Shaper) -> tuple[int, list[dict[str, Any]]]:  # noqa: F811
    async with running_engine(cfg) as engine:
        install(engine.ctx, Network(engine.db, cfg.server_id, firewall=fw, shaper=shaper, max_tx=10**8,
                                    max_rx=10**8))
        install_vz(engine.ctx, make_vz(cfg))
        await shaper.init(10**8, 10**8, [])
        fired = await builder.fire(db)
        state = await wait_chain(db, fired.chain_id, timeout=60)
    return state["state"], await transactions_of(db, fired.chain_id)


async def test_ip_add_and_del_with_registration(db: Any, vcfg: Config, fakevz: FakeVz, fw: Firewall,  # noqa: F811
                                                shaper: Shaper, topo: Topology) -> None:  # noqa: F811
    make_ct(fakevz)
    add = {"addr": A, "version": 4, "register": True, "shaper": SHAPE}
    state, rows = await run_net(db, vcfg, chain((2006, add), (90001, {"fail": True})), fw, shaper)
    assert state == ChainState.FAILED, errors(rows)
    assert await fw.registered(4) == set() and "1:10" not in await shaper.classes(topo.venet)
    assert conf(fakevz).get("IP_ADDRESS", "") == ""

    state, rows = await run_net(db, vcfg, chain((2006, add)), fw, shaper)
    assert state == ChainState.DONE, errors(rows)
    assert await fw.registered(4) == {A} and "1:10" in await shaper.classes(topo.venet)
    assert conf(fakevz)["IP_ADDRESS"] == A and errors(rows)[0][1] == {"rules_added": 6}

    delete = {"addr": A, "version": 4, "unregister": True, "shaper": SHAPE}
    state, rows = await run_net(db, vcfg, chain((2007, delete), (90001, {"fail": True})), fw, shaper)
    assert state == ChainState.FAILED, errors(rows)
    assert await fw.registered(4) == {A} and "1:10" in await shaper.classes(topo.venet)
    assert conf(fakevz)["IP_ADDRESS"] == A

    state, rows = await run_net(db, vcfg, chain((2007, delete)), fw, shaper)
    assert state == ChainState.DONE, errors(rows)
    assert await fw.registered(4) == set() and "1:10" not in await shaper.classes(topo.venet)
    assert conf(fakevz)["IP_ADDRESS"] == ""


async def test_ip_del_rollback_keeps_the_order_of_the_addresses(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    """vzctl appends a re-added address; the first address is the container's source address on venet, so a
    failed chain must not move it (found by the soak: a failed migration did)."""
    make_ct(fakevz)
    first, second = "192.0.2.10", "192.0.2.20"
    for addr in (first, second):
        state, rows = await run(db, vcfg, chain((2006, {"addr": addr, "version": 4})))
        assert state["state"] == ChainState.DONE, errors(rows)
    assert conf(fakevz)["IP_ADDRESS"] == f"{first} {second}"
    state, rows = await run(db, vcfg, chain((2007, {"addr": first, "version": 4}), (90001, {"fail": True})))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert conf(fakevz)["IP_ADDRESS"] == f"{first} {second}"
    assert json.loads(rows[0]["t_output"])["ip_order_restored"] is True
