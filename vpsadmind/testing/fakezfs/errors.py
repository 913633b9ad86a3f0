"""Errors of the fake ``zfs``/``zpool``: each carries the exact stderr text and exit code zfs-fuse 0.7.0 uses."""

from __future__ import annotations

__all__ = ["FakeZfsError", "UsageError", "CmdError", "Busy", "NoSpace", "NotFound", "cannot_open"]


class FakeZfsError(Exception):
    """Base: ``message`` goes to stderr (one or more lines, no trailing newline), the process exits ``rc``."""

    rc = 1

    def __init__(self, message: str, rc: int | None = None, *, stdout: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stdout = stdout
        if rc is not None:
            self.rc = rc


class CmdError(FakeZfsError):
    """An ordinary failure: rc 1."""


class UsageError(FakeZfsError):
    """Bad command line: an optional first line, then the command's usage text; rc 2.

    ``command`` is the subcommand whose usage is printed ("" = the top-level usage); ``program`` is zfs or zpool.
    The text is rendered by :func:`vpsadmind.testing.fakezfs.usage.render` in the dispatcher.
    """

    rc = 2

    def __init__(self, message: str, command: str, *, program: str = "zfs") -> None:
        super().__init__(message, 2)
        self.command = command
        self.program = program


class NotFound(CmdError):
    """A dataset that does not exist (the message is built by the caller)."""


class Busy(CmdError):
    """EBUSY: a held snapshot, a mounted filesystem that zfs-fuse cannot rename, an injected fault."""


class NoSpace(CmdError):
    """ENOSPC (only ever injected)."""


def cannot_open(name: str, reason: str = "dataset does not exist") -> NotFound:
    return NotFound(f"cannot open '{name}': {reason}")
