"""Firewall and shaper transactions (2014, 2015, 2010, 2011) through a real engine, MariaDB and iptables/tc in a
network namespace, including the rollback of a chain whose last transaction fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import probe
from tests.network.nets import VPS_V4, Topology
from vpsadmind import system
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.firewall import Firewall, Shaper
from vpsadmind.firewall.services import Network, install
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain

pytestmark = pytest.mark.timeout(120)

A = VPS_V4[0]
SHAPE = {"class_id": 10, "max_tx": 1_000_000, "max_rx": 2_000_000}


@pytest.fixture
def cfg(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> Config:
    return make_config(db_settings, test_database, journal=str(tmp_path / "journal"))


async def run(db: Any, cfg: Config, builder: ChainBuilder, fw: Firewall, shaper: Shaper,
              prepare: bool = False) -> tuple[int, list[dict[str, Any]]]:
    async with running_engine(cfg) as engine:
        net = Network(engine.db, cfg.server_id, firewall=fw, shaper=shaper, max_tx=10**8, max_rx=10**8)
        install(engine.ctx, net)
        await shaper.init(10**8, 10**8, [])
        if prepare:
            await fw.register(A)
            await shaper.set(net.shaper_ip(A, SHAPE))
        fired = await builder.fire(db)
        chain = await wait_chain(db, fired.chain_id, timeout=60)
    return chain["state"], await transactions_of(db, fired.chain_id)


def reg_and_set(b: ChainBuilder, addr: str = A) -> ChainBuilder:
    b.append(2014, server=1, params={"addr": addr, "version": 4})
    return b.append(2010, server=1, params={"addr": addr, "version": 4, "shaper": SHAPE})


async def test_register_and_shape_chain(db: Any, cfg: Config, fw: Firewall, shaper: Shaper,
                                        topo: Topology) -> None:
    state, rows = await run(db, cfg, reg_and_set(ChainBuilder("ipadd")), fw, shaper)
    assert state == ChainState.DONE, rows
    assert await fw.registered(4) == {A}
    assert "1:10" in await shaper.classes(topo.venet)
    assert json.loads(rows[0]["t_output"]) == {"rules_added": 6}


async def test_failing_chain_rolls_registration_and_shaping_back(db: Any, cfg: Config, fw: Firewall,
                                                                 shaper: Shaper, topo: Topology) -> None:
    b = reg_and_set(ChainBuilder("ipadd"))
    probe(b, fail=True)
    state, rows = await run(db, cfg, b, fw, shaper)
    assert state == ChainState.FAILED
    assert [r["t_done"] for r in rows] == [2, 2, 2]
    assert await fw.registered(4) == set()
    assert "1:10" not in await shaper.classes(topo.venet)


async def test_unregister_keeps_going_while_unset_rolls_back(db: Any, cfg: Config, fw: Firewall, shaper: Shaper,
                                                             topo: Topology) -> None:
    b = ChainBuilder("ipdel")
    b.append(2015, server=1, params={"addr": A, "version": 4})
    b.append(2011, server=1, params={"addr": A, "version": 4, "shaper": SHAPE})
    probe(b, fail=True)
    state, rows = await run(db, cfg, b, fw, shaper, prepare=True)
    assert state == ChainState.FAILED
    assert await fw.registered(4) == set()  # 2015 is keep_going: a chain rollback skips it, as in v2.0
    assert "1:10" in await shaper.classes(topo.venet)  # 2011 rolled back: the class is set again


async def test_bad_address_fails_before_any_command(db: Any, cfg: Config, fw: Firewall, shaper: Shaper) -> None:
    b = ChainBuilder("bad")
    b.append(2014, server=1, params={"addr": "1.2.3.4; rm", "version": 4})
    with system.record_calls() as calls:
        async with running_engine(cfg) as engine:
            install(engine.ctx, Network(engine.db, 1, firewall=fw, shaper=shaper))
            fired = await b.fire(db)
            chain = await wait_chain(db, fired.chain_id)
    assert chain["state"] == ChainState.FAILED
    (row,) = await transactions_of(db, fired.chain_id)
    assert "Bad param" in json.loads(row["t_output"])["error"]
    assert calls.calls == []
