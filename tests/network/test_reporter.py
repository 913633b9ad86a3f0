"""TrafficReporter and Network.flush: counts end up in transfered_recent exactly once, even across a DB failure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch
from tests.network.conftest import make_firewall
from tests.network.nets import EXT_V4, VPS_V4, Topology, UdpSink, udp_send
from vpsadmind.db import Database
from vpsadmind.firewall import Firewall, Shaper
from vpsadmind.firewall.services import Network
from vpsadmind.reporters.traffic import TrafficReporter, store_traffic
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config

pytestmark = pytest.mark.timeout(120)


class Events:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, subtopic: str, payload: dict[str, Any]) -> None:
        self.published.append((subtopic, payload))


class BrokenDb:
    async def run(self, fn: Any, **kwargs: Any) -> Any:
        raise ConnectionError("database away")

    async def execute(self, sql: str, args: Any = None) -> int:
        raise ConnectionError("database away")

    async def fetchall(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        raise ConnectionError("database away")


async def send(topo: Topology, src: str, port: int, count: int) -> None:
    sink = await UdpSink.start(topo.ext, EXT_V4, port)
    await udp_send(topo.vps, src, EXT_V4, port, count, 100)
    await sink.stop((topo.vps, src))


async def test_reporter_stores_rows_and_survives_a_db_outage(db: Any, db_settings: TestDbSettings,
                                                             test_database: str, tmp_path: Path, topo: Topology,
                                                             fw: Firewall) -> None:
    database = Database(make_config(db_settings, test_database, journal=str(tmp_path / "j")).db)
    a = VPS_V4[0]
    await fw.init([a])
    events = Events()
    broken = TrafficReporter(fw, BrokenDb(), 1)  # type: ignore[arg-type]
    reporter = TrafficReporter(fw, database, 1, events=events)
    try:
        await send(topo, a, 7001, 100)
        with pytest.raises(ConnectionError):
            await broken.run_once()
        await send(topo, a, 7002, 50)
        traffic = await reporter.run_once()
        assert [(t.ip, t.proto, t.packets_out) for t in traffic] == [(a, "udp", 152)]
        rows = await fetch(db, "SELECT * FROM transfered_recent")
        assert [(r["tr_ip"], r["tr_proto"], r["tr_packets_out"], r["tr_bytes_out"], r["tr_packets_in"])
                for r in rows] == [(a, "udp", 152, 150 * 128 + 2 * 32, 0)]
        assert events.published[0][0] == "node/1/traffic"
        await reporter.close()
        assert len(await fetch(db, "SELECT * FROM transfered_recent")) == 1  # nothing new, nothing twice
    finally:
        await database.close()


async def test_flush_saves_traffic_first(db: Any, db_settings: TestDbSettings, test_database: str, tmp_path: Path,
                                         topo: Topology, fw: Firewall, shaper: Shaper) -> None:
    database = Database(make_config(db_settings, test_database, journal=str(tmp_path / "j")).db)
    a = VPS_V4[0]
    net = Network(database, 1, firewall=fw, shaper=shaper, max_tx=10**8, max_rx=10**8)
    try:
        await fw.init([a])
        await fw.collect()  # delta mode: the baseline
        await send(topo, a, 7003, 40)
        assert await net.flush(["fw"]) == {"fw": {4: True, 6: True}}
        rows = await fetch(db, "SELECT tr_packets_out FROM transfered_recent")
        assert [r["tr_packets_out"] for r in rows] == [41]
        assert await net.init(["fw"]) == {"fw": {4: 0, 6: 0}}  # no VPS rows in this database
        assert await net.reinit(["all"]) == {"fw": {4: 0, 6: 0}, "shaper": True}
    finally:
        await database.close()


async def udp_out(db: Any, addr: str) -> int:
    rows = await fetch(db, "SELECT SUM(tr_packets_out) AS n FROM transfered_recent WHERE tr_ip = %s", (addr,))
    return int(rows[0]["n"] or 0)


async def test_a_restart_after_a_crash_stores_what_was_not_stored_and_nothing_twice(
        db: Any, db_settings: TestDbSettings, test_database: str, tmp_path: Path, topo: Topology,
        backend: str) -> None:
    """The regression of the kill -9 in tests/chaos/test_traffic_restarts.py: the kernel's counters outlive the
    daemon, and the marks stored with each save tell the next one where counting stopped."""
    database = Database(make_config(db_settings, test_database, journal=str(tmp_path / "j")).db)
    a = VPS_V4[0]
    try:
        fw1 = make_firewall(topo, backend)
        r1 = TrafficReporter(fw1, database, 1)
        await fw1.init([a])
        await send(topo, a, 7011, 100)
        await r1.run_once()
        await send(topo, a, 7012, 50)
        assert await fw1.collect() != []  # read, never stored: the daemon dies here
        await send(topo, a, 7013, 20)  # counted while no daemon runs
        assert await udp_out(db, a) == 101

        fw2 = make_firewall(topo, backend)  # the restart, with the database away at first
        TrafficReporter(fw2, BrokenDb(), 1)  # type: ignore[arg-type]
        assert await fw2.collect() == []  # no marks, nothing folded: the counts stay in the kernel
        r2 = TrafficReporter(fw2, database, 1)
        assert await fw2.init([a]) == {4: None, 6: None}  # the chains exist: init's read resumes from the marks
        await r2.run_once()
        assert await udp_out(db, a) == 101 + 51 + 21
        await r2.run_once()
        rows = len(await fetch(db, "SELECT * FROM transfered_recent"))

        r3 = TrafficReporter(make_firewall(topo, backend), database, 1)  # killed right after a commit
        assert await r3.run_once() == []
        assert len(await fetch(db, "SELECT * FROM transfered_recent")) == rows
    finally:
        await database.close()


async def test_without_stored_marks_legacy_counts_what_the_kernel_holds(
        db: Any, db_settings: TestDbSettings, test_database: str, tmp_path: Path, topo: Topology,
        backend: str) -> None:
    """A node an older daemon counted on: on legacy it zeroed at every read (as v2.0), so the kernel holds only
    what was never stored; on nft it diffed, so the first listing can only be the baseline (docs/network.md)."""
    database = Database(make_config(db_settings, test_database, journal=str(tmp_path / "j")).db)
    a = VPS_V4[0]
    try:
        old = make_firewall(topo, backend, counter_mode="zero" if backend == "legacy" else "delta")
        await old.init([a])
        await old.collect()
        await send(topo, a, 7021, 30)
        reporter = TrafficReporter(make_firewall(topo, backend), database, 1)
        await reporter.run_once()
        assert await udp_out(db, a) == (31 if backend == "legacy" else 0)
        marks = await fetch(db, "SELECT ip, proto, direction, packets FROM vpsadmind_traffic_marks WHERE ip_v = 4")
        assert ("", "", "", 0) in [(m["ip"], m["proto"], m["direction"], m["packets"]) for m in marks]
        assert (a, "udp", "out", 31) in [(m["ip"], m["proto"], m["direction"], m["packets"]) for m in marks]
    finally:
        await database.close()


async def test_a_save_retried_after_its_commit_went_through_stores_nothing_twice(
        db: Any, db_settings: TestDbSettings, test_database: str, tmp_path: Path, topo: Topology,
        backend: str) -> None:
    """Database.run retries a transaction whose connection broke; when the break came after the COMMIT went
    through, the retry must not insert the traffic again: it finds its own marks already stored."""
    database = Database(make_config(db_settings, test_database, journal=str(tmp_path / "j")).db)
    a = VPS_V4[0]
    try:
        fw = make_firewall(topo, backend)
        reporter = TrafficReporter(fw, database, 1)
        await fw.init([a])
        await send(topo, a, 7021, 10)
        await reporter.run_once()
        await send(topo, a, 7022, 30)
        traffic, marks = await fw.collect_marked()
        changes = reporter.marks.changes(marks)
        assert await store_traffic(database, traffic, marks=changes) > 0
        await store_traffic(database, traffic, marks=changes)  # the retry of the same save
        assert await udp_out(db, a) == 10 + 1 + 30 + 1
    finally:
        await database.close()
