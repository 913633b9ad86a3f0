"""Each storage handler's exec and rollback, driven as whole chains through a real engine, MariaDB and zfs-fuse.

A chain that ends with a failing probe rolls back everything before it; the pool must then be exactly as it
was (every dataset, snapshot and non-volatile property with its source).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import aiomysql
import pytest

from tests.storage.conftest import Pool, assert_done, failing, insert_snapshot, output, run_chain, snapshot_row
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder

pytestmark = pytest.mark.slow

SNAP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


def chain(*steps: tuple[int, dict[str, Any]], fail: bool = False) -> ChainBuilder:
    b = ChainBuilder("storage")
    for code, params in steps:
        b.append(code, server=1, params=params)
    return failing(b) if fail else b


async def rolled_back(db: aiomysql.Connection, cfg: Config, pool: Pool, *steps: tuple[int, dict[str, Any]]) -> None:
    """Run ``steps`` plus a failing probe; the chain fails and the pool is exactly as before."""
    before = pool.state()
    state, rows = await run_chain(db, cfg, chain(*steps, fail=True))
    assert state["state"] == ChainState.FAILED, [(r["t_type"], output(r)) for r in rows]
    assert [r["t_done"] for r in rows[:-1]] == [2] * len(steps), [(r["t_type"], output(r)) for r in rows]
    assert pool.state() == before


# ------------------------------------------------------------------------------------------------------------
# 5250 Pool::Create


async def test_pool_create_makes_working_datasets(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    params = {"pool_fs": fs, "options": {"compression": True, "quota": 100}}
    await rolled_back(db, cfg, pool, (5250, params))
    assert not pool.exists(fs)

    state, rows = await run_chain(db, cfg, chain((5250, params)))
    assert_done(state, rows)
    for name in (fs, f"{fs}/vpsadmin", f"{fs}/vpsadmin/mount", f"{fs}/vpsadmin/download"):
        assert pool.exists(name)
    assert pool.prop(fs, "compression") == ("on", "local")
    assert pool.prop(fs, "quota") == (str(100 * 1024 * 1024), "local")
    assert output(rows[0])["created"] == [fs, f"{fs}/vpsadmin", f"{fs}/vpsadmin/mount", f"{fs}/vpsadmin/download"]


async def test_pool_create_rollback_keeps_an_existing_pool_dataset(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/existing"
    pool.zfs("create", fs)
    (pool.mounted_path(fs) / "data").write_text("keep me")
    await rolled_back(db, cfg, pool, (5250, {"pool_fs": fs}))
    assert (pool.mounted_path(fs) / "data").read_text() == "keep me"


async def test_pool_create_refuses_existing_dataset_with_other_options(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/other"
    pool.zfs("create", "-o", "compression=off", fs)
    before = pool.state()
    state, rows = await run_chain(db, cfg, chain((5250, {"pool_fs": fs, "options": {"compression": True}})))
    assert state["state"] == ChainState.FAILED
    assert "compression" in output(rows[0])["error"]
    assert pool.state() == before


# ------------------------------------------------------------------------------------------------------------
# 5201 Dataset::Create, 5203 Dataset::Destroy


async def test_dataset_create_with_private_and_options(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    pool.zfs("create", fs)
    top = {"pool_fs": fs, "name": "101", "options": {"atime": False, "refquota": 0}, "create_private": True}
    sub = {"pool_fs": fs, "name": "101/var/www", "options": None, "create_private": True}
    await rolled_back(db, cfg, pool, (5201, top), (5201, {**sub, "name": "101/var"}))

    state, rows = await run_chain(db, cfg, chain((5201, top), (5201, sub)))
    assert_done(state, rows)
    assert (pool.mounted_path(f"{fs}/101") / "private").is_dir()
    assert (pool.mounted_path(f"{fs}/101/var/www") / "private").is_dir()
    assert pool.prop(f"{fs}/101", "atime") == ("off", "local")
    assert pool.prop(f"{fs}/101", "refquota") == ("0", "local")
    assert pool.exists(f"{fs}/101/var")  # -p made the parent


async def test_dataset_destroy(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    pool.zfs("create", "-p", f"{fs}/101")
    params = {"pool_fs": fs, "name": "101"}
    state, rows = await run_chain(db, cfg, chain((5203, params)))
    assert_done(state, rows)
    assert not pool.exists(f"{fs}/101")
    state, rows = await run_chain(db, cfg, chain((5203, params)))  # already gone: fine
    assert_done(state, rows)


# ------------------------------------------------------------------------------------------------------------
# 5204 Dataset::Snapshot, 5215 Dataset::GroupSnapshot, 5212 Dataset::DestroySnapshot


async def test_snapshot_post_save_writes_the_name(db: Any, cfg: Config, pool: Pool) -> None:
    ds = f"{pool.name}/vz/101"
    pool.zfs("create", "-p", ds)
    sid = await insert_snapshot(db)
    params = {"pool_fs": f"{pool.name}/vz", "dataset_name": "101", "snapshot_id": sid}
    await rolled_back(db, cfg, pool, (5204, params))  # the rollback found the name post_save had written

    before = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    state, rows = await run_chain(db, cfg, chain((5204, params)))
    assert_done(state, rows)
    (name,) = pool.snapshots(ds)
    assert SNAP_RE.match(name)
    assert output(rows[0])["created_at"] == name
    row = await snapshot_row(db, sid)
    assert row["name"] == name == output(rows[0])["name"]
    assert row["created_at"] == dt.datetime.strptime(name, "%Y-%m-%dT%H:%M:%S")
    assert before <= row["created_at"] <= dt.datetime.now(dt.UTC).replace(tzinfo=None)  # UTC, not local time


async def test_two_snapshots_in_one_second_get_distinct_names(db: Any, cfg: Config, pool: Pool) -> None:
    pool.zfs("create", "-p", f"{pool.name}/vz/101")
    ids = [await insert_snapshot(db), await insert_snapshot(db)]
    steps = [(5204, {"pool_fs": f"{pool.name}/vz", "dataset_name": "101", "snapshot_id": i}) for i in ids]
    state, rows = await run_chain(db, cfg, chain(*steps))
    assert_done(state, rows)
    names = [(await snapshot_row(db, i))["name"] for i in ids]
    assert names[0] != names[1] and pool.snapshots(f"{pool.name}/vz/101") == names


async def test_group_snapshot_names_all_rows(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    for ds in ("101", "101/a", "102"):
        pool.zfs("create", "-p", f"{fs}/{ds}")
    ids = [await insert_snapshot(db, dataset_id=n) for n in (1, 2, 3)]
    params = {"snapshots": [{"pool_fs": fs, "dataset_name": ds, "snapshot_id": sid}
                            for ds, sid in zip(("101", "101/a", "102"), ids, strict=True)]}
    await rolled_back(db, cfg, pool, (5215, params))

    state, rows = await run_chain(db, cfg, chain((5215, params)))
    assert_done(state, rows)
    names = {(await snapshot_row(db, sid))["name"] for sid in ids}
    assert len(names) == 1
    (name,) = names
    for ds in ("101", "101/a", "102"):
        assert pool.snapshots(f"{fs}/{ds}") == [name]


async def test_destroy_snapshot_takes_the_name_from_the_db(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    pool.zfs("create", "-p", f"{fs}/101")
    for s in ("2020-01-01T00:00:00", "2020-01-02T00:00:00"):
        pool.zfs("snapshot", f"{fs}/101@{s}")
    sid = await insert_snapshot(db, "2020-01-01T00:00:00")
    # the API sends the enum's symbol name, so the (stale) name in params must not be used
    params = {"pool_fs": fs, "dataset_name": "101",
              "snapshot": {"id": sid, "name": "2020-01-02T00:00:00", "confirmed": "confirmed"}}
    state, rows = await run_chain(db, cfg, chain((5212, params)))
    assert_done(state, rows)
    assert pool.snapshots(f"{fs}/101") == ["2020-01-02T00:00:00"]
    params["snapshot"] = {"id": 999999, "name": "2020-01-02T00:00:00", "confirmed": 1}
    state, rows = await run_chain(db, cfg, chain((5212, params)))
    assert_done(state, rows)
    assert pool.snapshots(f"{fs}/101") == []


async def test_destroy_snapshot_in_a_branch(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/backup"
    branch = f"{fs}/101/tree.0/branch-x.0"
    pool.zfs("create", "-p", branch)
    pool.zfs("snapshot", f"{branch}@2020-01-01T00:00:00")
    sid = await insert_snapshot(db, "2020-01-01T00:00:00")
    params = {"pool_fs": fs, "dataset_name": "101", "tree": "tree.0", "branch": "branch-x.0",
              "snapshot": {"id": sid, "name": "2020-01-01T00:00:00", "confirmed": "confirmed"}}
    state, rows = await run_chain(db, cfg, chain((5212, params)))
    assert_done(state, rows)
    assert pool.snapshots(branch) == []


async def test_destroy_snapshot_rejects_a_bad_name_from_the_db(db: Any, cfg: Config, pool: Pool) -> None:
    pool.zfs("create", "-p", f"{pool.name}/vz/101")
    sid = await insert_snapshot(db, "2020-01-01T00:00:00 (unconfirmed)")
    params = {"pool_fs": f"{pool.name}/vz", "dataset_name": "101",
              "snapshot": {"id": sid, "name": None, "confirmed": "unconfirmed"}}
    state, rows = await run_chain(db, cfg, chain((5212, params)))
    assert state["state"] == ChainState.FAILED
    assert "snapshots.name" in output(rows[0])["error"]


# ------------------------------------------------------------------------------------------------------------
# 5208 LocalRollback, 5209 PrepareRollback


async def test_local_rollback_reverts_data_and_drops_newer_snapshots(db: Any, cfg: Config, pool: Pool) -> None:
    ds = f"{pool.name}/vz/101"
    pool.zfs("create", "-p", ds)
    f = pool.mounted_path(ds) / "file"
    for i, s in enumerate(("2020-01-01T00:00:00", "2020-01-02T00:00:00", "2020-01-03T00:00:00")):
        f.write_text(f"v{i}")
        pool.zfs("snapshot", f"{ds}@{s}")
    f.write_text("latest")
    params = {"pool_fs": f"{pool.name}/vz", "dataset_name": "101", "snapshot": "2020-01-02T00:00:00"}
    state, rows = await run_chain(db, cfg, chain((5208, params)))
    assert_done(state, rows)
    assert pool.snapshots(ds) == ["2020-01-01T00:00:00", "2020-01-02T00:00:00"]
    assert (pool.mounted_path(ds) / "file").read_text() == "v1"


async def test_prepare_rollback(db: Any, cfg: Config, pool: Pool) -> None:
    pool.zfs("create", "-p", f"{pool.name}/vz/101")
    params = {"pool_fs": f"{pool.name}/vz", "dataset_name": "101"}
    await rolled_back(db, cfg, pool, (5209, params))
    state, rows = await run_chain(db, cfg, chain((5209, params)))
    assert_done(state, rows)
    assert pool.prop(f"{pool.name}/vz/101.rollback", "canmount") == ("noauto", "local")


# ------------------------------------------------------------------------------------------------------------
# 5216 Dataset::Set, 5219 Dataset::Inherit


async def test_set_translates_values(db: Any, cfg: Config, pool: Pool) -> None:
    ds = f"{pool.name}/vz/101"
    pool.zfs("create", "-p", ds)
    pool.zfs("set", "refquota=5M", ds)
    params = {"pool_fs": f"{pool.name}/vz", "name": "101", "properties": {
        "atime": [True, False], "compression": [False, True], "quota": [0, 10], "refquota": [5, None],
        "recordsize": [131072, 16384]}}
    state, rows = await run_chain(db, cfg, chain((5216, params)))
    assert_done(state, rows)
    assert pool.prop(ds, "atime") == ("off", "local")
    assert pool.prop(ds, "compression") == ("on", "local")
    assert pool.prop(ds, "quota") == (str(10 * 1024 * 1024), "local")
    assert pool.prop(ds, "refquota") == ("0", "local")
    assert pool.prop(ds, "recordsize") == ("16384", "local")

    params = {"pool_fs": f"{pool.name}/vz", "name": "101", "properties": {"quota": [10, 0]}}
    state, rows = await run_chain(db, cfg, chain((5216, params)))
    assert_done(state, rows)
    assert pool.prop(ds, "quota") == ("0", "local")  # 0 MiB means none


async def test_set_and_inherit_roll_back_exactly(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    pool.zfs("create", "-p", f"{fs}/101")
    pool.zfs("set", "compression=on", fs)
    pool.zfs("set", "atime=off", f"{fs}/101")
    set_params = {"pool_fs": fs, "name": "101", "properties": {
        "compression": [True, False], "atime": [False, True], "recordsize": [131072, 8192]}}
    inherit_params = {"pool_fs": fs, "name": "101", "properties": {"atime": True, "recordsize": 8192}}
    await rolled_back(db, cfg, pool, (5216, set_params), (5219, inherit_params))

    state, rows = await run_chain(db, cfg, chain((5219, {"pool_fs": fs, "name": "101",
                                                         "properties": {"atime": False}})))
    assert_done(state, rows)
    assert pool.prop(f"{fs}/101", "atime") == ("on", "default")


# ------------------------------------------------------------------------------------------------------------
# 5217 CloneSnapshot, 5218 RemoveClone, 5224 CloneSnapshotName


def _clone_setup(pool: Pool, *, branch: bool = False) -> tuple[str, str]:
    fs = f"{pool.name}/vz"
    pool.zfs("create", "-p", f"{fs}/vpsadmin/mount")
    src = f"{fs}/101/tree.0/branch-a.0" if branch else f"{fs}/101"
    pool.zfs("create", "-p", src)
    (pool.mounted_path(src) / "f").write_text("snap")
    pool.zfs("snapshot", f"{src}@2020-01-01T00:00:00")
    return fs, src


async def test_clone_snapshot_and_remove_clone(db: Any, cfg: Config, pool: Pool) -> None:
    fs, src = _clone_setup(pool)
    params = {"pool_fs": fs, "dataset_name": "101", "snapshot_id": 7, "snapshot": "2020-01-01T00:00:00"}
    clone = f"{fs}/vpsadmin/mount/7.snapshot"
    await rolled_back(db, cfg, pool, (5217, params))
    state, rows = await run_chain(db, cfg, chain((5217, params)))
    assert_done(state, rows)
    assert pool.prop(clone, "origin")[0] == f"{src}@2020-01-01T00:00:00"
    assert (pool.mounted_path(clone) / "f").read_text() == "snap"

    await rolled_back(db, cfg, pool, (5218, params))  # rollback clones it again
    assert pool.exists(clone)
    state, rows = await run_chain(db, cfg, chain((5218, params)))
    assert_done(state, rows)
    assert not pool.exists(clone)


async def test_remove_clone_rollback_reclones_from_the_branch(db: Any, cfg: Config, pool: Pool) -> None:
    fs, src = _clone_setup(pool, branch=True)
    params = {"pool_fs": fs, "dataset_name": "101", "snapshot_id": 8, "snapshot": "2020-01-01T00:00:00",
              "dataset_tree": "tree.0", "branch": "branch-a.0"}
    clone = f"{fs}/vpsadmin/mount/8.snapshot"
    state, rows = await run_chain(db, cfg, chain((5217, params)))
    assert_done(state, rows)
    assert pool.prop(clone, "origin")[0] == f"{src}@2020-01-01T00:00:00"
    await rolled_back(db, cfg, pool, (5218, params))
    assert pool.prop(clone, "origin")[0] == f"{src}@2020-01-01T00:00:00"


async def test_clone_snapshot_name(db: Any, cfg: Config) -> None:
    orig = await insert_snapshot(db, "2020-01-01T00:00:00")
    copy = await insert_snapshot(db, "(unconfirmed)")
    params = {"snapshots": {str(orig): ["(unconfirmed)", copy]}}
    state, rows = await run_chain(db, cfg, chain((5224, params), fail=True))
    assert state["state"] == ChainState.FAILED
    assert (await snapshot_row(db, copy))["name"] == "(unconfirmed)"
    state, rows = await run_chain(db, cfg, chain((5224, params)))
    assert_done(state, rows)
    assert (await snapshot_row(db, copy))["name"] == "2020-01-01T00:00:00"


# ------------------------------------------------------------------------------------------------------------
# 5213/5214 trees, 5206/5207 branches


async def test_tree_and_branch_create_and_destroy(db: Any, cfg: Config, pool: Pool) -> None:
    fs = f"{pool.name}/backup"
    pool.zfs("create", "-p", f"{fs}/101")
    tree = {"pool_fs": fs, "dataset_name": "101", "tree": "tree.0"}
    branch = {"pool_fs": fs, "dataset_name": "101", "tree": "tree.0", "new_branch_name": "branch-x.0"}
    await rolled_back(db, cfg, pool, (5213, tree), (5206, branch))
    state, rows = await run_chain(db, cfg, chain((5213, tree), (5206, branch)))
    assert_done(state, rows)
    assert pool.exists(f"{fs}/101/tree.0/branch-x.0")
    destroy = {"pool_fs": fs, "dataset_name": "101", "tree": "tree.0", "branch": "branch-x.0"}
    state, rows = await run_chain(db, cfg, chain((5207, destroy), (5214, tree)))
    assert_done(state, rows)
    assert not pool.exists(f"{fs}/101/tree.0")


async def test_long_chain_rolls_back_in_reverse_to_the_exact_state(db: Any, cfg: Config, pool: Pool) -> None:
    """A VPS-create-like chain touching every reversible storage type, failing at the end."""
    fs = f"{pool.name}/vz"
    backup = f"{pool.name}/backup"
    pool.zfs("create", "-p", f"{backup}/vpsadmin/mount")
    branch = f"{backup}/101/tree.0/branch-a.0"
    pool.zfs("create", "-p", branch)
    for s in ("2020-01-01T00:00:00", "2020-01-02T00:00:00"):
        pool.zfs("snapshot", f"{branch}@{s}")
    sid = await insert_snapshot(db)
    orig = await insert_snapshot(db, "2020-01-01T00:00:00")
    ds = {"pool_fs": fs, "dataset_name": "101"}
    await rolled_back(
        db, cfg, pool,
        (5250, {"pool_fs": fs, "options": {"atime": False}}),
        (5201, {"pool_fs": fs, "name": "101", "options": {"refquota": 100}, "create_private": True}),
        (5201, {"pool_fs": fs, "name": "101/data", "options": None, "create_private": True}),
        (5216, {"pool_fs": fs, "name": "101", "properties": {"compression": [False, True]}}),
        (5219, {"pool_fs": fs, "name": "101/data", "properties": {"atime": False}}),
        (5204, {**ds, "snapshot_id": sid}),
        (5215, {"snapshots": [{**ds, "snapshot_id": sid}, {**ds, "dataset_name": "101/data", "snapshot_id": sid}]}),
        (5217, {"pool_fs": backup, "dataset_name": "101", "snapshot_id": orig, "snapshot": "2020-01-01T00:00:00",
                "dataset_tree": "tree.0", "branch": "branch-a.0"}),
        (5224, {"snapshots": {str(orig): ["(unconfirmed)", sid]}}),
        (5209, ds),
        (5213, {"pool_fs": backup, "dataset_name": "101", "tree": "tree.1"}),
        (5206, {"pool_fs": backup, "dataset_name": "101", "tree": "tree.1", "new_branch_name": "branch-b.0"}),
        (5206, {"pool_fs": backup, "dataset_name": "101", "tree": "tree.0", "new_branch_name": "branch-c.0",
                "from_branch_name": "branch-a.0", "from_snapshot": "2020-01-01T00:00:00"}),
    )
    assert pool.snapshots(branch) == ["2020-01-01T00:00:00", "2020-01-02T00:00:00"]
