"""Mounting and unmounting one VPS's datasets and snapshots (v2.0's ``Mounter``, contract 10.1).

Used by the action scripts (through :mod:`vpsadmind.mounts.script`, with the start-time failure policies), by
5302/5303 and by the delayed mounter (``oneshot``: a failure raises). The commands per type:

==================  ==========================================================================================
``dataset_local``   ``mount -c --bind <mountpoint of pool_fs/dataset>/private <dst>``
``snapshot_local``  ``mount -c --bind <mountpoint of pool_fs/vpsadmin/mount/<snapshot_id>.snapshot>/private <dst>``
``dataset_remote``  ``mount -c <mount_opts> -o<mode> <addr>:/<pool_fs>/<dataset>/private <dst>``
``snapshot_remote`` ``mount -c <mount_opts> -o<mode> <addr>:/<pool_fs>/vpsadmin/mount/<id>.snapshot/private <dst>``
==================  ==========================================================================================

A local mount that must be read-only (or has ``-o`` items) gets a second command,
``mount -c -o remount,bind,<mode>[,items] <dst>``: the kernel ignores flags on the bind itself, and util-linux's
own remount would re-resolve the target by name. ``<dst>`` is always a ``/proc/<pid>/fd`` path to the directory
opened safely below the VPS root (:mod:`vpsadmind.mounts.paths`); ``-c`` is ``--no-canonicalize``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import stat
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from vpsadmind import system
from vpsadmind.errors import HandlerError
from vpsadmind.mounts.paths import Target, UnsafePath, open_target
from vpsadmind.mounts.spec import MountSpec, parse_mount_opts, parse_umount_opts
from vpsadmind.zfs.driver import Zfs
from vpsadmind.zfs.errors import ZfsError

__all__ = ["Commands", "MountFailed", "Mounter", "StateSink", "UnsafeDestination", "random_wait"]

log = structlog.get_logger("vpsadmind.mounts")

_NO_CANON: Final = "--no-canonicalize"


class MountFailed(HandlerError):
    """A mount or umount did not happen; ``output`` names the mount, its destination and the command."""


class UnsafeDestination(MountFailed):
    """The destination would leave the VPS root (a symlink or a non-directory on the way): refused, nothing
    was created or mounted through it."""


class StateSink(Protocol):
    """Where mount states and "mount later" requests go: the daemon's registry, or its control socket."""

    async def report(self, vps_id: int, mount_id: int, state: str) -> None: ...

    async def delay(self, vps_id: int, mount: MountSpec) -> None: ...


@dataclass(frozen=True, slots=True)
class Commands:
    """``bin.mount`` / ``bin.umount`` and how long one of them may take (a dead NFS server hangs mount)."""

    mount: str = "mount"
    umount: str = "umount"
    timeout: float = 300.0


def random_wait(attempt: int) -> int:
    """v2.0's wait before retry ``attempt`` (1, 2, ...) of a ``wait_for_mount`` mount: ``min(10+5n, 60)`` s plus
    a random ``0 .. min(10+10n, 240)-1`` s, so that many VPSes waiting for one NFS server do not retry in step."""
    return min(10 + 5 * attempt, 60) + random.randrange(min(10 + 10 * attempt, 240))


class Mounter:
    """Mounts of VPS ``vps_id`` below ``ve_root``. ``zfs`` gives the driver for local sources (only called when a
    local mount needs one), ``sleep`` is how ``wait_for_mount`` waits (tests pass a recorder)."""

    def __init__(self, vps_id: int, ve_root: str | os.PathLike[str], *, sink: StateSink,
                 zfs: Callable[[], Awaitable[Zfs]] | None = None, commands: Commands | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 wait: Callable[[int], float] = random_wait) -> None:
        self.vps_id = vps_id
        self.ve_root = Path(ve_root)
        self.sink = sink
        self._zfs = zfs
        self.commands = commands or Commands()
        self._sleep = sleep
        self._wait = wait

    # -- one mount ------------------------------------------------------------------------------------------

    async def mount(self, m: MountSpec) -> bool:
        """Mount ``m`` now and report ``mounted``; False if something was mounted there already (v2.0 accepted
        "already mounted" silently; here it is reported ``mounted`` too). Raises MountFailed (UnsafeDestination)."""
        source = m.remote_source() if m.remote else await self.local_source(m)
        with self._target(m, create=True) as target:
            if target.stale:
                await self._clear_stale(m, target)
            if target.is_mountpoint():
                log.info("already_mounted", vps=self.vps_id, mount=m.id, dst=m.dst)
                await self.sink.report(self.vps_id, m.id, "mounted")
                return False
            first, second = self.mount_argvs(m, source, target)
            try:
                await self._run(m, target, first)
            except MountFailed as exc:
                if "already mounted" not in str(exc):  # mount.nfs: "... is busy or already mounted"
                    raise
                log.info("already_mounted", vps=self.vps_id, mount=m.id, dst=m.dst)
                second = None
            if second is not None:
                await self._second(m, target, second)
        log.info("mounted", vps=self.vps_id, mount=m.id, dst=m.dst, source=source)
        await self.sink.report(self.vps_id, m.id, "mounted")
        return True

    def mount_argvs(self, m: MountSpec, source: str, target: Target) -> tuple[list[str], list[str] | None]:
        """The mount command and, for a local mount that needs it, the remount that applies mode and options."""
        opts = parse_mount_opts(m.mount_opts)
        mode = m.effective_mode
        if m.remote:
            return [self.commands.mount, _NO_CANON, *opts.argv(), f"-o{mode}", source, target.direct()], None
        first = [self.commands.mount, _NO_CANON, *opts.flags, "--bind", source, target.direct()]
        if mode == "rw" and not opts.options:
            return first, None
        items = ",".join(["remount", "bind", mode, *opts.options])
        return first, [self.commands.mount, _NO_CANON, "-o", items, target.via_parent()]

    async def _second(self, m: MountSpec, target: Target, argv: list[str]) -> None:
        """The remount; if it fails, the bind mount made just before is undone (a read-only mount must never be
        left writable)."""
        try:
            await self._run(m, target, argv)
        except MountFailed:
            target.release()
            undo = [self.commands.umount, _NO_CANON, target.via_parent()]
            try:
                await self._run(m, target, undo)
            except MountFailed as exc:
                log.error("mount_undo_failed", vps=self.vps_id, mount=m.id, dst=m.dst, error=str(exc))
            raise

    async def _clear_stale(self, m: MountSpec, target: Target) -> None:
        """v2.0: a destination that cannot be stat'ed is an NFS mount whose export vanished: ``umount -f`` it."""
        log.warning("stale_mount", vps=self.vps_id, mount=m.id, dst=m.dst)
        await self._run(m, target, [self.commands.umount, _NO_CANON, "-f", target.via_parent()],
                        not_mounted_ok=True)
        target.reopen()

    async def local_source(self, m: MountSpec) -> str:
        """``<mountpoint>/private`` of the dataset (or the snapshot's clone), which must be mounted and hold a
        real ``private`` directory: binding the empty directory under an unmounted dataset would hide the data."""
        name = m.dataset()
        if self._zfs is None:
            raise self._failed(m, f"no zfs driver to find the mountpoint of {name}")
        try:
            props = (await (await self._zfs()).get(name, ["mountpoint", "mounted"])).get(name, {})
        except ZfsError as exc:
            raise self._failed(m, f"source dataset {name} is not available: {exc}") from None
        mountpoint, mounted = props.get("mountpoint"), props.get("mounted")
        if mountpoint is None or not mountpoint.value.startswith("/") or mounted is None \
                or mounted.value != "yes":
            raise self._failed(m, f"source dataset {name} is not mounted")
        source = mountpoint.value.rstrip("/") + "/private"
        try:
            st = os.lstat(source)
        except OSError as exc:
            raise self._failed(m, f"source {source} is not available: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise self._failed(m, f"source {source} is not a directory")
        return source

    async def umount(self, m: MountSpec) -> bool:
        """``umount <umount_opts> <dst>`` and report ``unmounted``; False if nothing was mounted there (v2.0
        tolerated "not mounted" too). A symlink on the way raises UnsafeDestination: our mount cannot be behind it."""
        opts = parse_umount_opts(m.umount_opts)
        if not m.remote:
            # -f is for unreachable NFS servers. On a bind mount it only calls the filesystem's umount_begin,
            # which acts on the whole source filesystem: FUSE aborts its connection (zfs-fuse's dataset dies
            # for every user), ZFS unmounts every snapshot under .zfs. A bind mount never needs it.
            opts = tuple(o for o in opts if o not in ("-f", "--force"))
        with self._target(m, create=False) as target:
            mounted = target.stale or target.is_mountpoint()
            if mounted:
                target.release()  # our own descriptor inside the mount would make it busy
                argv = [self.commands.umount, _NO_CANON, *opts, target.via_parent()]
                mounted = await self._run(m, target, argv, not_mounted_ok=True)
        if mounted:
            log.info("unmounted", vps=self.vps_id, mount=m.id, dst=m.dst)
        await self.sink.report(self.vps_id, m.id, "unmounted")
        return mounted

    @contextlib.contextmanager
    def _target(self, m: MountSpec, *, create: bool) -> Iterator[Target]:
        try:
            with open_target(self.ve_root, m.dst, create=create) as target:
                yield target
        except UnsafePath as exc:
            raise UnsafeDestination(f"mount {m.id} ({m.dst}) of VPS {self.vps_id}: {exc}",
                                    output={"mount_id": m.id, "dst": m.dst, "path": exc.path}) from None

    async def _run(self, m: MountSpec, target: Target, argv: list[str], *, not_mounted_ok: bool = False) -> bool:
        """Run a mount command; False if it failed only because nothing was mounted (and that is fine)."""
        try:
            await system.run(argv, timeout=self.commands.timeout)
        except system.CommandFailed as exc:
            text = exc.stderr + exc.stdout
            if not_mounted_ok and "not mounted" in text:
                return False
            raise self._failed(m, f"{argv[0]} failed for {target.path} with {exc.exitstatus}: {text.strip()}",
                               cmd=" ".join(argv), exitstatus=exc.exitstatus, target=target.path) from None
        except OSError as exc:
            raise self._failed(m, f"cannot run {argv[0]}: {exc.strerror or exc}", cmd=" ".join(argv)) from None
        return True

    def _failed(self, m: MountSpec, message: str, **output: Any) -> MountFailed:
        return MountFailed(f"mount {m.id} ({m.dst}) of VPS {self.vps_id}: {message}",
                           output={"mount_id": m.id, "dst": m.dst, **output})

    # -- the action scripts --------------------------------------------------------------------------------

    async def mount_all(self, mounts: Sequence[MountSpec]) -> None:
        """The ``.mount`` action script: every mount in file order, each failure handled by its
        ``on_start_fail``. Raises (the script fails, vzctl aborts the start) only for ``fail_start``; the mounts
        this run made are undone first, so that vzctl can unmount the VPS root again."""
        failed: dict[str, str] = {}  # dst of a failed mount -> its policy, inherited by the mounts below it
        done: list[MountSpec] = []
        for m in mounts:
            parent = next((dst for dst in failed if m.dst.startswith(dst + "/")), None)
            if parent is not None:
                await self._inherit(m, failed[parent])
                failed[m.dst] = failed[parent]
                continue
            try:
                if await self._with_policy(m, failed):
                    done.append(m)
            except MountFailed:
                await self._undo(done)
                raise

    async def _inherit(self, m: MountSpec, policy: str) -> None:
        """A parent mount failed: nothing may be mounted onto the directory it should have covered. v2.0 meant
        to do this too, but compared a host path with a VPS path and never did (v2-details 4.7)."""
        log.info("parent_not_mounted", vps=self.vps_id, mount=m.id, dst=m.dst, policy=policy)
        if policy == "mount_later":
            await self.sink.delay(self.vps_id, m)
        else:
            await self.sink.report(self.vps_id, m.id, "skipped")

    async def _with_policy(self, m: MountSpec, failed: dict[str, str]) -> bool:
        attempt = 0
        while True:
            try:
                return await self.mount(m)
            except MountFailed as exc:
                policy = m.on_start_fail
                log.warning("mount_failed", vps=self.vps_id, mount=m.id, dst=m.dst, policy=policy, error=str(exc))
                if policy == "fail_start":
                    await self.sink.report(self.vps_id, m.id, "unmounted")
                    raise
                if policy in ("skip", "mount_later"):
                    failed[m.dst] = policy
                    if policy == "skip":
                        await self.sink.report(self.vps_id, m.id, "skipped")
                    else:
                        await self.sink.delay(self.vps_id, m)
                    return False
            # wait_for_mount: v2.0 retries forever (and so holds vzctl start); the state says why
            if attempt == 0:
                await self.sink.report(self.vps_id, m.id, "waiting")
            attempt += 1
            wait = self._wait(attempt)
            log.info("mount_retry", vps=self.vps_id, mount=m.id, dst=m.dst, attempt=attempt, wait=wait)
            await self._sleep(wait)

    async def _undo(self, done: list[MountSpec]) -> None:
        for m in reversed(done):
            try:
                await self.umount(m)
            except MountFailed as exc:
                log.error("umount_failed", vps=self.vps_id, mount=m.id, dst=m.dst, error=str(exc))

    async def umount_all(self, mounts: Sequence[MountSpec]) -> list[str]:
        """The ``.umount`` action script: every mount in reverse file order (children first). Unlike v2.0, which
        stopped at the first error, it goes on with the others and returns the errors; the script then fails,
        so vzctl reports the stop as failed (79) instead of hiding a mount left behind."""
        errors: list[str] = []
        for m in reversed(mounts):
            try:
                await self.umount(m)
            except MountFailed as exc:
                log.error("umount_failed", vps=self.vps_id, mount=m.id, dst=m.dst, error=str(exc))
                errors.append(str(exc))
        return errors
