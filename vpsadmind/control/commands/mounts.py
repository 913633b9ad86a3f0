"""``delayed_mount`` and ``mount_state``: the internal commands the mount action scripts send (contract 6.2,
10.1); the registry behind them is vpsadmind/mount_registry.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vpsadmind.control.commands.base import CommandFailed, DaemonLike, command, int_param
from vpsadmind.errors import AgentError
from vpsadmind.mount_registry import MOUNT_STATES

if TYPE_CHECKING:
    from vpsadmind.mount_registry import Mounts

__all__ = ["cmd_delayed_mount", "cmd_mount_state"]


def _mounts(daemon: DaemonLike) -> Mounts:
    mounts: Mounts | None = getattr(daemon, "mounts", None)
    if mounts is None:
        raise CommandFailed("the mount registry is not running")
    return mounts


@command("delayed_mount")
async def cmd_delayed_mount(daemon: DaemonLike, params: dict[str, Any]) -> None:
    """Register ``mount`` (a mount hash with an integer ``id``) of ``vps_id`` for a later retry and report its
    state ``delayed``; a mount already registered stays as it was (v2.0)."""
    vps_id = int_param(params.get("vps_id"), "vps_id")
    mount = params.get("mount")
    if not isinstance(mount, dict):
        raise CommandFailed(f"mount must be an object (a mount of the mounts file), got {mount!r:.60}")
    mount = {str(k): v for k, v in mount.items()}  # v2.0 turned the keys back into strings
    mount["id"] = int_param(mount.get("id"), "mount.id")
    _mounts(daemon).delay(vps_id, mount)


@command("mount_state")
async def cmd_mount_state(daemon: DaemonLike, params: dict[str, Any]) -> None:
    """Queue ``state`` of mount ``mount_id`` for ``mounts.current_state`` (written in the background)."""
    vps_id = int_param(params.get("vps_id"), "vps_id")
    mount_id = int_param(params.get("mount_id"), "mount_id")
    state = params.get("state")
    if not isinstance(state, str) or state not in MOUNT_STATES:
        raise CommandFailed(f"state must be one of {', '.join(MOUNT_STATES)}, got {state!r:.40}")
    try:
        _mounts(daemon).reporter.report(vps_id, mount_id, state)
    except AgentError as exc:
        raise CommandFailed(str(exc)) from exc
