"""The mounter with real bind mounts into a plain directory standing in for a VPS root: the start-time failure
policies of the action scripts, read-only mounts, umount order, and the escape refusal. The dataset mountpoints
come from a stub instead of zfs (the handler tests use zfs-fuse)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mounts.conftest import mount_hash, mounted_below, needs_root, unmount_below
from vpsadmind.mounts.mounter import Commands, Mounter, MountFailed, UnsafeDestination, random_wait
from vpsadmind.mounts.spec import MountSpec, parse_mounts
from vpsadmind.zfs.driver import Prop
from vpsadmind.zfs.errors import DatasetNotFound

pytestmark = needs_root


class Recorder:
    """A StateSink that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    async def report(self, vps_id: int, mount_id: int, state: str) -> None:
        assert vps_id == 101
        self.events.append((state, mount_id))

    async def delay(self, vps_id: int, mount: MountSpec) -> None:
        self.events.append(("delay", mount.id))


class StubZfs:
    """``zfs get mountpoint,mounted`` answered from a dict (dataset -> mountpoint); others do not exist."""

    def __init__(self) -> None:
        self.mountpoints: dict[str, Path] = {}

    async def get(self, name: str, props: list[str]) -> dict[str, dict[str, Prop]]:
        if name not in self.mountpoints:
            raise DatasetNotFound(f"cannot open '{name}': dataset does not exist")
        return {name: {"mountpoint": Prop(str(self.mountpoints[name]), "default"), "mounted": Prop("yes", "-")}}


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "ve_root"
        self.root.mkdir()
        self.zfs = StubZfs()
        self.sink = Recorder()
        self.sleeps: list[float] = []

    def dataset(self, name: str, content: str = "data\n") -> Path:
        mp = self.tmp / "pool" / name
        (mp / "private").mkdir(parents=True)
        (mp / "private" / "file").write_text(content)
        self.zfs.mountpoints[f"tank/vz/{name}"] = mp
        return mp / "private"

    def mounter(self) -> Mounter:
        async def zfs() -> Any:
            return self.zfs

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            if self.on_sleep is not None:
                self.on_sleep(len(self.sleeps))

        return Mounter(101, self.root, sink=self.sink, zfs=zfs, commands=Commands(), sleep=sleep,
                       wait=lambda n: 10.0 * n)

    on_sleep: Any = None


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        unmount_below(tmp_path)


def specs(*mounts: dict[str, Any]) -> list[MountSpec]:
    return parse_mounts(list(mounts))


async def test_mount_all_in_order_and_umount_all_in_reverse(env: Env) -> None:
    env.dataset("101/data", "parent\n")
    env.dataset("101/data/sub", "child\n")
    mounts = specs(mount_hash(1, "/srv/data", "101/data"), mount_hash(2, "/srv/data/sub", "101/data/sub"))
    m = env.mounter()
    await m.mount_all(mounts)
    assert (env.root / "srv/data/file").read_text() == "parent\n"
    assert (env.root / "srv/data/sub/file").read_text() == "child\n"
    assert mounted_below(env.root) == [str(env.root / "srv/data"), str(env.root / "srv/data/sub")]
    assert env.sink.events == [("mounted", 1), ("mounted", 2)]
    assert await m.umount_all(mounts) == []
    assert mounted_below(env.root) == []
    assert env.sink.events[2:] == [("unmounted", 2), ("unmounted", 1)]


async def test_read_only_mount_cannot_be_written(env: Env) -> None:
    env.dataset("101/data")
    m = env.mounter()
    assert await m.mount(specs(mount_hash(1, "/mnt/ro", mode="ro"))[0]) is True
    with pytest.raises(OSError) as info:
        (env.root / "mnt/ro/new").write_text("x")
    assert info.value.errno == errno.EROFS
    assert (env.root / "mnt/ro/file").read_text() == "data\n"


async def test_mount_options_are_applied_by_the_remount(env: Env) -> None:
    env.dataset("101/data")
    await env.mounter().mount(specs(mount_hash(1, "/mnt/x", mount_opts="--bind -o noexec,nosuid"))[0])
    line = next(li for li in Path("/proc/self/mountinfo").read_text().splitlines() if f"{env.root}/mnt/x " in li)
    assert {"noexec", "nosuid", "rw"} <= set(line.split()[5].split(","))


async def test_already_mounted_is_reported_and_not_stacked(env: Env) -> None:
    env.dataset("101/data")
    mount = specs(mount_hash(1, "/mnt/x"))[0]
    m = env.mounter()
    assert await m.mount(mount) is True
    assert await m.mount(mount) is False
    assert mounted_below(env.root) == [str(env.root / "mnt/x")]
    assert env.sink.events == [("mounted", 1), ("mounted", 1)]


async def test_umount_of_what_is_not_mounted_is_fine(env: Env) -> None:
    m = env.mounter()
    mount = specs(mount_hash(1, "/mnt/never"))[0]
    assert await m.umount(mount) is False
    (env.root / "mnt/never").mkdir(parents=True)
    assert await m.umount(mount) is False
    assert env.sink.events == [("unmounted", 1), ("unmounted", 1)]


async def test_missing_source_fails_naming_it(env: Env) -> None:
    with pytest.raises(MountFailed, match=r"source dataset tank/vz/101/gone is not available"):
        await env.mounter().mount(specs(mount_hash(1, "/mnt/x", "101/gone"))[0])
    private = env.dataset("101/noprivate")
    private.rename(private.parent / "elsewhere")
    with pytest.raises(MountFailed, match=r"private is not available"):
        await env.mounter().mount(specs(mount_hash(1, "/mnt/x", "101/noprivate"))[0])


async def test_skip_policy_and_children_of_a_skipped_parent(env: Env) -> None:
    env.dataset("101/child")
    env.dataset("101/other")
    mounts = specs(mount_hash(1, "/srv", "101/missing", on_start_fail="skip"),
                   mount_hash(2, "/srv/child", "101/child", on_start_fail="fail_start"),
                   mount_hash(3, "/srvx", "101/other", on_start_fail="skip"))
    await env.mounter().mount_all(mounts)
    # the child is not mounted onto the directory its parent should have covered (v2.0 meant to, never did)
    assert env.sink.events == [("skipped", 1), ("skipped", 2), ("mounted", 3)]
    assert mounted_below(env.root) == [str(env.root / "srvx")]


async def test_mount_later_hands_over_the_mount_and_its_children(env: Env) -> None:
    env.dataset("101/child")
    mounts = specs(mount_hash(1, "/srv", "101/missing"), mount_hash(2, "/srv/child", "101/child"))
    await env.mounter().mount_all(mounts)
    assert env.sink.events == [("delay", 1), ("delay", 2)]
    assert mounted_below(env.root) == []


async def test_fail_start_fails_and_undoes_what_this_run_mounted(env: Env) -> None:
    env.dataset("101/a")
    mounts = specs(mount_hash(1, "/mnt/a", "101/a"), mount_hash(2, "/mnt/b", "101/missing", on_start_fail="fail_start"),
                   mount_hash(3, "/mnt/c", "101/a"))
    with pytest.raises(MountFailed, match="mount 2"):
        await env.mounter().mount_all(mounts)
    assert env.sink.events == [("mounted", 1), ("unmounted", 2), ("unmounted", 1)]
    assert mounted_below(env.root) == []  # vzctl can unmount the VPS root again


async def test_wait_for_mount_retries_until_the_source_appears(env: Env) -> None:
    mounts = specs(mount_hash(1, "/mnt/late", "101/late", on_start_fail="wait_for_mount"))

    def appear(nth: int) -> None:
        if nth == 3:
            env.dataset("101/late", "finally\n")

    env.on_sleep = appear
    await env.mounter().mount_all(mounts)
    assert env.sleeps == [10.0, 20.0, 30.0]
    assert env.sink.events == [("waiting", 1), ("mounted", 1)]  # waiting reported once
    assert (env.root / "mnt/late/file").read_text() == "finally\n"


def test_random_wait_matches_v2() -> None:
    for n in (1, 5, 20, 100):
        base = min(10 + 5 * n, 60)
        waits = {random_wait(n) for _ in range(200)}
        assert min(waits) >= base and max(waits) < base + min(10 + 10 * n, 240)


async def test_escape_through_a_symlink_is_refused_under_every_policy(env: Env) -> None:
    host = env.tmp / "host-etc"
    host.mkdir()
    (host / "shadow").write_text("secret\n")
    env.dataset("101/data")
    (env.root / "mnt").mkdir()
    (env.root / "mnt" / "x").symlink_to(host)
    mount = mount_hash(1, "/mnt/x/sub", on_start_fail="skip")
    with pytest.raises(UnsafeDestination, match=r"mnt/x is a symbolic link"):
        await env.mounter().mount(specs(mount)[0])
    await env.mounter().mount_all(specs(mount))
    assert env.sink.events == [("skipped", 1)]
    with pytest.raises(UnsafeDestination):
        await env.mounter().mount_all(specs({**mount, "on_start_fail": "fail_start"}))
    assert sorted(p.name for p in host.iterdir()) == ["shadow"]
    assert not host.is_mount() and mounted_below(env.tmp) == []


async def test_umount_all_keeps_going_and_returns_errors(env: Env) -> None:
    env.dataset("101/a")
    env.dataset("101/b")
    mounts = specs(mount_hash(1, "/mnt/a", "101/a"), mount_hash(2, "/mnt/b", "101/b"))
    m = env.mounter()
    await m.mount_all(mounts)
    busy = open(env.root / "mnt/b/file")  # noqa: SIM115 - held open on purpose: the mount is busy
    try:
        errors = await m.umount_all(specs(mount_hash(1, "/mnt/a", "101/a"),
                                          mount_hash(2, "/mnt/b", "101/b", umount_opts="")))
    finally:
        busy.close()
    assert len(errors) == 1 and "mount 2 (/mnt/b)" in errors[0] and "busy" in errors[0]
    assert mounted_below(env.root) == [str(env.root / "mnt/b")]  # /mnt/a was still unmounted
