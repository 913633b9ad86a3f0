"""Fixtures of the fuzz tests: one sandbox node per test module (built once: the fakes are subprocesses and
building takes a few seconds), and a handler context on it per test.

The sandbox is shared by every test of a module on purpose: inputs run one after the other on the same node, as
on a real one, and each input is judged by what it changed (before/after fingerprints), not by a fresh state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.fuzz.sandbox import Sandbox, environment
from vpsadmind.config import Config
from vpsadmind.db import Database
from vpsadmind.db.node_tables import ensure_node_tables
from vpsadmind.handlers import vps_features
from vpsadmind.handlers.base import HandlerContext, import_handler_modules
from vpsadmind.handlers.vps_common import install_vz
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config
from vpsadmind.vz import RetryPolicy, Vz

_ids = itertools.count(1000)


def next_t_id() -> int:
    return next(_ids)


def free_port() -> int:
    """A port nobody listens on (the kernel's choice, far from the range other sessions use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path_factory.mktemp("sandbox"))
    with environment(sandbox):
        sandbox.build()
        yield sandbox
        left = sandbox.mounted_below()
        for mp in sorted(left, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


@pytest.fixture
def fuzz_cfg(db_settings: TestDbSettings, test_database: str, tmp_path: Path, box: Sandbox) -> Config:
    base = make_config(db_settings, test_database, journal=str(tmp_path / "journal"))
    return box.config(base)


@pytest.fixture(autouse=True)
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """8001's pause after the start (for the container's init) is not needed by the fake."""
    monkeypatch.setattr(vps_features, "START_SETTLE", 0.0)


@pytest_asyncio.fixture
async def hctx(fuzz_cfg: Config, db: Any) -> AsyncIterator[HandlerContext]:
    """A handler context on the sandbox, with the vz driver retrying fast."""
    import_handler_modules()
    database = Database(fuzz_cfg.db)
    await database.run(ensure_node_tables)
    blocked: list[asyncio.Task[Any]] = []

    def block_chain(_chain_id: int, work: Awaitable[Any]) -> asyncio.Task[Any]:
        # what the engine does for a receiver: the work runs in the background (it ends with the rollback)
        task = asyncio.ensure_future(work)
        blocked.append(task)
        return task

    ctx = HandlerContext(config=fuzz_cfg, db=database, block_chain=block_chain)
    install_vz(ctx, Vz.from_config(fuzz_cfg.vz, retry=RetryPolicy(attempts=2, pause=0.01), timeout=30))
    try:
        yield ctx
    finally:
        for task in blocked:
            task.cancel()
        await asyncio.gather(*blocked, return_exceptions=True)
        await database.close()


def replace_config(ctx: HandlerContext, **changes: Any) -> None:
    ctx.config = dataclasses.replace(ctx.config, **changes)
