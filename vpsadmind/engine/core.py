"""The engine: one small asyncio core in the spirit of arq's worker.

It polls every ``check_interval`` and whenever it is woken (a wake-up from the bus, a finished transaction
whose follower runs here), claims each transaction it may start, runs it in a task bounded by its queue's
slots, saves the result, publishes events and wakes the node that runs the chain's next transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from vpsadmind.config import Config
from vpsadmind.db import Database, is_connectivity_error
from vpsadmind.db.node_tables import ensure_node_tables
from vpsadmind.engine.journal import Journal
from vpsadmind.engine.kill import Worker
from vpsadmind.engine.model import ChainState, Direction, Result, Transaction, TSuccess
from vpsadmind.engine.node_lock import NodeLock
from vpsadmind.engine.queues import ROLLBACK_QUEUE, Queue, Queues
from vpsadmind.engine.runner import handler_name, make_handler
from vpsadmind.engine.save import SaveOutcome, save_result
from vpsadmind.engine.select import claim, find_interrupted, select_candidates
from vpsadmind.errors import AgentError, NodeLocked
from vpsadmind.handlers.base import START_HOOKS, Handler, HandlerContext
from vpsadmind.metrics import TransactionMetrics
from vpsadmind.progress import ProgressBoard, ProgressSink

__all__ = ["Engine", "EventSink", "Running", "DB_VERSION"]

log = structlog.get_logger("vpsadmind.engine")

DB_VERSION = 15


class EventSink(Protocol):
    """What the engine needs of the bus (vpsadmind.bus.Bus provides it)."""

    def wake_node(self, server_id: int, payload: dict[str, Any]) -> None: ...
    def transaction_event(self, payload: dict[str, Any]) -> None: ...
    def chain_event(self, chain_id: int, payload: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class Running:
    transaction: Transaction
    queue: Queue
    task: asyncio.Task[None]
    started: float = field(default_factory=time.time)
    worker: Worker = field(default_factory=Worker)

    @property
    def step(self) -> str | None:
        return self.worker.step

    @property
    def pid(self) -> int | None:
        return self.worker.pid


class Engine:
    """Runs this node's share of the transaction queue; see docs/architecture.md for the flow."""

    def __init__(self, config: Config, *, db: Database | None = None, events: EventSink | None = None) -> None:
        self.config = config
        self.server_id = config.server_id
        self.db = db or Database(config.db)
        self.events = events
        self.queues = Queues(config.queues)
        self.journal = Journal(config.journal.path)
        self.node_lock = NodeLock(self.db, self.server_id)
        self.ctx = HandlerContext(config=config, db=self.db, block_chain=self.block_chain,
                                  progress=ProgressBoard(self._progress_sink))
        self.running: dict[int, Running] = {}
        self.blockers: dict[int, set[asyncio.Task[Any]]] = {}
        # Strong references: a worker that left ``running`` may still be claiming its chain's next step,
        # and asyncio keeps only weak references to tasks.
        self._workers: set[asyncio.Task[None]] = set()
        self.paused = False
        self.pause_after: int | None = None  # vpsadmindctl pause <t_id>: pause once it has finished
        self.stats: dict[str, int] = {"polls": 0, "started": 0, "saved": 0, "journaled": 0, "recovered": 0,
                                      "claim_lost": 0, "killed": 0}
        self.metrics = TransactionMetrics()  # counters of saved results, exposed by vpsadmind/metrics.py
        self.start_time = time.time()
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._host = socket.gethostname()
        self._lock_checked = 0.0

    def _progress_sink(self) -> ProgressSink | None:
        # The daemon plugs its bus in after construction; an events sink without progress just gets none.
        return self.events if hasattr(self.events, "progress_event") else None  # type: ignore[return-value]

    # ---- life cycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take the node, wait for the schema, replay the journal and recover interrupted work."""
        await self._connect()
        async with self.db.autocommit() as tx:
            await ensure_node_tables(tx)
        await self.node_lock.acquire()
        await self.wait_db_version()
        await self.replay_journal()
        await self.recover()
        await self._run_start_hooks()
        self._wake.set()  # the first poll right away: queued work must not wait a check_interval

    async def _run_start_hooks(self) -> None:
        for hook in START_HOOKS:
            try:
                await hook(self.ctx)
            except Exception:  # a hook must not keep the node from serving its queue
                log.exception("start_hook_failed", hook=f"{hook.__module__}.{hook.__qualname__}")

    async def _connect(self) -> None:
        attempt = 0
        while True:
            try:
                await self.db.fetchone("SELECT 1")
                return
            except Exception as exc:
                if not is_connectivity_error(exc):
                    raise
                delay = self.db.backoff(attempt)
                log.warning("db_unreachable", error=str(exc), retry_in=round(delay, 1))
                await asyncio.sleep(delay)
                attempt += 1

    async def wait_db_version(self) -> None:
        """v2.0 waits until ``sysconfig.db_version`` is 15; the value ``"install"`` is replaced by 15."""
        while True:
            row = await self.db.fetchone("SELECT cfg_value FROM sysconfig WHERE cfg_name = 'db_version'")
            value: Any = None
            if row is not None:
                try:
                    value = json.loads(row["cfg_value"])
                except (TypeError, ValueError):
                    value = row["cfg_value"]
            if value == "install":
                await self.db.execute("UPDATE sysconfig SET cfg_value = %s WHERE cfg_name = 'db_version'",
                                      (json.dumps(DB_VERSION),))
                return
            if isinstance(value, int | str) and str(value).strip() == str(DB_VERSION):
                return
            log.warning("db_version_mismatch", found=value, expected=DB_VERSION,
                        retry_in=self.config.db_version_interval)
            await asyncio.sleep(self.config.db_version_interval)

    async def run(self) -> None:
        """Poll until stop(); raises NodeLocked if another daemon took this node while the DB was away."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.check_interval)
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self._keep_node_lock()
                await self.poll()
            except NodeLocked:
                raise
            except Exception as exc:
                if not is_connectivity_error(exc):
                    log.exception("poll_failed")
                else:
                    log.warning("poll_db_unreachable", error=str(exc))
                await asyncio.sleep(min(self.config.check_interval, 1.0))
        if self._fatal is not None:
            raise self._fatal

    async def _keep_node_lock(self) -> None:
        now = time.monotonic()
        if now - self._lock_checked < max(self.config.check_interval, 5.0):
            return
        if not await self.node_lock.check():
            log.warning("node_lock_lost", server_id=self.server_id)
            await self.node_lock.reacquire()
        self._lock_checked = now

    def wake(self, payload: dict[str, Any] | None = None) -> None:
        self._wake.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; let running transactions finish within ``timeout``, then cancel what remains.

        A cancelled transaction stays claimed and is recovered at the next start by its handler's policy.
        """
        self._stopping = True
        self._wake.set()
        tasks: list[asyncio.Task[Any]] = list(self._workers)
        # Chain blockers (transfer receivers) may wait for hours; they are recorded in the database and
        # resumed at the next start, so they end now instead of holding the stop for its whole timeout.
        blockers = [t for ts in self.blockers.values() for t in ts]
        for task in blockers:
            task.cancel()
        tasks += blockers
        if tasks:
            log.info("stopping_wait", running=len(tasks), timeout=timeout)
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("stopping_cancelled", cancelled=len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self.node_lock.release()
        await self.db.close()

    # ---- dispatch ---------------------------------------------------------------------------------------

    async def poll(self) -> int:
        """Select and start what may run now; returns how many transactions were started."""
        if self.paused or self.queues.all_full():
            return 0
        self.stats["polls"] += 1
        execute, rollback = await self._select()
        started = 0
        now = time.monotonic()
        for t in rollback + execute:
            if self._stopping or self.paused:
                break
            queue = self._queue_for(t)
            if not self._may_start(t, queue, now):
                continue
            async with self.db.autocommit() as tx:
                won = await claim(tx, t, server_id=self.server_id, host=self._host, pid=os.getpid())
            if not won:
                self.stats["claim_lost"] += 1
                continue
            self._spawn(t, queue)
            started += 1
        return started

    async def _select(self) -> tuple[list[Transaction], list[Transaction]]:
        now = time.monotonic()
        workers = [q for q in self.queues.queues.values() if q.name != ROLLBACK_QUEUE and q.started(now)]
        open_queues = [q.name for q in workers if q.has_slot(False)]
        urgent_only = [q.name for q in workers if not q.has_slot(False) and q.has_slot(True)]
        known = [name for name in self.queues.queues if name != ROLLBACK_QUEUE]
        return await select_candidates(
            self.db, self.server_id, self.queues.capacity, open_queues=open_queues, urgent_only=urgent_only,
            known_queues=known, include_unknown="general" in open_queues,
            rollback=self.queues.get(ROLLBACK_QUEUE).has_slot(True))

    def _queue_for(self, t: Transaction) -> Queue:
        return self.queues.get(ROLLBACK_QUEUE if t.direction is Direction.ROLLBACK else t.queue)

    def _may_start(self, t: Transaction, queue: Queue, now: float) -> bool:
        if t.chain_id in self.running:
            return False
        if self.chain_blocked(t.chain_id):
            if t.direction is Direction.ROLLBACK:
                # The chain is rolling back: what still runs for it (a receiver waiting for a sender that
                # failed) has no purpose any more. Its end wakes the engine, and the rollback starts then.
                for task in self.blockers.get(t.chain_id, ()):
                    task.cancel()
            return False
        return queue.started(now) and queue.has_slot(t.urgent)

    def chain_blocked(self, chain_id: int) -> bool:
        return any(not task.done() for task in self.blockers.get(chain_id, ()))

    def _spawn(self, t: Transaction, queue: Queue, *, interrupted: bool = False) -> None:
        queue.running.add(t.chain_id)
        worker = Worker()
        task = asyncio.create_task(self._work(t, queue, interrupted, worker), name=f"transaction-{t.t_id}")
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)
        self.running[t.chain_id] = Running(t, queue, task, worker=worker)
        self.stats["started"] += 1

    def kill(self, chain_id: int) -> bool:
        """``vpsadmindctl kill``: end the chain's running transaction as failed ``Killed`` (engine/kill.py)."""
        r = self.running.get(chain_id)
        if r is None or not r.worker.kill():
            return False
        self.stats["killed"] += 1
        self.metrics.killed(r.transaction)
        return True

    async def _work(self, t: Transaction, queue: Queue, interrupted: bool, worker: Worker) -> None:
        structlog.contextvars.bind_contextvars(chain=t.chain_id, transaction=t.t_id,
                                               handler=handler_name(t.t_type), direction=t.direction.label)
        outcome: SaveOutcome | None = None
        try:
            log.info("transaction_start", t_type=t.t_type, queue=queue.name, interrupted=interrupted or None)
            result, handler = await worker.run(t, self.ctx, interrupted=interrupted)
            outcome = await self.save(t, result, handler)
            if outcome is not None:
                self._after_save(t, result, outcome)
        except Exception:
            log.exception("transaction_worker_crashed")
        finally:
            queue.running.discard(t.chain_id)
            self.running.pop(t.chain_id, None)
            if self.pause_after is not None and t.t_id == self.pause_after:
                self.paused, self.pause_after = True, None
        nxt = outcome.next_transaction if outcome is not None else None
        if nxt is None or nxt.t_server != self.server_id or not await self._start_follower(nxt):
            self._wake.set()

    async def _start_follower(self, t: Transaction) -> bool:
        """Start the chain's next step here at once instead of waiting for a poll (v2.0: running chains first)."""
        if self._stopping or self.paused:
            return False
        queue = self._queue_for(t)
        if not self._may_start(t, queue, time.monotonic()):
            return False
        try:
            async with self.db.autocommit() as tx:
                won = await claim(tx, t, server_id=self.server_id, host=self._host, pid=os.getpid())
        except Exception as exc:
            log.warning("follower_claim_failed", error=str(exc))
            return False
        if won:
            self._spawn(t, queue)
        return won

    def block_chain(self, chain_id: int, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self.blockers.setdefault(chain_id, set()).add(task)

        def done(tk: asyncio.Task[Any]) -> None:
            blockers = self.blockers.get(chain_id)
            if blockers is not None:
                blockers.discard(tk)
                if not blockers:
                    del self.blockers[chain_id]
            self._wake.set()

        task.add_done_callback(done)
        return task

    # ---- result save ------------------------------------------------------------------------------------

    async def save(self, t: Transaction, result: Result, handler: Handler[Any] | None) -> SaveOutcome | None:
        """Save with the journal as the safety net; returns None when the result stays journaled (shutdown)."""
        entry = None
        attempt = 0
        failures = 0
        try:
            while True:
                try:
                    out = await self._save_once(t, result, handler)
                except Exception as exc:
                    if is_connectivity_error(exc):
                        if entry is None:
                            entry = self.journal.write(t, result)
                            self.stats["journaled"] += 1
                            log.warning("result_journaled", error=str(exc) or type(exc).__name__, file=str(entry.path))
                        if self._stopping:
                            return None
                        await asyncio.sleep(self.db.backoff(attempt))
                        attempt += 1
                        continue
                    failures += 1
                    log.exception("result_save_failed", attempt=failures)
                    if failures >= 3:
                        result, handler = _save_failure(result, exc), None
                    await asyncio.sleep(0.1 * failures)
                    continue
                if entry is not None:
                    self.journal.remove(entry)
                self.stats["saved"] += 1
                return out
        except asyncio.CancelledError:
            # Never lose a computed result to a cancellation: the next start saves it from the journal.
            if entry is None:
                self.journal.write(t, result)
            raise

    async def _save_once(self, t: Transaction, result: Result, handler: Handler[Any] | None) -> SaveOutcome:
        return await self.db.run(lambda tx: save_result(tx, t, result, handler))

    def _after_save(self, t: Transaction, result: Result, out: SaveOutcome) -> None:
        log.info("transaction_saved", status=result.status.name.lower(), t_done=int(result.t_done),
                 chain_state=ChainState(out.chain_state).name.lower() if out.saved else None,
                 ms=int((result.finished_at - result.started_at).total_seconds() * 1000))
        if out.saved:
            self.metrics.saved(t, result, out)
        if not out.saved or self.events is None:
            return
        if out.next_server is not None and out.next_server != self.server_id:
            self.events.wake_node(out.next_server, {"chain": t.chain_id, "t_id": out.next_t_id})
        self.events.transaction_event({
            "t_id": t.t_id, "chain": t.chain_id, "type": t.t_type, "handler": handler_name(t.t_type),
            "direction": result.direction.label, "t_done": int(result.t_done), "t_success": int(result.status),
            "queue": t.queue, "started_at": result.started_at.isoformat() + "Z",
            "finished_at": result.finished_at.isoformat() + "Z", "server_id": self.server_id,
            "duration_ms": int((result.finished_at - result.started_at).total_seconds() * 1000),
        })
        self.events.chain_event(t.chain_id, {
            "chain": t.chain_id, "state": out.chain_state, "state_name": ChainState(out.chain_state).name.lower(),
            "progress": out.chain_progress, "size": out.chain_size,
        })

    # ---- crash recovery ---------------------------------------------------------------------------------

    async def replay_journal(self) -> int:
        """Save every result a previous run journaled during a database outage."""
        entries = self.journal.entries()
        for entry in entries:
            if entry.transaction.t_param is None:  # the journal keeps no params (secrets): the row still has them
                row = await self.db.fetchone("SELECT t_param FROM transactions WHERE t_id = %s",
                                             (entry.transaction.t_id,))
                entry.transaction.t_param = row["t_param"] if row is not None else None
            handler = None
            with contextlib.suppress(Exception):
                handler = make_handler(entry.transaction, self.ctx)
            out = await self.save(entry.transaction, entry.result, handler)
            self.journal.remove(entry)
            if out is not None:
                self._after_save(entry.transaction, entry.result, out)
            log.info("journal_replayed", t_id=entry.result.t_id)
        return len(entries)

    async def recover(self) -> int:
        """Dispatch this node's interrupted transactions with ``interrupted=True`` (see runner.py)."""
        interrupted = await find_interrupted(self.db, self.server_id)
        for t in interrupted:
            if t.chain_id in self.running:
                continue
            log.warning("transaction_interrupted", t_id=t.t_id, chain=t.chain_id, direction=t.direction.label)
            self._spawn(t, self._queue_for(t), interrupted=True)
            self.stats["recovered"] += 1
        return len(interrupted)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """For tests and the demo: wait until nothing runs and no chain is blocked."""
        deadline = time.monotonic() + timeout
        while self._workers or self.blockers:
            if time.monotonic() > deadline:
                raise AgentError(f"engine not idle after {timeout} s: running chains {sorted(self.running)}")
            await asyncio.sleep(0.01)


def _save_failure(result: Result, exc: BaseException) -> Result:
    """After repeated non-connectivity save errors, save a plain failure so the chain cannot get stuck."""
    output = {"error": f"result save failed: {type(exc).__name__}: {str(exc)[:1000]}",
              "original_error": str(result.output.get("error", ""))[:1000]}
    return Result(t_id=result.t_id, chain_id=result.chain_id, direction=result.direction, status=TSuccess.FAILED,
                  output=output, self_rolled_back=result.self_rolled_back, started_at=result.started_at,
                  finished_at=result.finished_at)
