"""vzctl's handling of ``<veid>.conf``: parsing (first assignment wins, unknown lines ignored) and
``vps_save_config`` (replace the first line of each changed key in place, append new keys, write ``<file>.tmp``
and rename; nothing is written when nothing changed)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["decode", "read", "read_lines", "save"]

_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def decode(raw: str) -> str:
    raw = raw.strip()
    if raw[:1] in ('"', "'"):
        end = raw.find(raw[0], 1)
        return raw[1:end] if end > 0 else raw[1:]
    return raw.split("#", 1)[0].strip()


def _key(line: str) -> tuple[str, str] | None:
    if line.lstrip().startswith("#"):
        return None
    m = _ASSIGN.match(line)
    return (m[1], decode(m[2])) if m else None


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []


def read(path: Path) -> dict[str, str]:
    """Every key with its first value; a missing file reads as empty."""
    values: dict[str, str] = {}
    for line in read_lines(path):
        kv = _key(line)
        if kv is not None:
            values.setdefault(kv[0], kv[1])
    return values


def save(path: Path, changes: Mapping[str, str]) -> bool:
    """Write ``changes`` (key -> value) the way vzctl does; False (and no write) if the file would not change."""
    old = read_lines(path)
    new = list(old)
    pending = dict(changes)
    for index, line in enumerate(new):
        kv = _key(line)
        if kv is not None and kv[0] in pending:
            new[index] = f'{kv[0]}="{pending.pop(kv[0])}"'
    new += [f'{key}="{value}"' for key, value in pending.items()]
    if new == old:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in new), encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True
