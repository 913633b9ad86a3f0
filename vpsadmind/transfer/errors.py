"""The exception tree of transfers: one root, messages that say what failed, where and with which value."""

from __future__ import annotations

from vpsadmind.errors import AgentError

__all__ = ["TransferError", "AuthRejected", "StreamBroken", "Stalled", "RemoteFailed", "ProtocolError"]


class TransferError(AgentError):
    """Root of every transfer failure."""


class ProtocolError(TransferError):
    """The peer spoke something else than the transfer protocol (a bad greeting, a frame too long)."""


class AuthRejected(TransferError):
    """The receiver dropped the connection: the sender did not prove it knows the transfer's secret."""


class StreamBroken(TransferError):
    """The connection ended or failed in the middle of a stream; another attempt may succeed."""


class Stalled(TransferError):
    """No byte moved for ``transfer.stall_timeout`` seconds; the watchdog ended the stream."""


class RemoteFailed(TransferError):
    """The stream arrived but the receiving ``zfs recv`` failed; its message is the receiver's."""
