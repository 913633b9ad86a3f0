"""``zfs send`` / ``zfs recv`` with the fake's own stream format.

A stream is one record per snapshot (a full send has one, ``-i`` one, ``-I`` one per snapshot in the range)::

    record  := MAGIC(8) u32 header_len header_json frames TRAILER(8) sha256(payload)(32)
    frames  := (u32 len, bytes[len])* u32 0        -- the payload: a tar of the snapshot
    header  := {"fs", "snap", "guid", "creation", "fromguid", "props", "snapprops", "deleted"}

A full record's tar holds the whole tree; an incremental one holds every directory plus the files that differ
from the ``fromguid`` snapshot, and ``deleted`` lists what to remove first. The receiver stages each record in the
pool's tmp/ directory and commits it only once the trailer checks out, so a truncated stream leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vpsadmind.testing.fakezfs import faults, fsdata
from vpsadmind.testing.fakezfs import state as S
from vpsadmind.testing.fakezfs.dsops import fault, open_existing, restore
from vpsadmind.testing.fakezfs.errors import CmdError, UsageError
from vpsadmind.testing.fakezfs.names import parent_of, pool_of
from vpsadmind.testing.fakezfs.opts import getopt
from vpsadmind.testing.fakezfs.props import nicenum
from vpsadmind.testing.fakezfs.space import OVERHEAD
from vpsadmind.testing.fakezfs.state import PoolState, Store

__all__ = ["cmd_send", "cmd_recv", "MAGIC"]

MAGIC = b"FZSTRM\x00\x01"
TRAILER = b"FZEND\x00\x00\x01"
_U32 = struct.Struct(">I")
_CHUNK = 1 << 16


class StreamBroken(Exception):
    """The output ended early (an injected break or a closed pipe)."""


class Truncated(Exception):
    """The input ended inside a record, or its checksum is wrong."""


# -- sending -------------------------------------------------------------------------------------------------------
class _Out:
    """stdout with a byte budget (``break_send`` faults) and the framing of the payload."""

    def __init__(self, raw: IO[bytes], limit: int | None) -> None:
        self.raw = raw
        self.limit = limit
        self.sent = 0
        self.hasher = hashlib.sha256()

    def put(self, data: bytes) -> None:
        if self.limit is not None and self.sent + len(data) > self.limit:
            self.raw.write(data[: self.limit - self.sent])
            self.raw.flush()
            raise StreamBroken("Input/output error")
        try:
            self.raw.write(data)
        except BrokenPipeError:
            raise StreamBroken("Broken pipe") from None
        self.sent += len(data)

    def write(self, data: bytes) -> int:          # tarfile writes the payload through this
        if data:
            self.hasher.update(data)
            self.put(_U32.pack(len(data)) + bytes(data))
        return len(data)


@dataclass
class _Plan:
    fsname: str
    records: list[tuple[str, S.SnapRec, S.SnapRec | None]] = field(default_factory=list)  # (snap, rec, from)
    props: dict[str, str] = field(default_factory=dict)


def _parse_send(args: list[str]) -> tuple[str, str | None, bool, bool]:
    opts, operands = getopt(args, "RDpvi:I:", "send")
    if not operands:
        raise UsageError("missing snapshot argument", "send")
    if len(operands) > 1:
        raise UsageError("too many arguments", "send")
    froms = [(o, v) for o, v in opts if o in "iI"]
    if len(froms) > 1:
        raise UsageError("", "send")
    if any(o == "R" for o, _ in opts):
        raise CmdError("fake-zfs: 'zfs send -R' is not modelled")
    name = operands[0]
    if "@" not in name:
        raise UsageError("argument must be a snapshot", "send")
    from_arg = froms[0][1] if froms else None
    if (from_arg is not None and "@" in from_arg and not from_arg.startswith("@")
            and from_arg.partition("@")[0] != name.partition("@")[0]):
        raise UsageError("incremental source must be in same filesystem", "send")
    return name, from_arg, bool(froms and froms[0][0] == "I"), any(o == "p" for o, _ in opts)


def _plan_send(ps: PoolState, name: str, from_arg: str | None, intermediate: bool, with_props: bool) -> _Plan:
    fsname, _, snapname = name.partition("@")
    found = ps.snap(name)
    if found is None:
        raise CmdError(f"WARNING: could not send {name}: does not exist")
    rec, to = found
    plan = _Plan(fsname, props={k: v for k, v in rec.props.items() if with_props})
    if from_arg is None:
        plan.records.append((snapname, to, None))
        return plan
    from_snap = from_arg.rpartition("@")[2]
    base = rec.snaps.get(from_snap)
    if base is None:
        raise CmdError(f"warning: cannot send '{name}': incremental source ({from_arg}) does not exist")
    if base.createtxg >= to.createtxg:
        if intermediate:
            raise CmdError(f"WARNING: could not send {name}:\nincremental source ({fsname}@{from_snap}) "
                           "is not earlier than it")
        raise CmdError(f"warning: cannot send '{name}': not an earlier snapshot from the same fs")
    if not intermediate:
        plan.records.append((snapname, to, base))
        return plan
    previous = base
    for sname, srec in rec.ordered_snaps():
        if base.createtxg < srec.createtxg <= to.createtxg:
            plan.records.append((sname, srec, previous))
            previous = srec
    return plan


def cmd_send(store: Store, args: list[str]) -> int:
    name, from_arg, intermediate, with_props = _parse_send(args)
    if sys.stdout.isatty():
        raise CmdError("Error: Stream can not be written to a terminal.\nYou must redirect standard output.")
    pool = pool_of(name)
    if not store.exists(pool):
        raise CmdError(f"WARNING: could not send {name}: does not exist")
    with store.open_pool(pool, write=False) as ps:
        plan = _plan_send(ps, name, from_arg, intermediate, with_props)
    broken = faults.take(store.root, ("break_send",), "send", [name])
    out = _Out(sys.stdout.buffer, broken.after_bytes if broken else None)
    try:
        for snapname, srec, base in plan.records:
            _send_record(ps, out, plan, snapname, srec, base)
        sys.stdout.buffer.flush()
    except StreamBroken as exc:
        raise CmdError(f"warning: cannot send '{name}': {exc}") from None
    except BrokenPipeError:
        raise CmdError(f"warning: cannot send '{name}': Broken pipe") from None
    return 0


def _send_record(ps: PoolState, out: _Out, plan: _Plan, snapname: str, srec: S.SnapRec,
                 base: S.SnapRec | None) -> None:
    import tarfile

    manifest = fsdata.read_manifest(ps.manifest_path(srec.id))
    old = fsdata.read_manifest(ps.manifest_path(base.id)) if base else {}
    deleted = [p for p, e in old.items()
               if p not in manifest or e[0] != manifest[p][0] or (e[0] != "d" and e != manifest[p])]
    header = {"fs": plan.fsname, "snap": snapname, "guid": srec.guid, "creation": srec.creation,
              "fromguid": base.guid if base else 0, "props": plan.props,
              "snapprops": dict(srec.props) if plan.props or srec.props else {}, "deleted": deleted}
    blob = json.dumps(header).encode()
    out.put(MAGIC + _U32.pack(len(blob)) + blob)
    out.hasher = hashlib.sha256()
    root = ps.snap_dir(srec.id)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel, entry in manifest.items():
            if entry[0] == "d" or base is None or old.get(rel) != entry:
                tar.add(root / rel, arcname=rel, recursive=False)
    out.put(_U32.pack(0) + TRAILER + out.hasher.digest())


# -- receiving -----------------------------------------------------------------------------------------------------
class _In:
    """Reads frames of one record's payload from stdin as a file for tarfile; checks the trailer."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.left = 0
        self.done = False
        self.hasher = hashlib.sha256()
        self.total = 0

    def exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.raw.read(size - len(data))
            if not chunk:
                raise Truncated
            data += chunk
        self.total += size
        return data

    def read(self, size: int = -1) -> bytes:
        if self.done:
            return b""
        if self.left == 0:
            self.left = _U32.unpack(self.exact(4))[0]
            if self.left == 0:
                self.done = True
                return b""
        want = self.left if size < 0 else min(size, self.left)
        data = self.exact(want)
        self.left -= want
        self.hasher.update(data)
        return data

    def finish(self) -> None:
        while self.read(_CHUNK):
            pass
        if self.exact(len(TRAILER)) != TRAILER or self.exact(32) != self.hasher.digest():
            raise Truncated


@dataclass
class _Recv:
    operand: str
    flags: set[str]
    fs: str = ""
    snap: str = ""
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "incremental" if self.header.get("fromguid") else "new filesystem"


def _read_header(stream: _In, first: bool) -> dict[str, Any] | None:
    magic = stream.raw.read(len(MAGIC))
    if first and not magic:
        raise CmdError("cannot receive: failed to read from stream")
    if not first and not magic:
        return None
    if magic != MAGIC:
        if first:
            raise CmdError("cannot receive: invalid stream (bad magic number)")
        raise Truncated
    stream.total = len(magic)
    size = _U32.unpack(stream.exact(4))[0]
    header: dict[str, Any] = json.loads(stream.exact(size))
    return header


def _target(job: _Recv) -> None:
    operand, src = job.operand, job.header["fs"]
    if "d" in job.flags:
        job.fs = operand + ("/" + src.split("/", 1)[1] if "/" in src else "")
    elif "e" in job.flags:
        job.fs = operand + "/" + src.rsplit("/", 1)[-1]
    else:
        job.fs = operand.partition("@")[0]
    job.snap = operand.partition("@")[2] or job.header["snap"]


def _retarget(ps: PoolState | None, job: _Recv) -> None:
    """zfs-fuse quirk: an incremental stream for a filesystem that does not exist goes to the filesystem of the
    pool that holds the stream's base snapshot (found by guid), if there is one."""
    if ps is None or not job.header["fromguid"] or job.fs in ps.datasets:
        return
    for fsname, rec in sorted(ps.datasets.items()):
        if any(s.guid == job.header["fromguid"] for s in rec.snaps.values()):
            job.fs = fsname
            return


def _check(store: Store, ps: PoolState | None, job: _Recv) -> None:
    """zfs's checks before the data is read (the same run again, under the lock, before committing)."""
    prefix = f"cannot receive {job.kind} stream"
    rec = ps.fs(job.fs) if ps else None
    if not job.header["fromguid"]:
        if rec is None and (ps is None or parent_of(job.fs) not in ps.datasets):
            raise CmdError(f"cannot open '{job.fs}': dataset does not exist\n{prefix}: dataset does not exist")
        if rec is not None and "F" not in job.flags:
            raise CmdError(f"{prefix}: destination '{job.fs}' exists\nmust specify -F to overwrite it")
        if rec is not None and rec.snaps:
            first = rec.ordered_snaps()[0][0]
            raise CmdError(f"{prefix}: destination has snapshots (eg. {job.fs}@{first})\n"
                           "must destroy them to overwrite it")
        return
    if rec is None or ps is None:
        raise CmdError(f"{prefix}: destination '{job.fs}' does not exist")
    ordered = rec.ordered_snaps()
    if ordered and "F" not in job.flags and _modified(store, ps, job.fs):
        raise CmdError(f"{prefix}: destination {job.fs} has been modified\nsince most recent snapshot")
    if not ordered or ordered[-1][1].guid != job.header["fromguid"]:
        raise CmdError(f"{prefix}: most recent snapshot of {job.fs} does not\nmatch incremental source")
    if job.snap in rec.snaps:
        raise CmdError(f"{prefix}: destination '{job.fs}@{job.snap}' exists\nmust specify -F to overwrite it")


def _modified(store: Store, ps: PoolState, name: str) -> bool:
    rec = ps.datasets[name]
    live = ps.live_dir(name)
    skip = store.nested_mounts(ps, live) if rec.mounted else frozenset()
    return fsdata.fingerprint(fsdata.scan(live, skip)) != rec.clean_fp


def _stage(ps: PoolState, job: _Recv, stream: _In) -> Path:
    """Read one record's payload into a staging directory (a copy of the base snapshot for incrementals)."""
    import tarfile

    staging = ps.tmp_dir() / f"recv-{os.getpid()}-{time.monotonic_ns()}"
    try:
        base = None
        if job.header["fromguid"]:
            rec = ps.datasets[job.fs]
            base = next(s for _, s in rec.ordered_snaps() if s.guid == job.header["fromguid"])
        if base is not None:
            fsdata.copy_tree(ps.snap_dir(base.id), staging)
            fsdata.remove_paths(staging, job.header["deleted"])
        else:
            staging.mkdir()
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            tar.extractall(staging, numeric_owner=True, filter=_member_filter)
        stream.finish()
    except (Truncated, tarfile.TarError, EOFError, struct.error):
        shutil.rmtree(staging, ignore_errors=True)
        raise Truncated from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _member_filter(member: Any, path: str) -> Any:
    del path
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or member.islnk():
        raise CmdError("cannot receive: invalid stream (unsafe member)")
    return member


def _commit(store: Store, ps: PoolState, job: _Recv, staging: Path) -> str | None:
    """Turn a staged record into a snapshot and make the filesystem's contents equal to it."""
    header = job.header
    rec = ps.fs(job.fs)
    created = rec is None
    txg = ps.next_txg()
    if rec is None:
        rec = ps.new_fs(job.fs, {}, txg)
    for key, value in header["props"].items():
        rec.props[key] = value
        if key not in rec.received:
            rec.received.append(key)
    srec = S.SnapRec(id=ps.new_id(), guid=header["guid"], createtxg=txg, creation=header["creation"],
                     props=dict(header["snapprops"]), received=list(header["snapprops"]))
    os.rename(staging, ps.snap_dir(srec.id))
    manifest = fsdata.scan(ps.snap_dir(srec.id))
    fsdata.write_manifest(ps.manifest_path(srec.id), manifest)
    srec.referenced = fsdata.tree_bytes(manifest) + OVERHEAD
    rec.snaps[job.snap] = srec
    restore(store, ps, job.fs, srec.id)
    if created and "u" not in job.flags and ps.can_automount(job.fs):
        try:
            S.mount(store, ps, job.fs)
        except CmdError as exc:
            return exc.message
    return None


def _parse_recv(args: list[str]) -> tuple[str, set[str]]:
    opts, operands = getopt(args, "vnFdeu", "receive")
    if not operands:
        raise UsageError("missing snapshot argument", "receive")
    if len(operands) > 1:
        raise UsageError("too many arguments", "receive")
    return operands[0], {o for o, _ in opts}


def cmd_recv(store: Store, args: list[str]) -> int:
    operand, flags = _parse_recv(args)
    if sys.stdin.isatty():
        raise CmdError("Error: Backup stream can not be read from a terminal.\nYou must redirect standard input.")
    stream = _In(sys.stdin.buffer)
    header = _read_header(stream, True)
    rc = 0
    while header is not None:
        job = _Recv(operand, flags, header=header)
        _target(job)
        rc = max(rc, _receive_one(store, job, stream))
        stream = _In(sys.stdin.buffer)
        try:
            header = _read_header(stream, False)
        except Truncated:
            raise CmdError("cannot receive incremental stream: invalid backup stream") from None
    return rc


def _receive_one(store: Store, job: _Recv, stream: _In) -> int:
    pool = pool_of(job.fs)
    started = time.monotonic()
    if "v" in job.flags:
        verb = "would receive" if "n" in job.flags else "receiving"
        sys.stdout.write(f"{verb} {job.kind.replace('new filesystem', 'full')} stream of "
                         f"{job.header['fs']}@{job.header['snap']} into {job.fs}@{job.snap}\n")
        sys.stdout.flush()
    if not store.exists(pool):
        _check(store, None, job)
    open_existing(store, job.fs)
    with store.open_pool(pool, write=False) as ps:
        _retarget(ps, job)
        _check(store, ps, job)
    try:
        staging = _stage(ps, job, stream)
    except Truncated:
        raise CmdError(f"cannot receive {job.kind} stream: invalid backup stream") from None
    if "n" in job.flags:
        shutil.rmtree(staging, ignore_errors=True)
        return 0
    late = None
    try:
        with store.open_pool(pool, write=True) as ps:
            _check(store, ps, job)
            fault(store, "recv", [job.fs], f"cannot receive {job.kind} stream")
            late = _commit(store, ps, job, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if "v" in job.flags:
        secs = max(int(time.monotonic() - started), 1)
        sys.stdout.write(f"received {nicenum(stream.total)}B stream in {secs} seconds "
                         f"({nicenum(stream.total // secs)}B/sec)\n")
    if late:
        sys.stderr.write(late + "\n")
        return 1
    return 0
