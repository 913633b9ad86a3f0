"""Reading the ZFS state of backup datasets: filesystems with their snapshots and mount state, from one
``zfs get -r`` per subtree, and the v1.22 / v2.0 snapshot and branch names."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Final

from vpsadmind.zfs.driver import Prop, Zfs
from vpsadmind.zfs.errors import DatasetNotFound

__all__ = [
    "BRANCH_RE",
    "TIMESTAMP_FORMAT",
    "TIMESTAMP_RE",
    "Fs",
    "Snap",
    "inventory",
    "local_timestamp",
    "plan_renames",
    "v2_name",
]

TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"
_TS: Final = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"
TIMESTAMP_RE: Final = re.compile(_TS)
_BACKUP_RE: Final = re.compile(rf"backup-({_TS})")
_RESTORE_RE: Final = re.compile(rf"restore-({_TS})\.(\d+)")
BRANCH_RE: Final = re.compile(rf"branch-({_TS})\.(\d+)")

_PROPS: Final = ["createtxg", "creation", "guid", "mounted", "canmount", "mountpoint"]


@dataclass(frozen=True, slots=True)
class Snap:
    name: str          # the part after '@'
    createtxg: int
    creation: int      # seconds since the epoch
    guid: str


@dataclass
class Fs:
    name: str
    mounted: bool = False
    canmount: str = "on"
    mountpoint: str = ""
    snaps: list[Snap] = field(default_factory=list)   # oldest first (createtxg)

    @property
    def should_be_mounted(self) -> bool:
        return self.canmount == "on" and self.mountpoint.startswith("/")


def _value(props: dict[str, Prop], name: str) -> str:
    prop = props.get(name)
    return "-" if prop is None else prop.value


def _int(value: str) -> int:
    return int(value) if value.isdigit() else 0


async def inventory(zfs: Zfs, top: str, *, recursive: bool = True) -> dict[str, Fs]:
    """``{name: Fs}`` for ``top`` and its snapshots, and, when ``recursive``, every filesystem below it (else
    its direct children); empty when ``top`` does not exist. One ``zfs get``."""
    try:
        props = await zfs.get(top, _PROPS, recursive=recursive, depth=None if recursive else 1)
    except DatasetNotFound:
        return {}
    found: dict[str, Fs] = {}
    snaps: list[tuple[str, Snap]] = []
    for name, p in props.items():
        if "@" in name:
            dataset, short = name.split("@", 1)
            snaps.append((dataset, Snap(short, _int(_value(p, "createtxg")), _int(_value(p, "creation")),
                                        _value(p, "guid"))))
            continue
        found[name] = Fs(name, _value(p, "mounted") == "yes", _value(p, "canmount"), _value(p, "mountpoint"))
    for dataset, snap in sorted(snaps, key=lambda item: (item[1].createtxg, item[1].name)):
        if dataset in found:
            found[dataset].snaps.append(snap)
    return found


def local_timestamp(epoch: int) -> str:
    """v2.0 names snapshots by their creation time in the node's local time (``YYYY-MM-DDTHH:MM:SS``)."""
    return time.strftime(TIMESTAMP_FORMAT, time.localtime(epoch))


def v2_name(snap: Snap) -> str | None:
    """The v2.0 name of a v1.22 backup snapshot, None when the name is none of v1.22's.

    * ``<time>``: already renamed, kept;
    * ``backup-<time>``: ``<time>`` (only the snapshot part is touched);
    * ``restore-<time>.<n>`` (made on the backup dataset by a v1.22 restore, a copy of backup ``<time>`` taken
      at restore time): named like every v2.0 snapshot, by its own creation time, so that it keeps its place
      in the history and cannot be mistaken for the backup ``<time>`` it restored.
    """
    if TIMESTAMP_RE.fullmatch(snap.name):
        return snap.name
    match = _BACKUP_RE.fullmatch(snap.name)
    if match:
        return match.group(1)
    if _RESTORE_RE.fullmatch(snap.name):
        return local_timestamp(snap.creation)
    return None


def plan_renames(snaps: list[Snap]) -> tuple[dict[str, str], list[str]]:
    """``({old: new}, problems)`` for a dataset's snapshots; a name that is not v1.22's or two snapshots that
    would get the same name are problems, and then nothing of that dataset may be renamed."""
    renames: dict[str, str] = {}
    problems: list[str] = []
    owner: dict[str, str] = {}
    for snap in snaps:
        new = v2_name(snap)
        if new is None:
            problems.append(f"@{snap.name} is not a v1.22 backup name")
            continue
        if new in owner:
            problems.append(f"@{snap.name} and @{owner[new]} would both be @{new}")
            continue
        owner[new] = snap.name
        if new != snap.name:
            renames[snap.name] = new
    return renames, problems
