"""The loop every reporter runs: report now, then every interval, and outlive any failure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

__all__ = ["Periodic"]

log = structlog.get_logger("vpsadmind.reporters")


class Periodic:
    """Base of the reporters: subclasses implement ``run_once``; ``run`` never raises except on cancellation."""

    name = "report"
    interval: float = 60.0
    failures: int = 0
    _stopping: asyncio.Event | None = None

    run_once: Callable[[], Awaitable[Any]]

    def _stop_event(self) -> asyncio.Event:
        if self._stopping is None:  # subclasses need not call an __init__ of this class
            self._stopping = asyncio.Event()
        return self._stopping

    def stop(self) -> None:
        """Make ``run`` return after the report in progress: cancelling it could kill a command half-way (an
        ``iptables -L -Z`` that zeroed counters it never returned) or lose a report that was already stored."""
        self._stop_event().set()

    async def run(self, interval: float | None = None) -> None:
        """Report now and then every ``interval`` seconds until cancelled or stopped; failures are logged."""
        every = self.interval if interval is None else interval
        loop = asyncio.get_running_loop()
        stopping = self._stop_event()
        while not stopping.is_set():
            started = loop.time()
            try:
                await self.run_once()
            except Exception as exc:  # a reporter must outlive a DB outage or a zfs/iptables hiccup
                self.failures += 1
                log.error(f"{self.name} failed", error=f"{type(exc).__name__}: {exc}", failures=self.failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), max(0.0, every - (loop.time() - started)))
