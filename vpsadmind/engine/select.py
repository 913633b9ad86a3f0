"""Which transactions this node may start now (contract 3.1), and which a crash interrupted.

v2.0 relied on MySQL's lenient GROUP BY to pick one row per chain; a linear chain has at most one eligible
transaction at a time, so the engine simply skips chains it already runs. Rows already claimed (execute:
``started_at`` set; rollback: a ``vpsadmind_claims`` row) are never selected again.
"""

from __future__ import annotations

import pymysql

from vpsadmind.db import Database, Tx
from vpsadmind.engine.model import Transaction, utcnow

__all__ = ["select_candidates", "claim", "find_interrupted", "COLUMNS"]

COLUMNS = ("{a}.t_id, {a}.transaction_chain_id, {a}.t_type, {a}.t_server, {a}.t_vps, {a}.t_depends_on, "
           "{a}.t_urgent, {a}.t_priority, {a}.t_success, {a}.t_done, {a}.t_param, {a}.reversible, {a}.queue, "
           "{a}.t_output, c.state AS chain_state, c.progress AS chain_progress, c.size AS chain_size, "
           "c.urgent_rollback")

_EXECUTE = (
    "(SELECT 0 AS kind, " + COLUMNS.format(a="t") + " FROM transactions t "
    "JOIN transaction_chains c ON c.id = t.transaction_chain_id "
    "LEFT JOIN transactions d ON d.t_id = t.t_depends_on "
    "WHERE t.t_server = %s AND t.t_done = 0 AND t.started_at IS NULL AND c.state = 1 "
    "AND (t.t_depends_on IS NULL OR d.t_done = 1) AND ({queues}) "
    "ORDER BY t.t_priority DESC, t.t_id ASC LIMIT %s)"
)
_ROLLBACK = (
    "(SELECT 1 AS kind, " + COLUMNS.format(a="d") + " FROM transactions d "
    "JOIN transaction_chains c ON c.id = d.transaction_chain_id "
    "JOIN transactions t2 ON t2.t_depends_on = d.t_id AND t2.t_done = 2 "
    "LEFT JOIN vpsadmind_claims cl ON cl.transaction_id = d.t_id "
    "WHERE d.t_server = %s AND d.t_done = 1 AND c.state = 3 AND cl.transaction_id IS NULL "
    "ORDER BY d.t_priority DESC, d.t_id DESC LIMIT %s)"
)


def _queue_filter(open_queues: list[str], urgent_only: list[str], known: list[str],
                  include_unknown: bool) -> tuple[str, list[str]]:
    """SQL condition on ``t.queue``: queues with a free slot; from queues with only urgent slots left, only
    urgent rows (others could not start and would crowd the LIMIT); unknown names run in ``general``."""
    parts: list[str] = []
    args: list[str] = []
    if open_queues:
        parts.append("t.queue IN (" + ", ".join(["%s"] * len(open_queues)) + ")")
        args.extend(open_queues)
    if urgent_only:
        parts.append("(t.t_urgent = 1 AND t.queue IN (" + ", ".join(["%s"] * len(urgent_only)) + "))")
        args.extend(urgent_only)
    if include_unknown:
        parts.append("t.queue NOT IN (" + ", ".join(["%s"] * len(known)) + ")")
        args.extend(known)
    return (" OR ".join(parts) or "FALSE"), args


async def select_candidates(db: Database, server_id: int, limit: int, *, open_queues: list[str],
                            known_queues: list[str], include_unknown: bool, rollback: bool,
                            urgent_only: list[str] | None = None) -> tuple[list[Transaction], list[Transaction]]:
    """Execute candidates (priority desc, t_id asc) of the queues that have a free slot, and rollback
    candidates (priority desc, t_id desc) when the rollback queue has one. Polling only open queues keeps a
    busy node from reading, again and again, rows it cannot start."""
    cond, qargs = _queue_filter(open_queues, urgent_only or [], known_queues, include_unknown)
    sql = _EXECUTE.format(queues=cond)
    args: list[object] = [server_id, *qargs, limit]
    if rollback:
        sql += " UNION ALL " + _ROLLBACK
        args += [server_id, limit]
    rows = await db.fetchall(sql, args)
    execute = [Transaction.from_row(r) for r in rows if r["kind"] == 0]
    back = [Transaction.from_row(r) for r in rows if r["kind"] == 1]
    return execute, back


async def claim(tx: Tx, t: Transaction, *, server_id: int, host: str, pid: int) -> bool:
    """Durably mark ``t`` as started by this node; exactly one claim can win."""
    if t.direction.label == "execute":
        try:
            n = await tx.execute("UPDATE transactions SET started_at = %s "
                                 "WHERE t_id = %s AND t_done = 0 AND started_at IS NULL", (utcnow(), t.t_id))
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] in (1205, 1213):
                return False  # a concurrent save holds the row; the next poll sees it again
            raise
        return n == 1
    try:
        await tx.execute("INSERT INTO vpsadmind_claims (transaction_id, server_id, host, pid, claimed_at) "
                         "VALUES (%s, %s, %s, %s, %s)", (t.t_id, server_id, host, pid, utcnow()))
    except pymysql.err.IntegrityError:
        return False
    return True


async def find_interrupted(db: Database, server_id: int) -> list[Transaction]:
    """This node's claimed transactions whose results were never saved: a crash interrupted them."""
    execute = await db.fetchall(
        "SELECT " + COLUMNS.format(a="t") + " FROM transactions t "
        "JOIN transaction_chains c ON c.id = t.transaction_chain_id "
        "WHERE t.t_server = %s AND t.t_done = 0 AND t.started_at IS NOT NULL AND c.state = 1 ORDER BY t.t_id",
        (server_id,))
    rollback = await db.fetchall(
        "SELECT " + COLUMNS.format(a="d") + " FROM vpsadmind_claims cl "
        "JOIN transactions d ON d.t_id = cl.transaction_id "
        "JOIN transaction_chains c ON c.id = d.transaction_chain_id "
        "WHERE cl.server_id = %s AND d.t_done = 1 AND c.state = 3 ORDER BY d.t_id DESC", (server_id,))
    await db.execute(
        "DELETE cl FROM vpsadmind_claims cl JOIN transactions d ON d.t_id = cl.transaction_id "
        "WHERE cl.server_id = %s AND d.t_done <> 1", (server_id,))
    return [Transaction.from_row(r) for r in execute + rollback]
