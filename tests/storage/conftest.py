"""Fixtures of the storage handler tests: a throw-away zfs-fuse pool, an engine config, chain and state helpers.

Each test gets its own pool (a unique name on a sparse file in its temp dir), destroyed afterwards. Without a
working zfs the tests are skipped, or fail when ``CI=true``. Nothing here touches pools it did not create.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pytest
import pytest_asyncio

from vpsadmind.config import Config
from vpsadmind.db import Database
from vpsadmind.engine.model import ChainState, Transaction
from vpsadmind.handlers.base import HANDLERS, Handler, HandlerContext, import_handler_modules
from vpsadmind.handlers.params import parse_params
from vpsadmind.system import CommandTimeout
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain
from vpsadmind.testing.services import unavailable, zfs_fuse_problem
from vpsadmind.testing.zfspool import TempPool

# Changes on every write or read, or says nothing about the state a handler leaves.
VOLATILE = frozenset({
    "used", "available", "referenced", "creation", "createtxg", "guid", "written", "usedbysnapshots",
    "usedbydataset", "usedbychildren", "usedbyrefreservation", "compressratio", "refcompressratio",
    "logicalused", "logicalreferenced", "userrefs", "objsetid",
})


# Set when a zfs command hung: zfs-fuse's daemon stopped answering (it happens on the shared machine), and
# every later test would wait out its own timeouts too.
_hung: list[str] = []


def require_zfs() -> None:
    """Skip without a working zfs, or fail when ``CI=true``; fail at once after a zfs command hung."""
    if _hung:
        pytest.fail(f"zfs-fuse stopped answering earlier in this run: {_hung[0]}")
    reason = zfs_fuse_problem()
    if reason is None:
        return
    unavailable(f"zfs-fuse is not available: {reason}")


def sh(*argv: str, check: bool = True, input: bytes | None = None) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, input=input, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        _hung.append(f"{' '.join(argv)} did not finish in 60 s")
        raise
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.decode()}")
    return done.stdout.decode()


@dataclass
class Pool:
    name: str
    mountpoint: Path

    def state(self) -> tuple[list[str], list[tuple[str, str, str, str]]]:
        """Every dataset and snapshot of the pool, and every non-volatile property with its source."""
        names = sh("zfs", "list", "-H", "-t", "all", "-o", "name", "-r", self.name).split()
        props = []
        for line in sh("zfs", "get", "-H", "-p", "-o", "name,property,value,source", "all", "-r",
                       self.name).splitlines():
            name, prop, value, source = line.split("\t")
            if prop not in VOLATILE:
                props.append((name, prop, value, source))
        return sorted(names), sorted(props)

    def names(self) -> list[str]:
        return sorted(sh("zfs", "list", "-H", "-t", "all", "-o", "name", "-r", self.name).split())

    def exists(self, name: str) -> bool:
        return subprocess.run(["zfs", "list", "-H", "-t", "all", "-o", "name", name], capture_output=True,
                              check=False).returncode == 0

    def prop(self, name: str, prop: str) -> tuple[str, str]:
        value, source = sh("zfs", "get", "-H", "-p", "-o", "value,source", prop, name).rstrip("\n").split("\t")
        return value, source

    def snapshots(self, dataset: str) -> list[str]:
        out = sh("zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-r", "-d", "1",
                 dataset)
        return [line.split("@", 1)[1] for line in out.split() if line.startswith(dataset + "@")]

    def zfs(self, *args: str) -> str:
        return sh("zfs", *args)

    def mounted_path(self, dataset: str) -> Path:
        return Path(self.prop(dataset, "mountpoint")[0])


@pytest_asyncio.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    """A TempPool (unique name, sparse file under ``tmp_path``), destroyed after the test."""
    require_zfs()
    tp = TempPool(size=512 * 1024 * 1024, base_dir=str(tmp_path))
    try:
        await tp.create()
    except CommandTimeout as exc:
        _hung.append(f"creating a test pool: {exc}")
        raise
    try:
        yield Pool(tp.name, Path(tp.mountpoint))
    finally:
        await tp.destroy()


@pytest.fixture
def cfg(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> Config:
    return make_config(db_settings, test_database, journal=str(tmp_path / "journal"))


async def run_chain(db: aiomysql.Connection, cfg: Config, builder: ChainBuilder, *,
                    timeout: float = 60.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fired = await builder.fire(db)
    async with running_engine(cfg):
        chain = await wait_chain(db, fired.chain_id, timeout=timeout)
    return chain, await transactions_of(db, fired.chain_id)


def output(row: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(row["t_output"])) if row["t_output"] else {}


def assert_done(chain: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    assert chain["state"] == ChainState.DONE, [(r["t_type"], output(r)) for r in rows]


PROBE_FAIL = (90001, {"fail": True})


def failing(builder: ChainBuilder) -> ChainBuilder:
    """Append the failing probe: the chain then rolls back everything before it."""
    return builder.append(PROBE_FAIL[0], server=1, params=dict(PROBE_FAIL[1]))


async def insert_snapshot(db: aiomysql.Connection, name: str = "(unconfirmed)", dataset_id: int = 1) -> int:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO snapshots (name, dataset_id, confirmed) VALUES (%s, %s, 0)",
                          (name, dataset_id))
        return int(cur.lastrowid)


async def snapshot_row(db: aiomysql.Connection, snapshot_id: int) -> dict[str, Any]:
    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT id, name, created_at FROM snapshots WHERE id = %s", (snapshot_id,))
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


@dataclass
class Direct:
    """Runs handlers outside the engine, as a crash re-run would (same transaction, a new handler object)."""

    ctx: HandlerContext
    next_id: int = 1000

    def make(self, code: int, params: dict[str, Any], *, t_id: int | None = None,
             t_output: str | None = None) -> Handler[Any]:
        cls = HANDLERS[code]
        if t_id is None:
            self.next_id += 1
            t_id = self.next_id
        t = Transaction(t_id=t_id, chain_id=1, t_type=code, t_server=1, t_vps=None, t_depends_on=None,
                        t_urgent=False, t_priority=0, t_success=0, t_done=0, t_param=json.dumps(params),
                        reversible=1, queue="storage", chain_state=1, chain_progress=0, chain_size=1,
                        urgent_rollback=False, t_output=t_output)
        return cls(self.ctx, parse_params(cls.Params, params), t)


@pytest_asyncio.fixture
async def direct(cfg: Config, db: aiomysql.Connection) -> AsyncIterator[Direct]:
    import_handler_modules(cfg.handler_modules)
    database = Database(cfg.db)
    try:
        yield Direct(HandlerContext(config=cfg, db=database))
    finally:
        await database.close()
