"""Small helpers shared by the engine tests."""

from __future__ import annotations

import json
from typing import Any

import aiomysql

from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.handlers import PROBE


async def fetch(conn: aiomysql.Connection, sql: str, args: Any = None) -> list[dict[str, Any]]:
    async with conn.cursor(aiomysql.DictCursor) as cur:
        await cur.execute(sql, args)
        return [dict(r) for r in await cur.fetchall()]


def probe(builder: ChainBuilder, server: int = 1, *, reversible: int | None = None, **params: Any) -> ChainBuilder:
    return builder.append(PROBE, server=server, params=params, reversible=reversible)


def output(row: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(row["t_output"])) if row["t_output"] else {}
