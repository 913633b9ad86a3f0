"""What the mount handlers (5301-5303) and the delayed mounter share inside one daemon.

One :class:`MountNode` per handler context (``ctx.services``): the paths and commands from the *current*
configuration (a reload takes effect on the next use), the node's delayed-mount registry
(:func:`vpsadmind.mount_registry.mounts_for`) and one lock per VPS, so that a 5302, a 5303 and a delayed retry of
the same VPS never run their mount commands interleaved.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vpsadmind.errors import ParamError
from vpsadmind.handlers.storage_common import zfs_driver
from vpsadmind.mount_registry import Mounts, mounts_for
from vpsadmind.mounts.files import MountFiles, ScriptSettings
from vpsadmind.mounts.mounter import Commands, Mounter
from vpsadmind.mounts.sinks import RegistrySink
from vpsadmind.vz import Vz
from vpsadmind.vz import validate as vz_validate
from vpsadmind.vz.errors import InvalidValue
from vpsadmind.zfs.driver import Zfs

if TYPE_CHECKING:
    from vpsadmind.handlers.base import HandlerContext

__all__ = ["MountNode", "mount_node"]

_SERVICE = "vpsadmind.mounts"


class MountNode:
    def __init__(self, ctx: HandlerContext) -> None:
        self.ctx = ctx
        self._locks: dict[int, asyncio.Lock] = {}

    def lock(self, vps_id: int) -> asyncio.Lock:
        return self._locks.setdefault(vps_id, asyncio.Lock())

    @property
    def registry(self) -> Mounts:
        return mounts_for(self.ctx)

    def vz(self) -> Vz:
        return Vz.from_config(self.ctx.config.vz)

    @staticmethod
    def veid(vps_id: int | None) -> int:
        if vps_id is None:
            raise ParamError("this transaction needs its VPS (t_vps is empty)", field="vps_id")
        try:
            return vz_validate.veid(vps_id)
        except InvalidValue as exc:
            raise ParamError(str(exc), field="vps_id") from None

    def ve_root(self, vps_id: int) -> Path:
        """VE_ROOT as vzctl resolves it, else v2.0's ``<vz.vz_root>/root/<veid>``."""
        return self.vz().ve_root(vps_id) or Path(self.ctx.config.vz.vz_root) / "root" / str(vps_id)

    async def is_running(self, vps_id: int) -> bool:
        return (await self.vz().status(vps_id)).running

    def commands(self) -> Commands:
        bins = self.ctx.config.bin
        return Commands(mount=bins.get("mount", "mount"), umount=bins.get("umount", "umount"))

    def mounter(self, vps_id: int) -> Mounter:
        async def zfs() -> Zfs:
            return await zfs_driver(self.ctx)

        return Mounter(vps_id, self.ve_root(vps_id), sink=RegistrySink(self.registry), zfs=zfs,
                       commands=self.commands())

    def files(self, vps_id: int) -> MountFiles:
        vz = self.vz()
        return MountFiles(vz.script_path(vps_id, "mount"), vz.script_path(vps_id, "umount"),
                          Path(self.ctx.config.mounts_dir) / f"{vps_id}.mounts")

    def script_settings(self, vps_id: int) -> ScriptSettings:
        cfg = self.ctx.config
        return ScriptSettings(python=sys.executable, data=self.files(vps_id).data, conf_dir=self.vz().conf_dir,
                              vz_root=cfg.vz.vz_root, socket=cfg.remote_socket,
                              mount=cfg.bin.get("mount", "mount"), umount=cfg.bin.get("umount", "umount"),
                              zfs=cfg.bin.get("zfs", "zfs"))


def mount_node(ctx: HandlerContext) -> MountNode:
    node = ctx.services.get(_SERVICE)
    if not isinstance(node, MountNode):
        node = ctx.services[_SERVICE] = MountNode(ctx)
    return node
