"""The database side of transfers: the ``vpsadmind_transfers`` row of each Recv and the ``vpsadmind_holds``
ledger (see vpsadmind/db/node_tables.py for the DDL).

A transfer row moves ``listening -> receiving -> received | failed -> checked``; a Recv rollback deletes it.
Rows and holds of chains that are over (done, failed, fatal, resolved) are swept at start (:func:`sweep`),
so that a crash at any point leaves neither a hold on a snapshot nor a secret behind for long.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Final

from vpsadmind.db import Database
from vpsadmind.engine.model import ChainState

__all__ = ["TransferRow", "TransferStore", "FINISHED_CHAIN_STATES"]

#: Chain states after which nothing of a transfer is needed any more.
FINISHED_CHAIN_STATES: Final = (int(ChainState.DONE), int(ChainState.FAILED), int(ChainState.FATAL),
                                int(ChainState.RESOLVED))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


@dataclass(frozen=True, slots=True)
class TransferRow:
    id: int
    chain_id: int
    transaction_id: int
    server_id: int
    addr: str
    port: int
    secret: str
    target: str
    existing: list[str]
    target_existed: bool
    remount: bool
    state: str
    guid: str | None
    bytes: int
    error: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TransferRow:
        existing = json.loads(row["existing"] or "[]")
        return cls(int(row["id"]), int(row["chain_id"]), int(row["transaction_id"]), int(row["server_id"]),
                   str(row["addr"]), int(row["port"]), str(row["secret"]), str(row["target"]),
                   [str(x) for x in existing] if isinstance(existing, list) else [],
                   bool(row["target_existed"]), bool(row["remount"]), str(row["state"]), row["guid"],
                   int(row["bytes"] or 0),
                   row["error"])


class TransferStore:
    """Queries over the two node tables; every method is one short statement."""

    def __init__(self, db: Database, server_id: int) -> None:
        self.db = db
        self.server_id = server_id

    async def register(self, *, chain_id: int, transaction_id: int, addr: str, port: int, secret: str,
                       target: str, existing: list[str], target_existed: bool, remount: bool = False) -> None:
        """The row of a Recv; a re-run of the same Recv replaces its row (and so its secret)."""
        now = _now()
        await self.db.execute(
            "REPLACE INTO vpsadmind_transfers (chain_id, transaction_id, server_id, addr, port, secret, target,"
            " existing, target_existed, remount, state, guid, bytes, error, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'listening', NULL, 0, NULL, %s, %s)",
            (chain_id, transaction_id, self.server_id, addr, port, secret, target, json.dumps(existing),
             int(target_existed), int(remount), now, now))

    async def by_recv(self, transaction_id: int) -> TransferRow | None:
        row = await self.db.fetchone("SELECT * FROM vpsadmind_transfers WHERE transaction_id = %s",
                                     (transaction_id,))
        return TransferRow.from_row(row) if row else None

    async def by_endpoint(self, chain_id: int, addr: str, port: int) -> TransferRow | None:
        """What a Send looks up: the newest receiver of its chain on ``addr:port``."""
        row = await self.db.fetchone(
            "SELECT * FROM vpsadmind_transfers WHERE chain_id = %s AND addr = %s AND port = %s"
            " ORDER BY id DESC LIMIT 1", (chain_id, addr, port))
        return TransferRow.from_row(row) if row else None

    async def by_target(self, chain_id: int, target: str) -> TransferRow | None:
        """What a RecvCheck looks up: the newest transfer of its chain into ``target`` on this node."""
        row = await self.db.fetchone(
            "SELECT * FROM vpsadmind_transfers WHERE chain_id = %s AND server_id = %s AND target = %s"
            " ORDER BY id DESC LIMIT 1", (chain_id, self.server_id, target))
        return TransferRow.from_row(row) if row else None

    async def update(self, row_id: int, *, state: str, guid: str | None = None, nbytes: int | None = None,
                     error: str | None = None) -> None:
        await self.db.execute(
            "UPDATE vpsadmind_transfers SET state = %s, guid = COALESCE(%s, guid), bytes = COALESCE(%s, bytes),"
            " error = %s, updated_at = %s WHERE id = %s", (state, guid, nbytes, error, _now(), row_id))

    async def delete(self, row_id: int) -> None:
        await self.db.execute("DELETE FROM vpsadmind_transfers WHERE id = %s", (row_id,))

    async def open_receivers(self) -> list[TransferRow]:
        """Rows of this node whose receiver should be listening: the chain still executes and no stream has
        arrived yet (a daemon restarted between Recv and Send)."""
        rows = await self.db.fetchall(
            "SELECT t.* FROM vpsadmind_transfers t JOIN transaction_chains c ON c.id = t.chain_id"
            " WHERE t.server_id = %s AND t.state IN ('listening', 'receiving') AND c.state = %s",
            (self.server_id, int(ChainState.QUEUED)))
        return [TransferRow.from_row(r) for r in rows]

    # -- holds --------------------------------------------------------------------------------------------

    async def note_holds(self, pairs: list[tuple[str, str]], *, chain_id: int, transaction_id: int) -> None:
        now = _now()
        async with self.db.autocommit() as tx:
            await tx.executemany(
                "INSERT IGNORE INTO vpsadmind_holds (server_id, tag, snapshot, chain_id, transaction_id, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(self.server_id, tag, snap, chain_id, transaction_id, now) for tag, snap in pairs])

    async def forget_holds(self, tag: str, snapshots: list[str]) -> None:
        marks = ", ".join(["%s"] * len(snapshots))
        await self.db.execute(
            f"DELETE FROM vpsadmind_holds WHERE server_id = %s AND tag = %s AND snapshot IN ({marks})",
            (self.server_id, tag, *snapshots))

    async def holds_of(self, *, chain_id: int | None = None, transaction_id: int | None = None,
                       finished_chains: bool = False) -> list[tuple[str, str]]:
        """``(tag, snapshot)`` ledger entries of this node: of a chain, of a transaction, or of every chain
        that is over."""
        sql = "SELECT h.tag, h.snapshot FROM vpsadmind_holds h"
        args: list[Any] = []
        if finished_chains:
            sql += (" LEFT JOIN transaction_chains c ON c.id = h.chain_id WHERE h.server_id = %s"
                    f" AND (c.id IS NULL OR c.state IN ({', '.join(['%s'] * len(FINISHED_CHAIN_STATES))}))")
            args = [self.server_id, *FINISHED_CHAIN_STATES]
        else:
            sql += " WHERE h.server_id = %s"
            args = [self.server_id]
        if chain_id is not None:
            sql += " AND h.chain_id = %s"
            args.append(chain_id)
        if transaction_id is not None:
            sql += " AND h.transaction_id = %s"
            args.append(transaction_id)
        rows = await self.db.fetchall(sql, args)
        return [(str(r["tag"]), str(r["snapshot"])) for r in rows]

    async def delete_finished(self) -> int:
        """Drop the transfer rows of this node whose chain is over (their secrets are no use any more)."""
        marks = ", ".join(["%s"] * len(FINISHED_CHAIN_STATES))
        return await self.db.execute(
            "DELETE t FROM vpsadmind_transfers t LEFT JOIN transaction_chains c ON c.id = t.chain_id"
            f" WHERE t.server_id = %s AND (c.id IS NULL OR c.state IN ({marks}))",
            (self.server_id, *FINISHED_CHAIN_STATES))
