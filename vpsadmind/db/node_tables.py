"""Tables the node agent owns beside v2.0's (created at start when missing, documented in docs/architecture.md).

- ``vpsadmind_claims``: a durable claim of a rollback run (execute runs are claimed through ``started_at``).
- ``vpsadmind_nodes``: which process serves a ``server_id``, so a second daemon can say who holds the node.
"""

from __future__ import annotations

from vpsadmind.db.pool import Tx

__all__ = ["NODE_TABLES_DDL", "ensure_node_tables"]

NODE_TABLES_DDL = (
    """CREATE TABLE IF NOT EXISTS `vpsadmind_claims` (
        `transaction_id` INT NOT NULL PRIMARY KEY,
        `server_id` INT NOT NULL,
        `host` VARCHAR(255) NOT NULL,
        `pid` INT NOT NULL,
        `claimed_at` DATETIME NOT NULL,
        KEY `server_id` (`server_id`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS `vpsadmind_nodes` (
        `server_id` INT NOT NULL PRIMARY KEY,
        `host` VARCHAR(255) NOT NULL,
        `pid` INT NOT NULL,
        `connection_id` BIGINT NOT NULL,
        `version` VARCHAR(63) NOT NULL,
        `started_at` DATETIME NOT NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
)


async def ensure_node_tables(tx: Tx) -> None:
    for ddl in NODE_TABLES_DDL:
        await tx.execute(ddl)
