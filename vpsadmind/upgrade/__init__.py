"""The node side of the vpsAdmin v1.22 -> v2.0 upgrade: ``vpsadmind upgrade check|apply`` (docs/upgrade.md).

Steps, in order: ``prerequisites``, ``pools``, ``reserved-names``, ``backups``, ``nas``, ``sharenfs``,
``firewall``. Every step is idempotent and can be resumed after an interruption at any point.
"""

from vpsadmind.upgrade.context import Options
from vpsadmind.upgrade.engine import STEP_NAMES, Result, run_upgrade
from vpsadmind.upgrade.report import ExitCode, Hook, Status

__all__ = ["STEP_NAMES", "ExitCode", "Hook", "Options", "Result", "Status", "run_upgrade"]
