"""Integrity checks 6005/6006/6001 against a real zfs-fuse pool, the fake vzctl/vzlist, MariaDB and the engine.

The params are built the way the API's ``Transactions::IntegrityCheck::*`` build them: every item is first
registered as an ``integrity_objects`` row (``serialize_query``/``register_object!``) and carries that row's id
and ancestry. The node's state is then made to differ from them in known ways, and the facts, the strays and the
summaries are checked row by row.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomysql
import pytest
import pytest_asyncio
import yaml

import vpsadmind.handlers.integrity as integrity
from tests.storage.conftest import Direct, Pool, assert_done, output, require_zfs
from tests.vz.conftest import TEMPLATE, FakeVz, create_ct
from vpsadmind.config import Config, VzConfig
from vpsadmind.db import Database
from vpsadmind.engine.model import ChainState, Direction, Result, TSuccess
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import HandlerContext
from vpsadmind.handlers.params import parse_params
from vpsadmind.system import record_calls
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain
from vpsadmind.testing.fakevz.install import fake_vzctl_script, fake_vzlist_script
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, MOUNT_ENV, ROOT_ENV
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.vz import Vz

MODULES = ("vpsadmind.testing.handlers", "vpsadmind.handlers.integrity")


# Own fixtures, made as tests/storage and tests/vz make theirs (importing those would shadow names here).


@pytest.fixture
def icfg(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> Config:
    """An engine config with this module's handlers (not yet in DEFAULT_HANDLER_MODULES)."""
    return make_config(db_settings, test_database, journal=str(tmp_path / "journal"), handler_modules=MODULES)


@pytest_asyncio.fixture
async def zpool(tmp_path: Path) -> AsyncIterator[Pool]:
    """A TempPool (unique name, sparse file under ``tmp_path``), always destroyed."""
    require_zfs()
    tp = TempPool(size=512 * 1024 * 1024, base_dir=str(tmp_path))
    await tp.create()
    try:
        yield Pool(tp.name, Path(tp.mountpoint))
    finally:
        await tp.destroy()


@pytest_asyncio.fixture
async def handlers(icfg: Config, db: Any) -> AsyncIterator[Direct]:
    """Runs handlers outside the engine (as a crash re-run would: same transaction, a new handler)."""
    database = Database(icfg.db)
    try:
        yield Direct(HandlerContext(config=icfg, db=database))
    finally:
        await database.close()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeVz:
    """The fake vzctl/vzlist with their state under ``tmp_path`` (no real mounts: the default link mode)."""
    root = tmp_path / "fakevz"
    monkeypatch.setenv(ROOT_ENV, str(root))
    monkeypatch.delenv(MOUNT_ENV, raising=False)
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    make_template(root, TEMPLATE)
    bindir = tmp_path / "bin"
    return FakeVz(root, fake_vzctl_script(bindir), fake_vzlist_script(bindir))


# ------------------------------------------------------------------------------------------------------------
# The API side: integrity_checks, pre-registered objects, chains


class Api:
    """Creates a check and registers objects as the API does; ``item`` returns the params item of an object."""

    def __init__(self, db: aiomysql.Connection, check_id: int, node_id: int = 1) -> None:
        self.db = db
        self.check_id = check_id
        self.node_id = node_id
        self.row_ids = itertools.count(1)

    @classmethod
    async def new_check(cls, db: aiomysql.Connection) -> Api:
        async with db.cursor() as cur:
            await cur.execute("INSERT INTO integrity_checks (status, created_at) VALUES (0, UTC_TIMESTAMP())")
            return cls(db, int(cur.lastrowid))

    async def item(self, class_name: str, parent: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        if parent is None:
            ancestry = None
        elif parent["ancestry"]:
            ancestry = f"{parent['ancestry']}/{parent['integrity_object_id']}"
        else:
            ancestry = str(parent["integrity_object_id"])
        async with self.db.cursor() as cur:
            await cur.execute(
                "INSERT INTO integrity_objects (integrity_check_id, node_id, class_name, row_id, ancestry, "
                "ancestry_depth, created_at) VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP())",
                (self.check_id, self.node_id, class_name, next(self.row_ids), ancestry,
                 0 if ancestry is None else ancestry.count("/") + 1))
            object_id = int(cur.lastrowid)
        return {**fields, "integrity_object_id": object_id, "ancestry": ancestry}

    async def prop(self, parent: dict[str, Any], name: str, value: Any, inherited: bool) -> dict[str, Any]:
        item = await self.item("DatasetProperty", parent, name=name, value=value, inherited=inherited)
        parent.setdefault("properties", []).append(item)
        return item

    async def dataset(self, parent: dict[str, Any], name: str) -> dict[str, Any]:
        item = await self.item("DatasetInPool", parent, name=name, properties=[], snapshots=[], trees=[], datasets=[])
        parent["datasets"].append(item)
        return item

    async def snapshot(self, ds: dict[str, Any], name: str, reference_count: int = 0) -> dict[str, Any]:
        item = await self.item("SnapshotInPool", ds, name=name, reference_count=reference_count)
        ds["snapshots"].append(item)
        return item


async def facts_of(db: aiomysql.Connection, check_id: int) -> list[dict[str, Any]]:
    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute(
            "SELECT f.*, o.class_name, o.row_id, o.ancestry AS o_ancestry, o.ancestry_depth, o.node_id "
            "FROM integrity_facts f JOIN integrity_objects o ON o.id = f.integrity_object_id "
            "WHERE o.integrity_check_id = %s ORDER BY f.id", (check_id,))
        rows = [dict(r) for r in await cur.fetchall()]
    for r in rows:
        r["expected"] = yaml.safe_load(r["expected_value"])
        r["actual"] = yaml.safe_load(r["actual_value"])
    return rows


def fact(rows: list[dict[str, Any]], item: dict[str, Any], name: str) -> dict[str, Any]:
    found = [r for r in rows if r["integrity_object_id"] == item["integrity_object_id"] and r["name"] == name]
    assert len(found) == 1, (item, name, found)
    return found[0]


def strays(rows: list[dict[str, Any]], class_name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["row_id"] is None and r["class_name"] == class_name]


async def objects_of(db: aiomysql.Connection, check_id: int) -> dict[int, dict[str, Any]]:
    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT * FROM integrity_objects WHERE integrity_check_id = %s", (check_id,))
        return {int(r["id"]): dict(r) for r in await cur.fetchall()}


async def check_row(db: aiomysql.Connection, check_id: int) -> dict[str, Any]:
    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT * FROM integrity_checks WHERE id = %s", (check_id,))
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def run(db: aiomysql.Connection, cfg: Config, *steps: tuple[int, dict[str, Any]]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    b = ChainBuilder("integrity_check_node", type_="TransactionChains::IntegrityCheck::Node")
    for code, params in steps:
        b.append(code, server=1, params=params)
    fired = await b.fire(db)
    async with running_engine(cfg):
        chain = await wait_chain(db, fired.chain_id, timeout=60)
    return chain, await transactions_of(db, fired.chain_id)


def expected_summary(rows: list[dict[str, Any]], objects: dict[int, dict[str, Any]]) -> dict[str, int]:
    """The check's summary computed here from the facts, independently of the SQL under test."""
    per: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        per.setdefault(r["integrity_object_id"], []).append(r)
    broken = sum(1 for fs in per.values() if any(f["status"] == 0 and f["severity"] > 0 for f in fs))
    true = sum(1 for r in rows if r["status"] == 1)
    assert set(per) <= set(objects)
    return {"status": 2 if broken else 1, "checked_objects": len(per), "integral_objects": len(per) - broken,
            "broken_objects": broken, "checked_facts": len(rows), "true_facts": true, "false_facts": len(rows) - true}


# ------------------------------------------------------------------------------------------------------------
# 6005 against a pool


@dataclasses.dataclass
class StorageScene:
    api: Api
    params: dict[str, Any]
    items: dict[str, dict[str, Any]]


def make_pool_fs(zpool: Pool, fs: str) -> None:
    for name in (fs, f"{fs}/vpsadmin", f"{fs}/vpsadmin/download", f"{fs}/vpsadmin/mount"):
        zpool.zfs("create", name)


async def hypervisor(api: Api, zpool: Pool) -> dict[str, Any]:
    """A hypervisor pool ``<pool>/hv`` with deliberate differences (see the comments), and its params."""
    fs = f"{zpool.name}/hv"
    make_pool_fs(zpool, fs)
    zpool.zfs("create", "-o", "compression=on", "-o", "refquota=10M", f"{fs}/101")
    zpool.zfs("create", f"{fs}/101/var")
    for snap in ("s1", "s2", "extra"):                       # extra: in ZFS only
        zpool.zfs("snapshot", f"{fs}/101@{snap}")
    zpool.zfs("clone", f"{fs}/101@s1", f"{fs}/vpsadmin/mount/7.snapshot")   # a remote mount of s1
    zpool.zfs("create", f"{fs}/103")                          # a dataset the API does not know
    downloads = zpool.mounted_path(f"{fs}/vpsadmin/download")
    (downloads / "k1").mkdir()
    (downloads / "k1" / "101__s1.tar.gz").write_bytes(b"x")
    (downloads / "k3").mkdir()                               # a download the API does not know

    items: dict[str, Any] = {}
    hv = await api.item("Pool", filesystem=fs, properties=[], downloads=[], mount_clones=[], datasets=[])
    items["pool"] = hv
    items["pool.compression"] = await api.prop(hv, "compression", False, True)
    items["pool.atime"] = await api.prop(hv, "atime", True, True)
    for key, name in (("dl1", "k1"), ("dl2", "k2")):         # k2 is missing
        items[key] = await api.item("SnapshotDownload", hv, secret_key=name, file_name="101__s1.tar.gz")
        hv["downloads"].append(items[key])
    items["clone"] = await api.item("SnapshotInPool", hv, id=7, dataset="101", name="s1")
    hv["mount_clones"].append(items["clone"])
    ds = items["101"] = await api.dataset(hv, "101")
    items["101.compression"] = await api.prop(ds, "compression", True, False)
    items["101.atime"] = await api.prop(ds, "atime", False, True)      # wrong: atime is on
    items["101.quota"] = await api.prop(ds, "quota", 0, False)        # v2.0 reported this as a false fact
    items["101.refquota"] = await api.prop(ds, "refquota", 10, False)
    items["101.used"] = await api.prop(ds, "used", 1, False)          # reported by the node: not compared
    items["s1"] = await api.snapshot(ds, "s1", reference_count=1)
    items["s2"] = await api.snapshot(ds, "s2")
    items["s3"] = await api.snapshot(ds, "s3")                        # missing
    var = items["101/var"] = await api.dataset(ds, "101/var")
    items["var.sync"] = await api.prop(var, "sync", "standard", True)  # zfs-fuse has no sync: undetermined
    gone = items["102"] = await api.dataset(hv, "102")                 # missing, and so is all below it
    items["102@a"] = await api.snapshot(gone, "a")
    items["102/sub"] = await api.dataset(gone, "102/sub")
    return hv


async def backup(api: Api, zpool: Pool) -> dict[str, Any]:
    """A backup pool ``<pool>/bk``: dataset 101 in tree.0 whose branch-A.0 was branched at s1 into
    branch-s1.0 (clone + promote, as a rollback does), plus an unexpected clone and a missing snapshot."""
    fs = f"{zpool.name}/bk"
    make_pool_fs(zpool, fs)
    tree = f"{fs}/101/tree.0"
    zpool.zfs("create", "-p", f"{tree}/branch-A.0")
    for snap in ("s1", "s2"):
        zpool.zfs("snapshot", f"{tree}/branch-A.0@{snap}")
    zpool.zfs("clone", f"{tree}/branch-A.0@s1", f"{tree}/branch-s1.0")
    zpool.zfs("promote", f"{tree}/branch-s1.0")               # s1 moves to branch-s1.0, A.0 now depends on it
    zpool.zfs("clone", f"{tree}/branch-s1.0@s1", f"{tree}/branch-X.0")      # nobody knows this one

    bk = await api.item("Pool", filesystem=fs, properties=[], downloads=[], mount_clones=[], datasets=[])
    ds = await api.dataset(bk, "101")
    t = await api.item("DatasetTree", ds, name="tree.0", branches=[])
    ds["trees"].append(t)
    b1 = await api.item("Branch", t, name="branch-s1.0", snapshots=[])
    b2 = await api.item("Branch", t, name="branch-A.0", snapshots=[])
    t["branches"] += [b1, b2]
    s1 = await api.item("SnapshotInPoolInBranch", b1, name="s1", clones=[], origin=None, reference_count=1)
    s1["clones"].append(await api.item("Branch", s1, dataset="101", tree="tree.0", branch="branch-A.0"))
    b1["snapshots"].append(s1)
    for name in ("s2", "s9"):                                  # s9 is missing
        b2["snapshots"].append(await api.item("SnapshotInPoolInBranch", b2, name=name, clones=[], origin=None,
                                              reference_count=0))
    return bk


async def storage_scene(db: aiomysql.Connection, zpool: Pool) -> StorageScene:
    api = await Api.new_check(db)
    hv = await hypervisor(api, zpool)
    bk = await backup(api, zpool)
    missing = await api.item("Pool", filesystem=f"{zpool.name}/nothing", properties=[], downloads=[],
                             mount_clones=[], datasets=[])
    mds = await api.dataset(missing, "201")
    await api.snapshot(mds, "x")
    params = {"integrity_check_id": api.check_id, "pools": [hv, bk, missing]}
    return StorageScene(api, params, {"hv": hv, "bk": bk, "missing": missing})


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(i for i in items if i["name"] == name)


def assert_hypervisor_facts(facts: list[dict[str, Any]], hv: dict[str, Any]) -> None:
    fs = hv["filesystem"]
    # the pool and its working datasets exist; properties compared in the API's terms
    assert fact(facts, hv, "exists")["status"] == 1
    assert all(fact(facts, hv, n)["status"] == 1 for n in ("vpsadmin", "vpsadmin/download", "vpsadmin/mount"))
    ds101 = by_name(hv["datasets"], "101")
    props = {p["name"]: p for p in ds101["properties"]}
    atime = fact(facts, props["atime"], "is")
    assert (atime["status"], atime["expected"], atime["actual"], atime["severity"]) == (0, False, True, 1)
    assert atime["message"] == "atime is on"
    assert fact(facts, props["atime"], "inherited")["status"] == 1
    assert {(n, f["status"], f["actual"]) for n in ("compression", "quota", "refquota")
            for f in [fact(facts, props[n], "is")]} == {("compression", 1, True), ("quota", 1, 0), ("refquota", 1, 10)}
    assert fact(facts, props["quota"], "inherited")["status"] == 1          # quota never inherits
    assert not [f for f in facts if f["integrity_object_id"] == props["used"]["integrity_object_id"]]

    # snapshots: present ones with their clone counts, a missing one, the extra one as a stray under 101
    snaps = {s["name"]: s for s in ds101["snapshots"]}
    refs = fact(facts, snaps["s1"], "reference_count")
    assert (refs["status"], refs["actual"]) == (1, 1)
    assert fact(facts, snaps["s2"], "exists")["status"] == 1
    s3 = fact(facts, snaps["s3"], "exists")
    assert (s3["status"], s3["severity"], s3["message"]) == (0, 2, f"snapshot '{fs}/101@s3' does not exist")
    stray_snaps = strays(facts, "SnapshotInPool")
    assert [(r["message"], r["o_ancestry"]) for r in stray_snaps] == [
        (f"snapshot '{fs}/101@extra' should not exist", f"{hv['integrity_object_id']}/{ds101['integrity_object_id']}")]
    assert (stray_snaps[0]["expected"], stray_snaps[0]["actual"], stray_snaps[0]["severity"]) == (False, True, 1)
    assert stray_snaps[0]["ancestry_depth"] == 2 and stray_snaps[0]["node_id"] == 1

    # the mount clone, downloads (found, missing, stray)
    clone = fact(facts, hv["mount_clones"][0], "origin")
    assert (clone["status"], clone["actual"]) == (1, f"{fs}/101@s1")
    dl1, dl2 = hv["downloads"]
    assert (fact(facts, dl1, "dir_exists")["status"], fact(facts, dl1, "file_exists")["status"]) == (1, 1)
    assert (fact(facts, dl2, "dir_exists")["status"], fact(facts, dl2, "file_exists")["status"]) == (0, 0)
    assert [(r["message"], r["severity"]) for r in strays(facts, "SnapshotDownload")] == [
        ("download 'k3' exists while it should not", 0)]

    # a missing dataset: it and everything below it are missing; the unknown dataset is a stray of the pool
    ds102 = by_name(hv["datasets"], "102")
    assert fact(facts, ds102, "exists")["status"] == 0
    assert fact(facts, ds102["snapshots"][0], "exists")["message"] == f"dataset '{fs}/102' does not exist"
    assert fact(facts, ds102["datasets"][0], "exists")["status"] == 0
    assert [r["message"] for r in strays(facts, "DatasetInPool")] == [f"dataset '{fs}/103' should not exist"]


def assert_backup_facts(facts: list[dict[str, Any]], bk: dict[str, Any], missing: dict[str, Any]) -> None:
    # branches, the expected clone, the unexpected one (reported once), the missing snapshot
    fs = bk["filesystem"]
    tree = bk["datasets"][0]["trees"][0]
    b1, b2 = tree["branches"]
    assert fact(facts, tree, "exists")["status"] == 1 and fact(facts, b1, "exists")["status"] == 1
    expected_clone = fact(facts, b1["snapshots"][0]["clones"][0], "clones")
    assert (expected_clone["status"], expected_clone["actual"]) == (1, f"{fs}/101/tree.0/branch-A.0")
    assert [(r["message"], r["severity"]) for r in strays(facts, "Branch")] == [
        (f"unexpected clone '{fs}/101/tree.0/branch-X.0' of '{fs}/101/tree.0/branch-s1.0@s1'", 2)]
    assert [fact(facts, s, "exists")["status"] for s in b2["snapshots"]] == [1, 0]
    # the missing pool: exists false for the pool and what is below it
    assert fact(facts, missing, "exists")["status"] == 0
    assert fact(facts, missing["datasets"][0]["snapshots"][0], "exists")["message"] == \
        f"pool filesystem '{missing['filesystem']}' does not exist"


async def assert_finalized(db: Any, check_id: int, facts: list[dict[str, Any]], hv: dict[str, Any]) -> None:
    """Objects with only true facts are integral (v2.0 made every object with a normal or high fact broken), a
    false fact breaks its object, objects without facts stay undetermined; the check sums them up."""
    objects = await objects_of(db, check_id)
    status = {oid: o["status"] for oid, o in objects.items()}
    ds101 = by_name(hv["datasets"], "101")
    props = {p["name"]: p for p in ds101["properties"]}
    assert status[hv["integrity_object_id"]] == 1
    assert status[by_name(ds101["datasets"], "101/var")["integrity_object_id"]] == 1
    assert status[ds101["integrity_object_id"]] == 1                       # its extra snapshot is its own object
    assert status[props["atime"]["integrity_object_id"]] == 2
    assert status[by_name(ds101["snapshots"], "s3")["integrity_object_id"]] == 2
    assert status[props["used"]["integrity_object_id"]] == 0
    assert status[strays(facts, "SnapshotDownload")[0]["integrity_object_id"]] == 1   # low severity only
    counts = objects[props["atime"]["integrity_object_id"]]
    assert (counts["checked_facts"], counts["true_facts"], counts["false_facts"]) == (2, 1, 1)
    row = await check_row(db, check_id)
    assert {k: row[k] for k in expected_summary(facts, objects)} == expected_summary(facts, objects)
    assert row["status"] == 2 and row["finished_at"] is not None
    assert row["checked_objects"] < len(objects)                            # undetermined ones are not counted


async def test_storage_check_and_finalize(db: Any, icfg: Config, zpool: Pool) -> None:
    scene = await storage_scene(db, zpool)
    check_id = scene.api.check_id
    chain, rows = await run(db, icfg, (6005, scene.params), (6001, {"integrity_check_id": check_id}))
    assert_done(chain, rows)
    assert [r["t_success"] for r in rows] == [TSuccess.OK, TSuccess.OK], [output(r) for r in rows]
    facts = await facts_of(db, check_id)
    assert output(rows[0]) == {"facts": len(facts), "stray_objects": 4,
                               "false_facts": sum(1 for f in facts if f["status"] == 0)}
    assert_hypervisor_facts(facts, scene.items["hv"])
    assert_backup_facts(facts, scene.items["bk"], scene.items["missing"])
    await assert_finalized(db, check_id, facts, scene.items["hv"])
    assert output(rows[1])["broken_objects"] == (await check_row(db, check_id))["broken_objects"]


async def test_integral_pool_gives_integral_check(db: Any, icfg: Config, zpool: Pool) -> None:
    fs = f"{zpool.name}/ok"
    make_pool_fs(zpool, fs)
    zpool.zfs("create", f"{fs}/101")
    zpool.zfs("snapshot", f"{fs}/101@a")
    api = await Api.new_check(db)
    p = await api.item("Pool", filesystem=fs, properties=[], downloads=[], mount_clones=[], datasets=[])
    await api.prop(p, "compression", False, True)
    ds = await api.dataset(p, "101")
    await api.prop(ds, "compression", False, True)
    await api.prop(ds, "refquota", 0, False)
    await api.snapshot(ds, "a")
    chain, rows = await run(db, icfg, (6005, {"integrity_check_id": api.check_id, "pools": [p]}),
                            (6001, {"integrity_check_id": api.check_id}))
    assert_done(chain, rows)
    facts = await facts_of(db, api.check_id)
    assert facts and all(f["status"] == 1 for f in facts)
    assert any(f["severity"] == 2 for f in facts)                           # true high facts break nothing
    objects = await objects_of(db, api.check_id)
    assert {o["status"] for o in objects.values()} == {1}
    row = await check_row(db, api.check_id)
    assert (row["status"], row["broken_objects"], row["integral_objects"], row["false_facts"]) == \
        (1, 0, len(objects), 0)
    assert row["true_facts"] == row["checked_facts"] == len(facts)


# ------------------------------------------------------------------------------------------------------------
# Re-runs, command budget, failures


def handler_result(outcome: Any, t_id: int) -> Result:
    return Result(t_id=t_id, chain_id=1, direction=Direction.EXECUTE, status=outcome.status, output=outcome.output,
                  data=outcome.data)


async def exec_and_save(handlers: Direct, code: int, params: dict[str, Any], t_id: int = 5005) -> Any:
    """exec, then post_save in its own DB transaction, as the engine saves a result. post_save runs on a new
    handler with the result through JSON, as a journal replay after a database outage does."""
    outcome = await handlers.make(code, params, t_id=t_id).exec()
    replayed = Result.from_json(json.loads(json.dumps(handler_result(outcome, t_id).to_json())))
    async with handlers.ctx.db.transaction() as tx:
        await handlers.make(code, params, t_id=t_id).post_save(tx, replayed)
    return outcome


async def test_rerun_replaces_facts(db: Any, handlers: Direct, zpool: Pool) -> None:
    scene = await storage_scene(db, zpool)
    first = await exec_and_save(handlers, 6005, scene.params)
    before = await facts_of(db, scene.api.check_id)
    objects = len(await objects_of(db, scene.api.check_id))
    # a crash after the facts were committed, before the result was saved: the same transaction runs again
    second = await exec_and_save(handlers, 6005, scene.params)
    after = await facts_of(db, scene.api.check_id)
    assert first.output == second.output and first.output["facts"] == len(before)
    key = [(f["class_name"], f["name"], f["message"], f["status"]) for f in before]
    assert [(f["class_name"], f["name"], f["message"], f["status"]) for f in after] == key
    assert len(await objects_of(db, scene.api.check_id)) == objects             # strays not duplicated


async def test_zfs_calls_do_not_grow_with_the_tree(db: Any, handlers: Direct, zpool: Pool) -> None:
    api = await Api.new_check(db)

    async def pool_params(fs: str, datasets: int, snapshots: int) -> dict[str, Any]:
        make_pool_fs(zpool, fs)
        p = await api.item("Pool", filesystem=fs, properties=[], downloads=[], mount_clones=[], datasets=[])
        for i in range(datasets):
            zpool.zfs("create", f"{fs}/{100 + i}")
            ds = await api.dataset(p, str(100 + i))
            await api.prop(ds, "compression", False, True)
            for s in range(snapshots):
                zpool.zfs("snapshot", f"{fs}/{100 + i}@s{s}")
                await api.snapshot(ds, f"s{s}")
        return {"integrity_check_id": api.check_id, "pools": [p]}

    small = await pool_params(f"{zpool.name}/small", 1, 1)
    large = await pool_params(f"{zpool.name}/large", 6, 4)
    await handlers.make(6005, small).exec()      # warm up: driver probe, properties zfs-fuse does not know
    counts = []
    for params in (small, large):
        with record_calls() as calls:
            outcome = await handlers.make(6005, params).exec()
        assert outcome.output["false_facts"] == 0, outcome.output
        counts.append(calls.count("zfs"))
    assert counts == [1, 1], counts
    assert len(calls.calls) == 1 and calls.calls[0][1:3] == ["get", "-H"]


async def test_zfs_failure_becomes_facts(db: Any, icfg: Config, zpool: Pool) -> None:
    api = await Api.new_check(db)
    p = await api.item("Pool", filesystem=f"{zpool.name}/x", properties=[], downloads=[], mount_clones=[],
                       datasets=[])
    ds = await api.dataset(p, "101")
    broken = dataclasses.replace(icfg, bin={**icfg.bin, "zfs": "/nonexistent/zfs"})
    chain, rows = await run(db, broken, (6005, {"integrity_check_id": api.check_id, "pools": [p]}),
                            (6001, {"integrity_check_id": api.check_id}))
    assert_done(chain, rows)
    assert rows[0]["t_success"] == TSuccess.WARNING
    assert "/nonexistent/zfs" in output(rows[0])["errors"][0]
    facts = await facts_of(db, api.check_id)
    assert [(f["integrity_object_id"], f["status"]) for f in facts] == [(p["integrity_object_id"], 0)]
    assert facts[0]["message"].startswith(f"cannot read pool filesystem '{zpool.name}/x'")
    objects = await objects_of(db, api.check_id)
    assert objects[ds["integrity_object_id"]]["status"] == 0                # unreadable is not missing
    assert (await check_row(db, api.check_id))["status"] == 2


# ------------------------------------------------------------------------------------------------------------
# 6001 on hand-made facts


async def test_finalize_counts(db: Any, icfg: Config) -> None:
    api = await Api.new_check(db)
    other = await Api.new_check(db)
    cases = {  # object -> facts (status, severity)
        "true_high": [(1, 2), (1, 1)],
        "false_high": [(1, 2), (0, 2)],
        "false_low": [(1, 1), (0, 0)],
        "none": [],
    }
    ids = {}
    async with db.cursor() as cur:
        for key, fs in cases.items():
            ids[key] = (await api.item("X"))["integrity_object_id"]
            for st, sev in fs:
                await cur.execute("INSERT INTO integrity_facts (integrity_object_id, name, expected_value, "
                                  "actual_value, status, severity) VALUES (%s, 'f', '', '', %s, %s)",
                                  (ids[key], st, sev))
        noise = (await other.item("X"))["integrity_object_id"]              # another check: not counted
        await cur.execute("INSERT INTO integrity_facts (integrity_object_id, name, expected_value, actual_value, "
                          "status, severity) VALUES (%s, 'f', '', '', 0, 2)", (noise,))
    for _ in range(2):                                                       # a re-run changes nothing
        chain, rows = await run(db, icfg, (6001, {"integrity_check_id": api.check_id}))
        assert_done(chain, rows)
        objects = await objects_of(db, api.check_id)
        assert {k: (objects[i]["status"], objects[i]["checked_facts"], objects[i]["true_facts"],
                    objects[i]["false_facts"]) for k, i in ids.items()} == {
            "true_high": (1, 2, 2, 0), "false_high": (2, 2, 1, 1), "false_low": (1, 2, 1, 1), "none": (0, 0, 0, 0)}
        row = await check_row(db, api.check_id)
        assert {k: row[k] for k in ("status", "checked_objects", "integral_objects", "broken_objects",
                                    "checked_facts", "true_facts", "false_facts")} == {
            "status": 2, "checked_objects": 3, "integral_objects": 2, "broken_objects": 1, "checked_facts": 6,
            "true_facts": 4, "false_facts": 2}
    assert (await check_row(db, other.check_id))["status"] == 0
    assert (await objects_of(db, other.check_id))[noise]["status"] == 0


async def test_finalize_of_unknown_check_fails(db: Any, icfg: Config) -> None:
    chain, rows = await run(db, icfg, (6001, {"integrity_check_id": 999}))
    assert chain["state"] == ChainState.FAILED
    assert output(rows[0])["error"] == "integrity check 999 does not exist"


# ------------------------------------------------------------------------------------------------------------
# 6006 against the fake vzctl/vzlist


def vz_config(cfg: Config, fake: FakeVz, **over: str) -> Config:
    vz = VzConfig(vzctl=str(fake.vzctl_bin), vzlist=str(fake.vzlist_bin), vz_root=str(fake.root / "vz"),
                  vz_conf=str(fake.root / "etc" / "vz"), ve_private="/wrong/%{veid}")
    return dataclasses.replace(cfg, vz=dataclasses.replace(vz, **over))


async def test_vps_check(db: Any, icfg: Config, fake: FakeVz) -> None:
    vz = Vz(vzctl=str(fake.vzctl_bin), vzlist=str(fake.vzlist_bin), conf_dir=fake.conf_dir)
    for veid in (101, 102, 103):
        await create_ct(vz, veid, hostname=f"ct{veid}")
    await vz.set(101, {"ipadd": ["10.0.0.1"], "cpus": 2, "cpulimit": 200})
    await vz.set(102, {"ipadd": ["10.0.0.2", "10.0.0.9"]})
    await vz.start(101, onboot=True)
    # the node's ve_private wins over the config (v2.0 loaded it from the DB at start)
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO servers (server_id, server_name, server_type, server_location, server_ip4, "
                          "environment_id, ve_private) VALUES (1, 'node1', 'node', 1, '192.0.2.1', 1, %s)",
                          (f"{fake.root}/vz/private/%{{veid}}",))
    api = await Api.new_check(db)
    items = {}
    for veid, status, hostname, cpu, ips in ((101, True, "ct101", 2, ["10.0.0.1"]),
                                             (102, True, "other", 4, ["10.0.0.2", "10.0.0.3"]),
                                             (104, False, "ct104", 1, ["10.0.0.4"])):
        vps = await api.item("Vps", vps_id=veid, status=status, hostname=hostname,
                             os_template="debian-8.0-x86_64-minimal", memory=256, swap=512, cpu=cpu,
                             ip_addresses=[])
        for addr in ips:
            vps["ip_addresses"].append(await api.item("IpAddress", vps, addr=addr, version=4))
        items[veid] = vps
    params = {"integrity_check_id": api.check_id, "vpses": list(items.values())}
    chain, rows = await run(db, vz_config(icfg, fake), (6006, params), (6001, {"integrity_check_id": api.check_id}))
    assert_done(chain, rows)
    assert rows[0]["t_success"] == TSuccess.OK, output(rows[0])
    facts = await facts_of(db, api.check_id)

    ok = [f["name"] for f in facts if f["integrity_object_id"] == items[101]["integrity_object_id"]]
    assert ok == ["exists", "status", "onboot", "private", "root", "hostname", "os_template", "memory", "swap",
                  "cpu", "cpulimit"]
    assert all(fact(facts, items[101], n)["status"] == 1 for n in ok)
    assert fact(facts, items[101], "private")["actual"] == f"{fake.root}/vz/private/101"
    assert fact(facts, items[101]["ip_addresses"][0], "exists")["status"] == 1
    wrong = {n: fact(facts, items[102], n)["status"] for n in ("status", "onboot", "hostname", "cpu", "memory")}
    assert wrong == {"status": 0, "onboot": 0, "hostname": 0, "cpu": 0, "memory": 1}
    assert fact(facts, items[102], "cpu")["actual"] == 0                  # vzlist's "unset"
    assert fact(facts, items[102], "hostname")["severity"] == 0
    assert [fact(facts, ip, "exists")["status"] for ip in items[102]["ip_addresses"]] == [1, 0]
    assert fact(facts, items[104], "exists")["message"] == "VPS 104 does not exist"
    assert fact(facts, items[104]["ip_addresses"][0], "exists")["status"] == 0
    assert [(r["message"], r["o_ancestry"]) for r in strays(facts, "IpAddress")] == [
        ("IP address '10.0.0.9' should not be present", str(items[102]["integrity_object_id"]))]
    assert [(r["message"], r["o_ancestry"], r["severity"]) for r in strays(facts, "Vps")] == [
        ("VPS 103 should not exist", None, 2)]

    objects = await objects_of(db, api.check_id)
    assert objects[items[101]["integrity_object_id"]]["status"] == 1
    assert objects[items[102]["integrity_object_id"]]["status"] == 2
    row = await check_row(db, api.check_id)
    assert {k: row[k] for k in expected_summary(facts, objects)} == expected_summary(facts, objects)
    await vz.stop(101)


async def test_vzlist_failure_becomes_facts(db: Any, icfg: Config, fake: FakeVz) -> None:
    api = await Api.new_check(db)
    vps = await api.item("Vps", vps_id=101, status=True, hostname="x", os_template="t", memory=1, swap=1, cpu=1,
                         ip_addresses=[])
    broken = vz_config(icfg, fake, vzlist="/nonexistent/vzlist")
    chain, rows = await run(db, broken, (6006, {"integrity_check_id": api.check_id, "vpses": [vps]}))
    assert_done(chain, rows)
    assert rows[0]["t_success"] == TSuccess.WARNING
    facts = await facts_of(db, api.check_id)
    assert [(f["name"], f["status"]) for f in facts] == [("exists", 0)]
    assert facts[0]["message"].startswith("cannot list VPSes: ") and "/nonexistent/vzlist" in facts[0]["message"]


# ------------------------------------------------------------------------------------------------------------
# Hostile params


_ids = itertools.count(1)


def obj(**fields: Any) -> dict[str, Any]:
    return {"integrity_object_id": next(_ids), "ancestry": None, **fields}


def storage(**fields: Any) -> dict[str, Any]:
    return {"integrity_check_id": 1, "pools": [obj(filesystem="tank/vz", **fields)]}


def ds(**fields: Any) -> dict[str, Any]:
    return obj(**{"name": "101", **fields})


HOSTILE: list[tuple[type[Any], dict[str, Any], str]] = [
    (integrity.StorageParams, {"pools": []}, "integrity_check_id"),
    (integrity.StorageParams, {"integrity_check_id": 0, "pools": []}, "integrity_check_id"),
    (integrity.StorageParams, {"integrity_check_id": 1, "pools": [obj(filesystem="tank/vz; rm -rf /")]},
     "pools[0].filesystem"),
    (integrity.StorageParams, {"integrity_check_id": 1, "pools": [obj(filesystem="-o/x")]}, "pools[0].filesystem"),
    (integrity.StorageParams, {"integrity_check_id": 1, "pools": [{"filesystem": "tank"}]},
     "pools[0].integrity_object_id"),
    (integrity.StorageParams, storage(ancestry="1/../2"), "pools[0].ancestry"),
    (integrity.StorageParams, storage(datasets=[ds(name="../etc")]), "pools[0].datasets[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(datasets=[ds(name="101/x@y")])]),
     "pools[0].datasets[0].datasets[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(datasets=["101/var"])]), "pools[0].datasets[0].datasets[0]"),
    (integrity.StorageParams, storage(datasets=[ds(datasets=[ds(datasets=[obj()])])]),
     "pools[0].datasets[0].datasets[0].datasets[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(datasets=[ds(snapshots=[obj(name=5)])])]),
     "pools[0].datasets[0].datasets[0].snapshots[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(snapshots=[obj(name="a@b")])]),
     "pools[0].datasets[0].snapshots[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(snapshots=[obj(name="a", reference_count=-1)])]),
     "pools[0].datasets[0].snapshots[0].reference_count"),
    (integrity.StorageParams, storage(datasets=[ds(properties=[obj(name="quota;x", value=1)])]),
     "pools[0].datasets[0].properties[0].name"),
    (integrity.StorageParams, storage(properties=[obj(name="sharenfs", value="a\nb")]),
     "pools[0].properties[0].value"),
    (integrity.StorageParams, storage(properties=[obj(name="sharenfs", value={"x": 1})]),
     "pools[0].properties[0].value"),
    (integrity.StorageParams, storage(datasets=[ds(trees=[obj(name="tree.0/..", branches=[])])]),
     "pools[0].datasets[0].trees[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(trees=[obj(name="tree.0", branches=[obj(name="-b")])])]),
     "pools[0].datasets[0].trees[0].branches[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(trees=[obj(name="tree.0", branches=[obj(
        name="b", snapshots=[obj(name="s", clones=[obj(dataset="101", tree="t", branch="a/b")])])])])]),
     "pools[0].datasets[0].trees[0].branches[0].snapshots[0].clones[0].branch"),
    (integrity.StorageParams, storage(downloads=[obj(secret_key="../../etc", file_name="f")]),
     "pools[0].downloads[0].secret_key"),
    (integrity.StorageParams, storage(downloads=[obj(secret_key="abc", file_name="..")]),
     "pools[0].downloads[0].file_name"),
    (integrity.StorageParams, storage(downloads=[obj(secret_key="abc", file_name="a/b")]),
     "pools[0].downloads[0].file_name"),
    (integrity.StorageParams, storage(mount_clones=[obj(id=-3, dataset="101", name="s")]),
     "pools[0].mount_clones[0].id"),
    (integrity.StorageParams, storage(mount_clones=[obj(id=3, dataset="101", name="s s")]),
     "pools[0].mount_clones[0].name"),
    (integrity.StorageParams, storage(datasets=[ds(name="a" * 300)]), "pools[0].datasets[0].name"),
    (integrity.VpsParams, {"integrity_check_id": 1, "vpses": [obj(vps_id=-1)]}, "vpses[0].vps_id"),
    (integrity.VpsParams, {"integrity_check_id": 1, "vpses": [obj(vps_id="101; reboot")]}, "vpses[0].vps_id"),
    (integrity.VpsParams, {"integrity_check_id": 1, "vpses": [obj(vps_id=101, os_template="../x")]},
     "vpses[0].os_template"),
    (integrity.VpsParams, {"integrity_check_id": 1, "vpses": [obj(vps_id=101, hostname="a\nb")]},
     "vpses[0].hostname"),
    (integrity.VpsParams, {"integrity_check_id": 1, "vpses": [obj(vps_id=101, memory=-5)]}, "vpses[0].memory"),
    (integrity.VpsParams, {"integrity_check_id": 1, "vpses": [obj(vps_id=101, ip_addresses=[obj(addr="1.2.3.4 x")])]},
     "vpses[0].ip_addresses[0].addr"),
    (integrity.FinalizeParams, {"integrity_check_id": "1"}, "integrity_check_id"),
]


@pytest.mark.parametrize(("cls", "params", "field"), HOSTILE, ids=[h[2] + f"#{i}" for i, h in enumerate(HOSTILE)])
def test_hostile_params_name_the_field(cls: type[Any], params: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_params(cls, params)
    assert err.value.field == field, str(err.value)


def test_api_shaped_params_parse() -> None:
    p = parse_params(integrity.StorageParams, storage(
        properties=[obj(name="compression", value=True, inherited=True), obj(name="sharenfs", value="")],
        downloads=[obj(secret_key="ab" * 50, file_name="101_var__2015-01-01T00-00-00.tar.gz")],
        mount_clones=[obj(id=7, dataset="101", name="2015-01-01T00:00:00")],
        datasets=[ds(snapshots=[obj(name="2015-01-01T00:00:00", reference_count=1)], trees=[obj(
            name="tree.0", branches=[obj(name="branch-2015-01-01T00:00:00.0", snapshots=[obj(
                name="2015-01-01T00:00:00", clones=[obj(dataset="101", tree="tree.0", branch="branch-x.1")],
                origin={"dataset": "101", "tree": "tree.0", "branch": "b", "snapshot": "s"})])])],
            datasets=[ds(name="101/var")])]))
    assert p.pools[0].datasets[0].trees[0].branches[0].snapshots[0].clones[0].branch == "branch-x.1"
    assert p.pools[0].properties[1].value == ""
    assert isinstance(p.pools[0].datasets[0].datasets[0], integrity.DatasetItem)
    assert p.pools[0].datasets[0].datasets[0].name == "101/var"


async def test_hostile_params_fail_the_transaction_naming_the_field(db: Any, icfg: Config) -> None:
    chain, rows = await run(db, icfg, (6005, storage(datasets=[ds(name="101/../../etc")])))
    assert chain["state"] == ChainState.FAILED
    assert output(rows[0])["field"] == "pools[0].datasets[0].name"
    assert output(rows[0])["error"].startswith("Bad param: pools[0].datasets[0].name")


def test_ruby_yaml_fits_the_columns() -> None:
    assert integrity.ruby_yaml(True) == "--- true\n...\n"
    assert integrity.ruby_yaml(5) == "--- 5\n...\n"
    assert yaml.safe_load(integrity.ruby_yaml(None)) is None
    assert yaml.safe_load(integrity.ruby_yaml("2015-01-01T00:00:00")) == "2015-01-01T00:00:00"
    long = integrity.ruby_yaml("'" * 1000)
    assert len(long) <= 255 and yaml.safe_load(long).endswith("...")


def test_handlers_are_registered() -> None:
    from vpsadmind.handlers.base import HANDLERS

    assert {c: HANDLERS[c].__name__ for c in (6005, 6006, 6001)} == {
        6005: "StorageCheck", 6006: "VpsCheck", 6001: "FinalizeCheck"}
    assert all(HANDLERS[c].idempotent for c in (6005, 6006, 6001))
