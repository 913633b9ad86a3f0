"""What the upgrade steps share: the daemon's config, the ZFS driver, the database, this node's pools, the
command-line options, and a few helpers (local ZFS markers, NFS-tolerant ZFS operations, the state file)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from vpsadmind.config import Config
from vpsadmind.db import Database
from vpsadmind.zfs.driver import Prop, Zfs
from vpsadmind.zfs.errors import DatasetNotFound, ZfsError

__all__ = [
    "ROLE_BACKUP",
    "ROLE_HYPERVISOR",
    "ROLE_NAMES",
    "ROLE_PRIMARY",
    "WORKING_ROOT",
    "Context",
    "Options",
    "PoolRow",
    "StateFile",
    "local_value",
    "share_tolerant",
]

ROLE_HYPERVISOR: Final = 0
ROLE_PRIMARY: Final = 1
ROLE_BACKUP: Final = 2
ROLE_NAMES: Final = {ROLE_HYPERVISOR: "hypervisor", ROLE_PRIMARY: "primary", ROLE_BACKUP: "backup"}

#: The pool's working area (contract 7.1): never user data, skipped by the data-moving steps.
WORKING_ROOT: Final = "vpsadmin"

# zfs-fuse (and OpenZFS without a running NFS server) report a failed (re)export after a create, rename or
# ``set sharenfs`` with a non-zero exit although the operation itself was done.
_SHARE_FAILURE: Final = re.compile(r"cannot share|not shared|unable to reshare|cannot unshare")


@dataclass(frozen=True, slots=True)
class PoolRow:
    """A ``pools`` row of this node."""

    id: int
    label: str
    filesystem: str
    role: int

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, f"role {self.role}")


@dataclass(frozen=True, slots=True)
class Options:
    rename_private: str | None = None
    register_db: bool = False
    state_file: str | None = None
    sharenfs_options: str | None = None   # share options for pools not shared at all ("" for none)


class StateFile:
    """A small JSON file for what the node itself cannot show: that the firewall was reinitialized, and which
    dataset renames are under way (a user property would do, but on zfs-fuse setting one on a dataset in an
    NFS-shared tree whose export fails leaves the dataset busy for renames).

    Written atomically (temporary file, fsync, rename), so an interrupted write leaves the old content.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, **values: Any) -> None:
        data = self.load()
        data.update(values)
        self.save(data)

    def save(self, data: dict[str, Any]) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upgrade-state.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@dataclass
class Context:
    cfg: Config
    zfs: Zfs
    options: Options
    state: StateFile
    db: Database | None = None
    server: dict[str, Any] | None = None
    pools: list[PoolRow] = field(default_factory=list)
    steps: frozenset[str] = frozenset()   # the steps of this run (a step may count on an earlier one)

    @property
    def server_id(self) -> int:
        return self.cfg.server_id

    def require_db(self) -> Database:
        if self.db is None:
            raise RuntimeError("the database is not connected (the prerequisites step should have stopped)")
        return self.db

    def pools_with_role(self, role: int) -> list[PoolRow]:
        return [p for p in self.pools if p.role == role]


def local_value(props: dict[str, Prop], name: str) -> str | None:
    """The value of property ``name`` when it is set locally (an inherited marker belongs to an ancestor)."""
    prop = props.get(name)
    if prop is None or prop.source != "local" or prop.value in ("", "-"):
        return None
    return prop.value


async def share_tolerant(action: Callable[[], Awaitable[None]], done: Callable[[], Awaitable[bool]]) -> str | None:
    """Run a ZFS mutation; when it fails only because the NFS (re)export failed and ``done`` confirms the change
    itself was made, return a note instead of raising. The export is the sharenfs step's business."""
    try:
        await action()
    except ZfsError as exc:
        text = f"{exc.stderr or ''} {exc}"
        if not _SHARE_FAILURE.search(text):
            raise
        try:
            made = await done()
        except DatasetNotFound:
            made = False
        if not made:
            raise
        return "done, but the NFS export failed"
    return None
