"""fake-vzctl/fake-vzlist on their own: vzctl's exit codes and messages, guards, faults, names."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.vz.conftest import TEMPLATE, FakeVz
from vpsadmind.testing.fakevz import faults
from vpsadmind.testing.fakevz.install import bin_dir
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, ROOT_ENV


def _created(fakevz: FakeVz, veid: str = "101", *extra: str) -> None:
    fakevz.ok("create", veid, "--ostemplate", TEMPLATE, *extra)


@pytest.mark.parametrize(("args", "rc", "message"), [
    ([], 20, "Usage"),
    (["start"], 21, "CT ID is not given"),
    (["start", "abc"], 21, "Bad CT ID abc"),
    (["start", "0"], 21, "Only set actions allowed for CT0"),
    (["frobnicate", "101"], 20, "Bad command: frobnicate"),
    (["enter", "101"], 3, "'enter' is not modelled"),
    (["start", "101"], 14, "Container config file does not exist"),
    (["destroy", "101"], 14, "Container config file does not exist"),
    (["set", "101", "--bogus", "1"], 21, "unrecognized option '--bogus'"),
    (["set", "101", "--ram", "lots", "--save"], 21, "Bad parameter for --ram: lots"),
    (["set", "101", "--cpus"], 21, "requires an argument"),
    (["set", "101", "stray"], 20, "non-option ARGV-elements: stray"),
    (["set", "101", "--cpus", "2", "--setmode", "restart"], 20, "--setmode restart doesn't make sense"),
    (["set", "101", "--applyconfig", "nope", "--save"], 109, "Sample config file not found"),
    (["stop", "101", "--force"], 20, "--force is not applicable"),
])
def test_command_line_errors(fakevz: FakeVz, args: list[str], rc: int, message: str) -> None:
    if args[-2:] == ["101", "--force"]:
        _created(fakevz)        # the fake checks the conf before the options (vzctl the other way round)
    done = fakevz.vzctl(*args)
    assert done.returncode == rc, (done.stdout, done.stderr)
    assert message in done.stderr


def test_missing_root_and_global_config(fakevz: FakeVz) -> None:
    env = {k: v for k, v in os.environ.items() if k != ROOT_ENV}
    done = subprocess.run([str(fakevz.vzctl_bin), "status", "101"], capture_output=True, text=True, env=env)
    assert done.returncode == 3 and "FAKE_VZ_ROOT is not set" in done.stderr
    (fakevz.root / "etc/vz/vz.conf").unlink()
    done = fakevz.vzctl("status", "101")
    assert done.returncode == 10 and "Global configuration file" in done.stderr
    assert fakevz.vzctl("--version").stdout.startswith("vzctl version 4.9.4")


def test_paths_outside_the_root_are_refused(fakevz: FakeVz, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    done = fakevz.vzctl("create", "101", "--ostemplate", TEMPLATE, "--private", f"{outside}/$VEID")
    assert done.returncode == 3 and "outside $FAKE_VZ_ROOT" in done.stderr
    assert not outside.exists()
    done = fakevz.vzctl("create", "101", "--ostemplate", TEMPLATE, "--private", f"{outside}/$VEID",
                        env={ALLOW_ENV: str(outside)})
    assert done.returncode == 0 and (outside / "101/etc/os-release").is_file()


def test_start_conditions(fakevz: FakeVz) -> None:
    _created(fakevz)
    conf = fakevz.conf_dir / "101.conf"
    conf.write_text(conf.read_text() + 'DISABLED="yes"\n')
    assert fakevz.vzctl("start", "101").returncode == 105
    fakevz.ok("start", "101", "--force")
    fakevz.ok("stop", "101")
    conf.write_text(conf.read_text().replace('SWAPPAGES="0:512M"\n', "").replace('DISABLED="yes"\n', ""))
    done = fakevz.vzctl("start", "101")
    assert done.returncode == 28 and "swappages" in done.stderr
    private = fakevz.root / "vz/private/101"
    private.rename(private.with_name("gone"))
    assert fakevz.vzctl("start", "101").returncode == 43


def test_exec_variants(fakevz: FakeVz) -> None:
    _created(fakevz)
    assert fakevz.vzctl("exec", "101", "true").returncode == 8          # not running: exec folds 31 into 8
    assert fakevz.vzctl("exec2", "101", "true").returncode == 31
    fakevz.ok("start", "101")
    assert fakevz.vzctl("exec", "101").returncode == 20
    assert fakevz.vzctl("exec", "101", "exit 5").returncode == 8
    assert fakevz.vzctl("exec2", "101", "exit 5").returncode == 5
    assert fakevz.vzctl("exec", "101", "-", input="echo from stdin\n").stdout == "from stdin\n"
    assert fakevz.vzctl("exec3", "101", "echo", "a;b").stdout == "a;b\n"
    assert fakevz.vzctl("exec", "101", "echo", "", "x").stdout == " x\n"       # vzctl turns "" into ''
    bad = fakevz.vzctl("exec2", "101", "echo $HOME")
    assert bad.returncode == 2 and "not modelled" in bad.stderr


def test_setmode_on_a_running_container(fakevz: FakeVz) -> None:
    _created(fakevz)
    fakevz.ok("start", "101")
    before = fakevz.conf(101)
    done = fakevz.vzctl("set", "101", "--features", "nfs:on", "--setmode", "ignore", "--save")
    assert done.returncode == 32 and "not saving configuration file" in done.stderr
    assert fakevz.conf(101) == before
    done = fakevz.vzctl("set", "101", "--features", "nfs:on", "--save")
    assert done.returncode == 0 and "Please consider using --setmode option" in done.stderr
    assert 'FEATURES="nfs:on"' in fakevz.conf(101)
    assert fakevz.vzctl("set", "101", "--private", "/x/$VEID", "--save").returncode == 32


def test_set_creates_a_missing_conf_and_ip_in_use(fakevz: FakeVz) -> None:
    done = fakevz.vzctl("set", "300", "--hostname", "fresh", "--save")
    assert done.returncode == 0 and "not found" in done.stderr
    assert fakevz.conf(300) == 'HOSTNAME="fresh"\n'
    _created(fakevz, "101", "--ipadd", "192.0.2.1")
    _created(fakevz, "102")
    fakevz.ok("start", "101")
    fakevz.ok("start", "102")
    done = fakevz.vzctl("set", "102", "--ipadd", "192.0.2.1", "--save")
    assert done.returncode == 78 and "already in use" in done.stderr


def test_lock_and_skiplock(fakevz: FakeVz) -> None:
    _created(fakevz)
    script = fakevz.conf_dir / "101.mount"
    script.write_text(f"#!/bin/sh\nFAKE_VZ_ROOT={fakevz.root} {fakevz.vzctl_bin} --skiplock set 101 --cpus 3 "
                      "--save >/dev/null\n")
    script.chmod(0o755)
    fakevz.ok("start", "101")
    assert 'CPUS="3"' in fakevz.conf(101)


def test_vzlist_modes(fakevz: FakeVz) -> None:
    done = fakevz.vzlist()
    assert done.returncode == 1 and done.stderr == "Container(s) not found\n"
    done = fakevz.vzlist("-j")
    assert done.returncode == 1 and json.loads(done.stdout) == []
    _created(fakevz, "101")
    _created(fakevz, "102")
    fakevz.ok("start", "102")
    assert fakevz.vzlist("-1").stdout.split() == ["102"]
    assert fakevz.vzlist("-S", "-1").stdout.split() == ["101"]
    assert fakevz.vzlist("-a", "-1", "-s", "-ctid").stdout.split() == ["102", "101"]
    assert fakevz.vzlist("-a", "-H", "-o", "ctid,numproc.l,status").stdout.split() == \
        ["101", "0", "stopped", "102", "0", "running"]
    assert fakevz.vzlist("-j", "-o", "numproc.l").returncode == 1
    assert fakevz.vzlist("-o", "frobs").returncode == 1
    objects = json.loads(fakevz.vzlist("-j", "-o", "ctid,onboot,features,diskspace", "101").stdout)
    assert objects == [{"ctid": 101, "onboot": None, "features": None,
                        "diskspace": {"usage": 0, "softlimit": 2097152, "hardlimit": 2306867}}]


def test_faults(fakevz: FakeVz) -> None:
    _created(fakevz)
    faults.fail(fakevz.root, "status", rc=7, message="injected", count=2)
    assert fakevz.vzctl("status", "101").returncode == 7
    assert len(faults.load(fakevz.root)) == 1 and faults.load(fakevz.root)[0].remaining == 1
    faults.clear(fakevz.root)
    assert fakevz.vzctl("status", "101").returncode == 0
    faults.fail(fakevz.root, "list", program="vzlist", rc=1, message="vzlist broke")
    assert fakevz.vzlist("-a").returncode == 1
    faults.fail(fakevz.root, "set", veid="10?", rc=21, arg="--hostname")
    assert fakevz.vzctl("set", "101", "--cpus", "2", "--save").returncode == 0       # arg does not match
    assert fakevz.vzctl("set", "101", "--hostname", "x", "--save").returncode == 21
    with pytest.raises(ValueError, match="unknown fault kind"):
        faults.Fault("explode")


def test_symlinked_names(fakevz: FakeVz, tmp_path: Path) -> None:
    _created(fakevz)
    bindir = bin_dir(tmp_path / "path")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    done = subprocess.run(["vzctl", "status", "101"], capture_output=True, text=True, env=env)
    assert done.stdout == "CTID 101 exist unmounted down\n"
    done = subprocess.run(["vzlist", "-a", "-H", "-o", "ctid"], capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["101"]
