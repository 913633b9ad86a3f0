"""``status`` and ``ping`` (contract 6.2)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

import structlog

from vpsadmind.control.commands.base import DaemonLike, command, exit_code
from vpsadmind.engine.model import Direction
from vpsadmind.engine.runner import handler_name

if TYPE_CHECKING:
    from vpsadmind.engine.core import Engine, Running

__all__ = ["cmd_status", "cmd_ping", "STATUS_DB_TIMEOUT"]

log = structlog.get_logger("vpsadmind.control")

#: Bound on the database queries of ``status``: the command must answer even while the database is away.
STATUS_DB_TIMEOUT: Final = 3.0


def _worker(r: Running) -> dict[str, Any]:
    t = r.transaction
    return {
        "id": t.t_id,
        "type": t.t_type,
        "handler": handler_name(t.t_type),
        "step": getattr(r, "step", None),  # the command running now and its pid (vpsadmind.system)
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


def _delayed_mounts(daemon: DaemonLike) -> dict[str, list[dict[str, Any]]]:
    mounts = getattr(daemon, "mounts", None)
    return mounts.delayed.snapshot() if mounts is not None else {}


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
        "delayed_mounts": _delayed_mounts(daemon),
        "start_time": int(engine.start_time) if engine is not None else None,
        "queue_size": await _queue_size(engine) if engine is not None else None,
        "server_id": daemon.config.server_id,
        "stats": dict(engine.stats) if engine is not None else {},
        "transfers": _streams(engine),
    }


@command("ping")
async def cmd_ping(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    return {"pong": "pong"}
