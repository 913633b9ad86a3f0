"""Mount destinations that can never leave the VPS root.

The files below ``<ve_root>`` belong to the container and are hostile: a VPS user can plant ``/mnt/x -> /etc``
(or ``../../..``) and wait for the node to ``mkdir -p`` or ``mount`` through it as root. v2.0 built the string
``<ve_root>/<dst>`` and handed it to ``mkdir -p`` and ``mount``, which follow symlinks; so do ``realpath`` checks,
which only narrow the window between the check and the mount.

Here the destination is **opened**, component by component, from a descriptor of the root:

* every component is opened with ``O_PATH | O_NOFOLLOW | O_DIRECTORY`` relative to the previous one, so a
  symlink (absolute, relative, or a ``/proc`` magic link) is refused instead of followed, and so is anything that
  is not a directory. ``..`` and ``.`` never reach this code (``spec.check_dst``) and are refused here again;
* a missing component is created with ``mkdirat`` on the parent descriptor, which does not follow a symlink
  either (a symlink in its place makes it fail with EEXIST, then the open refuses it);
* the mount is then made on ``/proc/<our pid>/fd/<n>``: the kernel resolves that magic link to exactly the
  directory we opened, wherever the container moves or replaces names meanwhile, so there is no window between
  the check and the use. Commands get ``--no-canonicalize`` so that mount(8) does not turn the link back into a
  path string first;
* operations that must name the mount itself (a read-only remount, umount) use ``/proc/<pid>/fd/<parent>/<name>``:
  the parent is pinned, and a mounted ``name`` cannot be renamed or replaced (EBUSY). We keep no descriptor inside
  the mount for those, as that would make it busy.

Whether something is mounted on a directory is read from ``mnt_id`` in ``/proc/self/fdinfo``: a directory whose
mount id differs from its parent's is the root of a mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from vpsadmind.errors import AgentError

__all__ = ["Target", "UnsafePath", "mount_id", "open_target", "proc_fd_path"]

_OPEN_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafePath(AgentError):
    """The destination would leave the VPS root, or a component is not a plain directory."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


def proc_fd_path(fd: int, name: str | None = None) -> str:
    """``/proc/<pid>/fd/<fd>[/<name>]``: the pid, not ``self``, so that a child command sees our descriptor."""
    base = f"/proc/{os.getpid()}/fd/{fd}"
    return f"{base}/{name}" if name is not None else base


def mount_id(fd: int) -> int:
    """The id of the mount ``fd`` is on (``mnt_id`` of ``/proc/self/fdinfo/<fd>``, Linux 3.15+)."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key == "mnt_id":
                return int(value)
    raise AgentError(f"no mnt_id in /proc/self/fdinfo/{fd}")


@dataclass(slots=True)
class Target:
    """An opened destination: ``fd`` is the directory, ``parent_fd`` its parent, ``path`` the host path (for
    messages and logs only, never used to reach the directory)."""

    path: str
    name: str
    parent_fd: int
    fd: int | None
    _fds: list[int] = field(default_factory=list)
    #: ``name`` answered ESTALE: an NFS mount whose export went away (v2.0 then ran ``umount -f`` on it).
    stale: bool = False

    @property
    def exists(self) -> bool:
        return self.fd is not None

    def is_mountpoint(self) -> bool:
        """Whether something is mounted on this directory (its mount differs from its parent's)."""
        return self.fd is not None and mount_id(self.fd) != mount_id(self.parent_fd)

    def reopen(self) -> None:
        """Open ``name`` again (after a mount: the new descriptor is on the mount's root)."""
        if self.fd is not None:
            os.close(self.fd)
            self._fds.remove(self.fd)
            self.fd = None
        try:
            self.fd = _open_component(self.parent_fd, self.name, self.path)
        except _Stale:
            raise UnsafePath(f"cannot open {self.path}: stale file handle", path=self.path) from None
        self.stale = False
        if self.fd is not None:
            self._fds.append(self.fd)

    def release(self) -> None:
        """Close the directory's own descriptor: it would keep a mount on it busy (umount needs that)."""
        if self.fd is not None:
            os.close(self.fd)
            self._fds.remove(self.fd)
            self.fd = None

    def direct(self) -> str:
        """The directory itself as a path a child process resolves to exactly what we opened."""
        if self.fd is None:
            raise UnsafePath(f"{self.path} does not exist", path=self.path)
        return proc_fd_path(self.fd)

    def via_parent(self) -> str:
        """``<parent>/<name>``: the mount on this directory (remount, umount)."""
        return proc_fd_path(self.parent_fd, self.name)



class _Stale(Exception):
    pass


def _refuse(parent_fd: int, name: str, path: str, exc: OSError) -> UnsafePath:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return UnsafePath(f"cannot open {path}: {exc.strerror}", path=path)
    if stat.S_ISLNK(st.st_mode):
        return UnsafePath(f"{path} is a symbolic link: refusing to follow it out of the VPS root", path=path)
    return UnsafePath(f"{path} is not a directory", path=path)


def _open_component(parent_fd: int, name: str, path: str) -> int | None:
    """Open ``name`` below ``parent_fd`` without following it; None if it does not exist."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(f"refusing path component {name!r} in {path}", path=path)
    try:
        return os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ESTALE:
            raise _Stale(path) from None
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _refuse(parent_fd, name, path, exc) from None
        raise UnsafePath(f"cannot open {path}: {exc.strerror}", path=path) from None


def _open_or_create(parent_fd: int, name: str, path: str, create: bool) -> int | None:
    fd = _open_component(parent_fd, name, path)
    if fd is not None or not create:
        return fd
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)  # mkdirat: a symlink in the way makes it EEXIST, not followed
    except FileExistsError:
        pass  # made meanwhile, or a dangling symlink: the open below decides
    except OSError as exc:
        raise UnsafePath(f"cannot create {path}: {exc.strerror}", path=path) from None
    fd = _open_component(parent_fd, name, path)
    if fd is None:  # a dangling symlink is "not found" for O_NOFOLLOW|O_DIRECTORY
        raise _refuse(parent_fd, name, path, FileNotFoundError(errno.ENOENT, "No such file or directory"))
    return fd


@contextlib.contextmanager
def open_target(root: str | os.PathLike[str], dst: str, *, create: bool) -> Iterator[Target]:
    """Open ``dst`` (absolute inside the VPS) below ``root`` without following any symlink below the root.

    The root itself is the node's own path (VE_ROOT, which may legitimately be a symlink in the fake harness's
    link mode) and is followed. With ``create`` missing directories are made (mode 0755, as ``mkdir -p``); without
    it, a missing destination gives a Target whose ``fd`` is None (its parent must exist, else also None).
    Every descriptor is closed on exit.
    """
    root_path = os.fspath(root)
    parts = dst.strip("/").split("/")
    fds: list[int] = []
    try:
        cur = os.open(root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafePath(f"the VPS root {root_path} is not available: {exc.strerror}", path=root_path) from None
    fds.append(cur)
    path = root_path.rstrip("/")
    target: Target | None = None
    try:
        for i, name in enumerate(parts):
            path = f"{path}/{name}"
            last = i == len(parts) - 1
            try:
                fd = _open_or_create(cur, name, path, create)
            except _Stale:
                if not last:
                    raise UnsafePath(f"cannot open {path}: stale file handle", path=path) from None
                target = Target(path, name, cur, None, fds, stale=True)
                break
            if last:
                target = Target(path, name, cur, fd, fds)
                if fd is not None:
                    fds.append(fd)
                break
            if fd is None:  # a missing parent without create: the destination is not there either
                target = Target(path + "/" + "/".join(parts[i + 1:]), parts[-1], cur, None, fds)
                break
            fds.append(fd)
            cur = fd
        assert target is not None
        yield target
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if target is not None:
            target._fds.clear()
