"""``init``, ``flush`` and ``reinit`` of the firewall accounting and the shaper (contract 6.2, 9)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog

from vpsadmind import system
from vpsadmind.control.commands.base import CommandFailed, DaemonLike, command, engine_of

if TYPE_CHECKING:
    from vpsadmind.firewall.services import Network

__all__ = ["cmd_init", "cmd_flush", "cmd_reinit", "NETWORK_RESOURCES"]

log = structlog.get_logger("vpsadmind.control")

NETWORK_RESOURCES: Final = ("fw", "shaper", "all")


def _resources(params: Mapping[str, Any]) -> list[str]:
    """v2.0's ``resources``: a list of ``fw``, ``shaper`` or ``all`` (a single string is taken as a list of one)."""
    value = params.get("resources")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(r, str) for r in value):
        raise CommandFailed(f"resources must be a non-empty list of fw, shaper or all, got {value!r:.60}")
    unknown = sorted(set(value) - set(NETWORK_RESOURCES))
    if unknown:
        raise CommandFailed(f"unknown resources {unknown}: expected fw, shaper or all")
    return value


def _network(daemon: DaemonLike) -> Network:
    """The Network the handlers of the running engine use (the daemon installs its own, with its reporter)."""
    from vpsadmind.firewall.services import network_for

    return network_for(engine_of(daemon).ctx)


async def _network_reply(operation: str, resources: list[str], work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """v2.0's reply ``{"fw": {"4": n, "6": n}, "shaper": true}``; a failing iptables/tc command gives v2.0's
    error object ``{cmd, exitstatus, error}``."""
    log.info("control_network", operation=operation, resources=resources)
    try:
        result = await work
    except system.CommandFailed as exc:
        log.error("control_network_failed", operation=operation, error=str(exc))
        raise CommandFailed(exc.output) from exc
    if isinstance(result.get("fw"), dict):  # IP versions as JSON object keys, the same in and out of process
        result["fw"] = {str(v): n for v, n in result["fw"].items()}
    return result


@command("init")
async def cmd_init(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    """Accounting chains (skipped per IP version when they exist, as v2.0) and/or the shaper's trees."""
    resources = _resources(params)
    return await _network_reply("init", resources, _network(daemon).init(resources))


@command("flush")
async def cmd_flush(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    """fw: store the traffic counted so far, then remove the chains; shaper: remove the root qdiscs."""
    resources = _resources(params)
    return await _network_reply("flush", resources, _network(daemon).flush(resources))


@command("reinit")
async def cmd_reinit(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    """fw: exactly the rules of this node's active addresses, counters kept; shaper: flush, then init."""
    resources = _resources(params)
    return await _network_reply("reinit", resources, _network(daemon).reinit(resources))
