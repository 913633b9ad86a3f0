"""A handler that loses the database under it (MariaDB restarts while it reads a row) has not failed: the runner
waits until the database answers again and takes the path of a run a crash interrupted. The soak found a
Vps::Destroy chain failed halfway by a database restart, after its irreversible steps.

A real private MariaDB is stopped and started while the handlers run."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from structlog.testing import capture_logs

from vpsadmind.db import Database
from vpsadmind.engine.model import Direction, Transaction, TSuccess
from vpsadmind.engine.runner import run_transaction
from vpsadmind.handlers.base import HANDLERS, Handler, HandlerContext, Outcome, Recovery, handler
from vpsadmind.handlers.params import NoParams
from vpsadmind.testing.engine import make_config
from vpsadmind.testing.mariadb import PrivateMariaDB, private_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RERUNS, RECOVERS = 99301, 99302


class _Reader(Handler[NoParams]):
    """Waits for the test's go, then reads one row; counts its runs."""

    Params = NoParams
    runs: ClassVar[list[str]] = []
    go: ClassVar[asyncio.Event | None] = None

    async def exec(self) -> Outcome | None:
        type(self).runs.append("exec")
        if type(self).go is not None and len(type(self).runs) == 1:
            await type(self).go.wait()
        row = await self.ctx.db.fetchone("SELECT 1 AS one")
        return Outcome(output={"one": row["one"] if row else None})


@handler(RERUNS)
class RerunsReader(_Reader):
    idempotent = True


@handler(RECOVERS)
class RecoversReader(_Reader):
    async def recover(self, direction: Direction) -> Outcome | Recovery:
        type(self).runs.append("recover")
        return Recovery.RERUN


@pytest.fixture(scope="module")
def private_db() -> Iterator[PrivateMariaDB]:
    with private_server("vpsadmind_dbloss") as server:
        yield server


def _transaction(t_type: int) -> Transaction:
    return Transaction(t_id=5, chain_id=3, t_type=t_type, t_server=1, t_vps=None, t_depends_on=None, t_urgent=False,
                       t_priority=0, t_success=0, t_done=0, t_param=json.dumps({}), reversible=1, queue="general",
                       chain_state=1, chain_progress=0, chain_size=1, urgent_rollback=False)


@pytest.mark.parametrize("t_type,runs", [(RERUNS, ["exec", "exec"]), (RECOVERS, ["exec", "recover", "exec"])])
async def test_a_database_restart_under_a_handler_is_not_a_failure(private_db: PrivateMariaDB, tmp_path: Path,
                                                                  t_type: int, runs: list[str]) -> None:
    cfg = make_config(private_db.settings(), "vpsadmind_dbloss", journal=str(tmp_path / "journal"))
    cfg = dataclasses.replace(cfg, db=dataclasses.replace(cfg.db, connect_timeout=1.0))
    db = Database(cfg.db)
    cls: Any = HANDLERS[t_type]
    cls.runs, cls.go = [], asyncio.Event()
    try:
        await db.fetchone("SELECT 1")  # a pooled connection that the restart will break
        ctx = HandlerContext(config=cfg, db=db)
        with capture_logs() as logs:
            task = asyncio.create_task(run_transaction(_transaction(t_type), ctx))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(private_db.stop)
            cls.go.set()
            await asyncio.sleep(1.5)  # the handler hit the dead database and waits
            assert not task.done()
            await asyncio.to_thread(private_db.start)
            result, _ = await asyncio.wait_for(task, 60)
    finally:
        await db.close()
        if private_db.proc is None:
            await asyncio.to_thread(private_db.start)
    assert result.status == TSuccess.OK, result.output
    assert result.output == {"one": 1}
    assert cls.runs == runs
    assert any(e["event"] == "transaction_db_lost" for e in logs), logs


async def test_a_handler_oserror_is_still_a_failure(private_db: PrivateMariaDB, tmp_path: Path) -> None:
    """Only the database connection counts: a handler's own OSError (a file, a command) fails the run."""

    @handler(99303)
    class Broken(Handler[NoParams]):
        Params = NoParams
        idempotent = True
        calls: ClassVar[int] = 0

        async def exec(self) -> Outcome | None:
            type(self).calls += 1
            raise FileNotFoundError("/nonexistent/conf")

    cfg = make_config(private_db.settings(), "vpsadmind_dbloss", journal=str(tmp_path / "journal"))
    db = Database(cfg.db)
    try:
        result, _ = await run_transaction(_transaction(99303), HandlerContext(config=cfg, db=db))
    finally:
        await db.close()
        HANDLERS.pop(99303, None)
    assert Broken.calls == 1 and result.self_rolled_back  # failed (then rolled back), not run again
    assert "FileNotFoundError" in result.output["error"]
