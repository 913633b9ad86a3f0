"""The zfs/zpool dispatcher of vpsadmind.testing.zfssplit: its routing table against every command shape the
daemon issues, the merging of listings, and an audit that runs the real driver through the dispatcher on a fake
pool and checks where each recorded command line went."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpsadmind import system
from vpsadmind.testing.fakezfs.resume import encode_token
from vpsadmind.testing.services import unavailable, zfs_fuse_problem
from vpsadmind.testing.zfspool import unique_pool_name
from vpsadmind.testing.zfssplit import (
    Captured,
    SplitZfs,
    create_fake_pool,
    destroy_fake_pool,
    fake_run,
    fake_state,
    merge_outputs,
    route,
)
from vpsadmind.zfs.driver import Zfs
from vpsadmind.zfs.errors import DatasetNotFound, ZfsError

FAKE = ("fk", "fk2")

# Every command line the driver (vpsadmind/zfs/driver.py, capabilities.py) and its callers (handlers, storage
# reporter, integrity, mounts, TempPool) build, with P for the pool. Each must go wherever P lives.
ZFS_SHAPES = [
    ["list", "-H", "-o", "name", "P/a"],                                                   # exists
    ["list", "-H", "-o", "name", "P/a@2026-01-02T03:04:05"],                               # exists (snapshot)
    ["get", "-H", "-p", "-o", "name,property,value,source", "quota,compression", "P/a"],   # get
    ["get", "-H", "-p", "-o", "name,property,value,source", "-r", "mounted", "P/a"],       # get recursive
    ["get", "-H", "-p", "-o", "name,property,value,source", "-d", "1", "all", "P/a"],      # get depth, read_props
    ["get", "-H", "-p", "-o", "name,property,value,source", "org.vpsadmin:transaction", "P/a@1", "P/a@2"],
    ["list", "-H", "-o", "name", "-t", "filesystem", "-r", "P/a"],                          # children
    ["list", "-H", "-o", "name", "-t", "filesystem", "-d", "1", "P/a"],
    ["get", "-H", "-p", "-o", "name,property,value", "-r", "-d", "1", "guid,createtxg", "P/a"],   # snapshots
    ["get", "-H", "-p", "-t", "snapshot", "-o", "name,property,value", "-r", "-d", "1", "guid,createtxg", "P/a"],
    ["create", "P/a"],
    ["create", "-p", "-o", "quota=10M", "-o", "org.vpsadmin:x=y", "P/a/b"],
    ["destroy", "P/a"],
    ["destroy", "-r", "P/a.rollback"],
    ["destroy", "P/a@2026-01-02T03:04:05"],
    ["snapshot", "-o", "org.vpsadmin:transaction=12", "P/a@2026-01-02T03:04:05"],
    ["snapshot", "P/a@x", "P/b@x"],                                                         # multi_snapshot
    ["rename", "P/a@x", "P/a@y"],
    ["rename", "P/a.rollback", "P/a"],
    ["rename", "-r", "P/a@x", "@y"],                                                        # short form
    ["get", "-H", "-o", "name,value", "-r", "mounted", "P/a"],                             # _mounted_below
    ["unmount", "P/a"],
    ["mount", "P/a"],
    ["clone", "-o", "mountpoint=/x", "-o", "readonly=on", "P/a@s", "P/vpsadmin/mount/5.snapshot"],
    ["promote", "P/backup/1/tree.0/branch-b.1"],
    ["rollback", "P/a@s"],
    ["rollback", "-r", "P/a@s"],
    ["set", "quota=10M", "P/a"],
    ["set", "quota=10M", "compression=on", "P/a"],                                          # multi_set
    ["inherit", "compression", "P/a"],
    ["hold", "vpsadmind-transfer-7", "P/a@1", "P/a@2"],
    ["release", "vpsadmind-transfer-7", "P/a@1"],
    ["get", "-H", "-p", "-o", "value", "userrefs", "P/a@1"],                                # holds
    ["send", "P/a@1"],
    ["send", "-I", "P/a@1", "P/a@2"],
    ["send", "-i", "P/a@1", "P/a@2"],
    ["send", "-I", "@1", "P/a@2"],
    ["recv", "-F", "P/b"],
    ["recv", "-F", "-s", "P/b"],
    ["recv", "-A", "P/b"],
    ["receive", "-u", "-e", "P/b"],
    ["get", "-H", "-o", "value", "receive_resume_token", "P/b"],
    ["get", "-H", "-p", "-o", "name,value", "guid", "P/a@1", "P/a@2"],                     # guids
    ["get", "-Hrp", "-t", "filesystem", "-o", "name,property,value", "used,referenced,available", "P/vz"],
    ["get", "-Hrp", "-o", "name,property,value", "used,referenced,available", "P/vz"],     # usage, zfs-fuse
    ["list", "P/a", "-H"],                                                                  # option after operand
    ["list", "-d1", "-Ho", "name", "P/a"],                                                  # attached values
    ["holds", "P/a@1"],
]
ZPOOL_SHAPES = [
    ["create", "-m", "/tmp/x/mnt", "P", "/tmp/x/vdev"],
    ["create", "-f", "-O", "compression=on", "-m", "/tmp/x/mnt", "P", "/tmp/x/vdev"],
    ["destroy", "P"],
    ["destroy", "-f", "P"],
    ["list", "-H", "-o", "name", "P"],
    ["get", "-H", "-o", "value", "size", "P"],
    ["status", "P"],
    ["set", "comment=x", "P"],
    ["export", "P"],
    ["scrub", "P"],
]


def _fill(shape: list[str], pool: str) -> list[str]:
    return [w.replace("P", pool, 1) if w == "P" or w.startswith("P/") else w for w in shape]


@pytest.mark.parametrize("shape", ZFS_SHAPES, ids=lambda s: " ".join(s[:3]))
def test_zfs_shapes_go_where_their_pool_is(shape: list[str]) -> None:
    fake_args, real_args = _fill(shape, "fk"), _fill(shape, "tank")
    assert route("zfs", fake_args, FAKE).target == "fake"
    assert route("zfs", fake_args, FAKE).fake_args == tuple(fake_args)
    assert route("zfs", real_args, FAKE).target == "real"
    assert route("zfs", real_args, FAKE).real_args == tuple(real_args)
    # a fake pool whose name is a prefix of the real one's, or the other way round, changes nothing
    assert route("zfs", _fill(shape, "fkx"), FAKE).target == "real"
    assert route("zfs", _fill(shape, "f"), FAKE).target == "real"


@pytest.mark.parametrize("shape", ZPOOL_SHAPES, ids=lambda s: " ".join(s[:2]))
def test_zpool_shapes_go_where_their_pool_is(shape: list[str]) -> None:
    assert route("zpool", _fill(shape, "fk"), FAKE).target == "fake"
    assert route("zpool", _fill(shape, "tank"), FAKE).target == "real"


@pytest.mark.parametrize(("program", "args"), [
    ("zfs", []),                                                            # the capability probe's usage text
    ("zfs", ["holds", "vpsadmind_probe_nonexistent_pool/probe@probe"]),
    ("zfs", ["receive", "-u", "-e", "vpsadmind_probe_nonexistent_pool/probe"]),
    ("zfs", ["upgrade"]),
    ("zfs", ["upgrade", "-v"]),
    ("zpool", ["upgrade", "-v"]),
    ("zfs", ["create"]),                                                    # a usage error is the real one's
    ("zfs", ["hold", "fk", "tank/a@1"]),                                    # the tag is no dataset
    ("zfs", ["set", "org.x:y=fk/a", "tank/a"]),                             # nor is a value
    ("zfs", ["send", "-i", "fk", "tank/a@2"]),                              # a short base is relative
    ("zpool", ["create", "-m", "/fk", "tank", "fk"]),                       # vdevs are no pools
    ("zpool", ["iostat", "5"]),
])
def test_real_only(program: str, args: list[str]) -> None:
    assert route(program, args, FAKE).target == "real"


@pytest.mark.parametrize(("program", "args"), [
    ("zfs", ["list"]), ("zfs", ["list", "-H", "-t", "all", "-o", "name"]), ("zfs", ["get", "all"]),
    ("zfs", ["get", "-H", "-p", "-r", "-o", "name,value", "userrefs"]), ("zfs", ["mount"]), ("zfs", ["holds"]),
    ("zpool", ["list"]), ("zpool", ["list", "-H", "-o", "name"]), ("zpool", ["status"]), ("zpool", ["get", "all"]),
    ("zpool", ["history"]),
])
def test_listings_without_operands_run_on_both(program: str, args: list[str]) -> None:
    r = route(program, args, FAKE)
    assert (r.target, r.real_args, r.fake_args) == ("both", tuple(args), tuple(args))


def test_mixed_listings_are_split_per_side() -> None:
    r = route("zfs", ["get", "-H", "-p", "-o", "name,value", "guid", "tank/a@1", "fk/b@1", "fk2/c@1"], FAKE)
    assert r.target == "split"
    assert r.real_args == ("get", "-H", "-p", "-o", "name,value", "guid", "tank/a@1")
    assert r.fake_args == ("get", "-H", "-p", "-o", "name,value", "guid", "fk/b@1", "fk2/c@1")
    r = route("zpool", ["list", "-H", "fk", "tank"], FAKE)
    assert (r.target, r.real_args, r.fake_args) == ("split", ("list", "-H", "tank"), ("list", "-H", "fk"))


@pytest.mark.parametrize(("program", "args"), [
    ("zfs", ["rename", "fk/a", "tank/a"]),
    ("zfs", ["clone", "fk/a@1", "tank/c"]),
    ("zfs", ["send", "-I", "tank/a@1", "fk/a@2"]),
    ("zfs", ["destroy", "fk/a", "tank/b"]),
    ("zfs", ["snapshot", "tank/a@x", "fk/a@x"]),
    ("zfs", ["hold", "t", "tank/a@1", "fk/a@1"]),
    ("zfs", ["mount", "-a"]), ("zfs", ["unmount", "-a"]), ("zfs", ["umount", "-a"]), ("zfs", ["share", "-a"]),
    ("zfs", ["upgrade", "-a"]), ("zpool", ["upgrade", "-a"]),
])
def test_refused(program: str, args: list[str]) -> None:
    r = route(program, args, FAKE)
    assert r.target == "refuse" and r.reason


def test_resume_tokens_go_to_the_pool_they_name() -> None:
    fields = {"toname": "fk2/a@1", "object": 1, "offset": 0, "bytes": 10, "toguid": 5, "fz_props": False,
              "fz_prefix": ""}
    assert route("zfs", ["send", "-t", encode_token(fields)], FAKE).target == "fake"
    assert route("zfs", ["send", "-t", encode_token({**fields, "toname": "tank/a@1"})], FAKE).target == "real"
    assert route("zfs", ["send", "-t", "1-abc-10-789c0300000000"], FAKE).target == "real"   # not ours
    assert route("zfs", ["send", "-t", "garbage"], FAKE).target == "real"


def test_paths_go_by_the_fake_mount_above_them() -> None:
    mounts = {"/mnt/fk": "fk", "/mnt/fk/a": "fk/a"}

    def resolve(path: str) -> str | None:
        hits = [name for mp, name in mounts.items() if path == mp or path.startswith(mp + "/")]
        return max(hits, key=len).split("/")[0] if hits else None

    assert route("zfs", ["unmount", "/mnt/fk/a"], FAKE, resolve_path=resolve).target == "fake"
    assert route("zfs", ["unmount", "/mnt/fk/a/deep"], FAKE, resolve_path=resolve).target == "fake"
    assert route("zfs", ["unmount", "/mnt/fkx"], FAKE, resolve_path=resolve).target == "real"
    assert route("zfs", ["unmount", "/srv/tank"], FAKE, resolve_path=resolve).target == "real"


# -- merging ----------------------------------------------------------------------------------------------------

REAL_TABLE = ("NAME        USED  AVAIL  REFER  MOUNTPOINT\n"
              "tank        1.07M  727M   128K  /tank\n"
              "tank/a       232K  256M   232K  /tank/a\n")
FAKE_TABLE = ("NAME                 USED  AVAIL  REFER  MOUNTPOINT\n"
              "fk                   336K   218M   112K  /srv/fake/mnt/fk\n"
              "fk/a-long-name       112K   1.5G   112K  /srv/fake/mnt/fk/a-long-name\n")


def test_merged_table_has_one_header_and_aligned_columns() -> None:
    real = Captured(0, REAL_TABLE.replace("tank        1.07M", "tank       1.07M"), "")
    out = merge_outputs("zfs", ["list"], real, Captured(0, FAKE_TABLE, ""))
    lines = out.stdout.splitlines()
    assert (out.rc, out.stderr) == (0, "")
    assert [line.split()[0] for line in lines] == ["NAME", "tank", "tank/a", "fk", "fk/a-long-name"]
    for column in ("USED", "AVAIL", "REFER"):   # numbers stay right-aligned under their header
        end = lines[0].index(column) + len(column)
        assert all(line[end - 1] != " " and (len(line) == end or line[end] == " ") for line in lines), column
    start = lines[0].index("MOUNTPOINT")        # the last column is left-aligned, no trailing blanks
    assert all(line[start] == "/" for line in lines[1:]) and all(line == line.rstrip() for line in lines)


def test_merged_scripted_output_is_real_then_fake_and_empty_notices_go() -> None:
    out = merge_outputs("zpool", ["list", "-H", "-o", "name"], Captured(0, "tank\n", ""),
                        Captured(0, "no pools available\n", ""))
    assert out == Captured(0, "tank\n", "")
    out = merge_outputs("zfs", ["list", "-H", "-o", "name"], Captured(0, "", ""),
                        Captured(0, "fk\nfk/a\n", "no datasets available\n"))
    assert out == Captured(0, "fk\nfk/a\n", "")


def test_nothing_anywhere_reads_like_the_real_zfs() -> None:
    real = Captured(0, "no datasets available\n", "")
    out = merge_outputs("zfs", ["list"], real, Captured(0, "NAME  USED  AVAIL  REFER  MOUNTPOINT\n",
                                                        "no datasets available\n"))
    assert out == real


def test_merged_exit_status_and_errors() -> None:
    real = Captured(1, "", "cannot open 'tank/x@1': dataset does not exist\n")
    fake = Captured(0, "fk/a@1\t17\n", "")
    out = merge_outputs("zfs", ["get", "-H", "-p", "-o", "name,value", "guid", "tank/x@1"], real, fake)
    assert out == Captured(1, "fk/a@1\t17\n", real.stderr)
    assert merge_outputs("zfs", ["list"], Captured(0, "", ""), Captured(2, "", "x\n")).rc == 2


def test_merged_zpool_status_keeps_one_block_per_pool() -> None:
    real = Captured(0, "  pool: tank\n state: ONLINE\n\nerrors: No known data errors\n", "")
    fake = Captured(0, "  pool: fk\n state: ONLINE\n\nerrors: No known data errors", "")
    out = merge_outputs("zpool", ["status"], real, fake)
    assert out.stdout == real.stdout + "\n" + fake.stdout + "\n"


# -- the installed dispatcher and the real driver -------------------------------------------------------------

@pytest.fixture
def split(tmp_path: Path) -> Iterator[SplitZfs]:
    pools = [unique_pool_name("fz"), unique_pool_name("fz")]
    installed = SplitZfs.install(tmp_path / "bin", tmp_path / "fz", pools)
    for pool in pools:
        create_fake_pool(installed.fake_root, pool)
    try:
        yield installed
    finally:
        for pool in pools:
            destroy_fake_pool(installed.fake_root, pool)


def _run(split: SplitZfs, *args: str, program: str = "zfs") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(split.zfs if program == "zfs" else split.zpool), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_install_refuses_names_of_real_pools(tmp_path: Path) -> None:
    zpool = tmp_path / "zpool"
    zpool.write_text("#!/bin/sh\nprintf 'tank\\nvz\\n'\n")
    zpool.chmod(0o755)
    with pytest.raises(ValueError, match="taken by real pools: vz"):
        SplitZfs.install(tmp_path / "bin", tmp_path / "fz", ["fk", "vz"], real_zpool=str(zpool))
    with pytest.raises(ValueError, match="not a pool name"):
        SplitZfs.install(tmp_path / "bin", tmp_path / "fz", ["-rf"], real_zpool=str(zpool))


def test_dispatcher_refuses_and_passes_streams(split: SplitZfs) -> None:
    a, b = split.fake_pools
    assert _run(split, "create", f"{a}/src").returncode == 0
    (split.fake_root / "mnt" / a / "src" / "f").write_bytes(b"x" * 100_000)
    assert _run(split, "snapshot", f"{a}/src@1").returncode == 0
    done = _run(split, "rename", f"{a}/src", "tank/src")
    assert done.returncode == 1 and done.stderr.startswith("zfssplit: 'zfs rename' names fake pools")
    assert _run(split, "mount", "-a").returncode == 1
    # the stream goes through the dispatcher on both ends untouched: the received copy has the same guid
    pipe = subprocess.run(f"{split.zfs} send {a}/src@1 | {split.zfs} recv {b}/dst", shell=True,  # noqa: S602
                          capture_output=True, text=True, timeout=60, check=False)
    assert pipe.returncode == 0, pipe.stderr
    state = fake_state(split.fake_root)
    assert state[b]["datasets"][f"{b}/dst"]["snapshots"]["1"]["guid"] == \
        state[a]["datasets"][f"{a}/src"]["snapshots"]["1"]["guid"]
    assert state[b]["datasets"][f"{b}/dst"]["contents"] == state[a]["datasets"][f"{a}/src"]["contents"]
    names = _run(split, "list", "-H", "-o", "name", program="zpool").stdout.split()
    assert set(split.fake_pools) <= set(names)
    fake_run(split.fake_root, "zfs", "destroy", "-r", f"{b}/dst")


def test_fake_state_sees_what_changes(split: SplitZfs) -> None:
    a = split.fake_pools[0]
    _run(split, "create", f"{a}/x")
    before = fake_state(split.fake_root)
    assert fake_state(split.fake_root) == before
    (split.fake_root / "mnt" / a / "x" / "file").write_text("1")
    assert fake_state(split.fake_root) != before
    assert fake_state(split.fake_root, contents=False) == fake_state(split.fake_root, contents=False)
    _run(split, "snapshot", f"{a}/x@s")
    with_snap = fake_state(split.fake_root)
    _run(split, "hold", "t", f"{a}/x@s")
    assert fake_state(split.fake_root) != with_snap
    _run(split, "release", "t", f"{a}/x@s")
    assert fake_state(split.fake_root) == with_snap
    assert fake_state(split.fake_root, ["nosuchpool"]) == {"nosuchpool": None}


async def test_driver_through_the_dispatcher_audit(split: SplitZfs) -> None:
    """Every driver method, run through the dispatcher on a fake pool: each recorded command line routes to the
    fake, and the probe (which goes to the real zfs) finds the same capabilities as the real zfs itself."""
    problem = zfs_fuse_problem()
    if problem is not None:
        unavailable(f"the probe needs the real zfs: {problem}")  # a failure under CI=true
    zfs = Zfs(zfs=str(split.zfs), zpool=str(split.zpool), timeout=60)
    caps = await zfs.probe()
    assert caps == await Zfs(zfs=split.real_zfs).probe()
    a, b = split.fake_pools
    with system.record_calls() as log:
        await _exercise(zfs, a, b)
    assert len(log.calls) > 30
    for argv in log.calls:
        program = Path(argv[0]).name
        assert route(program, argv[1:], split.fake_pools).target in ("fake", "both"), argv
    with pytest.raises(ZfsError, match="zfssplit: 'zfs rename' names fake pools"):
        await zfs.rename(f"{a}/vz", "tank/vz")
    assert fake_state(split.fake_root)[a]["datasets"][f"{a}/vz"]["snapshots"] == {}


async def _exercise(zfs: Zfs, a: str, b: str) -> None:
    ds = f"{a}/vz/101"
    await zfs.create(ds, properties={"quota": "10M"}, parents=True)
    assert await zfs.exists(ds) and await zfs.children(f"{a}/vz") == [ds]
    assert (await zfs.get(ds, ["quota"]))[ds]["quota"].value == str(10 * 1024 * 1024)
    await zfs.set(ds, {"compression": "on", "atime": "off"})
    await zfs.inherit(ds, "compression")
    await zfs.snapshot([f"{ds}@s1"], properties={"org.vpsadmin:transaction": "1"})
    await zfs.snapshot([f"{ds}@s2"])
    await zfs.hold("tag", f"{ds}@s1", f"{ds}@s2")
    assert await zfs.holds(f"{ds}@s1") == 1
    await zfs.release("tag", f"{ds}@s1", f"{ds}@s2")
    assert [s.short for s in await zfs.snapshots(ds)] == ["s1", "s2"]
    assert set(await zfs.guids([f"{ds}@s1", f"{ds}@nope"])) == {f"{ds}@s1"}
    await zfs.rename(f"{ds}@s2", f"{ds}@s3")
    await zfs.rollback(f"{ds}@s1", recursive=True)
    await zfs.clone(f"{ds}@s1", f"{a}/vz/clone")
    await zfs.promote(f"{a}/vz/clone")
    await zfs.promote(ds)
    await zfs.destroy(f"{a}/vz/clone")
    await zfs.unmount(ds)
    assert await zfs.mountpoint(ds) is None
    await zfs.mount(ds)
    await zfs.rename(ds, f"{a}/vz/102")
    await _stream(zfs, f"{a}/vz/102@s1", f"{b}/copy")
    assert f"{b}/copy" in await zfs.usage(b)
    assert a in await zfs.pools() and b in await zfs.pools()
    assert await zfs.prepare_receive(f"{b}/copy") is False
    assert await zfs.resume_token(f"{b}/copy") is None
    await zfs.abort_resumable(f"{b}/copy")
    await zfs.destroy(f"{a}/vz/102", recursive=True)
    await zfs.destroy(f"{b}/copy", recursive=True)
    with pytest.raises(DatasetNotFound):
        await zfs.destroy(f"{a}/vz/102")


async def _stream(zfs: Zfs, snapshot: str, target: str) -> None:
    send = await system.spawn(zfs.send_argv(snapshot), stdout=asyncio.subprocess.PIPE)
    assert send.stdout is not None
    data = await send.stdout.read()
    await send.wait()
    recv = await system.spawn(zfs.recv_argv(target), stdin=asyncio.subprocess.PIPE)
    assert recv.stdin is not None
    recv.stdin.write(data)
    await recv.stdin.drain()
    recv.stdin.close()
    assert await recv.wait() == 0
