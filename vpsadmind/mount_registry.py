"""The node's delayed mounts and mount state reports (contract 10.1; v2.0's DelayedMounter and MountReporter).

The mount action scripts that vzctl runs at VPS start/stop (and, later, the mount handlers 5301-5303 of
issue 5) tell the daemon two things, over the control socket (``delayed_mount``, ``mount_state``) or directly:

* a mount failed at VPS start with ``on_start_fail: mount_later``: it is **registered** here, per VPS, to be
  retried later; ``vpsadmindctl status -m`` lists what is registered;
* a mount changed state: the latest state per mount id is **queued** and written to ``mounts.current_state``
  in the background (``UPDATE mounts SET current_state = <index> WHERE id = <mount id>``, as v2.0), so a script
  running inside ``vzctl start`` never waits for the database. A report replaces an older queued one for the
  same mount; states that cannot be written (database away) stay queued and are retried.

API for the mount handlers (all synchronous, event-loop thread only)::

    from vpsadmind.mount_registry import mounts_for
    mounts = mounts_for(ctx)                  # the daemon's registry (ctx: the handler's HandlerContext)
    mounts.delay(vps_id, mount)               # register for a retry and report "delayed" (v2.0 mount_later)
    mounts.delayed.pending(vps_id)            # {mount_id: mount} registered for the VPS, parents first (dst)
    mounts.delayed.unregister(vps_id, mid)    # after a successful retry, or Mount/Umount of that mount
    mounts.delayed.forget_vps(vps_id)         # VPS stopped or restarted: drop all its entries
    mounts.reporter.report(vps_id, mid, "mounted")  # queue a state for mounts.current_state

Still to come with the mount handlers: the retry loop (v2.0: every 3 minutes, VPSes no longer running are
forgotten) and re-registering at start the mounts whose ``current_state`` is ``delayed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import weakref
from typing import TYPE_CHECKING, Any, Final

import structlog

from vpsadmind.errors import AgentError

if TYPE_CHECKING:
    from vpsadmind.db import Database
    from vpsadmind.handlers.base import HandlerContext

__all__ = ["MOUNT_STATES", "DelayedMounts", "MountReporter", "Mounts", "install", "mounts_for"]

log = structlog.get_logger("vpsadmind.mounts")

#: ``mounts.current_state`` codes: the index in this tuple (API enum, contract 10.1).
MOUNT_STATES: Final = ("created", "mounted", "unmounted", "skipped", "delayed", "waiting")


class DelayedMounts:
    """Mount hashes (as in ``t_param`` and the mounts files) waiting for a retry, per VPS and mount id."""

    def __init__(self) -> None:
        self._vpses: dict[int, dict[int, dict[str, Any]]] = {}

    def register(self, vps_id: int, mount: dict[str, Any]) -> bool:
        """Register ``mount`` (it must have an integer ``id``); False if that id is registered already."""
        mount_id = mount.get("id")
        if isinstance(mount_id, bool) or not isinstance(mount_id, int):
            raise AgentError(f"a mount needs an integer id, got {mount_id!r:.40}")
        entries = self._vpses.setdefault(vps_id, {})
        if mount_id in entries:
            return False
        entries[mount_id] = {**copy.deepcopy(mount), "registered_at": int(time.time())}
        return True

    def unregister(self, vps_id: int, mount_id: int) -> bool:
        entries = self._vpses.get(vps_id, {})
        found = entries.pop(mount_id, None) is not None
        if not entries:
            self._vpses.pop(vps_id, None)
        return found

    def forget_vps(self, vps_id: int) -> list[dict[str, Any]]:
        return list(self._vpses.pop(vps_id, {}).values())

    def pending(self, vps_id: int) -> dict[int, dict[str, Any]]:
        """The VPS's registered mounts by id, parents before children (by ``dst``, as the API orders them)."""
        entries = self._vpses.get(vps_id, {})
        ordered = sorted(entries.items(), key=lambda kv: str(kv[1].get("dst", "")))
        return {mid: copy.deepcopy(m) for mid, m in ordered}

    def vps_ids(self) -> list[int]:
        return sorted(self._vpses)

    def count(self) -> int:
        return sum(len(v) for v in self._vpses.values())

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """For ``status``: ``{"<vps_id>": [mount, ...]}`` (with ``registered_at``, unix seconds)."""
        return {str(vps): list(self.pending(vps).values()) for vps in self.vps_ids()}


class MountReporter:
    """Writes the latest state of each reported mount to ``mounts.current_state`` (see the module docstring)."""

    def __init__(self, db: Database, *, retry_interval: float = 5.0) -> None:
        self.db = db
        self.retry_interval = retry_interval
        self._pending: dict[int, tuple[int, str]] = {}  # mount id -> (vps id, state)
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self.written = 0

    def report(self, vps_id: int, mount_id: int, state: str) -> None:
        if state not in MOUNT_STATES:
            raise AgentError(f"unknown mount state {state!r:.40}: expected one of {', '.join(MOUNT_STATES)}")
        self._pending.pop(mount_id, None)  # re-insert: the dict keeps reports in arrival order
        self._pending[mount_id] = (vps_id, state)
        self._wake.set()

    def pending_count(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write what is queued now, in one DB transaction; a report arriving meanwhile stays queued."""
        batch = dict(self._pending)
        if not batch:
            return 0

        async def write(tx: Any) -> None:
            for mount_id, (_vps, state) in batch.items():
                await tx.execute("UPDATE mounts SET current_state = %s WHERE id = %s",
                                 (MOUNT_STATES.index(state), mount_id))

        await self.db.run(write)
        for mount_id, item in batch.items():
            if self._pending.get(mount_id) == item:
                del self._pending[mount_id]
        self.written += len(batch)
        return len(batch)

    async def run(self) -> None:
        """Flush whenever something is reported, until :meth:`stop`; keeps reports the database refused."""
        while not self._stopped.is_set():
            await self._wake.wait()
            self._wake.clear()
            try:
                n = await self.flush()
            except Exception as exc:
                log.warning("mount_state_write_failed", error=str(exc) or type(exc).__name__,
                            pending=len(self._pending), retry_in=self.retry_interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self.retry_interval)
                self._wake.set()
            else:
                if n:
                    log.debug("mount_states_written", count=n)

    async def stop(self, timeout: float = 5.0) -> None:
        """End :meth:`run` (call it before the database closes) and try one last flush within ``timeout``."""
        self._stopped.set()
        self._wake.set()
        if self._pending:
            try:
                await asyncio.wait_for(self.flush(), timeout)
            except Exception as exc:
                log.error("mount_states_lost", count=len(self._pending), error=str(exc) or type(exc).__name__)


class Mounts:
    """The node's :class:`DelayedMounts` and :class:`MountReporter`."""

    def __init__(self, db: Database) -> None:
        self.delayed = DelayedMounts()
        self.reporter = MountReporter(db)

    def delay(self, vps_id: int, mount: dict[str, Any]) -> bool:
        """v2.0's ``DelayedMounter.mount``: register (unless registered) and report the state ``delayed``."""
        added = self.delayed.register(vps_id, mount)
        self.reporter.report(vps_id, int(mount["id"]), "delayed")
        log.info("mount_delayed", vps=vps_id, mount=mount["id"], dst=mount.get("dst"), new=added)
        return added


_REGISTRIES: weakref.WeakKeyDictionary[HandlerContext, Mounts] = weakref.WeakKeyDictionary()


def install(ctx: HandlerContext, mounts: Mounts) -> None:
    """Make ``mounts`` the registry of handlers running with ``ctx`` (the daemon does this at start)."""
    _REGISTRIES[ctx] = mounts


def mounts_for(ctx: HandlerContext) -> Mounts:
    """The context's registry; one is made on first use where the daemon installed none (tests, the demo)."""
    mounts = _REGISTRIES.get(ctx)
    if mounts is None:
        mounts = _REGISTRIES[ctx] = Mounts(ctx.db)
    return mounts
