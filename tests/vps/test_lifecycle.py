"""1001-1003 start/stop/restart (with ``vps_status`` in post_save and the delayed mounts forgotten), through a real
engine and MariaDB on the fake vzctl: exec, rollback by a failing probe at the end of the chain, the conf's
``ONBOOT`` and the container's running state."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.engine_helpers import fetch
from tests.vps.conftest import FakeVz, chain, conf, errors, make_ct, run, running
from vpsadmind import __version__
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.handlers.base import HandlerContext
from vpsadmind.mount_registry import Mounts
from vpsadmind.testing.fakevz import faults

pytestmark = pytest.mark.timeout(120)

FAIL = (90001, {"fail": True})


async def status_row(db: Any, vps_id: int = 101) -> dict[str, Any]:
    (row,) = await fetch(db, "SELECT * FROM vps_status WHERE vps_id = %s", (vps_id,))
    return row


async def test_start_writes_onboot_and_status(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    fakevz.layout.ct(101).update_state(nproc=40, mem_used_kb=204800)
    state, rows = await run(db, vcfg, chain((1001, {"onboot": True})))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert running(fakevz)
    assert conf(fakevz)["ONBOOT"] == "yes"
    row = await status_row(db)
    # basic sample: 256 MiB RAM; the fake's state says 200 MiB used, and 40 processes (set before the start)
    assert (row["vps_up"], row["vps_vm_used_mb"], row["vps_admin_ver"]) == (1, 200, __version__)
    assert row["vps_nproc"] in (12, 40)  # the fake's start resets nproc to 12 unless the state kept 40
    assert row["vps_disk_used_mb"] >= 0 and row["created_at"] is not None


async def test_start_rollback_stops_only_what_it_started(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    state, rows = await run(db, vcfg, chain((1001, {}), FAIL))
    assert state["state"] == ChainState.FAILED and rows[0]["t_done"] == 2, errors(rows)
    assert not running(fakevz)
    assert conf(fakevz)["ONBOOT"] == "no"
    assert (await status_row(db))["vps_up"] == 0  # the rollback reported the stop too

    fakevz.ok("start", "101")
    state, rows = await run(db, vcfg, chain((1001, {}), FAIL))
    assert state["state"] == ChainState.FAILED
    assert running(fakevz), "a VPS that was running before the start keeps running after its rollback"


async def test_start_retries_and_reports_the_failure(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    faults.fail(fakevz.root, "start", veid="101", rc=79, message="Error executing mount script", count=2)
    state, rows = await run(db, vcfg, chain((1001, {})))
    assert state["state"] == ChainState.DONE, errors(rows)      # third attempt succeeded
    assert running(fakevz)

    fakevz.ok("stop", "101")
    faults.fail(fakevz.root, "start", veid="101", rc=79, message="Error executing mount script", count=None)
    state, rows = await run(db, vcfg, chain((1001, {})))
    assert state["state"] == ChainState.FAILED
    out = errors(rows)[0][1]
    assert out["exitstatus"] == 79 and out["vz_error"] == "ActionScriptFailed"
    assert "mount script" in out["error"] and out["cmd"].endswith("start 101")
    assert out["rollback"]["status"] == "ok" and not running(fakevz)


async def test_stop_forgets_delayed_mounts_and_rolls_back(db: Any, vcfg: Config, fakevz: FakeVz,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    make_ct(fakevz)
    fakevz.ok("start", "101")
    registry = Mounts(None)  # type: ignore[arg-type]  # the reporter is not used here
    registry.delayed.register(101, {"id": 7, "dst": "/mnt"})
    registry.delayed.register(102, {"id": 8, "dst": "/mnt"})
    monkeypatch.setattr("vpsadmind.mount_registry.mounts_for", lambda ctx: _registry(ctx, registry))

    state, rows = await run(db, vcfg, chain((1002, {}), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert running(fakevz) and conf(fakevz)["ONBOOT"] == "yes"   # started again by the rollback
    assert registry.delayed.vps_ids() == [102], "the stop forgot VPS 101's delayed mounts, nobody else's"
    assert json.loads(errors(rows)[0][1]["execute_output"])["delayed_mounts_forgotten"] == 1

    state, rows = await run(db, vcfg, chain((1002, {})))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert not running(fakevz) and conf(fakevz)["ONBOOT"] == "no"
    row = await status_row(db)
    assert (row["vps_up"], row["vps_nproc"], row["vps_vm_used_mb"]) == (0, 0, 0)

    state, rows = await run(db, vcfg, chain((1002, {}), FAIL))       # a stopped VPS is not started by the rollback
    assert state["state"] == ChainState.FAILED and not running(fakevz)


def _registry(ctx: HandlerContext, registry: Mounts) -> Mounts:
    assert isinstance(ctx, HandlerContext)
    return registry


async def test_restart_starts_and_sets_onboot(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    make_ct(fakevz)
    state, rows = await run(db, vcfg, chain((1003, {"onboot": False}), FAIL))
    assert state["state"] == ChainState.FAILED
    assert rows[0]["t_done"] == 2 and running(fakevz), "restart has no rollback: the VPS stays up"
    assert conf(fakevz)["ONBOOT"] == "yes"
    started = fakevz.layout.ct(101).state().get("started")
    state, rows = await run(db, vcfg, chain((1003, {})))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert fakevz.layout.ct(101).state()["started"] > started, "a running VPS was restarted, not left alone"
    assert (await status_row(db))["vps_up"] == 1


async def test_missing_container_fails_with_vzctl_code(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    state, rows = await run(db, vcfg, chain((1001, {})))
    assert state["state"] == ChainState.FAILED
    out = errors(rows)[0][1]
    assert out["exitstatus"] == 14 and out["vz_error"] == "ContainerNotFound"


async def test_transaction_without_vps_fails(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    state, rows = await run(db, vcfg, chain((1001, {}), vps=None))
    assert state["state"] == ChainState.FAILED
    out = errors(rows)[0][1]
    assert out["field"] == "vps_id" and "t_vps" in out["error"]
    assert out["rollback"] == "not needed: the handler never ran"
