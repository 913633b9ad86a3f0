"""Two nodes in one test: server 1 (127.0.0.2) and server 2 (127.0.0.3), each with its own zfs-fuse pool and
engine, one MariaDB. Engines run in this process unless a test starts real daemons itself.

Helpers write files into datasets and take snapshots the way the API's chain would leave them (a
``snapshots`` row with the real name), and compare trees byte for byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pytest
import pytest_asyncio

from tests.storage.conftest import Pool, require_zfs, sh
from vpsadmind.config import Config, QueueConfig, TransferConfig
from vpsadmind.engine.core import Engine
from vpsadmind.testing.chains import ChainBuilder, register_node
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain
from vpsadmind.testing.transfers import Snap
from vpsadmind.testing.zfspool import TempPool

NODE_IPS = {1: "127.0.0.2", 2: "127.0.0.3"}


@dataclass
class Node:
    server_id: int
    pool: Pool
    cfg: Config


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file under ``root`` (symlinks by target)."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith(".zfs"):
            continue
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel + "/"] = "dir"
    return out


def write_files(root: Path, seed: str, count: int = 5, size: int = 64 * 1024) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"{seed}-{i}.bin").write_bytes(hashlib.sha256(f"{seed}{i}".encode()).digest() * (size // 32))
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / f"{seed}.txt").write_text(f"file {seed}\n")


async def take_snapshot(db: aiomysql.Connection, pool: Pool, dataset: str, name: str) -> Snap:
    sh("zfs", "snapshot", f"{pool.name}/{dataset}@{name}")
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO snapshots (name, dataset_id, confirmed) VALUES (%s, 1, 1)", (name,))
        return Snap(int(cur.lastrowid), name)


@pytest_asyncio.fixture
async def pools(tmp_path: Path) -> AsyncIterator[tuple[Pool, Pool]]:
    require_zfs()
    made: list[TempPool] = []
    try:
        for i in (1, 2):
            tp = TempPool(size=512 * 1024 * 1024, base_dir=str(tmp_path / f"node{i}"))
            (tmp_path / f"node{i}").mkdir()
            await tp.create()
            made.append(tp)
        yield Pool(made[0].name, Path(made[0].mountpoint)), Pool(made[1].name, Path(made[1].mountpoint))
    finally:
        for tp in made:
            await tp.destroy()


@pytest_asyncio.fixture
async def nodes(db: aiomysql.Connection, pools: tuple[Pool, Pool], db_settings: TestDbSettings,
                test_database: str, tmp_path: Path) -> tuple[Node, Node]:
    out = []
    for sid, pool in zip((1, 2), pools, strict=True):
        await register_node(db, sid, name=f"node{sid}", ip4=NODE_IPS[sid])
        # v2.0 opens the zfs_send queue 4 h after start; the tests send at once
        cfg = make_config(db_settings, test_database, server_id=sid, journal=str(tmp_path / f"journal{sid}"),
                          queues={"zfs_send": QueueConfig(1, 0, 0)})
        cfg = dataclasses.replace(cfg, transfer=TransferConfig(stall_timeout=20.0))
        out.append(Node(sid, pool, cfg))
    return out[0], out[1]


@contextlib.asynccontextmanager
async def cluster(*nodes: Node) -> AsyncIterator[list[Engine]]:
    async with contextlib.AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(running_engine(n.cfg)) for n in nodes]
        yield engines


async def run(db: aiomysql.Connection, builder: ChainBuilder, *nodes: Node,
              timeout: float = 90.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fired = await builder.fire(db)
    async with cluster(*nodes):
        chain = await wait_chain(db, fired.chain_id, timeout=timeout)
    return chain, await transactions_of(db, fired.chain_id)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def assert_no_leftovers(db: aiomysql.Connection, *nodes: Node) -> None:
    """No hold on any snapshot of the nodes' pools, no hold in the ledger, no transfer row (with its secret) of a
    closed chain, no receiver's port left open."""
    async with db.cursor() as cur:
        await cur.execute("SELECT tag, snapshot FROM vpsadmind_holds")
        assert list(await cur.fetchall()) == []
        await cur.execute("SELECT t.id, t.chain_id, c.state FROM vpsadmind_transfers t JOIN transaction_chains c "
                          "ON c.id = t.chain_id WHERE c.state IN (2, 4)")
        assert list(await cur.fetchall()) == [], "transfer rows of closed chains are left"
    for n in nodes:
        out = sh("zfs", "get", "-H", "-p", "-r", "-o", "name,value", "userrefs", n.pool.name)
        held = [line for line in out.splitlines() if "@" in line and not line.endswith("\t0")]
        assert held == [], held
    for port in range(10000, 10004):
        with socket.socket() as s:
            assert s.connect_ex((NODE_IPS[2], port)) != 0, f"something still listens on {port}"
