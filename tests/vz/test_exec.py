"""Commands inside the container: exec2 with argv-safe quoting, v2.0's exec form, and what the fake models."""

from __future__ import annotations

import pytest

from tests.vz.conftest import FakeVz, create_ct
from vpsadmind.system import record_calls
from vpsadmind.testing.fakevz.builtins import DEVICE_NODE_PREFIX
from vpsadmind.vz import ContainerNotFound, ContainerNotRunning, ExecFailed, Vz, VzExit, shell_join


def test_shell_join_quotes_every_word() -> None:
    assert shell_join(["mknod", "/dev/net/tun", "c", "10", "200"]) == ["mknod", "/dev/net/tun", "c", "10", "200"]
    assert shell_join(["echo", "a b", "it's", "", "$(id)"]) == ["echo", "'a b'", "'it'\"'\"'s'", "''", "'$(id)'"]


@pytest.mark.parametrize("word", ["a b", "semi;colon", "$(reboot)", "`id`", "it's", 'dq"x', "back\\slash",
                                  "&& false", "> /etc/passwd", "#comment", "*", "", "  spaced  "])
async def test_argv_reaches_the_command_unchanged(vz: Vz, word: str) -> None:
    await create_ct(vz)
    await vz.start(101)
    result = await vz.exec(101, ["echo", word, "end"])
    assert result.stdout == f"{word} end\n"
    assert result.exitstatus == 0


async def test_exec_exit_codes(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    with pytest.raises(ContainerNotRunning) as stopped:
        await vz.exec(101, ["true"])
    assert stopped.value.exitstatus == VzExit.VZ_VE_NOT_RUNNING
    await vz.start(101)
    with pytest.raises(ExecFailed) as failed:
        await vz.exec(101, ["cat", "/no/such/file"])
    assert failed.value.exitstatus == 1                 # exec2 returns the command's own code
    assert "No such file or directory" in failed.value.stderr
    result = await vz.exec(101, ["test", "-e", "/nothing"], accept=(0, 1))
    assert result.exitstatus == 1
    with pytest.raises(ExecFailed) as unknown:
        await vz.exec(101, ["no-such-command"])
    assert unknown.value.exitstatus == 127
    with pytest.raises(ContainerNotFound):
        await vz.exec(999, ["true"])


async def test_v20_device_nodes(vz: Vz, fakevz: FakeVz) -> None:
    """8001 after start: mkdir/mknod/chmod through ``vzctl exec``, exit 8 (node exists) accepted on re-runs."""
    await create_ct(vz)
    await vz.start(101)
    with record_calls() as log:
        await vz.exec_shell(101, "mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 600 /dev/net/tun")
    assert log.calls[0][1:3] == ["exec", "101"] and len(log.calls[0]) == 4
    node = fakevz.root / "vz/private/101/dev/net/tun"
    assert node.read_text() == f"{DEVICE_NODE_PREFIX} c 10 200\n"
    assert oct(node.stat().st_mode & 0o777) == "0o600"
    again = await vz.exec_shell(101, "mknod /dev/net/tun c 10 200", accept=(0, 8))
    assert again.exitstatus == 8 and "File exists" in again.stderr
    with pytest.raises(ExecFailed) as failed:
        await vz.exec_shell(101, "mknod /dev/kvm c 10 232; false")
    assert failed.value.exitstatus == 8
    assert (fakevz.root / "vz/private/101/dev/kvm").is_file()


async def test_status_commands(vz: Vz, fakevz: FakeVz) -> None:
    """What v2.0's status updater reads: ``cat /proc/meminfo`` and ``df -k /``."""
    await create_ct(vz)
    await vz.set(101, {"ram": "1024M"})
    await vz.start(101)
    fakevz.layout.ct(101).update_state(mem_used_kb=204800)
    meminfo = (await vz.exec(101, ["cat", "/proc/meminfo"])).stdout
    values = {line.split(":")[0]: int(line.split()[1]) for line in meminfo.splitlines()}
    assert values["MemTotal"] == 1048576
    assert (values["MemTotal"] - values["MemFree"]) // 1024 == 200
    (fakevz.root / "vz/private/101/data.bin").write_bytes(b"x" * 3 * 1024 * 1024)
    df = (await vz.exec(101, ["df", "-k", "/"])).stdout.splitlines()
    assert df[0].split()[:2] == ["Filesystem", "1K-blocks"]
    total, used = int(df[1].split()[1]), int(df[1].split()[2])
    assert total == 2306867                              # DISKSPACE hard limit of the basic sample, in KiB
    assert used >= 3 * 1024


async def test_container_symlinks_stay_inside(vz: Vz, fakevz: FakeVz) -> None:
    """A container's own ``/etc -> <host dir>`` symlink resolves inside the container, never on the host."""
    await create_ct(vz)
    outside = fakevz.root.parent / "host-etc"
    outside.mkdir()
    private = fakevz.root / "vz/private/101"
    (private / "trap").symlink_to(outside)
    (private / "abs").symlink_to("/../../..")
    await vz.start(101)
    with pytest.raises(ExecFailed):                  # /trap points at a path that does not exist *inside*
        await vz.exec(101, ["touch", "/trap/owned"])
    await vz.exec_shell(101, "mkdir -p /trap/sub && touch /trap/sub/owned && mkdir -p /abs/escaped")
    assert list(outside.iterdir()) == []
    assert (private / str(outside).lstrip("/") / "sub" / "owned").exists()
    assert (private / "escaped").is_dir()


async def test_redirect_and_lists(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    await vz.start(101)
    await vz.exec_shell(101, "echo one > /tmp/f; echo two >> /tmp/f; false || echo three >> /tmp/f")
    assert (fakevz.root / "vz/private/101/tmp/f").read_text() == "one\ntwo\nthree\n"
    result = await vz.exec_shell(101, "cat /etc/hostname | wc -l", accept=(8,))
    assert "not modelled" in result.stderr
