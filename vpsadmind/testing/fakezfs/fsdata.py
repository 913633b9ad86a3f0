"""Directory trees that stand in for filesystem contents: real (hard-link-free) copies, manifests, fingerprints.

A *manifest* maps each relative path ("." for the root) to ``[kind, size, mtime_ns, mode, uid, gid]`` with kind
"f" (file), "d" (directory), "l" (symlink) or "o" (other). Directories carry no size or mtime, so creating and
deleting files is seen through the entries themselves. ``skip`` holds absolute paths of other filesystems mounted
inside a tree: they appear as empty directories, as the mountpoint directory does in the parent filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Manifest", "Entry", "scan", "copy_tree", "clear_tree", "move_tree", "fingerprint", "tree_bytes",
           "identities", "write_manifest", "read_manifest", "is_empty_dir", "remove_paths"]

Entry = list[int | str]
Manifest = dict[str, Entry]
_IS_ROOT = os.geteuid() == 0


def _entry(st: os.stat_result) -> Entry:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        kind, size, mtime = "d", 0, 0
    elif stat.S_ISREG(mode):
        kind, size, mtime = "f", st.st_size, st.st_mtime_ns
    elif stat.S_ISLNK(mode):
        kind, size, mtime = "l", st.st_size, st.st_mtime_ns
    else:
        kind, size, mtime = "o", 0, st.st_mtime_ns
    return [kind, size, mtime, stat.S_IMODE(mode), st.st_uid, st.st_gid]


def scan(root: Path, skip: frozenset[str] = frozenset()) -> Manifest:
    """The manifest of the tree at ``root`` (nested mounts in ``skip`` are listed as empty directories)."""
    manifest: Manifest = {".": _entry(os.lstat(root))}
    _scan_dir(str(root), "", skip, manifest)
    return manifest


def _scan_dir(path: str, rel: str, skip: frozenset[str], out: Manifest) -> None:
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    for de in entries:
        relpath = f"{rel}{de.name}"
        st = de.stat(follow_symlinks=False)
        out[relpath] = _entry(st)
        if stat.S_ISDIR(st.st_mode):
            if de.path in skip:
                out[relpath][3] = 0o755
                continue
            _scan_dir(de.path, relpath + "/", skip, out)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    if _IS_ROOT:
        os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_tree(src: Path, dst: Path, skip: frozenset[str] = frozenset(), *, into: bool = False,
              keep: frozenset[str] = frozenset()) -> None:
    """Copy the tree at ``src`` to ``dst`` (created; or filled when ``into``). Nothing is hard-linked.

    ``keep``: absolute paths under ``dst`` that already exist and must not be replaced (nested mountpoints).
    """
    st = os.lstat(src)
    if not into:
        os.mkdir(dst)
    _copy_dir(str(src), str(dst), skip, keep)
    _copy_meta(str(src), str(dst), st)


def _copy_dir(src: str, dst: str, skip: frozenset[str], keep: frozenset[str]) -> None:
    with os.scandir(src) as it:
        entries = list(it)
    for de in entries:
        target = os.path.join(dst, de.name)
        st = de.stat(follow_symlinks=False)
        if target in keep:
            continue
        if stat.S_ISDIR(st.st_mode):
            if not os.path.isdir(target):
                os.mkdir(target)
            if de.path not in skip:
                _copy_dir(de.path, target, skip, keep)
                _copy_meta(de.path, target, st)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(de.path), target)
            _copy_meta(de.path, target, st)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(de.path, target, follow_symlinks=False)
            _copy_meta(de.path, target, st)
        else:
            try:
                os.mknod(target, st.st_mode, st.st_rdev)
            except OSError:
                continue
            _copy_meta(de.path, target, st)


def clear_tree(root: Path, keep: frozenset[str] = frozenset()) -> None:
    """Remove everything inside ``root`` except the paths in ``keep`` (and the directories leading to them)."""
    with os.scandir(root) as it:
        entries = list(it)
    for de in entries:
        if de.path in keep:
            continue
        if de.is_dir(follow_symlinks=False):
            if any(k.startswith(de.path + "/") for k in keep):
                clear_tree(Path(de.path), keep)
            else:
                shutil.rmtree(de.path)
        else:
            os.unlink(de.path)


def move_tree(src: Path, dst: Path) -> None:
    """Move the directory ``src`` to ``dst`` (which must not exist or be an empty directory)."""
    if dst.is_dir():
        dst.rmdir()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError:
        copy_tree(src, dst)
        shutil.rmtree(src)


def is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except (FileNotFoundError, NotADirectoryError):
        return False


def fingerprint(manifest: Manifest) -> str:
    return hashlib.sha1(json.dumps(manifest, sort_keys=True).encode(), usedforsecurity=False).hexdigest()


def tree_bytes(manifest: Manifest) -> int:
    return sum(int(e[1]) for e in manifest.values())


def identities(manifest: Manifest) -> dict[tuple[str, str, int, int], int]:
    """Identity of each file for space accounting (same path, kind, size and mtime = the same blocks)."""
    return {(p, str(e[0]), int(e[1]), int(e[2])): int(e[1]) for p, e in manifest.items() if e[0] != "d"}


def write_manifest(path: Path, manifest: Manifest) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, separators=(",", ":")))
    os.replace(tmp, path)


def read_manifest(path: Path) -> Manifest:
    data: Manifest = json.loads(path.read_text())
    return data


def remove_paths(root: Path, paths: Iterable[str]) -> None:
    """Delete the given relative paths under ``root`` (files or whole directories), ignoring missing ones."""
    for rel in sorted(paths, key=len, reverse=True):
        target = root / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
