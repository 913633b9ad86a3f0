"""Only one daemon per ``server_id``, across hosts: a MySQL named lock held by a dedicated connection.

MySQL releases a named lock when its connection ends, so a crashed daemon frees its node at once, and a
daemon that lost its connection must win the lock again before it may claim anything.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import structlog

from vpsadmind import __version__
from vpsadmind.db import Database
from vpsadmind.engine.model import utcnow
from vpsadmind.errors import NodeLocked

__all__ = ["NodeLock"]

log = structlog.get_logger("vpsadmind.node_lock")


class NodeLock:
    def __init__(self, db: Database, server_id: int) -> None:
        self.db = db
        self.server_id = server_id
        # Named locks are server-wide, not per schema: the schema name keeps test databases apart.
        self.name = f"vpsadmind:{db.cfg.name or ''}:{server_id}"[:64]
        self._conn: Any = None
        self.connection_id: int | None = None

    async def acquire(self) -> None:
        conn = await self.db.open_connection()
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT GET_LOCK(%s, 0) AS got, CONNECTION_ID() AS cid", (self.name,))
                row = await cur.fetchone()
                if not row or row["got"] != 1:
                    raise NodeLocked(await self._holder(cur))
                self.connection_id = int(row["cid"])
                await cur.execute(
                    "REPLACE INTO vpsadmind_nodes (server_id, host, pid, connection_id, version, started_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (self.server_id, socket.gethostname(), os.getpid(), self.connection_id, __version__,
                     utcnow()),
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _holder(self, cur: Any) -> str:
        await cur.execute("SELECT IS_USED_LOCK(%s) AS cid", (self.name,))
        row = await cur.fetchone()
        cid = row["cid"] if row else None
        await cur.execute("SELECT host, pid, connection_id, started_at FROM vpsadmind_nodes WHERE server_id = %s",
                          (self.server_id,))
        info = await cur.fetchone()
        msg = f"server_id {self.server_id} is already served by another vpsadmind"
        if info and (cid is None or int(info["connection_id"]) == int(cid)):
            msg += (f": pid {info['pid']} on host {info['host']} since {info['started_at']} UTC "
                    f"(MySQL connection {info['connection_id']})")
        elif cid is not None:
            msg += f" (MySQL connection {cid} holds lock {self.name!r})"
        return msg

    async def check(self) -> bool:
        """True while we still hold the lock; False when the connection dropped (the lock went with it)."""
        if self._conn is None or self._conn.closed:
            return False
        try:
            async with self._conn.cursor() as cur:
                await cur.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID() AS mine", (self.name,))
                row = await cur.fetchone()
                return bool(row and row["mine"])
        except Exception:
            self._conn.close()
            return False

    async def reacquire(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        await self.acquire()
        log.info("node_lock_reacquired", server_id=self.server_id)

    async def release(self) -> None:
        if self._conn is None:
            return
        try:
            async with self._conn.cursor() as cur:
                await cur.execute("DELETE FROM vpsadmind_nodes WHERE server_id = %s AND connection_id = %s",
                                  (self.server_id, self.connection_id))
                await cur.execute("SELECT RELEASE_LOCK(%s)", (self.name,))
        except Exception as exc:
            log.warning("node_lock_release_failed", error=str(exc))
        finally:
            self._conn.close()
            self._conn = None
