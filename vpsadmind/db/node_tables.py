"""Tables the node agent owns beside v2.0's (created at start when missing, documented in docs/architecture.md).

- ``vpsadmind_claims``: a durable claim of a rollback run (execute runs are claimed through ``started_at``).
- ``vpsadmind_nodes``: which process serves a ``server_id``, so a second daemon can say who holds the node.
- ``vpsadmind_transfers``: one row per Recv (5220): the per-transfer secret that only the sending node learns,
  the target, the snapshots it had before (what a rollback must never destroy) and how the stream ended.
- ``vpsadmind_holds``: every ``zfs hold`` a transfer took, so that it is released even after a crash.
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
    """CREATE TABLE IF NOT EXISTS `vpsadmind_transfers` (
        `id` INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        `chain_id` INT NOT NULL,
        `transaction_id` INT NOT NULL,
        `server_id` INT NOT NULL,
        `addr` VARCHAR(64) NOT NULL,
        `port` INT NOT NULL,
        `secret` CHAR(64) NOT NULL,
        `target` VARCHAR(255) NOT NULL,
        `existing` TEXT NOT NULL,
        `target_existed` TINYINT NOT NULL,
        `remount` TINYINT NOT NULL DEFAULT 0,
        `state` VARCHAR(16) NOT NULL,
        `guid` VARCHAR(32) NULL,
        `bytes` BIGINT NOT NULL DEFAULT 0,
        `error` TEXT NULL,
        `created_at` DATETIME NOT NULL,
        `updated_at` DATETIME NOT NULL,
        UNIQUE KEY `transaction_id` (`transaction_id`),
        KEY `chain_id` (`chain_id`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE IF NOT EXISTS `vpsadmind_holds` (
        `server_id` INT NOT NULL,
        `tag` VARCHAR(64) NOT NULL,
        `snapshot` VARCHAR(255) NOT NULL,
        `chain_id` INT NOT NULL,
        `transaction_id` INT NOT NULL,
        `created_at` DATETIME NOT NULL,
        PRIMARY KEY (`server_id`, `tag`, `snapshot`),
        KEY `chain_id` (`chain_id`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
)


async def ensure_node_tables(tx: Tx) -> None:
    for ddl in NODE_TABLES_DDL:
        await tx.execute(ddl)
