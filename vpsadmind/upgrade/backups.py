"""Step ``backups``: flat v1.22 backup datasets ``<pool_fs>/<ds>@backup-<time>`` become v2.0 branches
``<pool_fs>/<ds>/tree.0/branch-<oldest>.0@<time>`` keeping every snapshot, and (``--register-db``) are
registered in the database exactly once (see vpsadmind.upgrade.register).

Snapshot names (only the part after ``@`` changes; policy in vpsadmind.upgrade.zfsstate.v2_name):
``backup-<time>`` -> ``<time>``; ``<time>`` kept; ``restore-<time>.<n>`` -> its own creation time; anything
else, or two snapshots that would get the same name, leaves the dataset to a human.

Rearranging ``B = <pool_fs>/<ds>`` (``T = B.v2-upgrade``, ``BR = B/tree.0/branch-<oldest>.0``). A dataset
cannot get children while it must become its own grandchild, so it is moved aside first. Each operation is
chosen from what ZFS shows *now*, so a run may stop anywhere and the next one continues. The stage shows in
the names alone (v1.22 never made a ``.v2-upgrade`` dataset); the branch name comes from the oldest snapshot,
which travels with every rename:

====  ==========================================================  ========================================
op    what                                                        state seen before it
====  ==========================================================  ========================================
1     ``zfs rename B@backup-<t> B@<t>`` (one per snapshot)        v1.22 snapshot names in B (or T, or BR)
2     ``zfs rename B T`` (keeps every snapshot and the lineage)    B has snapshots, T does not exist
3     ``zfs create B``                                            T exists, B does not
4     ``zfs create B/tree.0``                                     T and the empty B exist
5     ``zfs rename T BR``                                         T, B and B/tree.0 exist
6     ``zfs mount`` B, B/tree.0 or BR when one is not mounted     (zfs-fuse renames unmount and remount)
====  ==========================================================  ========================================

A ``T`` whose snapshots are not v2.0-named backups, or that exists next to a ``B`` with snapshots, is left to a
human.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from vpsadmind.upgrade.context import ROLE_BACKUP, WORKING_ROOT, Context, PoolRow, share_tolerant
from vpsadmind.upgrade.register import pool_dips, registration_row
from vpsadmind.upgrade.report import Row, Runner, Status, UpgradeError, plural
from vpsadmind.upgrade.zfsstate import BRANCH_RE, TIMESTAMP_RE, Fs, inventory, plan_renames
from vpsadmind.zfs import names
from vpsadmind.zfs.driver import Zfs

__all__ = ["TEMP_SUFFIX", "TREE", "Backups", "finish_backup"]

TEMP_SUFFIX: Final = ".v2-upgrade"
TREE: Final = "tree.0"

_Op = tuple[str, Callable[[], Awaitable[str | None]]]


@dataclass
class _Backup:
    """One backup dataset of a pool as ZFS shows it (any stage of the rearrangement)."""

    ds: str
    b: Fs | None = None
    t: Fs | None = None
    tree: Fs | None = None
    branches: list[Fs] = field(default_factory=list)
    children: list[str] = field(default_factory=list)   # below B, neither trees nor their branches


def _collect(pool_fs: str, inv: dict[str, Fs]) -> dict[str, _Backup]:
    found: dict[str, _Backup] = {}
    for name, fs in inv.items():
        rel = names.relative(name, pool_fs)
        if not rel:
            continue
        parts = rel.split("/")
        if parts[0] == WORKING_ROOT:
            continue
        if len(parts) == 1 and parts[0].endswith(TEMP_SUFFIX):
            ds = parts[0][:-len(TEMP_SUFFIX)]
            found.setdefault(ds, _Backup(ds)).t = fs
            continue
        item = found.setdefault(parts[0], _Backup(parts[0]))
        if len(parts) == 1:
            item.b = fs
        elif parts[1] == TREE and len(parts) == 2:
            item.tree = fs
        elif parts[1] == TREE and len(parts) == 3 and BRANCH_RE.fullmatch(parts[2]):
            item.branches.append(fs)
        elif not parts[1].startswith("tree."):
            item.children.append(name)
    return found


def _natural(ds: str) -> tuple[int, int, str]:
    return (0, int(ds), ds) if ds.isdigit() else (1, 0, ds)


class Backups:
    name = "backups"
    title = "backup snapshots renamed, flat datasets moved into tree.0/branch-<oldest>.0, DB registration"

    async def inspect(self, ctx: Context) -> list[Row]:
        rows: list[Row] = []
        for pool in ctx.pools_with_role(ROLE_BACKUP):
            inv = await inventory(ctx.zfs, pool.filesystem)
            if not inv:
                rows.append(Row(pool.filesystem, "the pool's filesystem does not exist", "fix pools.filesystem",
                                Status.HUMAN))
                continue
            dips = await pool_dips(ctx, pool)
            for ds, item in sorted(_collect(pool.filesystem, inv).items(), key=lambda kv: _natural(kv[0])):
                row, branch, count = self._layout_row(ctx, pool, item)
                rows.append(row)
                if branch is not None and count and row.status is not Status.HUMAN:
                    rows.append(registration_row(ctx, pool, ds, branch, count, dips.get(ds)))
        return rows

    def _layout_row(self, ctx: Context, pool: PoolRow, item: _Backup) -> tuple[Row, str | None, int]:
        """The row for the ZFS side, the branch the backup is (or becomes) and its number of snapshots."""
        subject = f"{pool.filesystem}/{item.ds}"
        run = _runner(ctx, pool, item.ds)
        if item.t is not None:
            branch = _temp_branch(item.t)
            if branch is None or (item.b is not None and item.b.snaps):
                return Row(subject, f"{item.t.name} exists, but not as this tool leaves it",
                           "look at it: the backups may be there", Status.HUMAN), None, 0
            return Row(subject, f"interrupted move: {plural(len(item.t.snaps), 'snapshot')} in {item.t.name}",
                       f"finish moving to {item.ds}/{TREE}/{branch}", Status.TODO, run), branch, len(item.t.snaps)
        if item.b is not None and item.b.snaps:
            return self._flat_row(subject, item, run)
        return self._v2_row(subject, item, run)

    def _flat_row(self, subject: str, item: _Backup, run: Callable[[Runner], Awaitable[str | None]]
                  ) -> tuple[Row, str | None, int]:
        assert item.b is not None
        snaps = item.b.snaps
        found = f"flat v1.22 backup, {plural(len(snaps), 'snapshot')}"
        if item.children or item.tree is not None:
            return Row(subject, found + " and child datasets " + ", ".join(item.children or [TREE]),
                       "sort it out by hand", Status.HUMAN), None, 0
        renames, problems = plan_renames(snaps)
        if problems:
            return Row(subject, found + ": " + "; ".join(problems), "rename or destroy those snapshots by hand",
                       Status.HUMAN), None, 0
        oldest = renames.get(snaps[0].name, snaps[0].name)
        branch = f"branch-{oldest}.0"
        rename = f"rename {plural(len(renames), 'snapshot')}, " if renames else ""
        return Row(subject, found + (f" ({len(renames)} with v1.22 names)" if renames else ""),
                   f"{rename}move to {item.ds}/{TREE}/{branch}", Status.TODO, run), branch, len(snaps)

    def _v2_row(self, subject: str, item: _Backup, run: Callable[[Runner], Awaitable[str | None]]
                ) -> tuple[Row, str | None, int]:
        if item.tree is None or not item.branches:
            return Row(subject, "no snapshots, nothing to move"), None, 0
        branch = item.branches[0] if len(item.branches) == 1 else None
        if branch is None:
            return Row(subject, f"v2.0 layout, {len(item.branches)} branches in {TREE}"), None, 0
        short = branch.name.rsplit("/", 1)[1]
        found = f"v2.0 layout: {TREE}/{short}, {plural(len(branch.snaps), 'snapshot')}"
        renames, problems = plan_renames(branch.snaps)
        if problems:
            return Row(subject, found + ": " + "; ".join(problems), "rename those snapshots by hand",
                       Status.HUMAN), None, 0
        todo = [f"rename {plural(len(renames), 'snapshot')}"] if renames else []
        unmounted = [fs.name for fs in (item.b, item.tree, branch) if fs and fs.should_be_mounted and not fs.mounted]
        todo += [f"mount {plural(len(unmounted), 'dataset')}"] if unmounted else []
        if todo:
            return Row(subject, found, ", ".join(todo), Status.TODO, run), short, len(branch.snaps)
        return Row(subject, found), short, len(branch.snaps)


def _runner(ctx: Context, pool: PoolRow, ds: str) -> Callable[[Runner], Awaitable[str | None]]:
    async def run(runner: Runner) -> str | None:
        return await finish_backup(ctx, runner, pool, ds)
    return run


async def finish_backup(ctx: Context, runner: Runner, pool: PoolRow, ds: str) -> str | None:
    """Bring backup ``ds`` of ``pool`` into the v2.0 layout from whatever stage it is in."""
    notes: set[str] = set()
    await _rename_snapshots(ctx.zfs, runner, pool.filesystem, ds)
    while (step := await _next_op(ctx.zfs, pool.filesystem, ds)) is not None:
        note = await runner.op(*step)
        if note:
            notes.add(note)
    return "; ".join(sorted(notes)) or None


async def _rename_snapshots(zfs: Zfs, runner: Runner, pool_fs: str, ds: str) -> None:
    """Rename the v1.22 snapshot names of whichever dataset holds the backups now (B, T or the branch)."""
    b, t = f"{pool_fs}/{ds}", f"{pool_fs}/{ds}{TEMP_SUFFIX}"
    inv = {**await inventory(zfs, b), **await inventory(zfs, t, recursive=False)}

    def holds_backups(fs: Fs) -> bool:
        if fs.name in (b, t):
            return True
        return names.parent(fs.name) == f"{b}/{TREE}" and BRANCH_RE.fullmatch(fs.name.rsplit("/", 1)[1]) is not None

    for holder in [fs for fs in inv.values() if fs.snaps and holds_backups(fs)]:
        renames, problems = plan_renames(holder.snaps)
        if problems:
            raise UpgradeError(f"{holder.name}: " + "; ".join(problems))
        for old, new in renames.items():
            src, dst = f"{holder.name}@{old}", f"{holder.name}@{new}"
            await runner.op(f"zfs rename {src} {dst}", functools.partial(zfs.rename, src, dst))


def _create(zfs: Zfs, name: str) -> _Op:
    return f"zfs create {name}", lambda: share_tolerant(lambda: zfs.create(name), lambda: zfs.exists(name))


def _rename(zfs: Zfs, old: str, new: str) -> _Op:
    return f"zfs rename {old} {new}", lambda: share_tolerant(lambda: zfs.rename(old, new), lambda: zfs.exists(new))


async def _none_after(fn: Callable[..., Awaitable[None]], *args: str) -> str | None:
    await fn(*args)
    return None


def _temp_branch(temp: Fs) -> str | None:
    """The branch a moved-aside backup ``T`` becomes, None when ``T`` is not what this tool makes."""
    if not temp.snaps or not all(TIMESTAMP_RE.fullmatch(s.name) for s in temp.snaps):
        return None
    return f"branch-{temp.snaps[0].name}.0"


async def _next_op(zfs: Zfs, pool_fs: str, ds: str) -> _Op | None:
    """The next operation of the rearrangement table above, from the current state (None: finished)."""
    b, t = f"{pool_fs}/{ds}", f"{pool_fs}/{ds}{TEMP_SUFFIX}"
    tree = f"{b}/{TREE}"
    inv = await inventory(zfs, b)
    temp = (await inventory(zfs, t, recursive=False)).get(t)
    if temp is not None:
        branch = _temp_branch(temp)
        if branch is None:
            raise UpgradeError(f"{t} exists, but not as this tool leaves it")
        if b not in inv:
            return _create(zfs, b)
        if inv[b].snaps:
            raise UpgradeError(f"both {b} and {t} hold snapshots")
        if tree not in inv:
            return _create(zfs, tree)
        if f"{tree}/{branch}" in inv:
            raise UpgradeError(f"{tree}/{branch} exists while {t} still holds the backups")
        return _rename(zfs, t, f"{tree}/{branch}")
    flat = inv.get(b)
    if flat is not None and flat.snaps:
        if not all(TIMESTAMP_RE.fullmatch(s.name) for s in flat.snaps):
            raise UpgradeError(f"{b}: snapshots not renamed to the v2.0 format")
        return _rename(zfs, b, t)
    branches = [fs for name, fs in inv.items() if names.parent(name) == tree
                and BRANCH_RE.fullmatch(name.rsplit("/", 1)[1])]
    for mountable in (inv.get(b), inv.get(tree), *branches):
        if mountable is not None and mountable.should_be_mounted and not mountable.mounted:
            return f"zfs mount {mountable.name}", functools.partial(_none_after, zfs.mount, mountable.name)
    return None
