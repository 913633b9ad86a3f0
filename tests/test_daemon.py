"""The daemon process: --check, SIGHUP reload, structured log events with chain/transaction/handler."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog
import yaml

from tests.engine_helpers import probe
from vpsadmind.config import Config
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, wait_chain
from vpsadmind.testing.process import DaemonProcess, write_config


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vpsadmind.cli", "--check", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_check_accepts_the_sample_config() -> None:
    sample = Path(__file__).parents[1] / "etc" / "vpsadmind.yml"
    res = run_check(sample)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


def test_check_names_file_key_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(":db:\n  :hosts: [localhost]\n:vpsadmin:\n  :server_id: 1\n  :check_interval: soon\n")
    res = run_check(bad)
    assert res.returncode == 1
    assert str(bad) in res.stderr and "vpsadmin.check_interval" in res.stderr and "expected" in res.stderr


async def test_log_events_carry_chain_transaction_and_handler(db: Any, db_settings: TestDbSettings,
                                                              test_database: str, tmp_path: Path) -> None:
    cfg: Config = make_config(db_settings, test_database, journal=str(tmp_path / "j"))
    fired = await probe(ChainBuilder(), fail=True).fire(db)
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with running_engine(cfg):
            await wait_chain(db, fired.chain_id)
    saved = [e for e in logs if e["event"] == "transaction_saved"]
    assert len(saved) == 1
    event = saved[0]
    assert (event["chain"], event["transaction"], event["handler"], event["direction"]) == (
        fired.chain_id, fired.transaction_ids[0], "Probe", "execute")
    assert event["status"] == "ok" and event["t_done"] == 2  # rolled itself back; status of the rollback
    assert [e["event"] for e in logs if e.get("transaction") == fired.transaction_ids[0]] == [
        "transaction_start", "transaction_saved"]


async def test_sighup_reloads_and_keeps_running_on_a_bad_file(db_settings: TestDbSettings, test_database: str,
                                                              tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=7, journal=tmp_path / "j")
    d = DaemonProcess(cfg_path, tmp_path / "d.log").start()
    try:
        data = yaml.safe_load(cfg_path.read_text())
        data["vpsadmin"]["queues"] = {"general": {"threads": 1, "urgent": 0}}
        cfg_path.write_text(yaml.safe_dump(data))
        d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        d.wait_for_event("reloaded")
        cfg_path.write_text("vpsadmin: [broken")
        d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        failed = d.wait_for_event("reload_failed")
        assert str(cfg_path) in failed["error"]
        data["vpsadmin"]["server_id"] = 8
        cfg_path.write_text(yaml.safe_dump(data))
        d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        assert "server_id" in d.wait_for_event("reload_refused")["error"]
        assert d.returncode is None
    finally:
        assert d.terminate() == 0


def test_systemd_ready_watchdog_and_stopping(db_settings: TestDbSettings, test_database: str,
                                             tmp_path: Path) -> None:
    import os
    import socket

    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(15)
    cfg_path = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=9, journal=tmp_path / "j")
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen([sys.executable, "-m", "vpsadmind.cli", "-c", str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen: list[str] = []
        while not ("WATCHDOG=1" in seen and any(s.startswith("READY=1") for s in seen)):
            seen.append(listener.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in seen:
            seen.append(listener.recv(4096).decode())
        assert proc.wait(timeout=15) == 0
        assert seen.index(next(s for s in seen if s.startswith("READY=1"))) < seen.index("STOPPING=1")
    finally:
        proc.kill()
        listener.close()


async def test_sigterm_is_bounded_and_the_cut_transaction_recovers(db: Any, db_settings: TestDbSettings,
                                                                   test_database: str, tmp_path: Path) -> None:
    import time

    from vpsadmind.testing.handlers import IDEMPOTENT_PROBE, read_effects

    effects = str(tmp_path / "effects")
    fired = await ChainBuilder().append(IDEMPOTENT_PROBE, server=1, params={"effects": effects, "sleep": 60}) \
        .fire(db)
    cfg_path = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=1, journal=tmp_path / "j",
                            extra_vpsadmin={"shutdown_timeout": 1})
    d = DaemonProcess(cfg_path, tmp_path / "d.log").start()
    d.wait_for_event("transaction_start")
    t0 = time.monotonic()
    assert d.terminate(timeout=20) == 0
    assert time.monotonic() - t0 < 5
    assert d.wait_for_event("stopping_cancelled")["cancelled"] == 1
    data = yaml.safe_load(cfg_path.read_text())
    (tmp_path / "effects").unlink()
    data["vpsadmin"]["shutdown_timeout"] = 10
    cfg_path.write_text(yaml.safe_dump(data))
    # the re-run must not sleep a minute: shorten it through the stored params
    async with db.cursor() as cur:
        await cur.execute("UPDATE transactions SET t_param = %s WHERE t_id = %s",
                          (json.dumps({"effects": effects, "sleep": 0}), fired.transaction_ids[0]))
    d2 = DaemonProcess(cfg_path, tmp_path / "d2.log").start()
    try:
        chain = await wait_chain(db, fired.chain_id)
        assert chain["state"] == 2
        assert read_effects(effects) == [f"exec {fired.transaction_ids[0]}"]
        assert d2.wait_for_event("transaction_interrupted")["t_id"] == fired.transaction_ids[0]
    finally:
        d2.terminate()


# ---- operations of a real process: node status, kill, stop ------------------------------------------------


async def test_node_status_is_reported_every_status_interval(db: Any, db_settings: TestDbSettings,
                                                             test_database: str, tmp_path: Path) -> None:
    import asyncio
    import os

    from tests.engine_helpers import fetch

    cfg_path = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=4, journal=tmp_path / "j",
                            extra_vpsadmin={"status_interval": 0.3})
    d = DaemonProcess(cfg_path, tmp_path / "d.log").start()
    try:
        assert d.wait_for_event("node_status_reporter_started")["interval"] == 0.3
        seen = set()
        for _ in range(100):
            rows = await fetch(db, "SELECT server_id, kernel, daemon, created_at FROM servers_status")
            if rows:
                assert [(r["server_id"], r["kernel"], r["daemon"]) for r in rows] == [(4, os.uname().release, 0)]
                seen.add(rows[0]["created_at"])
            if len(seen) >= 2:  # refreshed in place
                break
            await asyncio.sleep(0.1)
        assert len(seen) >= 2
    finally:
        assert d.terminate() == 0  # the reporter stops with the daemon, cleanly


async def test_ctl_kill_and_stop_force_with_transactions_in_flight(db: Any, db_settings: TestDbSettings,
                                                                   test_database: str, tmp_path: Path) -> None:
    import asyncio
    import time

    from tests.engine_helpers import output
    from vpsadmind import ctl
    from vpsadmind.testing.engine import transactions_of
    from vpsadmind.testing.handlers import PROBE, read_effects

    effects = str(tmp_path / "effects")
    sock = str(tmp_path / "ctl.sock")
    cfg_path = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=1, journal=tmp_path / "j",
                            control_socket=Path(sock))
    d = DaemonProcess(cfg_path, tmp_path / "d.log").start()
    try:
        killed = await ChainBuilder().append(PROBE, server=1, params={"effects": effects, "sleep": 60}).fire(db)
        cut = await ChainBuilder().append(PROBE, server=1, params={"sleep": 60}).fire(db)
        d.wait_for_event("transaction_start", transaction=killed.transaction_ids[0])
        d.wait_for_event("transaction_start", transaction=cut.transaction_ids[0])
        assert await asyncio.to_thread(ctl.main, ["-s", sock, "kill", str(killed.transaction_ids[0])]) == 0
        assert (await wait_chain(db, killed.chain_id))["state"] == 4
        row = (await transactions_of(db, killed.chain_id))[0]
        assert (row["t_done"], output(row)["error"]) == (2, "Killed")
        assert read_effects(effects) == [f"exec {killed.transaction_ids[0]}", f"rollback {killed.transaction_ids[0]}"]
        t0 = time.monotonic()
        assert await asyncio.to_thread(ctl.main, ["-s", sock, "stop", "-f"]) == 0
        assert await asyncio.to_thread(d.wait, 20) == 100
        assert time.monotonic() - t0 < 5  # not the minute the transaction would have slept
        row = (await transactions_of(db, cut.chain_id))[0]
        assert row["t_done"] == 0 and row["started_at"] is not None  # discarded unsaved: recovered at next start
    finally:
        d.kill()
