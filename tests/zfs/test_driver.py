"""The ZFS driver against real pools (zfs-fuse here): every method, and a typed error for every real failure."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from vpsadmind.system import record_calls
from vpsadmind.testing.services import unavailable
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.zfs import (
    AlreadyMounted,
    Capabilities,
    DaemonDown,
    DatasetBusy,
    DatasetExists,
    DatasetHasChildren,
    DatasetNotFound,
    HoldExists,
    InvalidName,
    InvalidProperty,
    MoreRecentSnapshots,
    NoSuchHold,
    NotMounted,
    ParentNotFound,
    PoolNotFound,
    Prop,
    SnapshotIsCloned,
    SnapshotIsHeld,
    WrongType,
    Zfs,
    ZfsError,
    ZfsTimeout,
)
from vpsadmind.zfs.capabilities import detect_fuse, parse_usage

pytestmark = pytest.mark.timeout(60)


def write(pool: TempPool, rel: str, text: str) -> Path:
    path = Path(pool.mountpoint, rel)
    path.write_text(text)
    return path


# -- probe ---------------------------------------------------------------------------------------------------


async def test_probe_finds_the_zfs_fuse_dialect(zfs_pool: TempPool) -> None:
    caps = zfs_pool.zfs.caps
    assert "snapshot" in caps.commands and "send" in caps.commands
    assert {"-i", "-I", "-R", "-p"} <= caps.send_flags
    assert {"-F", "-d"} <= caps.recv_flags
    if not caps.fuse:
        unavailable("not zfs-fuse: the rest pins zfs-fuse 0.7.0's findings")  # CI=true runs on zfs-fuse
    assert caps == Capabilities(
        list_parsable=False, multi_snapshot=False, holds_listing=False, bookmarks=False,
        resumable_receive=False, send_flags=frozenset({"-D", "-I", "-R", "-i", "-p"}),
        recv_flags=frozenset({"-F", "-d", "-e", "-n", "-u", "-v"}), fuse=True, multi_set=False,
        get_types=False, commands=caps.commands)


def test_usage_parser_on_openzfs_text() -> None:
    text = (
        "usage: zfs command args ...\n"
        "\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...\n"
        "\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...\n"
        "\t    [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...\n"
        "\tset <property=value> ... <filesystem|volume|snapshot> ...\n"
        "\tget [-rHp] [-d max] [-o \"all\" | field[,...]]\n"
        "\t    [-t type[,...]] [-s source[,...]]\n"
        "\t    <\"all\" | property[,...]> [filesystem|volume|snapshot|bookmark] ...\n"
        "\tsend [-DnPpRvLecwhb] [-[i|I] snapshot] <snapshot>\n"
        "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n"
        "\t    <filesystem|volume|snapshot>\n"
        "\treceive -A <filesystem|volume>\n"
        "\tbookmark <snapshot|bookmark> <newbookmark>\n"
    )
    usage = parse_usage(text)
    assert usage.takes_many("snapshot", "snap")
    assert usage.takes_many("set", "property=value")
    assert "-p" in usage.flags("list") and "-t" in usage.flags("list")
    assert "-t" in usage.flags("get")
    assert {"-c", "-L", "-e", "-w", "-i", "-I"} <= usage.flags("send")
    assert {"-s", "-o", "-x", "-u", "-A"} <= usage.flags("receive")
    assert "bookmark" in usage.commands


def test_detect_fuse(tmp_path: Path) -> None:
    dev = tmp_path / "zfs"
    dev.write_text("")
    assert not detect_fuse(socket=str(tmp_path / "none"), dev_zfs=str(dev))
    assert detect_fuse(socket=str(dev), dev_zfs=str(tmp_path / "none"))


def fake_zfs(tmp_path: Path, body: str) -> str:
    script = tmp_path / "zfs"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


async def test_daemon_down_is_typed(tmp_path: Path) -> None:
    zfs = Zfs(zfs=fake_zfs(tmp_path, "echo 'connect: No such file or directory' >&2\n"
                                     "echo 'Please make sure that the zfs-fuse daemon is running.' >&2\n"
                                     "echo 'internal error: failed to initialize ZFS library' >&2; exit 1"))
    with pytest.raises(DaemonDown):
        await zfs.probe()
    with pytest.raises(DaemonDown) as info:
        await zfs.exists("pool/a")
    assert info.value.exitstatus == 1
    assert info.value.argv[1:] == ["list", "-H", "-o", "name", "pool/a"]


async def test_timeout_and_missing_binary(tmp_path: Path) -> None:
    zfs = Zfs(zfs=fake_zfs(tmp_path, "exec sleep 5"), timeout=0.2)
    with pytest.raises(ZfsTimeout):
        await zfs.exists("pool/a")
    with pytest.raises(ZfsError, match="cannot run"):
        await Zfs(zfs=str(tmp_path / "nonexistent")).exists("pool/a")


# -- queries -------------------------------------------------------------------------------------------------


async def test_exists(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    assert await zfs.exists(p)
    assert not await zfs.exists(f"{p}/missing")
    await zfs.create(f"{p}/a")
    await zfs.snapshot([f"{p}/a@s1"])
    assert await zfs.exists(f"{p}/a")
    assert await zfs.exists(f"{p}/a@s1")
    assert not await zfs.exists(f"{p}/a@s2")


async def test_get_exact_values_and_sources(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a", properties={"quota": "200M", "vpsadmin:foo": "a b=c"})
    await zfs.create(f"{p}/a/b")
    got = await zfs.get([f"{p}/a", f"{p}/a/b"], ["quota", "vpsadmin:foo", "vpsadmin:unset", "atime"])
    assert got[f"{p}/a"]["quota"].value == str(200 * 1024 * 1024)
    assert got[f"{p}/a"]["quota"].source == "local"
    assert got[f"{p}/a"]["vpsadmin:foo"].value == "a b=c"
    assert got[f"{p}/a/b"]["vpsadmin:foo"].source == f"inherited from {p}/a"
    assert got[f"{p}/a"]["vpsadmin:unset"].value == "-"
    assert got[f"{p}/a/b"]["quota"].source == "default"
    rec = await zfs.get(f"{p}/a", ["used"], recursive=True)
    assert set(rec) == {f"{p}/a", f"{p}/a/b"}
    assert (await zfs.get(f"{p}/a", ["used"], depth=0)).keys() == {f"{p}/a"}
    assert await zfs.get([], ["used"]) == {}
    with pytest.raises(DatasetNotFound):
        await zfs.get(f"{p}/missing", ["used"])
    with pytest.raises(InvalidProperty):
        await zfs.get(f"{p}/a", ["written"])  # not in zfs-fuse; a native name, so it reaches zfs


async def test_children(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    for name in ("a", "a/b", "a/b/c", "a/d", "e"):
        await zfs.create(f"{p}/{name}")
    await zfs.snapshot([f"{p}/a/b@s"])
    assert await zfs.children(f"{p}/a") == [f"{p}/a/b", f"{p}/a/b/c", f"{p}/a/d"]
    assert await zfs.children(f"{p}/a", recursive=False) == [f"{p}/a/b", f"{p}/a/d"]
    assert await zfs.children(f"{p}/e") == []
    with pytest.raises(DatasetNotFound):
        await zfs.children(f"{p}/missing")


async def test_snapshots_ordered_by_createtxg(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a/b", parents=True)
    for short in ("zz", "aa", "mm"):
        await zfs.snapshot([f"{p}/a@{short}"])
    await zfs.snapshot([f"{p}/a/b@child"])
    snaps = await zfs.snapshots(f"{p}/a")
    assert [s.short for s in snaps] == ["zz", "aa", "mm"]
    assert all(s.dataset == f"{p}/a" for s in snaps)
    assert snaps[0].createtxg < snaps[1].createtxg < snaps[2].createtxg
    assert len({s.guid for s in snaps}) == 3 and all(s.guid > 0 for s in snaps)
    assert [s.short for s in await zfs.snapshots(f"{p}/a/b")] == ["child"]
    assert await zfs.snapshots(p) == []
    with pytest.raises(DatasetNotFound):
        await zfs.snapshots(f"{p}/missing")


async def test_mountpoint(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    assert await zfs.mountpoint(f"{p}/a") == os.path.join(zfs_pool.mountpoint, "a")
    await zfs.unmount(f"{p}/a")
    assert await zfs.mountpoint(f"{p}/a") is None
    await zfs.mount(f"{p}/a")
    assert await zfs.mountpoint(f"{p}/a") == os.path.join(zfs_pool.mountpoint, "a")
    await zfs.create(f"{p}/none", properties={"mountpoint": "none"})
    assert await zfs.mountpoint(f"{p}/none") is None


# -- create / destroy ----------------------------------------------------------------------------------------


async def test_create(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/ct", properties={"quota": "100M", "compression": "on", "vpsadmin:foo": "bar"})
    got = (await zfs.get(f"{p}/ct", ["quota", "compression", "vpsadmin:foo"]))[f"{p}/ct"]
    assert (got["quota"].value, got["compression"].value, got["vpsadmin:foo"].value) == (
        str(100 * 1024 * 1024), "on", "bar")
    with pytest.raises(DatasetExists) as info:
        await zfs.create(f"{p}/ct")
    assert info.value.exitstatus == 1
    assert info.value.argv[-1] == f"{p}/ct"
    assert info.value.stderr.strip() == f"cannot create '{p}/ct': dataset already exists"
    assert info.value.name == f"{p}/ct" and info.value.verb == "create"
    assert info.value.output["zfs_error"] == "DatasetExists"
    with pytest.raises(ParentNotFound):
        await zfs.create(f"{p}/x/y/z")
    await zfs.create(f"{p}/x/y/z", parents=True)
    assert await zfs.exists(f"{p}/x/y")
    with pytest.raises(PoolNotFound):
        await zfs.create("vtnosuchpool0000/a")
    with pytest.raises(InvalidProperty):
        await zfs.create(f"{p}/bad", properties={"quota": "lots"})


async def test_destroy(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    with pytest.raises(DatasetNotFound):
        await zfs.destroy(f"{p}/missing")
    with pytest.raises(DatasetNotFound):
        await zfs.destroy(f"{p}/missing@s")
    await zfs.destroy(f"{p}/missing", missing_ok=True)
    await zfs.destroy(f"{p}/missing@s", missing_ok=True)
    await zfs.create(f"{p}/a/b", parents=True)
    await zfs.snapshot([f"{p}/a@s"])
    with pytest.raises(DatasetHasChildren):
        await zfs.destroy(f"{p}/a")
    await zfs.destroy(f"{p}/a@s")
    assert not await zfs.exists(f"{p}/a@s")
    await zfs.destroy(f"{p}/a", recursive=True)
    assert not await zfs.exists(f"{p}/a")


async def test_destroy_retries_busy_on_fuse(zfs_pool: TempPool) -> None:
    """zfs-fuse refuses the first destroy right after create ("dataset is busy"): 20 rounds all succeed."""
    zfs, p = zfs_pool.zfs, zfs_pool.name
    with record_calls() as log:
        for i in range(20):
            await zfs.create(f"{p}/b{i}")
            await zfs.destroy(f"{p}/b{i}")
    assert await zfs.children(p) == []
    retries = log.count("zfs", subcommand="destroy") - 20
    assert 0 <= retries <= 20 * zfs.busy_retries
    if zfs.caps.fuse:
        assert retries >= 1  # the busy case really happened and was handled


async def test_held_snapshot_off_fuse_is_one_call(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    strict = Zfs(caps=Capabilities(fuse=False))
    await zfs.create(f"{p}/a")
    await zfs.snapshot([f"{p}/a@s"])
    await zfs.hold("keep", f"{p}/a@s")
    with record_calls() as log, pytest.raises(SnapshotIsHeld):
        await strict.destroy(f"{p}/a@s")
    assert log.count("zfs", subcommand="destroy") == 1


async def test_destroy_held_snapshot_is_typed_and_not_retried(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.snapshot([f"{p}/a@h"])
    await zfs.hold("vpsadmin", f"{p}/a@h")
    started = time.monotonic()
    with record_calls() as log, pytest.raises(SnapshotIsHeld) as info:
        await zfs.destroy(f"{p}/a@h")
    assert time.monotonic() - started < 1.0
    assert log.count("zfs", subcommand="destroy") == 1
    assert "dataset is busy" in info.value.stderr and "1 user hold" in str(info.value)
    await zfs.release("vpsadmin", f"{p}/a@h")
    await zfs.destroy(f"{p}/a@h")


async def test_destroy_cloned_snapshot(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.snapshot([f"{p}/a@s"])
    await zfs.clone(f"{p}/a@s", f"{p}/c")
    with pytest.raises(SnapshotIsCloned):
        await zfs.destroy(f"{p}/a@s")


# -- snapshots -----------------------------------------------------------------------------------------------


async def test_snapshot_group_and_properties(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    for name in ("a", "b", "c"):
        await zfs.create(f"{p}/{name}")
    await zfs.snapshot([f"{p}/{n}@g" for n in "abc"], properties={"vpsadmin:snapid": "7"})
    for n in "abc":
        got = await zfs.get(f"{p}/{n}@g", ["vpsadmin:snapid"])
        assert got[f"{p}/{n}@g"]["vpsadmin:snapid"] == Prop("7", "local")
    with pytest.raises(DatasetExists):
        await zfs.snapshot([f"{p}/a@g"])
    with pytest.raises(InvalidName, match="named twice"):
        await zfs.snapshot([f"{p}/a@x", f"{p}/a@x"])
    await zfs.snapshot([])


async def test_group_snapshot_is_all_or_nothing(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.create(f"{p}/b")
    with pytest.raises(DatasetNotFound):
        await zfs.snapshot([f"{p}/a@g", f"{p}/b@g", f"{p}/missing@g"])
    assert await zfs.snapshots(f"{p}/a") == []
    assert await zfs.snapshots(f"{p}/b") == []


async def test_rollback(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    f = write(zfs_pool, "a/f", "one")
    await zfs.snapshot([f"{p}/a@s1"])
    f.write_text("two")
    await zfs.snapshot([f"{p}/a@s2"])
    f.write_text("three")
    await zfs.rollback(f"{p}/a@s2")
    assert f.read_text() == "two"
    with pytest.raises(MoreRecentSnapshots):
        await zfs.rollback(f"{p}/a@s1")
    await zfs.rollback(f"{p}/a@s1", recursive=True)
    assert f.read_text() == "one"
    assert [s.short for s in await zfs.snapshots(f"{p}/a")] == ["s1"]
    with pytest.raises(DatasetNotFound):
        await zfs.rollback(f"{p}/a@nosuch")


# -- rename / clone / promote --------------------------------------------------------------------------------


async def test_rename_mounted_filesystem(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/ct/sub", parents=True)
    write(zfs_pool, "ct/sub/f", "data")
    await zfs.snapshot([f"{p}/ct@s"])
    with record_calls() as log:
        await zfs.rename(f"{p}/ct", f"{p}/ct2")
    assert await zfs.mountpoint(f"{p}/ct2") == os.path.join(zfs_pool.mountpoint, "ct2")
    assert await zfs.mountpoint(f"{p}/ct2/sub") == os.path.join(zfs_pool.mountpoint, "ct2/sub")
    assert Path(zfs_pool.mountpoint, "ct2/sub/f").read_text() == "data"
    assert [s.name for s in await zfs.snapshots(f"{p}/ct2")] == [f"{p}/ct2@s"]
    assert not await zfs.exists(f"{p}/ct")
    if zfs.caps.fuse:  # get mounted, unmount, rename (again if still busy), mount x2
        subs = [c[1] for c in log.calls]
        assert subs[:3] == ["get", "unmount", "rename"] and subs[-2:] == ["mount", "mount"]
        assert set(subs[3:-2]) <= {"rename"}


async def test_rename_unmounted_filesystem_stays_unmounted(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a", properties={"canmount": "noauto"})
    await zfs.unmount(f"{p}/a")
    await zfs.rename(f"{p}/a", f"{p}/b")
    assert await zfs.exists(f"{p}/b")
    assert await zfs.mountpoint(f"{p}/b") is None


async def test_rename_unmounted_parent_with_mounted_children(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a", properties={"canmount": "noauto"})
    await zfs.unmount(f"{p}/a")
    await zfs.create(f"{p}/a/b/c", parents=True)
    await zfs.mount(f"{p}/a/b")  # created under an unmounted parent: make sure both children are mounted
    await zfs.mount(f"{p}/a/b/c")
    await zfs.rename(f"{p}/a", f"{p}/z")
    assert await zfs.mountpoint(f"{p}/z") is None
    assert await zfs.mountpoint(f"{p}/z/b") == os.path.join(zfs_pool.mountpoint, "z/b")
    assert await zfs.mountpoint(f"{p}/z/b/c") == os.path.join(zfs_pool.mountpoint, "z/b/c")


async def test_rename_failure_restores_mounts(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.create(f"{p}/b")
    with pytest.raises(DatasetExists):
        await zfs.rename(f"{p}/b", f"{p}/a")
    assert await zfs.mountpoint(f"{p}/b") == os.path.join(zfs_pool.mountpoint, "b")
    with pytest.raises(ParentNotFound):
        await zfs.rename(f"{p}/b", f"{p}/nopar/x")
    with pytest.raises(DatasetNotFound):
        await zfs.rename(f"{p}/missing", f"{p}/x")


async def test_busy_mount_is_typed_and_rename_restores_it(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    impatient = Zfs(caps=zfs.caps, busy_retries=2)
    await zfs.create(f"{p}/a")
    with open(os.path.join(zfs_pool.mountpoint, "a", "open-file"), "w") as fh:
        fh.write("keeps the mount busy")
        fh.flush()
        with pytest.raises(DatasetBusy) as info:
            await zfs.unmount(f"{p}/a")
        assert "busy" in info.value.stderr
        with pytest.raises(DatasetBusy):
            await impatient.rename(f"{p}/a", f"{p}/b")
        assert await zfs.mountpoint(f"{p}/a") == os.path.join(zfs_pool.mountpoint, "a")
        with pytest.raises(DatasetBusy):
            await impatient.destroy(f"{p}/a")
    await zfs.rename(f"{p}/a", f"{p}/b")
    await zfs.destroy(f"{p}/b")


async def test_rename_snapshot(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.snapshot([f"{p}/a@old"])
    await zfs.snapshot([f"{p}/a@other"])
    with record_calls() as log:
        await zfs.rename(f"{p}/a@old", f"{p}/a@new")
    assert log.count("zfs") == 1
    assert [s.short for s in await zfs.snapshots(f"{p}/a")] == ["new", "other"]
    with pytest.raises(DatasetExists):
        await zfs.rename(f"{p}/a@new", f"{p}/a@other")
    with pytest.raises(InvalidName):
        await zfs.rename(f"{p}/a@new", f"{p}/b")


async def test_clone_and_promote(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    write(zfs_pool, "a/f", "x")
    await zfs.snapshot([f"{p}/a@s1"])
    with pytest.raises(DatasetNotFound):
        await zfs.clone(f"{p}/a@missing", f"{p}/c")
    with pytest.raises(DatasetNotFound):
        await zfs.clone(f"{p}/missing@s", f"{p}/c")
    await zfs.clone(f"{p}/a@s1", f"{p}/c", properties={"vpsadmin:x": "1", "quota": "10M"})
    assert Path(zfs_pool.mountpoint, "c/f").read_text() == "x"
    assert (await zfs.get(f"{p}/c", ["origin"]))[f"{p}/c"]["origin"].value == f"{p}/a@s1"
    with pytest.raises(DatasetExists):
        await zfs.clone(f"{p}/a@s1", f"{p}/c")
    with pytest.raises(WrongType):
        await zfs.promote(f"{p}/a")
    await zfs.promote(f"{p}/c")
    assert [s.name for s in await zfs.snapshots(f"{p}/c")] == [f"{p}/c@s1"]
    assert (await zfs.get(f"{p}/a", ["origin"]))[f"{p}/a"]["origin"].value == f"{p}/c@s1"


# -- properties, mounts, holds, pools ------------------------------------------------------------------------


async def test_set_and_inherit(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a/b", parents=True)
    await zfs.set(f"{p}/a", {"atime": "off", "compression": "on", "vpsadmin:id": "5"})
    got = (await zfs.get(f"{p}/a/b", ["atime", "compression", "vpsadmin:id"]))[f"{p}/a/b"]
    assert {k: (v.value, v.source) for k, v in got.items()} == {
        "atime": ("off", f"inherited from {p}/a"), "compression": ("on", f"inherited from {p}/a"),
        "vpsadmin:id": ("5", f"inherited from {p}/a")}
    await zfs.set(f"{p}/a/b", {"vpsadmin:id": "6"})
    await zfs.inherit(f"{p}/a/b", "vpsadmin:id")
    assert (await zfs.get(f"{p}/a/b", ["vpsadmin:id"]))[f"{p}/a/b"]["vpsadmin:id"].value == "5"
    await zfs.set(f"{p}/a", {})
    with pytest.raises(InvalidProperty):
        await zfs.set(f"{p}/a", {"quota": "foo"})
    with pytest.raises(InvalidProperty):
        await zfs.set(f"{p}/a", {"nosuchprop": "1"})
    with pytest.raises(InvalidProperty):
        await zfs.inherit(f"{p}/a", "quota")
    with pytest.raises(DatasetNotFound):
        await zfs.set(f"{p}/missing", {"atime": "on"})


async def test_mount_and_unmount_are_idempotent(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.mount(f"{p}/a")
    await zfs.unmount(f"{p}/a")
    await zfs.unmount(f"{p}/a")
    with pytest.raises(NotMounted):
        await zfs.unmount(f"{p}/a", strict=True)
    await zfs.mount(f"{p}/a")
    with pytest.raises(AlreadyMounted):
        await zfs.mount(f"{p}/a", strict=True)
    with pytest.raises(DatasetNotFound):
        await zfs.mount(f"{p}/missing")


async def test_holds(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.snapshot([f"{p}/a@s"])
    assert await zfs.holds(f"{p}/a@s") == 0
    await zfs.hold("t1", f"{p}/a@s")
    await zfs.hold("t2", f"{p}/a@s")
    assert await zfs.holds(f"{p}/a@s") == 2
    with pytest.raises(HoldExists):
        await zfs.hold("t1", f"{p}/a@s")
    await zfs.release("t1", f"{p}/a@s")
    await zfs.release("t1", f"{p}/a@s")  # missing_ok by default
    with pytest.raises(NoSuchHold):
        await zfs.release("t1", f"{p}/a@s", missing_ok=False)
    assert await zfs.holds(f"{p}/a@s") == 1
    with pytest.raises(DatasetNotFound):
        await zfs.hold("t", f"{p}/a@missing")
    await zfs.release("t", f"{p}/a@missing")
    with pytest.raises(DatasetNotFound):
        await zfs.release("t", f"{p}/a@missing", missing_ok=False)


async def test_pools_and_usage(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    assert p in await zfs.pools()
    await zfs.create(f"{p}/a/b", parents=True)
    Path(zfs_pool.mountpoint, "a/b/f").write_bytes(os.urandom(2 * 1024 * 1024))
    await zfs.snapshot([f"{p}/a/b@s"])
    usage = await zfs.usage(f"{p}/a")
    assert set(usage) == {f"{p}/a", f"{p}/a/b"}
    assert set(usage[f"{p}/a/b"]) == {"used", "referenced", "available"}
    assert usage[f"{p}/a/b"]["referenced"] >= 2 * 1024 * 1024
    assert usage[f"{p}/a"]["used"] >= usage[f"{p}/a/b"]["used"]
    with pytest.raises(DatasetNotFound):
        await zfs.usage(f"{p}/missing")


# -- names are checked before anything runs ------------------------------------------------------------------

HOSTILE = ["-rf", "a/../b", "a b", "a\nb", "a@b@c", "x" * 300, "a/./b", "/a", "a//b", "a%b", "a;b"]


def _calls(zfs: Zfs, bad: str) -> list[Callable[[], Awaitable[Any]]]:
    ok = "vtok/a"
    return [
        lambda: zfs.exists(bad), lambda: zfs.get(bad, ["used"]), lambda: zfs.children(bad),
        lambda: zfs.snapshots(bad), lambda: zfs.mountpoint(bad), lambda: zfs.create(bad),
        lambda: zfs.destroy(bad), lambda: zfs.snapshot([bad]), lambda: zfs.snapshot([f"{ok}@s", bad]),
        lambda: zfs.rename(bad, ok), lambda: zfs.rename(ok, bad), lambda: zfs.clone(bad, ok),
        lambda: zfs.clone(f"{ok}@s", bad), lambda: zfs.promote(bad), lambda: zfs.rollback(bad),
        lambda: zfs.set(bad, {"atime": "on"}), lambda: zfs.inherit(bad, "atime"), lambda: zfs.mount(bad),
        lambda: zfs.unmount(bad), lambda: zfs.hold("t", bad), lambda: zfs.hold(bad, f"{ok}@s"),
        lambda: zfs.release("t", bad), lambda: zfs.holds(bad), lambda: zfs.usage(bad),
        lambda: zfs.get(ok, [bad]), lambda: zfs.set(ok, {bad: "1"}), lambda: zfs.inherit(ok, bad),
        lambda: zfs.create(ok, properties={bad: "1"}),
    ]


@pytest.mark.parametrize("bad", HOSTILE)
async def test_hostile_names_start_no_process(bad: str) -> None:
    zfs = Zfs(zfs="/nonexistent/zfs", caps=Capabilities(fuse=True))
    with record_calls() as log:
        for call in _calls(zfs, bad):
            with pytest.raises(InvalidName):
                await call()
    assert log.calls == []


@pytest.mark.parametrize("value", ["a\nb", "a\x00b", "x" * 8192])
async def test_hostile_values_start_no_process(value: str) -> None:
    zfs = Zfs(zfs="/nonexistent/zfs")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: zfs.set("vt/a", {"vpsadmin:x": value}),
        lambda: zfs.create("vt/a", properties={"vpsadmin:x": value}),
        lambda: zfs.snapshot(["vt/a@s"], properties={"vpsadmin:x": value}),
        lambda: zfs.clone("vt/a@s", "vt/b", properties={"vpsadmin:x": value}),
    ]
    with record_calls() as log:
        for call in calls:
            with pytest.raises(InvalidName):
                await call()
    assert log.calls == []


async def test_concurrent_operations_on_one_pool(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name

    async def worker(i: int) -> None:
        await zfs.create(f"{p}/w{i}")
        await zfs.snapshot([f"{p}/w{i}@s"])
        await zfs.destroy(f"{p}/w{i}", recursive=True)

    await asyncio.gather(*(worker(i) for i in range(6)))
    assert await zfs.children(p) == []
