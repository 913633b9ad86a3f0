"""Fixtures of the VPS handler tests: the fake vzctl/vzlist tree, an engine config pointing at it, a fake scp, and
chains run through a real engine and MariaDB (and zfs-fuse pools where a composition needs datasets).

* ``vcfg``: the storage tests' config with ``vz.*`` on the fake binaries and tree (``vz.ve_private`` =
  ``<fake>/vz/private/%{veid}/private``), ``mounts_dir`` and the ``node.*`` paths in the test's temp dir,
  ``bin.scp`` a fake scp, and the VPS handler modules loaded;
* :func:`run` fires a chain and runs an engine until it ends, with the driver installed on the engine's context
  (retries 3 x 0.01 s instead of 5 s); ``run(..., vz=...)`` takes another driver;
* :func:`make_ct` creates a container directly with the fake (v2.0's 3001 without a chain).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomysql
import pytest
import pytest_asyncio

from tests.storage.conftest import Pool, cfg, output, pool  # noqa: F401  (fixtures used by this package)
from tests.vz.conftest import TEMPLATE, FakeVz, fakevz, vzroot  # noqa: F401
from vpsadmind.config import Config, NodeConfig, QueueConfig
from vpsadmind.db import Database
from vpsadmind.engine.model import Transaction
from vpsadmind.handlers import vps_features
from vpsadmind.handlers.base import HANDLERS, Handler, HandlerContext, import_handler_modules
from vpsadmind.handlers.params import parse_params
from vpsadmind.handlers.vps_common import install_vz
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain
from vpsadmind.testing.fakescp import Scp, make_scp
from vpsadmind.testing.fakevz.layout import ALLOW_ENV
from vpsadmind.vz import RetryPolicy, Vz

VPS_MODULES = ("vpsadmind.testing.handlers", "vpsadmind.handlers.vps", "vpsadmind.handlers.vps_config",
               "vpsadmind.handlers.vps_features", "vpsadmind.handlers.node")

@pytest.fixture
def scp(tmp_path: Path) -> Scp:
    return make_scp(tmp_path)


@pytest.fixture(autouse=True)
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """8001's 3 s pause after the start (for the container's init) is not needed by the fake."""
    monkeypatch.setattr(vps_features, "START_SETTLE", 0.0)


@pytest.fixture
def vcfg(cfg: Config, fakevz: FakeVz, scp: Scp, tmp_path: Path) -> Config:  # noqa: F811
    vz = dataclasses.replace(cfg.vz, vzctl=str(fakevz.vzctl_bin), vzlist=str(fakevz.vzlist_bin),
                             vz_conf=str(fakevz.root / "etc" / "vz"), vz_root=str(fakevz.root / "vz"),
                             ve_private=f"{fakevz.root}/vz/private/%{{veid}}/private")
    ssh = tmp_path / "root-ssh"
    node = NodeConfig(pubkey_types=["rsa", "dsa"], pubkey_path=str(tmp_path / "host-keys" / "ssh_host_%{type}_key.pub"),
                      known_hosts=str(ssh / "known_hosts"))
    mounts = tmp_path / "mounts"
    mounts.mkdir()
    return dataclasses.replace(cfg, vz=vz, node=node, mounts_dir=str(mounts), handler_modules=list(VPS_MODULES),
                               bin={**cfg.bin, "scp": str(scp.path)})


@pytest.fixture
def zfs_private(vcfg: Config, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:  # noqa: F811
    """``vcfg`` with private areas in the pool's datasets (``/<pool mountpoint>/<veid>/private``), as v2.0's
    ``servers.ve_private`` on a ZFS node; the fake may create private areas there."""
    monkeypatch.setenv(ALLOW_ENV, str(pool.mountpoint))
    vz = dataclasses.replace(vcfg.vz, ve_private=f"{pool.mountpoint}/%{{veid}}/private")
    # v2.0's zfs_send queue waits 4 hours after the daemon starts (contract 4.1); LocalSend must run at once
    queues = {**vcfg.queues, "zfs_send": QueueConfig(1, 0, 0)}
    yield dataclasses.replace(vcfg, vz=vz, queues=queues)


def make_vz(config: Config) -> Vz:
    return Vz.from_config(config.vz, retry=RetryPolicy(attempts=3, pause=0.01), timeout=60)


async def run(db: aiomysql.Connection, config: Config, builder: ChainBuilder, *, vz: Vz | None = None,
              timeout: float = 90.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fire ``builder`` and run an engine (with the test driver installed) until the chain ends."""
    async with running_engine(config) as engine:
        install_vz(engine.ctx, vz or make_vz(config))
        fired = await builder.fire(db)
        chain = await wait_chain(db, fired.chain_id, timeout=timeout)
    return chain, await transactions_of(db, fired.chain_id)


def chain(*steps: tuple[int, dict[str, Any]], vps: int | None = 101, name: str = "vps") -> ChainBuilder:
    b = ChainBuilder(name)
    for code, params in steps:
        b.append(code, server=1, vps=vps, params=params)
    return b


def errors(rows: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    return [(r["t_type"], output(r)) for r in rows]


def make_ct(fakevz: FakeVz, veid: int = 101, *, hostname: str = "ct101", private: str | None = None) -> None:  # noqa: F811
    """v2.0's create directly with the fake: ``vzctl create`` and ``set --applyconfig basic --save``."""
    extra = ["--private", private] if private else []
    fakevz.ok("create", str(veid), "--ostemplate", TEMPLATE, "--hostname", hostname, *extra)
    fakevz.ok("set", str(veid), "--applyconfig", "basic", "--save")


def conf(fakevz: FakeVz, veid: int = 101) -> dict[str, str]:  # noqa: F811
    """The container's conf as vzctl reads it (first assignment of each key)."""
    from vpsadmind.vz import ConfFile

    return ConfFile.load(fakevz.conf_dir / f"{veid}.conf").as_dict()


def running(fakevz: FakeVz, veid: int = 101) -> bool:  # noqa: F811
    return fakevz.layout.ct(veid).running



@pytest_asyncio.fixture
async def hctx(vcfg: Config, db: aiomysql.Connection) -> AsyncIterator[HandlerContext]:
    """A handler context outside any engine (for crash re-runs: ``recover`` on a fresh handler object)."""
    import_handler_modules(vcfg.handler_modules)
    database = Database(vcfg.db)
    ctx = HandlerContext(config=vcfg, db=database)
    install_vz(ctx, make_vz(vcfg))
    try:
        yield ctx
    finally:
        await database.close()


def make_handler(ctx: HandlerContext, code: int, params: dict[str, Any], *, vps: int | None = 101,
                 t_id: int = 1000, t_output: str | None = None) -> Handler[Any]:
    """The handler the engine would build for one transaction (a new object, as after a crash)."""
    cls = HANDLERS[code]
    t = Transaction(t_id=t_id, chain_id=1, t_type=code, t_server=1, t_vps=vps, t_depends_on=None, t_urgent=False,
                    t_priority=0, t_success=0, t_done=0, t_param=json.dumps(params), reversible=1, queue="vps",
                    chain_state=1, chain_progress=0, chain_size=1, urgent_rollback=False, t_output=t_output)
    return cls(ctx, parse_params(cls.Params, params), t)
