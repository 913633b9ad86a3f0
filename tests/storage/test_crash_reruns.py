"""Running a storage transaction again after a crash (contract 4.5) is safe: the idempotent handlers' exec
runs twice, the others' ``recover`` looks at ZFS and finishes or reports what the interrupted run did."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from tests.storage.conftest import Direct, Pool
from vpsadmind.engine.model import Direction, TSuccess
from vpsadmind.errors import HandlerError
from vpsadmind.handlers.base import Outcome, Recovery
from vpsadmind.handlers.dataset import ApplyRollback
from vpsadmind.handlers.storage_common import TRANSACTION_PROP, snapshot_name, zfs_driver
from vpsadmind.zfs.errors import DatasetExists

pytestmark = pytest.mark.slow


async def test_dataset_create_and_destroy_twice(direct: Direct, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    pool.zfs("create", fs)
    params = {"pool_fs": fs, "name": "101", "options": {"quota": 10, "atime": False}, "create_private": True}
    first = direct.make(5201, params, t_id=1)
    await first.exec()
    after_first = pool.state()
    again = direct.make(5201, params, t_id=1)
    out = await again.exec()
    assert isinstance(out, Outcome) and out.output["existed"] is True
    assert pool.state() == after_first
    for _ in range(2):
        await direct.make(5203, {"pool_fs": fs, "name": "101"}, t_id=2).exec()
    assert not pool.exists(f"{fs}/101")


async def test_dataset_create_refuses_a_different_dataset_and_keeps_it(direct: Direct, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    pool.zfs("create", "-p", "-o", "quota=5M", f"{fs}/101")
    h = direct.make(5201, {"pool_fs": fs, "name": "101", "options": {"quota": 10}})
    with pytest.raises(HandlerError, match="quota"):
        await h.exec()
    await h.rollback()  # the self-rollback of that failed run
    assert pool.exists(f"{fs}/101")


async def test_snapshot_rerun_reuses_the_snapshot_of_the_crashed_run(direct: Direct, pool: Pool) -> None:
    ds = f"{pool.name}/vz/101"
    pool.zfs("create", "-p", ds)
    params = {"pool_fs": f"{pool.name}/vz", "dataset_name": "101", "snapshot_id": 5}
    first = await direct.make(5204, params, t_id=77).exec()
    assert isinstance(first, Outcome)
    (name,) = pool.snapshots(ds)
    assert pool.prop(f"{ds}@{name}", TRANSACTION_PROP) == ("77", "local")
    again = direct.make(5204, params, t_id=77)
    decision = await again.recover(Direction.EXECUTE)
    assert isinstance(decision, Outcome) and decision.data["name"] == name
    assert pool.snapshots(ds) == [name]
    # a run that never happened is simply run
    assert await direct.make(5204, params, t_id=78).recover(Direction.EXECUTE) is Recovery.RERUN
    # rollback by a fresh handler object finds the name in t_output
    rb = direct.make(5204, params, t_id=77, t_output=json.dumps({"name": name}))
    await rb.rollback()
    await rb.rollback()
    assert pool.snapshots(ds) == []


async def test_group_snapshot_cut_in_half_is_finished_under_the_same_name(direct: Direct, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    for d in ("101", "102"):
        pool.zfs("create", "-p", f"{fs}/{d}")
    pool.zfs("snapshot", "-o", f"{TRANSACTION_PROP}=9", f"{fs}/101@2020-01-01T00:00:00")
    params = {"snapshots": [{"pool_fs": fs, "dataset_name": d, "snapshot_id": i}
                            for i, d in ((1, "101"), (2, "102"))]}
    h = direct.make(5215, params, t_id=9)
    assert await h.recover(Direction.EXECUTE) is Recovery.RERUN
    out = await h.exec()
    assert isinstance(out, Outcome) and out.data["name"] == "2020-01-01T00:00:00"
    assert pool.snapshots(f"{fs}/102") == ["2020-01-01T00:00:00"]
    assert pool.snapshots(f"{fs}/101") == ["2020-01-01T00:00:00"]


async def test_pool_clone_tree_and_branch_creates_twice(direct: Direct, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    await direct.make(5250, {"pool_fs": fs}).exec()
    out = await direct.make(5250, {"pool_fs": fs}).exec()
    assert isinstance(out, Outcome) and out.output["created"] == []
    branch = f"{fs}/101/tree.0/branch-a.0"
    pool.zfs("create", "-p", branch)
    for s in ("2020-01-01T00:00:00", "2020-01-02T00:00:00"):
        pool.zfs("snapshot", f"{branch}@{s}")
    clone = {"pool_fs": fs, "dataset_name": "101", "snapshot_id": 3, "snapshot": "2020-01-01T00:00:00",
             "dataset_tree": "tree.0", "branch": "branch-a.0"}
    for _ in range(2):
        await direct.make(5217, clone).exec()
    await direct.make(5217, clone).rollback()
    tree = {"pool_fs": fs, "dataset_name": "101", "tree": "tree.1"}
    for _ in range(2):
        await direct.make(5213, tree).exec()
    new = {"pool_fs": fs, "dataset_name": "101", "tree": "tree.0", "new_branch_name": "branch-b.0",
           "from_branch_name": "branch-a.0", "from_snapshot": "2020-01-01T00:00:00"}
    await direct.make(5206, new).exec()
    after = pool.state()
    await direct.make(5206, new).exec()  # already cloned and promoted
    assert pool.state() == after
    for _ in range(2):
        await direct.make(5206, new).rollback()
    assert pool.snapshots(branch) == ["2020-01-01T00:00:00", "2020-01-02T00:00:00"]
    assert not pool.exists(f"{fs}/101/tree.0/branch-b.0")


async def test_branch_create_resumes_after_clone_before_promote(direct: Direct, pool: Pool) -> None:
    fs = f"{pool.name}/backup"
    branch = f"{fs}/101/tree.0/branch-a.0"
    pool.zfs("create", "-p", branch)
    pool.zfs("snapshot", f"{branch}@2020-01-01T00:00:00")
    pool.zfs("clone", f"{branch}@2020-01-01T00:00:00", f"{fs}/101/tree.0/branch-b.0")  # the crash came here
    new = {"pool_fs": fs, "dataset_name": "101", "tree": "tree.0", "new_branch_name": "branch-b.0",
           "from_branch_name": "branch-a.0", "from_snapshot": "2020-01-01T00:00:00"}
    await direct.make(5206, new).exec()
    assert pool.snapshots(f"{fs}/101/tree.0/branch-b.0") == ["2020-01-01T00:00:00"]
    assert pool.prop(branch, "origin")[0] == f"{fs}/101/tree.0/branch-b.0@2020-01-01T00:00:00"


async def test_apply_rollback_resumes_from_every_step(direct: Direct, pool: Pool) -> None:
    fs = f"{pool.name}/vz"
    ds = f"{fs}/101"
    pool.zfs("create", "-o", "compression=on", fs)
    pool.zfs("create", "-o", "atime=off", ds)
    pool.zfs("create", f"{ds}/a")
    pool.zfs("snapshot", f"{ds}@s")
    (pool.mounted_path(f"{ds}/a") / "x").write_text("x")
    pool.zfs("create", "-o", "canmount=noauto", f"{ds}.rollback")
    params = {"pool_fs": fs, "dataset_name": "101", "descendant_datasets": [{"name": "a", "full_name": "101/a"}]}
    h = direct.make(5211, params, t_id=50)
    assert isinstance(h, ApplyRollback)
    zfs = await zfs_driver(direct.ctx)
    # the interrupted run got as far as destroying the original
    await h._save_state(zfs, ds, f"{ds}.rollback")
    await h._detach(zfs, ds, f"{ds}.rollback")
    await zfs.destroy(ds, recursive=True)
    again = direct.make(5211, params, t_id=50)
    assert await again.recover(Direction.EXECUTE) is Recovery.RERUN
    out = await again.exec()
    assert isinstance(out, Outcome) and out.status == TSuccess.OK
    assert pool.prop(ds, "atime") == ("off", "local")
    assert pool.prop(ds, "compression") == ("on", f"inherited from {fs}")
    assert (pool.mounted_path(f"{ds}/a") / "x").read_text() == "x"
    assert not pool.exists(f"{ds}.rollback")
    done = await direct.make(5211, params, t_id=50).recover(Direction.EXECUTE)
    assert isinstance(done, Outcome) and "already completed" in done.output["note"]


async def test_snapshot_name_collision_waits_for_the_next_second(direct: Direct, pool: Pool,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ds = f"{pool.name}/vz/101"
    pool.zfs("create", "-p", ds)
    pool.zfs("snapshot", f"{ds}@2020-01-01T00:00:00")
    names = iter(["2020-01-01T00:00:00", "2020-01-01T00:00:01"])
    monkeypatch.setattr("vpsadmind.handlers.dataset.snapshot_name",
                        lambda: snapshot_name(dt.datetime.fromisoformat(next(names) + "+00:00")))
    out = await direct.make(5204, {"pool_fs": f"{pool.name}/vz", "dataset_name": "101", "snapshot_id": 1}).exec()
    assert isinstance(out, Outcome) and out.data["name"] == "2020-01-01T00:00:01"
    assert pool.snapshots(ds) == ["2020-01-01T00:00:00", "2020-01-01T00:00:01"]


async def test_self_rollback_after_a_name_collision_keeps_the_other_snapshot(
        direct: Direct, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = f"{pool.name}/vz/101"
    pool.zfs("create", "-p", ds)
    pool.zfs("snapshot", f"{ds}@2020-01-01T00:00:00")
    monkeypatch.setattr("vpsadmind.handlers.dataset._SNAPSHOT_RETRIES", 1)
    monkeypatch.setattr("vpsadmind.handlers.dataset.snapshot_name",
                        lambda: snapshot_name(dt.datetime(2020, 1, 1, tzinfo=dt.UTC)))
    h = direct.make(5204, {"pool_fs": f"{pool.name}/vz", "dataset_name": "101", "snapshot_id": 1})
    with pytest.raises(DatasetExists):
        await h.exec()
    await h.rollback()
    assert pool.snapshots(ds) == ["2020-01-01T00:00:00"]


async def test_local_send_rerun_after_its_stream_arrived_releases_what_the_first_run_held(
        direct: Direct, pool: Pool, db: Any) -> None:
    """A LocalSend interrupted after its stream arrived (a kill, a lost database) is run again and finds its
    snapshot on the target: it has nothing more to send, but the holds its first run took are its to release
    (found by the soak: a ledger row and its hold outlived the chain)."""
    pool.zfs("create", "-p", f"{pool.name}/a")
    pool.zfs("snapshot", f"{pool.name}/a@s1")
    params = {"src_pool_fs": pool.name, "dst_pool_fs": pool.name, "src_dataset_name": "a",
              "dst_dataset_name": "b", "snapshots": [{"id": 1, "name": "s1", "confirmed": 1}]}
    assert isinstance(await direct.make(5223, params, t_id=55).exec(), Outcome)
    # what the interrupted first run left: its hold and the ledger row written before it
    pool.zfs("hold", "vpsadmind-transfer-1", f"{pool.name}/a@s1")
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vpsadmind_holds (server_id, tag, snapshot, chain_id, transaction_id, "
                          "created_at) VALUES (1, 'vpsadmind-transfer-1', %s, 1, 55, NOW())", (f"{pool.name}/a@s1",))
    out = await direct.make(5223, params, t_id=55).exec()
    assert isinstance(out, Outcome) and out.output["bytes"] == 0  # nothing sent again
    assert pool.prop(f"{pool.name}/a@s1", "userrefs")[0] == "0"
    async with db.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM vpsadmind_holds")
        assert (await cur.fetchone())[0] == 0
