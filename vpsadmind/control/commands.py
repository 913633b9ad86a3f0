"""Remote commands of the control socket (contract 6.2): one ``async def cmd_<name>(daemon, params)`` each.

A command returns the ``response`` of an ok reply (any JSON value, ``None`` for v2.0's bare ``ok``) or raises
:class:`CommandFailed`, whose ``error`` becomes the ``error`` of a failed reply. Any other exception is turned
into a failed reply by the server as well, so a command never takes the server down.

Control state the daemon reads back (the daemon owns these; commands only set them, see docs/control.md):

* ``daemon.exit_code``: 0, or the pending v2.0 exit code (100 stop, 150 restart);
* ``daemon.force_stop``: ``True`` after ``stop``/``restart`` with ``force``: cancel running work at once;
* ``daemon.cancel_stop()`` (optional): called by ``resume`` to cancel a pending stop/restart;
* ``engine.paused``: no new transaction is started;
* ``engine.pause_after``: a transaction id; the engine pauses when that transaction has finished.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from vpsadmind import system
from vpsadmind.config import load_config
from vpsadmind.engine.model import Direction
from vpsadmind.engine.runner import handler_name
from vpsadmind.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from vpsadmind.config import Config
    from vpsadmind.engine.core import Engine, Running
    from vpsadmind.firewall.services import Network

__all__ = [
    "COMMANDS",
    "CommandFailed",
    "CommandFn",
    "DaemonLike",
    "EXIT_STOP",
    "EXIT_RESTART",
    "EXIT_UPDATE",
    "EXIT_NAMES",
    "SECRET_KEYS",
    "command",
    "mask_secrets",
    "cmd_status",
    "cmd_ping",
    "cmd_stop",
    "cmd_restart",
    "cmd_pause",
    "cmd_resume",
    "cmd_reload",
    "cmd_get",
    "cmd_init",
    "cmd_flush",
    "cmd_reinit",
]

log = structlog.get_logger("vpsadmind.control")

# v2.0 exit codes (contract 4.3): what the wrapper does when the daemon exits with them.
EXIT_STOP: Final = 100
EXIT_RESTART: Final = 150
EXIT_UPDATE: Final = 200
EXIT_NAMES: Final = {EXIT_STOP: "stop", EXIT_RESTART: "restart", EXIT_UPDATE: "update"}

#: Config keys whose (non-null) values ``get config`` replaces by ``"***"``.
SECRET_KEYS: Final = frozenset({"pass", "password"})
MASK: Final = "***"

#: ``get queue`` without a limit, and the most it returns.
DEFAULT_QUEUE_LIMIT: Final = 50
MAX_QUEUE_LIMIT: Final = 10000
#: Bound on the database queries of ``status``: the command must answer even while the database is away.
STATUS_DB_TIMEOUT: Final = 3.0


class CommandFailed(AgentError):
    """A command refused or failed; ``error`` (a string, or an object as v2.0's ``{cmd, exitstatus, error}``)
    is sent as the ``error`` of the failed reply."""

    def __init__(self, error: str | dict[str, Any]) -> None:
        self.error = error
        text = error if isinstance(error, str) else str(error.get("error") or error)
        super().__init__(text)


class DaemonLike(Protocol):
    """What the commands need of :class:`vpsadmind.daemon.Daemon` (a test may pass a stub)."""

    @property
    def config(self) -> Config: ...

    @property
    def config_path(self) -> str: ...

    @property
    def engine(self) -> Engine | None: ...

    def request_stop(self) -> None: ...

    def reload(self) -> None: ...


CommandFn = Callable[[DaemonLike, dict[str, Any]], Awaitable[Any]]

#: The registry the server dispatches on: command name -> function.
COMMANDS: dict[str, CommandFn] = {}


def command(name: str) -> Callable[[CommandFn], CommandFn]:
    """Register ``fn`` as the remote command ``name``."""

    def register(fn: CommandFn) -> CommandFn:
        if name in COMMANDS and COMMANDS[name] is not fn:
            raise AgentError(f"remote command {name!r} is already registered")
        COMMANDS[name] = fn
        return fn

    return register


# ---- helpers ------------------------------------------------------------------------------------------------


def _engine(daemon: DaemonLike) -> Engine:
    engine = daemon.engine
    if engine is None:
        raise CommandFailed("the engine is not running")
    return engine


def _set(obj: object, name: str, value: object) -> None:
    """Set control state the daemon or engine may not declare (yet): attributes named in the module docstring."""
    setattr(obj, name, value)


def exit_code(daemon: DaemonLike) -> int:
    """The pending v2.0 exit code, 0 when none."""
    code = getattr(daemon, "exit_code", 0)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.lower() in ("true", "1", "yes")
    raise CommandFailed(f"{name} must be a boolean, got {value!r}")


def _positive_int(params: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CommandFailed(f"{name} must be a positive integer, got {value!r}")
    return value


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` with every non-null ``pass``/``password`` value replaced by ``"***"``."""
    if isinstance(value, Mapping):
        return {k: (MASK if k in SECRET_KEYS and v is not None else mask_secrets(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


def _unix(value: Any) -> int | None:
    """A naive UTC DATETIME from MySQL as a unix timestamp (v2.0: ``Time.parse(created_at + ' UTC').to_i``)."""
    if isinstance(value, dt.datetime):
        return calendar.timegm(value.timetuple())
    return None


def _int0(value: Any) -> int:
    """v2.0's ``row[...].to_i``: NULL becomes 0."""
    return 0 if value is None else int(value)


# ---- status -------------------------------------------------------------------------------------------------


def _worker(r: Running) -> dict[str, Any]:
    t = r.transaction
    return {
        "id": t.t_id,
        "type": t.t_type,
        "handler": handler_name(t.t_type),
        "step": getattr(r, "step", None),
        "pid": getattr(r, "pid", None),
        "start": int(r.started),
        "direction": t.direction.label,
    }


def _queues(engine: Engine) -> dict[str, Any]:
    now = time.monotonic()
    out: dict[str, Any] = {}
    for name, q in engine.queues.queues.items():
        out[name] = {
            "threads": q.threads,
            "urgent": q.urgent,
            "start_delay": q.start_delay,
            "started": q.started(now),
            "workers": {},
            "reservations": [],  # v2.x ctl reads it; this daemon reserves no slots
            "used": q.used,
            "opens_in": max(0.0, round(q.opens_at - now, 1)),
        }
    for chain_id, r in sorted(engine.running.items()):
        entry = out.get(r.queue.name)
        if entry is not None:
            entry["workers"][str(chain_id)] = _worker(r)
    return out


async def _queue_size(engine: Engine) -> int | None:
    """This node's ``t_done = 0`` transactions minus the ones running now; ``None`` if the database is away."""
    try:
        async with asyncio.timeout(STATUS_DB_TIMEOUT):
            row = await engine.db.fetchone(
                "SELECT COUNT(*) AS cnt FROM transactions WHERE t_server = %s AND t_done = 0", (engine.server_id,))
    except Exception as exc:
        log.warning("control_queue_size_failed", error=str(exc) or type(exc).__name__)
        return None
    total = int(row["cnt"]) if row is not None else 0
    running = sum(1 for r in engine.running.values() if r.transaction.direction is Direction.EXECUTE)
    return max(0, total - running)


def _state(daemon: DaemonLike, engine: Engine | None) -> dict[str, Any]:
    code = exit_code(daemon)
    paused = bool(engine is not None and engine.paused)
    pause_after = getattr(engine, "pause_after", None)
    # v2.0: pause is nil, true (paused now) or the transaction id to pause after; run is false while paused
    # or while an exit is pending; status is the pending exit code (0 when none).
    pause: bool | int | None = True if paused else pause_after
    return {"run": code == 0 and not paused, "pause": pause, "status": code}


def _streams(engine: Engine | None) -> list[dict[str, Any]]:
    """Running transfers and downloads with bytes, rate and estimate (vpsadmind/progress.py)."""
    ctx = getattr(engine, "ctx", None)
    progress = getattr(ctx, "progress", None)
    return progress.items() if progress is not None else []


@command("status")
async def cmd_status(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    engine = daemon.engine
    subprocesses: dict[str, list[int | None]] = {}
    if engine is not None:
        for chain_id, tasks in sorted(engine.blockers.items()):
            live = [getattr(task, "pid", None) for task in tasks if not task.done()]
            if live:
                subprocesses[str(chain_id)] = live
    return {
        "state": _state(daemon, engine),
        "queues": _queues(engine) if engine is not None else {},
        "export_console": False,
        "consoles": {},
        "subprocesses": subprocesses,
        "delayed_mounts": {},
        "start_time": int(engine.start_time) if engine is not None else None,
        "queue_size": await _queue_size(engine) if engine is not None else None,
        "server_id": daemon.config.server_id,
        "stats": dict(engine.stats) if engine is not None else {},
        "transfers": _streams(engine),
    }


# ---- simple commands ----------------------------------------------------------------------------------------


@command("ping")
async def cmd_ping(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    return {"pong": "pong"}


def _schedule_exit(daemon: DaemonLike, code: int, params: dict[str, Any]) -> None:
    force = _flag(params, "force")
    log.info("control_exit_requested", exit_code=code, action=EXIT_NAMES.get(code), force=force)
    _set(daemon, "exit_code", code)  # read back by the daemon, see the module docstring
    if force:
        _set(daemon, "force_stop", True)
    daemon.request_stop()


@command("stop")
async def cmd_stop(daemon: DaemonLike, params: dict[str, Any]) -> None:
    _schedule_exit(daemon, EXIT_STOP, params)


@command("restart")
async def cmd_restart(daemon: DaemonLike, params: dict[str, Any]) -> None:
    _schedule_exit(daemon, EXIT_RESTART, params)


@command("pause")
async def cmd_pause(daemon: DaemonLike, params: dict[str, Any]) -> None:
    engine = _engine(daemon)
    t_id = _positive_int(params, "t_id", None)
    if t_id is None:
        engine.paused = True
        _set(engine, "pause_after", None)  # honoured by the engine, see the module docstring
        log.info("control_paused")
    else:
        _set(engine, "pause_after", t_id)
        log.info("control_pause_scheduled", after=t_id)


@command("resume")
async def cmd_resume(daemon: DaemonLike, params: dict[str, Any]) -> None:
    engine = _engine(daemon)
    engine.paused = False
    _set(engine, "pause_after", None)
    if exit_code(daemon):
        cancel = getattr(daemon, "cancel_stop", None)
        if callable(cancel) and cancel() is not False:
            _set(daemon, "exit_code", 0)
            _set(daemon, "force_stop", False)
            log.info("control_exit_cancelled")
        else:
            log.warning("control_exit_not_cancellable", exit_code=exit_code(daemon))
    log.info("control_resumed")
    engine.wake()


@command("reload")
async def cmd_reload(daemon: DaemonLike, params: dict[str, Any]) -> None:
    path = daemon.config_path
    try:  # check first, so that the operator sees why a bad file is refused
        await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from exc
    old = daemon.config
    daemon.reload()
    if daemon.config is old:
        raise CommandFailed("the configuration was not reloaded, see the daemon log")


# ---- init, flush, reinit ------------------------------------------------------------------------------------

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

    return network_for(_engine(daemon).ctx)


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
        "time": _unix(row["created_at"]),
        "m_id": _int0(row["t_m_id"]),
        "vps_id": _int0(row["t_vps"]),
        "depends_on": _int0(row["t_depends_on"]),
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
        limit = _positive_int(params, "limit", DEFAULT_QUEUE_LIMIT)
        assert limit is not None
        return {"queue": await _waiting(_engine(daemon), min(limit, MAX_QUEUE_LIMIT))}
    raise CommandFailed(f"Unknown resource {resource}")
