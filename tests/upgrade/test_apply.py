"""check, apply and apply again on a v1.22 storage node: the v2.0 layout, every byte and snapshot kept, the
database rows written exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.upgrade.conftest import Env
from tests.upgrade.layout import (
    BACKUP_SNAPS,
    NEW_PRIVATE,
    all_names,
    assert_v2_layout,
    expected_backup,
    fetch,
    record,
    sh,
)
from vpsadmind.upgrade import ExitCode, Options
from vpsadmind.upgrade.context import ROLE_BACKUP, Context, StateFile
from vpsadmind.upgrade.engine import upgrade_zfs
from vpsadmind.upgrade.prereq import Prerequisites
from vpsadmind.upgrade.register import register_backup
from vpsadmind.upgrade.report import Runner

pytestmark = pytest.mark.timeout(300)


async def test_check_changes_nothing_and_lists_the_work(env: Env) -> None:
    names = all_names(env.node.pool)
    before = record(env.node)
    result = await env.run(apply=False)
    assert result.code == ExitCode.PENDING, env.output
    assert all_names(env.node.pool) == names
    assert record(env.node) == before
    text = env.output
    assert "would do" in text
    assert f"rename to {env.node.nas}/1001/{NEW_PRIVATE}" in text
    assert "15 entries at the root (one is a user directory named private)" in text  # hidden ones too
    assert "rename 4 snapshots, move to 101/tree.0/branch-2015-07-01T01:00:03.0" in text
    assert "rename 1 snapshot, move to 102/tree.0/branch-2015-07-01T02:00:00.0" in text
    assert "v2.0 layout: only private/" in text  # 1003
    assert "mounted in VPSes on node1 (1)" in text  # the hypervisor must unmount first
    assert text.count("share with all 2 nodes, options no_root_squash") == 2


async def _db_state(db: Any) -> dict[str, Any]:
    return {
        "trees": await fetch(db, "SELECT dataset_in_pool_id, `index`, head, confirmed FROM dataset_trees "
                                 "ORDER BY dataset_in_pool_id"),
        "branches": await fetch(db, "SELECT t.dataset_in_pool_id, b.name, b.`index`, b.head, b.confirmed "
                                    "FROM branches b JOIN dataset_trees t ON t.id = b.dataset_tree_id "
                                    "ORDER BY t.dataset_in_pool_id"),
        "snapshots": await fetch(db, "SELECT s.dataset_id, s.name, sip.dataset_in_pool_id, sip.confirmed, "
                                     "sipb.branch_id IS NOT NULL AS in_branch FROM snapshots s "
                                     "JOIN snapshot_in_pools sip ON sip.snapshot_id = s.id "
                                     "LEFT JOIN snapshot_in_pool_in_branches sipb ON sipb.snapshot_in_pool_id = sip.id "
                                     "ORDER BY s.dataset_id, s.id"),
        "datasets": await fetch(db, "SELECT id, name, full_name FROM datasets ORDER BY id"),
    }


def _assert_registered(env: Env, state: dict[str, Any], before: Any) -> None:
    assert [(t["dataset_in_pool_id"], t["index"], t["head"]) for t in state["trees"]] == [
        (101, 0, 0), (102, 0, 0), (104, 0, 1)]
    assert [(b["dataset_in_pool_id"], b["name"], b["head"]) for b in state["branches"]] == [
        (101, "2015-07-01T01:00:03", 0), (102, "2015-07-01T02:00:00", 0), (104, "2015-06-01T00:00:00", 1)]
    for veid in BACKUP_SNAPS:
        rows = [r for r in state["snapshots"] if r["dataset_id"] == int(veid)]
        assert [r["name"] for r in rows] == [n for n, _ in expected_backup(before, veid)]
        assert all(r["dataset_in_pool_id"] == int(veid) and r["confirmed"] == 1 and r["in_branch"] for r in rows)
    renamed = {r["id"]: (r["name"], r["full_name"]) for r in state["datasets"]}
    assert renamed[1011] == (NEW_PRIVATE, f"1001/{NEW_PRIVATE}")
    assert renamed[1012] == ("sub", f"1001/{NEW_PRIVATE}/sub")


async def test_apply_then_apply_again(env: Env) -> None:
    before = record(env.node)
    result = await env.run()
    assert result.code == ExitCode.DONE, env.output
    assert_v2_layout(env.node, before)
    state = await _db_state(env.db)
    _assert_registered(env, state, before)
    for pool_fs in (env.node.nas, env.node.backup):
        assert sh("zfs", "get", "-H", "-o", "value", "sharenfs", pool_fs).strip() == \
            "rw=@10.1.0.1/32:@10.1.0.2/32,no_root_squash"
    reinits = [r for r in env.daemon.requests if r["command"] == "reinit"]
    assert reinits == [{"command": "reinit", "params": {"resources": ["fw"]}}]

    names = all_names(env.node.pool)
    again = await env.run()
    assert again.code == ExitCode.NOTHING, env.output
    assert again.ops == 0
    assert "nothing to do" in env.output
    assert all_names(env.node.pool) == names
    assert await _db_state(env.db) == state
    assert [r for r in env.daemon.requests if r["command"] == "reinit"] == reinits  # not reinitialized twice
    assert (await env.run(apply=False)).code == ExitCode.NOTHING


async def test_registration_later_and_exactly_once(env: Env) -> None:
    before = record(env.node)
    first = await env.run(register_db=False)
    assert first.code == ExitCode.PENDING, env.output  # everything but the registration
    assert "(with --register-db)" in env.output
    assert len((await _db_state(env.db))["trees"]) == 1
    assert_v2_layout(env.node, before)
    second = await env.run(steps=["backups"])
    assert second.code == ExitCode.DONE, env.output
    assert second.ops == 2  # one transaction per backup
    state = await _db_state(env.db)
    _assert_registered(env, state, before)
    third = await env.run(steps=["backups"])
    assert third.code == ExitCode.NOTHING
    assert await _db_state(env.db) == state


async def test_concurrent_registrations_write_one_tree(env: Env) -> None:
    assert (await env.run(register_db=False)).code == ExitCode.PENDING
    ctx = Context(env.cfg, upgrade_zfs(env.cfg), Options(register_db=True), StateFile(env.state_file))
    try:
        await Prerequisites().inspect(ctx)
        pool = ctx.pools_with_role(ROLE_BACKUP)[0]
        notes = await asyncio.gather(*(register_backup(ctx, Runner(), pool, "101") for _ in range(4)))
    finally:
        await ctx.require_db().close()
    assert sorted(str(n) for n in notes) == ["4 snapshots"] + ["already registered"] * 3
    trees = await fetch(env.db, "SELECT id FROM dataset_trees WHERE dataset_in_pool_id = 101")
    assert len(trees) == 1
    rows = await fetch(env.db, "SELECT COUNT(*) AS n FROM snapshot_in_pools WHERE dataset_in_pool_id = 101")
    assert rows == [{"n": 4}]
