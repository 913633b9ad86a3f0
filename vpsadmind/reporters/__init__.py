"""Periodic reporters that write node facts into the vpsAdmin database (storage usage, ...)."""

from vpsadmind.reporters.storage import PoolReport, StorageReporter, report_storage, yaml_int

__all__ = ["PoolReport", "StorageReporter", "report_storage", "yaml_int"]
