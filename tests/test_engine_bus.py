"""The engine with the event bus on a real (private) Mosquitto: wake-ups make chains fast, a broker that is down
or disappears never stops work (polling is the fallback), and wake-ups resume when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from vpsadmind.bus import Bus
from vpsadmind.config import Config, MqttConfig
from vpsadmind.engine.core import Engine
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, wait_chain
from vpsadmind.testing.mqtt import MosquittoServer

SLOW_POLL = 3.0  # check_interval long enough that only a wake-up explains a fast chain


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    server = MosquittoServer(tmp_path / "mqtt")
    server.start()
    yield server
    server.close()


def mqtt_config(broker: Any) -> MqttConfig:
    return MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, reconnect_interval=0.1)


@contextlib.asynccontextmanager
async def engine_with_bus(cfg: Config) -> AsyncIterator[tuple[Engine, Bus]]:
    holder: dict[str, Engine] = {}
    bus = Bus(cfg.mqtt, server_id=cfg.server_id, on_wake=lambda payload: holder["e"].wake(payload))
    bus_task = asyncio.create_task(bus.run())
    try:
        async with running_engine(cfg, events=bus) as engine:
            holder["e"] = engine
            for _ in range(200):
                if bus.connected:
                    break
                await asyncio.sleep(0.01)
            yield engine, bus
    finally:
        await bus.stop()
        bus_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bus_task


async def api_wake(port: int, server: int, payload: dict[str, Any]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"api-{time.monotonic_ns()}") as client:
        await client.publish(f"vpsadmin/node/{server}/wake", json.dumps(payload), qos=1)


def cfg_for(db_settings: TestDbSettings, test_database: str, tmp_path: Path, broker: Any, server: int = 1) -> Config:
    return make_config(db_settings, test_database, server_id=server, journal=str(tmp_path / f"j{server}"),
                       check_interval=SLOW_POLL, mqtt=mqtt_config(broker))


async def test_api_wake_up_starts_a_chain_at_once(db: Any, db_settings: TestDbSettings, test_database: str,
                                                  tmp_path: Path, broker: Any) -> None:
    cfg = cfg_for(db_settings, test_database, tmp_path, broker)
    async with engine_with_bus(cfg):
        await asyncio.sleep(SLOW_POLL / 2)  # land between two polls
        fired = await ChainBuilder().append(10001, server=1).append(10001, server=1).fire(db)
        t0 = time.monotonic()
        await api_wake(broker.port, 1, {"chain": fired.chain_id, "t_id": fired.transaction_ids[0]})
        chain = await wait_chain(db, fired.chain_id, timeout=SLOW_POLL)
        elapsed = time.monotonic() - t0
    assert chain["state"] == ChainState.DONE
    assert elapsed < 0.5


async def test_nodes_wake_each_other_along_a_chain(db: Any, db_settings: TestDbSettings, test_database: str,
                                                   tmp_path: Path, broker: Any) -> None:
    c1 = cfg_for(db_settings, test_database, tmp_path, broker, 1)
    c2 = cfg_for(db_settings, test_database, tmp_path, broker, 2)
    async with engine_with_bus(c1), engine_with_bus(c2):
        await asyncio.sleep(SLOW_POLL / 2)
        b = ChainBuilder()
        for server in (1, 2, 1, 2):
            b.append(10001, server=server)
        fired = await b.fire(db)
        t0 = time.monotonic()
        await api_wake(broker.port, 1, {"chain": fired.chain_id})
        chain = await wait_chain(db, fired.chain_id, timeout=4 * SLOW_POLL)
        elapsed = time.monotonic() - t0
    assert chain["state"] == ChainState.DONE
    assert elapsed < 1.0, f"4 hops took {elapsed:.2f} s: the nodes did not wake each other"


async def test_broker_down_work_goes_on_by_polling_and_wakeups_resume(
        db: Any, db_settings: TestDbSettings, test_database: str, tmp_path: Path, broker: Any) -> None:
    cfg = make_config(db_settings, test_database, journal=str(tmp_path / "j"), check_interval=1.0,
                      mqtt=mqtt_config(broker))
    async with engine_with_bus(cfg) as (_engine, bus):
        broker.stop()
        for _ in range(100):
            if not bus.connected:
                break
            await asyncio.sleep(0.02)
        assert not bus.connected
        fired = await ChainBuilder().append(10001, server=1).fire(db)
        assert (await wait_chain(db, fired.chain_id, timeout=3.0))["state"] == ChainState.DONE
        broker.start(broker.port)
        for _ in range(300):
            if bus.connected:
                break
            await asyncio.sleep(0.02)
        assert bus.connected
        await asyncio.sleep(0.5)
        fired = await ChainBuilder().append(10001, server=1).fire(db)
        t0 = time.monotonic()
        await api_wake(broker.port, 1, {"chain": fired.chain_id})
        await wait_chain(db, fired.chain_id, timeout=3.0)
        assert time.monotonic() - t0 < 0.4


async def test_events_are_published_for_transactions_and_chains(
        db: Any, db_settings: TestDbSettings, test_database: str, tmp_path: Path, broker: Any) -> None:
    cfg = cfg_for(db_settings, test_database, tmp_path, broker)
    seen: list[tuple[str, dict[str, Any]]] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="watcher") as watcher:
        await watcher.subscribe("vpsadmin/node/1/transactions", qos=1)
        await watcher.subscribe("vpsadmin/chain/+/state", qos=1)
        async with engine_with_bus(cfg):
            fired = await ChainBuilder().append(10001, server=1).fire(db)
            await api_wake(broker.port, 1, {})
            await wait_chain(db, fired.chain_id)

            async def collect() -> None:
                async for msg in watcher.messages:
                    seen.append((msg.topic.value, json.loads(msg.payload)))  # type: ignore[arg-type]
                    if len(seen) >= 2:
                        return

            await asyncio.wait_for(collect(), 3.0)
    topics = dict(seen)
    tx = topics["vpsadmin/node/1/transactions"]
    assert (tx["t_id"], tx["chain"], tx["type"], tx["handler"], tx["direction"], tx["t_success"]) == (
        fired.transaction_ids[0], fired.chain_id, 10001, "NoOp", "execute", 1)
    state = topics[f"vpsadmin/chain/{fired.chain_id}/state"]
    assert (state["state"], state["state_name"], state["progress"], state["size"]) == (2, "done", 1, 1)
