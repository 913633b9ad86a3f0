"""The storage usage reporter inside a real daemon process (``storage.update_status``, ``resources_interval``).

A daemon on a node whose ``pools`` row points at a throw-away pool must keep ``dataset_properties`` ``used``,
``referenced`` and ``avail`` of the registered datasets at what ``zfs get -p`` says, in MiB, as YAML integers
(``--- 3\\n...\\n``). Runs on zfs-fuse (skipped when it is unavailable, failing when ``CI=true``) and on the
fake-zfs harness (always). Nothing here touches a pool it did not create.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from vpsadmind.system import CommandFailed
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.fakezfs.install import fake_zfs_script
from vpsadmind.testing.process import DaemonProcess, write_config
from vpsadmind.testing.services import unavailable, zfs_fuse_problem
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.zfs.driver import Zfs

pytestmark = pytest.mark.slow

SERVER_ID = 7
MIB = 1024 * 1024
PROPS = {"used": "used", "referenced": "referenced", "available": "avail"}


@dataclass
class Backend:
    """``zfs``/``zpool`` paths for the daemon's ``bin`` section and the environment they need."""

    name: str
    zfs: str
    zpool: str
    env: dict[str, str]

    def run(self, *args: str) -> str:
        done = subprocess.run([self.zfs, *args], capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, **self.env})
        assert done.returncode == 0, f"zfs {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture(params=["zfs-fuse", "fake"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if request.param == "zfs-fuse":
        problem = zfs_fuse_problem()
        if problem is not None:
            unavailable(f"zfs-fuse is not available: {problem}")
        return Backend("zfs-fuse", "zfs", "zpool", {})
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    script = fake_zfs_script(bindir)
    for name in ("zfs", "zpool"):
        (bindir / name).symlink_to(script)
    root = str(tmp_path / "fakeroot")
    monkeypatch.setenv("FAKE_ZFS_ROOT", root)  # for TempPool's driver in this process
    return Backend("fake", str(bindir / "zfs"), str(bindir / "zpool"), {"FAKE_ZFS_ROOT": root})


@pytest_asyncio.fixture
async def pool(backend: Backend, tmp_path: Path) -> AsyncIterator[TempPool]:
    tp = TempPool(base_dir=str(tmp_path), zfs=Zfs(zfs=backend.zfs, zpool=backend.zpool, timeout=30.0))
    await tp.create()
    try:
        yield tp
    finally:
        for attempt in range(20):  # zfs-fuse says "pool is busy" for a moment after writes
            try:
                await tp.destroy()
                break
            except CommandFailed:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)


async def _insert(db: Any, sql: str, args: tuple[Any, ...]) -> int:
    async with db.cursor() as cur:
        await cur.execute(sql, args)
        return int(cur.lastrowid)


async def register(db: Any, pool_id: int, full_name: str) -> int:
    """A confirmed ``datasets`` + ``dataset_in_pools`` row with empty used/referenced/avail properties."""
    ds = await _insert(db, "INSERT INTO datasets (name, full_name, user_editable, user_create, user_destroy, "
                           "confirmed, object_state) VALUES (%s, %s, 0, 0, 0, 1, 0)",
                       (full_name.rsplit("/", 1)[-1], full_name))
    dip = await _insert(db, "INSERT INTO dataset_in_pools (dataset_id, pool_id, confirmed) VALUES (%s, %s, 1)",
                        (ds, pool_id))
    for name in (*PROPS.values(), "compression"):
        await _insert(db, "INSERT INTO dataset_properties (pool_id, dataset_id, dataset_in_pool_id, name, value, "
                          "confirmed) VALUES (%s, %s, %s, %s, NULL, 1)", (pool_id, ds, dip, name))
    return dip


async def properties(db: Any, dip: int) -> dict[str, str | None]:
    async with db.cursor() as cur:
        await cur.execute("SELECT name, value FROM dataset_properties WHERE dataset_in_pool_id = %s", (dip,))
        return {str(name): value for name, value in await cur.fetchall()}


def zfs_usage(backend: Backend, name: str) -> dict[str, int]:
    """``zfs get -Hp`` used/referenced/available of ``name`` in MiB, keyed by the dataset_properties name."""
    out = backend.run("get", "-H", "-p", "-o", "property,value", ",".join(PROPS), name)
    return {PROPS[prop]: int(value) // MIB for prop, value in (line.split("\t") for line in out.splitlines())}


def yaml_value(text: str | None) -> int:
    """The integer of Ruby's ``YAML.dump(123)`` (``--- 123\\n...\\n``), -1 for anything else."""
    if text is None or not text.startswith("--- ") or not text.endswith("\n...\n"):
        return -1
    body = text[4:-5]
    return int(body) if body.isdigit() else -1


async def test_daemon_reports_storage_usage(db: Any, db_settings: TestDbSettings, test_database: str,
                                            tmp_path: Path, backend: Backend, pool: TempPool) -> None:
    fs = pool.path("vz")
    for name in (fs, f"{fs}/vpsadmin", f"{fs}/101", f"{fs}/101/www", f"{fs}/999"):
        backend.run("create", name)
    # 3 MiB of data in 101 (incompressible, compression is off anyway)
    mnt = backend.run("get", "-H", "-o", "value", "mountpoint", f"{fs}/101").strip()
    Path(mnt, "data").write_bytes(os.urandom(3 * MIB))
    # zfs-fuse accounts for a write at the next txg sync (up to 30 s later); a property change forces one
    backend.run("set", "org.vpsadmin:test=1", f"{fs}/101")
    deadline = time.monotonic() + 20
    while zfs_usage(backend, f"{fs}/101")["used"] < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    pool_id = await _insert(db, "INSERT INTO pools (node_id, label, filesystem, role) VALUES (%s, 'tank', %s, 0)",
                            (SERVER_ID, fs))
    dips = {"101": await register(db, pool_id, "101"), "101/www": await register(db, pool_id, "101/www")}
    # another node's pool on the same filesystem name is not this daemon's business
    other = await _insert(db, "INSERT INTO pools (node_id, label, filesystem, role) VALUES (99, 'x', %s, 0)", (fs,))
    other_dip = await register(db, other, "101")

    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=SERVER_ID,
                       journal=tmp_path / "j", extra_vpsadmin={"resources_interval": 1},
                       bin={"zfs": backend.zfs, "zpool": backend.zpool})
    d = DaemonProcess(cfg, tmp_path / "d.log", env=backend.env).start()
    try:
        assert d.wait_for_event("storage_reporter_started", timeout=10)["interval"] == 1
        deadline = time.monotonic() + 20
        while True:  # zfs-fuse settles used/avail a few seconds after a write: wait until they agree
            got = {rel: await properties(db, dip) for rel, dip in dips.items()}
            want = {rel: zfs_usage(backend, f"{fs}/{rel}") for rel in dips}
            reported = {rel: {k: yaml_value(v.get(k)) for k in PROPS.values()} for rel, v in got.items()}
            close = all(reported[rel][k] >= 0 and abs(reported[rel][k] - want[rel][k]) <= 1
                        for rel in dips for k in PROPS.values())
            if close or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert close, f"dataset_properties {got} vs zfs get {want}"
        for rel, values in got.items():
            for k in PROPS.values():
                assert values[k] == f"--- {reported[rel][k]}\n...\n"
            assert values["compression"] is None  # only the usage properties are written
        assert 3 <= reported["101"]["used"] <= 5 and reported["101"]["referenced"] >= 3
        assert reported["101/www"]["used"] == 0
        assert reported["101"]["avail"] > 100
        assert await properties(db, other_dip) == {"used": None, "referenced": None, "avail": None,
                                                   "compression": None}
        unregistered = [e for e in d.events() if e.get("event") == "dataset not registered in the database"]
        assert {e["dataset"] for e in unregistered} == {f"{fs}/999"}
        assert not [e for e in d.events() if e.get("event") in ("storage report failed",
                                                                 "storage usage of a pool failed")]
    finally:
        assert d.terminate() == 0
    assert not [e for e in d.events() if e.get("level") == "error"], d.log.read_text()[-2000:]


async def test_no_pools_no_zfs(db: Any, db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> None:
    """A node without pools never runs zfs: a ``bin.zfs`` that does not exist is no error."""
    await _insert(db, "INSERT INTO pools (node_id, label, filesystem, role) VALUES (99, 'x', 'tank/vz', 0)", ())
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=SERVER_ID, journal=tmp_path / "j",
                       extra_vpsadmin={"resources_interval": 0.2},
                       bin={"zfs": str(tmp_path / "no-zfs"), "zpool": str(tmp_path / "no-zpool")})
    d = DaemonProcess(cfg, tmp_path / "d.log").start()
    try:
        await asyncio.sleep(1.5)
        assert d.returncode is None
    finally:
        assert d.terminate() == 0
    events = [e.get("event") for e in d.events()]
    assert "storage_reporter_started" not in events
    assert not [e for e in d.events() if e.get("level") == "error"], d.log.read_text()[-2000:]


async def test_update_status_false_disables_the_reporter(db: Any, db_settings: TestDbSettings, test_database: str,
                                                         tmp_path: Path) -> None:
    await _insert(db, "INSERT INTO pools (node_id, label, filesystem, role) VALUES (%s, 'x', 'tank/vz', 0)",
                  (SERVER_ID,))
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=SERVER_ID, journal=tmp_path / "j",
                       extra_vpsadmin={"resources_interval": 0.2},
                       bin={"zfs": str(tmp_path / "no-zfs"), "zpool": str(tmp_path / "no-zpool")})
    data = yaml.safe_load(cfg.read_text())
    data["storage"] = {"update_status": False}
    cfg.write_text(yaml.safe_dump(data))
    d = DaemonProcess(cfg, tmp_path / "d.log").start()
    try:
        await asyncio.sleep(1.0)
    finally:
        assert d.terminate() == 0
    assert not [e for e in d.events() if str(e.get("event", "")).startswith("storage_reporter")]
    assert not [e for e in d.events() if e.get("level") == "error"], d.log.read_text()[-2000:]
