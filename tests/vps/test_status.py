"""The VPS status reporter (contract 10.4) on the fake vzctl and MariaDB: the rows of this node's VPSes, the
values read inside running containers, the bus payload, and the command budget."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.engine_helpers import fetch
from tests.vps.conftest import FakeVz, make_ct, make_vz
from vpsadmind import __version__, system
from vpsadmind.config import Config
from vpsadmind.db import Database
from vpsadmind.reporters.vps_status import VpsStatusReporter, parse_df, parse_meminfo
from vpsadmind.testing.fakevz import faults

pytestmark = pytest.mark.timeout(120)


class Sink:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, subtopic: str, payload: dict[str, Any]) -> None:
        self.published.append((subtopic, payload))


async def add_vps(db: Any, vps_id: int, server: int) -> None:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vps (vps_id, m_id, vps_server, vps_config, object_state) "
                          "VALUES (%s, 1, %s, '', 0)", (vps_id, server))


async def test_reporter_writes_and_publishes(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    for veid in (101, 102):
        make_ct(fakevz, veid, hostname=f"ct{veid}")
    fakevz.ok("set", "101", "--ram", "1024M", "--save")
    fakevz.ok("start", "101")
    fakevz.layout.ct(101).update_state(nproc=40, mem_used_kb=300 * 1024)
    for vps_id, server in ((101, 1), (102, 1), (103, 2), (104, 1)):
        await add_vps(db, vps_id, server)
    async with db.cursor() as cur:  # an old row is replaced, not duplicated
        await cur.execute("INSERT INTO vps_status (vps_id, vps_up, created_at) VALUES (102, 1, '2015-01-01')")

    database, sink = Database(vcfg.db), Sink()
    try:
        reporter = VpsStatusReporter(database, make_vz(vcfg), 1, events=sink, interval=300)
        with system.record_calls() as calls:
            statuses = await reporter.run_once()
    finally:
        await database.close()
    assert [s.vps_id for s in statuses] == [101, 102, 104]
    assert calls.count("fake-vzlist") == 1, "one vzlist for all VPSes"
    assert calls.count("fake-vzctl", subcommand="exec2") == 2, "meminfo and df of the one running VPS"

    rows = {r["vps_id"]: r for r in await fetch(db, "SELECT * FROM vps_status ORDER BY vps_id")}
    assert sorted(rows) == [101, 102, 104]
    r101 = rows[101]
    assert (r101["vps_up"], r101["vps_nproc"], r101["vps_vm_used_mb"], r101["vps_admin_ver"]) == (1, 40, 300,
                                                                                                     __version__)
    assert r101["vps_disk_used_mb"] >= 0
    assert (rows[102]["vps_up"], rows[102]["vps_nproc"], rows[102]["vps_vm_used_mb"]) == (0, 0, 0)
    assert rows[102]["created_at"].year > 2015
    assert rows[104]["vps_up"] == 0, "a VPS without a container is reported down"

    ((topic, payload),) = sink.published
    assert topic == "node/1/vps"
    assert [p["vps_id"] for p in payload["vpses"]] == [101, 102, 104]
    assert payload["vpses"][0]["vm_used_mb"] == 300 and payload["vpses"][0]["up"] is True


async def test_unreadable_usage_is_zero_and_run_never_raises(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    fakevz.ok("start", "101")
    await add_vps(db, 101, 1)
    faults.fail(fakevz.root, "exec2", veid="101", rc=1, count=None)
    database = Database(vcfg.db)
    try:
        reporter = VpsStatusReporter(database, make_vz(vcfg), 1, interval=300)
        (status,) = await reporter.run_once()
        assert (status.up, status.vm_used_mb, status.disk_used_mb) == (True, 0, 0)   # v2.0's rescue
        faults.fail(fakevz.root, "list", program="vzlist", rc=2, message="vzlist broke", count=None)
        task = asyncio.create_task(reporter.run(interval=0.05))   # failures are counted and logged, never raised
        for _ in range(500):
            if reporter.failures >= 2:
                break
            await asyncio.sleep(0.01)
        reporter.stop()
        await task
        assert reporter.failures >= 2 and not task.exception()
    finally:
        await database.close()


def test_parsers() -> None:
    meminfo = "MemTotal:        1048576 kB\nMemFree:          524288 kB\nCached: 0 kB\n"
    assert parse_meminfo(meminfo) == 512
    assert parse_df("Filesystem 1K-blocks Used Available Use% Mounted on\n/dev/simfs 2306867 10240 0 1% /\n") == 10
    with pytest.raises(ValueError):
        parse_meminfo("MemTotal: 1 kB\n")
    with pytest.raises(ValueError):
        parse_df("df: /: No such file\n")
