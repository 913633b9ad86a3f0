"""The v2.0 remote-control wire format (contract 6.1), shared by the server and the clients.

One connection carries one request:

1. the server sends ``{"version":"<daemon version>"}`` and a newline as soon as it accepts;
2. the client sends one JSON line ``{"command":"<name>","params":{...}}``;
3. the server answers with one JSON line, ``{"status":"ok","response":<any>}`` or
   ``{"status":"failed","error":<string or object>}``, and closes the connection.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from typing import Any, Final

from vpsadmind.errors import AgentError

__all__ = [
    "DEFAULT_SOCKET",
    "MAX_REQUEST",
    "ControlError",
    "encode",
    "ok_reply",
    "failed_reply",
    "ERR_SYNTAX",
    "ERR_UNSUPPORTED",
    "ERR_TOO_LARGE",
    "ERR_TIMEOUT",
    "ERR_BUSY",
]

DEFAULT_SOCKET: Final = "/var/run/vpsadmind.sock"
#: Largest request line the server reads (bytes, newline included).
MAX_REQUEST: Final = 1024 * 1024

# Error strings of failed replies; the first two are v2.0's own.
ERR_SYNTAX: Final = "Syntax error"
ERR_UNSUPPORTED: Final = "Unsupported command"
ERR_TOO_LARGE: Final = "Request too large"
ERR_TIMEOUT: Final = "Request timeout"
ERR_BUSY: Final = "Too many clients"


class ControlError(AgentError):
    """The control socket could not be set up, or a peer broke the protocol."""


def _default(value: Any) -> Any:
    """JSON for what MySQL rows and YAML configs may hold besides plain JSON types."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def encode(obj: Any) -> bytes:
    """One protocol line: compact JSON (as Ruby's ``to_json``), UTF-8, newline-terminated."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_default).encode() + b"\n"


def ok_reply(response: Any) -> dict[str, Any]:
    return {"status": "ok", "response": response}


def failed_reply(error: Any) -> dict[str, Any]:
    return {"status": "failed", "error": error}
