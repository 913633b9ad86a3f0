"""The byte movers of a transfer: blocking copy loops that run in worker threads, and the watchdog that ends
them when nothing moves.

Stream bytes never pass through the event loop: a loop here reads 1 MiB at a time from a pipe or socket and
writes it on, counting into a :class:`~vpsadmind.progress.Progress` (one integer add per chunk). Pipes are
enlarged to 1 MiB so that ``zfs send`` and ``zfs recv`` are not woken for every 64 KiB. To stop a loop from
outside (stall, cancellation), :class:`Abort` shuts the socket down and kills the processes: the blocked
system call then returns and the loop ends with an error.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import select
import socket
import termios
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from vpsadmind.progress import Progress
from vpsadmind.transfer.errors import ProtocolError, Stalled, StreamBroken
from vpsadmind.transfer.wire import END, HEADER, MAX_FRAME

__all__ = ["CHUNK", "Abort", "EarlyAnswer", "ReaderGone", "Throttle", "frames_to_pipe", "new_pipe",
           "pipe_to_pipe", "pipe_to_socket", "send_end", "watched"]

CHUNK: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = 1031  # fcntl.F_SETPIPE_SZ, named only since Python 3.10 on some builds

T = TypeVar("T")


class EarlyAnswer(StreamBroken):
    """The receiver spoke in the middle of the stream: its ``zfs recv`` ended early and it says why."""


def new_pipe() -> tuple[int, int]:
    """``os.pipe()`` enlarged to CHUNK where the kernel allows (``/proc/sys/fs/pipe-max-size``)."""
    r, w = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, _F_SETPIPE_SZ, CHUNK)
    return r, w


class Throttle:
    """``transfer.rate_limit``: sleeps so that the average rate since the start stays at or below ``rate``."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.started = time.monotonic()

    def __call__(self, done: int) -> None:
        if not self.rate:
            return
        ahead = done / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


class ReaderGone(Exception):
    """The process reading the pipe (zfs recv) has exited; not a ConnectionError, unlike BrokenPipeError,
    so that it is never mistaken for a broken network connection."""


def _write_all(fd: int, data: memoryview) -> None:
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except BrokenPipeError as exc:
        raise ReaderGone(str(exc)) from None


def _zero_copy(sock: socket.socket) -> bool:
    # TLS encrypts in user space, so only a plain socket can take spliced pages
    return hasattr(os, "splice") and type(sock) is socket.socket


def _splice_exact(src: int, dst: int, count: int, *, wait: int, event: int, timeout: float | None) -> int:
    """Move ``count`` bytes from ``src`` to ``dst`` with ``splice`` (one side is a pipe); returns how many
    moved before EOF. A socket with a timeout is non-blocking underneath, so EAGAIN waits on ``wait``."""
    poller = select.poll()
    poller.register(wait, event)
    moved = 0
    while moved < count:
        try:
            n = os.splice(src, dst, count - moved)
        except BlockingIOError:
            if not poller.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError(f"no progress for {timeout} s") from None
            continue
        if n == 0:
            return moved
        moved += n
    return moved


def _available(fd: int) -> int:
    """Bytes waiting in a pipe, after blocking until there is some or EOF (then 0)."""
    select.select([fd], [], [])
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def _spliced_to_socket(src: int, sock: socket.socket, progress: Progress, throttle: Throttle) -> int:
    """The framed copy without a user-space copy: each frame is what the pipe holds at that moment."""
    total, fd, timeout = 0, sock.fileno(), sock.gettimeout()
    while (n := _available(src)) > 0:
        if select.select([sock], [], [], 0)[0]:
            raise EarlyAnswer(f"the receiver answered after {total} bytes")
        try:
            sock.sendall(HEADER.pack(n))
            _splice_exact(src, fd, n, wait=fd, event=select.POLLOUT, timeout=timeout)
        except OSError as exc:
            raise StreamBroken(f"sending to the receiver failed after {total} bytes: {exc}") from exc
        total += n
        progress.add(n)
        throttle(total)
    return total


def pipe_to_socket(src: int, sock: socket.socket, progress: Progress, throttle: Throttle, *,
                   framed: bool) -> int:
    """Copy ``src`` (zfs send's stdout) to ``sock`` until EOF; framed (length-prefixed) unless nc mode.
    The end frame is not sent here: only the caller knows whether zfs send succeeded."""
    if framed and _zero_copy(sock):
        return _spliced_to_socket(src, sock, progress, throttle)
    total = 0
    while True:
        data = os.read(src, CHUNK)
        if not data:
            return total
        if framed and select.select([sock], [], [], 0)[0]:
            raise EarlyAnswer(f"the receiver answered after {total} bytes")
        try:
            if framed:
                sock.sendall(HEADER.pack(len(data)))
            sock.sendall(data)
        except OSError as exc:
            raise StreamBroken(f"sending to the receiver failed after {total + len(data)} bytes: {exc}") from exc
        total += len(data)
        progress.add(len(data))
        throttle(total)


def send_end(sock: socket.socket) -> None:
    try:
        sock.sendall(END)
    except OSError as exc:
        raise StreamBroken(f"cannot send the end of the stream: {exc}") from exc


def _recv_exact(sock: socket.socket, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return got
        got += n
    return got


def frames_to_pipe(sock: socket.socket, dst: int, progress: Progress, *, framed: bool) -> bool:
    """Copy the stream from ``sock`` into ``dst`` (zfs recv's stdin). True when it ended properly (the end
    frame; EOF in nc mode), False when the connection ended in the middle."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    header = bytearray(HEADER.size)
    zero_copy = framed and _zero_copy(sock)
    try:
        while True:
            if not framed:
                n = sock.recv_into(view)
                if n == 0:
                    return True
                _write_all(dst, view[:n])
                progress.add(n)
                continue
            if _recv_exact(sock, memoryview(header)) < HEADER.size:
                return False
            (size,) = HEADER.unpack(header)
            if size == 0:
                return True
            if size > MAX_FRAME:
                raise ProtocolError(f"a frame of {size} bytes is over the limit of {MAX_FRAME}")
            if zero_copy:
                if _splice_into_pipe(sock, dst, size) < size:
                    return False
                progress.add(size)
                continue
            while size:
                n = _recv_exact(sock, view[:min(size, CHUNK)])
                if n == 0:
                    return False
                _write_all(dst, view[:n])
                progress.add(n)
                size -= n
    except (TimeoutError, ConnectionError) as exc:
        raise StreamBroken(f"receiving failed after {progress.done} bytes: {exc}") from exc


def _splice_into_pipe(sock: socket.socket, dst: int, size: int) -> int:
    fd = sock.fileno()
    try:
        return _splice_exact(fd, dst, size, wait=fd, event=select.POLLIN, timeout=sock.gettimeout())
    except BrokenPipeError as exc:  # the pipe's reader, zfs recv, is gone
        raise ReaderGone(str(exc)) from None


def pipe_to_pipe(src: int, dst: int, progress: Progress, throttle: Throttle) -> int:
    """Local send: zfs send's stdout into zfs recv's stdin, by ``splice`` (no copy into user space) where
    the kernel has it."""
    total = 0
    splice = getattr(os, "splice", None)
    while True:
        if splice is not None:
            n = splice(src, dst, CHUNK)
        else:
            data = os.read(src, CHUNK)
            n = len(data)
            if n:
                _write_all(dst, memoryview(data))
        if n == 0:
            return total
        total += n
        progress.add(n)
        throttle(total)


class Abort:
    """What the watchdog or a cancellation does to end a stream: shut the socket, kill the processes."""

    def __init__(self, *, shutdown: int = socket.SHUT_RDWR) -> None:
        self.shutdown = shutdown
        self.sockets: list[socket.socket] = []
        self.processes: list[asyncio.subprocess.Process] = []
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        self.reason = self.reason or reason
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(self.shutdown)
        for proc in self.processes:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


async def watched(work: Callable[[], T], progress: Progress, abort: Abort, *, stall_timeout: float,
                  tick: float = 1.0) -> T:
    """Run blocking ``work`` in a thread; if ``progress`` does not move for ``stall_timeout`` seconds, or the
    caller is cancelled, ``abort`` ends it. A stall is raised as :class:`Stalled`."""
    task: Awaitable[T] = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=tick)  # type: ignore[type-var]
            if done:
                break
            idle = progress.idle_for()
            if idle > stall_timeout:
                abort(f"no progress for {idle:.0f} s (transfer.stall_timeout {stall_timeout:g} s)")
                with contextlib.suppress(Exception):
                    await task
                raise Stalled(f"{progress.label}: {abort.reason}, {progress.done} bytes moved")
    except asyncio.CancelledError:
        abort("cancelled")
        with contextlib.suppress(Exception):
            await task
        raise
    return await task
