"""Queues and dispatch (contract 3.1, 4.1, 4.4, 12.2) through a running engine and MariaDB: slots and urgent
slots, start_delay, priorities, rollback order and the dedicated rollback queue, urgent_rollback, one
running transaction per chain, chain blockers across nodes and the fallback to ``general``.

Concurrency is measured with monotonic timestamps that the test handlers below record at the start and end of
their exec/rollback; the engine runs in this process, so the clocks agree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch
from vpsadmind.config import DEFAULT_QUEUES, Config, QueueConfig
from vpsadmind.engine.core import Engine
from vpsadmind.engine.model import ChainState
from vpsadmind.handlers.base import Handler, Outcome, failed, handler, ok
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import chain_state, make_config, running_engine, transactions_of, wait_chain

TIMED = 91001
BLOCKER = 91002


# ---- test handlers ---------------------------------------------------------------------------------------

@dataclass
class Span:
    kind: str  # "exec" or "rollback"
    t_id: int
    server: int
    start: float
    end: float | None = None


SPANS: list[Span] = []
BLOCKS: dict[int, tuple[float, float]] = {}  # blocker t_id -> (start, end) of its chain blocker


@pytest.fixture(autouse=True)
def _clear_records() -> Iterator[None]:
    SPANS.clear()
    BLOCKS.clear()
    yield
    SPANS.clear()
    BLOCKS.clear()


@dataclass(frozen=True, slots=True)
class TimedParams:
    sleep: float = 0.0
    rollback_sleep: float = 0.0
    fail: bool = False


@handler(TIMED)
class Timed(Handler[TimedParams]):
    """Records when its exec and rollback ran."""

    Params = TimedParams

    async def _span(self, kind: str, sleep: float) -> None:
        span = Span(kind, self.transaction.t_id, self.ctx.server_id, time.monotonic())
        SPANS.append(span)
        await asyncio.sleep(sleep)
        span.end = time.monotonic()

    async def exec(self) -> Outcome | None:
        await self._span("exec", self.params.sleep)
        return failed("timed failure on purpose") if self.params.fail else ok()

    async def rollback(self) -> Outcome | None:
        await self._span("rollback", self.params.rollback_sleep)
        return ok()


@dataclass(frozen=True, slots=True)
class BlockerParams:
    hold: float = 0.5


@handler(BLOCKER)
class Blocker(Handler[BlockerParams]):
    """Like v2.0's Dataset::Recv: leaves work running in the background that blocks its chain on this node."""

    Params = BlockerParams

    async def exec(self) -> Outcome | None:
        t_id = self.transaction.t_id

        async def hold() -> None:
            start = time.monotonic()
            await asyncio.sleep(self.params.hold)
            BLOCKS[t_id] = (start, time.monotonic())

        self.ctx.block_chain(self.transaction.chain_id, hold())
        return ok()


# ---- helpers ---------------------------------------------------------------------------------------------

@pytest.fixture
def journal(tmp_path: Path) -> str:
    return str(tmp_path / "journal")


def config(db_settings: TestDbSettings, database: str, journal: str, *, server_id: int = 1,
           queues: dict[str, QueueConfig] | None = None) -> Config:
    return make_config(db_settings, database, server_id=server_id, journal=f"{journal}{server_id}", queues=queues)


def only(**queues: QueueConfig) -> dict[str, QueueConfig]:
    """Every default queue closed (0 slots) but ``queues``: keeps the candidate LIMIT (their sum) small."""
    out = {name: QueueConfig(0, 0) for name in DEFAULT_QUEUES}
    out.update(queues)
    return out


def timed(b: ChainBuilder, *, server: int = 1, queue: str = "general", urgent: bool = False, priority: int = 0,
          **params: Any) -> ChainBuilder:
    return b.append(TIMED, server=server, queue=queue, urgent=urgent, priority=priority, params=params)


async def fire_single(db: Any, n: int, **kw: Any) -> list[int]:
    """``n`` chains of one timed transaction each; returns the chain ids."""
    return [(await timed(ChainBuilder(), **kw).fire(db)).chain_id for _ in range(n)]


async def wait_all(db: Any, chains: list[int], timeout: float = 10.0) -> list[dict[str, Any]]:
    return [await wait_chain(db, c, timeout=timeout) for c in chains]


def spans(kind: str = "exec", t_ids: set[int] | None = None) -> list[Span]:
    return [s for s in SPANS if s.kind == kind and (t_ids is None or s.t_id in t_ids)]


def max_overlap(items: list[Span]) -> int:
    """Most spans open at once; an end at the same instant as a start counts as before it."""
    points: list[tuple[float, int]] = []
    for s in items:
        assert s.end is not None, f"span of {s.t_id} never ended"
        points += [(s.start, 1), (s.end, -1)]
    best = cur = 0
    for _at, step in sorted(points):
        cur += step
        best = max(best, cur)
    return best


class Sampler:
    """Samples ``engine.queues.get(name).used`` while the test waits."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine, self.name, self.max_used = engine, name, 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.max_used = max(self.max_used, self.engine.queues.get(self.name).used)
            await asyncio.sleep(0.002)

    async def stop(self) -> int:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.max_used


async def t_ids_of(db: Any, chain_id: int) -> list[int]:
    return [r["t_id"] for r in await transactions_of(db, chain_id)]


async def wait_for(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout} s")
        await asyncio.sleep(0.005)


# ---- slots ---------------------------------------------------------------------------------------------

async def test_queue_runs_at_most_threads_at_once(db: Any, db_settings: TestDbSettings, test_database: str,
                                                  journal: str) -> None:
    cfg = config(db_settings, test_database, journal, queues={"q": QueueConfig(threads=2, urgent=1)})
    chains = await fire_single(db, 5, queue="q", sleep=0.25)
    async with running_engine(cfg) as engine:
        sampler = Sampler(engine, "q")
        states = await wait_all(db, chains)
        max_used = await sampler.stop()
    assert [s["state"] for s in states] == [ChainState.DONE] * 5
    assert len(spans()) == 5
    assert max_overlap(spans()) == 2
    assert max_used == 2


async def test_urgent_transactions_use_the_extra_slots(db: Any, db_settings: TestDbSettings, test_database: str,
                                                       journal: str) -> None:
    cfg = config(db_settings, test_database, journal, queues={"q": QueueConfig(threads=2, urgent=1)})
    chains = await fire_single(db, 5, queue="q", urgent=True, sleep=0.25)
    async with running_engine(cfg) as engine:
        sampler = Sampler(engine, "q")
        await wait_all(db, chains)
        max_used = await sampler.stop()
    assert len(spans()) == 5
    assert max_overlap(spans()) == 3
    assert max_used == 3


async def test_urgent_slot_is_not_taken_by_normal_transactions(db: Any, db_settings: TestDbSettings,
                                                               test_database: str, journal: str) -> None:
    cfg = config(db_settings, test_database, journal, queues={"q": QueueConfig(threads=2, urgent=1)})
    normal = await fire_single(db, 3, queue="q", sleep=0.3)
    urgent = await fire_single(db, 2, queue="q", urgent=True, sleep=0.3)
    async with running_engine(cfg):
        await wait_all(db, normal + urgent)
    normal_ids = {t for c in normal for t in await t_ids_of(db, c)}
    urgent_ids = {t for c in urgent for t in await t_ids_of(db, c)}
    assert max_overlap(spans()) == 3
    assert max_overlap(spans(t_ids=normal_ids)) == 2
    # the first poll starts two normal ones and one urgent one at once
    first = min(s.start for s in spans())
    early = {s.t_id for s in spans() if s.start - first < 0.15}
    assert len(early & normal_ids) == 2 and len(early & urgent_ids) == 1


async def test_unknown_queue_falls_back_to_general(db: Any, db_settings: TestDbSettings, test_database: str,
                                                   journal: str) -> None:
    cfg = config(db_settings, test_database, journal, queues={"general": QueueConfig(threads=1, urgent=0)})
    chains = await fire_single(db, 3, queue="no_such_queue", sleep=0.15)
    async with running_engine(cfg) as engine:
        await wait_for(lambda: _running(engine), what="a transaction running")
        running = next(iter(engine.running.values()))
        assert running.queue.name == "general"
        assert engine.queues.get("general").used == 1
        states = await wait_all(db, chains)
    assert [s["state"] for s in states] == [ChainState.DONE] * 3
    assert max_overlap(spans()) == 1
    rows = await fetch(db, "SELECT DISTINCT queue FROM transactions")
    assert rows == [{"queue": "no_such_queue"}]


async def _running(engine: Engine) -> bool:
    return bool(engine.running)


# ---- start delay -------------------------------------------------------------------------------------------

async def test_start_delay_holds_only_its_queue(db: Any, db_settings: TestDbSettings, test_database: str,
                                                journal: str) -> None:
    late_queue = QueueConfig(threads=1, urgent=1, start_delay=1.0)
    cfg = config(db_settings, test_database, journal, queues={"late": late_queue})
    [late] = await fire_single(db, 1, queue="late", urgent=True)
    [early] = await fire_single(db, 1, queue="general")
    async with running_engine(cfg) as engine:
        opened = engine.queues.started_at
        await wait_chain(db, early)
        early_done = time.monotonic()
        assert early_done - opened < 0.9  # general ran at once ...
        [row] = await transactions_of(db, late)
        assert row["started_at"] is None and row["t_done"] == 0  # ... while `late` waits, even if urgent
        assert not spans(t_ids={row["t_id"]})
        await wait_chain(db, late, timeout=5.0)
    [late_span] = spans(t_ids={row["t_id"]})
    assert late_span.start >= opened + 1.0
    assert late_span.start < opened + 1.5


async def test_waiting_start_delayed_queue_does_not_crowd_out_others(db: Any, db_settings: TestDbSettings,
                                                                    test_database: str, journal: str) -> None:
    """The candidate LIMIT is the sum of all slots (2 here); four rows of a queue that has not started yet
    must not take it, or nothing else would run before the delay ends."""
    cfg = config(db_settings, test_database, journal,
                 queues=only(general=QueueConfig(1, 0), late=QueueConfig(1, 0, start_delay=5.0)))
    late = await fire_single(db, 4, queue="late")
    [other] = await fire_single(db, 1, queue="general")
    async with running_engine(cfg):
        state = await wait_chain(db, other, timeout=1.5)
        assert state["state"] == ChainState.DONE
        rows = [r for c in late for r in await transactions_of(db, c)]
    assert all(r["started_at"] is None for r in rows)


async def test_non_urgent_backlog_does_not_crowd_out_other_queues(db: Any, db_settings: TestDbSettings,
                                                                  test_database: str, journal: str) -> None:
    cfg = config(db_settings, test_database, journal,
                 queues=only(general=QueueConfig(1, 0), q=QueueConfig(1, 1)))  # candidate LIMIT 3
    [busy] = await fire_single(db, 1, queue="q", sleep=1.0)
    backlog = await fire_single(db, 3, queue="q")
    [other] = await fire_single(db, 1, queue="general")
    async with running_engine(cfg):
        await wait_chain(db, other, timeout=3.0)
        await wait_all(db, [busy, *backlog])
    [busy_span] = spans(t_ids=set(await t_ids_of(db, busy)))
    [other_span] = spans(t_ids=set(await t_ids_of(db, other)))
    assert busy_span.end is not None
    assert other_span.start < busy_span.end  # `general` had a free slot all along


# ---- priorities and order --------------------------------------------------------------------------------

async def test_priority_desc_then_t_id_asc(db: Any, db_settings: TestDbSettings, test_database: str,
                                           journal: str) -> None:
    cfg = config(db_settings, test_database, journal, queues={"solo": QueueConfig(threads=1, urgent=0)})
    prios = [0, 5, -10, 5, 0, 10, -10]
    fired = []
    for p in prios:
        chain = (await timed(ChainBuilder(), queue="solo", priority=p, sleep=0.01).fire(db)).chain_id
        fired.append((p, (await t_ids_of(db, chain))[0], chain))
    async with running_engine(cfg):
        await wait_all(db, [c for *_, c in fired])
    expected = [t for _p, t, _c in sorted(fired, key=lambda x: (-x[0], x[1]))]
    assert [s.t_id for s in sorted(spans(), key=lambda s: s.start)] == expected
    assert max_overlap(spans()) == 1


async def make_rollbacking(db: Any, chain_id: int, *, pending: bool = False) -> None:
    """Put a two-transaction chain where v2.0 leaves it after its second transaction failed and rolled
    itself back: first done and ok, second rolled back, chain rollbacking with progress 0. With ``pending``
    the second is left waiting, so nothing may roll back yet (see :func:`release_rollback`)."""
    first, second = await t_ids_of(db, chain_id)
    await fetch(db, "UPDATE transactions SET t_done = 1, t_success = 1, started_at = UTC_TIMESTAMP(), "
                    "finished_at = UTC_TIMESTAMP() WHERE t_id = %s", first)
    await fetch(db, "UPDATE transactions SET t_done = %s, t_success = 1, t_output = '{}' WHERE t_id = %s",
                (0 if pending else 2, second))
    await fetch(db, "UPDATE transaction_chains SET state = 3, progress = 0 WHERE id = %s", chain_id)


async def release_rollback(db: Any, chain_id: int) -> None:
    _first, second = await t_ids_of(db, chain_id)
    await fetch(db, "UPDATE transactions SET t_done = 2 WHERE t_id = %s", second)


async def test_rollbacks_run_priority_desc_then_t_id_desc(db: Any, db_settings: TestDbSettings,
                                                          test_database: str, journal: str) -> None:
    cfg = config(db_settings, test_database, journal, queues={"rollback": QueueConfig(threads=1, urgent=0)})
    prios = [0, 0, 5, -3, 5]
    firsts = []
    for p in prios:
        b = ChainBuilder()
        timed(b, priority=p, rollback_sleep=0.01)
        timed(b, priority=p)
        chain = (await b.fire(db)).chain_id
        await make_rollbacking(db, chain)
        firsts.append((p, (await t_ids_of(db, chain))[0], chain))
    async with running_engine(cfg):
        states = await wait_all(db, [c for *_, c in firsts])
    assert [s["state"] for s in states] == [ChainState.FAILED] * len(prios)
    expected = [t for _p, t, _c in sorted(firsts, key=lambda x: (-x[0], -x[1]))]
    assert [s.t_id for s in sorted(spans("rollback"), key=lambda s: s.start)] == expected
    assert not spans("exec")


async def test_rollback_inside_a_chain_goes_backwards(db: Any, db_settings: TestDbSettings, test_database: str,
                                                      journal: str) -> None:
    cfg = config(db_settings, test_database, journal)
    b = ChainBuilder()
    for _ in range(4):
        timed(b)
    timed(b, fail=True)
    chain = (await b.fire(db)).chain_id
    async with running_engine(cfg):
        state = await wait_chain(db, chain)
    ids = await t_ids_of(db, chain)
    assert state["state"] == ChainState.FAILED
    assert [s.t_id for s in sorted(spans("rollback"), key=lambda s: s.start)] == ids[::-1]


# ---- the rollback queue and urgent_rollback ----------------------------------------------------------------

async def test_rollback_runs_while_own_queue_is_full(db: Any, db_settings: TestDbSettings, test_database: str,
                                                     journal: str) -> None:
    cfg = config(db_settings, test_database, journal, queues={"q": QueueConfig(threads=1, urgent=0)})
    b = ChainBuilder()
    timed(b, queue="q")
    timed(b, queue="q")
    victim = (await b.fire(db)).chain_id
    await make_rollbacking(db, victim, pending=True)
    [sleeper] = await fire_single(db, 1, queue="q", sleep=1.0)
    async with running_engine(cfg) as engine:
        await wait_for(lambda: _chain_running(engine, sleeper), what="sleeper running")
        assert engine.queues.get("q").used == 1
        await release_rollback(db, victim)
        state = await wait_chain(db, victim, timeout=2.0)
        assert state["state"] == ChainState.FAILED
        assert sleeper in engine.running  # the queue `q` is still busy with the sleeper
        await wait_chain(db, sleeper)
    [rb] = spans("rollback")
    [ex] = spans("exec")
    assert ex.start < rb.start and rb.end is not None and ex.end is not None and rb.end < ex.end


async def _chain_running(engine: Engine, chain_id: int) -> bool:
    return chain_id in engine.running


async def test_urgent_rollback_flag_makes_rollbacks_urgent(db: Any, db_settings: TestDbSettings,
                                                           test_database: str, journal: str) -> None:
    """Contract 12.2: v2.0 never wired urgent_rollback; here it lets a rollback use an urgent slot."""
    cfg = config(db_settings, test_database, journal, queues={"rollback": QueueConfig(threads=0, urgent=1)})
    chains = {}
    for flag in (True, False):
        b = ChainBuilder(urgent_rollback=flag)
        timed(b)
        timed(b, fail=True)
        chains[flag] = (await b.fire(db)).chain_id
    async with running_engine(cfg):
        state = await wait_chain(db, chains[True], timeout=3.0)
        assert state["state"] == ChainState.FAILED

        async def plain_self_rolled_back() -> bool:
            rows = await transactions_of(db, chains[False])
            return bool(rows[1]["t_done"] == 2)

        await wait_for(plain_self_rolled_back, what="second transaction of the plain chain rolled back")
        await asyncio.sleep(0.4)  # eight polls: the plain chain's rollback has no slot
        plain = await chain_state(db, chains[False])
    urgent_ids = await t_ids_of(db, chains[True])
    plain_ids = await t_ids_of(db, chains[False])
    assert plain["state"] == ChainState.ROLLBACKING
    # the failing transactions rolled themselves back in their own worker; of the chain rollbacks, only the
    # urgent_rollback chain's ran
    assert sorted(s.t_id for s in spans("rollback")) == sorted([urgent_ids[1], plain_ids[1], urgent_ids[0]])
    rows = await transactions_of(db, chains[False])
    assert (rows[0]["t_done"], rows[0]["t_success"]) == (1, 1)


# ---- one transaction per chain, chain blockers -----------------------------------------------------------

async def test_one_running_transaction_per_chain(db: Any, db_settings: TestDbSettings, test_database: str,
                                                 journal: str) -> None:
    """Two transactions of one chain both eligible (a non-linear chain, as the API's append_to builds): they
    still run one after the other, though the queue has free slots."""
    cfg = config(db_settings, test_database, journal)
    b = ChainBuilder()
    timed(b, sleep=0.3)
    timed(b, sleep=0.05)
    chain = (await b.fire(db)).chain_id
    first, second = await t_ids_of(db, chain)
    await fetch(db, "UPDATE transactions SET t_depends_on = NULL WHERE t_id = %s", second)
    [other] = await fire_single(db, 1, sleep=0.3)
    async with running_engine(cfg):
        state = await wait_chain(db, chain)
        await wait_chain(db, other)
    assert state["state"] == ChainState.DONE
    mine = spans(t_ids={first, second})
    assert len(mine) == 2 and max_overlap(mine) == 1
    assert max_overlap(spans()) == 2  # another chain did run alongside


async def test_chain_blocker_holds_the_chain_on_this_node(db: Any, db_settings: TestDbSettings,
                                                          test_database: str, journal: str) -> None:
    cfg = config(db_settings, test_database, journal)
    b = ChainBuilder()
    b.append(BLOCKER, server=1, params={"hold": 0.5})
    timed(b)
    chain = (await b.fire(db)).chain_id
    blocker, follower = await t_ids_of(db, chain)
    async with running_engine(cfg):
        state = await wait_chain(db, chain, timeout=5.0)
    assert state["state"] == ChainState.DONE
    [span] = spans(t_ids={follower})
    assert span.start >= BLOCKS[blocker][1]
    assert BLOCKS[blocker][1] - BLOCKS[blocker][0] >= 0.5


async def test_chain_blocker_does_not_hold_other_nodes(db: Any, db_settings: TestDbSettings,
                                                       test_database: str, journal: str) -> None:
    c1 = config(db_settings, test_database, journal, server_id=1)
    c2 = config(db_settings, test_database, journal, server_id=2)
    b = ChainBuilder()
    b.append(BLOCKER, server=1, params={"hold": 0.6})
    timed(b, server=2, sleep=0.05)
    timed(b, server=1)
    chain = (await b.fire(db)).chain_id
    blocker, remote, local = await t_ids_of(db, chain)
    async with running_engine(c1), running_engine(c2):
        state = await wait_chain(db, chain, timeout=5.0)
    assert state["state"] == ChainState.DONE
    block_start, block_end = BLOCKS[blocker]
    [r] = spans(t_ids={remote})
    [loc] = spans(t_ids={local})
    assert r.server == 2 and loc.server == 1
    assert block_start <= r.start and r.end is not None and r.end < block_end  # node 2 ran meanwhile
    assert loc.start >= block_end  # node 1 waited for the blocker
