"""Traffic accounting reporter (contract 9.1): every ``transfers_interval`` the firewall's counters are
collected (:meth:`Firewall.collect_marked <vpsadmind.firewall.accounting.Firewall.collect_marked>`: read and
diffed under the firewall lock) and stored in ``transfered_recent`` as v2.0 did: one row per address and
protocol (``tcp``, ``udp``, ``all``) with packets and bytes in and out and ``tr_date`` (UTC), rows with no
traffic left out. With an event sink the same rows are published on ``node/<server_id>/traffic``.

**Marks.** The same DB transaction stores, in ``vpsadmind_traffic_marks``, the kernel counter values per rule
that the stored traffic reaches (only the ones that changed). After a crash, the first read of the restarted
daemon diffs the kernel's counters against them (:meth:`MarkStore.load` is the firewall's ``resume``): what was
counted after the last save, before the crash and while no daemon ran, is stored once, and nothing that was
stored is stored again. A file beside the DB could not be written in the same transaction as the rows, and a
crash between the two would count twice or lose. A row with an empty ``ip`` per server and IP version says that
marks were stored (none at all is a node that an older daemon counted on).

Nothing is lost when the database is away: traffic that could not be stored goes back into the firewall's
pending table and is stored with the next collection; the marks in the DB stay where the last save left them.

The daemon runs one with ``vpsadmin.track_transfers`` (vpsadmind/daemon.py): at a stop it lets the collection in
progress finish (:meth:`~vpsadmind.reporters.periodic.Periodic.stop`), waits for the engine, then :meth:`close`
stores what was counted since the last interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from vpsadmind.db import Database
from vpsadmind.db.pool import Tx
from vpsadmind.firewall.accounting import Firewall, Marks, Traffic
from vpsadmind.firewall.rules import RuleKey
from vpsadmind.reporters.periodic import Periodic

__all__ = ["EventSink", "MarkChanges", "MarkStore", "TrafficReporter", "store_traffic", "MARKS_DDL"]

log = structlog.get_logger("vpsadmind.reporters.traffic")

_INSERT: Final = ("INSERT INTO transfered_recent (tr_ip, tr_proto, tr_packets_in, tr_packets_out, tr_bytes_in, "
                  "tr_bytes_out, tr_date) VALUES (%s, %s, %s, %s, %s, %s, %s)")

MARKS_DDL: Final = """CREATE TABLE IF NOT EXISTS `vpsadmind_traffic_marks` (
    `server_id` INT NOT NULL,
    `ip_v` TINYINT NOT NULL,
    `ip` VARCHAR(127) NOT NULL,
    `proto` VARCHAR(4) NOT NULL,
    `direction` VARCHAR(3) NOT NULL,
    `packets` BIGINT UNSIGNED NOT NULL,
    `bytes` BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (`server_id`, `ip_v`, `ip`, `proto`, `direction`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
_UPSERT: Final = ("INSERT INTO vpsadmind_traffic_marks (server_id, ip_v, ip, proto, direction, packets, bytes) "
                  "VALUES (%s, %s, %s, %s, %s, %s, %s) "
                  "ON DUPLICATE KEY UPDATE packets = VALUES(packets), bytes = VALUES(bytes)")
_DELETE: Final = ("DELETE FROM vpsadmind_traffic_marks WHERE server_id = %s AND ip_v = %s AND ip = %s "
                  "AND proto = %s AND direction = %s")
_WIPE: Final = "DELETE FROM vpsadmind_traffic_marks WHERE server_id = %s AND ip_v = %s"
_PROBE: Final = ("SELECT packets, bytes FROM vpsadmind_traffic_marks WHERE server_id = %s AND ip_v = %s AND ip = %s "
                 "AND proto = %s AND direction = %s FOR UPDATE")
_SELECT: Final = ("SELECT ip, proto, direction, packets, bytes FROM vpsadmind_traffic_marks "
                  "WHERE server_id = %s AND ip_v = %s")


class EventSink(Protocol):
    def publish(self, subtopic: str, payload: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class MarkChanges:
    """The statements that bring the stored marks to ``marks``: run in the save's transaction."""

    marks: Marks
    wipe: list[tuple[int, int]] = field(default_factory=list)
    upsert: list[tuple[Any, ...]] = field(default_factory=list)
    delete: list[tuple[Any, ...]] = field(default_factory=list)
    #: an upsert whose stored value this process knows and which it changes: if the table already holds the new
    #: value, an earlier attempt of this very save committed (its connection broke before the answer)
    probe: tuple[Any, ...] | None = None

    @property
    def empty(self) -> bool:
        return not (self.wipe or self.upsert or self.delete)

    async def applied_before(self, tx: Tx) -> bool:
        """True when the table already holds this save's marks: ``db.run`` retried a save whose commit had
        gone through, and storing its rows again would count them twice."""
        if self.probe is None:
            return False
        sid, v, ip, proto, direction, packets, nbytes = self.probe
        row = await tx.fetchone(_PROBE, (sid, v, ip, proto, direction))
        return row is not None and (int(row["packets"]), int(row["bytes"])) == (packets, nbytes)

    async def apply(self, tx: Tx) -> None:
        for args in self.wipe:
            await tx.execute(_WIPE, args)
        if self.delete:
            await tx.executemany(_DELETE, self.delete)
        if self.upsert:
            await tx.executemany(_UPSERT, self.upsert)


class MarkStore:
    """``vpsadmind_traffic_marks`` of one node, and what this process knows the table holds (``saved``), so
    that a save writes only the marks that changed."""

    def __init__(self, db: Database, server_id: int) -> None:
        self.db = db
        self.server_id = server_id
        self.saved: dict[int, dict[RuleKey, tuple[int, int]]] = {}
        self._table = False

    async def ensure_table(self) -> None:
        if not self._table:
            await self.db.execute(MARKS_DDL)  # DDL commits implicitly: never inside the save's transaction
            self._table = True

    async def load(self, version: int) -> Mapping[RuleKey, tuple[int, int]] | None:
        """The stored marks of ``version``, None when none were ever stored for this node."""
        await self.ensure_table()
        rows = await self.db.fetchall(_SELECT, (self.server_id, version))
        if not any(not r["ip"] for r in rows):
            return None  # and the first save rewrites the version, with the row that says marks were stored
        marks = {RuleKey(r["ip"], r["proto"], r["direction"]): (int(r["packets"]), int(r["bytes"]))
                 for r in rows if r["ip"]}
        self.saved[version] = dict(marks)
        return marks

    def changes(self, marks: Marks) -> MarkChanges:
        """The difference to what is stored; a version this process has not loaded is rewritten whole. Rules
        that counted nothing need no row (a missing mark is zero)."""
        marks = {v: {k: pb for k, pb in now.items() if pb != (0, 0)} for v, now in marks.items()}
        out = MarkChanges(marks)
        sid = self.server_id
        for v, now in marks.items():
            old = self.saved.get(v)
            if old is None:
                out.wipe.append((sid, v))
                out.upsert.append((sid, v, "", "", "", 0, 0))  # "marks were stored"
                old = {}
            changed = [(sid, v, k.addr, k.proto, k.direction, p, b) for k, (p, b) in now.items()
                       if old.get(k) != (p, b)]
            out.upsert += changed
            if out.probe is None:
                out.probe = next((row for row in changed if RuleKey(*row[2:5]) in old), None)
            out.delete += [(sid, v, k.addr, k.proto, k.direction) for k in old if k not in now]
        return out

    def committed(self, changes: MarkChanges) -> None:
        for v, now in changes.marks.items():
            self.saved[v] = now


async def store_traffic(db: Database, traffic: Sequence[Traffic], *, when: dt.datetime | None = None,
                        marks: MarkChanges | None = None) -> int:
    """Insert one ``transfered_recent`` row per non-empty entry and apply ``marks``, in one DB transaction
    (none when there is nothing to write); returns the row count."""
    rows = [(t.ip, t.proto, t.packets_in, t.packets_out, t.bytes_in, t.bytes_out,
             (when or dt.datetime.now(dt.UTC)).replace(tzinfo=None, microsecond=0))
            for t in traffic if not t.empty]

    async def write(tx: Tx) -> None:
        if marks is not None and await marks.applied_before(tx):
            return  # a retry of a save that did commit
        if rows:
            await tx.executemany(_INSERT, rows)
        if marks is not None:
            await marks.apply(tx)

    if rows or (marks is not None and not marks.empty):
        await db.run(write)
    return len(rows)


class TrafficReporter(Periodic):
    """Collects and stores traffic every ``interval`` seconds (``transfers_interval``, 10 s by default).

    It becomes the firewall's ``resume`` (the last reporter built for a firewall is the one that stores)."""

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
        self.marks = MarkStore(db, server_id)
        firewall.resume = self.marks.load
        # one save at a time, each with the marks of its own take: stored marks never go back
        self._saving = asyncio.Lock()
        self._created = time.monotonic()

    async def run_once(self) -> list[Traffic]:
        """Collect and store; on a storage failure the traffic goes back to the firewall and the error is raised."""
        async with self._saving:
            traffic, marks = await self.firewall.collect_marked()
            await self._store(traffic, marks)
        return traffic

    async def save(self, traffic: list[Traffic]) -> None:
        """Store traffic handed out without marks (they are stored with the next collection)."""
        async with self._saving:
            await self._store(traffic, {})

    async def _store(self, traffic: list[Traffic], marks: Marks) -> None:
        changes = self.marks.changes(marks)
        try:
            if changes.upsert or changes.wipe:
                await self.marks.ensure_table()
            rows = await store_traffic(self.db, traffic, marks=changes)
        except BaseException:
            self.firewall.give_back(traffic)
            raise
        self.marks.committed(changes)
        if rows and not self.rows:  # how long a (re)start takes to its first stored traffic
            log.info("traffic_first_saved", rows=rows, after=round(time.monotonic() - self._created, 3))
        self.rows += rows
        self.runs += 1
        if self.events is not None and traffic:
            self.events.publish(f"node/{self.server_id}/traffic",
                                {"time": int(time.time()), "traffic": [t.as_dict() for t in traffic]})

    async def save_pending(self) -> None:
        """Store what the firewall already collected (after a flush or reinit), without reading the chains."""
        async with self._saving:
            traffic, marks = self.firewall.take_marked()
            await self._store(traffic, marks)

    async def close(self) -> None:
        """A last collection at shutdown, so that the counts since the last interval are stored (never raises)."""
        try:
            await self.run_once()
        except Exception as exc:
            log.error("final traffic report failed", error=f"{type(exc).__name__}: {exc}")
