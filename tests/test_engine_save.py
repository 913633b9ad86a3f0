"""The result save and chain movement of contract 3.3/3.4, row by row, through a running engine and MariaDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch, output, probe
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState, Reversible, TDone, TSuccess
from vpsadmind.testing.chains import ChainBuilder, register_node
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, transactions_of, wait_chain
from vpsadmind.testing.handlers import read_effects

NOOP = 10001


@pytest.fixture
def cfg(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> Config:
    return make_config(db_settings, test_database, journal=str(tmp_path / "journal"))


@pytest.fixture
def effects(tmp_path: Path) -> str:
    return str(tmp_path / "effects")


async def run_chain(db: Any, cfg: Config, builder: ChainBuilder) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fired = await builder.fire(db)
    async with running_engine(cfg):
        chain = await wait_chain(db, fired.chain_id)
    return chain, await transactions_of(db, fired.chain_id)


async def test_all_ok_chain_is_done_with_progress_and_times(db: Any, cfg: Config) -> None:
    b = ChainBuilder("noops")
    for _ in range(3):
        b.append(NOOP, server=1)
    chain, rows = await run_chain(db, cfg, b)
    assert (chain["state"], chain["progress"], chain["size"]) == (ChainState.DONE, 3, 3)
    assert [(r["t_done"], r["t_success"]) for r in rows] == [(1, 1)] * 3
    assert all(r["started_at"] is not None and r["finished_at"] >= r["started_at"] for r in rows)
    assert output(rows[0]) == {}


async def test_warning_is_saved_as_2_and_chain_done(db: Any, cfg: Config) -> None:
    chain, rows = await run_chain(db, cfg, probe(ChainBuilder(), warn=True))
    assert chain["state"] == ChainState.DONE
    assert rows[0]["t_success"] == TSuccess.WARNING


async def test_failure_mid_chain_rolls_back_earlier_in_reverse_order(db: Any, cfg: Config, effects: str) -> None:
    b = ChainBuilder()
    probe(b, effects=effects)
    probe(b, effects=effects)
    probe(b, effects=effects, fail=True)
    probe(b, effects=effects)
    chain, rows = await run_chain(db, cfg, b)
    t1, t2, t3, t4 = (r["t_id"] for r in rows)
    assert read_effects(effects) == [f"exec {t1}", f"exec {t2}", f"exec {t3}", f"rollback {t3}",
                                     f"rollback {t2}", f"rollback {t1}"]
    assert (chain["state"], chain["progress"]) == (ChainState.FAILED, 0)
    # the failing one rolled itself back: t_done 2 and, as in v2.0, the status of its rollback
    assert (rows[2]["t_done"], rows[2]["t_success"]) == (TDone.ROLLED_BACK, TSuccess.OK)
    assert "failed on purpose" in output(rows[2])["error"]
    assert output(rows[2])["rollback"]["status"] == "ok"
    assert (rows[3]["t_done"], rows[3]["t_success"], output(rows[3])) == (1, 0, {"error": "Dependency failed"})
    assert [(r["t_done"], r["t_success"]) for r in rows[:2]] == [(2, 1), (2, 1)]
    assert t4 not in {int(line.split()[1]) for line in read_effects(effects)}


async def test_first_transaction_failing_closes_chain_at_once(db: Any, cfg: Config, effects: str) -> None:
    b = ChainBuilder()
    probe(b, effects=effects, fail=True)
    probe(b, effects=effects)
    chain, rows = await run_chain(db, cfg, b)
    assert (chain["state"], chain["progress"]) == (ChainState.FAILED, 0)
    assert rows[1]["t_done"] == 1 and output(rows[1]) == {"error": "Dependency failed"}


async def test_last_transaction_failing_rolls_back_the_others(db: Any, cfg: Config, effects: str) -> None:
    b = ChainBuilder()
    probe(b, effects=effects)
    probe(b, effects=effects, fail=True, raise_error=True)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FAILED
    assert read_effects(effects)[-1] == f"rollback {rows[0]['t_id']}"
    assert "RuntimeError" in output(rows[1])["error"] and "backtrace" in output(rows[1])


async def test_keep_going_failure_mid_chain_goes_on(db: Any, cfg: Config, effects: str) -> None:
    b = ChainBuilder()
    probe(b, effects=effects, fail=True, reversible=Reversible.KEEP_GOING)
    probe(b, effects=effects)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.DONE and chain["progress"] == 2
    assert [(r["t_done"], r["t_success"]) for r in rows] == [(1, 0), (1, 1)]
    assert f"rollback {rows[0]['t_id']}" not in read_effects(effects)


async def test_keep_going_failure_at_the_end_fails_the_chain(db: Any, cfg: Config) -> None:
    b = ChainBuilder()
    b.append(NOOP, server=1)
    probe(b, fail=True, reversible=Reversible.KEEP_GOING)
    chain, _rows = await run_chain(db, cfg, b)
    assert (chain["state"], chain["progress"]) == (ChainState.FAILED, 2)


async def test_irreversible_failure_fails_followers_and_keeps_earlier(db: Any, cfg: Config, effects: str) -> None:
    b = ChainBuilder()
    probe(b, effects=effects)
    probe(b, effects=effects, fail=True, reversible=Reversible.NOT_REVERSIBLE)
    probe(b, effects=effects)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FAILED
    assert [(r["t_done"], r["t_success"]) for r in rows] == [(1, 1), (1, 0), (1, 0)]
    assert not [line for line in read_effects(effects) if line.startswith("rollback")]


async def test_failed_rollback_makes_chain_fatal_and_keeps_locks(db: Any, cfg: Config, effects: str) -> None:
    await register_node(db, 1, name="node1", ip4="127.0.0.2")
    b = ChainBuilder().lock("Vps", 101).reserve_port(1)
    probe(b, effects=effects, fail_rollback=True)
    probe(b, effects=effects, fail=True)
    chain, rows = await run_chain(db, cfg, b)
    assert (chain["state"], chain["progress"]) == (ChainState.FATAL, 0)
    assert (rows[0]["t_done"], rows[0]["t_success"]) == (TDone.ROLLED_BACK, TSuccess.FAILED)
    assert "rollback failed on purpose" in output(rows[0])["error"]
    assert await fetch(db, "SELECT row_id FROM resource_locks WHERE transaction_chain_id = %s", chain["id"])
    assert await fetch(db, "SELECT port FROM port_reservations WHERE transaction_chain_id = %s", chain["id"])


async def test_failed_self_rollback_keeps_both_errors_and_is_fatal(db: Any, cfg: Config) -> None:
    b = ChainBuilder()
    b.append(NOOP, server=1)
    probe(b, fail=True, fail_rollback=True)
    chain, rows = await run_chain(db, cfg, b)
    out = output(rows[1])
    assert chain["state"] == ChainState.FATAL
    assert "failed on purpose" in out["error"] and "rollback failed on purpose" in out["rollback_error"]


async def test_irreversible_met_in_rollback_is_fatal_and_named(db: Any, cfg: Config) -> None:
    b = ChainBuilder()
    probe(b, reversible=Reversible.NOT_REVERSIBLE)
    probe(b, fail=True)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FATAL
    assert f"transaction {rows[0]['t_id']} (type 90001, Probe) is irreversible" in output(rows[0])["error"]


async def test_keep_going_met_in_rollback_is_skipped_with_note(db: Any, cfg: Config, effects: str) -> None:
    b = ChainBuilder()
    probe(b, effects=effects)
    probe(b, effects=effects, reversible=Reversible.KEEP_GOING)
    probe(b, effects=effects, fail=True)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FAILED
    assert rows[1]["t_done"] == TDone.ROLLED_BACK and "keep_going" in output(rows[1])["note"]
    assert f"rollback {rows[1]['t_id']}" not in read_effects(effects)
    assert read_effects(effects)[-1] == f"rollback {rows[0]['t_id']}"


async def test_unsupported_type_fails_and_rolls_back(db: Any, cfg: Config, effects: str) -> None:
    b = ChainBuilder()
    probe(b, effects=effects)
    b.append(4242, server=1)
    chain, rows = await run_chain(db, cfg, b)
    assert chain["state"] == ChainState.FAILED
    assert output(rows[1])["error"] == "Unsupported command"
    assert read_effects(effects)[-1] == f"rollback {rows[0]['t_id']}"


@pytest.mark.parametrize(("raw", "needle", "field"), [
    ("{not json", "Bad param syntax", None),
    ("[1, 2]", "expected a JSON object", None),
    ('{"sleep": "long"}', "expected a number", "sleep"),
    ('{"fail": 1}', "expected true or false", "fail"),
])
async def test_bad_params_fail_with_the_field_named(db: Any, cfg: Config, raw: str, needle: str,
                                                    field: str | None) -> None:
    b = ChainBuilder().append(90001, server=1, raw_param=raw)
    chain, rows = await run_chain(db, cfg, b)
    out = output(rows[0])
    assert chain["state"] == ChainState.FAILED
    assert needle in out["error"]
    assert out.get("field") == field


async def test_post_save_only_after_success(db: Any, cfg: Config) -> None:
    b = ChainBuilder()
    probe(b, mark=True)
    probe(b, mark=True, fail=True, reversible=Reversible.KEEP_GOING)
    _chain, rows = await run_chain(db, cfg, b)
    marks = await fetch(db, "SELECT cfg_name FROM sysconfig WHERE cfg_name LIKE 'probe:%%'")
    assert [m["cfg_name"] for m in marks] == [f"probe:{rows[0]['t_id']}"]


async def test_locks_and_ports_released_when_done(db: Any, cfg: Config) -> None:
    await register_node(db, 1, name="node1", ip4="127.0.0.2")
    b = ChainBuilder().lock("Vps", 7).reserve_port(1).append(NOOP, server=1)
    chain, _ = await run_chain(db, cfg, b)
    assert not await fetch(db, "SELECT id FROM resource_locks WHERE transaction_chain_id = %s", chain["id"])
    ports = await fetch(db, "SELECT addr FROM port_reservations WHERE transaction_chain_id = %s", chain["id"])
    assert ports == []
    assert not await fetch(db, "SELECT id FROM port_reservations WHERE addr IS NOT NULL")


async def test_chain_hopping_between_two_nodes(db: Any, db_settings: TestDbSettings, test_database: str,
                                               tmp_path: Path, effects: str) -> None:
    c1 = make_config(db_settings, test_database, server_id=1, journal=str(tmp_path / "j1"))
    c2 = make_config(db_settings, test_database, server_id=2, journal=str(tmp_path / "j2"))
    b = ChainBuilder()
    probe(b, 1, effects=effects)
    probe(b, 2, effects=effects)
    probe(b, 1, effects=effects, fail=True)
    fired = await b.fire(db)
    async with running_engine(c1), running_engine(c2):
        chain = await wait_chain(db, fired.chain_id)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.FAILED
    assert [r["t_done"] for r in rows] == [2, 2, 2]
    assert read_effects(effects)[-2:] == [f"rollback {rows[1]['t_id']}", f"rollback {rows[0]['t_id']}"]
