"""The delayed mounter: retries the ``mount_later`` mounts of running VPSes (v2.0's ``DelayedMounter``).

What is waiting lives in the node's registry (:class:`vpsadmind.mount_registry.DelayedMounts`): the action
scripts register there over the control socket (``delayed_mount``), 5301-5303 and Stop/Restart update it, and
``vpsadmindctl status -m`` lists it. This class is the loop over it:

* at start, mounts whose ``mounts.current_state`` is 4 (delayed) on VPSes of this node are registered again from
  the VPSes' data files, so a daemon restart forgets nothing the database still calls delayed;
* every :data:`RETRY_INTERVAL` (v2.0: 3 minutes) each VPS with registered mounts is checked: one no longer
  running is forgotten; otherwise each mount whose parent is not itself still waiting is tried once
  (``oneshot``), and dropped from the registry when it mounts. The mounter reports ``mounted``, which the
  registry's reporter writes to ``mounts.current_state``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

import structlog

from vpsadmind.errors import AgentError, ParamError
from vpsadmind.mounts.files import MountFileError, load_data
from vpsadmind.mounts.mounter import MountFailed
from vpsadmind.mounts.node import MountNode, mount_node
from vpsadmind.mounts.spec import MountSpec, parse_mounts

if TYPE_CHECKING:
    from vpsadmind.handlers.base import HandlerContext

__all__ = ["RETRY_INTERVAL", "DelayedMounter"]

log = structlog.get_logger("vpsadmind.mounts")

#: Seconds between two rounds of retries (v2.0's ``sleep(3*60)``).
RETRY_INTERVAL: Final = 180.0

_DELAYED_SQL: Final = ("SELECT m.vps_id, m.id FROM mounts m INNER JOIN vps v ON v.vps_id = m.vps_id "
                       "WHERE v.vps_server = %s AND m.current_state = 4 ORDER BY m.vps_id, m.id")


class DelayedMounter:
    """``await DelayedMounter(engine.ctx).run()`` in the daemon; :meth:`stop` ends it."""

    def __init__(self, ctx: HandlerContext, *, interval: float = RETRY_INTERVAL) -> None:
        self.node: MountNode = mount_node(ctx)
        self.ctx = ctx
        self.interval = interval
        self.rounds = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Load what the database says is delayed, then retry every ``interval`` until :meth:`stop`."""
        try:
            await self.load()
        except Exception as exc:  # a database hiccup at start must not end the loop
            log.error("delayed_mounts_load_failed", error=str(exc) or type(exc).__name__)
        while not self._stop.is_set():
            try:
                await self.retry()
            except Exception as exc:  # one bad round must not end the loop either
                log.error("delayed_mounts_round_failed", error=str(exc) or type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def load(self) -> int:
        """Register the mounts that ``mounts.current_state`` calls delayed, from the VPSes' data files."""
        rows = await self.ctx.db.fetchall(_DELAYED_SQL, (self.ctx.config.server_id,))
        wanted: dict[int, set[int]] = {}
        for row in rows:
            wanted.setdefault(int(row["vps_id"]), set()).add(int(row["id"]))
        loaded = 0
        for vps_id, ids in wanted.items():
            try:
                mounts = load_data(self.node.files(vps_id).data, vps_id)
            except MountFileError as exc:
                log.warning("delayed_mounts_file", vps=vps_id, error=str(exc))
                continue
            found = {m.id: m for m in mounts}
            for mount_id in sorted(ids):
                if mount_id not in found:
                    log.warning("delayed_mount_not_found", vps=vps_id, mount=mount_id)
                elif self.node.registry.delayed.register(vps_id, found[mount_id].as_dict()):
                    loaded += 1
        if loaded:
            log.info("delayed_mounts_loaded", count=loaded)
        return loaded

    async def retry(self) -> dict[int, list[int]]:
        """One round over every VPS with registered mounts; returns the ids mounted per VPS."""
        self.rounds += 1
        done: dict[int, list[int]] = {}
        for vps_id in self.node.registry.delayed.vps_ids():
            try:
                running = await self.node.is_running(vps_id)
            except AgentError as exc:
                log.warning("delayed_mounts_status", vps=vps_id, error=str(exc))
                continue
            if not running:
                forgotten = self.node.registry.delayed.forget_vps(vps_id)
                log.info("delayed_mounts_forgotten", vps=vps_id, count=len(forgotten), reason="not running")
                continue
            async with self.node.lock(vps_id):
                done[vps_id] = await self._retry_vps(vps_id)
        return done

    def _pending(self, vps_id: int) -> dict[int, MountSpec]:
        """The registered hashes as validated mounts; one that does not validate is dropped (it never would)."""
        out: dict[int, MountSpec] = {}
        for mount_id, raw in self.node.registry.delayed.pending(vps_id).items():
            try:
                (spec,) = parse_mounts([raw])  # registered_at and the like are ignored
            except (ParamError, ValueError) as exc:
                log.error("delayed_mount_invalid", vps=vps_id, mount=mount_id, error=str(exc))
                self.node.registry.delayed.unregister(vps_id, mount_id)
                continue
            out[mount_id] = spec
        return out

    async def _retry_vps(self, vps_id: int) -> list[int]:
        waiting = self._pending(vps_id)
        mounter = self.node.mounter(vps_id)
        mounted: list[int] = []
        for mount_id, m in list(waiting.items()):  # parents first (by dst)
            if any(m.is_below(p) for pid, p in waiting.items() if pid != mount_id):
                log.debug("delayed_mount_parent_waiting", vps=vps_id, mount=mount_id, dst=m.dst)
                continue
            try:
                await mounter.mount(m)
            except MountFailed as exc:
                log.info("delayed_mount_failed", vps=vps_id, mount=mount_id, dst=m.dst, error=str(exc))
                continue
            self.node.registry.delayed.unregister(vps_id, mount_id)
            del waiting[mount_id]
            mounted.append(mount_id)
        if mounted:
            log.info("delayed_mounts_mounted", vps=vps_id, mounts=mounted, still_waiting=len(waiting))
        return mounted
