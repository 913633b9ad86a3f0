"""Progress of the long streams a node runs (transfers, downloads): bytes, rate and an estimate of the rest.

A stream opens a :class:`Progress` on the node's :class:`ProgressBoard` (``ctx.progress`` of every handler),
adds bytes from whatever thread copies them, and closes it. The board publishes every open stream on the bus
once per ``interval`` (``node/<id>/progress``, qos 0, see docs/mqtt.md) plus a final event at close, and
``vpsadmindctl status`` lists what is open. Counting is a plain integer add under the GIL: the copy loops
call :meth:`Progress.add` once per chunk (1 MiB), so the cost is nil next to the bytes moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Progress", "ProgressBoard", "ProgressSink"]


class ProgressSink(Protocol):
    """Where the board publishes; the daemon's Bus implements it."""

    def progress_event(self, payload: dict[str, Any]) -> None: ...


_ids = itertools.count(1)


@dataclass(slots=True)
class Progress:
    """One running stream; ``total`` is an estimate (None when unknown), ``done`` the bytes moved so far."""

    kind: str                     # send | recv | local | download
    chain_id: int
    transaction_id: int
    label: str
    total: int | None = None
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    last_change: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str | None = None
    id: int = field(default_factory=lambda: next(_ids))

    def add(self, n: int) -> None:
        if n > 0:
            self.done += n
            self.last_change = time.monotonic()

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.finished or time.monotonic()) - self.started)

    @property
    def rate(self) -> float:
        """Bytes per second since the start."""
        return self.done / self.seconds

    @property
    def remaining(self) -> float | None:
        """Seconds left at the current rate; None without an estimate or before the first byte."""
        if self.total is None or self.done <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)

    def idle_for(self, now: float | None = None) -> float:
        return (now or time.monotonic()) - self.last_change

    def as_dict(self) -> dict[str, Any]:
        remaining = self.remaining
        return {
            "id": self.id, "kind": self.kind, "chain": self.chain_id, "transaction": self.transaction_id,
            "label": self.label, "bytes": self.done, "total": self.total,
            "rate": round(self.rate), "seconds": round(self.seconds, 3),
            "eta": None if remaining is None else round(remaining, 1),
            "state": "running" if self.finished is None else ("failed" if self.error else "done"),
            **({"error": self.error} if self.error else {}),
        }


class ProgressBoard:
    """The open streams of this node and their publisher (see the module docstring)."""

    def __init__(self, sink: Callable[[], ProgressSink | None] | None = None, *, interval: float = 1.0) -> None:
        self._sink = sink
        self.interval = interval
        self.open_streams: dict[int, Progress] = {}
        # Bytes of the closed streams per kind: with the open ones, a monotonic total (vpsadmind/metrics.py).
        self.closed_bytes: dict[str, int] = {}
        self.closed_count: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def open(self, kind: str, *, chain_id: int, transaction_id: int, label: str,
             total: int | None = None) -> Progress:
        p = Progress(kind, chain_id, transaction_id, label, total)
        self.open_streams[p.id] = p
        self._publish(p)
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to publish periodically
                self._task = asyncio.get_running_loop().create_task(self._tick(), name="progress-board")
        return p

    def close(self, p: Progress, *, error: str | None = None) -> None:
        if self.open_streams.pop(p.id, None) is None:
            return
        p.finished = time.monotonic()
        p.error = error
        self.closed_bytes[p.kind] = self.closed_bytes.get(p.kind, 0) + p.done
        self.closed_count[p.kind] = self.closed_count.get(p.kind, 0) + 1
        self._publish(p)

    def items(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.open_streams.values()]

    def total_bytes(self) -> dict[str, int]:
        """Bytes moved per kind since the start: closed streams plus what the open ones moved so far."""
        out = dict(self.closed_bytes)
        for p in list(self.open_streams.values()):
            out[p.kind] = out.get(p.kind, 0) + p.done
        return out

    def _publish(self, p: Progress) -> None:
        sink = self._sink() if self._sink is not None else None
        if sink is not None:
            sink.progress_event(p.as_dict())

    async def _tick(self) -> None:
        while self.open_streams:
            await asyncio.sleep(self.interval)
            for p in list(self.open_streams.values()):
                self._publish(p)
