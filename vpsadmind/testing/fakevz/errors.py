"""Exit codes and the one exception of the fake vzctl/vzlist.

The numbers are vzctl's (``include/vzerror.h``), written out here on purpose instead of imported from
:mod:`vpsadmind.vz.exitcodes`: the fake is a model of vzctl, and the driver's tests compare the two.
"""

from __future__ import annotations

__all__ = [
    "VzFail", "SYSTEM_ERROR", "EXEC_ERROR", "LOCKED", "NOCONFIG", "NOVECONFIG", "INVALID_SYNTAX", "INVALID_VALUE",
    "NOTENOUGHUBCPARAMS", "OSTEMPLATE_NOTSET", "NOT_RUNNING", "RUNNING", "FS_NOT_MOUNTED", "FS_MOUNTED",
    "FS_NOPRVT", "FS_PRVT_EXISTS", "FS_NEW_PRVT", "FS_MPOINTCREATE", "FS_CANTMOUNT", "FS_CANTUMOUNT",
    "FS_DEL_PRVT", "CHANGEPASS", "IP_INUSE", "ACTIONSCRIPT_ERROR", "CP_CONFIG", "OSTEMPLATE_NOT_FOUND",
    "START_DISABLED", "APPLY_CONFIG_ERROR",
]

SYSTEM_ERROR = 3
EXEC_ERROR = 8
LOCKED = 9
NOCONFIG = 10
NOVECONFIG = 14
INVALID_SYNTAX = 20
INVALID_VALUE = 21
NOTENOUGHUBCPARAMS = 28
OSTEMPLATE_NOTSET = 29
NOT_RUNNING = 31
RUNNING = 32
FS_NOT_MOUNTED = 40
FS_MOUNTED = 41
FS_NOPRVT = 43
FS_PRVT_EXISTS = 44
FS_NEW_PRVT = 48
FS_MPOINTCREATE = 49
FS_CANTMOUNT = 50
FS_CANTUMOUNT = 51
FS_DEL_PRVT = 52
CHANGEPASS = 74
IP_INUSE = 78
ACTIONSCRIPT_ERROR = 79
CP_CONFIG = 82
OSTEMPLATE_NOT_FOUND = 91
START_DISABLED = 105
APPLY_CONFIG_ERROR = 109


class VzFail(Exception):
    """End the command with exit code ``rc``: ``message`` goes to stderr (vzctl logs errors there), ``stdout`` to
    stdout first."""

    def __init__(self, rc: int, message: str = "", *, stdout: str = "") -> None:
        super().__init__(message)
        self.rc = rc
        self.message = message
        self.stdout = stdout
