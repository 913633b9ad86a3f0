"""The receiving end of a transfer: what Recv (5220) leaves listening on the reserved ``addr:port``.

:meth:`Receiver.serve` runs as a chain blocker (contract 4.4): no further step of the chain starts on this
node until it ends. It accepts connections until one stream has been received completely (or ``zfs recv``
rejected a complete stream), so that:

- a connection without the transfer's secret (``protocol: vpsadmind``) is dropped after the handshake and the
  receiver keeps waiting for the real sender; no byte of it reaches ``zfs recv``, which is not even started;
- a stream that breaks (the network, a stall) leaves the receiver waiting for the sender's next attempt,
  which resumes from ``receive_resume_token`` where resumable receive exists and is redone from the start
  elsewhere (zfs-fuse drops a partial receive by itself);
- cancelling it (the chain rolls back, the daemon stops) kills ``zfs recv`` and closes the port.

One session at a time moves data; handshakes run concurrently, so a silent client cannot hold the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Final

import structlog

from vpsadmind import system
from vpsadmind.config import TransferConfig
from vpsadmind.progress import ProgressBoard
from vpsadmind.transfer import wire
from vpsadmind.transfer.errors import ProtocolError, Stalled, StreamBroken, TransferError
from vpsadmind.transfer.pump import Abort, ReaderGone, frames_to_pipe, new_pipe, watched
from vpsadmind.transfer.store import TransferStore
from vpsadmind.zfs.driver import Zfs
from vpsadmind.zfs.errors import ZfsError

__all__ = ["Receiver", "ReceiverSpec", "HANDSHAKE_TIMEOUT"]

HANDSHAKE_TIMEOUT: Final = 15.0
log = structlog.get_logger("vpsadmind.transfer")


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    row_id: int
    chain_id: int
    transaction_id: int
    addr: str
    port: int
    secret: str
    target: str
    remount: bool = False  # zfs-fuse: Recv unmounted the target for a full receive (Zfs.prepare_receive)


class Receiver:
    """See the module docstring."""

    def __init__(self, spec: ReceiverSpec, *, zfs: Zfs, store: TransferStore, config: TransferConfig,
                 progress: ProgressBoard) -> None:
        self.spec = spec
        self.zfs = zfs
        self.store = store
        self.config = config
        self.progress = progress
        self.framed = config.protocol != "nc"
        self.tls = wire.server_context(config.tls) if config.tls is not None and self.framed else None
        self.listener: socket.socket | None = None
        self.outcome: str | None = None   # received | failed
        self.rejected = 0
        self.attempts = 0
        self._busy = asyncio.Lock()
        self._done = asyncio.Event()
        self._sessions: set[asyncio.Task[None]] = set()

    def listen(self) -> None:
        """Bind and listen now, so that Recv fails (and the chain rolls back) if the port is not free."""
        family = socket.AF_INET6 if ":" in self.spec.addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.spec.addr, self.spec.port))
            sock.listen(8)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TransferError(f"cannot listen on {self.spec.addr}:{self.spec.port}: {exc}") from exc
        self.listener = sock

    def stop(self) -> None:
        """End :meth:`serve` (the chain rolls back): sessions are cancelled, ``zfs recv`` killed."""
        self._done.set()

    async def serve(self) -> str | None:
        """Accept until a stream was received (or definitely failed); returns the outcome."""
        if self.listener is None:
            self.listen()
        assert self.listener is not None
        loop = asyncio.get_running_loop()
        accept = asyncio.ensure_future(self._accept_loop(loop, self.listener))
        try:
            await self._done.wait()
        finally:
            accept.cancel()
            for task in list(self._sessions):
                task.cancel()
            await asyncio.gather(accept, *self._sessions, return_exceptions=True)
            # The row keeps its state: a daemon stopped while listening listens again at its next start.
            self.listener.close()
        return self.outcome

    async def _accept_loop(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        while True:
            conn, peer = await loop.sock_accept(listener)
            task = asyncio.ensure_future(self._session(conn, peer))
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)

    async def _session(self, conn: socket.socket, peer: Any) -> None:
        conn.setblocking(True)
        conn.settimeout(HANDSHAKE_TIMEOUT)
        sock: socket.socket = conn
        try:
            if self.tls is not None:
                sock = await asyncio.to_thread(self.tls.wrap_socket, conn, server_side=True)
            hello = await asyncio.to_thread(self._handshake, sock) if self.framed else {}
            if hello is None:
                self.rejected += 1
                log.warning("transfer_connection_rejected", peer=str(peer), port=self.spec.port,
                            chain=self.spec.chain_id, reason="no valid secret")
                return
            async with self._busy:
                if self._done.is_set():
                    return
                await self._receive(sock, hello)
        except (ssl.SSLError, ProtocolError) as exc:
            self.rejected += 1
            log.warning("transfer_connection_rejected", peer=str(peer), port=self.spec.port,
                        chain=self.spec.chain_id, reason=str(exc))
        except (StreamBroken, OSError) as exc:
            log.warning("transfer_stream_broken", peer=str(peer), chain=self.spec.chain_id, error=str(exc))
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _handshake(self, sock: socket.socket) -> dict[str, Any] | None:
        """The greeting and the sender's proof; None when the proof is wrong (the caller drops the peer)."""
        nonce = secrets.token_hex(32)
        wire.send_line(sock, {"proto": wire.PROTO, "nonce": nonce})
        try:
            hello = wire.recv_line(sock, what="authentication")
        except StreamBroken:
            return None
        if hello.get("chain") != self.spec.chain_id or not wire.verify(self.spec.secret, nonce, hello.get("mac")):
            return None
        return hello

    async def _arrived(self, hello: dict[str, Any]) -> bool:
        """On a retry: did the last attempt's stream arrive whole after all (zfs send died after writing its
        last byte, so zfs recv succeeded although the end mark never came)? One ``zfs get``."""
        attempt = hello.get("attempt")
        if not isinstance(attempt, int) or attempt < 2 or not self.attempts:
            return False
        try:
            snaps = await self.zfs.snapshots(self.spec.target)
        except ZfsError:
            return False
        return bool(snaps) and str(snaps[-1].guid) == str(hello.get("guid"))

    async def _receive(self, sock: socket.socket, hello: dict[str, Any]) -> None:
        spec = self.spec
        if await self._arrived(hello):
            self.outcome = "received"
            await self.store.update(spec.row_id, state="received", guid=str(hello.get("guid")))
            await asyncio.to_thread(wire.send_line, sock, {"ok": True, "token": None, "complete": True})
            log.info("transfer_received", target=spec.target, note="by the previous attempt")
            self._done.set()
            return
        token = await self.zfs.resume_token(spec.target) if hello.get("resume") else None
        if spec.remount and self.attempts:  # an earlier attempt's end mounted it again
            await self.zfs.unmount(spec.target)
        self.attempts += 1
        r, w = new_pipe()
        try:
            proc = await system.spawn(self.zfs.recv_argv(spec.target, resumable=True), stdin=r)
        finally:
            os.close(r)
        estimate = hello.get("estimate")
        progress = self.progress.open("recv", chain_id=spec.chain_id, transaction_id=spec.transaction_id,
                                      label=f"{spec.target} <- {spec.addr}:{spec.port}",
                                      total=estimate if isinstance(estimate, int) else None)
        # A stall shuts only the reading side: the sender must still hear why (and then not retry).
        abort = Abort(shutdown=socket.SHUT_RD)
        abort.sockets.append(sock)
        abort.processes.append(proc)
        error: str | None = None
        owned = True  # until the copy thread takes over the write end of the pipe
        try:
            if self.framed:
                await asyncio.to_thread(wire.send_line, sock, {"ok": True, "token": token})
            await self.store.update(spec.row_id, state="receiving")
            sock.settimeout(self.config.stall_timeout + 5)
            owned = False
            ended = await self._copy(sock, w, progress, abort)
            # zfs recv has its EOF now: a truncated stream makes it fail, and a resumable receive keeps
            # its partial state for the next attempt (killing it could lose that)
            _, stderr = await asyncio.wait_for(proc.communicate(), self.config.stall_timeout)
            if ended == "broken":
                error = "the stream ended before its end mark"
                await self.store.update(spec.row_id, state="listening", error=error)
                return
            await self._finish(sock, hello, proc.returncode or 0, stderr.decode(errors="replace"), progress,
                               resumed=token is not None)
            if ended == "recv-died":
                await asyncio.to_thread(_linger, sock)
        except Stalled as exc:
            error = str(exc)
            await proc.wait()
            await self._refuse(sock, error)
        except BaseException as exc:
            error = error or str(exc) or type(exc).__name__
            abort("receive failed")
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            raise
        finally:
            if owned:
                os.close(w)
            self.progress.close(progress, error=error if self.outcome != "received" else None)
            if spec.remount:  # zfs-fuse: put back the mount Recv took away, whatever happened
                with contextlib.suppress(Exception):
                    await self.zfs.mount(spec.target)
            if self.outcome is not None:
                self._done.set()  # only now: serve() cancels the sessions once it is set

    async def _refuse(self, sock: socket.socket, error: str) -> None:
        """A stalled stream ends the transfer: the sender is told (so it does not retry) and the chain
        rolls back."""
        self.outcome = "failed"
        await self.store.update(self.spec.row_id, state="failed", error=error)
        log.warning("transfer_stalled", target=self.spec.target, error=error)
        if self.framed:
            def tell() -> None:
                sock.settimeout(2.0)
                wire.send_line(sock, {"ok": False, "error": error})
            with contextlib.suppress(Exception):
                await asyncio.to_thread(tell)

    async def _copy(self, sock: socket.socket, w: int, progress: Any, abort: Abort) -> str:
        """complete | broken | recv-died (zfs recv exited before the end: its status says why)."""
        def copy() -> str:
            try:
                return "complete" if frames_to_pipe(sock, w, progress, framed=self.framed) else "broken"
            except ReaderGone:
                return "recv-died"
            finally:
                os.close(w)
        return await watched(copy, progress, abort, stall_timeout=self.config.stall_timeout)

    async def _finish(self, sock: socket.socket, hello: dict[str, Any], rc: int, stderr: str,
                      progress: Any, *, resumed: bool) -> None:
        spec = self.spec
        guid = hello.get("guid")
        latest = None
        if rc == 0 and resumed:  # a resumed -I stream ends with the snapshot it broke in: say which
            snaps = await self.zfs.snapshots(spec.target)
            latest = snaps[-1].short if snaps else None
            if latest is not None and snaps[-1].guid != _int(guid):
                self.outcome = None
                await self.store.update(spec.row_id, state="listening", nbytes=progress.done)
                with contextlib.suppress(StreamBroken):
                    await asyncio.to_thread(wire.send_line, sock, {"ok": True, "latest": latest})
                return
        if rc == 0:
            self.outcome = "received"
            await self.store.update(spec.row_id, state="received", nbytes=progress.done,
                                    guid=str(guid) if isinstance(guid, str | int) else None)
            answer: dict[str, Any] = {"ok": True, "bytes": progress.done}
            log.info("transfer_received", target=spec.target, bytes=progress.done,
                     seconds=round(progress.seconds, 3))
        else:
            self.outcome = "failed"
            message = stderr.strip() or f"zfs recv exited with {rc}"
            await self.store.update(spec.row_id, state="failed", nbytes=progress.done, error=message)
            answer = {"ok": False, "error": message}
            log.warning("transfer_receive_failed", target=spec.target, error=message)
        if self.framed:
            with contextlib.suppress(StreamBroken):
                await asyncio.to_thread(wire.send_line, sock, answer)


def _linger(sock: socket.socket, seconds: float = 5.0) -> None:
    """After answering a sender that is still streaming: half-close and discard what is in flight for a
    moment, so that the answer is read before the connection resets."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(seconds)
        while sock.recv(1024 * 1024):
            pass


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None
