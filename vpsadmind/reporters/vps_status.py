"""The VPS status reporter (contract 10.4): ``vps_status`` of every VPS of this node every ``resources_interval``,
and on the bus.

What v2.0 (``Vps#update_status``) wrote for one VPS, kept here:

* ``vps_up`` and ``vps_nproc`` from ``vzlist --no-header <veid>`` (column 3 is ``running`` or not, column 2 the
  process count, ``-`` for a stopped container, which v2.0's ``to_i`` turned into 0);
* ``vps_vm_used_mb`` = (MemTotal - MemFree) / 1024 of ``/proc/meminfo`` inside the container, and
  ``vps_disk_used_mb`` = the "Used" KiB of ``df -k /`` inside it / 1024, both run with the driver's ``exec``
  (``vzctl exec2``, each argument quoted). A stopped container, or a command that fails, leaves 0, as v2.0's
  ``rescue`` did: a status report never fails because one container does not answer;
* ``vps_admin_ver`` = the daemon's version, ``created_at`` = UTC now; one row per VPS (``vps_id`` is unique), so
  the write is an upsert.

The start, stop and restart transactions (1001-1003) use :func:`collect_one` and :func:`store` for their own
VPS in ``post_save``. :class:`VpsStatusReporter` does all VPSes with ``vps.vps_server`` = this node: one
``vzlist -H -o ctid,numproc,status <ids>`` for all of them (v2.0 ran one ``vzlist`` per VPS), the two commands
inside each running one (at most :data:`CONCURRENCY` containers at a time), then one DB transaction. With an
event sink the same rows are published on ``node/<server_id>/vps``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

import structlog

from vpsadmind import __version__
from vpsadmind.db import Database
from vpsadmind.reporters.periodic import Periodic
from vpsadmind.vz import Vz, VzError

__all__ = ["VpsStatus", "VpsStatusReporter", "collect", "collect_one", "store", "parse_meminfo", "parse_df",
           "CONCURRENCY"]

log = structlog.get_logger("vpsadmind.reporters.vps_status")

#: Containers whose meminfo/df are read at the same time (each is two short ``vzctl exec2``).
CONCURRENCY: Final = 8
#: vzlist's text columns; ``-`` (unset) comes back as None.
_FIELDS: Final = ("ctid", "numproc", "status")
_MEMINFO: Final = re.compile(r"^(MemTotal|MemFree):\s+(\d+) kB$", re.MULTILINE)


class EventSink(Protocol):
    def publish(self, subtopic: str, payload: dict[str, Any]) -> None: ...


class _Executor(Protocol):
    async def execute(self, sql: str, args: Any = None) -> int: ...


@dataclass(frozen=True, slots=True)
class VpsStatus:
    vps_id: int
    up: bool
    nproc: int
    vm_used_mb: int
    disk_used_mb: int
    created_at: dt.datetime

    def payload(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat() + "Z"
        return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def parse_meminfo(text: str) -> int:
    """Used memory in MiB, v2.0's (MemTotal - MemFree) / 1024; ValueError if either line is missing."""
    values = dict(_MEMINFO.findall(text))
    if "MemTotal" not in values or "MemFree" not in values:
        raise ValueError("MemTotal or MemFree missing in /proc/meminfo")
    return max(0, int(values["MemTotal"]) - int(values["MemFree"])) // 1024


def parse_df(text: str) -> int:
    """Used disk space in MiB from ``df -k /``: the third column of the second line, / 1024 (v2.0)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("df printed no filesystem line")
    words = lines[1].split()
    if len(words) < 3 or not words[2].isdigit():
        raise ValueError(f"unexpected df line {lines[1][:80]!r}")
    return int(words[2]) // 1024


async def _usage(vz: Vz, veid: int) -> tuple[int, int]:
    """(memory MiB, disk MiB) read inside a running container; 0 for what cannot be read (v2.0's rescue)."""
    mem = disk = 0
    try:
        mem = parse_meminfo((await vz.exec(veid, ["cat", "/proc/meminfo"])).stdout)
        disk = parse_df((await vz.exec(veid, ["df", "-k", "/"])).stdout)
    except (VzError, ValueError) as exc:
        log.warning("vps usage not readable", veid=veid, error=str(exc))
    return mem, disk


def _nproc(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() else 0


async def collect_one(vz: Vz, vps_id: int) -> VpsStatus:
    """The status of one VPS as v2.0 read it (``vzlist --no-header <veid>``, then meminfo and df when it runs).
    A missing container or a failing vzlist reports it down with zeros."""
    try:
        row = await vz.status_row(vps_id)
    except VzError as exc:
        log.warning("vzlist failed", veid=vps_id, error=str(exc))
        row = None
    if row is None or not row.running:
        return VpsStatus(vps_id, False, (row.nproc or 0) if row else 0, 0, 0, _now())
    mem, disk = await _usage(vz, vps_id)
    return VpsStatus(vps_id, True, row.nproc or 0, mem, disk, _now())


async def collect(vz: Vz, vps_ids: Sequence[int]) -> list[VpsStatus]:
    """The status of each VPS in ``vps_ids``: one vzlist for all, then the usage of the running ones."""
    if not vps_ids:
        return []
    rows = {int(r["ctid"] or 0): r for r in await vz.vzlist_table(list(vps_ids), fields=_FIELDS)}
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(vps_id: int) -> VpsStatus:
        row = rows.get(vps_id)
        if row is None or row["status"] != "running":
            return VpsStatus(vps_id, False, _nproc(row["numproc"] if row else None), 0, 0, _now())
        async with limit:
            mem, disk = await _usage(vz, vps_id)
        return VpsStatus(vps_id, True, _nproc(row["numproc"]), mem, disk, _now())

    return list(await asyncio.gather(*(one(vps_id) for vps_id in vps_ids)))


_UPSERT: Final = (
    "INSERT INTO vps_status (vps_id, vps_up, vps_nproc, vps_vm_used_mb, vps_disk_used_mb, vps_admin_ver, "
    "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE vps_up = VALUES(vps_up), "
    "vps_nproc = VALUES(vps_nproc), vps_vm_used_mb = VALUES(vps_vm_used_mb), "
    "vps_disk_used_mb = VALUES(vps_disk_used_mb), vps_admin_ver = VALUES(vps_admin_ver), "
    "created_at = VALUES(created_at)")


async def store(db: _Executor, status: VpsStatus) -> None:
    """Upsert one ``vps_status`` row (on a Database, or on the Tx of a transaction's save)."""
    await db.execute(_UPSERT, (status.vps_id, int(status.up), status.nproc, status.vm_used_mb,
                               status.disk_used_mb, __version__[:63], status.created_at))


class VpsStatusReporter(Periodic):
    """:func:`collect` + :func:`store` for the VPSes of this node every interval (``resources_interval``)."""

    name = "vps status report"

    def __init__(self, db: Database, vz: Vz, server_id: int, *, events: EventSink | None = None,
                 interval: float = 300.0) -> None:
        self.db = db
        self.vz = vz
        self.server_id = server_id
        self.events = events
        self.interval = interval
        self.last: list[VpsStatus] = []

    async def run_once(self) -> list[VpsStatus]:
        rows = await self.db.fetchall("SELECT vps_id FROM vps WHERE vps_server = %s ORDER BY vps_id",
                                      (self.server_id,))
        # a node without VPSes (a storage node) never runs vzlist
        ids = [int(r["vps_id"]) for r in rows if int(r["vps_id"]) > 0]
        statuses = await collect(self.vz, ids)
        if statuses:
            async def write(tx: Any) -> None:
                for status in statuses:
                    await store(tx, status)

            await self.db.run(write)
        self.last = statuses
        if self.events is not None:
            self.events.publish(f"node/{self.server_id}/vps",
                                {"vpses": [s.payload() for s in statuses], "time": _now().isoformat() + "Z"})
        return statuses
