"""Which ``zfs`` the fake imitates: zfs-fuse 0.7.0 (the default) or OpenZFS 2.x (``FAKE_ZFS_DIALECT=openzfs``).

The OpenZFS dialect differs only where vpsadmind needs it to: the usage lines of ``send``/``receive`` (so that
:func:`vpsadmind.zfs.capabilities.probe` finds ``recv -s``), resumable receive (``recv -s``, ``send -t``,
``recv -A``, the ``receive_resume_token`` property) and OpenZFS's messages for truncated streams. Everything else
stays zfs-fuse's. The variable is read on every call (each zfs command is its own process).
"""

from __future__ import annotations

import os
from typing import Final

from vpsadmind.testing.fakezfs.errors import CmdError

__all__ = ["DIALECT_ENV", "ZFS_FUSE", "OPENZFS", "current", "openzfs", "check"]

DIALECT_ENV: Final = "FAKE_ZFS_DIALECT"
ZFS_FUSE: Final = "zfs-fuse"
OPENZFS: Final = "openzfs"


def current() -> str:
    """The dialect named by ``$FAKE_ZFS_DIALECT`` (unset or empty: zfs-fuse); an unknown name counts as zfs-fuse
    here, :func:`check` is what refuses it."""
    value = os.environ.get(DIALECT_ENV) or ZFS_FUSE
    return value if value in (ZFS_FUSE, OPENZFS) else ZFS_FUSE


def openzfs() -> bool:
    return current() == OPENZFS


def check() -> None:
    """Refuse a misspelt dialect before any command runs (silently acting as zfs-fuse would hide the typo)."""
    value = os.environ.get(DIALECT_ENV) or ZFS_FUSE
    if value not in (ZFS_FUSE, OPENZFS):
        raise CmdError(f"fake-zfs: {DIALECT_ENV} must be '{ZFS_FUSE}' or '{OPENZFS}', not '{value}'")
