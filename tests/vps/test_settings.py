"""2002-2005, 2006/2007 (without registration) and 2013 through a real engine and MariaDB on the fake vzctl: the
conf file after exec and after the rollback of a chain that fails at its end (keys and value formats as vzctl
writes them), the password kept out of logs and ``t_output``, and hostile params refused before any vzctl."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog.testing

from tests.engine_helpers import fetch
from tests.vps.conftest import FakeVz, chain, conf, errors, make_ct, run
from vpsadmind import system
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.fakevz import faults

pytestmark = pytest.mark.timeout(120)

FAIL = (90001, {"fail": True})


async def exec_and_rollback(db: Any, vcfg: Config, fakevz: FakeVz, step: tuple[int, dict[str, Any]]
                            ) -> tuple[dict[str, str], dict[str, str]]:
    """The conf after the step alone, and after the step rolled back by a failing probe (from the conf before)."""
    before = conf(fakevz)
    state, rows = await run(db, vcfg, chain(step, FAIL))
    assert state["state"] == ChainState.FAILED and rows[0]["t_done"] == 2, errors(rows)
    rolled_back = conf(fakevz)
    assert rolled_back == before, (before, rolled_back)
    state, rows = await run(db, vcfg, chain(step))
    assert state["state"] == ChainState.DONE, errors(rows)
    return conf(fakevz), rolled_back


async def test_resources(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    params = {"resources": [{"resource": "cpu", "value": 2, "original": 1},
                            {"resource": "memory", "value": 1024, "original": 256},
                            {"resource": "swap", "value": 512, "original": 0}]}
    before = conf(fakevz)
    state, rows = await run(db, vcfg, chain((2003, params), FAIL))
    assert state["state"] == ChainState.FAILED
    after_rb = conf(fakevz)
    # the rollback applied the originals: 1 cpu, 256 MiB (the basic sample's value), no swap
    assert (after_rb["CPUS"], after_rb["CPULIMIT"], after_rb["PHYSPAGES"], after_rb["SWAPPAGES"]) == \
        ("1", "100", before["PHYSPAGES"], "0:0")
    state, rows = await run(db, vcfg, chain((2003, params)))
    assert state["state"] == ChainState.DONE, errors(rows)
    c = conf(fakevz)
    assert (c["CPUS"], c["CPULIMIT"], c["PHYSPAGES"], c["SWAPPAGES"]) == ("2", "200", "0:262144", "0:131072")
    raw = (fakevz.conf_dir / "101.conf").read_text()
    assert 'PHYSPAGES="0:262144"\n' in raw and 'CPULIMIT="200"\n' in raw   # vzctl's format, replaced in place
    assert raw.count("PHYSPAGES=") == 1


async def test_resources_without_originals_rollback_changes_nothing(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    state, rows = await run(db, vcfg, chain((2003, {"resources": [{"resource": "cpu", "value": 4}]}), FAIL))
    assert state["state"] == ChainState.FAILED
    assert conf(fakevz)["CPUS"] == "4"  # nothing to restore to: v2.0 behaved the same
    assert "no original" in json.dumps(errors(rows)[0][1])


async def test_hostname(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    after, rolled_back = await exec_and_rollback(db, vcfg, fakevz, (2004, {"hostname": "web.example.org",
                                                                            "original": "ct101"}))
    assert rolled_back["HOSTNAME"] == "ct101" and after["HOSTNAME"] == "web.example.org"


async def test_dns_resolver(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    params = {"nameserver": ["192.0.2.53", "2001:db8::53"], "original": []}
    after, rolled_back = await exec_and_rollback(db, vcfg, fakevz, (2005, params))
    assert "NAMESERVER" not in rolled_back, "an empty original removes the key"
    assert after["NAMESERVER"] == "192.0.2.53 2001:db8::53"
    state, rows = await run(db, vcfg, chain((2005, {"nameserver": ["198.51.100.1"],
                                                     "original": ["192.0.2.53", "2001:db8::53"]}), FAIL))
    assert state["state"] == ChainState.FAILED
    assert conf(fakevz)["NAMESERVER"] == "192.0.2.53 2001:db8::53"


async def test_os_template(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    after, rolled_back = await exec_and_rollback(
        db, vcfg, fakevz, (2013, {"os_template": "centos-7-x86_64", "original": "debian-8.0-x86_64-minimal"}))
    assert rolled_back["OSTEMPLATE"] == "debian-8.0-x86_64-minimal" and after["OSTEMPLATE"] == "centos-7-x86_64"


async def test_ip_add_and_del_without_registration(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    add = {"addr": "192.0.2.10", "version": 4, "register": False}
    add6 = {"addr": "2001:0db8:0000::0010", "version": 6, "register": False}
    state, rows = await run(db, vcfg, chain((2006, add), (2006, add6), FAIL))
    assert state["state"] == ChainState.FAILED
    assert conf(fakevz).get("IP_ADDRESS", "") == ""
    state, rows = await run(db, vcfg, chain((2006, add), (2006, add6)))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert conf(fakevz)["IP_ADDRESS"] == "192.0.2.10 2001:db8::10"   # IPv6 canonical, as vzctl stores it

    delete = {"addr": "192.0.2.10", "version": 4, "unregister": False}
    state, rows = await run(db, vcfg, chain((2007, delete), FAIL))
    assert state["state"] == ChainState.FAILED
    # re-added by the rollback, in its place: v2.0 left it at the end, which made another address the first
    assert conf(fakevz)["IP_ADDRESS"].split() == ["192.0.2.10", "2001:db8::10"]
    state, rows = await run(db, vcfg, chain((2007, delete)))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert conf(fakevz)["IP_ADDRESS"] == "2001:db8::10"


async def test_passwd_never_shows_the_password(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    secret = "correct horse: battery $(staple)"
    with structlog.testing.capture_logs() as logs:
        state, rows = await run(db, vcfg, chain((2002, {"user": "root", "password": secret})))
    assert state["state"] == ChainState.DONE, errors(rows)
    shadow = (fakevz.root / "vz/private/101/etc/shadow").read_text()
    assert shadow.startswith("root:fake-sha256$") and secret not in shadow
    (row,) = await fetch(db, "SELECT t_param, t_output FROM transactions")
    assert row["t_param"] == "{}", "post_save scrubbed t_param in the save transaction"
    assert secret not in str(row["t_output"]) and secret not in repr(logs)


async def test_failed_passwd_is_scrubbed_and_hidden(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    secret = "s3cret-passw0rd"
    faults.fail(fakevz.root, "set", veid="101", arg="--userpasswd", rc=74, message="Unable to change password")
    with structlog.testing.capture_logs() as logs:
        state, rows = await run(db, vcfg, chain((2002, {"user": "root", "password": secret})))
    assert state["state"] == ChainState.FAILED
    (row,) = await fetch(db, "SELECT t_param, t_output FROM transactions")
    out = json.loads(row["t_output"])
    assert out["exitstatus"] == 74 and "root:***" in out["cmd"]
    assert row["t_param"] == "{}" and secret not in row["t_output"] and secret not in repr(logs)

    bad = "line one\nroot2:injected"
    with system.record_calls() as calls, structlog.testing.capture_logs() as logs:
        state, rows = await run(db, vcfg, chain((2002, {"password": bad})))
    assert state["state"] == ChainState.FAILED
    out = errors(rows)[0][1]
    assert out["field"] == "password" and "injected" not in json.dumps(out) and "injected" not in repr(logs)
    assert calls.count("fake-vzctl") == 0


HOSTILE: list[tuple[int, dict[str, Any], str]] = [
    (2004, {"hostname": "x;reboot"}, "hostname"),
    (2004, {"hostname": "ok.example", "original": "a\nVE_ROOT=/"}, "original"),
    (2005, {"nameserver": ["192.0.2.1", "8.8.8.8\nVE_ROOT=\"/\""]}, "nameserver[1]"),
    (2005, {"nameserver": []}, "nameserver"),
    (2013, {"os_template": "../../etc/passwd"}, "os_template"),
    (2003, {"resources": [{"resource": "cpu", "value": 0}]}, "resources[0].value"),
    (2003, {"resources": [{"resource": "disk", "value": 10}]}, "resources[0].resource"),
    (2003, {"resources": [{"resource": "memory", "value": "1G"}]}, "resources[0].value"),
    (2002, {"user": "root:x", "password": "p"}, "user"),
    (2006, {"addr": "192.0.2.1 --ipadd 10.0.0.1", "version": 4}, "addr"),
    (2006, {"addr": "192.0.2.1", "version": 4, "register": True}, "shaper"),
    (2007, {"addr": "2001:db8::1", "version": 4}, "addr"),
    (2008, {"configs": ["basic", "../../../etc/shadow"]}, "configs[1]"),
    (3001, {"template": "debian 8"}, "template"),
    (3001, {"template": "debian-8", "hostname": "-h"}, "hostname"),
    (4001, {"dst_vps": 102, "local": False, "src_node_addr": "-oProxyCommand=sh"}, "src_node_addr"),
    (4001, {"dst_vps": -1, "local": True}, "dst_vps"),
    (4001, {"dst_vps": 102, "local": False}, "src_node_addr"),
    (4003, {"os_template": "a/b"}, "os_template"),
    (8001, {"features": {"foo": {"enabled": True, "original": False}}}, "features.foo"),
    (8001, {"features": {n: {"enabled": True, "original": False}
                         for n in ("iptables", "tun", "fuse", "nfs", "ppp", "bridge")}}, "features.kvm"),
]


@pytest.mark.parametrize(("code", "params", "field"), HOSTILE, ids=[f"{c}-{f}" for c, _, f in HOSTILE])
async def test_hostile_params_are_refused_before_vzctl(db: Any, vcfg: Config, fakevz: FakeVz, code: int,
                                                       params: dict[str, Any], field: str) -> None:
    make_ct(fakevz)
    before = (fakevz.conf_dir / "101.conf").read_text()
    with system.record_calls() as calls:
        state, rows = await run(db, vcfg, chain((code, params)))
    assert state["state"] == ChainState.FAILED
    out = errors(rows)[0][1]
    assert out["field"] == field and out["error"].startswith(f"Bad param: {field}"), out
    assert calls.count("fake-vzctl") == 0 and calls.count("fake-vzlist") == 0, calls.calls
    assert (fakevz.conf_dir / "101.conf").read_text() == before
