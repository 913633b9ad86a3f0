"""Space accounting from directory contents (apparent sizes, one command's worth of caching).

A file counts once per distinct (path, kind, size, mtime) across a filesystem's head and snapshots, like blocks
shared between a head and its snapshots; a clone shares what is identical to its origin snapshot.
"""

from __future__ import annotations

from vpsadmind.testing.fakezfs import fsdata
from vpsadmind.testing.fakezfs.state import PoolState, Store

__all__ = ["Usage", "SLOP", "OVERHEAD", "pool_usable"]

SLOP = 32 << 20                   # zfs-fuse: available = pool size - 32 MiB - used
OVERHEAD = 112 << 10              # what an empty zfs-fuse filesystem references (metadata)
_Ids = dict[tuple[str, str, int, int], int]


def pool_usable(size: int) -> int:
    return max(size - SLOP, 0)


class Usage:
    def __init__(self, store: Store, ps: PoolState) -> None:
        self.store = store
        self.ps = ps
        self._live: dict[str, fsdata.Manifest] = {}
        self._snap: dict[int, _Ids] = {}
        self._used: dict[str, int] = {}

    def live_manifest(self, name: str) -> fsdata.Manifest:
        if name not in self._live:
            path = self.ps.live_dir(name)
            skip = self.store.nested_mounts(self.ps, path) if self.ps.datasets[name].mounted else frozenset()
            try:
                self._live[name] = fsdata.scan(path, skip)
            except FileNotFoundError:
                self._live[name] = {}
        return self._live[name]

    def snap_ids(self, snap_id: int) -> _Ids:
        if snap_id not in self._snap:
            try:
                self._snap[snap_id] = fsdata.identities(fsdata.read_manifest(self.ps.manifest_path(snap_id)))
            except FileNotFoundError:
                self._snap[snap_id] = {}
        return self._snap[snap_id]

    def _origin_ids(self, name: str) -> _Ids:
        origin = self.ps.datasets[name].origin
        return self.snap_ids(origin) if origin is not None else {}

    def referenced(self, name: str) -> int:
        return fsdata.tree_bytes(self.live_manifest(name)) + OVERHEAD

    def usedbydataset(self, name: str) -> int:
        """What destroying the head would free: all it references except what a clone shares with its origin."""
        shared = self._origin_ids(name)
        live = fsdata.identities(self.live_manifest(name))
        own = 0 if self.ps.datasets[name].origin is not None else OVERHEAD
        return own + sum(size for ident, size in live.items() if ident not in shared)

    def usedbysnapshots(self, name: str) -> int:
        rec = self.ps.datasets[name]
        excluded = set(self._origin_ids(name)) | set(fsdata.identities(self.live_manifest(name)))
        union: _Ids = {}
        for _, srec in rec.snaps.items():
            union.update(self.snap_ids(srec.id))
        return sum(size for ident, size in union.items() if ident not in excluded)

    def usedbychildren(self, name: str) -> int:
        return sum(self.used(child) for child in self.ps.children(name))

    def usedbyrefreservation(self, name: str) -> int:
        refreserv = int(self.ps.datasets[name].props.get("refreservation", "0"))
        return max(refreserv - self.usedbydataset(name), 0)

    def used(self, name: str) -> int:
        if name not in self._used:
            total = (self.usedbydataset(name) + self.usedbysnapshots(name) + self.usedbychildren(name)
                     + self.usedbyrefreservation(name))
            reservation = int(self.ps.datasets[name].props.get("reservation", "0"))
            self._used[name] = max(total, reservation)
        return self._used[name]

    def available(self, name: str) -> int:
        avail = pool_usable(self.ps.size) - self.used(self.ps.name)
        refquota = int(self.ps.datasets[name].props.get("refquota", "0"))
        if refquota:
            avail = min(avail, refquota - self.referenced(name))
        current = name
        while current:
            quota = int(self.ps.datasets[current].props.get("quota", "0"))
            if quota:
                avail = min(avail, quota - self.used(current))
            current = current.rpartition("/")[0]
        return max(avail, 0)

    def snapshot_used(self, fsname: str, snapname: str) -> int:
        """Bytes only this snapshot holds: not in the previous snapshot (or origin) and not in the next one/head."""
        rec = self.ps.datasets[fsname]
        ordered = rec.ordered_snaps()
        index = next(i for i, (n, _) in enumerate(ordered) if n == snapname)
        prev = self.snap_ids(ordered[index - 1][1].id) if index > 0 else self._origin_ids(fsname)
        if index + 1 < len(ordered):
            nxt = self.snap_ids(ordered[index + 1][1].id)
        else:
            nxt = fsdata.identities(self.live_manifest(fsname))
        own = self.snap_ids(ordered[index][1].id)
        return sum(size for ident, size in own.items() if ident not in prev and ident not in nxt)
