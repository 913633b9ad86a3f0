"""The node status reporter (contract 10.3): ``servers_status`` every ``status_interval``, and on the bus.

v2.0 upserts ``created_at`` (UTC now), ``cpu_load`` (the 5-minute load average), ``daemon = 0`` and
``vpsadmin_version`` every ``status_interval``, and ``kernel`` (``uname -r``) at init. It never filled
``ram_free_mb`` or ``disk_vz_free_gb``; this reporter does (available memory, and free space of the
``vz`` directory when it exists), from psutil, without starting a process. With an event sink (the
:class:`~vpsadmind.bus.Bus`), the same figures are published retained on ``node/<server_id>/resources``, so
a dashboard that subscribes later still gets the last report; the node's online/offline status and its Last
Will are the bus's own (``node/<server_id>/status``).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

import psutil

from vpsadmind import __version__
from vpsadmind.db import Database
from vpsadmind.reporters.periodic import Periodic

__all__ = ["NodeStatus", "NodeStatusReporter", "read_status", "store_status"]

_MIB: Final = 1024 * 1024
_GIB: Final = 1024 * 1024 * 1024


class EventSink(Protocol):
    def publish(self, subtopic: str, payload: dict[str, Any], *, qos: int = 0, retain: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class NodeStatus:
    server_id: int
    cpu_load: float
    ram_free_mb: int
    disk_vz_free_gb: float | None
    kernel: str
    vpsadmin_version: str
    created_at: dt.datetime


def read_status(server_id: int, *, vz_root: str = "/vz") -> NodeStatus:
    """The figures of this node now (psutil and os only: a few microseconds)."""
    disk = None
    if os.path.isdir(vz_root):
        disk = round(psutil.disk_usage(vz_root).free / _GIB, 2)
    return NodeStatus(
        server_id=server_id,
        cpu_load=round(os.getloadavg()[1], 2),
        ram_free_mb=int(psutil.virtual_memory().available // _MIB),
        disk_vz_free_gb=disk,
        kernel=platform.release()[:50],
        vpsadmin_version=__version__,
        created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0),
    )


async def store_status(db: Database, status: NodeStatus) -> None:
    """Upsert the node's ``servers_status`` row (one statement)."""
    await db.execute(
        "INSERT INTO servers_status (server_id, ram_free_mb, disk_vz_free_gb, cpu_load, daemon, vpsadmin_version,"
        " kernel, created_at) VALUES (%s, %s, %s, %s, 0, %s, %s, %s) ON DUPLICATE KEY UPDATE"
        " ram_free_mb = VALUES(ram_free_mb), disk_vz_free_gb = VALUES(disk_vz_free_gb),"
        " cpu_load = VALUES(cpu_load), daemon = 0, vpsadmin_version = VALUES(vpsadmin_version),"
        " kernel = VALUES(kernel), created_at = VALUES(created_at)",
        (status.server_id, status.ram_free_mb, status.disk_vz_free_gb, status.cpu_load, status.vpsadmin_version,
         status.kernel, status.created_at))


class NodeStatusReporter(Periodic):
    """Runs :func:`read_status` + :func:`store_status` every interval (``vpsadmin.status_interval``)."""

    name = "node status report"

    def __init__(self, db: Database, server_id: int, *, events: EventSink | None = None,
                 interval: float = 30.0, vz_root: str = "/vz") -> None:
        self.db = db
        self.server_id = server_id
        self.events = events
        self.interval = interval
        self.vz_root = vz_root
        self.last: NodeStatus | None = None

    async def run_once(self) -> NodeStatus:
        status = read_status(self.server_id, vz_root=self.vz_root)
        await store_status(self.db, status)
        self.last = status
        if self.events is not None:
            payload = asdict(status)
            payload["created_at"] = status.created_at.isoformat() + "Z"
            self.events.publish(f"node/{self.server_id}/resources", payload, qos=1, retain=True)
        return status
