"""The control socket: v2.0's remote-control server (contract 6.1) on asyncio.

Wiring in the daemon is one task, cancelled with the others at shutdown::

    self._tasks.append(asyncio.create_task(ControlServer(self).serve(), name="control"))

Robustness beyond v2.0: a request line is read with a size limit (``Request too large``) and a deadline (a
silent client is answered ``Request timeout`` and dropped), each client runs in its own task, at most
``max_clients`` are served at once (the rest are answered ``Too many clients``), a failing command gives a
failed reply, and a live socket of another daemon is never taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from typing import Any, Final

import structlog

from vpsadmind import __version__
from vpsadmind.control.commands import COMMANDS, CommandFailed, CommandFn, DaemonLike
from vpsadmind.control.protocol import (
    ERR_BUSY,
    ERR_SYNTAX,
    ERR_TIMEOUT,
    ERR_TOO_LARGE,
    ERR_UNSUPPORTED,
    MAX_REQUEST,
    ControlError,
    encode,
    failed_reply,
    ok_reply,
)

__all__ = ["ControlServer", "IDLE_TIMEOUT", "MAX_CLIENTS"]

log = structlog.get_logger("vpsadmind.control")

#: Seconds a client may take to send its request line.
IDLE_TIMEOUT: Final = 10.0
MAX_CLIENTS: Final = 64
#: Seconds to wait for a slow reader when writing, and for clients to finish when the server closes.
WRITE_TIMEOUT: Final = 10.0
CLOSE_GRACE: Final = 2.0
#: After refusing an oversized request, what the server still reads and drops (bytes, seconds) so that the
#: close does not reset the connection before the client has read the reply.
DISCARD_LIMIT: Final = 16 * 1024 * 1024
DISCARD_TIMEOUT: Final = 2.0


class ControlServer:
    """Serve the control socket of ``daemon`` at ``path`` (default: the config's ``remote.socket``)."""

    def __init__(self, daemon: DaemonLike, *, path: str | None = None, idle_timeout: float = IDLE_TIMEOUT,
                 max_clients: int = MAX_CLIENTS, max_request: int = MAX_REQUEST,
                 commands: dict[str, CommandFn] | None = None, version: str = __version__) -> None:
        self.daemon = daemon
        self.path = path if path is not None else daemon.config.remote_socket
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.max_request = max_request
        self.commands = COMMANDS if commands is None else commands
        self.version = version
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    # ---- life cycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen; raises :class:`ControlError` if the socket cannot be created."""
        path = self.path
        await _clear_stale(path)
        old_mask = os.umask(0o177)  # never visible with wider permissions, not even between bind and chmod
        try:
            self._server = await asyncio.start_unix_server(self._client, path=path, limit=self.max_request)
        except OSError as exc:
            raise ControlError(f"cannot create the control socket {path}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old_mask)
        try:
            os.chmod(path, 0o600)
            st = os.stat(path)
        except OSError as exc:
            await self.close()
            raise ControlError(f"cannot set the mode of the control socket {path}: {exc.strerror or exc}") from exc
        self._inode = (st.st_dev, st.st_ino)
        log.info("control_listening", socket=path)

    async def serve(self) -> None:
        """Start, then serve until cancelled or :meth:`close`; a socket that cannot be created is logged."""
        try:
            await self.start()
        except ControlError as exc:
            log.error("control_socket_failed", error=str(exc))
            return
        try:
            await self._closed.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening, give running clients a moment to get their reply, then drop them; remove the socket."""
        self._closed.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        clients = {t for t in self._clients if t is not asyncio.current_task()}
        if clients:
            _done, pending = await asyncio.wait(clients, timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), CLOSE_GRACE)
        self._unlink_own()

    def _unlink_own(self) -> None:
        """Remove the socket file if it is still the one this server created."""
        if self._inode is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
                log.info("control_closed", socket=self.path)
        self._inode = None

    # ---- one client -------------------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if len(self._clients) > self.max_clients:
                log.warning("control_busy", clients=len(self._clients) - 1)
                await self._send(writer, failed_reply(ERR_BUSY))
                return
            await self._send(writer, {"version": self.version})
            reply = await self._handle(reader)
            if reply is not None:
                await self._send(writer, reply)
                if reply.get("error") == ERR_TOO_LARGE:
                    if writer.can_write_eof():
                        writer.write_eof()  # the reply is complete: a client reading on is not kept waiting
                    await _discard(reader)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or does not read
        except Exception:
            log.exception("control_client_failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        try:
            data = encode(obj)
        except (TypeError, ValueError) as exc:  # a command returned what JSON cannot hold
            log.error("control_reply_unencodable", error=str(exc))
            data = encode(failed_reply(f"cannot encode the reply: {exc}"))
        writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    async def _read_request(self, reader: asyncio.StreamReader) -> bytes | dict[str, Any]:
        """The request line, or the failed reply to send instead."""
        try:
            async with asyncio.timeout(self.idle_timeout):
                return await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial  # EOF before a newline: v2.0 parses what it got
        except asyncio.LimitOverrunError:
            log.warning("control_request_too_large", limit=self.max_request)
            return failed_reply(ERR_TOO_LARGE)
        except TimeoutError:
            log.warning("control_client_timeout", timeout=self.idle_timeout)
            return failed_reply(ERR_TIMEOUT)

    async def _handle(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        line = await self._read_request(reader)
        if isinstance(line, dict):
            return line
        if not line.strip():
            return None if not line else failed_reply(ERR_SYNTAX)  # nothing at all: the client is gone
        try:
            req = json.loads(line)
        except (ValueError, RecursionError):
            return failed_reply(ERR_SYNTAX)
        if not isinstance(req, dict):
            return failed_reply(ERR_SYNTAX)
        name = req.get("command")
        fn = self.commands.get(name) if isinstance(name, str) else None
        if fn is None or not isinstance(name, str):
            log.info("control_unsupported", command=str(name)[:100])
            return failed_reply(ERR_UNSUPPORTED)
        params = req.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return failed_reply("Invalid params: expected an object")
        return await self._run(name, fn, params)

    async def _run(self, name: str, fn: CommandFn, params: dict[str, Any]) -> dict[str, Any]:
        log.debug("control_command", command=name)
        try:
            return ok_reply(await fn(self.daemon, params))
        except CommandFailed as exc:
            log.info("control_command_failed", command=name, error=str(exc))
            return failed_reply(exc.error)
        except Exception as exc:
            log.exception("control_command_crashed", command=name)
            return failed_reply(str(exc) or type(exc).__name__)


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop the rest of an oversized request, bounded by DISCARD_LIMIT and DISCARD_TIMEOUT: a UNIX
    socket closed with unread data resets the connection, and the client would lose the reply."""
    total = 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(DISCARD_TIMEOUT):
            while total < DISCARD_LIMIT:
                chunk = await reader.read(256 * 1024)
                if not chunk:
                    return
                total += len(chunk)


async def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch a live socket or anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlError(f"cannot inspect {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    try:
        async with asyncio.timeout(1.0):
            _reader, writer = await asyncio.open_unix_connection(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: stale
    except TimeoutError as exc:
        raise ControlError(f"{path} accepts no connection but may be alive; refusing to replace it") from exc
    except OSError as exc:
        raise ControlError(f"cannot probe {path}: {exc.strerror or exc}") from exc
    else:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        raise ControlError(f"another process is listening on {path} (is vpsadmind already running?)")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ControlError(f"cannot remove the stale socket {path}: {exc.strerror or exc}") from exc
    log.info("control_stale_socket_removed", socket=path)
