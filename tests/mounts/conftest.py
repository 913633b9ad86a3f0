"""A node for the mount tests: a zfs-fuse pool with a VPS dataset, a fake-vzctl container 101 whose root is a real
bind mount (``FAKE_VZ_MOUNT=bind``, we are root), and an engine config pointing at both.

Every mount a test makes is undone at teardown (deepest first, before the pool is destroyed), so nothing is left
mounted below the test's temporary directory even when a test fails half-way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pytest
import pytest_asyncio

from tests.storage.conftest import Pool, cfg, pool  # noqa: F401  (fixtures used by the tests here)
from tests.vz.conftest import create_ct
from vpsadmind.config import Config, VzConfig
from vpsadmind.db import Database
from vpsadmind.engine.core import Engine
from vpsadmind.engine.model import Transaction
from vpsadmind.handlers.base import HANDLERS, Handler, HandlerContext, import_handler_modules
from vpsadmind.handlers.params import parse_params
from vpsadmind.mount_registry import mounts_for
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain
from vpsadmind.testing.fakevz.install import fake_vzctl_script, fake_vzlist_script
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, MOUNT_ENV, ROOT_ENV
from vpsadmind.testing.fakevz.mounts import mountpoints
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.vz import RetryPolicy, Vz

VEID = 101
TEMPLATE = "debian-8.0-x86_64-minimal"

# Under CI=true a test that needs root runs anyway (and fails): a missing capability must not pass as a skip.
needs_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true", reason="bind mounts need root")


def unmount_below(base: Path) -> list[str]:
    """Undo every mount below ``base`` (deepest first); returns what was still mounted."""
    prefix = str(base.resolve()) + "/"
    left = sorted((m for m in mountpoints() if m.startswith(prefix)), key=len, reverse=True)
    for mp in left:
        if subprocess.run(["umount", mp], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
    return left


def mounted_below(base: Path) -> list[str]:
    prefix = str(base.resolve()) + "/"
    return sorted(m for m in mountpoints() if m.startswith(prefix))


@dataclass
class Node:
    """The test node: ``cfg`` for engines, ``vz`` on the fake, the pool with ``<pool>/vz/101`` (VPS dataset) and
    ``<pool>/vz/101/data`` (``private/hello`` inside), the container's VE_ROOT."""

    cfg: Config
    vz: Vz
    pool: Pool
    root: Path          # FAKE_VZ_ROOT
    tmp: Path

    @property
    def ve_root(self) -> Path:
        return self.root / "vz" / "root" / str(VEID)

    @property
    def pool_fs(self) -> str:
        return f"{self.pool.name}/vz"

    def private(self, dataset: str) -> Path:
        return self.pool.mounted_path(f"{self.pool_fs}/{dataset}") / "private"

    def make_dataset(self, name: str, content: str | None = None) -> Path:
        """``<pool_fs>/<name>`` with ``private/`` (5201 with create_private) and a ``hello`` file in it."""
        self.pool.zfs("create", "-p", f"{self.pool_fs}/{name}")
        private = self.private(name)
        private.mkdir(exist_ok=True)
        (private / "hello").write_text(content or f"from {name}\n")
        return private

    def mounted(self) -> list[str]:
        return mounted_below(self.tmp)


def mount_hash(mount_id: int, dst: str, dataset: str = "101/data", *, node: Node | None = None,
               pool_fs: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``dataset_local`` mount hash as the API sends it; ``extra`` overrides any key."""
    base = {"id": mount_id, "on_start_fail": "mount_later", "type": "dataset_local",
            "pool_fs": pool_fs or (node.pool_fs if node else "tank/vz"), "dataset_name": dataset, "dst": dst,
            "mount_opts": "--bind", "umount_opts": "-f", "mode": "rw"}
    return {**base, **extra}


def fake_mount_binary(path: Path, log: Path) -> Path:
    """A ``mount`` stand-in that exits 0 and records its argv and where each ``/proc/<pid>/fd`` argument leads
    (NFS cannot run in this kernel, so remote mounts are checked at the argv level)."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "targets = {a: os.path.realpath(a) for a in sys.argv[1:] if a.startswith('/proc/')}\n"
        f"with open({str(log)!r}, 'a') as fh:\n"
        "    fh.write(json.dumps({'argv': sys.argv[1:], 'targets': targets}) + '\\n')\n")
    path.chmod(0o755)
    return path


def fake_mount_calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def vzroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "fakevz"
    monkeypatch.setenv(ROOT_ENV, str(root))
    monkeypatch.setenv(MOUNT_ENV, "bind")
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    make_template(root, TEMPLATE)
    return root


@pytest_asyncio.fixture
async def node(cfg: Config, pool: Pool, vzroot: Path, tmp_path: Path) -> AsyncIterator[Node]:  # noqa: F811
    """Container 101 created (not started), the VPS datasets, a config whose ``vz`` section is the fake's."""
    bindir = tmp_path / "bin"
    vzctl, vzlist = fake_vzctl_script(bindir), fake_vzlist_script(bindir)
    config = dataclasses.replace(
        cfg, vz=VzConfig(vzctl=str(vzctl), vzlist=str(vzlist), vz_root=str(vzroot / "vz"),
                         vz_conf=str(vzroot / "etc" / "vz")),
        mounts_dir=str(tmp_path / "mounts"), remote_socket=str(tmp_path / "ctl.sock"),
        handler_modules=["vpsadmind.testing.handlers", "vpsadmind.handlers.mounts"])
    vz = Vz.from_config(config.vz, retry=RetryPolicy(1, 0.01), timeout=60)
    n = Node(config, vz, pool, vzroot, tmp_path)
    pool.zfs("create", "-p", f"{n.pool_fs}/101")
    n.make_dataset("101/data")
    await create_ct(vz, VEID)
    try:
        yield n
    finally:
        with contextlib.suppress(Exception):
            await vz.stop(VEID)
        unmount_below(tmp_path)


async def start(node: Node) -> None:
    await node.vz.start(VEID)
    assert str(node.ve_root) in mountpoints()


@dataclass
class ChainRun:
    state: dict[str, Any]
    rows: list[dict[str, Any]]

    def output(self, i: int) -> dict[str, Any]:
        raw = self.rows[i]["t_output"]
        return dict(json.loads(raw)) if raw else {}


async def run_mounts_chain(db: aiomysql.Connection, config: Config, builder: ChainBuilder, *,
                           timeout: float = 60.0) -> ChainRun:
    """Run ``builder`` on a real engine; the engine's queued mount states are written to the DB before it stops
    (the daemon's reporter loop does that in the background)."""
    fired = await builder.fire(db)
    async with running_engine(config) as engine:
        state = await wait_chain(db, fired.chain_id, timeout=timeout)
        await flush_states(engine)
    return ChainRun(state, await transactions_of(db, fired.chain_id))


async def flush_states(engine: Engine) -> None:
    await mounts_for(engine.ctx).reporter.flush()


def chain(*steps: tuple[int, dict[str, Any]], fail: bool = False) -> ChainBuilder:
    b = ChainBuilder("mounts")
    for code, params in steps:
        b.append(code, server=1, vps=VEID, params=params)
    if fail:
        b.append(90001, server=1, params={"fail": True})
    return b


async def insert_vps_and_mounts(db: aiomysql.Connection, *mount_ids: int, vps_id: int = VEID,
                                state: int = 0) -> None:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vps (vps_id, m_id, vps_server, vps_config, object_state) "
                          "VALUES (%s, 1, 1, '', 0)", (vps_id,))
        for mid in mount_ids:
            await cur.execute("INSERT INTO mounts (id, vps_id, dst, mount_opts, umount_opts, mount_type, mode, "
                              "object_state, current_state) VALUES (%s, %s, %s, '--bind', '-f', 'bind', 'rw', 0, "
                              "%s)", (mid, vps_id, f"/mnt/m{mid}", state))


def make_handler(ctx: HandlerContext, code: int, params: dict[str, Any], *, t_id: int,
                 t_output: dict[str, Any] | None = None) -> Handler[Any]:
    """A handler of VPS 101 outside the engine, as a crash re-run or a chain rollback gets it."""
    cls = HANDLERS[code]
    t = Transaction(t_id=t_id, chain_id=1, t_type=code, t_server=1, t_vps=VEID, t_depends_on=None, t_urgent=False,
                    t_priority=0, t_success=0, t_done=0, t_param=json.dumps(params), reversible=1, queue="general",
                    chain_state=1, chain_progress=0, chain_size=1, urgent_rollback=False,
                    t_output=json.dumps(t_output) if t_output is not None else None)
    return cls(ctx, parse_params(cls.Params, params), t)


@contextlib.asynccontextmanager
async def handler_context(config: Config) -> AsyncIterator[HandlerContext]:
    import_handler_modules(config.handler_modules)
    database = Database(config.db)
    try:
        yield HandlerContext(config=config, db=database)
    finally:
        await database.close()


async def mount_states(db: aiomysql.Connection) -> dict[int, int]:
    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT id, current_state FROM mounts ORDER BY id")
        return {int(r["id"]): int(r["current_state"]) for r in await cur.fetchall()}
