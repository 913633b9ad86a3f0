"""Step ``reserved-names``: ``private`` is a reserved dataset name since v2.0 (every dataset keeps its data in
the directory ``<mountpoint>/private``). Datasets named ``private`` are reported; with ``--rename-private NEW``
each is renamed to ``NEW`` in ZFS and in ``datasets.name``/``full_name`` (its descendants' ``full_name`` too).

One rename is four operations, each already done or safe to redo:

1. record ``old -> new`` in the upgrade state file (so a resumed run knows which database rows to fix, even
   without ``--rename-private``);
2. ``zfs rename <parent>/private <parent>/NEW`` (done when the old name is gone and the new one exists);
3. one database transaction renaming the rows (no row with the old name left: nothing to do);
4. forget the record.

Datasets are renamed one at a time, shallowest first, the list read again after each: renaming a dataset
renames its descendants, which may be named ``private`` too.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, Final

from vpsadmind.db import Tx
from vpsadmind.upgrade.context import WORKING_ROOT, Context, PoolRow, share_tolerant
from vpsadmind.upgrade.report import Row, RowRun, Runner, Status, UpgradeError
from vpsadmind.zfs import names
from vpsadmind.zfs.errors import InvalidName

__all__ = ["RESERVED", "STATE_KEY", "ReservedNames", "rename_dataset_rows"]

RESERVED: Final = "private"
#: Key of the upgrade state file: ``{pool filesystem: {old relative name: new relative name}}``.
STATE_KEY: Final = "private_renames"


@dataclass(frozen=True, slots=True)
class _Found:
    pool: PoolRow
    rel: str                   # the dataset named private, relative to the pool filesystem
    new_rel: str | None = None   # set for a rename recorded by an earlier run

    @property
    def full(self) -> str:
        return f"{self.pool.filesystem}/{self.rel}"


def _like_prefix(text: str) -> str:
    """A LIKE pattern matching ``text/`` followed by anything (the wildcards in ``text`` escaped)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


async def _rows_below(tx: Tx, rel: str) -> list[dict[str, Any]]:
    """``datasets`` rows named ``rel`` or below it, compared exactly (MySQL's ``=`` ignores case)."""
    rows = await tx.fetchall("SELECT id, name, full_name FROM datasets WHERE full_name = %s OR full_name LIKE %s",
                             (rel, _like_prefix(rel)))
    return [r for r in rows if r["full_name"] == rel or str(r["full_name"]).startswith(rel + "/")]


async def rename_dataset_rows(tx: Tx, old: str, new: str) -> int:
    """Rename the dataset ``old`` (a full_name) to ``new`` with all its descendants; returns the rows changed."""
    changed = 0
    for row in await _rows_below(tx, old):
        full = str(row["full_name"])
        if full == old:
            await tx.execute("UPDATE datasets SET name = %s, full_name = %s WHERE id = %s",
                             (new.rsplit("/", 1)[-1], new, row["id"]))
        else:
            await tx.execute("UPDATE datasets SET full_name = %s WHERE id = %s", (new + full[len(old):], row["id"]))
        changed += 1
    return changed


def _recorded(ctx: Context, pool: PoolRow) -> dict[str, str]:
    records = ctx.state.load().get(STATE_KEY, {})
    found = records.get(pool.filesystem, {}) if isinstance(records, dict) else {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _record(ctx: Context, pool: PoolRow, old: str, new: str | None) -> None:
    """Remember (``new`` given) or forget (None) the rename of ``old`` in the state file."""
    data = ctx.state.load()
    records = data.setdefault(STATE_KEY, {}).setdefault(pool.filesystem, {})
    if new is None:
        records.pop(old, None)
    else:
        records[old] = new
    ctx.state.save(data)


async def _scan(ctx: Context, pool: PoolRow) -> list[_Found]:
    """Renames recorded by an interrupted run, then datasets named ``private``, shallowest first."""
    recorded = _recorded(ctx, pool)
    found = [_Found(pool, old, new) for old, new in sorted(recorded.items())]
    for name in sorted(await ctx.zfs.children(pool.filesystem), key=lambda n: (n.count("/"), n)):
        rel = names.relative(name, pool.filesystem)
        if not rel or rel.split("/")[0] == WORKING_ROOT or rel in recorded:
            continue
        if rel.rsplit("/", 1)[-1] == RESERVED:
            found.append(_Found(pool, rel))
    return found


def _sibling(rel: str, new: str) -> str:
    return f"{rel.rsplit('/', 1)[0]}/{new}" if "/" in rel else new


async def _conflict(ctx: Context, item: _Found, new: str) -> str:
    """Why ``item`` cannot be renamed to ``new`` (empty when it can)."""
    try:
        names.validate_component(new)
    except InvalidName as exc:
        return f"--rename-private: {exc}"
    if new == RESERVED:
        return "--rename-private must not be 'private'"
    target = _sibling(item.rel, new)
    if await ctx.zfs.exists(f"{item.pool.filesystem}/{target}"):
        return f"{item.pool.filesystem}/{target} already exists: choose another name"
    db = ctx.require_db()
    async with db.autocommit() as tx:
        if await _rows_below(tx, target):
            return f"the database already has a dataset {target}: choose another name"
        nodes = await tx.fetchall(
            "SELECT DISTINCT d.full_name, p.node_id, p.filesystem FROM datasets d "
            "JOIN dataset_in_pools dip ON dip.dataset_id = d.id JOIN pools p ON p.id = dip.pool_id "
            "WHERE d.full_name = %s", (item.rel,))
    elsewhere = sorted({f"{n['filesystem']} (node {n['node_id']})" for n in nodes
                        if n["full_name"] == item.rel and int(n["node_id"]) != ctx.server_id})
    if elsewhere:
        return "also in pools of other nodes: " + ", ".join(elsewhere) + "; rename there by hand"
    return ""


class ReservedNames:
    name = "reserved-names"
    title = "datasets named 'private' (reserved since v2.0)"

    async def inspect(self, ctx: Context) -> list[Row]:
        rows: list[Row] = []
        seen: set[str] = set()
        for pool in ctx.pools:
            for item in await _scan(ctx, pool):
                rows.append(await self._row(ctx, item))
                seen.add(item.full)
        rows += await self._orphans(ctx, seen)
        return rows

    async def _row(self, ctx: Context, item: _Found) -> Row:
        run = self._runner(ctx, item.pool)
        if item.new_rel is not None:
            new_full = f"{item.pool.filesystem}/{item.new_rel}"
            if await ctx.zfs.exists(item.full):
                return Row(item.full, f"rename to {new_full} recorded by an interrupted run", "finish it",
                           Status.TODO, run)
            if await ctx.zfs.exists(new_full):
                return Row(item.full, f"renamed to {new_full} by an interrupted run",
                           "finish: datasets rows, forget the record", Status.TODO, run)
            return Row(item.full, f"recorded rename to {new_full}, but neither dataset exists",
                       f"look at it, then remove the record from {ctx.state.path}", Status.HUMAN)
        new = ctx.options.rename_private
        if new is None:
            return Row(item.full, "dataset named 'private'", "choose a new name: --rename-private NEW", Status.HUMAN)
        problem = await _conflict(ctx, item, new)
        if problem:
            return Row(item.full, "dataset named 'private'", problem, Status.HUMAN)
        return Row(item.full, "dataset named 'private'", f"rename to {item.pool.filesystem}/"
                   f"{_sibling(item.rel, new)} (zfs and datasets)", Status.TODO, run)

    async def _orphans(self, ctx: Context, seen: set[str]) -> list[Row]:
        """``datasets`` rows named ``private`` in this node's pools whose ZFS dataset is gone (renamed by hand?)."""
        if not ctx.pools:
            return []
        by_id = {p.id: p for p in ctx.pools}
        marks = ", ".join(["%s"] * len(by_id))
        rows = await ctx.require_db().fetchall(
            "SELECT d.full_name, dip.pool_id FROM datasets d JOIN dataset_in_pools dip ON dip.dataset_id = d.id "
            f"WHERE d.name = %s AND dip.pool_id IN ({marks})", (RESERVED, *by_id))
        out: list[Row] = []
        for row in rows:
            full = f"{by_id[int(row['pool_id'])].filesystem}/{row['full_name']}"
            if full not in seen and not await ctx.zfs.exists(full):
                out.append(Row(full, f"datasets row {row['full_name']} but no such ZFS dataset",
                               "update datasets.name/full_name to the dataset's real name", Status.HUMAN))
        return out

    def _runner(self, ctx: Context, pool: PoolRow) -> RowRun:
        async def run(runner: Runner) -> str | None:
            return await finish_pool(ctx, runner, pool)
        return run


async def finish_pool(ctx: Context, runner: Runner, pool: PoolRow) -> str | None:
    """Finish the recorded renames of ``pool``, then rename every dataset named ``private`` (with
    ``--rename-private``), one at a time: renaming a parent renames its descendants, so the list is read
    again after each."""
    done = 0
    while True:
        items = await _scan(ctx, pool)
        recorded = [i for i in items if i.new_rel is not None]
        item = recorded[0] if recorded else (items[0] if items and ctx.options.rename_private else None)
        if item is None:
            return None if done else "already done by an earlier row"
        await _rename_one(ctx, runner, item)
        done += 1


async def _rename_one(ctx: Context, runner: Runner, item: _Found) -> None:
    zfs, fs, old_rel = ctx.zfs, item.pool.filesystem, item.rel
    new_rel = item.new_rel
    if new_rel is None:
        new = ctx.options.rename_private
        if new is None or await _conflict(ctx, item, new):
            raise UpgradeError(f"{item.full}: cannot rename it now, run 'check' to see why")
        new_rel = _sibling(old_rel, new)
        await runner.op(f"record {old_rel} -> {new_rel} in {ctx.state.path}",
                        functools.partial(asyncio.to_thread, _record, ctx, item.pool, old_rel, new_rel))
    old_full, new_full = f"{fs}/{old_rel}", f"{fs}/{new_rel}"
    if await zfs.exists(old_full):
        if await zfs.exists(new_full):
            raise UpgradeError(f"both {old_full} and {new_full} exist")
        await runner.op(f"zfs rename {old_full} {new_full}",
                        lambda: share_tolerant(lambda: zfs.rename(old_full, new_full), lambda: zfs.exists(new_full)))
    elif not await zfs.exists(new_full):
        raise UpgradeError(f"neither {old_full} nor {new_full} exists")

    async def update_rows() -> int:
        return await ctx.require_db().run(lambda tx: rename_dataset_rows(tx, old_rel, new_rel))

    async with ctx.require_db().autocommit() as tx:
        pending = bool(await _rows_below(tx, old_rel))
    if pending:  # an op that is already done is not run again: every op must be progress
        await runner.op(f"datasets: {old_rel} -> {new_rel}", update_rows)
    await runner.op(f"forget {old_rel} -> {new_rel} in {ctx.state.path}",
                    functools.partial(asyncio.to_thread, _record, ctx, item.pool, old_rel, None))
