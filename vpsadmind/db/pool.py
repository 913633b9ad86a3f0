"""A connection pool over aiomysql that fails over through ``db.hosts`` and tells connectivity loss apart
from real SQL errors, so that the engine can journal a result instead of losing it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiomysql
import pymysql
import structlog

from vpsadmind.config import DbConfig
from vpsadmind.errors import DatabaseError, DatabaseUnavailable

__all__ = ["Database", "Tx", "is_connectivity_error", "is_db_lost", "parse_host"]

T = TypeVar("T")
log = structlog.get_logger("vpsadmind.db")

# Client and server codes that mean "the connection, not the statement, failed": worth a reconnect.
_CONNECTIVITY_CODES = frozenset({1040, 1053, 1077, 1927, 2002, 2003, 2005, 2006, 2013, 2026, 2055})
# Codes after which the same transaction may simply be tried again.
_RETRY_CODES = frozenset({1205, 1213})


def is_connectivity_error(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseUnavailable | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    if isinstance(exc, pymysql.err.OperationalError) and exc.args:
        return exc.args[0] in _CONNECTIVITY_CODES
    return isinstance(exc, OSError)


def is_db_lost(exc: BaseException) -> bool:
    """The database connection, not the statement, failed: narrower than :func:`is_connectivity_error`, for
    errors out of handler code, where an OSError or TimeoutError is the handler's own (a file, a command).
    A handler's error raised ``from`` such a loss counts too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DatabaseUnavailable | pymysql.err.InterfaceError):
            return True
        if isinstance(seen, pymysql.err.OperationalError) and seen.args and seen.args[0] in _CONNECTIVITY_CODES:
            return True
        seen = seen.__cause__
    return False


def is_retryable(exc: BaseException) -> bool:
    return (isinstance(exc, pymysql.err.OperationalError) and bool(exc.args)
            and exc.args[0] in _RETRY_CODES)


def parse_host(spec: str) -> dict[str, Any]:
    """``host``, ``host:port``, ``[v6]:port`` or an absolute unix socket path, as aiomysql keywords."""
    if spec.startswith("/"):
        return {"unix_socket": spec, "host": "localhost"}
    if spec.startswith("["):
        addr, _, rest = spec[1:].partition("]")
        return {"host": addr, "port": int(rest[1:]) if rest.startswith(":") else 3306}
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return {"host": host, "port": int(port)}
    return {"host": spec, "port": 3306}


class Tx:
    """A cursor inside one DB transaction (or autocommit), with a statement timeout."""

    __slots__ = ("_cur", "_timeout")

    def __init__(self, cur: Any, timeout: float) -> None:
        self._cur = cur
        self._timeout = timeout

    async def execute(self, sql: str, args: Any = None) -> int:
        async with asyncio.timeout(self._timeout):
            return int(await self._cur.execute(sql, args))

    async def executemany(self, sql: str, args: Any) -> int:
        async with asyncio.timeout(self._timeout):
            return int(await self._cur.executemany(sql, args) or 0)

    async def fetchall(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        await self.execute(sql, args)
        return list(await self._cur.fetchall())

    async def fetchone(self, sql: str, args: Any = None) -> dict[str, Any] | None:
        await self.execute(sql, args)
        row = await self._cur.fetchone()
        return None if row is None else dict(row)

    @property
    def lastrowid(self) -> int:
        return int(self._cur.lastrowid)

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)


class Database:
    """Pooled connections to the first reachable host of ``db.hosts``.

    A connection that fails with a connectivity error is discarded, never returned to the pool; the next
    acquire starts over at the host that worked last, then tries the others in order.
    """

    def __init__(self, cfg: DbConfig) -> None:
        if not cfg.hosts:
            raise DatabaseError("db.hosts is empty: no database to connect to")
        self.cfg = cfg
        self._idle: list[Any] = []
        self._sem = asyncio.Semaphore(cfg.pool_size)
        self._host_index = 0
        self._closed = False
        self.stats = {"connects": 0, "failovers": 0, "discarded": 0}

    @property
    def current_host(self) -> str:
        return self.cfg.hosts[self._host_index]

    async def open_connection(self) -> Any:
        """A new autocommit connection to the first reachable host, starting at the last good one."""
        errors: list[str] = []
        n = len(self.cfg.hosts)
        for step in range(n):
            index = (self._host_index + step) % n
            spec = self.cfg.hosts[index]
            try:
                conn = await aiomysql.connect(
                    user=self.cfg.user, password=self.cfg.password or "", db=self.cfg.name,
                    autocommit=True, connect_timeout=self.cfg.connect_timeout, charset="utf8mb4",
                    cursorclass=aiomysql.DictCursor, **parse_host(spec),
                )
            except (pymysql.err.MySQLError, OSError, TimeoutError) as exc:
                errors.append(f"{spec}: {exc}")
                continue
            if index != self._host_index:
                self.stats["failovers"] += 1
                log.warning("db_failover", host=spec, previous=self.cfg.hosts[self._host_index])
                self._host_index = index
            self.stats["connects"] += 1
            await self._init_session(conn)
            return conn
        raise DatabaseUnavailable("no database host reachable: " + "; ".join(errors))

    async def _init_session(self, conn: Any) -> None:
        async with conn.cursor() as cur:
            # Dates are written as UTC literals computed in Python; keep NOW() consistent with them.
            await cur.execute("SET time_zone = '+00:00', sql_notes = 0")
            # A queue under REPEATABLE READ deadlocks on next-key locks of the t_done index between a claim
            # and a concurrent save; every statement here locks rows by primary key, so READ COMMITTED is
            # enough and lets claims and saves of different chains pass each other.
            await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        if self._closed:
            raise DatabaseUnavailable("database pool is closed")
        async with self._sem:
            conn = self._idle.pop() if self._idle else await self.open_connection()
            ok = False
            try:
                yield conn
                ok = True
            finally:
                if ok and not self._closed and not conn.closed:
                    self._idle.append(conn)
                else:
                    self.stats["discarded"] += 1
                    conn.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One DB transaction: committed on normal exit, rolled back on any exception."""
        async with self.connection() as conn:
            await conn.begin()
            cur = await conn.cursor()
            try:
                yield Tx(cur, self.cfg.read_timeout)
                await conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise
            finally:
                await cur.close()

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Tx]:
        async with self.connection() as conn:
            cur = await conn.cursor()
            try:
                yield Tx(cur, self.cfg.read_timeout)
            finally:
                await cur.close()

    async def fetchall(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        async with self.autocommit() as tx:
            return await tx.fetchall(sql, args)

    async def fetchone(self, sql: str, args: Any = None) -> dict[str, Any] | None:
        async with self.autocommit() as tx:
            return await tx.fetchone(sql, args)

    async def execute(self, sql: str, args: Any = None) -> int:
        async with self.autocommit() as tx:
            return await tx.execute(sql, args)

    async def run(self, fn: Callable[[Tx], Awaitable[T]], *, retries: int = 5) -> T:
        """Run ``fn`` in a DB transaction, again after a deadlock or lock wait timeout (up to ``retries``)."""
        for attempt in range(retries + 1):
            try:
                async with self.transaction() as tx:
                    return await fn(tx)
            except pymysql.err.OperationalError as exc:
                if not is_retryable(exc) or attempt == retries:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1) + random.random() * 0.02)
        raise AssertionError("unreachable")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect round ``attempt``: doubling from 0.5 s up to ``retry_interval``."""
        return float(min(self.cfg.retry_interval, 0.5 * 2 ** min(attempt, 10)) * (0.75 + random.random() / 2))

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            conn = self._idle.pop()
            conn.close()
