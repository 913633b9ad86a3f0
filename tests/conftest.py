"""Shared fixtures: a throw-away v2.0 database on the local MariaDB.

* ``db_settings`` (session): where MariaDB listens, from ``VPSADMIND_TEST_DB_*`` (default 127.0.0.1:3306,
  vpsadmind/vpsadmind);
* ``test_database`` (session): creates ``vpsadmind_test_<hex>`` with ``schema/v2.0.sql`` and drops it at the
  end; skips (or fails when ``CI=true``) if MariaDB is not reachable. Done synchronously with pymysql so that
  no session-scoped event loop is needed;
* ``db`` (function): an autocommit aiomysql connection to that database, with every table reset first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from vpsadmind.testing.db import (
    TestDbSettings,
    connect,
    create_database_sync,
    drop_database_sync,
    random_database_name,
    require_mariadb,
    truncate_all,
)


@pytest.fixture(scope="session")
def db_settings() -> TestDbSettings:
    return TestDbSettings.from_env()


@pytest.fixture(scope="session")
def test_database(db_settings: TestDbSettings) -> Iterator[str]:
    require_mariadb(db_settings)
    name = random_database_name()
    create_database_sync(name, db_settings)
    try:
        yield name
    finally:
        drop_database_sync(name, db_settings)


@pytest_asyncio.fixture
async def db(db_settings: TestDbSettings, test_database: str) -> AsyncIterator[Any]:
    conn = await connect(db_settings, test_database)
    try:
        await truncate_all(conn)
        yield conn
    finally:
        conn.close()
