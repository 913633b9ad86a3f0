"""VPS mounts: 5301 Vps::Mounts, 5302 Vps::Mount, 5303 Vps::Umount (contract 5.3, 10.1; docs/mounts.md).

* 5301 writes the vzctl action scripts and the mounts data file (:mod:`vpsadmind.mounts.files`) and brings the
  delayed-mount registry in line; rollback puts the ``.backup`` files back;
* 5302 mounts the listed mounts now if the VPS runs ("oneshot": any failure fails it); rollback unmounts, in
  reverse order, what it mounted;
* 5303 unmounts them (children first; "not mounted" is fine) and reports ``unmounted``; rollback mounts again
  the ones it unmounted.

All three are idempotent: 5301 recognises its own files by the transaction id written into them, 5302 accepts
"already mounted", 5303 "not mounted". A VPS's mount commands never interleave with another transaction's or
with the delayed mounter's (one lock per VPS).
"""

from __future__ import annotations

import asyncio
from typing import Any

from vpsadmind.handlers.base import Handler, Outcome, handler, ok
from vpsadmind.handlers.storage_common import json_output
from vpsadmind.mounts.files import render_data, render_script
from vpsadmind.mounts.mounter import MountFailed
from vpsadmind.mounts.node import MountNode, mount_node
from vpsadmind.mounts.spec import MountsParams, MountSpec

__all__ = ["VpsMount", "VpsMounts", "VpsUmount"]


class _MountsHandler(Handler[MountsParams]):
    Params = MountsParams
    idempotent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node: MountNode = mount_node(self.ctx)
        self.veid = MountNode.veid(self.vps_id)

    def _by_id(self, ids: list[int] | None) -> list[MountSpec]:
        """The param mounts with these ids, in param order. None (exec found the VPS stopped, so it listed
        nothing) selects none: what the start script mounted is not the rollback's to undo."""
        return [m for m in self.params.mounts if ids is not None and m.id in ids]

    def _saved_ids(self, key: str) -> list[int] | None:
        """Ids exec listed under ``key`` in its saved ``t_output`` (a chain rollback runs in a new handler)."""
        value = json_output(self.transaction.t_output).get(key)
        if isinstance(value, list) and all(type(v) is int for v in value):
            return list(value)
        return None


@handler(5301)
class VpsMounts(_MountsHandler):
    """Writes ``<veid>.mount``, ``<veid>.umount`` and ``<mounts_dir>/<veid>.mounts`` (backups ``.backup``)."""

    async def exec(self) -> Outcome | None:
        files = self.node.files(self.veid)
        settings = self.node.script_settings(self.veid)
        t_id = self.transaction.t_id
        contents = {
            files.mount_script: (render_script("mount", self.veid, t_id, settings), 0o755),
            files.umount_script: (render_script("umount", self.veid, t_id, settings), 0o755),
            files.data: (render_data(self.veid, t_id, self.params.mounts), 0o644),
        }
        async with self.node.lock(self.veid):
            changed = self._update_delayed()
            await asyncio.to_thread(files.install, contents, t_id)
        return ok(mounts=len(self.params.mounts), files=[str(p) for p in files.all()], delayed_changed=changed)

    def _update_delayed(self) -> list[int]:
        """v2.0's ``DelayedMounter.change_mount``: a registered mount now set to ``skip`` is dropped and reported
        unmounted. Beyond v2.0, a registered mount whose definition changed is retried with the new one."""
        delayed = self.node.registry.delayed
        pending = delayed.pending(self.veid)
        changed: list[int] = []
        for m in self.params.mounts:
            old = pending.get(m.id)
            if old is None:
                continue
            if m.on_start_fail == "skip":
                delayed.unregister(self.veid, m.id)
                self.node.registry.reporter.report(self.veid, m.id, "unmounted")
                changed.append(m.id)
            elif {k: v for k, v in old.items() if k != "registered_at"} != m.as_dict():
                delayed.unregister(self.veid, m.id)
                delayed.register(self.veid, m.as_dict())
                changed.append(m.id)
        return changed

    async def rollback(self) -> Outcome | None:
        files = self.node.files(self.veid)
        async with self.node.lock(self.veid):
            done = await asyncio.to_thread(files.restore, self.transaction.t_id)
        return ok(files=done)


@handler(5302)
class VpsMount(_MountsHandler):
    """If the VPS runs: drops the mounts from the delayed mounter and mounts each now, in param order."""

    _mounted: list[int] | None = None

    async def exec(self) -> Outcome | None:
        if not await self.node.is_running(self.veid):
            return ok(running=False, note="the VPS is not running: its action script mounts at start")
        self._mounted = []
        async with self.node.lock(self.veid):
            mounter = self.node.mounter(self.veid)
            for m in self.params.mounts:
                self.node.registry.delayed.unregister(self.veid, m.id)
            for m in self.params.mounts:
                if await mounter.mount(m):
                    self._mounted.append(m.id)
        return ok(mounted=self._mounted)

    async def rollback(self) -> Outcome | None:
        """Umount, in reverse order, what exec mounted (not what was mounted already)."""
        ids = self._mounted if self._mounted is not None else self._saved_ids("mounted")
        if not await self.node.is_running(self.veid):
            return ok(running=False)
        unmounted: list[int] = []
        async with self.node.lock(self.veid):
            mounter = self.node.mounter(self.veid)
            for m in reversed(self._by_id(ids)):
                if await mounter.umount(m):
                    unmounted.append(m.id)
        return ok(unmounted=unmounted)


@handler(5303)
class VpsUmount(_MountsHandler):
    """If the VPS runs: drops the mounts from the delayed mounter, unmounts each (children before parents,
    whatever the param order) and reports ``unmounted``."""

    _unmounted: list[int] | None = None

    async def exec(self) -> Outcome | None:
        if not await self.node.is_running(self.veid):
            return ok(running=False, note="the VPS is not running: nothing is mounted")
        self._unmounted = []
        async with self.node.lock(self.veid):
            mounter = self.node.mounter(self.veid)
            for m in self.params.mounts:
                self.node.registry.delayed.unregister(self.veid, m.id)
            for m in sorted(self.params.mounts, key=lambda m: m.dst, reverse=True):
                if await mounter.umount(m):
                    self._unmounted.append(m.id)
        return ok(unmounted=self._unmounted)

    async def rollback(self) -> Outcome | None:
        """Mount again, parents first, the mounts exec unmounted."""
        ids = self._unmounted if self._unmounted is not None else self._saved_ids("unmounted")
        if not self._by_id(ids) or not await self.node.is_running(self.veid):
            return ok(mounted=[])
        mounted: list[int] = []
        async with self.node.lock(self.veid):
            mounter = self.node.mounter(self.veid)
            for m in sorted(self._by_id(ids), key=lambda m: m.dst):
                try:
                    await mounter.mount(m)
                except MountFailed as exc:
                    raise MountFailed(f"{exc} (rolling back the umount; mounted again so far: {mounted})",
                                      output=exc.output) from None
                mounted.append(m.id)
        return ok(mounted=mounted)
