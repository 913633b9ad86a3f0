"""Traffic accounting reporter (contract 9.1): every ``transfers_interval`` the firewall's counters are
collected (:meth:`Firewall.collect <vpsadmind.firewall.accounting.Firewall.collect>`: read, and zeroed or
diffed, under the firewall lock) and stored in ``transfered_recent`` as v2.0 did: one row per address and
protocol (``tcp``, ``udp``, ``all``) with packets and bytes in and out and ``tr_date`` (UTC), rows with no
traffic left out. With an event sink the same rows are published on ``node/<server_id>/traffic``.

Nothing is lost when the database is away: traffic that could not be stored goes back into the firewall's
pending table and is stored with the next collection.

The daemon runs one with ``vpsadmin.track_transfers`` (vpsadmind/daemon.py): at a stop it lets the collection in
progress finish (:meth:`~vpsadmind.reporters.periodic.Periodic.stop`), waits for the engine, then :meth:`close`
stores what was counted since the last interval.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

import structlog

from vpsadmind.db import Database
from vpsadmind.firewall.accounting import Firewall, Traffic
from vpsadmind.reporters.periodic import Periodic

__all__ = ["TrafficReporter", "store_traffic", "EventSink"]

log = structlog.get_logger("vpsadmind.reporters.traffic")

_INSERT: Final = ("INSERT INTO transfered_recent (tr_ip, tr_proto, tr_packets_in, tr_packets_out, tr_bytes_in, "
                  "tr_bytes_out, tr_date) VALUES (%s, %s, %s, %s, %s, %s, %s)")


class EventSink(Protocol):
    def publish(self, subtopic: str, payload: dict[str, Any]) -> None: ...


async def store_traffic(db: Database, traffic: Sequence[Traffic], *, when: dt.datetime | None = None) -> int:
    """Insert one ``transfered_recent`` row per non-empty entry, in one DB transaction; returns the row count."""
    rows = [(t.ip, t.proto, t.packets_in, t.packets_out, t.bytes_in, t.bytes_out,
             (when or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0))
            for t in traffic if not t.empty]
    if rows:
        await db.run(lambda tx: tx.executemany(_INSERT, rows))
    return len(rows)


class TrafficReporter(Periodic):
    """Collects and stores traffic every ``interval`` seconds (``transfers_interval``, 10 s by default)."""

    name = "traffic report"

    def __init__(self, firewall: Firewall, db: Database, server_id: int, *, events: EventSink | None = None,
                 interval: float = 10.0) -> None:
        self.firewall = firewall
        self.db = db
        self.server_id = server_id
        self.events = events
        self.interval = interval
        self.runs = 0
        self.failures = 0
        self.rows = 0

    async def run_once(self) -> list[Traffic]:
        """Collect and store; on a storage failure the traffic goes back to the firewall and the error is raised."""
        traffic = await self.firewall.collect()
        await self.save(traffic)
        return traffic

    async def save(self, traffic: list[Traffic]) -> None:
        try:
            self.rows += await store_traffic(self.db, traffic)
        except BaseException:
            self.firewall.give_back(traffic)
            raise
        self.runs += 1
        if self.events is not None and traffic:
            self.events.publish(f"node/{self.server_id}/traffic",
                                {"time": int(time.time()), "traffic": [t.as_dict() for t in traffic]})

    async def save_pending(self) -> None:
        """Store what the firewall already collected (after a flush or reinit), without reading the chains."""
        await self.save(self.firewall.take_pending())

    async def close(self) -> None:
        """A last collection at shutdown, so that the counts since the last interval are stored (never raises)."""
        try:
            await self.run_once()
        except Exception as exc:
            log.error("final traffic report failed", error=f"{type(exc).__name__}: {exc}")
