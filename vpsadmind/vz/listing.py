"""Parsing ``vzlist`` output: ``-j`` JSON and the fixed-width text of ``-H -o ...``.

Field names are vzlist 4.9's (``vzlist -L``). In text mode vzlist prints ``-`` for an unset value and trims every
column but the last (the ``ip`` column then shows only the first address), so :func:`parse_table` returns strings
with ``-`` turned into None and joins the words of the last column. In JSON mode suffixed fields (``numproc.l``)
are not allowed; UBC fields are objects ``{held, maxheld, barrier, limit, failcnt}`` in pages or units.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from vpsadmind.vz.errors import InvalidValue, VzError

__all__ = [
    "FIELDS", "UBC_FIELDS", "DEFAULT_FIELDS", "PAGE_SIZE", "StatusRow", "check_fields", "parse_json",
    "parse_table", "parse_status_row", "pages_to_mib",
]

UBC_FIELDS: Final = (
    "kmemsize", "lockedpages", "privvmpages", "shmpages", "numproc", "physpages", "vmguarpages", "oomguarpages",
    "numtcpsock", "numflock", "numpty", "numsiginfo", "tcpsndbuf", "tcprcvbuf", "othersockbuf", "dgramrcvbuf",
    "numothersock", "dcachesize", "numfile", "numiptent", "swappages",
)

#: Unsuffixed vzlist fields (the keys ``vzlist -j`` prints without ``-o``).
FIELDS: Final = (
    "ctid", "veid", "vpsid", "private", "root", "mount_opts", "origin_sample", "hostname", "name", "smart_name",
    "description", "ostemplate", "ip", "nameserver", "searchdomain", "status", *UBC_FIELDS, "diskspace",
    "diskinodes", "laverage", "uptime", "cpulimit", "cpuunits", "cpus", "ioprio", "onboot", "bootorder", "layout",
    "features", "vswap", "disabled",
)

_SUFFIXED: Final = frozenset(
    [f"{f}.{s}" for f in UBC_FIELDS for s in "mblf"] + [f"{f}.{s}" for f in ("diskspace", "diskinodes") for s in "sh"])

#: What ``vzlist`` prints without ``-o`` (and what v2.0's status updater parsed).
DEFAULT_FIELDS: Final = ("ctid", "numproc", "status", "ip", "hostname")

#: x86 page size: UBC page counts times this are bytes.
PAGE_SIZE: Final = 4096


def check_fields(fields: Sequence[str], *, json_mode: bool) -> list[str]:
    """Validate ``-o`` field names (suffixed ones only in text mode)."""
    out: list[str] = []
    for field in fields:
        if field in FIELDS or (not json_mode and field in _SUFFIXED):
            out.append(field)
            continue
        rule = "suffixed fields are not allowed with -j" if field in _SUFFIXED else "not a vzlist field"
        raise InvalidValue("vzlist field", field, rule)
    if not out:
        raise InvalidValue("vzlist field", fields, "at least one field is needed")
    return out


def parse_json(stdout: str) -> list[dict[str, Any]]:
    """The list of container objects of ``vzlist -j``."""
    try:
        data = json.loads(stdout or "[]")
    except json.JSONDecodeError as exc:
        raise VzError(f"vzlist -j printed invalid JSON: {exc}", stdout=stdout) from exc
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise VzError("vzlist -j did not print a list of objects", stdout=stdout)
    return data


def parse_table(stdout: str, fields: Sequence[str]) -> list[dict[str, str | None]]:
    """Rows of ``vzlist -H -o <fields>``: one dict per line, ``-`` as None; the last column keeps all its words."""
    rows: list[dict[str, str | None]] = []
    count = len(fields)
    for line in stdout.splitlines():
        words = line.split()
        if not words:
            continue
        if len(words) < count:
            raise VzError(f"vzlist printed {len(words)} columns where {count} were asked for: {line!r}",
                          stdout=stdout)
        values = [*words[:count - 1], " ".join(words[count - 1:])]
        rows.append({field: (None if value == "-" else value) for field, value in zip(fields, values, strict=True)})
    return rows


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One line of ``vzlist --no-header <veid>`` (v2.0's VPS status source): nproc is None when stopped."""

    veid: int
    nproc: int | None
    status: str
    ip: str | None
    hostname: str | None

    @property
    def running(self) -> bool:
        return self.status == "running"


def parse_status_row(stdout: str) -> StatusRow | None:
    """The first row of default-column vzlist output, or None if there is none."""
    rows = parse_table(stdout, DEFAULT_FIELDS)
    if not rows:
        return None
    row = rows[0]
    ctid, nproc = row["ctid"], row["numproc"]
    if ctid is None or not ctid.isdigit() or (nproc is not None and not nproc.isdigit()):
        raise VzError(f"unexpected vzlist row: {stdout.strip()!r}", stdout=stdout)
    return StatusRow(int(ctid), int(nproc) if nproc is not None else None, row["status"] or "",
                     row["ip"], row["hostname"])


def pages_to_mib(pages: int) -> int:
    """UBC pages -> MiB, as v2.0's integrity check computed memory (``limit * 4 / 1024``)."""
    return pages * PAGE_SIZE // (1024 * 1024)
