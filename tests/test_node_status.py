"""servers_status from the node status reporter, against the real database, and its retained bus message."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiomysql
import psutil

from vpsadmind import __version__
from vpsadmind.db import Database
from vpsadmind.reporters.node_status import NodeStatusReporter
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], int, bool]] = []

    def publish(self, subtopic: str, payload: dict[str, Any], *, qos: int = 0, retain: bool = False) -> None:
        self.sent.append((subtopic, payload, qos, retain))


async def _row(db: aiomysql.Connection, server_id: int) -> dict[str, Any]:
    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT * FROM servers_status WHERE server_id = %s", (server_id,))
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def test_reporter_upserts_servers_status_and_publishes_it_retained(
        db: aiomysql.Connection, db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> None:
    cfg = make_config(db_settings, test_database, server_id=7, journal=str(tmp_path / "j"))
    database = Database(cfg.db)
    sink = Sink()
    try:
        reporter = NodeStatusReporter(database, 7, events=sink, interval=0.05, vz_root=str(tmp_path))
        first = await reporter.run_once()
        row = await _row(db, 7)
        assert row["daemon"] == 0 and row["vpsadmin_version"] == __version__
        assert row["kernel"] == os.uname().release
        assert abs(row["cpu_load"] - os.getloadavg()[1]) < 1.0
        assert abs(row["ram_free_mb"] - psutil.virtual_memory().available // 2**20) < 512
        assert abs(row["disk_vz_free_gb"] - psutil.disk_usage(str(tmp_path)).free / 2**30) < 1
        assert sink.sent[0][0] == "node/7/resources" and sink.sent[0][2:] == (1, True)
        assert sink.sent[0][1]["server_id"] == 7 and sink.sent[0][1]["created_at"].endswith("Z")

        task = asyncio.create_task(reporter.run())  # the loop: one row per node, refreshed in place
        await asyncio.sleep(1.2)
        reporter.stop()
        await asyncio.wait_for(task, 5)
        async with db.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM servers_status")
            assert (await cur.fetchone())[0] == 1
        assert (await _row(db, 7))["created_at"] > first.created_at
        assert len(sink.sent) >= 3
    finally:
        await database.close()
