"""Run one transaction to a Result: pick the handler, parse its params, call exec or rollback, and roll a
failed reversible transaction back by itself, as v2.0's ``Command#execute`` did (contract 3.2).

A handler that loses the database connection (it reads names or rows while MariaDB restarts) has not failed:
the run waits until the database answers again and then takes the path of a run a crash interrupted (an
idempotent handler runs again, another one's ``recover`` decides), since what ran before the loss may have had
effects. Without this a Dataset::Destroy chain failed halfway in a database restart, after its irreversible
steps (found by the soak of issue 9)."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import structlog

from vpsadmind.db.pool import is_db_lost
from vpsadmind.engine.model import Direction, Result, Reversible, TDone, Transaction, TSuccess, utcnow
from vpsadmind.errors import HandlerError, ParamError
from vpsadmind.handlers.base import HANDLERS, Handler, HandlerContext, Outcome, Recovery
from vpsadmind.handlers.params import parse_json_object, parse_params

__all__ = ["make_handler", "run_transaction", "handler_name", "roll_back_failed"]

log = structlog.get_logger("vpsadmind.engine.runner")
DB_WAIT_MAX = 5.0  # seconds between two looks at a database that went away under a handler

_INTERRUPTED = ("interrupted: the daemon stopped while this transaction ran, and {name} is not safe to run "
                "twice")


def handler_name(t_type: int) -> str:
    cls = HANDLERS.get(t_type)
    return cls.__name__ if cls else "unsupported"


def make_handler(t: Transaction, ctx: HandlerContext) -> Handler[Any]:
    """The handler of ``t`` with validated params; raises KeyError (no handler) or ParamError."""
    cls = HANDLERS[t.t_type]
    params = parse_params(cls.Params, parse_json_object(t.t_param))
    return cls(ctx, params, t)


def _error_output(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, HandlerError):
        return {"error": str(exc), **exc.output}
    out: dict[str, Any] = getattr(exc, "output", None) or {}
    if out:
        return {"error": str(exc), **out}
    if isinstance(exc, NotImplementedError):
        return {"error": "Command not implemented"}
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-8)
    return {"error": f"{type(exc).__name__}: {exc}", "backtrace": [line.rstrip() for line in tb][-8:]}


class _DbLost(Exception):
    """The database went away under a handler method (see the module docstring)."""


async def _call(coro: Any) -> Outcome:
    """Await a handler method; an exception or a return value that is not an Outcome becomes a failure (a lost
    database connection raises :class:`_DbLost` instead)."""
    try:
        value = await coro
    except Exception as exc:  # a handler failure must never escape into the engine
        if is_db_lost(exc):
            raise _DbLost(str(exc)) from exc
        return Outcome(TSuccess.FAILED, _error_output(exc))
    if value is None:
        return Outcome()
    if isinstance(value, Outcome):
        return value
    return Outcome(TSuccess.FAILED, {"error": f"handler returned {type(value).__name__}, not an Outcome"})


def _result(t: Transaction, direction: Direction, started: Any, outcome: Outcome, **flags: bool) -> Result:
    return Result(t_id=t.t_id, chain_id=t.chain_id, direction=direction, status=outcome.status,
                  output=outcome.output, started_at=started, finished_at=utcnow(), data=outcome.data, **flags)


def _rollback_precheck(t: Transaction, started: Any) -> Result | None:
    """During a chain rollback some transactions are not rolled back at all (contract 3.4, fixed per 12.4)."""
    if t.t_success == TSuccess.FAILED:
        note = {"note": "not rolled back: this transaction had failed, so it changed nothing to undo"}
        return _result(t, Direction.ROLLBACK, started, Outcome(TSuccess.FAILED, note), skipped=True)
    if t.reversible == Reversible.KEEP_GOING:
        note = {"note": "not rolled back: keep_going transactions are skipped during a chain rollback"}
        return _result(t, Direction.ROLLBACK, started, Outcome(TSuccess(t.t_success), note), skipped=True)
    if t.reversible == Reversible.NOT_REVERSIBLE:
        error = (f"transaction {t.t_id} (type {t.t_type}, {handler_name(t.t_type)}) is irreversible and cannot "
                 "be rolled back: admin intervention necessary")
        return _result(t, Direction.ROLLBACK, started, Outcome(TSuccess.FAILED, {"error": error}),
                       irreversible_in_rollback=True)
    return None


async def run_transaction(t: Transaction, ctx: HandlerContext, *,
                          interrupted: bool = False) -> tuple[Result, Handler[Any] | None]:
    """Run ``t`` in the direction its chain asks for. Never raises for handler or input errors."""
    started = utcnow()
    direction = t.direction
    if direction is Direction.ROLLBACK:
        pre = _rollback_precheck(t, started)
        if pre is not None:
            return pre, None
    if t.t_type not in HANDLERS:
        return _unrunnable(t, direction, started, {"error": "Unsupported command"}), None
    try:
        h = make_handler(t, ctx)
    except ParamError as exc:
        out: dict[str, Any] = {"error": str(exc) if str(exc).startswith("Bad param") else f"Bad param: {exc}"}
        if exc.field:
            out["field"] = exc.field
        return _unrunnable(t, direction, started, out), None
    except Exception as exc:  # a handler's own params checks must not stall the chain either
        return _unrunnable(t, direction, started, {"error": f"Bad param: {_error_output(exc)['error']}"}), None
    if direction is Direction.ROLLBACK:
        return await _run_rollback(t, h, started, interrupted), h
    return await _run_exec(t, h, started, interrupted), h


def _unrunnable(t: Transaction, direction: Direction, started: Any, output: dict[str, Any]) -> Result:
    """No handler ran. A reversible one counts as rolled back (nothing to undo) so the chain can roll back."""
    outcome = Outcome(TSuccess.FAILED, output)
    if direction is Direction.EXECUTE and t.reversible == Reversible.IS_REVERSIBLE:
        outcome.output["rollback"] = "not needed: the handler never ran"
        return _result(t, direction, started, outcome, self_rolled_back=True)
    return _result(t, direction, started, outcome)


async def _survive_db_loss(h: Handler[Any], direction: Direction, interrupted: bool) -> Outcome:
    """:func:`_recover_or_exec`, again on the crash path each time the database went away under it."""
    losses = 0
    while True:
        try:
            return await _recover_or_exec(h, direction, interrupted)
        except _DbLost as lost:
            losses += 1
            log.warning("transaction_db_lost", t_id=h.transaction.t_id, chain=h.transaction.chain_id,
                        direction=direction.label, error=str(lost), losses=losses)
            await _wait_for_db(h.ctx)
            interrupted = True


async def _wait_for_db(ctx: HandlerContext) -> None:
    delay = 0.2
    while True:
        await asyncio.sleep(delay)
        try:
            await ctx.db.fetchone("SELECT 1")
            return
        except Exception as exc:
            if not is_db_lost(exc):
                raise
        delay = min(delay * 2, DB_WAIT_MAX)


async def _run_exec(t: Transaction, h: Handler[Any], started: Any, interrupted: bool) -> Result:
    outcome = await _survive_db_loss(h, Direction.EXECUTE, interrupted)
    if outcome.status != TSuccess.FAILED or t.reversible != Reversible.IS_REVERSIBLE:
        return _result(t, Direction.EXECUTE, started, outcome)
    return await roll_back_failed(t, h, started, outcome)


async def roll_back_failed(t: Transaction, h: Handler[Any], started: Any, outcome: Outcome) -> Result:
    """The result of a reversible exec that failed with ``outcome`` (or was killed), after ``h.rollback()``."""
    # v2.0 rolls a failing reversible transaction back in the same worker; unlike v2.0 the original error is
    # kept beside the rollback's (contract 12.6).
    rb = await _survive_db_loss(h, Direction.ROLLBACK, False)
    output = dict(outcome.output)
    if rb.status == TSuccess.FAILED:
        output["rollback_error"] = rb.output.get("error", rb.output)
        return Result(t_id=t.t_id, chain_id=t.chain_id, direction=Direction.EXECUTE, status=TSuccess.FAILED,
                      output=output, self_rolled_back=True, rollback_failed=True, started_at=started,
                      finished_at=utcnow())
    output["rollback"] = {"status": rb.status.name.lower(), **rb.output}
    return Result(t_id=t.t_id, chain_id=t.chain_id, direction=Direction.EXECUTE, status=rb.status,
                  output=output, self_rolled_back=True, started_at=started, finished_at=utcnow())


async def _run_rollback(t: Transaction, h: Handler[Any], started: Any, interrupted: bool) -> Result:
    outcome = await _survive_db_loss(h, Direction.ROLLBACK, interrupted)
    prior = {"execute_output": t.t_output} if t.t_output else {}
    return _result(t, Direction.ROLLBACK, started, Outcome(outcome.status, {**prior, **outcome.output},
                                                           outcome.data))


async def _recover_or_exec(h: Handler[Any], direction: Direction, interrupted: bool) -> Outcome:
    method = h.exec if direction is Direction.EXECUTE else h.rollback
    if not interrupted or h.idempotent:
        return await _call(method())
    decision = await _call_recover(h, direction)
    if decision is Recovery.RERUN:
        return await _call(method())
    if decision is Recovery.INTERRUPTED:
        return Outcome(TSuccess.FAILED, {"error": _INTERRUPTED.format(name=type(h).__name__)})
    decision.output.setdefault("recovered", True)
    return decision


async def _call_recover(h: Handler[Any], direction: Direction) -> Outcome | Recovery:
    try:
        return await h.recover(direction)
    except Exception as exc:
        if is_db_lost(exc):
            raise _DbLost(str(exc)) from exc
        return Outcome(TSuccess.FAILED, {"error": f"recover failed: {_error_output(exc)['error']}"})


def expected_done_before(direction: Direction) -> TDone:
    """The ``t_done`` a transaction has while its run in ``direction`` is not saved yet."""
    return TDone.WAITING if direction is Direction.EXECUTE else TDone.DONE
