"""The storage usage reporter (contract 10.7): ``used``, ``referenced`` and ``avail`` of every registered
dataset, in MiB, written into ``dataset_properties``.

For each pool of this node (``SELECT id, filesystem FROM pools WHERE node_id = <server_id>``):

1. one ``zfs get -Hrp -o name,property,value used,referenced,available <pool_fs>`` (:meth:`Zfs.usage`;
   snapshots are left out, as in v2.0);
2. names relative to the pool filesystem are matched against ``datasets.full_name`` through
   ``dataset_in_pools``; the pool's root and its working datasets ``vpsadmin``/``vpsadmin/*`` are skipped,
   anything else that is not in the database is logged as "not registered";
3. in one DB transaction per pool, ``dataset_properties.value`` of ``used``, ``referenced`` and ``avail``
   becomes the size in MiB (bytes // 1048576, as v2.0's ``/ 1024 / 1024``) as Ruby's ``YAML.dump`` wrote it:
   ``"--- 123\\n...\\n"`` (Psych ends a document holding a bare scalar with ``...``; Rails' ``serialize``
   reads it, and so does any YAML loader).

With an event sink (anything with ``publish(subtopic, payload)``, such as :class:`vpsadmind.bus.Bus`), each
pool's result is also published on ``node/<server_id>/storage``.

A pool whose ``zfs get`` fails (pool gone, daemon down) is reported with ``error`` and the other pools are
still updated; database errors propagate. :class:`StorageReporter` runs the report every interval and never
raises (it logs), except for cancellation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from vpsadmind.db import Database, Tx
from vpsadmind.reporters.periodic import Periodic
from vpsadmind.zfs import names
from vpsadmind.zfs.driver import Zfs
from vpsadmind.zfs.errors import ZfsError

__all__ = ["EventSink", "PoolReport", "StorageReporter", "report_storage", "yaml_int", "PROPERTIES"]

log = structlog.get_logger("vpsadmind.reporters.storage")

#: zfs property -> ``dataset_properties.name``.
PROPERTIES: Final = {"used": "used", "referenced": "referenced", "available": "avail"}
_MIB: Final = 1024 * 1024
_CHUNK: Final = 300  # (dataset_in_pool, property) rows per UPDATE statement


class EventSink(Protocol):
    def publish(self, subtopic: str, payload: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class PoolReport:
    """What one pool's report did: ``datasets`` maps ``full_name`` -> ``{used, referenced, avail}`` (MiB)."""

    pool_id: int
    filesystem: str
    datasets: dict[str, dict[str, int]] = field(default_factory=dict)
    unregistered: list[str] = field(default_factory=list)
    rows: int = 0
    error: str | None = None

    def payload(self) -> dict[str, Any]:
        return {"pool_id": self.pool_id, "filesystem": self.filesystem, "datasets": self.datasets,
                "unregistered": self.unregistered, "error": self.error, "time": int(time.time())}


def yaml_int(value: int) -> str:
    """``value`` as Ruby's ``YAML.dump`` wrote it into ``dataset_properties.value``: ``"--- 123\\n...\\n"``."""
    return f"--- {int(value)}\n...\n"


def _is_internal(rel: str) -> bool:
    return rel == "vpsadmin" or rel.startswith("vpsadmin/")


async def _registered(db: Database, pool_id: int) -> dict[str, int]:
    rows = await db.fetchall(
        "SELECT dip.id AS id, d.full_name AS full_name FROM dataset_in_pools dip "
        "INNER JOIN datasets d ON d.id = dip.dataset_id WHERE dip.pool_id = %s", (pool_id,))
    return {str(r["full_name"]): int(r["id"]) for r in rows}


def _match(report: PoolReport, usage: dict[str, dict[str, int]], registered: dict[str, int]
           ) -> list[tuple[int, str, str]]:
    """``(dataset_in_pool_id, property, YAML value)`` rows for the registered datasets in ``usage``."""
    rows: list[tuple[int, str, str]] = []
    for name in sorted(usage):
        rel = names.relative(name, report.filesystem)
        if not rel or _is_internal(rel):
            continue
        dip_id = registered.get(rel)
        if dip_id is None:
            report.unregistered.append(name)
            log.warning("dataset not registered in the database", dataset=name, pool_id=report.pool_id)
            continue
        mib = {PROPERTIES[k]: v // _MIB for k, v in usage[name].items() if k in PROPERTIES}
        report.datasets[rel] = mib
        rows += [(dip_id, prop, yaml_int(value)) for prop, value in mib.items()]
    return rows


async def _write(tx: Tx, rows: Sequence[tuple[int, str, str]]) -> None:
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        values = " UNION ALL ".join(["SELECT %s AS dip, %s AS name, %s AS value"] * len(chunk))
        await tx.execute(
            "UPDATE dataset_properties p INNER JOIN (" + values + ") v "
            "ON p.dataset_in_pool_id = v.dip AND p.name = v.name SET p.value = v.value",
            [arg for row in chunk for arg in row])


async def _report_pool(db: Database, zfs: Zfs, report: PoolReport) -> None:
    try:
        usage = await zfs.usage(report.filesystem)
    except ZfsError as exc:
        report.error = str(exc)
        log.error("storage usage of a pool failed", pool_id=report.pool_id, filesystem=report.filesystem,
                  error=str(exc))
        return
    rows = _match(report, usage, await _registered(db, report.pool_id))
    report.rows = len(rows)
    if rows:
        await db.run(lambda tx: _write(tx, rows))


async def report_storage(db: Database, zfs: Zfs, server_id: int, *,
                         events: EventSink | None = None) -> list[PoolReport]:
    """Report the usage of every pool of node ``server_id`` (see the module docstring); one ``zfs`` command
    and one DB transaction per pool."""
    pools = await db.fetchall("SELECT id, filesystem FROM pools WHERE node_id = %s ORDER BY id", (server_id,))
    reports: list[PoolReport] = []
    for row in pools:
        report = PoolReport(int(row["id"]), str(row["filesystem"]))
        await _report_pool(db, zfs, report)
        reports.append(report)
        if events is not None:
            events.publish(f"node/{server_id}/storage", report.payload())
    return reports


class StorageReporter(Periodic):
    """Runs :func:`report_storage` every ``interval`` seconds (``resources_interval``, 300 s by default)."""

    name = "storage report"

    def __init__(self, db: Database, zfs: Zfs, server_id: int, *, events: EventSink | None = None,
                 interval: float = 300.0) -> None:
        self.db = db
        self.zfs = zfs
        self.server_id = server_id
        self.events = events
        self.interval = interval
        self.last: list[PoolReport] = []
        self.runs = 0
        self.failures = 0

    async def run_once(self) -> list[PoolReport]:
        self.last = await report_storage(self.db, self.zfs, self.server_id, events=self.events)
        self.runs += 1
        return self.last
