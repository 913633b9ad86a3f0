"""The bare SQL loop of the throughput benchmark: the engine's statements with no engine around them.

It runs what ``vpsadmind/engine/select.py`` and ``save.py`` execute for a NoOp chain, with the same session
settings (READ COMMITTED, UTC, dict rows), on ``workers`` connections in parallel, each running one chain at a
time as one queue slot of the engine does:

* per chain start: the candidate select of a poll (same joins, filters, order and limit as the engine's);
* per transaction: the claim (``UPDATE transactions SET started_at``, autocommit); ``BEGIN``; the
  ``SELECT ... FOR UPDATE`` of the transaction and its chain; the ``UPDATE transactions`` of the result; then
  either the chain's progress ``UPDATE`` and the ``SELECT`` of the next transaction, or at the chain's end the
  confirmations select, the release of resource locks and ports (select + delete/update each) and the chain
  close ``UPDATE``; ``COMMIT``.

No handler, no MQTT, no logging, no journal: the floor of what the database allows for this workload.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aiomysql

from vpsadmind.testing.db import TestDbSettings

__all__ = ["bare_loop"]

_COLUMNS = ("t.t_id, t.transaction_chain_id, t.t_type, t.t_server, t.t_vps, t.t_depends_on, t.t_urgent, "
            "t.t_priority, t.t_success, t.t_done, t.t_param, t.reversible, t.queue, t.t_output, "
            "c.state AS chain_state, c.progress AS chain_progress, c.size AS chain_size, c.urgent_rollback")
_CANDIDATES = (
    "SELECT 0 AS kind, " + _COLUMNS + " FROM transactions t "
    "JOIN transaction_chains c ON c.id = t.transaction_chain_id "
    "LEFT JOIN transactions d ON d.t_id = t.t_depends_on "
    "WHERE t.t_server = %s AND t.t_done = 0 AND t.started_at IS NULL AND c.state = 1 "
    "AND (t.t_depends_on IS NULL OR d.t_done = 1) AND (t.queue IN (%s)) "
    "ORDER BY t.t_priority DESC, t.t_id ASC LIMIT %s"
)
_CLAIM = "UPDATE transactions SET started_at = %s WHERE t_id = %s AND t_done = 0 AND started_at IS NULL"
_LOCK = ("SELECT c.id, c.state, c.progress, c.size, t.t_done FROM transactions t "
         "JOIN transaction_chains c ON c.id = t.transaction_chain_id WHERE t.t_id = %s FOR UPDATE")
_RESULT = ("UPDATE transactions SET t_done = %s, t_success = %s, t_output = %s, started_at = %s, "
           "finished_at = %s WHERE t_id = %s")
_PROGRESS = "UPDATE transaction_chains SET state = %s, progress = %s, updated_at = %s WHERE id = %s"
_NEXT = ("SELECT " + _COLUMNS + " FROM transactions t JOIN transaction_chains c ON c.id = t.transaction_chain_id "
         "WHERE t.t_depends_on = %s AND t.t_done = 0 ORDER BY t.t_id LIMIT 1")
_CONFIRMATIONS = ("SELECT c.id, c.transaction_id, c.table_name, c.row_pks, c.attr_changes, c.confirm_type, "
                  "t.t_success FROM transaction_confirmations c JOIN transactions t ON t.t_id = c.transaction_id "
                  "WHERE t.transaction_chain_id = %s AND c.done = 0 ORDER BY c.id")
_CLOSE = [
    ("SELECT resource, row_id FROM resource_locks WHERE transaction_chain_id = %s", True),
    ("DELETE FROM resource_locks WHERE transaction_chain_id = %s", False),
    ("SELECT node_id, addr, port FROM port_reservations WHERE transaction_chain_id = %s", True),
    ("UPDATE port_reservations SET transaction_chain_id = NULL, addr = NULL WHERE transaction_chain_id = %s", False),
]
CAPACITY = 42  # the engine's select limit: the slots of all default queues


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


async def _connect(settings: TestDbSettings, database: str) -> Any:
    conn = await aiomysql.connect(host=settings.host, port=settings.port, user=settings.user,
                                  password=settings.password, db=database, autocommit=True, charset="utf8mb4",
                                  cursorclass=aiomysql.DictCursor)
    async with conn.cursor() as cur:
        await cur.execute("SET time_zone = '+00:00', sql_notes = 0")
        await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return conn


async def _close_chain(cur: Any, chain: dict[str, Any], now: dt.datetime) -> None:
    await cur.execute(_CONFIRMATIONS, (chain["id"],))
    await cur.fetchall()
    for sql, fetch in _CLOSE:
        await cur.execute(sql, (chain["id"],))
        if fetch:
            await cur.fetchall()
    await cur.execute(_PROGRESS, (2, int(chain["progress"]) + 1, now, chain["id"]))


async def _transaction(conn: Any, t: dict[str, Any]) -> dict[str, Any] | None:
    """Claim and save one NoOp transaction; returns the chain's next transaction or None at its end."""
    async with conn.cursor() as cur:
        started = _utcnow()
        if await cur.execute(_CLAIM, (started, t["t_id"])) != 1:
            raise RuntimeError(f"claim of transaction {t['t_id']} lost")
        await conn.begin()
        await cur.execute(_LOCK, (t["t_id"],))
        chain = await cur.fetchone()
        now = _utcnow()
        await cur.execute(_RESULT, (1, 1, "{}", started, now, t["t_id"]))
        nxt = None
        if int(chain["size"]) <= int(chain["progress"]) + 1:
            await _close_chain(cur, chain, now)
        else:
            await cur.execute(_PROGRESS, (int(chain["state"]), int(chain["progress"]) + 1, now, chain["id"]))
            await cur.execute(_NEXT, (t["t_id"],))
            nxt = await cur.fetchone()
        await conn.commit()
        return dict(nxt) if nxt else None


async def _worker(conn: Any, server_id: int, taken: set[int]) -> int:
    done = 0
    while True:
        async with conn.cursor() as cur:
            await cur.execute(_CANDIDATES, (server_id, "general", CAPACITY))
            rows = await cur.fetchall()
        t = next((dict(r) for r in rows if r["transaction_chain_id"] not in taken), None)
        if t is None:
            return done
        taken.add(int(t["transaction_chain_id"]))
        while t is not None:
            t = await _transaction(conn, t)
            done += 1


async def bare_loop(settings: TestDbSettings, database: str, *, server_id: int, workers: int) -> int:
    """Run every queued NoOp chain of ``server_id`` to done; returns the number of transactions."""
    conns = [await _connect(settings, database) for _ in range(workers)]
    taken: set[int] = set()
    try:
        counts = await asyncio.gather(*(_worker(c, server_id, taken) for c in conns))
    finally:
        for c in conns:
            c.close()
    return sum(counts)
