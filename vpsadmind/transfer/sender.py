"""The sending end of a transfer (Send, 5221) and the same-node pipe (LocalSend, 5223).

:func:`send` connects to the receiver that Recv left on ``addr:port``, proves it knows the transfer's secret
(``protocol: vpsadmind``), streams ``zfs send`` in frames and returns the receiver's verdict, so a Send that
succeeds means the stream was received by ``zfs recv``, not only written into a socket. A connection that
breaks is retried (:data:`RETRIES` times): from the receiver's resume token where resumable receive exists,
from the start elsewhere. A failure of ``zfs send`` itself, a stall, a rejected handshake or a ``zfs recv``
that refused a complete stream are not retried: the transaction fails and the chain rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from vpsadmind import system
from vpsadmind.config import TransferConfig
from vpsadmind.progress import Progress, ProgressBoard
from vpsadmind.transfer import wire
from vpsadmind.transfer.errors import (
    AuthRejected,
    ProtocolError,
    RemoteFailed,
    Stalled,
    StreamBroken,
    TransferError,
)
from vpsadmind.transfer.pump import (
    Abort,
    ReaderGone,
    Throttle,
    new_pipe,
    pipe_to_pipe,
    pipe_to_socket,
    send_end,
    watched,
)
from vpsadmind.transfer.receiver import HANDSHAKE_TIMEOUT

__all__ = ["SendSpec", "SendResult", "send", "local_send", "OnSpawn", "RETRIES", "CONNECT_WAIT"]

#: awaited with the pid of each ``zfs send`` started, before its stream flows
OnSpawn = Callable[[int], Awaitable[None]]

RETRIES: Final = 3
CONNECT_WAIT: Final = 30.0
log = structlog.get_logger("vpsadmind.transfer")


@dataclass(frozen=True, slots=True)
class SendSpec:
    chain_id: int
    transaction_id: int
    addr: str
    port: int
    secret: str | None       # None with protocol nc
    snapshot: str            # the last snapshot, full name
    base: str | None         # the common snapshot of an incremental stream
    guid: str | None         # of ``snapshot``: what RecvCheck compares on the other side
    estimate: int | None


@dataclass(frozen=True, slots=True)
class SendResult:
    bytes: int
    seconds: float
    attempts: int
    resumed: bool

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


async def send(spec: SendSpec, *, argv_for: Any, config: TransferConfig, board: ProgressBoard,
               resumable: bool, on_spawn: OnSpawn | None = None) -> SendResult:
    """Stream to the receiver; ``argv_for(token, base)`` gives the ``zfs send`` argv: resuming from
    ``token``, or incremental from ``base`` instead of the spec's base (the rest after a resumed stream).
    ``on_spawn(pid)`` is awaited for every ``zfs send`` started (see :mod:`vpsadmind.transfer.holds`)."""
    framed = config.protocol != "nc"
    progress = board.open("send", chain_id=spec.chain_id, transaction_id=spec.transaction_id,
                          label=f"{spec.snapshot} -> {spec.addr}:{spec.port}", total=spec.estimate)
    started = time.monotonic()
    error: str | None = None
    attempt, resumed, base = 0, False, None
    try:
        while True:
            attempt += 1
            try:
                token, latest = await _attempt(spec, argv_for, base, config, progress, framed=framed,
                                               resumable=resumable, attempt=attempt, on_spawn=on_spawn)
            except (StreamBroken, ConnectionError) as exc:
                if not framed or attempt > RETRIES:
                    raise
                log.warning("transfer_retry", chain=spec.chain_id, attempt=attempt, error=str(exc))
                await asyncio.sleep(min(2.0 ** attempt, 10.0))
                continue
            resumed = resumed or token is not None
            done = latest is None or f"{spec.snapshot.split('@', 1)[0]}@{latest}" == spec.snapshot
            if done or attempt > RETRIES + 2:
                return SendResult(progress.done, time.monotonic() - started, attempt, resumed)
            # A resumed -I stream completes only the snapshot it broke in: the rest follows from there.
            base = f"{spec.snapshot.split('@', 1)[0]}@{latest}"
    except BaseException as exc:
        error = str(exc) or type(exc).__name__
        raise
    finally:
        board.close(progress, error=error)


async def _connect(addr: str, port: int) -> socket.socket:
    """Connect, waiting up to CONNECT_WAIT for a receiver that is not listening yet (its daemon restarts)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + CONNECT_WAIT
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (addr, port)), HANDSHAKE_TIMEOUT)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise TransferError(f"cannot connect to the receiver at {addr}:{port}: {exc}") from exc
            await asyncio.sleep(0.5)


def _handshake(sock: socket.socket, spec: SendSpec, resumable: bool, attempt: int) -> dict[str, Any]:
    """Prove the secret; returns the receiver's answer: ``token`` to resume from (None: from the beginning),
    ``complete`` when an earlier attempt's stream did arrive after all."""
    greeting = wire.recv_line(sock, what="greeting")
    nonce = greeting.get("nonce")
    if greeting.get("proto") != wire.PROTO or not isinstance(nonce, str):
        raise ProtocolError(f"{spec.addr}:{spec.port} is not a vpsadmind receiver: {greeting!r:.120}")
    assert spec.secret is not None
    wire.send_line(sock, {"chain": spec.chain_id, "mac": wire.mac(spec.secret, nonce), "guid": spec.guid,
                          "estimate": spec.estimate, "resume": resumable, "attempt": attempt})
    answer = wire.recv_line(sock, what="answer to the handshake")
    if answer.get("ok") is not True:
        raise AuthRejected(f"the receiver at {spec.addr}:{spec.port} refused the transfer: {answer!r:.120}")
    return answer


async def _attempt(spec: SendSpec, argv_for: Any, base: str | None, config: TransferConfig,
                   progress: Progress, *, framed: bool, resumable: bool,
                   attempt: int = 1, on_spawn: OnSpawn | None = None) -> tuple[str | None, str | None]:
    """One connection; returns the resume token it used and, after a resumed stream, the newest snapshot
    the receiver has now."""
    sock = await _connect(spec.addr, spec.port)
    try:
        sock.setblocking(True)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        if config.tls is not None and framed:
            sock = await asyncio.to_thread(wire.client_context(config.tls).wrap_socket, sock)
        hello = await asyncio.to_thread(_handshake, sock, spec, resumable, attempt) if framed else {}
        if hello.get("complete") is True:  # the last attempt's stream arrived whole before its connection broke
            return None, None
        token = hello.get("token") if isinstance(hello.get("token"), str) and hello.get("token") else None
        if token is None and base is None:
            progress.done = 0  # a new stream from the start
        answer = await _stream(sock, argv_for(token, base), config, progress, framed=framed, on_spawn=on_spawn)
        latest = answer.get("latest")
        return token, latest if isinstance(latest, str) and latest else None
    finally:
        with contextlib.suppress(OSError):
            sock.close()


async def _stream(sock: socket.socket, argv: list[str], config: TransferConfig, progress: Progress, *,
                  framed: bool, on_spawn: OnSpawn | None = None) -> dict[str, Any]:
    r, w = new_pipe()
    try:
        proc = await system.spawn(argv, stdout=w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    if on_spawn is not None:
        try:
            await on_spawn(proc.pid)
        except BaseException:
            os.close(r)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
    abort = Abort()
    abort.sockets.append(sock)
    abort.processes.append(proc)
    sock.settimeout(config.stall_timeout + 5)
    throttle = Throttle(config.rate_limit)

    def copy() -> int:
        try:
            return pipe_to_socket(r, sock, progress, throttle, framed=framed)
        finally:
            os.close(r)

    try:
        await watched(copy, progress, abort, stall_timeout=config.stall_timeout)
    except StreamBroken as exc:
        abort("the stream broke")
        await proc.wait()
        answer = await asyncio.to_thread(_early_answer, sock) if framed else None
        if answer is not None and answer.get("ok") is False:
            raise RemoteFailed(f"zfs recv on the receiver failed: {answer.get('error')}") from exc
        raise
    except BaseException:
        abort("send failed")
        await proc.wait()
        raise
    assert proc.stderr is not None
    stderr = (await proc.stderr.read()).decode(errors="replace").strip()
    rc = await proc.wait()
    if rc != 0:
        # No end mark: the receiver discards what it got, or keeps it to resume from. A retry (resumed
        # where possible) may well succeed: a sender killed for good is handled by Send.recover instead.
        abort("zfs send failed")
        raise StreamBroken(f"{' '.join(argv)} exited with {rc}: {stderr}")
    return await _conclude(sock, config, framed=framed)


def _early_answer(sock: socket.socket) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, TransferError):
        sock.settimeout(2.0)
        return wire.recv_line(sock, what="result")
    return None


async def _conclude(sock: socket.socket, config: TransferConfig, *, framed: bool) -> dict[str, Any]:
    """The end mark and the receiver's verdict (nc mode: half-close and wait for the receiver to close)."""
    sock.settimeout(config.stall_timeout)
    if not framed:
        def drain() -> None:
            sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
        await asyncio.to_thread(drain)
        return {}
    await asyncio.to_thread(send_end, sock)
    try:
        answer = await asyncio.to_thread(wire.recv_line, sock, what="result")
    except StreamBroken as exc:
        if isinstance(exc.__cause__, TimeoutError):  # a receiver that does not finish is stalled, not broken
            raise Stalled(f"no verdict from the receiver for {config.stall_timeout:g} s after the stream "
                          "(transfer.stall_timeout)") from exc
        raise
    if answer.get("ok") is not True:
        raise RemoteFailed(f"zfs recv on the receiver failed: {answer.get('error')}")
    return answer


async def local_send(send_argv: list[str], recv_argv: list[str], *, progress: Progress,
                     config: TransferConfig, on_spawn: OnSpawn | None = None) -> int:
    """``zfs send | zfs recv`` on this node, the bytes spliced through a counting thread; the pid of the
    ``zfs send`` is given to ``on_spawn``."""
    r1, w1 = new_pipe()
    r2, w2 = new_pipe()
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs.append(await system.spawn(send_argv, stdout=w1))
        if on_spawn is not None:
            await on_spawn(procs[0].pid)
        procs.append(await system.spawn(recv_argv, stdin=r2))
    except BaseException:
        for proc in procs:  # on_spawn failed: the stream must not run without its ledger entry
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        for fd in (r1, w2):
            os.close(fd)
        raise
    finally:
        os.close(w1)
        os.close(r2)
    abort = Abort()
    abort.processes.extend(procs)

    def copy() -> int:
        try:
            return pipe_to_pipe(r1, w2, progress, Throttle(config.rate_limit))
        except (BrokenPipeError, ReaderGone):
            return progress.done  # zfs recv ended early: its status says why
        finally:
            os.close(r1)
            os.close(w2)

    try:
        await watched(copy, progress, abort, stall_timeout=config.stall_timeout)
    except BaseException:
        abort("local send failed")
        raise
    finally:
        outputs = [await p.communicate() for p in procs]
    failures = [f"{' '.join(argv)} exited with {p.returncode}: {err.decode(errors='replace').strip()}"
                for argv, p, (_, err) in zip((send_argv, recv_argv), procs, outputs, strict=True)
                if p.returncode != 0]
    if failures:
        raise TransferError("; ".join(failures))
    return progress.done
