"""Command budgets: the exact number of zfs/zpool processes each driver operation starts (as zfs-autobackup's
test_scaling counts ExecuteNode.run calls). A change that adds a command to a hot path fails here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from vpsadmind.system import CallLog, record_calls
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.zfs import Zfs

pytestmark = pytest.mark.timeout(60)

Call = Callable[[], Awaitable[object]]


def zfs_calls(log: CallLog) -> int:
    return log.count("zfs") + log.count("zpool")


def without_busy_retries(log: CallLog, subcommand: str) -> list[str]:
    """The subcommands run, with repeats of ``subcommand`` (busy retries on zfs-fuse, about 1 in 20 renames
    right after an unmount) folded into one; at most 2 repeats are tolerated."""
    subs = [argv[1] for argv in log.calls]
    repeats = sum(1 for a, b in zip(subs, subs[1:], strict=False) if a == b == subcommand)
    assert repeats <= 2, subs
    return [s for i, s in enumerate(subs) if not (i and s == subcommand and subs[i - 1] == subcommand)]


async def test_probe_budget() -> None:
    with record_calls() as log:
        caps = await Zfs().probe()
    assert zfs_calls(log) <= 3
    if caps.fuse:  # usage, receive -u -e, holds
        assert [c[1:2] for c in log.calls] == [[], ["receive"], ["holds"]]


async def test_create_is_one_call_with_properties(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    with record_calls() as log:
        await zfs.create(f"{p}/a", properties={"quota": "10M", "compression": "on", "vpsadmin:x": "1"})
    assert zfs_calls(log) == 1
    with record_calls() as log:
        await zfs.create(f"{p}/b/c/d", parents=True)
    assert zfs_calls(log) == 1


async def test_snapshot_of_one_dataset_is_one_call(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    with record_calls() as log:
        await zfs.snapshot([f"{p}/a@s"], properties={"vpsadmin:snapid": "1"})
    assert zfs_calls(log) == 1


@pytest.mark.parametrize("n", [1, 5])
async def test_group_snapshot_budget(zfs_pool: TempPool, n: int) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    for i in range(n):
        await zfs.create(f"{p}/d{i}")
    with record_calls() as log:
        await zfs.snapshot([f"{p}/d{i}@g" for i in range(n)])
    assert zfs_calls(log) == (1 if zfs.caps.multi_snapshot else n)


async def test_queries_are_one_call_each(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    for i in range(20):
        await zfs.create(f"{p}/t/c{i}", parents=True)
    for i in range(30):
        await zfs.snapshot([f"{p}/t@s{i}"])
    budgets: dict[str, tuple[Call, int]] = {
        "children": (lambda: zfs.children(f"{p}/t"), 1),
        "snapshots": (lambda: zfs.snapshots(f"{p}/t"), 1),
        "exists": (lambda: zfs.exists(f"{p}/t@s3"), 1),
        "get (20 names)": (lambda: zfs.get([f"{p}/t/c{i}" for i in range(20)], ["used", "quota"]), 1),
        "mountpoint": (lambda: zfs.mountpoint(f"{p}/t"), 1),
        "holds": (lambda: zfs.holds(f"{p}/t@s0"), 1),
        "pools": (lambda: zfs.pools(), 1),
    }
    for what, (call, budget) in budgets.items():
        with record_calls() as log:
            await call()
        assert zfs_calls(log) == budget, what
    assert len(await zfs.children(f"{p}/t")) == 20
    assert len(await zfs.snapshots(f"{p}/t")) == 30


async def test_usage_of_a_pool_with_50_datasets_is_one_call(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/vz")
    for i in range(50):
        await zfs.create(f"{p}/vz/{100 + i}")
    await zfs.snapshot([f"{p}/vz/100@s"])
    with record_calls() as log:
        usage = await zfs.usage(f"{p}/vz")
    assert zfs_calls(log) == 1
    assert len(usage) == 51


async def test_branch_create_is_clone_plus_promote(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/ds/tree.0/branch-a.0", parents=True)
    await zfs.snapshot([f"{p}/ds/tree.0/branch-a.0@s1"])
    with record_calls() as log:
        await zfs.clone(f"{p}/ds/tree.0/branch-a.0@s1", f"{p}/ds/tree.0/branch-b.0")
        await zfs.promote(f"{p}/ds/tree.0/branch-b.0")
    assert zfs_calls(log) == 2


async def test_mutation_budgets(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    await zfs.snapshot([f"{p}/a@s1"])
    await zfs.snapshot([f"{p}/a@s2"])
    props = {"atime": "off", "compression": "on", "vpsadmin:x": "1"}
    budgets: dict[str, tuple[Call, int]] = {
        "set 3 properties": (lambda: zfs.set(f"{p}/a", props), 1 if zfs.caps.multi_set else 3),
        "inherit": (lambda: zfs.inherit(f"{p}/a", "atime"), 1),
        "hold": (lambda: zfs.hold("t", f"{p}/a@s1"), 1),
        "release": (lambda: zfs.release("t", f"{p}/a@s1"), 1),
        "rename snapshot": (lambda: zfs.rename(f"{p}/a@s2", f"{p}/a@s3"), 1),
        "destroy snapshot": (lambda: zfs.destroy(f"{p}/a@s3"), 1),
        "rollback -r": (lambda: zfs.rollback(f"{p}/a@s1", recursive=True), 1),
        "unmount": (lambda: zfs.unmount(f"{p}/a"), 1),
    }
    for what, (call, budget) in budgets.items():
        with record_calls() as log:
            await call()
        assert zfs_calls(log) == budget, what
    with record_calls() as log:
        await zfs.rename(f"{p}/a", f"{p}/b")
    assert without_busy_retries(log, "rename") == (["get", "rename"] if zfs.caps.fuse else ["rename"])
    with record_calls() as log:
        await zfs.destroy(f"{p}/b", recursive=True)
    assert without_busy_retries(log, "destroy") == ["destroy"]


async def test_rename_of_a_mounted_fs_budget(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    await zfs.create(f"{p}/a")
    with record_calls() as log:
        await zfs.rename(f"{p}/a", f"{p}/b")
    expected = ["get", "unmount", "rename", "mount"] if zfs.caps.fuse else ["rename"]
    assert without_busy_retries(log, "rename") == expected


async def test_destroy_of_a_mounted_fs_needs_at_most_a_few_retries(zfs_pool: TempPool) -> None:
    zfs, p = zfs_pool.zfs, zfs_pool.name
    with record_calls() as log:
        for i in range(10):
            await zfs.create(f"{p}/m{i}")
            await zfs.destroy(f"{p}/m{i}")
    destroys = log.count("zfs", subcommand="destroy")
    assert 10 <= destroys <= 20  # measured: at most one retry each on zfs-fuse
