"""The command registry and what the commands share: :class:`CommandFailed`, :class:`DaemonLike` and the
parameter checks.

A command is ``async def cmd_<name>(daemon, params)`` registered with ``@command("<name>")``. It returns the
``response`` of an ok reply (any JSON value, ``None`` for v2.0's bare ``ok``) or raises
:class:`CommandFailed`, whose ``error`` becomes the ``error`` of a failed reply. Any other exception is
turned into a failed reply by the server as well, so a command never takes the server down.

Control state the daemon reads back (the daemon owns these; commands only set them, see docs/control.md):

* ``daemon.exit_code``: 0, or the pending v2.0 exit code (100 stop, 150 restart, 200 update);
* ``daemon.force_stop``: ``True`` after ``stop``/``restart``/``update`` with ``force``: cancel running work;
* ``daemon.cancel_stop()`` (optional): called by ``resume`` to cancel a pending stop/restart/update;
* ``engine.paused``: no new transaction is started;
* ``engine.pause_after``: a transaction id; the engine pauses when that transaction has finished.

Optional parts of the daemon that some commands use (a stub daemon in a test may leave them out; the command
then answers with a failed reply): ``daemon.apply_config(config)`` (``set config``), ``daemon.refreshers``
(``refresh``), ``daemon.mounts`` (``delayed_mount``, ``mount_state``, ``status -m``).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from vpsadmind.errors import AgentError

if TYPE_CHECKING:
    from vpsadmind.config import Config
    from vpsadmind.engine.core import Engine

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
    "engine_of",
    "exit_code",
    "flag",
    "int0",
    "int_param",
    "mask_secrets",
    "positive_int",
    "set_state",
    "unix_time",
]

# v2.0 exit codes (contract 4.3): what the wrapper (here: systemd) does when the daemon exits with them.
EXIT_STOP: Final = 100
EXIT_RESTART: Final = 150
EXIT_UPDATE: Final = 200
EXIT_NAMES: Final = {EXIT_STOP: "stop", EXIT_RESTART: "restart", EXIT_UPDATE: "update"}

#: Config keys whose (non-null) values ``get config`` replaces by ``"***"``.
SECRET_KEYS: Final = frozenset({"pass", "password"})
MASK: Final = "***"


class CommandFailed(AgentError):
    """A command refused or failed; ``error`` (a string, or an object as v2.0's ``{cmd, exitstatus, error}``)
    is sent as the ``error`` of the failed reply."""

    def __init__(self, error: str | dict[str, Any]) -> None:
        self.error = error
        text = error if isinstance(error, str) else str(error.get("error") or error)
        super().__init__(text)


class DaemonLike(Protocol):
    """What every command may need of :class:`vpsadmind.daemon.Daemon` (a test may pass a stub)."""

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


def engine_of(daemon: DaemonLike) -> Engine:
    engine = daemon.engine
    if engine is None:
        raise CommandFailed("the engine is not running")
    return engine


def set_state(obj: object, name: str, value: object) -> None:
    """Set control state the daemon or engine may not declare (a stub): attributes named in the docstring."""
    setattr(obj, name, value)


def exit_code(daemon: DaemonLike) -> int:
    """The pending v2.0 exit code, 0 when none."""
    code = getattr(daemon, "exit_code", 0)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def flag(params: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.lower() in ("true", "1", "yes")
    raise CommandFailed(f"{name} must be a boolean, got {value!r}")


def int_param(value: Any, name: str) -> int:
    """v2.0's ``.to_i`` of an id, strictly: a positive integer or a digit string."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CommandFailed(f"{name} must be a positive integer, got {value!r:.60}")
    return value


def positive_int(params: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = params.get(name)
    if value is None:
        return default
    return int_param(value, name)


def mask_secrets(value: Any) -> Any:
    """A copy of ``value`` with every non-null ``pass``/``password`` value replaced by ``"***"``."""
    if isinstance(value, Mapping):
        return {k: (MASK if k in SECRET_KEYS and v is not None else mask_secrets(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    return value


def unix_time(value: Any) -> int | None:
    """A naive UTC DATETIME from MySQL as a unix timestamp (v2.0: ``Time.parse(created_at + ' UTC').to_i``)."""
    if isinstance(value, dt.datetime):
        return calendar.timegm(value.timetuple())
    return None


def int0(value: Any) -> int:
    """v2.0's ``row[...].to_i``: NULL becomes 0."""
    return 0 if value is None else int(value)
