"""Step ``nas``: v2.0 keeps every dataset's data in ``<mountpoint>/private``; v1.22 NAS datasets had it at the
root (v2-details 1.5, 1.7.4).

On a hypervisor, the NAS mounts of its VPSes (``mounts`` rows of datasets in primary pools) are unmounted
first (``umount -f <VE_ROOT>/<dst>``), so that no VPS sees its data vanish into ``private/``. Run this step on
every hypervisor before the storage nodes; vpsAdmin regenerates and remounts the mounts afterwards.

On a storage node every dataset of every primary pool (not the pool's own filesystem, not its ``vpsadmin``
working area), parents first, gets its root content moved into ``private/`` in two phases, so that a user
directory already called ``private`` is moved like anything else and never clobbered:

1. a fresh staging name ``.vpsadmin-upgrade-<hex>`` is recorded in the dataset's user property
   ``vpsadmin:upgrade-nas=moving:<name>`` (one ``zfs set``);
2. the staging directory is made (owner and mode of the root), then every root entry except the staging
   directory, ``.zfs`` and the exact mountpoints of descendant datasets is renamed into it, one rename each
   (an entry already moved is simply no longer at the root);
3. the property becomes ``final:<name>``;
4. the staging directory is renamed to ``private`` (if the staging directory is gone, this was done);
5. the property is removed (``zfs inherit``).

A dataset whose root holds only the directory ``private`` (and child mountpoints) and no marker is in the v2.0
layout. A root entry with a child dataset's mountpoint deeper inside it, or a child dataset mounted at
``private``, is left to a human.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Final

from vpsadmind import system
from vpsadmind.upgrade import nasfs
from vpsadmind.upgrade.context import ROLE_PRIMARY, WORKING_ROOT, Context, PoolRow, local_value
from vpsadmind.upgrade.report import Row, RowRun, Runner, Status, UpgradeError, display, plural
from vpsadmind.zfs import names
from vpsadmind.zfs.errors import DatasetNotFound

__all__ = ["NAS_MARKER", "Nas", "migrate_dataset", "mounted_paths"]

NAS_MARKER: Final = "vpsadmin:upgrade-nas"
_MARKER_RE: Final = re.compile(r"(moving|final):(\.vpsadmin-upgrade-[0-9a-f]{8})")
_PROPS: Final = ["mountpoint", "mounted", "canmount", NAS_MARKER]


@dataclass
class _NasFs:
    name: str
    mountpoint: str
    mounted: bool
    canmount: str
    marker: str | None
    child_mounts: list[bytes] = field(default_factory=list)   # mountpoints of every descendant

    @property
    def mountable(self) -> bool:
        return self.canmount == "on" and self.mountpoint.startswith("/")


def _nas_fs(name: str, props: dict[str, Any]) -> _NasFs:
    """Dataset ``name`` from a ``zfs get -r`` that covers it and its descendants."""
    p = props[name]
    below = [props[c]["mountpoint"].value for c in props if c.startswith(name + "/") and "@" not in c]
    return _NasFs(name, p["mountpoint"].value, p["mounted"].value == "yes", p["canmount"].value,
                  local_value(p, NAS_MARKER), [os.fsencode(m) for m in below if m.startswith("/")])


def _nas_datasets(pool_fs: str, props: dict[str, Any]) -> list[_NasFs]:
    """The NAS datasets of a pool (parents first) from one ``zfs get -r`` of the pool."""
    out: list[_NasFs] = []
    for name in sorted(n for n in props if "@" not in n):
        rel = names.relative(name, pool_fs)
        if rel and rel.split("/")[0] != WORKING_ROOT:
            out.append(_nas_fs(name, props))
    return out


def _parse_marker(name: str, marker: str) -> tuple[str, bytes]:
    match = _MARKER_RE.fullmatch(marker)
    if match is None:
        raise UpgradeError(f"{name}: {NAS_MARKER}={marker!r} was not set by this tool")
    return match.group(1), os.fsencode(match.group(2))


def _unescape_mount(field_text: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def mounted_paths(mounts_file: str = "/proc/self/mounts") -> set[str]:
    with open(mounts_file, "rb") as fh:
        text = fh.read().decode("utf-8", "surrogateescape")
    return {_unescape_mount(line.split(" ")[1]) for line in text.splitlines() if line.count(" ") >= 2}


class Nas:
    name = "nas"
    title = "NAS mounts unmounted on hypervisors, NAS data moved into private/"

    async def inspect(self, ctx: Context) -> list[Row]:
        rows = await self._hypervisor_rows(ctx)
        for pool in ctx.pools_with_role(ROLE_PRIMARY):
            rows += await self._pool_rows(ctx, pool)
        return rows

    # -- hypervisor: unmount NAS mounts of this node's VPSes --------------------------------------------------

    async def _hypervisor_rows(self, ctx: Context) -> list[Row]:
        mounts = await ctx.require_db().fetchall(
            "SELECT m.id, m.vps_id, m.dst FROM mounts m JOIN vps v ON v.vps_id = m.vps_id "
            "JOIN dataset_in_pools dip ON dip.id = m.dataset_in_pool_id JOIN pools p ON p.id = dip.pool_id "
            "WHERE v.vps_server = %s AND p.role = %s ORDER BY m.vps_id, m.dst, m.id", (ctx.server_id, ROLE_PRIMARY))
        mounted = await asyncio.to_thread(mounted_paths)
        rows: list[Row] = []
        for m in mounts:
            ve_root = os.path.join(ctx.cfg.vz.vz_root, "root", str(m["vps_id"]))
            path = os.path.normpath(os.path.join(ve_root, str(m["dst"]).lstrip("/")))
            subject = f"VPS {m['vps_id']} mount {m['id']}"
            if not path.startswith(ve_root + "/"):
                rows.append(Row(subject, f"dst {m['dst']!r} is outside the VPS", "fix the mounts row", Status.HUMAN))
            elif path in mounted:
                rows.append(Row(subject, f"mounted at {display(path)}", f"umount -f {display(path)}", Status.TODO,
                                self._umount(ctx, path)))
            else:
                rows.append(Row(subject, f"{display(path)}: not mounted"))
        return rows

    def _umount(self, ctx: Context, path: str) -> RowRun:
        async def run(runner: Runner) -> str | None:
            if path not in await asyncio.to_thread(mounted_paths):
                return "was not mounted any more"
            await runner.op(f"umount -f {display(path)}",
                            lambda: system.run([ctx.cfg.bin.get("umount", "umount"), "-f", path], timeout=120))
            return None
        return run

    # -- storage: move root content into private/ -----------------------------------------------------------

    async def _pool_rows(self, ctx: Context, pool: PoolRow) -> list[Row]:
        try:
            props = await ctx.zfs.get(pool.filesystem, _PROPS, recursive=True)
        except DatasetNotFound:
            return [Row(pool.filesystem, "the pool's filesystem does not exist", "fix pools.filesystem",
                        Status.HUMAN)]
        rows = [await asyncio.to_thread(self._dataset_row_sync, ctx, fs) for fs in
                _nas_datasets(pool.filesystem, props)]
        if any(r.status is Status.TODO for r in rows):
            rows += await self._other_nodes(ctx, pool)
        return rows

    def _dataset_row_sync(self, ctx: Context, fs: _NasFs) -> Row:
        run = _runner(ctx, fs.name)
        if fs.marker is not None:
            if _MARKER_RE.fullmatch(fs.marker) is None:
                return Row(fs.name, f"{NAS_MARKER}={fs.marker!r}", "not set by this tool: look at it", Status.HUMAN)
            phase = fs.marker.split(":", 1)[0]
            return Row(fs.name, f"interrupted move ({phase}: {fs.marker.split(':', 1)[1]})", "finish moving into "
                       "private/", Status.TODO, run)
        if not fs.mounted:
            if fs.mountable:
                return Row(fs.name, "not mounted", "mount it, move root content into private/", Status.TODO, run)
            return Row(fs.name, f"not mounted (canmount={fs.canmount}, mountpoint={fs.mountpoint})",
                       "mount it somewhere and run again", Status.HUMAN)
        mnt = os.fsencode(fs.mountpoint)
        exact, blocked = nasfs.child_entries(mnt, fs.child_mounts)
        later = ""
        if nasfs.PRIVATE in exact:
            if ctx.options.rename_private is None or "reserved-names" not in ctx.steps:
                return Row(fs.name, "a child dataset is mounted at private/",
                           "rename it first: --step reserved-names --rename-private NEW", Status.HUMAN)
            later = ", once the reserved-names step has renamed the child dataset named private"
        if blocked:
            return Row(fs.name, "child dataset mountpoints inside " + ", ".join(display(b) for b in sorted(blocked)),
                       "move those by hand", Status.HUMAN)
        if not later and nasfs.is_v2_root(mnt, exact):
            return Row(fs.name, "v2.0 layout: only private/" + (f" and {plural(len(exact), 'child mountpoint')}"
                                                                 if exact else ""))
        entries = nasfs.root_entries(mnt, exact)
        user_private = " (one is a user directory named private)" if nasfs.PRIVATE in entries else ""
        return Row(fs.name, f"{plural(len(entries), 'entry', 'entries')} at the root{user_private}",
                   f"move {plural(len(entries), 'entry', 'entries')} into private/{later}", Status.TODO, run)

    async def _other_nodes(self, ctx: Context, pool: PoolRow) -> list[Row]:
        rows = await ctx.require_db().fetchall(
            "SELECT s.server_name, COUNT(*) AS n FROM mounts m JOIN vps v ON v.vps_id = m.vps_id "
            "JOIN servers s ON s.server_id = v.vps_server JOIN dataset_in_pools dip ON dip.id = m.dataset_in_pool_id "
            "WHERE dip.pool_id = %s AND v.vps_server <> %s GROUP BY s.server_name ORDER BY s.server_name",
            (pool.id, ctx.server_id))
        if not rows:
            return []
        where = ", ".join(f"{r['server_name']} ({r['n']})" for r in rows)
        return [Row(pool.filesystem, f"mounted in VPSes on {where}",
                    "run 'vpsadmind upgrade apply --step nas' on those nodes first", Status.NOTE)]


def _runner(ctx: Context, name: str) -> RowRun:
    async def run(runner: Runner) -> str | None:
        return await migrate_dataset(ctx, runner, name)
    return run


async def _load(ctx: Context, name: str) -> _NasFs:
    return _nas_fs(name, await ctx.zfs.get(name, _PROPS, recursive=True))


async def migrate_dataset(ctx: Context, runner: Runner, name: str) -> str | None:
    """Move the root content of NAS dataset ``name`` into ``private/``, from whatever phase it is in."""
    zfs = ctx.zfs
    fs = await _load(ctx, name)
    if not fs.mounted:
        if not fs.mountable:
            raise UpgradeError(f"{name} is not mounted and cannot be (canmount={fs.canmount})")
        await runner.op(f"zfs mount {name}", lambda: zfs.mount(name))
        fs = await _load(ctx, name)
    mnt = os.fsencode(fs.mountpoint)
    exact, blocked = nasfs.child_entries(mnt, fs.child_mounts)
    if blocked or nasfs.PRIVATE in exact:
        raise UpgradeError(f"{name}: child dataset mountpoints in the way, run 'check'")
    marker = fs.marker
    if marker is None:
        if await asyncio.to_thread(nasfs.is_v2_root, mnt, exact):
            return "already in the v2.0 layout"
        staging = await asyncio.to_thread(nasfs.new_staging, mnt)
        marker = f"moving:{os.fsdecode(staging)}"
        await runner.op(f"zfs set {NAS_MARKER}={marker} {name}", lambda: zfs.set(name, {NAS_MARKER: marker}))
    phase, staging = _parse_marker(name, marker)
    if phase == "moving":
        await _move_all(ctx, runner, name, mnt, staging, exact)
    await _finish(ctx, runner, name, mnt, staging)
    return None


async def _move_all(ctx: Context, runner: Runner, name: str, mnt: bytes, staging: bytes, exact: set[bytes]) -> None:
    target = os.path.join(mnt, staging)
    if not await asyncio.to_thread(nasfs.staging_ready, mnt, staging):  # every op must be progress
        await runner.op(f"mkdir {display(target)}", lambda: asyncio.to_thread(nasfs.make_staging, mnt, staging))
    for entry in await asyncio.to_thread(nasfs.root_entries, mnt, exact | {staging}):
        src, dst = os.path.join(mnt, entry), os.path.join(target, entry)
        await runner.op(f"mv {display(src)} {display(dst)}",
                        functools.partial(asyncio.to_thread, nasfs.move_noreplace, src, dst))
    final = f"final:{os.fsdecode(staging)}"
    await runner.op(f"zfs set {NAS_MARKER}={final} {name}", lambda: ctx.zfs.set(name, {NAS_MARKER: final}))


async def _finish(ctx: Context, runner: Runner, name: str, mnt: bytes, staging: bytes) -> None:
    staged, private = os.path.join(mnt, staging), os.path.join(mnt, nasfs.PRIVATE)
    if await asyncio.to_thread(os.path.lexists, staged):
        await runner.op(f"mv {display(staged)} {display(private)}",
                        lambda: asyncio.to_thread(nasfs.move_noreplace, staged, private))
    elif not await asyncio.to_thread(os.path.isdir, private):
        raise UpgradeError(f"{name}: neither {display(staged)} nor {display(private)} exists")
    await runner.op(f"zfs inherit {NAS_MARKER} {name}", lambda: ctx.zfs.inherit(name, NAS_MARKER))
