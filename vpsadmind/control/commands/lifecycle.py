"""Running the daemon: ``stop``, ``restart``, ``update``, ``pause``, ``resume``, ``reload``, ``kill`` and
``refresh`` (contract 6.2)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from vpsadmind import __version__
from vpsadmind.config import load_config
from vpsadmind.control.commands.base import (
    EXIT_NAMES,
    EXIT_RESTART,
    EXIT_STOP,
    EXIT_UPDATE,
    CommandFailed,
    DaemonLike,
    command,
    engine_of,
    exit_code,
    flag,
    int_param,
    positive_int,
    set_state,
)
from vpsadmind.errors import ConfigError

__all__ = ["cmd_stop", "cmd_restart", "cmd_update", "cmd_pause", "cmd_resume", "cmd_reload", "cmd_kill",
           "cmd_refresh", "installed_version", "REFRESH_TIMEOUT", "PACKAGE"]

log = structlog.get_logger("vpsadmind.control")

#: The distribution whose installed version ``update`` compares with the running one.
PACKAGE: Final = "vpsadmind"
#: Bound on one part of ``refresh`` (a database or zfs that does not answer must not hold the client forever).
REFRESH_TIMEOUT: Final = 60.0


def _schedule_exit(daemon: DaemonLike, code: int, params: dict[str, Any]) -> None:
    force = flag(params, "force")
    log.info("control_exit_requested", exit_code=code, action=EXIT_NAMES.get(code), force=force)
    set_state(daemon, "exit_code", code)  # read back by the daemon, see base.py
    if force:
        set_state(daemon, "force_stop", True)
    daemon.request_stop()


@command("stop")
async def cmd_stop(daemon: DaemonLike, params: dict[str, Any]) -> None:
    _schedule_exit(daemon, EXIT_STOP, params)


@command("restart")
async def cmd_restart(daemon: DaemonLike, params: dict[str, Any]) -> None:
    _schedule_exit(daemon, EXIT_RESTART, params)


def installed_version() -> str | None:
    """The version of the vpsadmind package installed now (re-read from disk), None if none is found."""
    importlib.invalidate_caches()  # a package installed since the start must be seen
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


@command("update")
async def cmd_update(daemon: DaemonLike, params: dict[str, Any]) -> None:
    """v2.0 exited with 200 and its wrapper ran ``git pull`` in /opt/vpsadmind. This daemon is a Python package
    under systemd: the new version is installed first (pip, a distribution package), then ``update`` restarts
    into it like ``restart`` (drain, or ``force``), with exit code 200. It refuses while the installed version
    is the running one, since the restart would change nothing."""
    installed = await asyncio.to_thread(installed_version)
    if installed is None:
        raise CommandFailed(f"cannot find the installed {PACKAGE} package, so there is nothing to update to")
    if installed == __version__:
        raise CommandFailed(f"no update installed: the running vpsadmind {__version__} is the installed version; "
                            f"install the new {PACKAGE} package first, then run update again")
    log.info("control_update", running=__version__, installed=installed)
    _schedule_exit(daemon, EXIT_UPDATE, params)


@command("pause")
async def cmd_pause(daemon: DaemonLike, params: dict[str, Any]) -> None:
    engine = engine_of(daemon)
    t_id = positive_int(params, "t_id", None)
    if t_id is None:
        engine.paused = True
        set_state(engine, "pause_after", None)  # honoured by the engine, see base.py
        log.info("control_paused")
    else:
        set_state(engine, "pause_after", t_id)
        log.info("control_pause_scheduled", after=t_id)


@command("resume")
async def cmd_resume(daemon: DaemonLike, params: dict[str, Any]) -> None:
    engine = engine_of(daemon)
    engine.paused = False
    set_state(engine, "pause_after", None)
    if exit_code(daemon):
        cancel = getattr(daemon, "cancel_stop", None)
        if callable(cancel) and cancel() is not False:
            set_state(daemon, "exit_code", 0)
            set_state(daemon, "force_stop", False)
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


# ---- kill ---------------------------------------------------------------------------------------------------

NO_TRANSACTION: Final = "No such transaction"
NO_TYPE: Final = "No transaction with this type"


def _kill_selection(params: dict[str, Any]) -> tuple[str, list[int]]:
    """("all", []), ("types", [types]) or ("transactions", [ids]) from v2.0's params."""
    transactions, types = params.get("transactions"), params.get("types")
    if transactions == "all":
        return "all", []
    if types is not None:
        if not isinstance(types, list) or not types:
            raise CommandFailed("types must be a non-empty list of transaction types")
        return "types", list(dict.fromkeys(int_param(v, "a transaction type") for v in types))
    if not isinstance(transactions, list) or not transactions:
        raise CommandFailed('give transactions (a list of ids, or "all") or types (a list of types)')
    return "transactions", list(dict.fromkeys(int_param(v, "a transaction id") for v in transactions))


@command("kill")
async def cmd_kill(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    """Hard-kill matching running transactions: each is saved as failed ``{"error": "Killed"}`` (a reversible
    one after rolling itself back), its commands get SIGTERM (vpsadmind/engine/kill.py). Returns v2.0's
    ``{killed: n, msgs: {id or type: why nothing was killed}}``."""
    engine = engine_of(daemon)
    mode, wanted = _kill_selection(params)
    running = list(engine.running.values())
    killed = 0
    msgs: dict[str, str] = {}
    if mode == "all":
        killed = sum(engine.kill(r.transaction.chain_id) for r in running)
    for value in wanted:
        attr = "t_id" if mode == "transactions" else "t_type"
        n = sum(engine.kill(r.transaction.chain_id) for r in running if getattr(r.transaction, attr) == value)
        if n == 0:
            msgs[str(value)] = NO_TRANSACTION if mode == "transactions" else NO_TYPE
        killed += n
    log.info("control_kill", mode=mode, selection=wanted or None, killed=killed)
    return {"killed": killed, "msgs": msgs}


# ---- refresh ------------------------------------------------------------------------------------------------

Refresher = Callable[[], Awaitable[Any]]


@command("refresh")
async def cmd_refresh(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    """v2.0's ``update_all``: report now what the periodic reporters report (node status with the kernel,
    storage usage; VPS status once a reporter for it registers), not traffic. Each refresher registered in
    ``daemon.refreshers`` runs once; the reply lists them. One failing makes the reply failed, naming it."""
    engine_of(daemon)  # the reporters write into the database the engine connected to
    refreshers: dict[str, Refresher] = dict(getattr(daemon, "refreshers", None) or {})
    log.info("control_refresh", parts=sorted(refreshers))
    results = await asyncio.gather(*(asyncio.wait_for(fn(), REFRESH_TIMEOUT) for fn in refreshers.values()),
                                   return_exceptions=True)
    failed = {name: f"{type(r).__name__}: {r}" if str(r) else type(r).__name__
              for name, r in zip(refreshers, results, strict=True) if isinstance(r, BaseException)}
    refreshed = sorted(set(refreshers) - set(failed))
    if failed:
        first = next(iter(sorted(failed)))
        raise CommandFailed({"error": f"refresh of {first} failed: {failed[first]}", "failed": failed,
                             "refreshed": refreshed})
    return {"refreshed": refreshed}
