"""v2.0's attempts and pauses (start and stop: 3 tries, 5 s apart by default; restart: once), driven by the fake's
fault injection, and timeouts."""

from __future__ import annotations

import pytest

from tests.vz.conftest import FakeVz, Pauses, create_ct
from vpsadmind.system import record_calls
from vpsadmind.testing.fakevz import faults
from vpsadmind.vz import ActionScriptFailed, ContainerLocked, RetryPolicy, Vz, VzctlFailed, VzTimeout


def test_default_policy_is_v20s() -> None:
    assert RetryPolicy() == RetryPolicy(attempts=3, pause=5.0)
    assert Vz().retry == RetryPolicy(3, 5.0)


async def test_start_retries_until_it_works(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    faults.fail(fakevz.root, "start", veid="101", rc=79, message="Error executing mount script", count=2)
    with record_calls() as log:
        assert await vz.start(101, onboot=True) is True
    assert [c[1] for c in log.calls] == ["start", "start", "start", "set"]
    assert pauses.calls == [0.5, 0.5]
    assert await vz.is_running(101)
    assert faults.load(fakevz.root) == []


async def test_start_gives_up_after_the_attempts(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    faults.fail(fakevz.root, "start", rc=79, message="Error executing mount script", count=None)
    with record_calls() as log, pytest.raises(ActionScriptFailed) as info:
        await vz.start(101, onboot=True)
    assert log.count("fake-vzctl", subcommand="start") == 3 and log.count(subcommand="set") == 0
    assert pauses.calls == [0.5, 0.5]
    assert info.value.exitstatus == 79 and "Error executing mount script" in str(info.value)
    assert not await vz.is_running(101)


async def test_the_pair_is_retried_when_onboot_fails(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    """The start worked, the ``--onboot`` save failed: the retry's start is exit 32 (fine), then the set."""
    await create_ct(vz)
    faults.fail(fakevz.root, "set", rc=139, message="Error saving config", arg="--onboot")
    with record_calls() as log:
        started = await vz.start(101, onboot=True)
    assert [c[1] for c in log.calls] == ["start", "set", "start", "set"]
    assert started is False and pauses.calls == [0.5]
    assert vz.read_conf(101).get("ONBOOT") == "yes"


async def test_a_failure_reported_after_the_work(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    faults.fail(fakevz.root, "start", rc=3, message="late failure", after=True)
    assert await vz.start(101) is False              # attempt 1 started it and failed; attempt 2 got 32
    assert pauses.calls == [0.5]


async def test_stop_retries(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    await vz.start(101)
    faults.fail(fakevz.root, "stop", rc=33, message="Unable to stop container")
    with record_calls() as log:
        await vz.stop(101, onboot=False)
    assert [c[1] for c in log.calls] == ["stop", "stop", "set"]
    assert pauses.calls == [0.5]
    assert not await vz.is_running(101)


async def test_locked_container_is_retried(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    faults.fail(fakevz.root, "start", rc=9, message="Container already locked")
    assert await vz.start(101) is True
    assert pauses.calls == [0.5]
    faults.fail(fakevz.root, "start", rc=9, message="Container already locked", count=3)
    await vz.stop(101)
    with pytest.raises(ContainerLocked):
        await vz.start(101)


async def test_restart_is_tried_once(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    faults.fail(fakevz.root, "restart", rc=3, message="boom")
    with record_calls() as log, pytest.raises(VzctlFailed) as info:
        await vz.restart(101, onboot=True)
    assert len(log.calls) == 1 and pauses.calls == []
    assert info.value.code is not None and info.value.code.name == "VZ_SYSTEM_ERROR"


async def test_explicit_attempts(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    faults.fail(fakevz.root, "start", rc=79, count=1)
    with pytest.raises(ActionScriptFailed):
        await vz.start(101, attempts=1)
    assert pauses.calls == []


async def test_hang_hits_the_timeout_and_is_not_retried(fakevz: FakeVz, pauses: Pauses) -> None:
    vz = Vz(vzctl=str(fakevz.vzctl_bin), vzlist=str(fakevz.vzlist_bin), conf_dir=fakevz.conf_dir,
            retry=RetryPolicy(3, 0.5), sleep=pauses, timeout=1.0)
    await create_ct(vz)
    faults.hang(fakevz.root, "start", seconds=20, count=1)
    with record_calls() as log, pytest.raises(VzTimeout) as info:
        await vz.start(101)
    assert len(log.calls) == 1 and pauses.calls == []
    assert info.value.exitstatus == -1 and "timed out after 1.0 s" in str(info.value)
