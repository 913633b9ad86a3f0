"""Execution queues: a number of slots, extra slots for urgent transactions and a start delay (contract 4.1)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vpsadmind.config import QueueConfig

__all__ = ["Queue", "Queues", "ROLLBACK_QUEUE"]

ROLLBACK_QUEUE = "rollback"


@dataclass(slots=True)
class Queue:
    name: str
    threads: int
    urgent: int
    start_delay: float
    opens_at: float
    running: set[int] = field(default_factory=set)  # chain ids

    @property
    def used(self) -> int:
        return len(self.running)

    def started(self, now: float) -> bool:
        return now >= self.opens_at

    def has_slot(self, urgent: bool) -> bool:
        limit = self.threads + (self.urgent if urgent else 0)
        return self.used < limit

    @property
    def full(self) -> bool:
        return self.used >= self.threads + self.urgent


class Queues:
    """All queues of the node; unknown queue names fall back to ``general`` so no transaction is stranded."""

    def __init__(self, config: dict[str, QueueConfig], *, started_at: float | None = None) -> None:
        self.started_at = time.monotonic() if started_at is None else started_at
        self.queues: dict[str, Queue] = {}
        self.reconfigure(config)

    def reconfigure(self, config: dict[str, QueueConfig]) -> None:
        for name, qc in config.items():
            q = self.queues.get(name)
            opens_at = self.started_at + qc.start_delay
            if q is None:
                self.queues[name] = Queue(name, qc.threads, qc.urgent, qc.start_delay, opens_at)
            else:
                q.threads, q.urgent, q.start_delay, q.opens_at = qc.threads, qc.urgent, qc.start_delay, opens_at

    def get(self, name: str) -> Queue:
        return self.queues.get(name) or self.queues["general"]

    def all_full(self) -> bool:
        return all(q.full for q in self.queues.values())

    @property
    def capacity(self) -> int:
        return sum(q.threads + q.urgent for q in self.queues.values())
