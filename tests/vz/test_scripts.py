"""Action scripts ``<veid>.mount``/``.umount`` as vzctl runs them, and the two mount models of the fake."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.vz.conftest import FakeVz, create_ct
from vpsadmind.testing.fakevz.layout import MOUNT_ENV
from vpsadmind.testing.fakevz.mounts import SCRIPT_PATH, mountpoints
from vpsadmind.vz import ActionScriptFailed, ContainerLocked, Status, Vz, VzctlFailed


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


async def test_mount_script_runs_with_vzctls_environment(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    env_file = fakevz.root / "env.txt"
    _script(vz.script_path(101, "mount"), f'env > {env_file}\ntest -d "$1" || true\n')
    _script(vz.script_path(101, "umount"), f"echo umount >> {fakevz.root}/order.txt\n")
    _script(fakevz.conf_dir / "vps.umount", f"echo global >> {fakevz.root}/order.txt\n")
    await vz.start(101)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["VEID"] == "101"
    assert env["VE_CONFFILE"] == str(vz.conf_path(101))
    assert env["PATH"] == SCRIPT_PATH
    assert "FAKE_VZ_ROOT" not in env
    await vz.stop(101)
    assert (fakevz.root / "order.txt").read_text() == "umount\nglobal\n"     # per-CT script first


async def test_failing_mount_script_aborts_the_start(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    _script(vz.script_path(101, "mount"), "echo cannot mount >&2\nexit 1\n")
    with pytest.raises(ActionScriptFailed) as info:
        await vz.start(101, attempts=1)
    assert info.value.exitstatus == 79
    assert f"Error executing mount script {vz.script_path(101, 'mount')}" in str(info.value)
    assert "cannot mount" in info.value.stderr
    assert await vz.status(101) == Status(101, exists=True, mounted=False, running=False)


async def test_failing_umount_script_leaves_it_mounted(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    _script(vz.script_path(101, "umount"), "exit 1\n")
    await vz.start(101)
    with pytest.raises(ActionScriptFailed):
        await vz.stop(101, attempts=1)
    assert await vz.status(101) == Status(101, exists=True, mounted=True, running=False)
    os.unlink(vz.script_path(101, "umount"))
    assert await vz.umount(101) is True


async def test_non_executable_script_is_skipped(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    path = vz.script_path(101, "mount")
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o644)
    assert await vz.start(101) is True


async def test_script_calling_vzctl_on_its_container_sees_the_lock(vz: Vz, fakevz: FakeVz) -> None:
    """vzctl holds the container lock while action scripts run: a script that calls vzctl blocks/fails."""
    await create_ct(vz)
    out = fakevz.root / "inner.txt"
    _script(vz.script_path(101, "mount"),
            f"FAKE_VZ_ROOT={fakevz.root} {fakevz.vzctl_bin} set 101 --cpus 2 --save > {out} 2>&1\n"
            f"echo rc=$? >> {out}\n")
    await vz.start(101)
    text = out.read_text()
    assert "Container already locked" in text and "rc=9" in text


async def test_concurrent_vzctl_is_locked(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    started = fakevz.root / "script-started"
    _script(vz.script_path(101, "mount"), f"touch {started}\nsleep 3\n")
    proc = subprocess.Popen([str(fakevz.vzctl_bin), "start", "101"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if started.exists():
                break
            await asyncio.sleep(0.05)
        assert (fakevz.root / "vz/lock/101.lck").read_text().strip() == str(proc.pid)
        with pytest.raises(ContainerLocked):
            await vz.set(101, {"cpus": 2})
    finally:
        assert proc.wait(timeout=30) == 0


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true", reason="bind mounts need root")
async def test_bind_mode_and_busy_unmount(vz: Vz, fakevz: FakeVz, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """``FAKE_VZ_MOUNT=bind``: a real bind mount at VE_ROOT; a mount left below it makes umount fail (51)."""
    monkeypatch.setenv(MOUNT_ENV, "bind")
    await create_ct(vz)
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "hello").write_text("from the dataset\n")
    root = fakevz.root / "vz/root/101"
    _script(vz.script_path(101, "mount"), f"mkdir -p {root}/mnt/data && mount --bind {data} {root}/mnt/data\n")
    await vz.start(101)
    assert str(root) in mountpoints() and f"{root}/mnt/data" in mountpoints()
    assert (root / "mnt/data/hello").read_text() == "from the dataset\n"
    assert not root.is_symlink()
    with pytest.raises(VzctlFailed) as info:
        await vz.stop(101, attempts=1)
    assert info.value.exitstatus == 51
    _script(vz.script_path(101, "umount"), f"umount {root}/mnt/data\n")
    await vz.umount(101)
    assert str(root) not in mountpoints()
    assert (fakevz.root / "vz/private/101/mnt/data").is_dir()


async def test_link_mode_bind_mount_lands_in_private(vz: Vz, fakevz: FakeVz, tmp_path: Path) -> None:
    await create_ct(vz)
    await vz.start(101)
    root = fakevz.root / "vz/root/101"
    assert root.is_symlink() and root.resolve() == (fakevz.root / "vz/private/101").resolve()
    if os.geteuid() != 0:
        return
    data = tmp_path / "ds"
    data.mkdir()
    (root / "mnt").mkdir()
    subprocess.run(["mount", "--bind", str(data), str(root / "mnt")], check=True)
    try:
        with pytest.raises(VzctlFailed) as info:
            await vz.stop(101, attempts=1)
        assert info.value.exitstatus == 51 and "still mounted" in str(info.value)
    finally:
        subprocess.run(["umount", str(fakevz.root / "vz/private/101/mnt")], check=True)
    assert await vz.umount(101) is True
    assert root.is_dir() and not root.is_symlink()
