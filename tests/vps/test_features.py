"""8001 Features through a real engine and MariaDB on the fake vzctl: the conf's FEATURES, CAPABILITY, NETFILTER,
NUMIPTENT and DEVICES, the device nodes made inside the container with ``vzctl exec2`` (/dev/kvm c 10:232
among them), the running state restored, the rollback to ``original``, and the crash recovery."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.vps.conftest import FakeVz, chain, conf, errors, make_ct, make_handler, run, running
from vpsadmind import system
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState, Direction
from vpsadmind.handlers.base import HandlerContext, Recovery

pytestmark = pytest.mark.timeout(120)

FAIL = (90001, {"fail": True})
NAMES = ("iptables", "tun", "fuse", "nfs", "ppp", "bridge", "kvm")


def features(on: set[str], original: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    return {"features": {n: {"enabled": n in on, "original": n in original} for n in NAMES}}


def node(fakevz: FakeVz, name: str) -> str | None:
    path = fakevz.root / "vz/private/101/dev" / name
    return path.read_text().strip() if path.is_file() else None


async def test_all_features_on_and_rollback(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    fakevz.ok("start", "101")
    before = conf(fakevz)
    state, rows = await run(db, vcfg, chain((8001, features(set(NAMES))), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    c = conf(fakevz)
    assert c["NETFILTER"] == "stateless" and c["NUMIPTENT"] == "1000"
    assert c["FEATURES"] == "nfs:off ppp:off bridge:off nfsd:off" and c["CAPABILITY"] == "NET_ADMIN:off"
    assert c.get("DEVICES", "") == "" and before.get("DEVICES", "") == ""
    assert running(fakevz), "the container ran before, so it runs after the rollback"

    with system.record_calls() as calls:
        state, rows = await run(db, vcfg, chain((8001, features(set(NAMES)))))
    assert state["state"] == ChainState.DONE, errors(rows)
    c = conf(fakevz)
    assert c["NETFILTER"] == "full" and c["FEATURES"] == "nfs:on ppp:on bridge:on nfsd:on"
    assert c["CAPABILITY"] == "NET_ADMIN:on"
    assert c["DEVICES"] == "c:10:200:rw c:10:229:rw c:108:0:rw c:10:232:rw "   # vzctl's trailing blank
    for name, numbers in (("net/tun", "c 10 200"), ("fuse", "c 10 229"), ("ppp", "c 108 0"), ("kvm", "c 10 232")):
        assert node(fakevz, name) == f"fake-vz device node: {numbers}", name
    assert running(fakevz)
    exec2 = [c[3:] for c in calls.calls if c[1:3] == ["exec2", "101"]]
    assert ["mknod", "/dev/kvm", "c", "10", "232"] in exec2, "argv quoted for exec2, not a shell line"
    assert json.loads(rows[0]["t_output"])["device_nodes"] == ["/dev/net/tun", "/dev/fuse", "/dev/ppp", "/dev/kvm"]

    state, rows = await run(db, vcfg, chain((8001, features(set(NAMES)))))   # nodes exist: mknod's 1 accepted
    assert state["state"] == ChainState.DONE, errors(rows)


async def test_kvm_only_on_a_stopped_vps_keeps_it_stopped(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    state, rows = await run(db, vcfg, chain((8001, features({"kvm"}))))
    assert state["state"] == ChainState.DONE, errors(rows)
    c = conf(fakevz)
    assert c["DEVICES"] == "c:10:232:rw " and c["NETFILTER"] == "stateless"
    assert node(fakevz, "kvm") == "fake-vz device node: c 10 232" and node(fakevz, "fuse") is None
    assert not running(fakevz) and c.get("ONBOOT") is None, "stopped again, onboot untouched"
    assert json.loads(rows[0]["t_output"])["was_running"] is False

    state, rows = await run(db, vcfg, chain((8001, features(set(), original={"kvm"}))))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert conf(fakevz).get("DEVICES") == ""


async def test_recover_takes_onboot_for_the_wanted_state(hctx: HandlerContext, fakevz: FakeVz) -> None:
    """A crash after the interrupted run stopped the VPS: the re-run (recover) starts with a stopped container,
    but ONBOOT="yes" (set by 1001) says it should run, so it is left running."""
    make_ct(fakevz)
    fakevz.ok("set", "101", "--onboot", "yes", "--save")
    h = make_handler(hctx, 8001, features({"tun"}))
    assert await h.recover(Direction.EXECUTE) is Recovery.RERUN
    out = await h.exec()
    assert out is not None and out.output["was_running"] is True
    assert running(fakevz) and node(fakevz, "net/tun") == "fake-vz device node: c 10 200"
