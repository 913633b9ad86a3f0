"""Registering rearranged backups in the database, as v2.0's ``migrate_backups_to_snapshots.rb`` did, but from
what is really in ZFS and exactly once.

For the backup ``<pool_fs>/<ds>/tree.0/branch-<T>.<i>`` with snapshots ``@s1 .. @sN`` (oldest first) one
database transaction writes: a ``dataset_trees`` row (index 0, **not** head, confirmed), a ``branches`` row
(name ``<T>``, index ``<i>``, not head, confirmed), and per snapshot a ``snapshots`` row of the dataset (an
existing row of the same name is reused), a ``snapshot_in_pools`` row for the backup's ``dataset_in_pools``
row and a ``snapshot_in_pool_in_branches`` row. Times are the snapshot names read as the node's local time,
stored in UTC like every v2.0 time.

"Exactly once": the transaction locks the backup's ``dataset_in_pools`` row and does nothing when a tree with
index 0 already exists for it, so neither a second run nor a concurrent one can register a backup twice
(running both v1.22 scripts did). Not being head, the migrated tree keeps the old history browsable while the
first v2.0 backup starts ``tree.1`` with a full send (v2-details 1.7.3).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from vpsadmind.db import Tx
from vpsadmind.upgrade.context import Context, PoolRow
from vpsadmind.upgrade.report import Row, Runner, Status, UpgradeError, plural
from vpsadmind.upgrade.zfsstate import BRANCH_RE, TIMESTAMP_FORMAT, TIMESTAMP_RE, inventory

__all__ = ["DipInfo", "pool_dips", "register_backup", "registration_row", "utc_from_local"]

TREE = "tree.0"


@dataclass(frozen=True, slots=True)
class DipInfo:
    dip_id: int
    dataset_id: int
    trees: int          # dataset_trees rows with index 0


def utc_from_local(timestamp: str) -> dt.datetime:
    """A v2.0 snapshot name (local time) as a naive UTC datetime, the way v2.0 stores times."""
    local = dt.datetime.strptime(timestamp, TIMESTAMP_FORMAT)
    return local.astimezone(dt.UTC).replace(tzinfo=None)


async def pool_dips(ctx: Context, pool: PoolRow) -> dict[str, DipInfo]:
    """``{full_name: DipInfo}`` of every ``dataset_in_pools`` row of ``pool``, in one query."""
    rows = await ctx.require_db().fetchall(
        "SELECT d.full_name, dip.id AS dip_id, dip.dataset_id, "
        "(SELECT COUNT(*) FROM dataset_trees t WHERE t.dataset_in_pool_id = dip.id AND t.`index` = 0) AS trees "
        "FROM dataset_in_pools dip JOIN datasets d ON d.id = dip.dataset_id WHERE dip.pool_id = %s", (pool.id,))
    return {str(r["full_name"]): DipInfo(int(r["dip_id"]), int(r["dataset_id"]), int(r["trees"])) for r in rows}


def registration_row(ctx: Context, pool: PoolRow, ds: str, branch: str, snapshots: int,
                     info: DipInfo | None) -> Row:
    """The database row of a backup that is (or will be) ``<ds>/tree.0/<branch>`` with ``snapshots``."""
    subject = f"{pool.filesystem}/{ds}"
    if info is None:
        return Row(subject, f"database: no dataset_in_pools row for dataset {ds} in pool {pool.id}",
                   "create it (the API migration maps backups of VPS datasets only)", Status.HUMAN)
    if info.trees > 1:
        return Row(subject, f"database: {info.trees} trees with index 0 (registered twice by the v1.22 scripts?)",
                   "remove the duplicates by hand", Status.HUMAN)
    if info.trees == 1:
        return Row(subject, "database: tree 0 registered")
    action = f"register {TREE}/{branch} with {plural(snapshots, 'snapshot')}"
    if not ctx.options.register_db:
        return Row(subject, "database: not registered", action + " (with --register-db)", Status.PENDING)

    async def run(runner: Runner) -> str | None:
        return await register_backup(ctx, runner, pool, ds)

    return Row(subject, "database: not registered", action, Status.TODO, run)


async def _backup_branch(ctx: Context, pool: PoolRow, ds: str) -> tuple[str, list[str]]:
    """The branch dataset name and its snapshot names (oldest first) of the rearranged backup ``ds``."""
    top = f"{pool.filesystem}/{ds}"
    inv = await inventory(ctx.zfs, top)
    tree = f"{top}/{TREE}"
    branches = [name for name in inv if name.startswith(tree + "/") and "/" not in name[len(tree) + 1:]]
    if top not in inv or inv[top].snaps or len(branches) != 1:
        raise UpgradeError(f"{top} is not a rearranged backup with exactly one branch in {TREE}")
    snaps = [s.name for s in inv[branches[0]].snaps]
    bad = [s for s in snaps if not TIMESTAMP_RE.fullmatch(s)]
    if bad or not snaps:
        raise UpgradeError(f"{branches[0]}: snapshots not in the v2.0 format: {', '.join(bad) or 'none at all'}")
    return branches[0].rsplit("/", 1)[1], snaps


async def register_backup(ctx: Context, runner: Runner, pool: PoolRow, ds: str) -> str | None:
    branch, snaps = await _backup_branch(ctx, pool, ds)
    match = BRANCH_RE.fullmatch(branch)
    if match is None:
        raise UpgradeError(f"{pool.filesystem}/{ds}/{TREE}/{branch}: not a v2.0 branch name")
    name, index = match.group(1), int(match.group(2))

    async def write(tx: Tx) -> str | None:
        return await _write_rows(tx, pool, ds, name, index, snaps)

    return await runner.op(f"register {pool.filesystem}/{ds}/{TREE}/{branch} in the database",
                           lambda: ctx.require_db().run(write))


async def _locked_dip(tx: Tx, pool: PoolRow, ds: str) -> tuple[int, int]:
    rows = await tx.fetchall(
        "SELECT dip.id, dip.dataset_id, d.full_name FROM dataset_in_pools dip "
        "JOIN datasets d ON d.id = dip.dataset_id WHERE dip.pool_id = %s AND d.full_name = %s FOR UPDATE",
        (pool.id, ds))
    rows = [r for r in rows if r["full_name"] == ds]  # MySQL's '=' ignores case and trailing blanks
    if len(rows) != 1:
        raise UpgradeError(f"dataset {ds}: {len(rows)} dataset_in_pools rows in pool {pool.id}, expected one")
    return int(rows[0]["id"]), int(rows[0]["dataset_id"])


async def _write_rows(tx: Tx, pool: PoolRow, ds: str, branch: str, index: int, snaps: list[str]) -> str | None:
    dip, dataset_id = await _locked_dip(tx, pool, ds)
    if await tx.fetchall("SELECT id FROM dataset_trees WHERE dataset_in_pool_id = %s AND `index` = 0", (dip,)):
        return "already registered"
    oldest = utc_from_local(branch)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    await tx.execute("INSERT INTO dataset_trees (dataset_in_pool_id, `index`, head, confirmed, created_at, "
                     "updated_at) VALUES (%s, 0, 0, 1, %s, %s)", (dip, oldest, now))
    tree_id = tx.lastrowid
    await tx.execute("INSERT INTO branches (dataset_tree_id, name, `index`, head, confirmed, created_at, "
                     "updated_at) VALUES (%s, %s, %s, 0, 1, %s, %s)", (tree_id, branch, index, oldest, now))
    branch_id = tx.lastrowid
    for snap in snaps:
        snapshot_id = await _snapshot_id(tx, dataset_id, snap, now)
        sip = await _snapshot_in_pool_id(tx, snapshot_id, dip)
        await tx.execute("INSERT INTO snapshot_in_pool_in_branches (snapshot_in_pool_id, "
                         "snapshot_in_pool_in_branch_id, branch_id, confirmed) VALUES (%s, NULL, %s, 1)",
                         (sip, branch_id))
    return f"{len(snaps)} snapshots"


async def _snapshot_id(tx: Tx, dataset_id: int, name: str, now: dt.datetime) -> int:
    rows = await tx.fetchall("SELECT id, name FROM snapshots WHERE dataset_id = %s AND name = %s",
                             (dataset_id, name))
    same = [r for r in rows if r["name"] == name]
    if same:
        return int(same[0]["id"])
    await tx.execute("INSERT INTO snapshots (name, dataset_id, confirmed, created_at, updated_at) "
                     "VALUES (%s, %s, 1, %s, %s)", (name, dataset_id, utc_from_local(name), now))
    return tx.lastrowid


async def _snapshot_in_pool_id(tx: Tx, snapshot_id: int, dip: int) -> int:
    row = await tx.fetchone("SELECT id FROM snapshot_in_pools WHERE snapshot_id = %s AND dataset_in_pool_id = %s",
                            (snapshot_id, dip))
    if row is not None:
        return int(row["id"])
    await tx.execute("INSERT INTO snapshot_in_pools (snapshot_id, dataset_in_pool_id, reference_count, confirmed) "
                     "VALUES (%s, %s, 0, 1)", (snapshot_id, dip))
    return tx.lastrowid

