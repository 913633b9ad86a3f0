"""The conf file reader/writer: round trips keep unknown keys and comments, edits replace in place, saves are
atomic, backups restore; and the driver and the fake read each other's files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.vz.conftest import FakeVz, create_ct
from vpsadmind.vz import ConfFile, ConfFileError, Vz, backup, expand_veid, restore, split_list

SAMPLE = """\
# Copyright (c) 2015 vpsFree.cz
## custom header kept verbatim

ONBOOT="no"
PHYSPAGES="0:262144"
export SWAPPAGES='0:131072'
DISKSPACE=2097152:2306867   # trailing comment
MY_OWN_KEY="kept as is"
not an assignment at all
#IP_ADDRESS="10.0.0.1"
IP_ADDRESS="1.2.3.4 5.6.7.8"
HOSTNAME="first"
HOSTNAME="second"
VE_ROOT="/vz/root/$VEID"
"""


def test_parse_reads_vzctl_values() -> None:
    conf = ConfFile.parse(SAMPLE)
    assert conf.get("ONBOOT") == "no"
    assert conf.get("SWAPPAGES") == "0:131072"
    assert conf.get("DISKSPACE") == "2097152:2306867"
    assert conf.get("HOSTNAME") == "first"          # vzctl reads the first assignment
    assert conf.get_list("IP_ADDRESS") == ["1.2.3.4", "5.6.7.8"]
    assert conf.get("MISSING", "dflt") == "dflt"
    assert "MY_OWN_KEY" in conf and "IP" not in conf
    assert conf.keys() == ["ONBOOT", "PHYSPAGES", "SWAPPAGES", "DISKSPACE", "MY_OWN_KEY", "IP_ADDRESS",
                           "HOSTNAME", "VE_ROOT"]
    assert expand_veid(conf.get("VE_ROOT") or "", 101) == "/vz/root/101"
    assert split_list(None) == []


def test_round_trip_is_byte_identical() -> None:
    assert ConfFile.parse(SAMPLE).render() == SAMPLE
    assert ConfFile.parse("A=\"1\"").render() == 'A="1"'       # no newline added where there was none


def test_set_replaces_in_place_and_keeps_everything_else() -> None:
    conf = ConfFile.parse(SAMPLE)
    conf.set("PHYSPAGES", "0:524288")
    conf.set("HOSTNAME", "renamed")
    conf.set("NAMESERVER", ["8.8.8.8", "8.8.4.4"])
    conf.set("CPUS", 4)
    lines = conf.render().splitlines()
    assert lines[4] == 'PHYSPAGES="0:524288"'                   # same position as before
    assert lines.count('HOSTNAME="renamed"') == 1
    assert not any(line.startswith("HOSTNAME=") and "second" in line for line in lines)
    assert lines[-2:] == ['NAMESERVER="8.8.8.8 8.8.4.4"', 'CPUS="4"']
    for kept in ("# Copyright (c) 2015 vpsFree.cz", 'MY_OWN_KEY="kept as is"', "not an assignment at all",
                 '#IP_ADDRESS="10.0.0.1"', "DISKSPACE=2097152:2306867   # trailing comment"):
        assert kept in lines
    assert conf.remove("MY_OWN_KEY") and not conf.remove("MY_OWN_KEY")
    assert "MY_OWN_KEY" not in conf


def test_save_is_atomic_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "101.conf"
    path.write_text(SAMPLE)
    os.chmod(path, 0o600)
    conf = ConfFile.load(path)
    conf.set("ONBOOT", "yes")
    conf.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ConfFile.load(path).get("ONBOOT") == "yes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["101.conf"]     # no temporary left behind
    fresh = ConfFile()
    fresh.set("HOSTNAME", "x")
    fresh.save(tmp_path / "new.conf")
    assert stat.S_IMODE((tmp_path / "new.conf").stat().st_mode) == 0o644


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfFileError, match="missing.conf: cannot read"):
        ConfFile.load(tmp_path / "missing.conf")
    (tmp_path / "bin.conf").write_bytes(b"A=\"\xff\xfe\"\n")
    with pytest.raises(ConfFileError, match="not UTF-8"):
        ConfFile.load(tmp_path / "bin.conf")
    with pytest.raises(ConfFileError, match="NUL"):
        ConfFile.parse("A=\"\x00\"")


def test_backup_and_restore(tmp_path: Path) -> None:
    path = tmp_path / "101.conf"
    path.write_text(SAMPLE)
    os.chmod(path, 0o640)
    saved = backup(path)
    assert saved.name == "101.conf.backup"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o640
    path.write_text("CHANGED=\"1\"\n")
    assert restore(path)
    assert path.read_text() == SAMPLE
    assert not saved.exists()
    assert not restore(path)                    # nothing left to restore


async def test_driver_reads_what_the_fake_wrote(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    await vz.set(101, {"nameserver": ["8.8.8.8", "1.1.1.1"], "ram": "512M"})
    conf = vz.read_conf(101)
    assert conf.get_list("NAMESERVER") == ["8.8.8.8", "1.1.1.1"]
    assert conf.get("PHYSPAGES") == "0:131072"
    assert conf.get("ORIGIN_SAMPLE") == "basic"
    assert conf.get("VE_PRIVATE") == f"{fakevz.root}/vz/private/$VEID"


async def test_fake_keeps_what_the_driver_wrote(vz: Vz, fakevz: FakeVz) -> None:
    await create_ct(vz)
    conf = vz.read_conf(101)
    conf.lines.insert(0, "# managed by vpsadmind")
    conf.set("VPSADMIN_NOTE", "hello")
    conf.set("HOSTNAME", "edited")
    vz.write_conf(101, conf)
    await vz.set(101, {"cpus": 2})
    text = fakevz.conf(101)
    assert text.startswith("# managed by vpsadmind\n")
    assert 'VPSADMIN_NOTE="hello"' in text and 'CPUS="2"' in text
    rows = await vz.vzlist_table([101], fields=["ctid", "hostname", "cpus"])
    assert rows == [{"ctid": "101", "hostname": "edited", "cpus": "2"}]


async def test_applyconfig_backup_and_rollback(vz: Vz, fakevz: FakeVz) -> None:
    """Transaction 2008: back up the conf, apply samples; its rollback puts the backup back."""
    await create_ct(vz)
    (fakevz.conf_dir / "ve-big.conf-sample").write_text('PHYSPAGES="0:4G"\nSWAPPAGES="0:1G"\nCPUS="8"\n')
    original = fakevz.conf(101)
    vz.backup_conf(101)
    await vz.applyconfig(101, "big")
    assert 'PHYSPAGES="0:1048576"' in fakevz.conf(101)
    assert 'ORIGIN_SAMPLE="big"' in fakevz.conf(101)
    assert vz.restore_conf(101)
    assert fakevz.conf(101) == original


async def test_ve_root_and_private_resolve_like_vzctl(vz: Vz, fakevz: FakeVz) -> None:
    assert vz.global_conf_path() == fakevz.root / "etc/vz/vz.conf"
    assert vz.ve_root(555) == fakevz.root / "vz/root/555"           # no conf: vz.conf's default
    await create_ct(vz)
    await vz.set(101, {"private": f"{fakevz.root}/pool/$VEID/private"})
    assert vz.ve_private(101) == fakevz.root / "pool/101/private"
    assert vz.ve_root(101) == fakevz.root / "vz/root/101"
