"""``zfs send`` / ``zfs recv`` with the fake's own stream format.

A stream is one record per snapshot (a full send has one, ``-i`` one, ``-I`` one per snapshot in the range)::

    record  := MAGIC(8) u32 header_len header_json frames TRAILER(8) sha256(payload)(32)
    frames  := (u32 len, bytes[len])* u32 0        -- the payload: a tar of the snapshot
    header  := {"fs", "snap", "guid", "creation", "fromguid", "props", "snapprops", "deleted"}

A full record's tar holds the whole tree; an incremental one holds every directory plus the files that differ
from the ``fromguid`` snapshot, and ``deleted`` lists what to remove first. The receiver stages each record in the
pool's tmp/ directory and commits it only once the trailer checks out, so a truncated stream leaves nothing
(except with the OpenZFS dialect's ``recv -s``, below).

A record is deterministic for given snapshots (tar order = manifest order, the frozen copies keep their mtimes),
which is what the OpenZFS dialect's resumable receive builds on: ``recv -s`` keeps the bytes of a broken record and
``send -t`` sends the rest of the same record (see resume.py).
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

from vpsadmind.testing.fakezfs import dialect, faults, fsdata, resume
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


class PrefixChanged(StreamBroken):
    """``send -t``: the regenerated record does not start with the bytes the receiver kept."""


class Truncated(Exception):
    """The input ended inside a record, or its checksum is wrong."""


# -- sending -------------------------------------------------------------------------------------------------------
class _Out:
    """stdout with a byte budget (``break_send`` faults) and the framing of the payload.

    For ``send -t`` the first ``skip`` bytes of the record are generated but not written, only hashed and compared
    with the receiver's (``prefix``); ``head`` (the resume header) is written in their place.
    """

    def __init__(self, raw: IO[bytes], limit: int | None, *, skip: int = 0, head: bytes = b"",
                 prefix: str | None = None) -> None:
        self.raw = raw
        self.limit = limit
        self.sent = 0
        self.hasher = hashlib.sha256()
        self.skip = skip
        self.head = head
        self.prefix = prefix
        self.skipped = hashlib.sha256()
        self.started = not skip and not head
        self.failed: StreamBroken | None = None

    def put(self, data: bytes) -> None:
        if not self.started:
            cut = min(self.skip, len(data))
            self.skipped.update(data[:cut])
            self.skip -= cut
            data = data[cut:]
            if self.skip:
                return
            self._start()
            if not data:
                return
        self._emit(data)

    def _start(self) -> None:
        if self.prefix is not None and self.skipped.hexdigest() != self.prefix:
            self.failed = PrefixChanged("stream changed")
            raise self.failed
        self.started = True
        if self.head:
            self._emit(self.head)

    def _emit(self, data: bytes) -> None:
        if self.failed is not None:           # tarfile flushes its buffer on the way out: nothing after a break
            raise self.failed
        if self.limit is not None and self.sent + len(data) > self.limit:
            self.raw.write(data[: self.limit - self.sent])
            self.raw.flush()
            self.sent = self.limit
            self.failed = StreamBroken("Input/output error")
            raise self.failed
        try:
            self.raw.write(data)
        except BrokenPipeError:
            self.failed = StreamBroken("Broken pipe")
            raise self.failed from None
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


@dataclass
class _SendArgs:
    name: str = ""
    from_arg: str | None = None
    intermediate: bool = False
    with_props: bool = False
    token: str | None = None
    dry: bool = False


# OpenZFS's -L -e -c -w -h -b -P -v only change the encoding or the report of a real stream: accepted, no effect.
_SEND_SPEC = {dialect.ZFS_FUSE: "RDpvi:I:", dialect.OPENZFS: "RDpvi:I:t:LecwhbnP"}


def _parse_send(args: list[str]) -> _SendArgs:
    opts, operands = getopt(args, _SEND_SPEC[dialect.current()], "send")
    letters = {o for o, _ in opts}
    token = next((v for o, v in opts if o == "t"), None)
    if token is not None:
        if letters & {"i", "I", "R", "p", "D"}:
            raise UsageError("invalid flags combined with -t", "send")
        if operands:
            raise UsageError("no additional arguments are permitted with -t", "send")
        return _SendArgs(token=token, dry="n" in letters)
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
    return _SendArgs(name, from_arg, bool(froms and froms[0][0] == "I"), "p" in letters, dry="n" in letters)


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
    parsed = _parse_send(args)
    if not parsed.dry and sys.stdout.isatty():
        raise CmdError("Error: Stream can not be written to a terminal.\nYou must redirect standard output.")
    if parsed.token is not None:
        return _send_resumed(store, parsed.token, parsed.dry)
    name = parsed.name
    pool = pool_of(name)
    if not store.exists(pool):
        raise CmdError(f"WARNING: could not send {name}: does not exist")
    with store.open_pool(pool, write=False) as ps:
        plan = _plan_send(ps, name, parsed.from_arg, parsed.intermediate, parsed.with_props)
    if parsed.dry:
        return 0
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


def _send_resumed(store: Store, token: str, dry: bool) -> int:
    """``send -t``: the rest of the record a ``recv -s`` kept the beginning of (errors exit 255, as in OpenZFS)."""
    fields = resume.decode_token(token)
    pool = pool_of(fields["toname"])
    ps: PoolState | None = None
    if store.exists(pool):
        with store.open_pool(pool, write=False) as ps:
            point = resume.resolve(ps, fields)
    else:
        point = resume.resolve(None, fields)
    assert ps is not None
    if dry:
        return 0
    snapshot = f"{point.fsname}@{point.snapname}"
    broken = faults.take(store.root, ("break_send",), "send", [snapshot, fields["toname"]])
    out = _Out(sys.stdout.buffer, broken.after_bytes if broken else None, skip=point.offset, head=point.header(),
               prefix=point.prefix)
    try:
        _send_record(ps, out, _Plan(point.fsname, props=point.props), point.snapname, point.snap, point.base)
        if not out.started:                     # the record got shorter than what the receiver has
            raise PrefixChanged("stream changed")
        sys.stdout.buffer.flush()
    except PrefixChanged:
        raise CmdError(f"cannot resume send: '{fields['toname']}' is no longer the same snapshot used in the "
                       "initial send", rc=255) from None
    except StreamBroken as exc:
        raise CmdError(f"warning: cannot send '{snapshot}': {exc}", rc=255) from None
    except BrokenPipeError:
        raise CmdError(f"warning: cannot send '{snapshot}': Broken pipe", rc=255) from None
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

    def __init__(self, raw: resume.Source) -> None:
        self.raw = raw
        self.left = 0
        self.done = False
        self.hasher = hashlib.sha256()
        self.total = 0
        self.eof = False                   # the input ended (rather than holding wrong bytes)

    def exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.raw.read(size - len(data))
            if not chunk:
                self.eof = True
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
    resuming: bool = False             # a ``send -t`` stream continuing a partial ``recv -s``

    @property
    def kind(self) -> str:
        """As in zfs's "cannot receive <kind> stream" messages."""
        if self.resuming:
            return "resume"
        return "incremental" if self.header.get("fromguid") else "new filesystem"

    @property
    def stream_type(self) -> str:
        """As in ``recv -v``'s "receiving <type> stream of ..." line."""
        return "incremental" if self.header.get("fromguid") else "full"


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
    try:
        size = _U32.unpack(stream.exact(4))[0]
        header: dict[str, Any] = json.loads(stream.exact(size))
    except Truncated:
        if first:
            raise CmdError("cannot receive: failed to read from stream") from None
        raise
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
    if job.resuming and not job.header["fromguid"]:
        return                             # into the filesystem holding the partial state, checked by _resume_into
    if not job.header["fromguid"]:
        if rec is None and (ps is None or parent_of(job.fs) not in ps.datasets):
            raise CmdError(f"cannot open '{job.fs}': dataset does not exist\n{prefix}: dataset does not exist")
        if rec is not None and "F" not in job.flags:
            raise CmdError(f"{prefix}: destination '{job.fs}' exists\nmust specify -F to overwrite it")
        if rec is not None and rec.snaps:
            first = rec.ordered_snaps()[0][0]
            raise CmdError(f"{prefix}: destination has snapshots (eg. {job.fs}@{first})\n"
                           "must destroy them to overwrite it")
        _check_pending(rec, job, prefix)
        return
    if rec is None or ps is None:
        raise CmdError(f"{prefix}: destination '{job.fs}' does not exist")
    _check_pending(rec, job, prefix)
    ordered = rec.ordered_snaps()
    if ordered and "F" not in job.flags and _modified(store, ps, job.fs):
        raise CmdError(f"{prefix}: destination {job.fs} has been modified\nsince most recent snapshot")
    if not ordered or ordered[-1][1].guid != job.header["fromguid"]:
        raise CmdError(f"{prefix}: most recent snapshot of {job.fs} does not\nmatch incremental source")
    if job.snap in rec.snaps:
        raise CmdError(f"{prefix}: destination '{job.fs}@{job.snap}' exists\nmust specify -F to overwrite it")


def _check_pending(rec: S.FsRec | None, job: _Recv, prefix: str) -> None:
    """OpenZFS refuses a new stream (even with -F) while a ``recv -s`` left partial state (the kernel's EBUSY)."""
    if rec is not None and rec.resume is not None and not job.resuming:
        raise CmdError(f'{prefix}: destination {job.fs} contains partially-complete state from "zfs receive -s".')


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
    # a resumed full stream completes the filesystem the first receive created: it is mounted like a new one
    created = rec is None or bool(job.resuming and rec.resume and rec.resume["newfs"])
    txg = ps.next_txg()
    if rec is None:
        rec = ps.new_fs(job.fs, {}, txg)
    if job.resuming:
        resume.finish(ps, rec)
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


# OpenZFS's -M (force unmount) and -h (skip holds) change nothing here; -o/-x are refused below.
_RECV_SPEC = {dialect.ZFS_FUSE: "vnFdeu", dialect.OPENZFS: "vnFdeusAMho:x:"}


def _parse_recv(args: list[str]) -> tuple[str, set[str]]:
    opts, operands = getopt(args, _RECV_SPEC[dialect.current()], "receive")
    if not operands:
        raise UsageError("missing snapshot argument", "receive")
    if len(operands) > 1:
        raise UsageError("too many arguments", "receive")
    flags = {o for o, _ in opts}
    if flags & {"o", "x"}:
        raise CmdError("fake-zfs: 'zfs receive -o/-x' is not modelled")
    if "A" in flags and flags & set("densu"):
        raise UsageError("invalid option", "receive")
    return operands[0], flags


def cmd_recv(store: Store, args: list[str]) -> int:
    operand, flags = _parse_recv(args)
    if "A" in flags:
        return resume.cmd_abort(store, operand)
    if sys.stdin.isatty():
        raise CmdError("Error: Backup stream can not be read from a terminal.\nYou must redirect standard input.")
    source = resume.Source(sys.stdin.buffer, resume.tee_path(store, operand, flags))
    try:
        if dialect.openzfs() and source.peek(len(resume.RESUME_MAGIC)) == resume.RESUME_MAGIC:
            return _recv_resumed(store, operand, flags, source)
        return _recv_records(store, operand, flags, source)
    finally:
        source.close()


def _recv_records(store: Store, operand: str, flags: set[str], source: resume.Source) -> int:
    """An ordinary stream: one record per snapshot, each committed before the next is read."""
    source.start_record()
    stream = _In(source)
    header = _read_header(stream, True)
    rc = 0
    while header is not None:
        job = _Recv(operand, flags, header=header)
        _target(job)
        rc = max(rc, _receive_one(store, job, stream))
        source.start_record()
        stream = _In(source)
        try:
            header = _read_header(stream, False)
        except Truncated:
            raise CmdError("cannot receive incremental stream: invalid backup stream") from None
    return rc


def _recv_resumed(store: Store, operand: str, flags: set[str], source: resume.Source) -> int:
    """A ``send -t`` stream: the kept bytes of the target's partial receive, then stdin, make the whole record."""
    info = resume.read_header(source)
    fsname, _, snapname = str(info.get("toname", "")).partition("@")
    job = _Recv(operand, flags, header={"fs": fsname, "snap": snapname, "fromguid": info.get("fromguid", 0)},
                resuming=True)
    _target(job)
    source.prepend(_resume_into(store, job, info))
    source.start_record()
    stream = _In(source)
    header = _read_header(stream, True)
    if header is None or header["guid"] != info.get("toguid"):
        raise CmdError(_resume_mismatch(job))
    job.header = header
    return _receive_one(store, job, stream)


def _resume_mismatch(job: _Recv) -> str:
    # the kernel's EINVAL for a resume stream that does not continue the partial state, as libzfs words it
    detail = "kernel modules must be upgraded to receive this stream." if "s" in job.flags else \
        "invalid backup stream"
    return f"cannot receive resume stream: {detail}"


def _resume_into(store: Store, job: _Recv, info: dict[str, Any]) -> Path:
    """Check that ``job.fs`` holds the partial state this resume stream continues; its kept bytes."""
    prefix = "cannot receive resume stream"
    pool = pool_of(job.fs)
    if not store.exists(pool):
        raise CmdError(f"{prefix}: destination '{job.fs}' does not exist")
    with store.open_pool(pool, write=False) as ps:
        rec = ps.fs(job.fs)
        if rec is None:
            raise CmdError(f"{prefix}: destination '{job.fs}' does not exist")
        newfs = bool(rec.resume and rec.resume["newfs"])
        if not info.get("fromguid") and not newfs and "F" not in job.flags:
            raise CmdError(f"{prefix}: Resuming recv on existing destination '{job.fs}'\n"
                           "must specify -F to overwrite it")
        partial = ps.partial_path(rec.id)
        if not resume.matches(rec.resume, info) or not partial.is_file():
            raise CmdError(_resume_mismatch(job))
    return partial


def _interrupted(store: Store, job: _Recv, stream: _In) -> CmdError:
    """The error for a record that broke off; ``recv -s`` (OpenZFS dialect) keeps what arrived of it."""
    prefix = f"cannot receive {job.kind} stream"
    if not dialect.openzfs():
        return CmdError(f"{prefix}: invalid backup stream")
    # A trailer that does not match means wrong bytes, not missing ones: keeping them could never resume.
    if "s" in job.flags and stream.eof and stream.raw.teeing and store.exists(pool_of(job.fs)):
        with store.open_pool(pool_of(job.fs), write=True) as ps:
            token = resume.save(ps, job.fs, job.header, stream.raw, resuming=job.resuming)
        if token is not None:
            return CmdError(f"{prefix}: checksum mismatch or incomplete stream.\n"
                            "Partially received snapshot is saved.\n"
                            "A resuming stream can be generated on the sending system by running:\n"
                            f"    zfs send -t {token}")
    elif job.resuming and "s" not in job.flags:
        with store.open_pool(pool_of(job.fs), write=True) as ps:
            resume.discard(store, ps, job.fs)       # only -s keeps partial state, also when resuming
    return CmdError(f"{prefix}: {'incomplete stream' if stream.eof else 'checksum mismatch'}")


def _receive_one(store: Store, job: _Recv, stream: _In) -> int:
    pool = pool_of(job.fs)
    started = time.monotonic()
    if "v" in job.flags:
        verb = "would receive" if "n" in job.flags else "receiving"
        sys.stdout.write(f"{verb} {job.stream_type} stream of "
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
        raise _interrupted(store, job, stream) from None
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
