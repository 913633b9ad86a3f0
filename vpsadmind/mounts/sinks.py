"""Where a :class:`~vpsadmind.mounts.mounter.Mounter` sends mount states and "mount later" requests.

* inside the daemon (5302/5303, the delayed mounter): straight into the node's registry
  (:mod:`vpsadmind.mount_registry`), which writes ``mounts.current_state`` in the background;
* in an action script, which runs under ``vzctl start``/``stop`` in its own process: over the control socket, as
  v2.0's standalone mode did (``mount_state``, ``delayed_mount``). v2.0's ``send_or_not`` dropped a report
  silently when the daemon was down; here it is dropped too (the script must not fail a VPS start because the
  daemon is away) but said on stderr, which vzctl shows.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from vpsadmind.control.client import arequest
from vpsadmind.control.protocol import ControlError
from vpsadmind.mounts.spec import MountSpec

if TYPE_CHECKING:
    from vpsadmind.mount_registry import Mounts

__all__ = ["RegistrySink", "SocketSink"]


class RegistrySink:
    """Reports into the daemon's :class:`~vpsadmind.mount_registry.Mounts`."""

    def __init__(self, mounts: Mounts) -> None:
        self.mounts = mounts

    async def report(self, vps_id: int, mount_id: int, state: str) -> None:
        self.mounts.reporter.report(vps_id, mount_id, state)

    async def delay(self, vps_id: int, mount: MountSpec) -> None:
        self.mounts.delay(vps_id, mount.as_dict())


class SocketSink:
    """Reports to a running daemon over ``remote.socket`` (the standalone action scripts)."""

    def __init__(self, socket_path: str, *, timeout: float = 10.0, err: TextIO | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.err = err or sys.stderr
        self.lost = 0

    async def _send(self, command: str, params: dict[str, object]) -> None:
        try:
            await arequest(command, params, socket_path=self.socket_path, timeout=self.timeout)
        except (ControlError, OSError) as exc:
            self.lost += 1
            print(f"vpsadmind mounts: {command} not delivered to vpsAdmind ({exc})", file=self.err)

    async def report(self, vps_id: int, mount_id: int, state: str) -> None:
        await self._send("mount_state", {"vps_id": vps_id, "mount_id": mount_id, "state": state})

    async def delay(self, vps_id: int, mount: MountSpec) -> None:
        await self._send("delayed_mount", {"vps_id": vps_id, "mount": mount.as_dict()})
