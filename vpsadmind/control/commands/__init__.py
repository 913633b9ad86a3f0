"""Remote commands of the control socket (contract 6.2), one module per group; the registry and the shared
helpers are in :mod:`vpsadmind.control.commands.base`, whose docstring says how a command is written.

Importing this package registers every command in :data:`COMMANDS`.
"""

from vpsadmind.control.commands import chain, configuration, lifecycle, mounts, network, status
from vpsadmind.control.commands.base import (
    COMMANDS,
    EXIT_NAMES,
    EXIT_RESTART,
    EXIT_STOP,
    EXIT_UPDATE,
    SECRET_KEYS,
    CommandFailed,
    CommandFn,
    DaemonLike,
    command,
    mask_secrets,
)
from vpsadmind.control.commands.chain import cmd_chain
from vpsadmind.control.commands.configuration import cmd_get, cmd_set
from vpsadmind.control.commands.lifecycle import (
    cmd_kill,
    cmd_pause,
    cmd_refresh,
    cmd_reload,
    cmd_restart,
    cmd_resume,
    cmd_stop,
    cmd_update,
)
from vpsadmind.control.commands.mounts import cmd_delayed_mount, cmd_mount_state
from vpsadmind.control.commands.network import cmd_flush, cmd_init, cmd_reinit
from vpsadmind.control.commands.status import cmd_ping, cmd_status

__all__ = [
    "COMMANDS",
    "CommandFailed",
    "CommandFn",
    "DaemonLike",
    "EXIT_NAMES",
    "EXIT_RESTART",
    "EXIT_STOP",
    "EXIT_UPDATE",
    "SECRET_KEYS",
    "chain",
    "cmd_chain",
    "cmd_delayed_mount",
    "cmd_flush",
    "cmd_get",
    "cmd_init",
    "cmd_kill",
    "cmd_mount_state",
    "cmd_pause",
    "cmd_ping",
    "cmd_refresh",
    "cmd_reinit",
    "cmd_reload",
    "cmd_restart",
    "cmd_resume",
    "cmd_set",
    "cmd_status",
    "cmd_stop",
    "cmd_update",
    "command",
    "configuration",
    "lifecycle",
    "mask_secrets",
    "mounts",
    "network",
    "status",
]
