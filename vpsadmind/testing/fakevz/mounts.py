"""Mounting a container's private area at its root, and the action scripts vzctl runs around it.

Real vzctl mounts VE_PRIVATE at VE_ROOT (simfs, or a bind mount on non-OpenVZ kernels). The fake has two models,
chosen by ``$FAKE_VZ_MOUNT``:

* ``link`` (default, no privileges): the empty VE_ROOT directory is replaced by a symlink to VE_PRIVATE while
  mounted, and recreated as an empty directory at unmount. Paths under VE_ROOT reach the private files; a bind
  mount made at ``VE_ROOT/<dst>`` lands on ``VE_PRIVATE/<dst>`` (shown there in /proc/mounts);
* ``bind`` (needs root): a real ``mount --bind VE_PRIVATE VE_ROOT``, unmounted with ``umount``.

Either way, unmounting fails with exit 51 while something is still mounted below the root (as the kernel
refuses to unmount a busy simfs), and "mounted" is read back from the filesystem, never from a state file.

Action scripts (vzctl's ``src/lib/fs.c``/``script.c``), run on the host from the conf dir if they exist and are
executable, with only ``VEID``, ``VE_CONFFILE`` and ``PATH`` in their environment:

* mount: ``vps.premount``, ``<veid>.premount``, mount, ``vps.mount``, ``<veid>.mount``; a failing script
  unmounts again and the command exits 79;
* umount: ``<veid>.umount``, ``vps.umount`` (a failure exits 79 **before** unmounting: the container stays
  mounted), unmount, ``<veid>.postumount``, ``vps.postumount``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from vpsadmind.testing.fakevz.errors import (
    ACTIONSCRIPT_ERROR,
    FS_CANTMOUNT,
    FS_CANTUMOUNT,
    FS_MPOINTCREATE,
    FS_NOPRVT,
    VzFail,
)
from vpsadmind.testing.fakevz.layout import Ct, Layout

__all__ = ["SCRIPT_PATH", "mountpoints", "is_mounted", "mount", "umount", "run_script"]

#: The PATH vzctl gives action scripts.
SCRIPT_PATH = "/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin:/usr/local/sbin"


def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoints() -> list[str]:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            return [_unescape(line.split()[4]) for line in fh if len(line.split()) > 4]
    except OSError:
        return []


def _below(path: Path) -> list[str]:
    base = str(path.resolve())
    return [mp for mp in mountpoints() if mp.startswith(base + "/")]


def is_mounted(ct: Ct) -> bool:
    root, private = ct.root, ct.private
    if root is None or private is None:
        return False
    if root.is_symlink():
        return root.resolve() == private.resolve()
    return str(root) in mountpoints() or str(root.resolve()) in mountpoints()


def _paths(layout: Layout, ct: Ct) -> tuple[Path, Path]:
    root, private = ct.root, ct.private
    if root is None or private is None:
        raise VzFail(FS_CANTMOUNT, "VE_ROOT or VE_PRIVATE is not set")
    layout.check_path(root, "VE_ROOT")
    layout.check_path(private, "VE_PRIVATE")
    return root, private


def _do_mount(layout: Layout, root: Path, private: Path) -> None:
    if not private.is_dir():
        raise VzFail(FS_NOPRVT, f"Container private area {private} does not exist")
    if layout.mount_mode() == "bind":
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VzFail(FS_MPOINTCREATE, f"Unable to create {root}: {exc.strerror}") from None
        done = subprocess.run(["mount", "--bind", str(private), str(root)], capture_output=True, text=True)
        if done.returncode:
            raise VzFail(FS_CANTMOUNT, f"Can't mount: {done.stderr.strip()}")
        return
    try:
        if root.is_dir() and not root.is_symlink():
            root.rmdir()
        root.parent.mkdir(parents=True, exist_ok=True)
        root.symlink_to(private)
    except OSError as exc:
        raise VzFail(FS_CANTMOUNT, f"Can't mount: {root}: {exc.strerror} (fake-vzctl link mode needs an "
                                   "empty VE_ROOT directory)") from None


def _do_umount(root: Path, private: Path) -> None:
    busy = _below(root if not root.is_symlink() else private)
    if busy:
        raise VzFail(FS_CANTUMOUNT, f"Can't umount {root}: Device or resource busy (still mounted: {busy[0]})")
    if root.is_symlink():
        root.unlink()
        root.mkdir(exist_ok=True)
        return
    done = subprocess.run(["umount", str(root)], capture_output=True, text=True)
    if done.returncode:
        raise VzFail(FS_CANTUMOUNT, f"Can't umount {root}: {done.stderr.strip()}")


def run_script(layout: Layout, ct: Ct, name: str, phase: str) -> None:
    """Run ``<conf_dir>/<name>`` if it exists and is executable; exit 79 if it fails."""
    path = layout.conf_dir / name
    if not path.is_file() or not os.access(path, os.X_OK):
        return
    env = {"VEID": str(ct.veid), "VE_CONFFILE": str(ct.conf_path), "PATH": SCRIPT_PATH}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        rc = subprocess.run([str(path)], env=env, cwd="/", stdin=subprocess.DEVNULL).returncode
    except OSError as exc:
        raise VzFail(ACTIONSCRIPT_ERROR, f"Error executing {phase} script {path}: {exc.strerror}") from None
    if rc:
        raise VzFail(ACTIONSCRIPT_ERROR, f"Error executing {phase} script {path}")


def mount(layout: Layout, ct: Ct) -> None:
    """vzctl's ``vps_mount``: premount scripts, mount, mount scripts (undone if one fails)."""
    root, private = _paths(layout, ct)
    if not private.is_dir():
        raise VzFail(FS_NOPRVT, f"Container private area {private} does not exist")
    run_script(layout, ct, "vps.premount", "premount")
    run_script(layout, ct, f"{ct.veid}.premount", "premount")
    _do_mount(layout, root, private)
    try:
        run_script(layout, ct, "vps.mount", "mount")
        run_script(layout, ct, f"{ct.veid}.mount", "mount")
    except VzFail:
        with contextlib.suppress(VzFail):
            _do_umount(root, private)
        raise
    print("Container is mounted")


def umount(layout: Layout, ct: Ct) -> None:
    """vzctl's ``vps_umount``: umount scripts (a failure leaves it mounted), unmount, postumount scripts."""
    root, private = _paths(layout, ct)
    run_script(layout, ct, f"{ct.veid}.umount", "umount")
    run_script(layout, ct, "vps.umount", "umount")
    _do_umount(root, private)
    run_script(layout, ct, f"{ct.veid}.postumount", "postumount")
    run_script(layout, ct, "vps.postumount", "postumount")
    print("Container is unmounted")
