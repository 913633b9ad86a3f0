"""The file-system half of the NAS move: names are bytes end to end (any byte but ``/`` and NUL may be in a
name: spaces, newlines, invalid UTF-8, regex characters), hidden entries are included, child dataset
mountpoints are recognised by exact path, and nothing is ever renamed over an existing entry.

These functions block (they touch a FUSE or kernel file system): the step calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from typing import Final

__all__ = [
    "PRIVATE",
    "SNAPDIR",
    "STAGING_PREFIX",
    "child_entries",
    "is_v2_root",
    "make_staging",
    "move_noreplace",
    "new_staging",
    "root_entries",
    "staging_ready",
]

PRIVATE: Final = b"private"
SNAPDIR: Final = b".zfs"          # ZFS's snapshot directory (listed with snapdir=visible); never data
STAGING_PREFIX: Final = b".vpsadmin-upgrade-"

_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1


def _load_renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return getattr(libc, "renameat2", None)


_renameat2: Final = _load_renameat2()


def move_noreplace(src: bytes, dst: bytes) -> None:
    """Rename ``src`` to ``dst``; FileExistsError when ``dst`` exists (a plain rename(2) would silently replace
    a file or an empty directory). Uses renameat2(RENAME_NOREPLACE) where the file system has it (zfs-fuse does
    not: EINVAL), else checks first: the upgrade runs in maintenance mode, with nothing else writing there."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), os.fsdecode(src), None, os.fsdecode(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))
    os.rename(src, dst)


def child_entries(mnt: bytes, mountpoints: Iterable[bytes]) -> tuple[set[bytes], set[bytes]]:
    """``(exact, blocked)`` for the root of a dataset mounted at ``mnt``: ``exact`` are root entries that are
    a descendant dataset's mountpoint (they stay where they are), ``blocked`` root entries that are plain
    directories with a descendant's mountpoint deeper inside (moving them would move a mountpoint: a human
    must decide). Compared by exact path, never by pattern."""
    prefix = mnt.rstrip(b"/") + b"/"
    exact: set[bytes] = set()
    deeper: set[bytes] = set()
    for mountpoint in mountpoints:
        if not mountpoint.startswith(prefix) or mountpoint == prefix:
            continue
        first, sep, _ = mountpoint[len(prefix):].partition(b"/")
        (deeper if sep else exact).add(first)
    return exact, deeper - exact


def root_entries(mnt: bytes, keep: set[bytes]) -> list[bytes]:
    """Every entry of the root (hidden ones too) except ``keep`` and ``.zfs``, sorted."""
    return sorted(name for name in os.listdir(mnt) if name not in keep and name != SNAPDIR)


def is_v2_root(mnt: bytes, keep: set[bytes]) -> bool:
    """The root holds nothing but the directory ``private`` (and the ``keep`` mountpoints).

    A v1.22 dataset whose users kept everything in one directory called ``private`` looks the same; the
    operator's guide says so, and the check lists every dataset it takes for migrated.
    """
    if root_entries(mnt, keep) != [PRIVATE]:
        return False
    return stat.S_ISDIR(os.lstat(os.path.join(mnt, PRIVATE)).st_mode)


def new_staging(mnt: bytes) -> bytes:
    """A staging directory name not used in the root: ``.vpsadmin-upgrade-<8 hex digits>``."""
    while True:
        name = STAGING_PREFIX + secrets.token_hex(4).encode()
        if not os.path.lexists(os.path.join(mnt, name)):
            return name


def staging_ready(mnt: bytes, staging: bytes) -> bool:
    """The staging directory exists with the root's owner and mode (:func:`make_staging` is done)."""
    try:
        st = os.lstat(os.path.join(mnt, staging))
    except FileNotFoundError:
        return False
    root = os.lstat(mnt)
    return stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        root.st_uid, root.st_gid, stat.S_IMODE(root.st_mode))


def make_staging(mnt: bytes, staging: bytes) -> None:
    """Create the staging directory (if missing) with the owner and mode of the dataset's root: it becomes
    ``private/``, the directory users see as the root of their dataset from v2.0 on."""
    path = os.path.join(mnt, staging)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise
    root = os.lstat(mnt)
    os.chown(path, root.st_uid, root.st_gid)
    os.chmod(path, stat.S_IMODE(root.st_mode))  # after chown, which may clear set-id bits
