"""Hostile input is refused before any process starts (the call log stays empty) and before a conf file changes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.vz.conftest import FakeVz, create_ct
from vpsadmind.system import record_calls
from vpsadmind.vz import ConfFile, InvalidValue, Vz, option_argv, validate

BAD_VEIDS = [0, -1, True, "101; rm -rf /", "101\n", 2**31, 1.5, "abc", None, "0101"]


@pytest.mark.parametrize("veid", BAD_VEIDS)
async def test_bad_veid_runs_nothing(vz: Vz, veid: Any) -> None:
    with record_calls() as log:
        for call in (vz.status, vz.start, vz.stop, vz.destroy, vz.mount):
            with pytest.raises(InvalidValue) as info:
                await call(veid)
            assert info.value.field == "veid"
    assert log.calls == []


HOSTILE_SET: list[dict[str, Any]] = [
    {"hostname": 'ct"\nVE_ROOT="/"'},
    {"hostname": "$(reboot)"},
    {"hostname": "-leading-dash"},
    {"hostname": "a" * 300},
    {"description": 'x"\nVE_PRIVATE="/etc'},
    {"description": "`id`"},
    {"nameserver": ["1.1.1.1", "8.8.8.8\n"]},
    {"nameserver": []},
    {"ipadd": "1.2.3.4 5.6.7.8"},
    {"ipadd": "0.0.0.0"},
    {"ipadd": "999.1.1.1"},
    {"root": "relative/path"},
    {"private": "/vz/private/../../etc"},
    {"private": '/vz/"private'},
    {"private": "/vz/$HOME"},
    {"ram": "1G; reboot"},
    {"ram": True},
    {"cpus": 0},
    {"cpulimit": -5},
    {"onboot": "maybe"},
    {"features": "evil:on"},
    {"features": "nfs:maybe"},
    {"capability": "net_admin"},
    {"devnodes": "../../etc/passwd:rw"},
    {"devices": "c:10:200:rwx"},
    {"netfilter": "all"},
    {"physpages": "0:1:2"},
    {"userpasswd": "root:x"},
    {"save": True},
    {"no-such-option": "1"},
    {"NUMPROC": "10"},
]


@pytest.mark.parametrize("options", HOSTILE_SET, ids=lambda o: repr(o)[:40])
async def test_hostile_set_runs_nothing(vz: Vz, fakevz: FakeVz, options: dict[str, Any]) -> None:
    await create_ct(vz)
    before = fakevz.conf(101)
    with record_calls() as log, pytest.raises(InvalidValue):
        await vz.set(101, options)
    assert log.calls == []
    assert fakevz.conf(101) == before


async def _expect_refused(call: Callable[[], Awaitable[object]]) -> InvalidValue:
    with record_calls() as log, pytest.raises(InvalidValue) as info:
        await call()
    assert log.calls == []
    return info.value


async def test_other_hostile_calls_run_nothing(vz: Vz) -> None:
    cases: list[Callable[[], Awaitable[object]]] = [
        lambda: vz.create(101, ostemplate="../../etc/passwd"),
        lambda: vz.create(101, ostemplate="debian", private="/vz/private/101\n"),
        lambda: vz.create(101, ostemplate="debian", hostname="bad host"),
        lambda: vz.create(101, ostemplate="debian", ipadd=["1.2.3.4\n"]),
        lambda: vz.applyconfig(101, "../ve-basic"),
        lambda: vz.applyconfig(101, "basic", setmode="now"),
        lambda: vz.set_password(101, "root", "pw\nroot2:pw2"),
        lambda: vz.set_password(101, "root:x", "pw"),
        lambda: vz.set_password(101, "Root", "pw"),
        lambda: vz.exec(101, ["echo", "a\x00b"]),
        lambda: vz.exec(101, ["echo", "line\nbreak"]),
        lambda: vz.exec(101, []),
        lambda: vz.exec_shell(101, "   "),
        lambda: vz.exec_shell(101, "true\x00"),
        lambda: vz.set(101, {}),
        lambda: vz.vzlist([101], fields=["numproc.l"]),
        lambda: vz.vzlist([101], fields=["no_such_field"]),
        lambda: vz.vzlist_table([101], fields=[]),
    ]
    for case in cases:
        await _expect_refused(case)


def test_error_says_what_failed_with_which_value() -> None:
    with pytest.raises(InvalidValue) as info:
        validate.hostname("bad host")
    assert info.value.field == "hostname"
    assert info.value.value == "bad host"
    assert str(info.value).startswith("invalid hostname 'bad host': ")
    with pytest.raises(InvalidValue, match="must not contain '\"'"):
        validate.conf_value('a"b', "description")


def test_valid_values_are_normalised() -> None:
    assert validate.veid("101") == 101
    assert validate.ip("2001:DB8:0:0::1") == "2001:db8::1"
    assert validate.ip("10.1.2.3/25", allow_prefix=True) == "10.1.2.3/25"
    assert validate.yesno(True, "onboot") == "yes"
    assert validate.path("/vz/root/$VEID", allow_veid=True) == "/vz/root/$VEID"
    assert validate.feature("NFS:on") == "nfs:on"
    assert validate.exec_arg("") == ""
    argv = option_argv({"nameserver": ["1.1.1.1", "8.8.8.8"], "ram": "1024M", "onboot": True, "cpus": 2})
    assert argv == ["--nameserver", "1.1.1.1", "--nameserver", "8.8.8.8", "--ram", "1024M", "--onboot", "yes",
                    "--cpus", "2"]


def test_conf_file_refuses_injection(tmp_path: Path) -> None:
    conf = ConfFile.parse('HOSTNAME="ok"\n')
    for key, value in (("HOSTNAME", 'x"\nVE_ROOT="/'), ("HOSTNAME", "$(id)"), ("lower", "x"), ("A=B", "x"),
                       ("VE_ROOT", "/a/../b"), ("DESCRIPTION", "tab\there")):
        with pytest.raises(InvalidValue):
            conf.set(key, value)
    assert conf.render() == 'HOSTNAME="ok"\n'
