"""Database access: a small connection pool with fail-over through ``db.hosts``."""

from vpsadmind.db.pool import Database, Tx, is_connectivity_error

__all__ = ["Database", "Tx", "is_connectivity_error"]
