"""Clients of the control socket: :func:`call` (blocking, used by ``vpsadmindctl``) and :func:`acall` (asyncio).

Both connect, read the greeting, send one request and read the reply. They raise :class:`ConnectError`
("Cannot connect to vpsAdmind", as v2.0's ctl says) when nothing listens at the socket, and
:class:`ProtocolError` when the peer does not speak the protocol. A failed reply is returned as a
:class:`Reply` with ``ok`` false; :func:`request`/:func:`arequest` raise :class:`CommandError` for it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any, Final

from vpsadmind.control.protocol import DEFAULT_SOCKET, ControlError, encode

__all__ = [
    "CONNECT_ERROR",
    "Reply",
    "ConnectError",
    "ProtocolError",
    "CommandError",
    "call",
    "acall",
    "request",
    "arequest",
]

CONNECT_ERROR: Final = "Cannot connect to vpsAdmind"
#: Largest reply line accepted (``get queue`` with big params can be long).
MAX_REPLY: Final = 64 * 1024 * 1024
DEFAULT_TIMEOUT: Final = 60.0


class ConnectError(ControlError):
    """Nothing listens at the socket (missing file, refused, no permission); ``reason`` says which."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(CONNECT_ERROR)


class ProtocolError(ControlError):
    """The peer closed early, sent something that is not a protocol line, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: str
    response: Any = None
    error: Any = None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error_message(self) -> str:
        """The error as one line: v2.0's ``{cmd, exitstatus, error}`` objects give their ``error``."""
        err = self.error
        if isinstance(err, dict):
            text = err.get("error")
            if text is not None:
                return str(text).strip()
            return json.dumps(err, sort_keys=True)
        return "" if err is None else str(err)


class CommandError(ControlError):
    """The daemon answered with a failed reply."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(reply.error_message)


def _parse(line: bytes, what: str) -> dict[str, Any]:
    if not line:
        raise ProtocolError(f"vpsAdmind closed the connection before sending the {what}")
    if not line.endswith(b"\n") and len(line) >= MAX_REPLY:
        raise ProtocolError(f"the {what} is larger than {MAX_REPLY} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid {what} from vpsAdmind: {line[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"invalid {what} from vpsAdmind: {line[:200]!r}")
    return obj


def _reply(obj: dict[str, Any], version: str | None) -> Reply:
    status = obj.get("status")
    if status == "ok":
        return Reply("ok", response=obj.get("response"), version=version)
    if status == "failed":
        # v2.0's server puts the message in "error"; accept "response" too, as v2.0's ctl read it.
        error = obj.get("error") if "error" in obj else obj.get("response")
        return Reply("failed", error=error, version=version)
    raise ProtocolError(f"invalid reply from vpsAdmind: {json.dumps(obj)[:200]}")


def _greeting(obj: dict[str, Any]) -> tuple[str | None, Reply | None]:
    """The daemon's version, or the failed reply a busy server sends instead of a greeting."""
    if "status" in obj:
        return None, _reply(obj, None)
    version = obj.get("version")
    return (None if version is None else str(version)), None


def _request_line(command: str, params: dict[str, Any] | None) -> bytes:
    return encode({"command": command, "params": params or {}})


def call(command: str, params: dict[str, Any] | None = None, *, socket_path: str = DEFAULT_SOCKET,
         timeout: float = DEFAULT_TIMEOUT) -> Reply:
    """Send ``command`` with ``params`` and return the reply (blocking)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise ConnectError(socket_path, f"{socket_path}: {exc.strerror or exc}") from exc
        with sock.makefile("rb") as rfile:
            try:
                version, busy = _greeting(_parse(rfile.readline(MAX_REPLY), "greeting"))
                if busy is not None:
                    return busy
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(_request_line(command, params))  # a refused request still gets its reply
                return _reply(_parse(rfile.readline(MAX_REPLY), "reply"), version)
            except TimeoutError as exc:
                raise ProtocolError(f"vpsAdmind did not answer within {timeout} s") from exc
            except ConnectionResetError as exc:
                raise ProtocolError("vpsAdmind reset the connection") from exc
    finally:
        sock.close()


async def _readline(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"reply from vpsAdmind larger than {MAX_REPLY} bytes") from exc


async def acall(command: str, params: dict[str, Any] | None = None, *, socket_path: str = DEFAULT_SOCKET,
                timeout: float = DEFAULT_TIMEOUT) -> Reply:
    """Send ``command`` with ``params`` and return the reply (asyncio)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path, limit=MAX_REPLY)
    except OSError as exc:
        raise ConnectError(socket_path, f"{socket_path}: {exc.strerror or exc}") from exc
    except TimeoutError as exc:
        raise ConnectError(socket_path, f"{socket_path}: connection timed out") from exc
    try:
        async with asyncio.timeout(timeout):
            version, busy = _greeting(_parse(await _readline(reader), "greeting"))
            if busy is not None:
                return busy
            writer.write(_request_line(command, params))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await writer.drain()
            return _reply(_parse(await _readline(reader), "reply"), version)
    except TimeoutError as exc:
        raise ProtocolError(f"vpsAdmind did not answer within {timeout} s") from exc
    except ConnectionResetError as exc:
        raise ProtocolError("vpsAdmind reset the connection") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def request(command: str, params: dict[str, Any] | None = None, *, socket_path: str = DEFAULT_SOCKET,
            timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Like :func:`call`, but return the response and raise :class:`CommandError` for a failed reply."""
    reply = call(command, params, socket_path=socket_path, timeout=timeout)
    if not reply.ok:
        raise CommandError(reply)
    return reply.response


async def arequest(command: str, params: dict[str, Any] | None = None, *, socket_path: str = DEFAULT_SOCKET,
                   timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Like :func:`acall`, but return the response and raise :class:`CommandError` for a failed reply."""
    reply = await acall(command, params, socket_path=socket_path, timeout=timeout)
    if not reply.ok:
        raise CommandError(reply)
    return reply.response
