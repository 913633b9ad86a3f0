"""Save a transaction's result and move its chain, all in one DB transaction (contract 3.3, 3.4).

Differences from v2.0, each asked for by the contract's list of defects or by the project's issues:
- a chain never gets stuck: a failed reversible transaction with nothing before it closes the chain at
  once, and a failed last transaction rolls the earlier ones back instead of leaving them applied;
- a failed self-rollback makes the chain fatal (a rollback failed) instead of rolling the others back
  over an inconsistent node;
- keep_going and failed transactions met during a chain rollback are skipped with a note; an irreversible
  one makes the chain fatal with a message naming it (runner.py decides, this module records);
- ``post_save`` runs only after a successful exec, in a savepoint: if it fails, the result turns into a
  warning that names the error, instead of failing the save.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from vpsadmind.db import Tx
from vpsadmind.engine.confirmations import apply_chain_confirmations
from vpsadmind.engine.model import (
    ChainState,
    Direction,
    Result,
    Reversible,
    TDone,
    Transaction,
    TSuccess,
    utcnow,
)
from vpsadmind.engine.select import COLUMNS

if TYPE_CHECKING:
    from vpsadmind.handlers.base import Handler

__all__ = ["SaveOutcome", "save_result", "close_chain", "fail_followers", "release_chain", "DEPENDENCY_FAILED"]

log = structlog.get_logger("vpsadmind.save")

DEPENDENCY_FAILED = json.dumps({"error": "Dependency failed"})


@dataclass(slots=True)
class SaveOutcome:
    saved: bool
    chain_state: int = 0
    chain_progress: int = 0
    chain_size: int = 0
    next_t_id: int | None = None
    next_server: int | None = None
    closed: bool = False
    # The chain's next transaction in the execute direction, as the scheduler would select it.
    next_transaction: Transaction | None = None


async def fail_followers(tx: Tx, chain_id: int, t_id: int) -> None:
    await tx.execute(
        "UPDATE transactions SET t_done = 1, t_success = 0, t_output = %s "
        "WHERE transaction_chain_id = %s AND t_id > %s AND t_done = 0",
        (DEPENDENCY_FAILED, chain_id, t_id),
    )


async def release_chain(tx: Tx, chain_id: int, *, locks: bool = True, ports: bool = True) -> dict[str, Any]:
    released: dict[str, Any] = {}
    if locks:
        rows = await tx.fetchall("SELECT resource, row_id FROM resource_locks WHERE transaction_chain_id = %s",
                                 (chain_id,))
        await tx.execute("DELETE FROM resource_locks WHERE transaction_chain_id = %s", (chain_id,))
        released["locks"] = [{"resource": r["resource"], "row_id": r["row_id"]} for r in rows]
    if ports:
        rows = await tx.fetchall(
            "SELECT node_id, addr, port FROM port_reservations WHERE transaction_chain_id = %s", (chain_id,))
        await tx.execute("UPDATE port_reservations SET transaction_chain_id = NULL, addr = NULL "
                         "WHERE transaction_chain_id = %s", (chain_id,))
        released["ports"] = [{"node_id": r["node_id"], "addr": r["addr"], "port": r["port"]} for r in rows]
    return released


async def close_chain(tx: Tx, chain: dict[str, Any], direction: Direction, state: ChainState) -> list[str]:
    """Close ``chain``; unless fatal, apply its confirmations and release its locks and ports."""
    errors: list[str] = []
    chain_id = int(chain["id"])
    if state is not ChainState.FATAL:
        errors = await apply_chain_confirmations(tx, chain_id, direction)
        await release_chain(tx, chain_id)
        # A closed chain needs no transfer rows (a rollback of its Recv ran before this close); their
        # secrets must not outlive it. A fatal chain keeps them for whoever resolves it.
        await tx.execute("DELETE FROM vpsadmind_transfers WHERE chain_id = %s", (chain_id,))
    # v2.0: a chain closed in the execute direction counts its last step; a rollback or fatal close resets.
    closing_forward = state is not ChainState.FATAL and direction is Direction.EXECUTE
    progress = int(chain["progress"]) + 1 if closing_forward else 0
    await tx.execute("UPDATE transaction_chains SET state = %s, progress = %s, updated_at = %s WHERE id = %s",
                     (int(state), progress, utcnow(), chain_id))
    chain["state"], chain["progress"] = int(state), progress
    if state is ChainState.FATAL:
        log.critical("chain_fatal", chain=chain_id, msg="Transaction rollback failed, admin intervention is "
                     "necessary")
    return errors


async def _set_chain(tx: Tx, chain: dict[str, Any], *, state: ChainState | None = None, progress: int) -> None:
    new_state = int(state) if state is not None else int(chain["state"])
    await tx.execute("UPDATE transaction_chains SET state = %s, progress = %s, updated_at = %s WHERE id = %s",
                     (new_state, progress, utcnow(), chain["id"]))
    chain["state"], chain["progress"] = new_state, progress


async def _run_post_save(tx: Tx, handler: Handler[Any] | None, result: Result) -> None:
    if handler is None or result.direction is not Direction.EXECUTE or result.status == TSuccess.FAILED \
            or result.self_rolled_back or not handler.has_post_save():
        return
    await tx.execute("SAVEPOINT post_save")
    try:
        await handler.post_save(tx, result)
    except Exception as exc:
        await tx.execute("ROLLBACK TO SAVEPOINT post_save")
        log.error("post_save_failed", t_id=result.t_id, error=str(exc))
        result.status = TSuccess.WARNING
        result.output["post_save_error"] = f"{type(exc).__name__}: {exc}"


# t_output is a TEXT column (65,535 bytes); strict SQL mode refuses more, which would stall the save.
T_OUTPUT_MAX = 60_000


def output_json(output: dict[str, Any]) -> str:
    """``output`` as JSON that fits ``t_output``; an oversized one keeps its error, shortened."""
    text = json.dumps(output, default=str)
    if len(text.encode()) <= T_OUTPUT_MAX:
        return text
    error = str(output.get("error", ""))[:2000]
    return json.dumps({"error": error, "truncated": f"t_output was {len(text.encode())} bytes",
                       "keys": sorted(str(k)[:100] for k in output)[:50]})


async def _write_row(tx: Tx, result: Result) -> None:
    await tx.execute(
        "UPDATE transactions SET t_done = %s, t_success = %s, t_output = %s, started_at = %s, finished_at = %s "
        "WHERE t_id = %s",
        (int(result.t_done), int(result.status), output_json(result.output), result.started_at,
         result.finished_at, result.t_id),
    )
    if result.direction is Direction.ROLLBACK:
        await tx.execute("DELETE FROM vpsadmind_claims WHERE transaction_id = %s", (result.t_id,))


async def save_result(tx: Tx, t: Transaction, result: Result, handler: Handler[Any] | None) -> SaveOutcome:
    """Write ``result`` and move the chain. Saving the same result twice is a no-op (journal replay)."""
    # One statement locks both rows: the chain (saves of one chain serialise) and the transaction.
    chain = await tx.fetchone(
        "SELECT c.id, c.state, c.progress, c.size, t.t_done FROM transactions t "
        "JOIN transaction_chains c ON c.id = t.transaction_chain_id WHERE t.t_id = %s FOR UPDATE", (t.t_id,))
    expected = TDone.WAITING if result.direction is Direction.EXECUTE else TDone.DONE
    if chain is None or int(chain["t_done"]) != expected:
        log.warning("result_already_saved", t_id=t.t_id, chain=t.chain_id)
        return SaveOutcome(saved=False)
    await _run_post_save(tx, handler, result)
    # The row first, as v2.0 did: confirmations applied at chain close read this transaction's t_success.
    await _write_row(tx, result)
    errors_before = len(result.output.get("confirmation_errors", ()))
    direction_ok = (int(chain["state"]) == ChainState.QUEUED) == (result.direction is Direction.EXECUTE)
    if direction_ok and int(chain["state"]) in (ChainState.QUEUED, ChainState.ROLLBACKING):
        if result.direction is Direction.EXECUTE:
            out = await _move_execute(tx, t, result, chain)
        else:
            out = await _move_rollback(tx, t, result, chain)
    else:
        log.warning("chain_moved_meanwhile", t_id=t.t_id, chain=t.chain_id, state=int(chain["state"]))
        out = SaveOutcome(saved=True)
    if len(result.output.get("confirmation_errors", ())) != errors_before:
        await tx.execute("UPDATE transactions SET t_output = %s WHERE t_id = %s",
                         (output_json(result.output), result.t_id))
    out.chain_state, out.chain_progress, out.chain_size = (int(chain["state"]), int(chain["progress"]),
                                                           int(chain["size"]))
    return out


def _note_errors(result: Result, errors: list[str]) -> None:
    if errors:
        result.output["confirmation_errors"] = errors


async def _move_execute(tx: Tx, t: Transaction, result: Result, chain: dict[str, Any]) -> SaveOutcome:
    # After a successful self-rollback v2.0 saves the rollback's status (ok), yet the transaction failed.
    failed = result.status == TSuccess.FAILED or result.self_rolled_back
    progress, size = int(chain["progress"]), int(chain["size"])
    if not failed or (t.reversible == Reversible.KEEP_GOING and not result.self_rolled_back):
        if size <= progress + 1:
            state = ChainState.FAILED if failed else ChainState.DONE
            _note_errors(result, await close_chain(tx, chain, Direction.EXECUTE, state))
            return SaveOutcome(saved=True, closed=True)
        await _set_chain(tx, chain, progress=progress + 1)
        nxt = await tx.fetchone("SELECT " + COLUMNS.format(a="t") + " FROM transactions t "
                                "JOIN transaction_chains c ON c.id = t.transaction_chain_id "
                                "WHERE t.t_depends_on = %s AND t.t_done = 0 ORDER BY t.t_id LIMIT 1", (t.t_id,))
        out = _next(nxt)
        if nxt is not None:
            out.next_transaction = Transaction.from_row(nxt)
        return out
    await fail_followers(tx, t.chain_id, t.t_id)
    if result.rollback_failed:
        await close_chain(tx, chain, Direction.ROLLBACK, ChainState.FATAL)
        return SaveOutcome(saved=True, closed=True)
    if result.self_rolled_back and progress > 0:
        await _set_chain(tx, chain, state=ChainState.ROLLBACKING, progress=progress - 1)
        return await _predecessor(tx, t)
    direction = Direction.ROLLBACK if result.self_rolled_back else Direction.EXECUTE
    _note_errors(result, await close_chain(tx, chain, direction, ChainState.FAILED))
    return SaveOutcome(saved=True, closed=True)


async def _move_rollback(tx: Tx, t: Transaction, result: Result, chain: dict[str, Any]) -> SaveOutcome:
    progress = int(chain["progress"])
    if result.status == TSuccess.FAILED and not result.skipped:
        await close_chain(tx, chain, Direction.ROLLBACK, ChainState.FATAL)
        return SaveOutcome(saved=True, closed=True)
    if progress <= 0:
        _note_errors(result, await close_chain(tx, chain, Direction.ROLLBACK, ChainState.FAILED))
        return SaveOutcome(saved=True, closed=True)
    await _set_chain(tx, chain, progress=progress - 1)
    return await _predecessor(tx, t)


async def _predecessor(tx: Tx, t: Transaction) -> SaveOutcome:
    if t.t_depends_on is None:
        return SaveOutcome(saved=True)
    prev = await tx.fetchone("SELECT t_id, t_server FROM transactions WHERE t_id = %s", (t.t_depends_on,))
    return _next(prev)


def _next(row: dict[str, Any] | None) -> SaveOutcome:
    if row is None:
        return SaveOutcome(saved=True)
    return SaveOutcome(saved=True, next_t_id=int(row["t_id"]), next_server=int(row["t_server"] or 0))
