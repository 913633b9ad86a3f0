"""OpenVZ for vpsadmind: an async driver over ``vzctl``/``vzlist`` with validated input, vzctl's exit codes as an
enum, typed errors, v2.0's tolerated codes and retries, and a conf file reader/writer (see docs/vz.md)::

    vz = Vz.from_config(config.vz)
    await vz.create(101, ostemplate="debian-8.0-x86_64", hostname="ct101", private="/vz/private/101/private")
    await vz.applyconfig(101, "basic", setmode=None)
    await vz.start(101, onboot=True)
    result = await vz.exec(101, ["cat", "/proc/meminfo"])
"""

from vpsadmind.vz import conf, listing, validate
from vpsadmind.vz.conf import ConfFile, backup, expand_veid, restore, split_list
from vpsadmind.vz.driver import ACTION_SCRIPTS, ExecResult, RetryPolicy, Status, Vz, shell_join
from vpsadmind.vz.errors import (
    ActionScriptFailed,
    ApplyConfigFailed,
    ConfFileError,
    ContainerExists,
    ContainerLocked,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerRunning,
    ExecFailed,
    InvalidValue,
    TemplateNotFound,
    VzctlFailed,
    VzError,
    VzTimeout,
)
from vpsadmind.vz.exitcodes import VzExit, describe
from vpsadmind.vz.listing import DEFAULT_FIELDS, StatusRow, pages_to_mib
from vpsadmind.vz.options import SET_OPTIONS, OptionValue, option_argv

__all__ = [
    "Vz", "Status", "RetryPolicy", "ExecResult", "ACTION_SCRIPTS", "shell_join",
    "ConfFile", "backup", "restore", "expand_veid", "split_list",
    "VzExit", "describe", "StatusRow", "DEFAULT_FIELDS", "pages_to_mib", "SET_OPTIONS", "OptionValue",
    "option_argv", "conf", "listing", "validate",
    # errors
    "VzError", "InvalidValue", "ConfFileError", "VzTimeout", "VzctlFailed", "ContainerNotFound",
    "ContainerRunning", "ContainerNotRunning", "ContainerExists", "ContainerLocked", "ActionScriptFailed",
    "ExecFailed", "TemplateNotFound", "ApplyConfigFailed",
]
