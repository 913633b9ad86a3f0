"""``vzctl set`` through the driver: options, samples, setmode, the password (never shown), config samples."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tests.vz.conftest import FakeVz, create_ct
from vpsadmind.system import record_calls
from vpsadmind.testing.fakevz.setcmd import SHADOW_PREFIX
from vpsadmind.vz import ApplyConfigFailed, ConfFileError, ContainerRunning, Vz, VzctlFailed, VzError


async def test_resources_as_v20_passes_them(vz: Vz, fakevz: FakeVz) -> None:
    """2003: cpu N -> --cpus N --cpulimit N*100; memory M -> --ram <M>M; swap -> --swap <M>M."""
    await create_ct(vz)
    with record_calls() as log:
        await vz.set(101, {"cpus": 4, "cpulimit": 400, "ram": "2048M", "swap": "1024M"})
    assert log.calls[0][1:] == ["set", "101", "--cpus", "4", "--cpulimit", "400", "--ram", "2048M", "--swap",
                                "1024M", "--save"]
    conf = vz.read_conf(101)
    assert (conf.get("CPUS"), conf.get("CPULIMIT")) == ("4", "400")
    assert (conf.get("PHYSPAGES"), conf.get("SWAPPAGES")) == ("0:524288", "0:262144")


async def test_dns_hostname_ostemplate_and_ips(vz: Vz) -> None:
    await create_ct(vz)
    await vz.set(101, {"nameserver": ["8.8.8.8", "8.8.4.4"]})
    await vz.set(101, {"nameserver": ["1.1.1.1"]})                  # replaces the list
    await vz.set(101, {"hostname": "new.example.org", "ostemplate": "debian-9.0-x86_64"})
    await vz.set(101, {"ipadd": ["192.0.2.1", "2001:DB8::1"]})
    await vz.set(101, {"ipdel": "192.0.2.1"})
    conf = vz.read_conf(101)
    assert conf.get("NAMESERVER") == "1.1.1.1"
    assert conf.get("HOSTNAME") == "new.example.org"
    assert conf.get("OSTEMPLATE") == "debian-9.0-x86_64"
    assert conf.get_list("IP_ADDRESS") == ["2001:db8::1"]


async def test_set_without_save_changes_nothing(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    before = fakevz.conf(101)
    await vz.set(101, {"hostname": "temporary"}, save=False)
    assert fakevz.conf(101) == before


async def test_private_cannot_change_while_running(vz: Vz) -> None:
    await create_ct(vz)
    await vz.start(101)
    with pytest.raises(ContainerRunning):
        await vz.set(101, {"private": "/elsewhere/$VEID"})


async def test_applyconfig(vz: Vz, fakevz: FakeVz) -> None:
    await vz.create(101, ostemplate="debian-8.0-x86_64-minimal", hostname="keep.me")
    sample = 'PHYSPAGES="0:1G"\nSWAPPAGES="0:512M"\nHOSTNAME="not.copied"\nIP_ADDRESS="10.9.9.9"\nCPUS="2"\n'
    vz.write_sample("vps-101", sample)
    with record_calls() as log:
        await vz.applyconfig(101, "vps-101")
    assert log.calls[0][1:] == ["set", "101", "--applyconfig", "vps-101", "--setmode", "restart", "--save"]
    conf = vz.read_conf(101)
    assert conf.get("PHYSPAGES") == "0:262144" and conf.get("CPUS") == "2"
    assert conf.get("HOSTNAME") == "keep.me" and conf.get("IP_ADDRESS") is None
    assert conf.get("ORIGIN_SAMPLE") == "vps-101"
    with pytest.raises(ApplyConfigFailed) as info:
        await vz.applyconfig(101, "nope")
    assert "ve-nope.conf-sample" in str(info.value)


async def test_setmode_restart_restarts_a_running_container(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    marker = fakevz.root / "mounts.log"
    script = fakevz.conf_dir / "101.mount"
    script.write_text(f"#!/bin/sh\necho mounted >> {marker}\n")
    script.chmod(0o755)
    await vz.start(101)
    await vz.set(101, {"features": ["nfs:on", "ppp:on"]}, setmode="restart")
    assert marker.read_text() == "mounted\nmounted\n"          # the restart mounted it again
    assert vz.read_conf(101).get("FEATURES") == "nfs:on ppp:on"
    await vz.set(101, {"cpus": 2}, setmode="restart")          # no restart needed for this one
    assert marker.read_text().count("mounted") == 2
    with pytest.raises(ContainerRunning):
        await vz.set(101, {"features": "bridge:on"}, setmode="ignore")
    assert "bridge" not in (vz.read_conf(101).get("FEATURES") or "")


async def test_password_is_set_and_never_shown(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    secret = "S3cr3t:with colon"
    with record_calls() as log:
        await vz.set_password(101, "root", secret)
    assert log.calls[0][1:4] == ["set", "101", "--userpasswd"]      # no --save: nothing to save
    shadow = (fakevz.root / "vz/private/101/etc/shadow").read_text()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert f"root:{SHADOW_PREFIX}{digest}:" in shadow and secret not in shadow
    assert secret not in fakevz.conf(101)
    shutil.rmtree(fakevz.root / "vz/private/101/etc")                # make vzctl fail (74)
    with pytest.raises(VzctlFailed) as info:
        await vz.set_password(101, "root", secret)
    err = info.value
    assert err.exitstatus == 74
    texts = [str(err), " ".join(err.argv), str(err.output), err.stdout, err.stderr, repr(err.__cause__)]
    assert not any(secret in text or "S3cr3t" in text for text in texts)
    assert "root:***" in " ".join(err.argv)
    assert err.__cause__ is None and err.__suppress_context__


async def test_config_samples(vz: Vz, fakevz: FakeVz) -> None:
    """7301-7303: write, read, rename, delete ``ve-<name>.conf-sample``."""
    text = '# sample for 2 GB\nPHYSPAGES="0:2G"\nSWAPPAGES="0:1G"\n\nCPUS="2"\n'
    path = vz.write_sample("2g", text)
    assert path == fakevz.conf_dir / "ve-2g.conf-sample" and path.read_text() == text
    assert vz.read_sample("2g") == text and vz.read_sample("none") is None
    for bad in ('PHYSPAGES="0:2G"\nrm -rf /\n', 'DESCRIPTION="$(id)"\n', 'HOSTNAME="a\\"b"\n'):
        with pytest.raises(ConfFileError) as info:
            vz.write_sample("bad", bad)
        assert info.value.line is not None
    assert vz.read_sample("bad") is None
    assert vz.delete_sample("2g") is True and vz.delete_sample("2g") is False
    with pytest.raises(VzError):
        vz.sample_path("../../etc/passwd")
