"""Create, start, stop, restart, mount, destroy through the driver and the fake CLI: states, files, the exit codes
v2.0 tolerated on re-runs, typed errors, and command budgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vz.conftest import TEMPLATE, FakeVz, Pauses, create_ct
from vpsadmind.config import VzConfig
from vpsadmind.system import record_calls
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.vz import (
    ContainerExists,
    ContainerNotFound,
    ContainerRunning,
    Status,
    TemplateNotFound,
    Vz,
    VzctlFailed,
    VzExit,
)


async def test_create_writes_conf_and_private_area(vz: Vz, fakevz: FakeVz) -> None:
    with record_calls() as log:
        await vz.create(101, ostemplate=TEMPLATE, hostname="ct101", ipadd=["192.0.2.10"])
    assert log.count("fake-vzctl", subcommand="create") == 1 and len(log.calls) == 1
    conf = vz.read_conf(101)
    assert conf.get("OSTEMPLATE") == TEMPLATE
    assert conf.get("HOSTNAME") == "ct101"
    assert conf.get("IP_ADDRESS") == "192.0.2.10"
    assert conf.get("VE_PRIVATE") == f"{fakevz.root}/vz/private/$VEID"
    assert conf.get("ORIGIN_SAMPLE") == "basic"             # vz.conf's CONFIGFILE
    assert (fakevz.root / "vz/private/101/sbin/init").is_file()
    assert (fakevz.root / "vz/root/101").is_dir()
    assert await vz.status(101) == Status(101, exists=True, mounted=False, running=False)


async def test_create_with_explicit_private_keeps_veid_literal(vz: Vz, fakevz: FakeVz) -> None:
    """v2.0 passes ``--private /vz/private/<veid>/private`` (the dataset's ``private`` dir)."""
    dataset = fakevz.root / "pool" / "101"
    dataset.mkdir(parents=True)
    await vz.create(101, ostemplate=TEMPLATE, private=f"{fakevz.root}/pool/$VEID/private",
                    root=f"{fakevz.root}/vz/root/$VEID")
    assert vz.read_conf(101).get("VE_PRIVATE") == f"{fakevz.root}/pool/$VEID/private"
    assert (dataset / "private" / "etc" / "os-release").is_file()
    assert (await vz.status(101)).exists


async def test_create_errors(vz: Vz, fakevz: FakeVz) -> None:
    await vz.create(101, ostemplate=TEMPLATE)
    with pytest.raises(ContainerExists) as info:
        await vz.create(101, ostemplate=TEMPLATE)
    assert info.value.code is VzExit.VZ_FS_PRVT_AREA_EXIST
    assert "Private area already exists" in str(info.value)
    with pytest.raises(TemplateNotFound) as missing:
        await vz.create(102, ostemplate="centos-6-x86_64")
    assert missing.value.exitstatus == 91 and "centos-6-x86_64" in str(missing.value)
    assert not (fakevz.root / "vz/private/102").exists()


async def test_create_from_tarball_template(vz: Vz, fakevz: FakeVz) -> None:
    make_template(fakevz.root, "packed", tarball=True)
    await vz.create(103, ostemplate="packed")
    assert (fakevz.root / "vz/private/103/etc/passwd").read_text().startswith("root:")


async def test_start_stop_and_tolerated_reruns(vz: Vz, fakevz: FakeVz, pauses: Pauses) -> None:
    await create_ct(vz)
    with record_calls() as log:
        assert await vz.start(101) is True
        assert await vz.start(101) is False            # exit 32 "already running" is fine
    assert log.count("fake-vzctl", subcommand="start") == 2 and pauses.calls == []
    assert await vz.status(101) == Status(101, exists=True, mounted=True, running=True)
    assert (fakevz.root / "vz/root/101/etc/hostname").read_text() == "ct101\n"
    await vz.stop(101)
    await vz.stop(101)                                   # vzctl exits 0 for a stopped container
    assert await vz.status(101) == Status(101, exists=True, mounted=False, running=False)
    assert pauses.calls == []


async def test_onboot_pairs_cost_two_commands(vz: Vz) -> None:
    await create_ct(vz)
    with record_calls() as log:
        await vz.start(101, onboot=True)
    assert [c[1] for c in log.calls] == ["start", "set"]
    assert log.calls[1][2:] == ["101", "--onboot", "yes", "--save"]
    assert vz.read_conf(101).get("ONBOOT") == "yes"
    with record_calls() as log:
        await vz.stop(101, onboot=False)
    assert [c[1] for c in log.calls] == ["stop", "set"]
    assert vz.read_conf(101).get("ONBOOT") == "no"
    with record_calls() as log:
        await vz.restart(101, onboot=True)                 # restart of a stopped CT starts it
    assert [c[1] for c in log.calls] == ["restart", "set"]
    assert await vz.is_running(101)


async def test_mount_and_umount_tolerate_reruns(vz: Vz) -> None:
    await create_ct(vz)
    assert await vz.mount(101) is True
    assert await vz.mount(101) is False                  # 41 already mounted
    assert (await vz.status(101)).mounted
    assert await vz.umount(101) is True
    assert await vz.umount(101) is False                 # 40 not mounted


async def test_destroy(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    await vz.start(101)
    with pytest.raises(ContainerRunning) as running:
        await vz.destroy(101)
    assert running.value.argv[1:] == ["destroy", "101"]
    await vz.stop(101)
    assert await vz.destroy(101) is True
    assert not (fakevz.root / "vz/private/101").exists()
    assert (fakevz.conf_dir / "101.conf.destroyed").is_file()
    assert not (fakevz.conf_dir / "101.conf").exists()
    assert await vz.destroy(101) is False                 # 14 no config: nothing left to destroy
    assert await vz.status(101) == Status(101, exists=False, mounted=False, running=False)


async def test_missing_container_is_not_retried(vz: Vz, pauses: Pauses) -> None:
    with record_calls() as log, pytest.raises(ContainerNotFound) as info:
        await vz.start(999, onboot=True)
    assert len(log.calls) == 1 and pauses.calls == []
    assert info.value.exitstatus == VzExit.VZ_NOVECONFIG
    assert "Container config file does not exist" in str(info.value)
    with pytest.raises(ContainerNotFound):
        await vz.stop(999)


async def test_error_carries_argv_code_and_output(vz: Vz) -> None:
    await create_ct(vz)
    await vz.start(101)
    with pytest.raises(VzctlFailed) as info:
        await vz.umount(101)
    err = info.value
    assert err.exitstatus == 32 and err.code is VzExit.VZ_VE_RUNNING
    assert err.argv[1:] == ["umount", "101"]
    assert "stop it first" in err.stderr
    assert err.output["exitstatus"] == 32 and "stop it first" in str(err.output["error"])
    assert err.output["cmd"].endswith("umount 101")


def test_from_config_uses_the_vz_section(tmp_path: Path) -> None:
    vz = Vz.from_config(VzConfig(vzctl="/opt/vzctl", vzlist="/opt/vzlist", vz_conf=str(tmp_path)))
    assert vz.vzctl_bin == "/opt/vzctl" and vz.vzlist_bin == "/opt/vzlist"
    assert vz.conf_path(101) == tmp_path / "conf" / "101.conf"
    assert vz.script_path(101, "mount") == tmp_path / "conf" / "101.mount"
    assert vz.sample_path("basic") == tmp_path / "conf" / "ve-basic.conf-sample"
