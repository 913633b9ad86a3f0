"""Throw-away v2.0 databases for tests: settings from the environment, create/drop, a fast reset.

The schema is the repository's ``schema/v2.0.sql``. Every database created here also gets the ``sysconfig``
row ``db_version``; v2.0 stores ``cfg_value`` JSON-encoded, so the integer 15 is the text ``15``.

Both an asyncio API (aiomysql, for tests) and a synchronous one (pymysql, for session-scoped pytest fixtures
that must not touch an event loop) are provided; they run the same statements.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import aiomysql
import pymysql

from vpsadmind.db.node_tables import NODE_TABLES_DDL

__all__ = [
    "DB_VERSION",
    "SCHEMA_DIR",
    "SCHEMA_FILE",
    "TestDbSettings",
    "connect",
    "connect_sync",
    "create_database",
    "create_database_sync",
    "drop_database",
    "drop_database_sync",
    "random_database_name",
    "require_mariadb",
    "schema_statements",
    "truncate_all",
]

#: The repository's top-level ``schema/`` directory.
SCHEMA_DIR: Final = Path(__file__).resolve().parents[2] / "schema"
SCHEMA_FILE: Final = SCHEMA_DIR / "v2.0.sql"

#: ``sysconfig.db_version`` the v2.0 daemon waits for (contract 4.2).
DB_VERSION: Final = 15

_ENV_PREFIX: Final = "VPSADMIND_TEST_DB_"
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_CHARSET: Final = "utf8mb4"


def _env(key: str, default: str, env: Mapping[str, str] | None = None) -> str:
    source = os.environ if env is None else env
    return source.get(_ENV_PREFIX + key) or default


@dataclass(frozen=True, slots=True)
class TestDbSettings:
    """Where the test MariaDB listens. Defaults: 127.0.0.1:3306, user and password ``vpsadmind``.

    Each field can be overridden by ``VPSADMIND_TEST_DB_HOST`` / ``_PORT`` / ``_USER`` / ``_PASSWORD``.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class despite the name

    host: str = field(default_factory=lambda: _env("HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(_env("PORT", "3306")))
    user: str = field(default_factory=lambda: _env("USER", "vpsadmind"))
    password: str = field(default_factory=lambda: _env("PASSWORD", "vpsadmind"))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TestDbSettings:
        """Settings read from ``env`` (default ``os.environ``)."""
        return cls(
            host=_env("HOST", "127.0.0.1", env),
            port=int(_env("PORT", "3306", env)),
            user=_env("USER", "vpsadmind", env),
            password=_env("PASSWORD", "vpsadmind", env),
        )

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def random_database_name(prefix: str = "vpsadmind_test_") -> str:
    """A fresh database name such as ``vpsadmind_test_3f9a0c1d2e4b``."""
    return prefix + secrets.token_hex(6)


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid database name {name!r} (expected [A-Za-z0-9_], at most 64 characters)")
    return name


# ----------------------------------------------------------------------------------------------------------
# Schema file


def _split_sql(text: str) -> Iterator[str]:
    """Statements of an SQL script: splits on ``;`` outside quotes, drops ``--`` and ``#`` line comments."""
    buf: list[str] = []
    quote: str | None = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if quote is not None:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(text[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
            buf.append(ch)
        elif ch == "#" or (ch == "-" and text.startswith("-- ", i)) or text.startswith("--\n", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
            continue
        elif ch == ";":
            stmt = "".join(buf).strip()
            if stmt:
                yield stmt
            buf = []
        else:
            buf.append(ch)
        i += 1
    stmt = "".join(buf).strip()
    if stmt:
        yield stmt


def schema_statements(path: Path = SCHEMA_FILE) -> list[str]:
    """The ``CREATE TABLE`` statements of the v2.0 schema, one string each, without trailing ``;``."""
    return list(_split_sql(path.read_text(encoding="utf-8")))


def _db_version_insert() -> tuple[str, tuple[str, str]]:
    return (
        "INSERT INTO sysconfig (cfg_name, cfg_value) VALUES (%s, %s)",
        ("db_version", json.dumps(DB_VERSION)),
    )


def _create_statements(name: str) -> list[str]:
    _check_name(name)
    return [
        "SET SESSION sql_notes = 0",  # IF [NOT] EXISTS notes would become Python warnings in aiomysql
        f"DROP DATABASE IF EXISTS `{name}`",
        f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci",
        f"USE `{name}`",
        *schema_statements(),
        # the daemon's own tables, as every daemon makes them at start (vpsadmind/db/node_tables.py)
        *NODE_TABLES_DDL,
    ]


# ----------------------------------------------------------------------------------------------------------
# asyncio API


async def connect(settings: TestDbSettings, db: str | None = None) -> aiomysql.Connection:
    """An autocommit aiomysql connection (utf8mb4), to database ``db`` if given."""
    return await aiomysql.connect(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password,
        db=db,
        autocommit=True,
        charset=_CHARSET,
        connect_timeout=5,
    )


async def create_database(name: str, settings: TestDbSettings) -> None:
    """(Re)create database ``name`` with the v2.0 schema and ``sysconfig.db_version = 15``."""
    conn = await connect(settings)
    try:
        async with conn.cursor() as cur:
            for stmt in _create_statements(name):
                await cur.execute(stmt)
            await cur.execute(*_db_version_insert())
    finally:
        conn.close()


async def drop_database(name: str, settings: TestDbSettings) -> None:
    """Drop database ``name`` if it exists."""
    _check_name(name)
    conn = await connect(settings)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION sql_notes = 0")
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


_DIRTY_TABLES_SQL: Final = (
    "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'"
)


def _dirty_query(tables: list[str]) -> str:
    return " UNION ALL ".join(f"SELECT '{t}' FROM DUAL WHERE EXISTS (SELECT 1 FROM `{t}`)" for t in tables)


def _to_truncate(info: list[tuple[Any, Any]], nonempty: set[str]) -> list[str]:
    out = []
    for table, auto_inc in info:
        name = str(table)
        if name == "sysconfig":
            continue
        if name in nonempty or (auto_inc is not None and int(auto_inc) > 1):
            out.append(name)
    return out


async def truncate_all(conn: aiomysql.Connection) -> None:
    """Reset the connection's current database: every table empty with its auto-increment back at 1, and
    ``sysconfig`` holding only ``db_version``.

    Only tables that have rows or a used auto-increment counter are truncated, which keeps a reset of a
    mostly empty database to a few milliseconds.
    """
    async with conn.cursor() as cur:
        await cur.execute(_DIRTY_TABLES_SQL)
        info: list[tuple[Any, Any]] = list(await cur.fetchall())
        tables = [str(row[0]) for row in info]
        nonempty: set[str] = set()
        if tables:
            await cur.execute(_dirty_query(tables))
            nonempty = {str(row[0]) for row in await cur.fetchall()}
        for table in _to_truncate(info, nonempty):
            await cur.execute(f"TRUNCATE TABLE `{table}`")
        await cur.execute("DELETE FROM sysconfig")
        await cur.execute(*_db_version_insert())


# ----------------------------------------------------------------------------------------------------------
# Synchronous API (pymysql), for session-scoped fixtures


def connect_sync(settings: TestDbSettings, db: str | None = None, *, timeout: float = 5) -> Any:
    """A pymysql connection with the same options as :func:`connect`."""
    return pymysql.connect(
        host=settings.host,
        port=settings.port,
        user=settings.user,
        password=settings.password,
        database=db,
        autocommit=True,
        charset=_CHARSET,
        connect_timeout=timeout,
    )


def create_database_sync(name: str, settings: TestDbSettings) -> None:
    """Synchronous :func:`create_database`."""
    conn = connect_sync(settings)
    try:
        with conn.cursor() as cur:
            for stmt in _create_statements(name):
                cur.execute(stmt)
            cur.execute(*_db_version_insert())
    finally:
        conn.close()


def drop_database_sync(name: str, settings: TestDbSettings) -> None:
    """Synchronous :func:`drop_database`."""
    _check_name(name)
    conn = connect_sync(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_notes = 0")
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def require_mariadb(settings: TestDbSettings) -> None:
    """Make sure the test MariaDB answers; otherwise skip the test (or fail it when ``CI=true``)."""
    try:
        conn = connect_sync(settings, timeout=3)
    except Exception as exc:
        from vpsadmind.testing.services import unavailable

        unavailable(f"MariaDB for tests not reachable as {settings.describe()}: {exc}")
    else:
        conn.close()
