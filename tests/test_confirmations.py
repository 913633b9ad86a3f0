"""``transaction_confirmations`` applied at chain close (contract 2.3), on real v2.0 tables, through a running
engine: all 8 types in the execute and the rollback direction, the irreversible failure, fatal chains,
composite keys, Rails-flavoured YAML and hostile rows."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch, output, probe
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState, Reversible
from vpsadmind.testing.chains import ChainBuilder, Confirmation
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain

NOOP = 10001

Rows = list[tuple[Any, ...]]
Observe = Callable[[Any], Awaitable[Rows]]


@pytest.fixture
def cfg(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> Config:
    return make_config(db_settings, test_database, journal=str(tmp_path / "journal"))


# ---- table rows -------------------------------------------------------------------------------------------

async def insert(db: Any, table: str, **cols: Any) -> int:
    names = ", ".join(f"`{k}`" for k in cols)
    marks = ", ".join(["%s"] * len(cols))
    async with db.cursor() as cur:
        await cur.execute(f"INSERT INTO `{table}` ({names}) VALUES ({marks})", list(cols.values()))
        return int(cur.lastrowid)


async def dataset(db: Any, *, name: str = "ds", confirmed: int = 1, user_editable: int = 0) -> int:
    return await insert(db, "datasets", name=name, full_name=f"vps/{name}", user_editable=user_editable,
                        user_create=0, user_destroy=0, object_state=0, confirmed=confirmed)


async def dataset_in_pool(db: Any, dataset_id: int, pool_id: int = 1, *, min_snapshots: int = 14) -> int:
    return await insert(db, "dataset_in_pools", dataset_id=dataset_id, pool_id=pool_id,
                        min_snapshots=min_snapshots, confirmed=1)


_VPS_IDS = itertools.count(1000)


async def vps_feature(db: Any, vps_id: int | None = None, name: str = "tun") -> int:
    vps_id = next(_VPS_IDS) if vps_id is None else vps_id
    # vps_features has no `confirmed` column: the just_create / just_destroy kind of table
    return await insert(db, "vps_features", vps_id=vps_id, name=name, enabled=1)


def observer(sql: str, key: Any) -> Observe:
    async def observe(db: Any) -> Rows:
        return [tuple(r.values()) for r in await fetch(db, sql, key)]
    return observe


# ---- one case per confirm_type --------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """How to build a row and its confirmation, and what the row looks like before and after the close."""

    setup: Callable[[Any], Awaitable[tuple[Confirmation, Observe]]]
    initial: Rows
    executed: Rows
    not_executed: Rows


async def _create(db: Any) -> tuple[Confirmation, Observe]:
    ds = await dataset(db, confirmed=0)
    return (Confirmation.create("Dataset", "datasets", {"id": ds}),
            observer("SELECT confirmed FROM datasets WHERE id = %s", ds))


async def _just_create(db: Any) -> tuple[Confirmation, Observe]:
    f = await vps_feature(db)
    return (Confirmation.just_create("VpsFeature", "vps_features", {"id": f}),
            observer("SELECT name, enabled FROM vps_features WHERE id = %s", f))


async def _edit_before(db: Any) -> tuple[Confirmation, Observe]:
    # the API already wrote the new values and stored the originals
    ds = await dataset(db, name="new", user_editable=0)
    return (Confirmation.edit_before("Dataset", "datasets", {"id": ds}, {"name": "old", "user_editable": True}),
            observer("SELECT name, user_editable FROM datasets WHERE id = %s", ds))


async def _edit_after(db: Any) -> tuple[Confirmation, Observe]:
    # the API deferred the change to the daemon
    ds = await dataset(db, name="old", user_editable=0)
    return (Confirmation.edit_after("Dataset", "datasets", {"id": ds}, {"name": "new", "user_editable": True}),
            observer("SELECT name, user_editable FROM datasets WHERE id = %s", ds))


async def _destroy(db: Any) -> tuple[Confirmation, Observe]:
    ds = await dataset(db, confirmed=2)
    return (Confirmation.destroy("Dataset", "datasets", {"id": ds}),
            observer("SELECT confirmed FROM datasets WHERE id = %s", ds))


async def _just_destroy(db: Any) -> tuple[Confirmation, Observe]:
    f = await vps_feature(db)
    return (Confirmation.just_destroy("VpsFeature", "vps_features", {"id": f}),
            observer("SELECT name, enabled FROM vps_features WHERE id = %s", f))


async def _decrement(db: Any) -> tuple[Confirmation, Observe]:
    dip = await dataset_in_pool(db, await dataset(db))
    return (Confirmation.decrement("DatasetInPool", "dataset_in_pools", {"id": dip}, "min_snapshots"),
            observer("SELECT min_snapshots FROM dataset_in_pools WHERE id = %s", dip))


async def _increment(db: Any) -> tuple[Confirmation, Observe]:
    dip = await dataset_in_pool(db, await dataset(db))
    return (Confirmation.increment("DatasetInPool", "dataset_in_pools", {"id": dip}, "min_snapshots"),
            observer("SELECT min_snapshots FROM dataset_in_pools WHERE id = %s", dip))


SPECS: dict[str, Spec] = {
    "create": Spec(_create, initial=[(0,)], executed=[(1,)], not_executed=[]),
    "just_create": Spec(_just_create, initial=[("tun", 1)], executed=[("tun", 1)], not_executed=[]),
    "edit_before": Spec(_edit_before, initial=[("new", 0)], executed=[("new", 0)], not_executed=[("old", 1)]),
    "edit_after": Spec(_edit_after, initial=[("old", 0)], executed=[("new", 1)], not_executed=[("old", 0)]),
    "destroy": Spec(_destroy, initial=[(2,)], executed=[], not_executed=[(1,)]),
    "just_destroy": Spec(_just_destroy, initial=[("tun", 1)], executed=[], not_executed=[("tun", 1)]),
    "decrement": Spec(_decrement, initial=[(14,)], executed=[(13,)], not_executed=[(14,)]),
    "increment": Spec(_increment, initial=[(14,)], executed=[(15,)], not_executed=[(14,)]),
}
KINDS = list(SPECS)


async def prepare(db: Any, kind: str) -> tuple[Spec, Confirmation, Observe]:
    spec = SPECS[kind]
    conf, observe = await spec.setup(db)
    assert await observe(db) == spec.initial
    return spec, conf, observe


async def run_chain(db: Any, cfg: Config, builder: ChainBuilder,
                    before_start: Callable[[Any], Awaitable[None]] | None = None,
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fired = await builder.fire(db)
    if before_start is not None:
        await before_start(fired)
    async with running_engine(cfg):
        chain = await wait_chain(db, fired.chain_id)
    return chain, await transactions_of(db, fired.chain_id)


async def done_flags(db: Any, chain_id: int) -> list[int]:
    rows = await fetch(db, "SELECT c.done FROM transaction_confirmations c "
                           "JOIN transactions t ON t.t_id = c.transaction_id "
                           "WHERE t.transaction_chain_id = %s ORDER BY c.id", chain_id)
    return [int(r["done"]) for r in rows]


def confirmation_errors(rows: list[dict[str, Any]]) -> list[str]:
    return [e for r in rows for e in output(r).get("confirmation_errors", [])]


# ---- the 8 types, both directions ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_chain_done_applies_as_executed(db: Any, cfg: Config, kind: str) -> None:
    spec, conf, observe = await prepare(db, kind)
    b = ChainBuilder()
    b.append(NOOP, server=1, confirmations=[conf])
    b.append(NOOP, server=1)
    chain, rows = await run_chain(db, cfg, b)
    assert (chain["state"], chain["progress"]) == (ChainState.DONE, 2)
    assert await observe(db) == spec.executed
    assert await done_flags(db, chain["id"]) == [1]
    assert confirmation_errors(rows) == []


@pytest.mark.parametrize("kind", KINDS)
async def test_confirmation_on_last_transaction_of_done_chain(db: Any, cfg: Config, kind: str) -> None:
    """The closing transaction's own t_success must be saved before the confirmations read it (v2.0 wrote
    the row first; an engine that applied them first read the API's initial t_success = 0)."""
    spec, conf, observe = await prepare(db, kind)
    b = ChainBuilder()
    b.append(NOOP, server=1)
    b.append(NOOP, server=1, confirmations=[conf])
    chain, _rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.DONE
    assert await observe(db) == spec.executed


@pytest.mark.parametrize("kind", KINDS)
async def test_rollback_applies_as_not_executed(db: Any, cfg: Config, kind: str) -> None:
    spec, conf, observe = await prepare(db, kind)
    b = ChainBuilder()
    b.append(NOOP, server=1, confirmations=[conf])
    probe(b, fail=True)
    chain, rows = await run_chain(db, cfg, b)
    assert (chain["state"], chain["progress"]) == (ChainState.FAILED, 0)
    assert [r["t_done"] for r in rows] == [2, 2]
    # the rolled back NoOp has t_success 1 (its rollback went fine), yet the direction is rollback
    assert rows[0]["t_success"] == 1
    assert await observe(db) == spec.not_executed
    assert await done_flags(db, chain["id"]) == [1]
    assert confirmation_errors(rows) == []


@pytest.mark.parametrize("kind", KINDS)
async def test_confirmation_of_self_rolled_back_transaction(db: Any, cfg: Config, kind: str) -> None:
    spec, conf, observe = await prepare(db, kind)
    b = ChainBuilder()
    b.append(NOOP, server=1)
    b.append(90001, server=1, params={"fail": True}, confirmations=[conf])
    chain, _rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FAILED
    assert await observe(db) == spec.not_executed
    assert await done_flags(db, chain["id"]) == [1]


@pytest.mark.parametrize("kind", KINDS)
async def test_irreversible_failure_closes_in_execute_direction(db: Any, cfg: Config, kind: str) -> None:
    """Earlier successful transactions' confirmations apply as executed, the failed one's and its
    (dependency-failed) followers' as not executed."""
    spec = SPECS[kind]
    before, obs_before = await spec.setup(db)
    failing, obs_failing = await spec.setup(db)
    after, obs_after = await spec.setup(db)
    b = ChainBuilder()
    b.append(NOOP, server=1, confirmations=[before])
    b.append(90001, server=1, params={"fail": True}, reversible=Reversible.NOT_REVERSIBLE,
             confirmations=[failing])
    b.append(NOOP, server=1, confirmations=[after])
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FAILED
    assert [(r["t_done"], r["t_success"]) for r in rows] == [(1, 1), (1, 0), (1, 0)]
    assert await obs_before(db) == spec.executed
    assert await obs_failing(db) == spec.not_executed
    assert await obs_after(db) == spec.not_executed
    assert await done_flags(db, chain["id"]) == [1, 1, 1]


@pytest.mark.parametrize("kind", KINDS)
async def test_fatal_chain_leaves_confirmations_unapplied(db: Any, cfg: Config, kind: str) -> None:
    spec, conf, observe = await prepare(db, kind)
    b = ChainBuilder()
    b.append(90001, server=1, params={"fail_rollback": True}, confirmations=[conf])
    probe(b, fail=True)
    chain, _rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FATAL
    assert await observe(db) == spec.initial
    assert await done_flags(db, chain["id"]) == [0]


async def test_warning_counts_as_success(db: Any, cfg: Config) -> None:
    spec, conf, observe = await prepare(db, "create")
    b = ChainBuilder()
    b.append(90001, server=1, params={"warn": True}, confirmations=[conf])
    b.append(NOOP, server=1)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.DONE and rows[0]["t_success"] == 2
    assert await observe(db) == spec.executed


async def test_keep_going_failure_applies_as_not_executed_in_done_chain(db: Any, cfg: Config) -> None:
    spec, conf, observe = await prepare(db, "create")
    spec2, conf2, observe2 = await prepare(db, "increment")
    b = ChainBuilder()
    b.append(90001, server=1, params={"fail": True}, reversible=Reversible.KEEP_GOING, confirmations=[conf])
    b.append(NOOP, server=1, confirmations=[conf2])
    b.append(NOOP, server=1)
    chain, _rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.DONE
    assert await observe(db) == spec.not_executed
    assert await observe2(db) == spec2.executed


async def test_all_confirmations_of_the_chain_apply_once(db: Any, cfg: Config) -> None:
    """Several confirmations on several transactions; done ones from an earlier run are not applied again."""
    ds = await dataset(db)
    dip = await dataset_in_pool(db, ds)
    b = ChainBuilder()
    inc = Confirmation.increment("DatasetInPool", "dataset_in_pools", {"id": dip}, "min_snapshots")
    b.append(NOOP, server=1, confirmations=[inc, inc])
    b.append(NOOP, server=1, confirmations=[inc])
    b.append(NOOP, server=1)

    async def mark_first_done(fired: Any) -> None:
        await fetch(db, "UPDATE transaction_confirmations SET done = 1 WHERE id = %s", fired.confirmation_ids[0])

    chain, _rows = await run_chain(db, cfg, b, before_start=mark_first_done)
    assert chain["state"] == ChainState.DONE
    rows = await fetch(db, "SELECT min_snapshots FROM dataset_in_pools WHERE id = %s", dip)
    assert rows == [{"min_snapshots": 16}]
    assert await done_flags(db, chain["id"]) == [1, 1, 1]


# ---- composite keys and Rails YAML ---------------------------------------------------------------------

async def test_composite_row_pks(db: Any, cfg: Config) -> None:
    d1, d2 = await dataset(db, name="a"), await dataset(db, name="b")
    for ds, pool in ((d1, 1), (d1, 2), (d2, 1), (d2, 2)):
        await dataset_in_pool(db, ds, pool)
    await vps_feature(db, 101, "tun")
    await vps_feature(db, 101, "fuse")
    await vps_feature(db, 102, "tun")
    b = ChainBuilder()
    b.append(NOOP, server=1, confirmations=[
        Confirmation.increment("DatasetInPool", "dataset_in_pools", {"dataset_id": d1, "pool_id": 2},
                               "min_snapshots"),
        Confirmation.just_destroy("VpsFeature", "vps_features", {"vps_id": 101, "name": "tun"}),
    ])
    b.append(NOOP, server=1)
    chain, _rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.DONE
    dips = await fetch(db, "SELECT dataset_id, pool_id, min_snapshots FROM dataset_in_pools "
                           "ORDER BY dataset_id, pool_id")
    assert [tuple(r.values()) for r in dips] == [(d1, 1, 14), (d1, 2, 15), (d2, 1, 14), (d2, 2, 14)]
    feats = await fetch(db, "SELECT vps_id, name FROM vps_features ORDER BY vps_id, name")
    assert [tuple(r.values()) for r in feats] == [(101, "fuse"), (102, "tun")]


async def add_raw(db: Any, t_id: int, table: str, row_pks: str, attr_changes: str | None,
                  confirm_type: int) -> int:
    return await insert(db, "transaction_confirmations", transaction_id=t_id, class_name="Raw",
                        table_name=table, row_pks=row_pks, attr_changes=attr_changes,
                        confirm_type=confirm_type, done=0)


async def test_rails_hash_with_indifferent_access(db: Any, cfg: Config) -> None:
    ds = await dataset(db, name="old", confirmed=0)
    tag = "!ruby/hash:ActiveSupport::HashWithIndifferentAccess"
    b = ChainBuilder()
    b.append(NOOP, server=1)
    b.append(NOOP, server=1)

    async def add(fired: Any) -> None:
        t1 = fired.transaction_ids[0]
        await add_raw(db, t1, "datasets", f"--- {tag}\nid: {ds}\n", None, 0)
        await add_raw(db, t1, "datasets", f"--- {tag}\nid: {ds}\n",
                      f"--- {tag}\nname: new\nuser_editable: true\n", 3)

    chain, rows = await run_chain(db, cfg, b, before_start=add)
    assert chain["state"] == ChainState.DONE
    assert confirmation_errors(rows) == []
    got = await fetch(db, "SELECT name, user_editable, confirmed FROM datasets WHERE id = %s", ds)
    assert got == [{"name": "new", "user_editable": 1, "confirmed": 1}]
    assert await done_flags(db, chain["id"]) == [1, 1]


@pytest.mark.parametrize("case", ["row_pks key", "attr_changes key", "counter column"])
async def test_ruby_symbol_keys(db: Any, cfg: Config, case: str) -> None:
    """The API passes Ruby hashes with symbol keys (``edit(obj, name: x)`` dumps ``:name: x``) and symbol
    column names; v2.0 interpolated them as bare names."""
    ds = await dataset(db, name="old", confirmed=1)
    dip = await dataset_in_pool(db, ds)
    if case == "row_pks key":
        conf = Confirmation.edit_after("Dataset", "datasets", {":id": ds}, {"name": "new"})
    elif case == "attr_changes key":
        conf = Confirmation.edit_after("Dataset", "datasets", {"id": ds}, {":name": "new"})
    else:
        conf = Confirmation.increment("DatasetInPool", "dataset_in_pools", {"id": dip}, ":min_snapshots")
    assert ":" in (conf.row_pks_yaml() + (conf.attr_changes_yaml() or "")).replace("---", "")
    b = ChainBuilder()
    b.append(NOOP, server=1, confirmations=[conf])
    b.append(NOOP, server=1)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.DONE
    assert confirmation_errors(rows) == []
    if case == "counter column":
        assert await fetch(db, "SELECT min_snapshots FROM dataset_in_pools WHERE id = %s", dip) == [
            {"min_snapshots": 15}]
    else:
        assert await fetch(db, "SELECT name FROM datasets WHERE id = %s", ds) == [{"name": "new"}]
    assert await done_flags(db, chain["id"]) == [1]


# ---- hostile rows -------------------------------------------------------------------------------------

PWNED_MARK = "/tmp/vpsadmind-confirmation-pwned"


def hostile_rows(ds: int) -> list[tuple[str, str, str | None, int, bool]]:
    """(table_name, row_pks, attr_changes, confirm_type, rejected in rollback too), none may execute anything.

    Edit-after and increment rows do nothing when the chain rolls back, so their bad attr_changes are only
    looked at (and rejected) in the execute direction.
    """
    return [
        ("datasets; DROP TABLE vps", f"---\nid: {ds}\n", None, 0, True),
        ("vps", "---\nvps_id: 1\n", "---\nname`; DROP TABLE vps; --: x\n", 3, False),
        ("datasets", f"---\n'id` = {ds} OR 1=1 OR `id': 1\n", None, 4, True),
        ("datasets", "--- 5\n", None, 5, True),
        ("datasets", "---\n- 1\n- 2\n", None, 4, True),
        ("datasets", f"--- !!python/object/apply:os.system [\"touch {PWNED_MARK}\"]\n", None, 4, True),
        ("datasets", f"---\nid: {ds}\n", "--- min_snapshots - 100, name\n", 7, False),
        ("datasets", f"---\nid: {ds}\n", "---\nname:\n- 1\n- 2\n", 3, False),
        ("datasets", "---\nid: [unclosed\n", None, 4, True),
        ("no_such_table", "---\nid: 1\n", None, 4, True),
        ("datasets", f"---\nid: {ds}\n", None, 9, True),
    ]


@pytest.mark.parametrize("failing", [False, True], ids=["execute", "rollback"])
async def test_hostile_confirmations_execute_nothing(db: Any, cfg: Config, failing: bool) -> None:
    if os.path.exists(PWNED_MARK):
        os.unlink(PWNED_MARK)
    vps = await insert(db, "vps", m_id=1, vps_server=1, vps_config="", object_state=0)
    victims = [await dataset(db, name=f"victim{i}") for i in range(3)]
    spec, good, observe = await prepare(db, "create")
    b = ChainBuilder()
    b.append(NOOP, server=1, confirmations=[good])
    b.append(NOOP, server=1)
    b.append(NOOP, server=1)
    if failing:
        probe(b, fail=True)
    hostile = hostile_rows(victims[0])
    rejected = [always or not failing for *_, always in hostile]

    async def add(fired: Any) -> None:
        for table, pks, attrs, ctype, _always in hostile:
            await add_raw(db, fired.transaction_ids[1], table, pks, attrs, ctype)

    chain, rows = await run_chain(db, cfg, b, before_start=add)
    assert chain["state"] == (ChainState.FAILED if failing else ChainState.DONE)
    assert await observe(db) == (spec.not_executed if failing else spec.executed)
    errors = confirmation_errors(rows)
    assert len(errors) == sum(rejected), errors
    assert any("not a valid SQL identifier" in e for e in errors)
    assert await fetch(db, "SELECT vps_id, vps_hostname FROM vps") == [{"vps_id": vps, "vps_hostname": "vps"}]
    got = await fetch(db, "SELECT id, name, confirmed FROM datasets WHERE name LIKE 'victim%%' ORDER BY id")
    assert got == [{"id": v, "name": f"victim{i}", "confirmed": 1} for i, v in enumerate(victims)]
    assert not os.path.exists(PWNED_MARK)
    # the good confirmation is applied and marked; the rejected ones stay pending for an admin
    flags = await fetch(db, "SELECT class_name, done FROM transaction_confirmations ORDER BY id")
    assert [(f["class_name"], f["done"]) for f in flags] == [("Dataset", 1)] + [
        ("Raw", 0 if r else 1) for r in rejected]


async def test_unknown_confirm_type_does_not_break_the_save(db: Any, cfg: Config) -> None:
    """A confirm_type outside 0-7 is reported like any bad row; it must not fail (and endlessly retry) the
    save that closes the chain."""
    spec, good, observe = await prepare(db, "create")
    b = ChainBuilder()
    b.append(NOOP, server=1, confirmations=[good])
    b.append(NOOP, server=1)

    async def add(fired: Any) -> None:
        await add_raw(db, fired.transaction_ids[0], "datasets", "---\nid: 1\n", None, 9)

    chain, rows = await run_chain(db, cfg, b, before_start=add)
    assert chain["state"] == ChainState.DONE
    assert await observe(db) == spec.executed
    [error] = confirmation_errors(rows)
    assert "unknown confirm_type 9" in error
    assert await done_flags(db, chain["id"]) == [1, 0]
