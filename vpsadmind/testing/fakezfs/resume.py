"""OpenZFS's resumable receive in the fake (``FAKE_ZFS_DIALECT=openzfs``): ``recv -s``, ``send -t``, ``recv -A``.

The model works on the bytes of the fake's own stream (see stream.py), one *record* (one snapshot) at a time:

* ``zfs recv -s`` copies every byte of the record it is reading to a file in the pool's tmp/. When the input ends
  inside a record, the file is kept as ``resume/<fs id>`` and the target filesystem gets a ``resume`` entry in
  state.json whose token is what ``zfs get receive_resume_token`` prints. A full stream into a filesystem that did
  not exist leaves that filesystem behind, empty, unmounted and without snapshots, as OpenZFS leaves an
  inconsistent one; ``recv -A`` destroys it again. For ``-I`` only the record that broke is kept: the snapshots
  before it are complete, the ones after it need a new send (as in OpenZFS).
* ``zfs send -t <token>`` regenerates that record (streams are deterministic for a given snapshot), checks that
  its first ``bytes`` bytes are still the ones the receiver kept (a sha256 in the token), and writes a resume header
  (:data:`RESUME_MAGIC`, u32 length, JSON {toname, toguid, fromguid, bytes}) followed by the rest of the record.
* ``zfs recv`` of such a stream reads the kept bytes and then stdin as one record, so the result is exactly what
  an uninterrupted receive gives (same data, same snapshot guid). Interrupted again with ``-s``, it keeps all the
  bytes so far under a new token; without ``-s`` the partial state is dropped, as OpenZFS does.

The token imitates OpenZFS's layout ``1-<checksum hex>-<length hex>-<hex of zlib(payload)>`` (here the payload is
JSON, not an nvlist), so it matches ``[0-9a-f-]+`` and a corrupted one fails with OpenZFS's messages.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from vpsadmind.testing.fakezfs import dialect
from vpsadmind.testing.fakezfs.errors import CmdError, UsageError
from vpsadmind.testing.fakezfs.names import parent_of, pool_of
from vpsadmind.testing.fakezfs.state import FsRec, PoolState, SnapRec, Store

__all__ = ["RESUME_MAGIC", "PROP", "Source", "Point", "encode_token", "decode_token", "resolve", "read_header",
           "save", "discard", "finish", "matches", "cmd_abort", "tee_path"]

RESUME_MAGIC: Final = b"FZRSUM\x00\x01"
PROP: Final = "receive_resume_token"
_VERSION: Final = 1
_U32: Final = struct.Struct(">I")
_HEAD: Final = re.compile(r"(\d+)-([0-9a-fA-F]+)-([0-9a-fA-F]+)-")
_REQUIRED: Final = {"toname": str, "object": int, "offset": int, "bytes": int, "toguid": int,
                    "fz_props": bool, "fz_prefix": str}


# -- tokens --------------------------------------------------------------------------------------------------------
def _checksum(data: bytes) -> int:
    """Word 0 of a fletcher-4: the sum of the little-endian 32-bit words (what OpenZFS puts in a token)."""
    padded = data + b"\0" * (-len(data) % 4)
    words: tuple[int, ...] = struct.unpack(f"<{len(padded) // 4}I", padded)
    return sum(words) & (2**64 - 1)


def encode_token(fields: dict[str, Any]) -> str:
    packed = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    compressed = zlib.compress(packed, 9)
    return f"{_VERSION}-{_checksum(compressed):x}-{len(packed):x}-{compressed.hex()}"


def _corrupt(detail: str = "") -> CmdError:
    # zfs_send_resume() returns -1 from main(): the process exits 255
    return CmdError("cannot resume send: resume token is corrupt" + (f" ({detail})" if detail else ""), rc=255)


def decode_token(token: str) -> dict[str, Any]:
    """The fields of a token; the checks and messages of zfs_send_resume_token_to_nvlist() and zfs_send_resume()."""
    head = _HEAD.match(token)
    if head is None:
        raise _corrupt("invalid format")
    if int(head.group(1)) != _VERSION:
        raise _corrupt(f"invalid version {int(head.group(1))}")
    payload = token[token.rindex("-") + 1:]
    try:
        compressed = bytes.fromhex(payload[: len(payload) // 2 * 2])
    except ValueError:
        raise _corrupt("payload is not hex-encoded") from None
    if _checksum(compressed) != int(head.group(2), 16):
        raise _corrupt("incorrect checksum")
    try:
        packed = zlib.decompress(compressed)
    except zlib.error:
        raise _corrupt("decompression failed") from None
    if len(packed) != int(head.group(3), 16):
        raise _corrupt("decompression failed")
    try:
        fields = json.loads(packed)
    except ValueError:
        raise _corrupt("nvlist_unpack failed") from None
    if not isinstance(fields, dict) or any(not isinstance(fields.get(k), t) for k, t in _REQUIRED.items()):
        raise _corrupt()
    if not isinstance(fields.get("fromguid", 0), int):
        raise _corrupt()
    return fields


# -- the sending side ----------------------------------------------------------------------------------------------
@dataclass
class Point:
    """Where ``send -t`` resumes: the record to regenerate and how many of its bytes the receiver already has."""

    toname: str
    fsname: str
    snapname: str
    snap: SnapRec
    base: SnapRec | None
    props: dict[str, str]
    offset: int
    prefix: str                  # sha256 hex of the record's first ``offset`` bytes, as the receiver kept them

    def header(self) -> bytes:
        info = {"toname": self.toname, "toguid": self.snap.guid, "fromguid": self.base.guid if self.base else 0,
                "bytes": self.offset}
        blob = json.dumps(info).encode()
        return RESUME_MAGIC + _U32.pack(len(blob)) + blob


def _find_guid(ps: PoolState, first: str, guid: int) -> tuple[str, str, SnapRec] | None:
    """A snapshot by guid, in ``first`` before the rest of the pool (libzfs's guid_to_name() walks the pool)."""
    order = [first] if first in ps.datasets else []
    order += sorted(n for n in ps.datasets if n != first)
    for fsname in order:
        for snapname, srec in ps.datasets[fsname].ordered_snaps():
            if srec.guid == guid:
                return fsname, snapname, srec
    return None


def resolve(ps: PoolState | None, fields: dict[str, Any]) -> Point:
    """The snapshots a token names, or zfs_send_resume()'s errors (rc 255)."""
    toname: str = fields["toname"]
    found = _find_guid(ps, toname.partition("@")[0], fields["toguid"]) if ps is not None else None
    if found is None:
        if ps is not None and ps.snap(toname) is not None:
            raise CmdError(f"cannot resume send: '{toname}' is no longer the same snapshot used in the initial send",
                           rc=255)
        raise CmdError(f"cannot resume send: '{toname}' used in the initial send no longer exists", rc=255)
    assert ps is not None
    fsname, snapname, srec = found
    base = None
    if fields.get("fromguid"):
        # only the filesystem itself: the fake's incremental records are made against its own snapshots
        from_found = next(((fsname, n, s) for n, s in ps.datasets[fsname].ordered_snaps()
                           if s.guid == fields["fromguid"]), None)
        if from_found is None:
            raise CmdError(f"cannot resume send: incremental source {fields['fromguid']:#x} no longer exists",
                           rc=255)
        base = from_found[2]
    props = dict(ps.datasets[fsname].props) if fields["fz_props"] else {}
    return Point(toname, fsname, snapname, srec, base, props, fields["bytes"], fields["fz_prefix"])


# -- the receiving side --------------------------------------------------------------------------------------------
class Source:
    """The input of ``zfs recv``: stdin, after the kept bytes of a partial receive when it resumes. With a tee
    path (``recv -s``) every byte of the current record is also copied there, so that a break can keep them."""

    def __init__(self, stdin: IO[bytes], tee: Path | None) -> None:
        self.parts: list[IO[bytes]] = [stdin]
        self.owned: list[IO[bytes]] = []
        self.tee_path = tee
        self.tee: IO[bytes] | None = None
        self.count = 0                            # bytes of the current record read so far
        self.digest = hashlib.sha256()

    @property
    def teeing(self) -> bool:
        return self.tee_path is not None

    def prepend(self, path: Path) -> None:
        part = path.open("rb")
        self.owned.append(part)
        self.parts.insert(0, part)

    def peek(self, size: int) -> bytes:
        """Up to ``size`` bytes that the next read() returns again (not counted, not teed)."""
        data = self._fill(size)
        self.parts.insert(0, io.BytesIO(data))
        return data

    def start_record(self) -> None:
        self.count = 0
        self.digest = hashlib.sha256()
        if self.tee_path is not None:
            if self.tee is None:
                self.tee = self.tee_path.open("w+b")
            self.tee.seek(0)
            self.tee.truncate()

    def _fill(self, size: int) -> bytes:
        chunks: list[bytes] = []
        want = size
        while want > 0 and self.parts:
            chunk = self.parts[0].read(want)
            if not chunk:
                self.parts.pop(0)
                continue
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks)

    def read(self, size: int) -> bytes:
        data = self._fill(size)
        self.count += len(data)
        self.digest.update(data)
        if self.tee is not None:
            self.tee.write(data)
        return data

    def keep(self, dest: Path) -> None:
        """Move the bytes of the current record to ``dest`` (the partial state of the target)."""
        assert self.tee is not None and self.tee_path is not None
        self.tee.flush()
        dest.parent.mkdir(exist_ok=True)
        os.replace(self.tee_path, dest)

    def close(self) -> None:
        for part in self.owned:
            part.close()
        if self.tee is not None:
            self.tee.close()
        if self.tee_path is not None:
            self.tee_path.unlink(missing_ok=True)


def tee_path(store: Store, operand: str, flags: set[str]) -> Path | None:
    """Where ``recv -s`` copies the record it reads (None: no copy, e.g. zfs-fuse, ``-n`` or no such pool)."""
    pool = pool_of(operand)
    if not dialect.openzfs() or "s" not in flags or "n" in flags or not store.exists(pool):
        return None
    tmp = store.pools_dir / pool / "tmp"
    tmp.mkdir(exist_ok=True)
    return tmp / f"partial-{os.getpid()}-{time.monotonic_ns()}"


def read_header(source: Source) -> dict[str, Any]:
    """The resume header at the start of a ``send -t`` stream."""
    magic = source.read(len(RESUME_MAGIC))
    size_bytes = source.read(4)
    if magic != RESUME_MAGIC or len(size_bytes) < 4:
        raise CmdError("cannot receive: failed to read from stream")
    blob = source.read(_U32.unpack(size_bytes)[0])
    try:
        info: dict[str, Any] = json.loads(blob)
    except ValueError:
        raise CmdError("cannot receive: failed to read from stream") from None
    return info


def matches(state: dict[str, Any] | None, info: dict[str, Any]) -> bool:
    """Whether a resume stream continues the partial state of its target (the kernel checks toguid, fromguid and
    the resume point; a mismatch is EINVAL)."""
    return state is not None and all(state[k] == info.get(k) for k in ("toguid", "fromguid", "bytes"))


def save(ps: PoolState, fsname: str, header: dict[str, Any], source: Source, *, resuming: bool) -> str | None:
    """Keep the bytes read of the record that broke as the partial state of ``fsname``; returns the token, or None
    when there is nowhere to keep them (caller holds the pool's write lock)."""
    rec = ps.fs(fsname)
    if rec is None:
        if header["fromguid"] or parent_of(fsname) not in ps.datasets:
            return None
        rec = ps.new_fs(fsname, {}, ps.next_txg())          # OpenZFS leaves the new filesystem, inconsistent
        newfs = True
    elif rec.resume is not None:
        if not resuming:
            return None
        newfs = bool(rec.resume["newfs"])
    else:
        newfs = False
    fields: dict[str, Any] = {
        "toname": f"{header['fs']}@{header['snap']}", "toguid": header["guid"], "object": 0,
        "offset": source.count, "bytes": source.count, "fz_props": bool(header["props"]),
        "fz_prefix": source.digest.hexdigest()}
    if header["fromguid"]:
        fields["fromguid"] = header["fromguid"]
    token = encode_token(fields)
    source.keep(ps.partial_path(rec.id))
    rec.resume = {"token": token, "toguid": header["guid"], "fromguid": header["fromguid"], "bytes": source.count,
                  "newfs": newfs}
    return token


def finish(ps: PoolState, rec: FsRec) -> None:
    """The resumed receive completed: the partial state is used up."""
    rec.resume = None
    ps.partial_path(rec.id).unlink(missing_ok=True)


def discard(store: Store, ps: PoolState, fsname: str) -> None:
    """Drop the partial state of ``fsname``; a filesystem the interrupted receive created goes with it."""
    from vpsadmind.testing.fakezfs.dsops import destroy_fs_data

    rec = ps.fs(fsname)
    if rec is None or rec.resume is None:
        return
    if rec.resume["newfs"]:
        destroy_fs_data(store, ps, fsname)
    else:
        finish(ps, rec)


def cmd_abort(store: Store, operand: str) -> int:
    """``zfs recv -A <fs>`` (zfs_do_receive(): a dataset it cannot open prints the error, then the usage)."""
    if "@" in operand:
        raise UsageError(f"cannot open '{operand}': snapshot delimiter '@' is not expected here", "receive")
    pool = pool_of(operand)
    if not store.exists(pool):
        raise UsageError(f"cannot open '{operand}': dataset does not exist", "receive")
    with store.open_pool(pool, write=True) as ps:
        rec = ps.fs(operand)
        if rec is None:
            raise UsageError(f"cannot open '{operand}': dataset does not exist", "receive")
        if rec.resume is None:
            raise CmdError(f"'{operand}' does not have any resumable receive state to abort")
        discard(store, ps, operand)
    return 0
