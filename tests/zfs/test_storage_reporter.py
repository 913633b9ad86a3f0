"""The storage usage reporter (contract 10.7) on a real v2.0 database and a real zfs-fuse pool."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from structlog.testing import capture_logs

from vpsadmind.db import Database
from vpsadmind.reporters import StorageReporter, report_storage, yaml_int
from vpsadmind.system import record_calls
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.zfs import Zfs

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
TRACKED = ("used", "referenced", "avail")


@pytest_asyncio.fixture
async def database(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(make_config(db_settings, test_database, journal=str(tmp_path / "journal")).db)
    try:
        yield database
    finally:
        await database.close()


async def insert(db: Any, table: str, **cols: Any) -> int:
    columns = ", ".join(f"`{k}`" for k in cols)
    marks = ", ".join(["%s"] * len(cols))
    async with db.cursor() as cur:
        await cur.execute(f"INSERT INTO `{table}` ({columns}) VALUES ({marks})", list(cols.values()))
        return int(cur.lastrowid)


async def register(db: Any, pool_id: int, full_name: str, *, props: tuple[str, ...] = (*TRACKED, "quota")) -> int:
    """A dataset with its dataset_in_pool and property rows (value "--- 0\\n...\\n", as the API creates them)."""
    ds = await insert(db, "datasets", name=full_name.rsplit("/", 1)[-1], full_name=full_name, user_editable=1,
                      user_create=1, user_destroy=1, object_state=0, confirmed=1)
    dip = await insert(db, "dataset_in_pools", dataset_id=ds, pool_id=pool_id, confirmed=1)
    for prop in props:
        await insert(db, "dataset_properties", pool_id=pool_id, dataset_id=ds, dataset_in_pool_id=dip, name=prop,
                     value=yaml_int(0), inherited=0, confirmed=1)
    return dip


async def values(db: Any, dip: int) -> dict[str, Any]:
    async with db.cursor() as cur:
        await cur.execute("SELECT name, value FROM dataset_properties WHERE dataset_in_pool_id = %s", (dip,))
        return {name: yaml.safe_load(value) for name, value in await cur.fetchall()}


class Events:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, subtopic: str, payload: dict[str, Any]) -> None:
        self.published.append((subtopic, payload))


def fill(pool: TempPool, rel: str, mib: int) -> None:
    Path(pool.mountpoint, rel, "data").write_bytes(os.urandom(mib * MIB))


def test_yaml_int_is_what_ruby_wrote() -> None:
    assert yaml_int(123) == "--- 123\n...\n"
    assert yaml.safe_load(yaml_int(123)) == 123


async def test_report_updates_registered_datasets(db: Any, database: Database, zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    pool_fs = f"{p}/vz"
    for name in ("vz/101", "vz/101/var", "vz/102", "vz/999", "vz/vpsadmin/mount", "vz/vpsadmin/download"):
        await zfs.create(f"{p}/{name}", parents=True)
    fill(zfs_pool, "vz/101", 3)
    fill(zfs_pool, "vz/101/var", 2)
    await zfs.snapshot([f"{p}/vz/101@s"])
    pool_id = await insert(db, "pools", node_id=1, label="hv", filesystem=pool_fs, role=0)
    other_pool = await insert(db, "pools", node_id=2, label="other", filesystem=f"{p}/other", role=0)
    dip101 = await register(db, pool_id, "101")
    dip_var = await register(db, pool_id, "101/var")
    dip102 = await register(db, pool_id, "102")
    dip_other = await register(db, other_pool, "101")
    events = Events()

    with capture_logs() as logs, record_calls() as calls:
        reports = await report_storage(database, zfs, 1, events=events)

    assert calls.count("zfs") == 1  # one zfs get for the pool
    [report] = reports
    assert report.error is None
    assert report.unregistered == [f"{pool_fs}/999"]
    assert set(report.datasets) == {"101", "101/var", "102"}
    assert report.rows == 9
    v101, v_var, v102 = await values(db, dip101), await values(db, dip_var), await values(db, dip102)
    usage = await zfs.usage(pool_fs)
    for dip_values, name in ((v101, "vz/101"), (v_var, "vz/101/var"), (v102, "vz/102")):
        raw = usage[f"{p}/{name}"]
        assert dip_values == {"used": raw["used"] // MIB, "referenced": raw["referenced"] // MIB,
                              "avail": raw["available"] // MIB, "quota": 0}
    assert v101["used"] >= 5 and v101["referenced"] >= 3 and v_var["referenced"] >= 2
    assert v101["avail"] > 0
    assert await values(db, dip_other) == {"used": 0, "referenced": 0, "avail": 0, "quota": 0}
    async with db.cursor() as cur:
        await cur.execute("SELECT value FROM dataset_properties WHERE dataset_in_pool_id = %s AND name = 'used'",
                          (dip101,))
        assert (await cur.fetchone())[0] == yaml_int(v101["used"])
    not_registered = [e for e in logs if e["event"] == "dataset not registered in the database"]
    assert [e["dataset"] for e in not_registered] == [f"{pool_fs}/999"]  # vpsadmin/* is skipped silently
    [(topic, payload)] = events.published
    assert topic == "node/1/storage"
    assert payload["pool_id"] == pool_id and payload["datasets"]["101"] == {
        "used": v101["used"], "referenced": v101["referenced"], "avail": v101["avail"]}


async def test_a_failing_pool_does_not_stop_the_others(db: Any, database: Database, zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/ok/1", parents=True)
    gone = await insert(db, "pools", node_id=1, label="gone", filesystem=f"{p}/gone", role=2)
    ok = await insert(db, "pools", node_id=1, label="ok", filesystem=f"{p}/ok", role=2)
    bad = await insert(db, "pools", node_id=1, label="bad", filesystem="bad name", role=2)
    dip = await register(db, ok, "1")
    with capture_logs() as logs:
        reports = await report_storage(database, zfs, 1)
    by_id = {r.pool_id: r for r in reports}
    assert "does not exist" in (by_id[gone].error or "")
    assert "whitespace" in (by_id[bad].error or "")
    assert by_id[ok].error is None and by_id[ok].rows == 3
    assert (await values(db, dip))["avail"] > 0
    assert sum(1 for e in logs if e["event"] == "storage usage of a pool failed") == 2


async def test_pool_root_and_no_pools(db: Any, database: Database, zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    assert await report_storage(database, zfs, 1) == []
    pool_id = await insert(db, "pools", node_id=1, label="root", filesystem=p, role=1)
    await zfs.create(f"{p}/vpsadmin")
    [report] = await report_storage(database, zfs, 1)
    assert (report.rows, report.unregistered, report.datasets) == (0, [], {})
    assert report.pool_id == pool_id


async def test_usage_budget_with_50_datasets(db: Any, database: Database, zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    pool_id = await insert(db, "pools", node_id=1, label="hv", filesystem=f"{p}/vz", role=0)
    await zfs.create(f"{p}/vz")
    dips = []
    for i in range(50):
        await zfs.create(f"{p}/vz/{100 + i}")
        dips.append(await register(db, pool_id, str(100 + i), props=TRACKED))
    with record_calls() as calls:
        [report] = await report_storage(database, zfs, 1)
    assert calls.count("zfs") == 1
    assert report.rows == 150
    assert all([(await values(db, dip))["avail"] > 0 for dip in dips])


async def test_reporter_loop_survives_failures(db: Any, database: Database, zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    pool_id = await insert(db, "pools", node_id=1, label="hv", filesystem=f"{p}/vz", role=0)
    await zfs.create(f"{p}/vz/101", parents=True)
    dip = await register(db, pool_id, "101")
    broken = StorageReporter(database, Zfs(zfs="/nonexistent/zfs"), 1, interval=0.02)
    working = StorageReporter(database, zfs, 1, interval=0.02)

    class Exploding:
        def publish(self, subtopic: str, payload: dict[str, Any]) -> None:
            raise RuntimeError("sink down")

    exploding = StorageReporter(database, zfs, 1, events=Exploding(), interval=0.02)
    tasks = [asyncio.create_task(r.run()) for r in (broken, working, exploding)]
    try:
        async with asyncio.timeout(20):
            while working.runs < 3 or exploding.failures < 3:
                await asyncio.sleep(0.02)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks)
    assert broken.runs >= 1 and "cannot run" in (broken.last[0].error or "")  # zfs errors land in the report
    assert exploding.failures >= 3  # an exception escaping report_storage is logged, the loop goes on
    assert (await values(db, dip))["avail"] > 0
