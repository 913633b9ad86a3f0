"""One exception root for the whole agent, in the style of aiomqtt: messages say what failed and with which value."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "DatabaseError",
    "DatabaseUnavailable",
    "NodeLocked",
    "ParamError",
    "HandlerError",
]


class AgentError(Exception):
    """Root of every error vpsadmind raises on purpose."""


class ConfigError(AgentError):
    """The configuration file is unreadable or invalid.

    ``path`` is the file, ``key`` the dotted key path (``db.hosts``), ``expected`` what would have been valid.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None,
                 expected: str | None = None) -> None:
        self.path = path
        self.key = key
        self.expected = expected
        parts = [p for p in (path, key) if p]
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class DatabaseError(AgentError):
    """A database statement failed for a reason other than connectivity."""


class DatabaseUnavailable(DatabaseError):
    """No database host in ``db.hosts`` could be reached."""


class NodeLocked(AgentError):
    """Another daemon already serves this ``server_id``."""


class ParamError(AgentError):
    """A transaction's ``t_param`` is not what its handler requires; ``field`` names the offending key."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class HandlerError(AgentError):
    """A handler failed in a way it can describe; ``output`` is merged into ``t_output``."""

    def __init__(self, message: str, *, output: dict[str, object] | None = None) -> None:
        self.output = dict(output or {})
        super().__init__(message)
