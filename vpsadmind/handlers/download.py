"""Snapshot downloads: 5004 Dataset::DownloadSnapshot and 5005 Dataset::RemoveDownload (contract 5.4, 7.6).

5004 writes ``<mountpoint of pool_fs/vpsadmin/download>/<secret_key>/<file_name>`` (plus ``<file_name>.sha256``)
for an external web server to serve; 5005 and 5004's rollback remove exactly those files and the secret
directory. Formats: ``archive`` (v2.0's tar.gz whose top directory is the snapshot name), and, as in later
vpsAdmin, ``stream`` (``zfs send snap``) and ``incremental_stream`` (``zfs send -I from snap``). See
docs/downloads.md for the layout, the modes and the zfs-fuse clone fallback.

Every byte goes through one copy loop in a worker thread (:func:`_copy`): the producer (``tar -c`` or
``zfs send``) writes into a pipe, the loop counts raw bytes into the Progress, gzips when asked, hashes what
it writes and writes it to ``.<file_name>.part``, which is renamed only when complete, so the web server
never serves a partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import re
import threading
import weakref
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from vpsadmind import system
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Handler, Outcome, handler, ok, warning
from vpsadmind.handlers.storage_common import (
    check_component,
    check_dataset,
    check_relative,
    check_snapshot,
    dataset_path,
    fail,
    zfs_driver,
)
from vpsadmind.zfs import names as zfs_names
from vpsadmind.zfs.errors import DatasetNotFound, InvalidName

if TYPE_CHECKING:
    from vpsadmind.db import Database, Tx
    from vpsadmind.engine.model import Result
    from vpsadmind.progress import Progress
    from vpsadmind.zfs.driver import Zfs

__all__ = [
    "DownloadParams",
    "DownloadSnapshot",
    "RemoveDownload",
    "RemoveDownloadParams",
    "check_file_name",
    "check_secret_key",
    "clone_name",
]

T = TypeVar("T")

#: Working datasets below ``pool_fs`` (made by 5250 Pool::Create).
DOWNLOAD_DATASET: Final = "vpsadmin/download"
MOUNT_DATASET: Final = "vpsadmin/mount"
#: Suffix of the temporary snapshot clone and of its work directory in ``vpsadmin/mount`` (5217's clones end
#: in ``.snapshot``, so the names cannot clash).
CLONE_SUFFIX: Final = ".download"

MIB: Final = 1024 * 1024
_CHUNK: Final = MIB
#: ``file_name`` limit in bytes: the derived ``.<file_name>.sha256.part`` (13 bytes more) must still fit
#: NAME_MAX (255).
MAX_FILE_NAME: Final = 240
#: While 5004 works, only root may enter the secret directory. At the end the web server (any user) may
#: traverse it to fetch the file it knows the name of, but may not list it.
DIR_MODE_WORKING: Final = 0o700
DIR_MODE_DONE: Final = 0o711
FILE_MODE: Final = 0o644
GZIP_LEVEL: Final = 6  # gzip's own default, what v2.0's ``tar -czf`` produced

_SECRET_KEY: Final = re.compile(r"[0-9a-f]{32,128}")
_OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Format = Literal["archive", "stream", "incremental_stream"]


# ------------------------------------------------------------------------------------------------------------
# Names and params


def check_secret_key(value: object, field_name: str = "secret_key") -> str:
    """32 to 128 lower-case hex digits (v2.0 makes 100: ``SecureRandom.hex(50)``)."""
    if not isinstance(value, str) or not _SECRET_KEY.fullmatch(value):
        shown = repr(value)[:60] if isinstance(value, str) else type(value).__name__
        raise ParamError(f"expected 32 to 128 lower-case hex digits, got {shown}", field=field_name)
    return value


def check_file_name(value: object, field_name: str = "file_name") -> str:
    """One safe path component: not empty, no ``/``, no NUL or other control character, not starting with
    ``.`` (so neither ``.`` nor ``..`` nor a name like our own ``.<x>.part``), at most 240 UTF-8 bytes."""
    if not isinstance(value, str) or not value:
        raise ParamError("must be a non-empty string", field=field_name)
    shown = repr(value)[:60]
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ParamError(f"{shown} is not valid UTF-8", field=field_name) from None
    if size > MAX_FILE_NAME:
        raise ParamError(f"is {size} bytes long, at most {MAX_FILE_NAME} are allowed", field=field_name)
    if "/" in value:
        raise ParamError(f"{shown} must be a single path component (it contains '/')", field=field_name)
    if value.startswith("."):
        raise ParamError(f"{shown} must not start with '.'", field=field_name)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ParamError(f"{shown} contains a control character", field=field_name)
    return value


def _check_full_snapshot(field_name: str, name: str) -> str:
    """``<dataset>@<snap>`` as a whole (the length limit applies to the sum)."""
    try:
        return zfs_names.validate_snapshot(name)
    except InvalidName as exc:
        raise ParamError(f"invalid {exc.kind} {exc.value[:80]!r}: {exc.rule}", field=field_name) from None


def _check_download_id(value: int) -> None:
    if value <= 0:
        raise ParamError(f"expected a positive id, got {value}", field="download_id")


def clone_name(pool_fs: str, download_id: int) -> str:
    """``<pool_fs>/vpsadmin/mount/<download_id>.download``: the temporary clone of the zfs-fuse fallback."""
    return check_dataset("download_id", f"{pool_fs}/{MOUNT_DATASET}/{download_id}{CLONE_SUFFIX}")


@dataclass(frozen=True, slots=True)
class DownloadParams:
    pool_fs: str
    dataset_name: str
    snapshot: str
    secret_key: str
    file_name: str
    download_id: int
    tree: str | None = None
    branch: str | None = None
    format: Format | None = None
    from_snapshot: str | None = None

    def __post_init__(self) -> None:
        check_dataset("pool_fs", self.pool_fs)
        check_relative("dataset_name", self.dataset_name)
        if self.tree is not None or self.branch is not None:
            check_component("tree", self.tree)
            check_component("branch", self.branch)
        check_snapshot("snapshot", self.snapshot)
        check_secret_key(self.secret_key)
        check_file_name(self.file_name)
        _check_download_id(self.download_id)
        if self.kind == "incremental_stream":
            if self.from_snapshot is None:
                raise ParamError("format incremental_stream needs from_snapshot", field="from_snapshot")
            check_snapshot("from_snapshot", self.from_snapshot)
            if self.from_snapshot == self.snapshot:
                raise ParamError("must differ from snapshot", field="from_snapshot")
        elif self.from_snapshot is not None:
            raise ParamError(f"only format incremental_stream takes it, not {self.kind}", field="from_snapshot")
        _check_full_snapshot("snapshot", self.snapshot_name())
        if self.from_snapshot is not None:
            _check_full_snapshot("from_snapshot", f"{self.source()}@{self.from_snapshot}")
        clone_name(self.pool_fs, self.download_id)

    @property
    def kind(self) -> Format:
        """The format; v2.0 sends none and means ``archive``."""
        return self.format or "archive"

    def source(self) -> str:
        """``<pool_fs>/<dataset_name>[/<tree>/<branch>]``."""
        return dataset_path(self.pool_fs, self.dataset_name, self.tree, self.branch)

    def snapshot_name(self) -> str:
        return f"{self.source()}@{self.snapshot}"

    def from_name(self) -> str | None:
        return None if self.from_snapshot is None else f"{self.source()}@{self.from_snapshot}"

    def gzip(self) -> bool:
        """Archives are always tar.gz (v2.0). Streams are gzipped when the name says so: later vpsAdmin's API
        names them ``.dat.gz`` and pipes ``zfs send`` through gzip; a name without ``.gz`` gets the raw stream."""
        return self.kind == "archive" or self.file_name.endswith(".gz")


@dataclass(frozen=True, slots=True)
class RemoveDownloadParams:
    pool_fs: str
    secret_key: str
    file_name: str
    # Not sent by the API; without it the id is looked up by secret_key to find a leftover clone.
    download_id: int | None = None

    def __post_init__(self) -> None:
        check_dataset("pool_fs", self.pool_fs)
        check_secret_key(self.secret_key)
        check_file_name(self.file_name)
        if self.download_id is not None:
            _check_download_id(self.download_id)
            clone_name(self.pool_fs, self.download_id)


# ------------------------------------------------------------------------------------------------------------
# Paths in the pool's working datasets


def _part(name: str) -> str:
    return f".{name}.part"


def _sum_name(name: str) -> str:
    return f"{name}.sha256"


def _made_names(file_name: str) -> tuple[str, ...]:
    """Every entry 5004 may leave in the secret directory, the finished ones first."""
    return (file_name, _sum_name(file_name), _part(file_name), _part(_sum_name(file_name)))


async def _mounted_at(zfs: Zfs, dataset: str) -> str | None:
    """Where ``dataset`` is mounted; None when it is missing or not mounted."""
    try:
        return await zfs.mountpoint(dataset)
    except DatasetNotFound:
        return None


async def _secret_dir(zfs: Zfs, pool_fs: str, secret_key: str, *, required: bool) -> str | None:
    """``<mountpoint of pool_fs/vpsadmin/download>/<secret_key>``, from the real mountpoint (v2.0 assumed
    ``/<pool_fs>``). None when the download dataset does not exist and ``required`` is False."""
    dataset = f"{pool_fs}/{DOWNLOAD_DATASET}"
    if not await zfs.exists(dataset):
        if required:
            raise fail(f"{dataset} does not exist (5250 Pool::Create makes it)", dataset=dataset)
        return None
    mnt = await zfs.mountpoint(dataset)
    if mnt is None:
        raise fail(f"{dataset} is not mounted", dataset=dataset)
    return os.path.join(mnt, secret_key)


async def _work_dir(zfs: Zfs, pool_fs: str, download_id: int) -> str | None:
    """``<mountpoint of pool_fs/vpsadmin/mount>/<download_id>.download``; the clone is mounted below it."""
    mnt = await _mounted_at(zfs, f"{pool_fs}/{MOUNT_DATASET}")
    return None if mnt is None else os.path.join(mnt, f"{download_id}{CLONE_SUFFIX}")


def _private_dir(path: str) -> int:
    """Make ``path`` (or accept an existing real directory, never a symlink), set mode 0700 and return it open."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE_WORKING)
    try:
        fd = os.open(path, _OPEN_DIR)
    except OSError as exc:
        raise fail(f"{path} is not a directory ({exc.strerror}); refusing to use it", path=path) from None
    try:
        os.fchmod(fd, DIR_MODE_WORKING)  # mkdir's mode went through the umask; a re-run finds 0711
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_secret_dir(path: str, file_name: str) -> int:
    """The secret directory (made 0700 if missing) as an fd, without the parts a crashed run left."""
    dfd = _private_dir(path)
    try:
        for name in (_part(file_name), _part(_sum_name(file_name))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
    except BaseException:
        os.close(dfd)
        raise
    return dfd


def _publish(dfd: int, file_name: str, digest: str) -> None:
    """Write ``<file_name>.sha256``, then rename the finished part into place and open the directory for the
    web server. The data file comes last: once it is visible, everything is."""
    sum_part = _part(_sum_name(file_name))
    fd = os.open(sum_part, _CREATE_FILE, 0o600, dir_fd=dfd)
    try:
        _write_all(fd, f"{digest}  {file_name}\n".encode())
        os.fchmod(fd, FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(sum_part, _sum_name(file_name), src_dir_fd=dfd, dst_dir_fd=dfd)
    os.rename(_part(file_name), file_name, src_dir_fd=dfd, dst_dir_fd=dfd)
    with contextlib.suppress(OSError):  # not every (FUSE) filesystem syncs directories; the data is synced
        os.fsync(dfd)
    os.fchmod(dfd, DIR_MODE_DONE)


def _remove_files(secret: str, file_name: str) -> tuple[list[str], list[str]]:
    """Unlink what 5004 makes in ``secret`` and rmdir it when nothing else is left (never recursively).
    Returns (removed, kept)."""
    try:
        dfd = os.open(secret, _OPEN_DIR)
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise fail(f"{secret} is not a directory ({exc.strerror}); refusing to touch it", path=secret) from None
    removed: list[str] = []
    try:
        for name in _made_names(file_name):
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise fail(f"cannot remove {name} from the secret directory: {exc.strerror}") from None
            removed.append(name)
        left = sorted(os.listdir(dfd))
    finally:
        os.close(dfd)
    if left:
        return removed, left
    try:
        os.rmdir(secret)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return removed, ["(entries created meanwhile)"]
    return [*removed, "(secret directory)"], []


def _remove_work_dir(path: str) -> None:
    """rmdir the clone's mountpoint directory (zfs leaves it behind) and the work directory; never
    recursively, and never a directory that is still a mountpoint."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise fail(f"{path} is not a directory; refusing to touch it", path=path)
    for entry in os.listdir(path):
        inner = os.path.join(path, entry)
        if os.path.ismount(inner):
            raise fail(f"{inner} is still mounted", path=inner)
        try:
            os.rmdir(inner)
        except OSError as exc:
            raise fail(f"cannot remove {inner}: {exc.strerror} (never removed recursively)", path=inner) from None
    os.rmdir(path)


async def _drop_clone(zfs: Zfs, pool_fs: str, download_id: int) -> bool:
    """Destroy the temporary clone (only if it really is a clone) and its work directory; returns whether a
    clone was there. Missing pieces are fine."""
    clone = clone_name(pool_fs, download_id)
    found = await zfs.exists(clone)
    if found:
        origin = (await zfs.get(clone, ["origin"])).get(clone, {}).get("origin")
        if origin is None or "@" not in origin.value:
            raise fail(f"{clone} exists but is not a snapshot clone; refusing to destroy it", dataset=clone)
        await zfs.destroy(clone)
    workdir = await _work_dir(zfs, pool_fs, download_id)
    if workdir is not None:
        await asyncio.to_thread(_remove_work_dir, workdir)
    return found


async def _remove(zfs: Zfs, pool_fs: str, secret_key: str, file_name: str, download_id: int | None) -> Outcome:
    """What 5005 and 5004's rollback do: the clone, the files, the secret directory if it is then empty."""
    removed: list[str] = []
    if download_id is not None and await _drop_clone(zfs, pool_fs, download_id):
        removed.append(clone_name(pool_fs, download_id))
    kept: list[str] = []
    secret = await _secret_dir(zfs, pool_fs, secret_key, required=False)
    if secret is not None:
        files, kept = await asyncio.to_thread(_remove_files, secret, file_name)
        removed += files
    if kept:
        return warning(removed=removed, kept=kept,
                       note="the secret directory holds other entries, so it was kept (never removed recursively)")
    return ok(removed=removed)


# ------------------------------------------------------------------------------------------------------------
# The copy loop


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy(src: int, dst: int, progress: Progress, compress: bool) -> tuple[int, str]:
    """Copy the pipe ``src`` into the file ``dst`` until EOF: count raw bytes into ``progress``, gzip when
    ``compress``, sha256 what is written. Owns both fds and closes them, so that nobody can close them under
    it. Returns (bytes written, hex digest)."""
    digest = hashlib.sha256()
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if compress else None
    size = 0
    try:
        while chunk := os.read(src, _CHUNK):
            progress.add(len(chunk))
            data = packer.compress(chunk) if packer is not None else chunk
            digest.update(data)
            _write_all(dst, data)
            size += len(data)
        if packer is not None:
            tail = packer.flush()
            digest.update(tail)
            _write_all(dst, tail)
            size += len(tail)
        os.fchmod(dst, FILE_MODE)
        os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)
    return size, digest.hexdigest()


def _in_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """``fn()`` in a thread of its own: a download may copy for hours and must not hold one of the default
    executor's few workers that every ``asyncio.to_thread`` of the daemon shares."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(report: Callable[[], None]) -> None:
        if not future.done():
            report()

    def run() -> None:
        report: Callable[[], None]
        try:
            value = fn()
        except BaseException as exc:
            report = functools.partial(future.set_exception, exc)
        else:
            report = functools.partial(future.set_result, value)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(deliver, report)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def _pump(argv: list[str], dst: int, progress: Progress, compress: bool) -> tuple[int, str]:
    """Run ``argv`` with its stdout into :func:`_copy` (which takes over ``dst``); fail on a non-zero exit.

    If anything goes wrong (the copy fails, the task is cancelled) the producer is killed, which ends the copy
    at EOF, and the copy is awaited so that it never outlives its file descriptors' owner."""
    r, w = os.pipe()
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, _CHUNK)  # fewer, larger reads (1 MiB chunks)
        proc = await system.spawn(argv, stdout=w)
    except BaseException:
        for fd in (r, w, dst):
            os.close(fd)
        raise
    os.close(w)  # the child holds the only write end now: its exit is the copy's EOF
    copy = _in_thread(lambda: _copy(r, dst, progress, compress), "download-copy")
    assert proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())
    try:
        size, digest = await asyncio.shield(copy)
        rc = await proc.wait()
        err = (await stderr).decode(errors="replace").strip()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        stderr.cancel()
        await asyncio.wait([copy])
        await proc.wait()
        raise
    if rc != 0:
        raise fail(f"{' '.join(argv)} exited with {rc}" + (f": {err[:2000]}" if err else ""),
                   cmd=" ".join(argv), exitstatus=rc)
    return size, digest


# ------------------------------------------------------------------------------------------------------------
# 5004 Dataset::DownloadSnapshot


def _listable(path: str) -> bool:
    """Whether ``path`` is a readable directory; reading it triggers ZoL's automount of ``.zfs/snapshot/x``."""
    try:
        os.listdir(path)
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def _snapshot_clone(zfs: Zfs, p: DownloadParams) -> AsyncIterator[str]:
    """zfs-fuse has no ``.zfs`` directory: clone the snapshot read-only to ``<pool_fs>/vpsadmin/mount/
    <download_id>.download`` mounted at ``<work dir>/<snapshot>`` and yield the work dir, so that ``tar -C
    <work dir> <snapshot>`` gives v2.0's layout. The clone and the directories go away afterwards."""
    workdir = await _work_dir(zfs, p.pool_fs, p.download_id)
    if workdir is None:
        raise fail(f"{p.pool_fs}/{MOUNT_DATASET} is not mounted: no place to mount the snapshot clone")
    clone = clone_name(p.pool_fs, p.download_id)
    where = os.path.join(workdir, p.snapshot)
    try:
        os.close(await asyncio.to_thread(_private_dir, workdir))  # 0700: nobody else reaches the clone's files
        await zfs.clone(p.snapshot_name(), clone, properties={"mountpoint": where, "readonly": "on",
                                                               "atime": "off"})
        if await zfs.mountpoint(clone) is None:
            await zfs.mount(clone)
        mounted = await zfs.mountpoint(clone)
        if mounted != where:  # tar of an empty directory would make a "valid" empty archive
            raise fail(f"{clone} is mounted at {mounted}, not {where}", dataset=clone)
        yield workdir
    except BaseException:
        with contextlib.suppress(Exception):  # the first error matters; rollback and re-runs clean up too
            await _drop_clone(zfs, p.pool_fs, p.download_id)
        raise
    await _drop_clone(zfs, p.pool_fs, p.download_id)


_SHA256_COLUMN: weakref.WeakKeyDictionary[Database, bool] = weakref.WeakKeyDictionary()


async def _has_sha256_column(db: Database, tx: Tx) -> bool:
    """Whether ``snapshot_downloads.sha256sum`` exists (later vpsAdmin schemas). A found column is remembered
    per database object; a missing one is asked again next time, so a migration needs no restart."""
    if _SHA256_COLUMN.get(db):
        return True
    row = await tx.fetchone("SELECT COUNT(*) AS n FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                            "AND TABLE_NAME = 'snapshot_downloads' AND COLUMN_NAME = 'sha256sum'")
    found = bool(row and row["n"])
    if found:
        _SHA256_COLUMN[db] = True
    return found


@handler(5004)
class DownloadSnapshot(Handler[DownloadParams]):
    """Make ``<secret_key>/<file_name>`` (and ``.sha256``) in the pool's download dataset; post_save writes
    ``snapshot_downloads.size`` in MiB (rounded down: v2.0 and later vpsAdmin write ``File.size / 1024 /
    1024``, Ruby integer division) and, where the column exists, ``sha256sum``. Rollback removes the files,
    the secret directory if it is then empty, and a temporary clone.

    Idempotent: a run starts by removing what an interrupted run can have left (the ``.part`` files, the
    clone and its work directory) and then makes everything again; the final file is replaced by rename, so
    a finished earlier run is overwritten with the same content. Nothing depends on state from an earlier
    run, so no ``recover`` is needed; rollback is idempotent too (missing files are fine)."""

    Params = DownloadParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        p = self.params
        zfs = await zfs_driver(self.ctx)
        secret = await _secret_dir(zfs, p.pool_fs, p.secret_key, required=True)
        assert secret is not None
        for field_name, name in (("snapshot", p.snapshot_name()), ("from_snapshot", p.from_name())):
            if name is not None and not await zfs.exists(name):
                raise fail(f"{field_name} {name} does not exist", snapshot=name)
        await _drop_clone(zfs, p.pool_fs, p.download_id)  # left by an interrupted run
        progress = self.ctx.progress.open(
            "download", chain_id=self.transaction.chain_id, transaction_id=self.transaction.t_id,
            label=f"{p.snapshot_name()} {p.kind} -> {p.file_name}", total=await self._estimate(zfs))
        try:
            size, digest, source = await self._make(zfs, secret, progress)
        except BaseException as exc:
            # Progress is published on the bus: keep the secret out of it.
            error = (str(exc) or type(exc).__name__).replace(p.secret_key, "<secret_key>")
            self.ctx.progress.close(progress, error=error)
            raise
        self.ctx.progress.close(progress)
        output = {"file_name": p.file_name, "format": p.kind, "size": size, "sha256": digest, "source": source}
        return Outcome(output=output, data={"size": size, "sha256": digest})

    async def _estimate(self, zfs: Zfs) -> int | None:
        """The snapshot's ``referenced`` bytes: what tar reads or a full send sends, roughly (an incremental
        stream is smaller)."""
        name = self.params.snapshot_name()
        prop = (await zfs.get(name, ["referenced"])).get(name, {}).get("referenced")
        return int(prop.value) if prop is not None and prop.value.isdigit() else None

    async def _make(self, zfs: Zfs, secret: str, progress: Progress) -> tuple[int, str, str]:
        """The part file, filled by the producer, then published. Returns (size, sha256, source)."""
        p = self.params
        dfd = await asyncio.to_thread(_open_secret_dir, secret, p.file_name)
        try:
            async with self._producer(zfs) as (argv, source):
                # opened only now: _pump owns (and closes) it from its first line on
                dst = os.open(_part(p.file_name), _CREATE_FILE, 0o600, dir_fd=dfd)
                size, digest = await _pump(argv, dst, progress, p.gzip())
            await asyncio.to_thread(_publish, dfd, p.file_name, digest)
        finally:
            os.close(dfd)
        return size, digest, source

    @contextlib.asynccontextmanager
    async def _producer(self, zfs: Zfs) -> AsyncIterator[tuple[list[str], str]]:
        """The command whose stdout is the download (before gzip), and where it reads from."""
        p = self.params
        if p.kind != "archive":
            # -I as later vpsAdmin: the intermediate snapshots come along, as in the cluster's own transfers
            yield zfs.send_argv(p.snapshot_name(), base=p.from_name(), intermediate=True), "zfs send"
            return
        tar = self.ctx.config.bin.get("tar", "tar")
        mnt = await zfs.mountpoint(p.source())
        snapdir = os.path.join(mnt, ".zfs", "snapshot") if mnt is not None else None
        if snapdir is not None and await asyncio.to_thread(_listable, os.path.join(snapdir, p.snapshot)):
            yield [tar, "-cf", "-", "-C", snapdir, p.snapshot], ".zfs"
            return
        async with _snapshot_clone(zfs, p) as workdir:
            yield [tar, "-cf", "-", "-C", workdir, p.snapshot], "clone"

    async def post_save(self, tx: Tx, result: Result) -> None:
        size, digest = result.data.get("size"), result.data.get("sha256")
        if not isinstance(size, int):
            return
        download_id = self.params.download_id
        if isinstance(digest, str) and await _has_sha256_column(self.ctx.db, tx):
            await tx.execute("UPDATE snapshot_downloads SET size = %s, sha256sum = %s WHERE id = %s",
                             (size // MIB, digest, download_id))
        else:
            await tx.execute("UPDATE snapshot_downloads SET size = %s WHERE id = %s", (size // MIB, download_id))

    async def rollback(self) -> Outcome | None:
        p = self.params
        zfs = await zfs_driver(self.ctx)
        return await _remove(zfs, p.pool_fs, p.secret_key, p.file_name, p.download_id)


# ------------------------------------------------------------------------------------------------------------
# 5005 Dataset::RemoveDownload


@handler(5005)
class RemoveDownload(Handler[RemoveDownloadParams]):
    """Remove ``<file_name>``, its ``.sha256``, leftover ``.part`` files and the secret directory (only when it
    is then empty), plus a temporary clone that a failed 5004 may have left (found through
    ``snapshot_downloads.id`` by ``secret_key``). Irreversible (the API marks it so).

    Idempotent: it only removes, and anything already gone is fine."""

    Params = RemoveDownloadParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        p = self.params
        zfs = await zfs_driver(self.ctx)
        download_id = p.download_id if p.download_id is not None else await self._lookup_id()
        return await _remove(zfs, p.pool_fs, p.secret_key, p.file_name, download_id)

    async def _lookup_id(self) -> int | None:
        row = await self.ctx.db.fetchone("SELECT id FROM snapshot_downloads WHERE secret_key = %s",
                                         (self.params.secret_key,))
        value: Any = row["id"] if row else None
        return value if isinstance(value, int) and value > 0 else None
