"""Step ``pools``: every pool of this node has its working datasets ``vpsadmin``, ``vpsadmin/mount`` and
``vpsadmin/download`` (contract 7.1; v2.0's Pool::Create makes them for new pools, old ones need them)."""

from __future__ import annotations

from vpsadmind.handlers.pool import WORKING_DATASETS
from vpsadmind.upgrade.context import Context, PoolRow, share_tolerant
from vpsadmind.upgrade.report import Row, Runner, Status

__all__ = ["Pools"]


class Pools:
    name = "pools"
    title = "working datasets vpsadmin, vpsadmin/mount, vpsadmin/download"

    async def inspect(self, ctx: Context) -> list[Row]:
        rows: list[Row] = []
        for pool in ctx.pools:
            rows.append(await self._pool(ctx, pool))
        return rows

    async def _pool(self, ctx: Context, pool: PoolRow) -> Row:
        subject = f"{pool.filesystem} ({pool.role_name})"
        if not await ctx.zfs.exists(pool.filesystem):
            return Row(subject, "the pool's filesystem does not exist on this node",
                       "fix pools.filesystem or create it", Status.HUMAN)
        present = set(await ctx.zfs.children(pool.filesystem))
        missing = [sub for sub in WORKING_DATASETS if f"{pool.filesystem}/{sub}" not in present]
        if not missing:
            return Row(subject, "all working datasets exist")

        async def run(runner: Runner) -> str | None:
            return await create_working_datasets(ctx, runner, pool)

        return Row(subject, "missing: " + ", ".join(missing), "zfs create " + ", ".join(missing), Status.TODO, run)


async def create_working_datasets(ctx: Context, runner: Runner, pool: PoolRow) -> str | None:
    """Create the missing working datasets, parents first (each a separate, already-done-or-redoable op)."""
    zfs = ctx.zfs
    notes: list[str] = []
    for sub in WORKING_DATASETS:
        name = f"{pool.filesystem}/{sub}"
        if await zfs.exists(name):
            continue

        async def create(name: str = name) -> str | None:
            return await share_tolerant(lambda: zfs.create(name), lambda: zfs.exists(name))

        note = await runner.op(f"zfs create {name}", create)
        if note:
            notes.append(f"{sub}: {note}")
    return "; ".join(notes) or None
