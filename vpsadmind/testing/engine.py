"""Run engines against a test database: config builder, an engine in a background task, waiting for chains."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiomysql

from vpsadmind.config import DEFAULT_QUEUES, Config, DbConfig, JournalConfig, MqttConfig, QueueConfig
from vpsadmind.engine.core import Engine, EventSink
from vpsadmind.handlers.base import import_handler_modules
from vpsadmind.testing.db import TestDbSettings

__all__ = ["make_config", "running_engine", "wait_chain", "chain_state", "transactions_of", "FINAL_STATES"]

FINAL_STATES = (2, 4, 5)


def make_config(settings: TestDbSettings, database: str, *, server_id: int = 1, journal: str,
                check_interval: float = 0.05, queues: dict[str, QueueConfig] | None = None,
                mqtt: MqttConfig | None = None, hosts: list[str] | None = None,
                shutdown_timeout: float = 10.0, retry_interval: float = 1.0,
                handler_modules: tuple[str, ...] = ("vpsadmind.testing.handlers",)) -> Config:
    q = dict(DEFAULT_QUEUES)
    q.update(queues or {})
    db = DbConfig(hosts=hosts or [f"{settings.host}:{settings.port}"], user=settings.user,
                  password=settings.password, name=database, retry_interval=retry_interval, connect_timeout=2.0,
                  read_timeout=10.0, write_timeout=10.0)
    return Config(path=None, raw={}, db=db, server_id=server_id, queues=q, check_interval=check_interval,
                  shutdown_timeout=shutdown_timeout, handler_modules=list(handler_modules),
                  mqtt=mqtt or MqttConfig(enabled=False), journal=JournalConfig(path=journal),
                  db_version_interval=0.2)


def with_queue(config: Config, name: str, queue: QueueConfig) -> Config:
    queues = dict(config.queues)
    queues[name] = queue
    return replace(config, queues=queues)


@contextlib.asynccontextmanager
async def running_engine(config: Config, *, events: EventSink | None = None,
                         stop_timeout: float = 10.0) -> AsyncIterator[Engine]:
    import_handler_modules(config.handler_modules)
    engine = Engine(config, events=events)
    await engine.start()
    task = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        await engine.stop(timeout=stop_timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def chain_state(conn: aiomysql.Connection, chain_id: int) -> dict[str, Any]:
    async with conn.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT id, state, progress, size FROM transaction_chains WHERE id = %s", (chain_id,))
        row = await cur.fetchone()
    if row is None:
        raise KeyError(f"no chain {chain_id}")
    return dict(row)


async def wait_chain(conn: aiomysql.Connection, chain_id: int, *, timeout: float = 15.0,
                     states: tuple[int, ...] = FINAL_STATES) -> dict[str, Any]:
    """Poll until the chain reaches one of ``states``; raise with its transactions if it does not."""
    deadline = time.monotonic() + timeout
    while True:
        row = await chain_state(conn, chain_id)
        if row["state"] in states:
            return row
        if time.monotonic() > deadline:
            rows = await transactions_of(conn, chain_id)
            raise TimeoutError(f"chain {chain_id} still in {row} after {timeout} s: {rows}")
        await asyncio.sleep(0.02)


async def transactions_of(conn: aiomysql.Connection, chain_id: int) -> list[dict[str, Any]]:
    async with conn.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT t_id, t_server, t_type, t_done, t_success, t_output, reversible, started_at, "
                          "finished_at FROM transactions WHERE transaction_chain_id = %s ORDER BY t_id",
                          (chain_id,))
        return [dict(r) for r in await cur.fetchall()]
