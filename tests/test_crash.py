"""Crash safety beyond v2.0 (issue 2, part 5): real daemon processes, kill -9, a second daemon, a DB outage.

The probe handlers record their effects in a file, so "ran exactly once" is counted from effects, not logs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch, output, probe
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings, connect
from vpsadmind.testing.engine import transactions_of, wait_chain
from vpsadmind.testing.handlers import IDEMPOTENT_PROBE, RECOVERING_PROBE, read_effects
from vpsadmind.testing.process import DaemonProcess, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon_factory(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> Any:
    started: list[DaemonProcess] = []

    def make(server_id: int = 1, *, settings: TestDbSettings | None = None, database: str | None = None,
             name: str = "d", **kw: Any) -> DaemonProcess:
        cfg = write_config(tmp_path / f"{name}{server_id}.yml", settings or db_settings, database or test_database,
                           server_id=server_id, journal=tmp_path / f"journal{server_id}", **kw)
        d = DaemonProcess(cfg, tmp_path / f"{name}{server_id}.log")
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()


async def wait_effect(path: str, line: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if line in read_effects(path):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{line!r} never appeared in {path}: {read_effects(path)}")


async def test_kill9_non_idempotent_runs_once_and_chain_rolls_back(db: Any, daemon_factory: Any,
                                                                   tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    b = ChainBuilder()
    probe(b, effects=effects)
    probe(b, effects=effects, sleep=60)
    probe(b, effects=effects)
    fired = await b.fire(db)
    t1, t2, _t3 = fired.transaction_ids
    d = daemon_factory().start()
    await wait_effect(effects, f"exec {t2}")
    d.kill()
    d2 = daemon_factory(name="again").start()
    chain = await wait_chain(db, fired.chain_id)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.FAILED
    assert read_effects(effects).count(f"exec {t2}") == 1
    assert read_effects(effects) == [f"exec {t1}", f"exec {t2}", f"rollback {t2}", f"rollback {t1}"]
    assert "interrupted" in output(rows[1])["error"]
    d2.terminate()


async def test_kill9_idempotent_handler_is_run_again(db: Any, daemon_factory: Any, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    fired = await ChainBuilder().append(IDEMPOTENT_PROBE, server=1, params={"effects": effects, "sleep": 1.5}) \
        .fire(db)
    (t1,) = fired.transaction_ids
    d = daemon_factory().start()
    await wait_effect(effects, f"exec {t1}")
    d.kill()
    daemon_factory(name="again").start()
    chain = await wait_chain(db, fired.chain_id)
    assert chain["state"] == ChainState.DONE
    assert read_effects(effects) == [f"exec {t1}", f"exec {t1}"]


async def test_kill9_recovering_handler_inspects_state_instead(db: Any, daemon_factory: Any, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    fired = await ChainBuilder().append(RECOVERING_PROBE, server=1, params={"effects": effects, "sleep": 60}) \
        .fire(db)
    (t1,) = fired.transaction_ids
    d = daemon_factory().start()
    await wait_effect(effects, f"exec {t1}")
    d.kill()
    daemon_factory(name="again").start()
    chain = await wait_chain(db, fired.chain_id)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.DONE
    assert read_effects(effects) == [f"exec {t1}"]
    assert output(rows[0])["recovered"] is True


async def test_second_daemon_for_same_server_is_refused(daemon_factory: Any) -> None:
    first = daemon_factory().start()
    second = daemon_factory(name="second").start(wait=False)
    assert second.wait(timeout=20) == 3
    refused = second.wait_for_event("node_locked")
    assert f"pid {first.pid}" in refused["error"] and "already served" in refused["error"]
    assert first.returncode is None
    assert first.terminate() == 0


async def test_sigterm_lets_running_work_finish(db: Any, daemon_factory: Any, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    fired = await probe(ChainBuilder(), effects=effects, sleep=1.0).fire(db)
    d = daemon_factory().start()
    await wait_effect(effects, f"exec {fired.transaction_ids[0]}")
    assert d.terminate(timeout=15) == 0
    chain = await wait_chain(db, fired.chain_id, timeout=1)
    assert chain["state"] == ChainState.DONE


async def test_failover_to_the_next_db_host(db: Any, daemon_factory: Any, db_settings: TestDbSettings) -> None:
    from vpsadmind.testing.mariadb import free_port

    hosts = [f"127.0.0.1:{free_port()}", f"{db_settings.host}:{db_settings.port}"]
    fired = await ChainBuilder().append(10001, server=1).fire(db)
    daemon_factory(hosts=hosts).start()
    assert (await wait_chain(db, fired.chain_id))["state"] == ChainState.DONE


async def test_db_version_is_awaited(db: Any, daemon_factory: Any) -> None:
    async with db.cursor() as cur:
        await cur.execute("UPDATE sysconfig SET cfg_value = '14' WHERE cfg_name = 'db_version'")
    d = daemon_factory().start(wait=False)
    d.wait_for_event("db_version_mismatch")
    async with db.cursor() as cur:
        await cur.execute("UPDATE sysconfig SET cfg_value = %s WHERE cfg_name = 'db_version'", (json.dumps("install"),))
    d.wait_for_event("started")
    rows = await fetch(db, "SELECT cfg_value FROM sysconfig WHERE cfg_name = 'db_version'")
    assert json.loads(rows[0]["cfg_value"]) == 15


@pytest.fixture
def private_db(tmp_path: Path) -> Any:
    from vpsadmind.testing.mariadb import private_server

    with private_server("vpsadmind_outage") as server:
        yield server


async def test_db_outage_loses_no_result_and_reruns_nothing(private_db: Any, daemon_factory: Any,
                                                            tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    settings = private_db.settings()
    conn = await connect(settings, "vpsadmind_outage")
    b = ChainBuilder()
    probe(b, effects=effects, sleep=1.5)
    probe(b, effects=effects)
    fired = await b.fire(conn)
    conn.close()
    t1, t2 = fired.transaction_ids
    d = daemon_factory(settings=settings, database="vpsadmind_outage").start()
    await wait_effect(effects, f"exec {t1}")
    private_db.stop()                       # the probe finishes while MariaDB is down
    d.wait_for_event("result_journaled", timeout=15)
    journal = list((tmp_path / "journal1").glob("*.json"))
    assert len(journal) == 1
    assert effects not in journal[0].read_text()  # no t_param on disk: it may carry a password (2002)
    d.kill()                                 # and the daemon dies during the outage
    private_db.start()
    daemon_factory(settings=settings, database="vpsadmind_outage", name="again").start()
    conn = await connect(settings, "vpsadmind_outage")
    try:
        chain = await wait_chain(conn, fired.chain_id)
    finally:
        conn.close()
    assert chain["state"] == ChainState.DONE
    assert read_effects(effects) == [f"exec {t1}", f"exec {t2}"]
    assert not list((tmp_path / "journal1").glob("*.json"))


async def test_db_restart_while_running_reconnects(private_db: Any, daemon_factory: Any, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    settings = private_db.settings()
    conn = await connect(settings, "vpsadmind_outage")
    fired = await probe(probe(ChainBuilder(), effects=effects, sleep=1.0), effects=effects).fire(conn)
    conn.close()
    d = daemon_factory(settings=settings, database="vpsadmind_outage").start()
    await wait_effect(effects, f"exec {fired.transaction_ids[0]}")
    private_db.stop()
    await asyncio.sleep(2.0)
    private_db.start()
    conn = await connect(settings, "vpsadmind_outage")
    try:
        chain = await wait_chain(conn, fired.chain_id, timeout=30)
    finally:
        conn.close()
    assert chain["state"] == ChainState.DONE
    assert [e.split()[0] for e in read_effects(effects)] == ["exec", "exec"]
    assert d.returncode is None
