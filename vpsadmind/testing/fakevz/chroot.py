"""Path resolution as a process chrooted into the container root would see it.

The fake runs "inside" a container without chroot, so every path it touches for the container (commands run by
``exec``, the hostname and resolv.conf it writes at start) goes through :func:`resolve`: ``..`` stops at the
root, and symlinks (absolute ones included) are followed relative to the root. A container's own files are
hostile: ``/etc -> /etc`` inside it must not reach the host's ``/etc``.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ChrootError", "Resolved", "resolve"]

_MAX_LINKS = 40


class ChrootError(Exception):
    """Resolution failed; the message is the strerror text (``Too many levels of symbolic links``)."""


@dataclass(frozen=True, slots=True)
class Resolved:
    host: Path          # where the file is on the host
    path: str           # the canonical path inside the container ("/etc/hostname")


def resolve(root: Path, path: str, *, follow_last: bool = True, cwd: str = "/") -> Resolved:
    """Resolve ``path`` (absolute, or relative to ``cwd``) inside ``root``; a missing component is fine (the
    result then names something that does not exist yet)."""
    base = root.resolve()
    text = path if path.startswith("/") else f"{cwd.rstrip('/')}/{path}"
    parts = deque(p for p in text.split("/") if p)
    stack: list[str] = []
    hops = 0
    while parts:
        comp = parts.popleft()
        if comp == ".":
            continue
        if comp == "..":
            if stack:
                stack.pop()
            continue
        current = base.joinpath(*stack, comp)
        if current.is_symlink() and (follow_last or parts):
            hops += 1
            if hops > _MAX_LINKS:
                raise ChrootError("Too many levels of symbolic links")
            target = os.readlink(current)
            if target.startswith("/"):
                stack = []
            parts.extendleft(reversed([p for p in target.split("/") if p]))
            continue
        if parts and current.exists() and not current.is_dir():
            raise ChrootError("Not a directory")
        stack.append(comp)
    return Resolved(base.joinpath(*stack), "/" + "/".join(stack))
