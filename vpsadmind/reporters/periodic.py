"""The loop every reporter runs: report now, then every interval, and outlive any failure."""

from __future__ import annotations

import asyncio
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

    run_once: Callable[[], Awaitable[Any]]

    async def run(self, interval: float | None = None) -> None:
        """Report now and then every ``interval`` seconds until cancelled; failures are logged, never raised."""
        every = self.interval if interval is None else interval
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.run_once()
            except Exception as exc:  # a reporter must outlive a DB outage or a zfs/iptables hiccup
                self.failures += 1
                log.error(f"{self.name} failed", error=f"{type(exc).__name__}: {exc}", failures=self.failures)
            await asyncio.sleep(max(0.0, every - (loop.time() - started)))
