"""On-disk state of the fake pools, locking, property inheritance and mounting.

Layout under ``$FAKE_ZFS_ROOT``::

    pools/<pool>/state.json     metadata (datasets, snapshots, properties, holds, txg counter), replaced atomically
    pools/<pool>/lock           fcntl.flock: exclusive for changes, shared for reads
    pools/<pool>/data/<id>/     contents of an *unmounted* filesystem (a mounted one lives at its mountpoint)
    pools/<pool>/snap/<id>/     frozen copy of a snapshot; snap/<id>.json is its manifest
    pools/<pool>/tmp/           staging area of ``zfs recv``
    pools/<pool>/resume/<id>    bytes kept by an interrupted ``zfs recv -s`` into filesystem <id> (OpenZFS dialect)
    faults.json                 injected faults (see faults.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vpsadmind.testing.fakezfs import fsdata
from vpsadmind.testing.fakezfs.errors import CmdError
from vpsadmind.testing.fakezfs.names import parent_of
from vpsadmind.testing.fakezfs.props import PROPS

__all__ = ["Store", "PoolState", "FsRec", "SnapRec", "ROOT_ENV", "new_guid"]

ROOT_ENV = "FAKE_ZFS_ROOT"


def new_guid() -> int:
    return int.from_bytes(os.urandom(8), "big") | 1


@dataclass
class SnapRec:
    id: int
    guid: int
    createtxg: int
    creation: int
    props: dict[str, str] = field(default_factory=dict)      # local user properties
    received: list[str] = field(default_factory=list)         # properties whose value came with recv
    holds: list[str] = field(default_factory=list)
    defer_destroy: bool = False
    referenced: int = 0


@dataclass
class FsRec:
    id: int
    guid: int
    createtxg: int
    creation: int
    props: dict[str, str] = field(default_factory=dict)      # local values (sizes as byte counts)
    received: list[str] = field(default_factory=list)
    origin: int | None = None                                 # snapshot id of a clone's origin
    mounted: bool = False
    clean_fp: str | None = None                               # fingerprint of the contents at the last snapshot
    snaps: dict[str, SnapRec] = field(default_factory=dict)
    resume: dict[str, Any] | None = None                     # pending ``recv -s`` state (see resume.py)

    def ordered_snaps(self) -> list[tuple[str, SnapRec]]:
        return sorted(self.snaps.items(), key=lambda kv: (kv[1].createtxg, kv[1].id))

    @staticmethod
    def from_json(d: dict[str, Any]) -> FsRec:
        snaps = {k: SnapRec(**v) for k, v in d.pop("snaps").items()}
        return FsRec(**d, snaps=snaps)


@dataclass
class PoolState:
    name: str
    guid: int
    size: int
    vdevs: list[str]
    txg: int = 1
    next_id: int = 1
    created: int = 0
    datasets: dict[str, FsRec] = field(default_factory=dict)
    dir: Path = Path()

    # -- lookups ---------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["dir"]
        return d

    @staticmethod
    def from_json(d: dict[str, Any], directory: Path) -> PoolState:
        datasets = {k: FsRec.from_json(v) for k, v in d.pop("datasets").items()}
        return PoolState(**d, datasets=datasets, dir=directory)

    def fs(self, name: str) -> FsRec | None:
        return self.datasets.get(name)

    def snap(self, full: str) -> tuple[FsRec, SnapRec] | None:
        fsname, _, snapname = full.partition("@")
        rec = self.datasets.get(fsname)
        if rec is None or snapname not in rec.snaps:
            return None
        return rec, rec.snaps[snapname]

    def children(self, name: str) -> list[str]:
        return sorted(n for n in self.datasets if parent_of(n) == name and n != name)

    def descendants(self, name: str) -> list[str]:
        return sorted(n for n in self.datasets if n.startswith(name + "/"))

    def snap_by_id(self, snap_id: int) -> tuple[str, str, SnapRec] | None:
        for fsname, rec in self.datasets.items():
            for snapname, srec in rec.snaps.items():
                if srec.id == snap_id:
                    return fsname, snapname, srec
        return None

    def origin_name(self, rec: FsRec) -> str | None:
        found = self.snap_by_id(rec.origin) if rec.origin is not None else None
        return f"{found[0]}@{found[1]}" if found else None

    def clones_of(self, snap_id: int) -> list[str]:
        return sorted(n for n, r in self.datasets.items() if r.origin == snap_id)

    def next_txg(self) -> int:
        self.txg += 1
        return self.txg

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def new_fs(self, name: str, props: dict[str, str], txg: int) -> FsRec:
        rec = FsRec(id=self.new_id(), guid=new_guid(), createtxg=txg, creation=int(time.time()), props=props)
        self.datasets[name] = rec
        self.data_dir(rec.id).mkdir(parents=True, exist_ok=True)
        return rec

    # -- paths -----------------------------------------------------------------------------------------------
    def data_dir(self, fs_id: int) -> Path:
        return self.dir / "data" / str(fs_id)

    def snap_dir(self, snap_id: int) -> Path:
        return self.dir / "snap" / str(snap_id)

    def manifest_path(self, snap_id: int) -> Path:
        return self.dir / "snap" / f"{snap_id}.json"

    def partial_path(self, fs_id: int) -> Path:
        return self.dir / "resume" / str(fs_id)

    def tmp_dir(self) -> Path:
        path = self.dir / "tmp"
        path.mkdir(exist_ok=True)
        return path

    def live_dir(self, name: str) -> Path:
        rec = self.datasets[name]
        return Path(self.mountpoint(name)[0]) if rec.mounted else self.data_dir(rec.id)

    # -- properties ------------------------------------------------------------------------------------------
    def local(self, name: str, prop: str) -> str | None:
        rec = self.datasets.get(name)
        return None if rec is None else rec.props.get(prop)

    def inherited(self, name: str, prop: str, *, start_self: bool = True) -> tuple[str, str] | None:
        """(value, source) from ``name`` or its nearest ancestor with a local value, None if nobody sets it."""
        current = name if start_self else parent_of(name)
        while current:
            rec = self.datasets.get(current)
            if rec is not None and prop in rec.props:
                if current == name:
                    return rec.props[prop], "received" if prop in rec.received else "local"
                return rec.props[prop], f"inherited from {current}"
            current = parent_of(current)
        return None

    def mountpoint(self, name: str) -> tuple[str, str]:
        found_at = name
        while found_at and "mountpoint" not in self.datasets[found_at].props:
            found_at = parent_of(found_at)
        if not found_at:
            base, source, found_at = "/" + self.name, "default", self.name
        else:
            base = self.datasets[found_at].props["mountpoint"]
            source = "local" if found_at == name else f"inherited from {found_at}"
        if found_at == name or base in ("none", "legacy"):
            return base, source
        rel = name[len(found_at) + 1:]
        return (base.rstrip("/") + "/" + rel), source

    def value(self, name: str, prop: str) -> str:
        """Effective value of a settable native property on a filesystem."""
        if prop == "mountpoint":
            return self.mountpoint(name)[0]
        pdef = PROPS[prop]
        if pdef.inherit:
            found = self.inherited(name, prop)
            return found[0] if found else pdef.default
        return self.datasets[name].props.get(prop, pdef.default)

    def can_automount(self, name: str) -> bool:
        return self.value(name, "canmount") == "on" and self.mountpoint(name)[0].startswith("/")


class Store:
    """The root directory holding every fake pool."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pools_dir = root / "pools"

    @classmethod
    def from_env(cls) -> Store:
        root = os.environ.get(ROOT_ENV)
        if not root:
            raise CmdError(f"fake-zfs: {ROOT_ENV} is not set (the directory that holds the fake pools)")
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def pool_names(self) -> list[str]:
        if not self.pools_dir.is_dir():
            return []
        return sorted(p.name for p in self.pools_dir.iterdir() if (p / "state.json").is_file())

    def exists(self, pool: str) -> bool:
        return (self.pools_dir / pool / "state.json").is_file()

    @contextmanager
    def global_lock(self) -> Iterator[None]:
        with _flock(self.root / "lock", exclusive=True):
            yield

    @contextmanager
    def open_pool(self, pool: str, *, write: bool) -> Iterator[PoolState]:
        """Lock and load a pool; with ``write`` the state is saved atomically when the block ends cleanly."""
        directory = self.pools_dir / pool
        if not (directory / "state.json").is_file():
            raise CmdError(f"cannot open '{pool}': no such pool")
        with _flock(directory / "lock", exclusive=write):
            state_file = directory / "state.json"
            if not state_file.is_file():
                raise CmdError(f"cannot open '{pool}': no such pool")
            ps = PoolState.from_json(json.loads(state_file.read_text()), directory)
            yield ps
            if write:
                save_state(ps)

    def read_pool(self, pool: str) -> PoolState | None:
        """Unlocked snapshot of a pool's metadata (the file is replaced atomically, so it is consistent)."""
        try:
            return PoolState.from_json(json.loads((self.pools_dir / pool / "state.json").read_text()),
                                       self.pools_dir / pool)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def mount_table(self, current: PoolState | None = None) -> dict[str, str]:
        """Real path of every mounted fake filesystem -> its name (``current`` overrides the copy on disk)."""
        table: dict[str, str] = {}
        for pool in self.pool_names():
            ps = current if current is not None and current.name == pool else self.read_pool(pool)
            if ps is None:
                continue
            for name, rec in ps.datasets.items():
                if rec.mounted:
                    table[os.path.realpath(ps.mountpoint(name)[0])] = name
        return table

    def nested_mounts(self, ps: PoolState, path: Path) -> frozenset[str]:
        """Mountpoints of other mounted filesystems strictly inside ``path``."""
        real = os.path.realpath(path)
        prefix = real.rstrip("/") + "/"
        return frozenset(p for p in self.mount_table(ps) if p.startswith(prefix))


def save_state(ps: PoolState) -> None:
    state_file = ps.dir / "state.json"
    tmp = ps.dir / f"state.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(ps.to_json(), indent=1))
    os.replace(tmp, state_file)


@contextmanager
def _flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def create_pool_dirs(directory: Path) -> None:
    for sub in ("data", "snap", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)


def remove_pool_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


# -- mounting ------------------------------------------------------------------------------------------------------
def mount(store: Store, ps: PoolState, name: str) -> None:
    """Move the contents of an unmounted filesystem to its mountpoint (zfs-fuse's checks and messages)."""
    rec = ps.datasets[name]
    mp, _ = ps.mountpoint(name)
    if rec.mounted:
        raise CmdError(f"cannot mount '{name}': filesystem already mounted")
    if mp == "none":
        raise CmdError(f"cannot mount '{name}': no mountpoint set")
    if mp == "legacy":
        raise CmdError(f"cannot mount '{name}': legacy mountpoint\nuse mount(1M) to mount this filesystem")
    target = Path(mp)
    if os.path.realpath(target) in store.mount_table(ps) or (target.exists() and not fsdata.is_empty_dir(target)):
        raise CmdError(f"cannot mount '{mp}': directory is not empty")
    fsdata.move_tree(ps.data_dir(rec.id), target)
    rec.mounted = True


def unmount(store: Store, ps: PoolState, name: str) -> None:
    """Unmount ``name`` and its mounted descendants: contents go to data/<id>, an empty mountpoint stays."""
    for child in sorted(ps.descendants(name), reverse=True):
        if ps.datasets[child].mounted:
            unmount(store, ps, child)
    rec = ps.datasets[name]
    if not rec.mounted:
        return
    mp = Path(ps.mountpoint(name)[0])
    fsdata.move_tree(mp, ps.data_dir(rec.id))
    mp.mkdir(parents=True, exist_ok=True)
    rec.mounted = False


def remove_mountpoint(path: str) -> None:
    """libzfs's remove_mountpoint(): rmdir, which only succeeds on an empty directory."""
    if path.startswith("/"):
        with contextlib.suppress(OSError):
            os.rmdir(path)


@contextmanager
def remounting(store: Store, ps: PoolState, name: str) -> Iterator[None]:
    """Unmount ``name`` and its descendants around a change of mountpoint/canmount, then mount what can be."""
    subtree = [name, *ps.descendants(name)]
    was_mounted = [n for n in subtree if ps.datasets[n].mounted]
    old_paths = {n: ps.mountpoint(n)[0] for n in was_mounted}
    for n in sorted(was_mounted, reverse=True):
        unmount(store, ps, n)
    yield
    for n in sorted(was_mounted, reverse=True):
        if ps.mountpoint(n)[0] != old_paths[n]:
            remove_mountpoint(old_paths[n])
    for n in was_mounted:
        if n in ps.datasets and ps.can_automount(n):
            mount(store, ps, n)
