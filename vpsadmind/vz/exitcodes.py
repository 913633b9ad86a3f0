"""vzctl's documented exit codes (legacy vzctl 4.9.x: ``include/vzerror.h`` and the EXIT STATUS section of vzctl(8)).

The member names are the ``vzerror.h`` symbols, the values their numbers. :data:`DESCRIPTIONS` paraphrases the man
page. Codes vzctl can return that are missing here (the ploop range 150-167, header-only leftovers) still reach the
caller as plain integers: see :func:`describe`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = ["VzExit", "DESCRIPTIONS", "describe", "lookup"]


class VzExit(IntEnum):
    VZ_SETUBC_ERROR = 1
    VZ_SETFSHD_ERROR = 2
    VZ_SYSTEM_ERROR = 3
    VZ_BAD_KERNEL = 5
    VZ_RESOURCE_ERROR = 6
    VZ_ENVCREATE_ERROR = 7
    VZ_COMMAND_EXECUTION_ERROR = 8
    VZ_LOCKED = 9
    VZ_NOCONFIG = 10
    VZ_NOSCRIPT = 11
    VZ_NO_ACCES = 12
    VZ_SET_CAP = 13
    VZ_NOVECONFIG = 14
    VZ_EXEC_TIMEOUT = 15
    VZ_CHKPNT_ERROR = 16
    VZ_RESTORE_ERROR = 17
    VZ_SETLUID_ERROR = 18
    VZ_INVALID_PARAMETER_SYNTAX = 20
    VZ_INVALID_PARAMETER_VALUE = 21
    VZ_VE_ROOT_NOTSET = 22
    VZ_VE_PRIVATE_NOTSET = 23
    VZ_VE_TMPL_NOTSET = 24
    VZ_NOTENOUGHPARAMS = 27
    VZ_NOTENOUGHUBCPARAMS = 28
    VZ_VE_OSTEMPLATE_NOTSET = 29
    VZ_VE_NOT_RUNNING = 31
    VZ_VE_RUNNING = 32
    VZ_STOP_ERROR = 33
    VZ_CANT_ADDIP = 34
    VZ_VALIDATE_ERROR = 35
    VZ_OVERCOMMIT_ERROR = 36
    VZ_FS_NOT_MOUNTED = 40
    VZ_FS_MOUNTED = 41
    VZ_FS_NOPRVT = 43
    VZ_FS_PRVT_AREA_EXIST = 44
    VZ_FS_NO_DISK_SPACE = 46
    VZ_FS_BAD_TMPL = 47
    VZ_FS_NEW_VE_PRVT = 48
    VZ_FS_MPOINTCREATE = 49
    VZ_FS_CANTMOUNT = 50
    VZ_FS_CANTUMOUNT = 51
    VZ_FS_DEL_PRVT = 52
    VZ_UNK_MOUNT_TYPE = 53
    VZ_CANT_CREATE_DIR = 54
    VZ_NOTENOUGH_QUOTA_LIMITS = 55
    VZ_DQ_ON = 60
    VZ_DQ_INIT = 61
    VZ_DQ_SET = 62
    VZ_DISKSPACE_NOT_SET = 63
    VZ_DISKINODES_NOT_SET = 64
    VZ_ERROR_SET_USER_QUOTA = 65
    VZ_DQ_OFF = 66
    VZ_DQ_UGID_NOTINITIALIZED = 67
    VZ_GET_QUOTA_USAGE = 68
    VZ_BADHOSTNAME = 70
    VZ_BADIP = 71
    VZ_BADDNSSRV = 72
    VZ_BADDNSSEARCH = 73
    VZ_CHANGEPASS = 74
    VZ_VE_LCKDIR_NOTSET = 77
    VZ_IP_INUSE = 78
    VZ_ACTIONSCRIPT_ERROR = 79
    VZ_CP_CONFIG = 82
    VZ_INVALID_CONFIG = 85
    VZ_SET_DEVICES = 86
    VZ_INSTALL_APPS_ERROR = 87
    VZ_IP_NA = 89
    VZ_OSTEMPLATE_NOT_FOUND = 91
    VZ_PLOOP_UNSUP = 99
    VZ_GET_IP_ERROR = 100
    VZ_NETDEV_ERROR = 104
    VZ_VE_START_DISABLED = 105
    VZ_SET_IPTABLES = 106
    VZ_NO_DISTR_CONF = 107
    VZ_NO_DISTR_ACTION_SCRIPT = 108
    VZ_APPLY_CONFIG_ERROR = 109
    VZ_CUSTOM_REINSTALL_ERROR = 128
    VZ_SET_MEMINFO_ERROR = 129
    VZ_VETH_ERROR = 130
    VZ_SET_NAME_ERROR = 131
    VZ_WAIT_FAILED = 133
    VZ_CONFIG_SAVE_ERROR = 139
    VZ_SET_IO = 148


DESCRIPTIONS: Final[dict[VzExit, str]] = {
    VzExit.VZ_SETUBC_ERROR: "failed to set a UBC parameter",
    VzExit.VZ_SETFSHD_ERROR: "failed to set a fair scheduler parameter",
    VzExit.VZ_SYSTEM_ERROR: "generic system error",
    VzExit.VZ_BAD_KERNEL: "the running kernel is not an OpenVZ kernel (or OpenVZ modules are not loaded)",
    VzExit.VZ_RESOURCE_ERROR: "not enough system resources",
    VzExit.VZ_ENVCREATE_ERROR: "ENV_CREATE ioctl failed",
    VzExit.VZ_COMMAND_EXECUTION_ERROR: "the command run by vzctl exec returned a non-zero exit code",
    VzExit.VZ_LOCKED: "the container is locked by another vzctl",
    VzExit.VZ_NOCONFIG: "global configuration file vz.conf not found",
    VzExit.VZ_NOSCRIPT: "a vzctl helper script not found",
    VzExit.VZ_NO_ACCES: "permission denied",
    VzExit.VZ_SET_CAP: "capability setting failed",
    VzExit.VZ_NOVECONFIG: "container configuration file ctid.conf not found",
    VzExit.VZ_EXEC_TIMEOUT: "timeout on vzctl exec",
    VzExit.VZ_CHKPNT_ERROR: "error during vzctl chkpnt",
    VzExit.VZ_RESTORE_ERROR: "error during vzctl restore",
    VzExit.VZ_SETLUID_ERROR: "error from setluid()",
    VzExit.VZ_INVALID_PARAMETER_SYNTAX: "invalid command line parameter",
    VzExit.VZ_INVALID_PARAMETER_VALUE: "invalid value for a command line parameter",
    VzExit.VZ_VE_ROOT_NOTSET: "container root directory (VE_ROOT) not set",
    VzExit.VZ_VE_PRIVATE_NOTSET: "container private directory (VE_PRIVATE) not set",
    VzExit.VZ_VE_TMPL_NOTSET: "container template directory (TEMPLATE) not set",
    VzExit.VZ_NOTENOUGHPARAMS: "not enough parameters",
    VzExit.VZ_NOTENOUGHUBCPARAMS: "not all required UBC parameters are set, unable to start the container",
    VzExit.VZ_VE_OSTEMPLATE_NOTSET: "OS template not specified, unable to create the container",
    VzExit.VZ_VE_NOT_RUNNING: "container not running",
    VzExit.VZ_VE_RUNNING: "container already running",
    VzExit.VZ_STOP_ERROR: "unable to stop the container",
    VzExit.VZ_CANT_ADDIP: "unable to add an IP address to the container",
    VzExit.VZ_VALIDATE_ERROR: "configuration validation error",
    VzExit.VZ_OVERCOMMIT_ERROR: "overcommit error",
    VzExit.VZ_FS_NOT_MOUNTED: "container not mounted",
    VzExit.VZ_FS_MOUNTED: "container already mounted",
    VzExit.VZ_FS_NOPRVT: "container private area not found",
    VzExit.VZ_FS_PRVT_AREA_EXIST: "container private area already exists",
    VzExit.VZ_FS_NO_DISK_SPACE: "not enough disk space",
    VzExit.VZ_FS_BAD_TMPL: "bad/broken container (/sbin/init or /bin/sh not found)",
    VzExit.VZ_FS_NEW_VE_PRVT: "unable to create a new container private area",
    VzExit.VZ_FS_MPOINTCREATE: "unable to create a new container root area",
    VzExit.VZ_FS_CANTMOUNT: "unable to mount the container",
    VzExit.VZ_FS_CANTUMOUNT: "unable to unmount the container",
    VzExit.VZ_FS_DEL_PRVT: "unable to delete the container",
    VzExit.VZ_UNK_MOUNT_TYPE: "container private area does not exist",
    VzExit.VZ_CANT_CREATE_DIR: "unable to create a directory",
    VzExit.VZ_NOTENOUGH_QUOTA_LIMITS: "not enough quota limits",
    VzExit.VZ_DQ_ON: "vzquota on failed",
    VzExit.VZ_DQ_INIT: "vzquota init failed",
    VzExit.VZ_DQ_SET: "vzquota setlimit failed",
    VzExit.VZ_DISKSPACE_NOT_SET: "parameter DISKSPACE not set",
    VzExit.VZ_DISKINODES_NOT_SET: "parameter DISKINODES not set",
    VzExit.VZ_ERROR_SET_USER_QUOTA: "error setting in-container disk quotas",
    VzExit.VZ_DQ_OFF: "vzquota off failed",
    VzExit.VZ_DQ_UGID_NOTINITIALIZED: "ugid quota not initialized",
    VzExit.VZ_GET_QUOTA_USAGE: "unable to get quota usage",
    VzExit.VZ_BADHOSTNAME: "incorrect hostname",
    VzExit.VZ_BADIP: "incorrect IP address format",
    VzExit.VZ_BADDNSSRV: "incorrect DNS server address",
    VzExit.VZ_BADDNSSEARCH: "incorrect DNS search domain",
    VzExit.VZ_CHANGEPASS: "error changing password",
    VzExit.VZ_VE_LCKDIR_NOTSET: "lock directory not set",
    VzExit.VZ_IP_INUSE: "IP address already in use",
    VzExit.VZ_ACTIONSCRIPT_ERROR: "container action script returned an error",
    VzExit.VZ_CP_CONFIG: "config file copying error",
    VzExit.VZ_INVALID_CONFIG: "invalid configuration",
    VzExit.VZ_SET_DEVICES: "error setting devices (--devices or --devnodes)",
    VzExit.VZ_INSTALL_APPS_ERROR: "error installing applications",
    VzExit.VZ_IP_NA: "IP address not available",
    VzExit.VZ_OSTEMPLATE_NOT_FOUND: "OS template not found",
    VzExit.VZ_PLOOP_UNSUP: "ploop not supported",
    VzExit.VZ_GET_IP_ERROR: "unable to find the container IP address",
    VzExit.VZ_NETDEV_ERROR: "VE_NETDEV ioctl error",
    VzExit.VZ_VE_START_DISABLED: "container start disabled",
    VzExit.VZ_SET_IPTABLES: "unable to set iptables on a running container",
    VzExit.VZ_NO_DISTR_CONF: "distribution-specific configuration file not found",
    VzExit.VZ_NO_DISTR_ACTION_SCRIPT: "distribution action script not found",
    VzExit.VZ_APPLY_CONFIG_ERROR: "unable to apply a config",
    VzExit.VZ_CUSTOM_REINSTALL_ERROR: "custom reinstall script error",
    VzExit.VZ_SET_MEMINFO_ERROR: "unable to set the meminfo parameter",
    VzExit.VZ_VETH_ERROR: "error setting a veth interface",
    VzExit.VZ_SET_NAME_ERROR: "error setting the container name",
    VzExit.VZ_WAIT_FAILED: "waiting for the container start failed",
    VzExit.VZ_CONFIG_SAVE_ERROR: "error saving the container configuration file",
    VzExit.VZ_SET_IO: "error setting container I/O parameters",
}


def lookup(code: int) -> VzExit | None:
    """The member for ``code``, or None for a code vzerror.h does not name (or a negative timeout marker)."""
    try:
        return VzExit(code)
    except ValueError:
        return None


def describe(code: int) -> str:
    """``"32 VZ_VE_RUNNING (container already running)"``; unknown codes are shown as plain numbers."""
    member = lookup(code)
    if member is None:
        return f"{code} (not a documented vzctl exit code)"
    return f"{code} {member.name} ({DESCRIPTIONS[member]})"
