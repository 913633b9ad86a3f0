"""Killing a running transaction (``vpsadmindctl kill``, contract 6.2 and 4.5).

v2.0 killed the worker thread, SIGTERMed its current child, and saved the transaction as failed with
``{"error": "Killed"}``; the normal save then sent a reversible chain into rollback, but the killed
transaction's own rollback was not run (added in 2.x, Feb 2016). Here, as in later versions, a killed
reversible transaction in the execute direction rolls itself back before the save, so whatever it did
half-way is undone like any failed exec.

Each running transaction has a :class:`Worker`. The handler runs in an inner task that only a kill cancels;
the engine's own task (which a stop cancels) awaits it, so ``Task.cancelling()`` tells a kill (save the
result) from a stop (save nothing; the transaction is recovered at the next start). Cancelling the inner
task makes :func:`vpsadmind.system.run` SIGTERM the running command; processes the handler spawned itself
(streams) get SIGTERM from the worker's :class:`~vpsadmind.system.ProcessGroup`.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from vpsadmind import system
from vpsadmind.engine.model import Direction, Result, Reversible, Transaction, TSuccess, utcnow
from vpsadmind.engine.runner import make_handler, roll_back_failed, run_transaction
from vpsadmind.handlers.base import Handler, HandlerContext, Outcome

__all__ = ["Worker", "KILLED", "killed_result"]

log = structlog.get_logger("vpsadmind.engine")

#: ``t_output.error`` of a killed transaction (v2.0's text).
KILLED = "Killed"

_T = TypeVar("_T")


class _Killed(Exception):
    """The inner task was cancelled by :meth:`Worker.kill`, not by a stop."""


class Worker:
    """What a running transaction needs to be killable, and what ``status`` shows of it."""

    def __init__(self) -> None:
        self.processes = system.ProcessGroup()
        self.killed = False
        self._inner: asyncio.Task[Any] | None = None
        self._kill_pending = False

    @property
    def step(self) -> str | None:
        """The command running now (v2.0's ``step``), or None."""
        current = self.processes.current()
        return shlex.join(current[1]) if current else None

    @property
    def pid(self) -> int | None:
        current = self.processes.current()
        return current[0] if current else None

    def kill(self) -> bool:
        """Cancel the handler (or the rollback of a killed one); False when there is nothing left to kill:
        the result is being saved, or a kill is already under way."""
        task = self._inner
        if task is None or task.done() or self._kill_pending:
            return False
        self._kill_pending = True
        self.killed = True
        task.cancel()
        return True

    async def run(self, t: Transaction, ctx: HandlerContext, *,
                  interrupted: bool) -> tuple[Result, Handler[Any] | None]:
        """:func:`run_transaction`, or the result of a kill."""
        started = utcnow()
        token = system.track(self.processes)  # the inner tasks inherit the group with this context
        try:
            try:
                return await self._killable(run_transaction(t, ctx, interrupted=interrupted))
            except _Killed:
                pass
            sent = self.processes.terminate()
            log.warning("transaction_killed", t_id=t.t_id, sigterm=sent or None)
            try:
                return await self._killable(killed_result(t, ctx, started))
            except _Killed:  # killed again while rolling back: the rollback is abandoned, the chain goes fatal
                self.processes.terminate()
                output = {"error": KILLED, "rollback_error": "the rollback of the killed transaction was killed"}
                return Result(t_id=t.t_id, chain_id=t.chain_id, direction=t.direction, status=TSuccess.FAILED,
                              output=output, self_rolled_back=t.direction is Direction.EXECUTE,
                              rollback_failed=t.direction is Direction.EXECUTE, started_at=started,
                              finished_at=utcnow()), None
        finally:
            system.untrack(token)

    async def _killable(self, coro: Coroutine[Any, Any, _T]) -> _T:
        task: asyncio.Task[_T] = asyncio.ensure_future(coro)
        self._inner, self._kill_pending = task, False
        try:
            return await task
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._kill_pending and task.cancelled() and (me is None or not me.cancelling()):
                raise _Killed from None
            raise
        finally:
            self._inner = None


async def killed_result(t: Transaction, ctx: HandlerContext, started: Any) -> tuple[Result, Handler[Any] | None]:
    """Failed with ``{"error": "Killed"}``; a reversible exec first rolls itself back (see the module docstring).

    A killed rollback (the chain was rolling back) is a failed rollback: the chain becomes fatal, as in v2.0.
    """
    outcome = Outcome(TSuccess.FAILED, {"error": KILLED})
    if t.direction is Direction.EXECUTE and t.reversible == Reversible.IS_REVERSIBLE:
        try:
            h = make_handler(t, ctx)
        except Exception as exc:  # it was built before the kill; if it cannot be now, nothing can be undone
            outcome.output["rollback_error"] = f"cannot build the handler to roll back: {exc}"
            return Result(t_id=t.t_id, chain_id=t.chain_id, direction=Direction.EXECUTE, status=TSuccess.FAILED,
                          output=outcome.output, self_rolled_back=True, rollback_failed=True, started_at=started,
                          finished_at=utcnow()), None
        return await roll_back_failed(t, h, started, outcome), h
    return Result(t_id=t.t_id, chain_id=t.chain_id, direction=t.direction, status=TSuccess.FAILED,
                  output=outcome.output, started_at=started, finished_at=utcnow()), None
