"""Reading and writing ``/etc/vz/conf/<veid>.conf`` (and ``ve-<name>.conf-sample``) the way vzctl does.

The format (``ctid.conf(5)``): one ``NAME="value"`` per line; comments, blank lines and anything vzctl does not
know are ignored by vzctl and **kept** here, byte for byte. Changing a key replaces the first line that assigns it
in place and appends new keys at the end, as vzctl's ``vps_save_config`` does; later duplicate assignments of a
changed key are dropped, so that vzctl (which reads the first) and a shell sourcing the file (which reads the
last) agree. Values are written between double quotes and must pass :func:`vpsadmind.vz.validate.conf_value`.

Saving is atomic (a temporary file in the same directory, fsync, rename) and keeps the file's mode. :func:`backup`
and :func:`restore` are v2.0's ``cp -p <veid>.conf <veid>.conf.backup`` and its rollback (transaction 2008).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from vpsadmind.vz import validate
from vpsadmind.vz.errors import ConfFileError

__all__ = ["ConfFile", "expand_veid", "split_list", "backup", "restore", "atomic_write"]

_ASSIGN: Final = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_MAX_SIZE: Final = 4 * 1024 * 1024


def _decode(raw: str) -> str:
    """The value of the text after ``=``: up to the closing quote when quoted, else up to a ``#`` or the end."""
    raw = raw.strip()
    if raw[:1] in ('"', "'"):
        end = raw.find(raw[0], 1)
        return raw[1:end] if end > 0 else raw[1:]
    return raw.split("#", 1)[0].strip()


def expand_veid(value: str, veid: int) -> str:
    """``/vz/root/$VEID`` -> ``/vz/root/101`` (vzctl substitutes ``$VEID`` and ``${VEID}`` in paths)."""
    return value.replace("${VEID}", str(veid)).replace("$VEID", str(veid))


def split_list(value: str | None) -> list[str]:
    """Words of a space-separated value (``IP_ADDRESS``, ``NAMESERVER``, ``FEATURES``, ``DEVICES``...)."""
    return value.split() if value else []


class ConfFile:
    """An ordered list of lines with key lookup; unknown lines and comments survive a round trip unchanged."""

    def __init__(self, lines: Sequence[str] = (), *, path: str | os.PathLike[str] | None = None,
                 trailing_newline: bool = True) -> None:
        self.lines: list[str] = list(lines)
        self.path = Path(path) if path is not None else None
        self.trailing_newline = trailing_newline

    # -- construction ----------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, path: str | os.PathLike[str] | None = None) -> ConfFile:
        if "\x00" in text:
            raise ConfFileError("contains a NUL byte", path=str(path) if path else None)
        return cls(text.splitlines(), path=path, trailing_newline=text.endswith("\n") or not text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConfFile:
        """Read a conf file; ConfFileError if it cannot be read or is not text."""
        try:
            with open(path, "rb") as fh:
                data = fh.read(_MAX_SIZE + 1)
        except OSError as exc:
            raise ConfFileError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
        if len(data) > _MAX_SIZE:
            raise ConfFileError(f"larger than {_MAX_SIZE} bytes", path=str(path))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfFileError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=str(path)) from exc
        return cls.parse(text, path=path)

    # -- reading -----------------------------------------------------------------------------------------------

    def _assignments(self) -> Iterator[tuple[int, str, str]]:
        for index, line in enumerate(self.lines):
            m = _ASSIGN.match(line)
            if m and not line.lstrip().startswith("#"):
                yield index, m[1], _decode(m[2])

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of the first assignment of ``key`` (vzctl ignores later ones), or ``default``."""
        for _, name, value in self._assignments():
            if name == key:
                return value
        return default

    def get_list(self, key: str) -> list[str]:
        return split_list(self.get(key))

    def __contains__(self, key: object) -> bool:
        return any(name == key for _, name, _ in self._assignments())

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for _, name, _ in self._assignments():
            seen.setdefault(name, None)
        return list(seen)

    def as_dict(self) -> dict[str, str]:
        """Every key with the value vzctl would use (the first assignment)."""
        result: dict[str, str] = {}
        for _, name, value in self._assignments():
            result.setdefault(name, value)
        return result

    # -- changing ------------------------------------------------------------------------------------------------

    def set(self, key: str, value: str | int | Sequence[str]) -> None:
        """Assign ``key``: replace its first line in place (dropping later duplicates) or append a line. A list is
        written space-separated. The value is validated (no quotes, ``$``, backslashes or control characters;
        ``$VEID`` is allowed in ``VE_ROOT``/``VE_PRIVATE``)."""
        validate.conf_key(key)
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        elif isinstance(value, str):
            text = value
        elif isinstance(value, (list, tuple)):
            text = " ".join(str(item) for item in value)
        else:
            raise ConfFileError(f"{key}: unsupported value type {type(value).__name__}")
        if key in ("VE_ROOT", "VE_PRIVATE") and text:
            validate.path(text, key, allow_veid=True)
        else:
            validate.conf_value(text, key)
        line = f'{key}="{text}"'
        positions = [index for index, name, _ in self._assignments() if name == key]
        if not positions:
            self.lines.append(line)
            return
        self.lines[positions[0]] = line
        for index in reversed(positions[1:]):
            del self.lines[index]

    def remove(self, key: str) -> bool:
        """Delete every assignment of ``key``; True if there was one."""
        positions = [index for index, name, _ in self._assignments() if name == key]
        for index in reversed(positions):
            del self.lines[index]
        return bool(positions)

    # -- writing -------------------------------------------------------------------------------------------------

    def render(self) -> str:
        text = "\n".join(self.lines)
        return text + "\n" if self.lines and self.trailing_newline else text

    def save(self, path: str | os.PathLike[str] | None = None, *, mode: int = 0o644) -> Path:
        """Write atomically to ``path`` (default: where it was loaded from); an existing file keeps its mode."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfFileError("no path to save to")
        atomic_write(target, self.render(), mode=mode)
        self.path = target
        return target


def atomic_write(path: str | os.PathLike[str], text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` through a fsynced temporary file and rename; keeps an existing file's mode."""
    target = Path(path)
    with contextlib.suppress(FileNotFoundError):
        mode = target.stat().st_mode & 0o7777
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise ConfFileError(f"cannot write: {exc.strerror or exc}", path=str(target)) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfFileError(f"cannot write: {exc.strerror or exc}", path=str(target)) from exc


def backup(path: str | os.PathLike[str], suffix: str = ".backup") -> Path:
    """``cp -p <path> <path><suffix>`` (contents, mode and times), atomically; returns the backup's path."""
    source = Path(path)
    target = source.with_name(source.name + suffix)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfFileError(f"cannot back up: {exc.strerror or exc}", path=str(source)) from exc
    return target


def restore(path: str | os.PathLike[str], suffix: str = ".backup") -> bool:
    """Put ``<path><suffix>`` back over ``path`` (a rename, so the backup is consumed); False if there is none."""
    source = Path(path)
    saved = source.with_name(source.name + suffix)
    try:
        os.replace(saved, source)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfFileError(f"cannot restore {saved.name}: {exc.strerror or exc}", path=str(source)) from exc
    return True
