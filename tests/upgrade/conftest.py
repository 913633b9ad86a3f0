"""Fixtures of the upgrade tests: a v1.22 storage node (tests/upgrade/layout.py) on a throw-away zfs-fuse pool,
its database rows in the test MariaDB, a fake daemon on the control socket, and a runner of the upgrade.

Each test gets its own pool (unique name, sparse file under its tmp dir), destroyed afterwards; nothing else on
the machine is touched (no ``zfs mount -a``/``unmount -a``). Without zfs-fuse the tests are skipped (failed
under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest_asyncio

from tests.upgrade.layout import NEW_PRIVATE, V1Node, build_db, build_zfs
from vpsadmind.config import Config, VzConfig
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config
from vpsadmind.testing.services import unavailable, zfs_fuse_problem
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.upgrade import Hook, Options, Result, run_upgrade


def require_zfs() -> None:
    reason = zfs_fuse_problem()
    if reason is not None:
        unavailable(f"zfs-fuse is not available: {reason}")


class FakeDaemon:
    """Answers the control protocol (vpsadmind/control/protocol.py) on a UNIX socket: ``ping`` and ``reinit``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"version":"2.0.0"}\n')
        await writer.drain()
        request = json.loads(await reader.readline())
        self.requests.append(request)
        response = {"fw": {"4": 3, "6": 0}} if request["command"] == "reinit" else {"pong": "pong"}
        writer.write(json.dumps({"status": "ok", "response": response}).encode() + b"\n")
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@dataclass
class Env:
    node: V1Node
    cfg: Config
    db: Any
    daemon: FakeDaemon
    tmp: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def state_file(self) -> str:
        return str(self.tmp / "upgrade-state.json")

    async def run(self, *, apply: bool = True, hook: Hook | None = None, steps: list[str] | None = None,
                  rename_private: str | None = NEW_PRIVATE, register_db: bool = True,
                  sharenfs_options: str | None = "no_root_squash") -> Result:
        out = io.StringIO()
        options = Options(rename_private=rename_private, register_db=register_db, state_file=self.state_file,
                          sharenfs_options=sharenfs_options)
        try:
            return await run_upgrade(self.cfg, apply=apply, steps=steps, options=options, out=out, hook=hook)
        finally:
            self.outputs.append(out.getvalue())

    @property
    def output(self) -> str:
        return self.outputs[-1]


def upgrade_config(db_settings: TestDbSettings, database: str, tmp: Path) -> Config:
    cfg = make_config(db_settings, database, journal=str(tmp / "journal"))
    return replace(cfg, mounts_dir=str(tmp / "mounts"), remote_socket=str(tmp / "vpsadmind.sock"),
                   vz=VzConfig(vz_root=str(tmp / "vz")))


@pytest_asyncio.fixture
async def env(tmp_path: Path, db: Any, db_settings: TestDbSettings, test_database: str) -> AsyncIterator[Env]:
    """A v1.22 storage node (zfs + database) and a running fake daemon."""
    require_zfs()
    pool = TempPool(size=512 * 1024 * 1024, base_dir=str(tmp_path))
    await pool.create()
    daemon = FakeDaemon(str(tmp_path / "vpsadmind.sock"))
    try:
        node = await asyncio.to_thread(build_zfs, pool.name)
        await build_db(db, node)
        await daemon.start()
        yield Env(node, upgrade_config(db_settings, test_database, tmp_path), db, daemon, tmp_path)
    finally:
        with contextlib.suppress(Exception):
            await daemon.stop()
        await pool.destroy()
