"""The control socket: v2.0's remote-control protocol (server, commands, clients); see docs/control.md."""

from vpsadmind.control.client import CommandError, ConnectError, ProtocolError, Reply, acall, arequest, call, request
from vpsadmind.control.commands import COMMANDS, CommandFailed, DaemonLike, command
from vpsadmind.control.protocol import ControlError
from vpsadmind.control.server import ControlServer

__all__ = [
    "COMMANDS",
    "CommandError",
    "CommandFailed",
    "ConnectError",
    "ControlError",
    "ControlServer",
    "DaemonLike",
    "ProtocolError",
    "Reply",
    "acall",
    "arequest",
    "call",
    "command",
    "request",
]
