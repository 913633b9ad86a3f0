"""``get config|queue`` and ``set config`` (contract 6.2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog
import yaml

from vpsadmind.config import config_from_dict, deep_merge, strip_symbol_keys
from vpsadmind.control.commands.base import (
    CommandFailed,
    DaemonLike,
    command,
    engine_of,
    int0,
    mask_secrets,
    positive_int,
    unix_time,
)
from vpsadmind.errors import ConfigError

if TYPE_CHECKING:
    from vpsadmind.engine.core import Engine

__all__ = ["cmd_get", "cmd_set", "RESTART_ONLY", "DEFAULT_QUEUE_LIMIT", "MAX_QUEUE_LIMIT", "changed_keys",
           "restart_only"]

log = structlog.get_logger("vpsadmind.control")

#: ``get queue`` without a limit, and the most it returns.
DEFAULT_QUEUE_LIMIT: Final = 50
MAX_QUEUE_LIMIT: Final = 10000

# ---- get ----------------------------------------------------------------------------------------------------

_QUEUE_COLUMNS = ("{a}.t_id, {a}.transaction_chain_id, c.state AS chain_state, {a}.t_type, {a}.created_at, "
                  "{a}.t_m_id, {a}.t_vps, {a}.t_depends_on, {a}.t_fallback, {a}.t_urgent, {a}.t_priority, "
                  "{a}.t_param, {a}.queue")

# The scheduler's selection (engine/select.py) regardless of free slots: execute candidates of queued chains
# whose dependency is done, then rollback candidates of rolling-back chains; not those already claimed.
_QUEUE_SQL = (
    "(SELECT 0 AS kind, " + _QUEUE_COLUMNS.format(a="t") + " FROM transactions t "
    "JOIN transaction_chains c ON c.id = t.transaction_chain_id "
    "LEFT JOIN transactions d ON d.t_id = t.t_depends_on "
    "WHERE t.t_server = %s AND t.t_done = 0 AND t.started_at IS NULL AND c.state = 1 "
    "AND (t.t_depends_on IS NULL OR d.t_done = 1) "
    "ORDER BY t.t_priority DESC, t.t_id ASC LIMIT %s) "
    "UNION ALL "
    "(SELECT 1 AS kind, " + _QUEUE_COLUMNS.format(a="d") + " FROM transactions d "
    "JOIN transaction_chains c ON c.id = d.transaction_chain_id "
    "JOIN transactions t2 ON t2.t_depends_on = d.t_id AND t2.t_done = 2 "
    "LEFT JOIN vpsadmind_claims cl ON cl.transaction_id = d.t_id "
    "WHERE d.t_server = %s AND d.t_done = 1 AND c.state = 3 AND cl.transaction_id IS NULL "
    "ORDER BY d.t_priority DESC, d.t_id DESC LIMIT %s)"
)


def _queue_item(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": int(row["t_id"]),
        "chain": int(row["transaction_chain_id"]),
        "state": int(row["chain_state"]),
        "type": int(row["t_type"]),
        "time": unix_time(row["created_at"]),
        "m_id": int0(row["t_m_id"]),
        "vps_id": int0(row["t_vps"]),
        "depends_on": int0(row["t_depends_on"]),
        "fallback": row["t_fallback"],
        "urgent": bool(row["t_urgent"]),
        "priority": int(row["t_priority"]),
        "params": row["t_param"],
        "direction": "rollback" if row["kind"] else "execute",
        "queue": row["queue"],
    }


async def _waiting(engine: Engine, limit: int) -> list[dict[str, Any]]:
    me = engine.server_id
    rows = await engine.db.fetchall(_QUEUE_SQL, (me, limit, me, limit))
    running = {r.transaction.t_id for r in engine.running.values()}
    items = [_queue_item(r) for r in sorted(rows, key=lambda r: r["kind"]) if int(r["t_id"]) not in running]
    return items[:limit]


@command("get")
async def cmd_get(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    resource = params.get("resource")
    if resource == "config":
        return {"config": mask_secrets(daemon.config.raw)}
    if resource == "queue":
        limit = positive_int(params, "limit", DEFAULT_QUEUE_LIMIT)
        assert limit is not None
        return {"queue": await _waiting(engine_of(daemon), min(limit, MAX_QUEUE_LIMIT))}
    raise CommandFailed(f"Unknown resource {resource}")


# ---- set config ---------------------------------------------------------------------------------------------

#: Keys that take effect only when the daemon starts (connections, sockets, reporters and handler modules set up
#: once): ``set config`` refuses them instead of changing a value nothing reads. Edit the file and restart.
RESTART_ONLY: Final = (
    "db", "mqtt", "journal", "remote", "metrics", "log.format", "storage.update_status",
    "vpsadmin.server_id", "vpsadmin.handler_modules", "vpsadmin.status_interval", "vpsadmin.resources_interval",
    "vpsadmin.transfers_interval", "vpsadmin.db_version_interval", "vpsadmin.init", "vpsadmin.track_transfers",
)


def _patches(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """v2.0's ``config``: a list of nested objects, one per ``key=value`` of the ctl (one object is accepted)."""
    value = params.get("config")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(p, dict) and p for p in value):
        raise CommandFailed(f"config must be a non-empty list of objects such as {{\"vpsadmin\": "
                            f"{{\"check_interval\": 2}}}}, got {value!r:.60}")
    try:
        return [strip_symbol_keys(p) for p in value]
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from exc


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            out += _leaves(value, key + ".")
        else:
            out.append((key, value))
    return out


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _coerce(patch: dict[str, Any], raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """v2.0's ctl sends every value that is not all digits as a string (``update_vps_status=false``): where the
    current value is a boolean or a number, a string is read as a YAML scalar."""
    out: dict[str, Any] = {}
    for name, value in patch.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            out[name] = _coerce(value, raw, key + ".")
            continue
        old = _lookup(raw, key)
        if isinstance(value, str) and isinstance(old, bool | int | float):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            value = parsed if isinstance(parsed, bool | int | float) else value
        out[name] = value
    return out


def restart_only(key: str) -> bool:
    """True for a dotted key that takes effect only at start (see :data:`RESTART_ONLY`)."""
    return any(key == k or key.startswith(k + ".") for k in RESTART_ONLY)


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys of ``new`` whose value is not the one in ``old`` (both merged configuration trees)."""
    before = dict(_leaves(old))
    return [k for k, v in _leaves(new) if k not in before or before[k] != v]


@command("set")
async def cmd_set(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge the patches into the running configuration (not saved: ``reload`` goes back to the file),
    validated as a whole like the file; returns ``{"changed": [dotted keys whose value changed]}``."""
    resource = params.get("resource")
    if resource != "config":
        raise CommandFailed(f"Unknown resource {resource}")
    apply = getattr(daemon, "apply_config", None)
    if not callable(apply):
        raise CommandFailed("this daemon cannot change its configuration at runtime")
    old = daemon.config
    raw: dict[str, Any] = old.raw
    for patch in _patches(params):
        raw = deep_merge(raw, _coerce(patch, raw))
    changed = changed_keys(old.raw, raw)
    refused = [k for k in changed if restart_only(k)]
    if refused:
        raise CommandFailed(f"{', '.join(refused)}: takes effect only at start; edit the configuration file and "
                            "restart vpsadmind")
    try:
        new = config_from_dict(raw, old.path)
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from exc
    if changed:
        apply(new)
        log.info("control_config_set", changed=changed)
    return {"changed": changed}
