"""Destinations below a hostile container root: opened component by component, never through a symlink."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.mounts.conftest import needs_root, unmount_below
from vpsadmind.mounts.paths import UnsafePath, mount_id, open_target


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A container root and a host directory outside it that must never be touched."""
    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("host file\n")
    return root, host


def host_unchanged(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["passwd"]
    assert (host / "passwd").read_text() == "host file\n"


def test_creates_missing_directories_inside_the_root(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with open_target(root, "/mnt/a/b/c", create=True) as t:
        assert t.exists and not t.is_mountpoint()
        assert t.path == f"{root}/mnt/a/b/c"
        assert os.path.realpath(t.direct()) == str(root / "mnt/a/b/c")
        assert os.path.realpath(t.via_parent()) == str(root / "mnt/a/b/c")
        fds = [t.fd, t.parent_fd]
    assert (root / "mnt/a/b/c").is_dir()
    assert oct((root / "mnt/a/b/c").stat().st_mode & 0o777) == "0o755"
    for fd in fds:  # every descriptor is closed afterwards
        with pytest.raises(OSError):
            os.fstat(fd)  # type: ignore[arg-type]


@pytest.mark.parametrize("link", ["absolute", "relative", "dotdot"])
def test_symlinked_destination_is_refused(layout: tuple[Path, Path], link: str) -> None:
    root, host = layout
    target = {"absolute": str(host), "relative": "../../host", "dotdot": "../../../" + str(host)}[link]
    (root / "mnt" / "x").symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link"), open_target(root, "/mnt/x", create=True):
        pass
    host_unchanged(host)


def test_symlinked_parent_is_refused_and_nothing_is_created_through_it(layout: tuple[Path, Path]) -> None:
    root, host = layout
    (root / "srv").symlink_to(host)
    with pytest.raises(UnsafePath, match=r"srv is a symbolic link"), open_target(root, "/srv/www/data", create=True):
        pass
    host_unchanged(host)


def test_dangling_symlink_is_not_created_through(layout: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = layout
    (root / "mnt" / "x").symlink_to(tmp_path / "would-be-created")
    with pytest.raises(UnsafePath, match="symbolic link"), open_target(root, "/mnt/x", create=True):
        pass
    assert not (tmp_path / "would-be-created").exists()


def test_a_file_on_the_way_is_refused(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "mnt" / "file").write_text("x")
    with pytest.raises(UnsafePath, match="not a directory"), open_target(root, "/mnt/file/sub", create=True):
        pass


def test_proc_magic_links_are_not_followed(tmp_path: Path) -> None:
    """A container's ``/proc`` holds links to the host's files (``/proc/1/root``): never followed either."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "proc").symlink_to("/proc")
    with pytest.raises(UnsafePath), open_target(root, "/proc/1/root/etc", create=True):
        pass


@pytest.mark.parametrize("dst", ["/mnt/../..", "/mnt/./x", "/mnt//x"])
def test_dot_components_are_refused_even_unvalidated(layout: tuple[Path, Path], dst: str) -> None:
    root, _ = layout
    with pytest.raises(UnsafePath, match="refusing path component"), open_target(root, dst, create=True):
        pass


def test_missing_destination_without_create(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    with open_target(root, "/mnt/none/deeper", create=False) as t:
        assert not t.exists and not t.is_mountpoint()
    assert not (root / "mnt/none").exists()


def test_missing_root_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath, match="VPS root"), open_target(tmp_path / "nope", "/mnt", create=True):
        pass


@needs_root
def test_mountpoint_detection_and_mount_through_the_descriptor(layout: tuple[Path, Path], tmp_path: Path) -> None:
    """mount(8) given ``/proc/<pid>/fd/<n>`` mounts on exactly the opened directory; a swap made afterwards (the
    directory renamed and replaced by a symlink to the host) does not redirect it."""
    root, host = layout
    source = tmp_path / "source"
    source.mkdir()
    (source / "data").write_text("dataset\n")
    try:
        with open_target(root, "/mnt/x", create=True) as t:
            # the container swaps the checked directory for a symlink between the check and the mount
            os.rename(root / "mnt" / "x", root / "mnt" / "moved")
            (root / "mnt" / "x").symlink_to(host)
            subprocess.run(["mount", "--no-canonicalize", "--bind", str(source), t.direct()], check=True)
        assert (root / "mnt" / "moved" / "data").read_text() == "dataset\n"  # landed on the opened directory
        host_unchanged(host)
        with open_target(root, "/mnt/moved", create=False) as t:
            assert t.is_mountpoint()
            assert t.fd is not None and mount_id(t.fd) != mount_id(t.parent_fd)
    finally:
        unmount_below(tmp_path)
    assert not host.is_mount()
