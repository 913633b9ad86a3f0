"""Validation of ZFS names, property names and values before any command runs.

The grammar is zfs's own (``zfs_namecheck.c``) made stricter where a name would be dangerous on a command
line or in a log:

* a component is ``[A-Za-z0-9_.:-]+``; ``/`` separates components, ``@`` starts a snapshot name and ``#`` a
  bookmark name (at most one of them, once);
* no empty component (``a//b``, a leading or trailing ``/``), no ``.`` or ``..`` component;
* nothing (neither the name nor a component) starts with ``-``, so no name can be read as an option
  (zfs-fuse itself accepts ``zfs create pool/-x``);
* no whitespace or control characters (zfs accepts spaces: ``zfs create 'pool/bad name'`` works), no ``%``
  (zfs reserves it for snapshot ranges), nothing outside ASCII;
* at most 255 characters (``ZFS_MAX_DATASET_NAME_LEN`` 256 with the NUL: zfs-fuse creates a 255-character
  name and refuses 256 with "name is too long");
* the first component of a full name is a pool name and starts with a letter.

Property names are native (``quota``, ``userquota@alice``) or user properties ``module:prop`` in lower case
(zfs-fuse refuses ``vpsadmin:UP``), at most 255 characters. Values have no control characters (no newline,
no NUL) and at most 8191 characters (zfs-fuse's CLI aborts with "Argument list too long" at 8192).

Every function returns its (valid) input, or raises :class:`vpsadmind.zfs.errors.InvalidName` naming the
value and the rule.
"""

from __future__ import annotations

import re
from typing import Final

from vpsadmind.zfs.errors import InvalidName

__all__ = [
    "MAX_NAME_LEN",
    "MAX_PROPERTY_LEN",
    "MAX_VALUE_LEN",
    "validate_component",
    "validate_relative",
    "validate_dataset",
    "validate_snapshot_name",
    "validate_snapshot",
    "validate_bookmark",
    "validate_name",
    "validate_property",
    "validate_value",
    "validate_tag",
    "join",
    "split_snapshot",
    "parent",
    "relative",
    "is_snapshot",
]

MAX_NAME_LEN: Final = 255
MAX_PROPERTY_LEN: Final = 255
MAX_VALUE_LEN: Final = 8191

_COMPONENT_CHARS: Final = re.compile(r"[A-Za-z0-9_.:-]+")
_BAD_CHAR: Final = re.compile(r"[^A-Za-z0-9_.:/@#-]")
_NATIVE_PROP: Final = re.compile(r"[a-z][a-z0-9_]*")
_QUOTA_PROP: Final = re.compile(r"(?:user|group)(?:used|quota)@[A-Za-z0-9_.][A-Za-z0-9_.@-]*")
_USER_PROP: Final = re.compile(r"[a-z0-9_.][a-z0-9_.-]*:[a-z0-9_.:-]+")
_ALLOWED: Final = "allowed: A-Z a-z 0-9 _ . : - with / between components"


def _fail(value: object, rule: str, kind: str) -> InvalidName:
    return InvalidName(value if isinstance(value, str) else repr(value), rule, kind=kind)


def _common(value: object, kind: str, limit: int = MAX_NAME_LEN) -> str:
    """Checks every name shares: a non-empty str, the length limit, no whitespace/control characters, no %."""
    if not isinstance(value, str):
        raise _fail(value, f"must be a string, not {type(value).__name__}", kind)
    if not value:
        raise _fail(value, "must not be empty", kind)
    if len(value) > limit:
        raise _fail(value, f"is {len(value)} characters long, at most {limit} are allowed", kind)
    for ch in value:
        if ch.isspace() or ord(ch) < 32 or ord(ch) == 127:
            raise _fail(value, f"contains whitespace or a control character ({ch!r})", kind)
    if "%" in value:
        raise _fail(value, "contains '%', which zfs reserves for snapshot ranges", kind)
    if value.startswith("-"):
        raise _fail(value, "must not start with '-' (it would be read as an option)", kind)
    return value


def _check_component(part: str, whole: str, kind: str) -> None:
    if not part:
        raise _fail(whole, "has an empty component (a leading, trailing or doubled '/')", kind)
    if part in (".", ".."):
        raise _fail(whole, f"has a '{part}' component", kind)
    if part.startswith("-"):
        raise _fail(whole, f"component {part!r} starts with '-'", kind)
    if not _COMPONENT_CHARS.fullmatch(part):
        bad = next(ch for ch in part if not _COMPONENT_CHARS.fullmatch(ch))
        raise _fail(whole, f"character {bad!r} is not allowed ({_ALLOWED})", kind)


def _check_path(path: str, whole: str, kind: str, *, pool: bool) -> None:
    if path.startswith("/"):
        raise _fail(whole, "must not start with '/' (names are relative to no root)", kind)
    bad = _BAD_CHAR.search(path)
    if bad is not None:
        raise _fail(whole, f"character {bad.group()!r} is not allowed ({_ALLOWED})", kind)
    parts = path.split("/")
    for part in parts:
        _check_component(part, whole, kind)
    if pool and not parts[0][0].isalpha():
        raise _fail(whole, f"pool name {parts[0]!r} must start with a letter", kind)


def validate_component(part: str, *, kind: str = "name component") -> str:
    """One component: ``[A-Za-z0-9_.:-]+``, not ``.``/``..``, not starting with ``-``."""
    _common(part, kind)
    if "/" in part:
        raise _fail(part, "must be a single component (no '/')", kind)
    _check_component(part, part, kind)
    return part


def validate_relative(name: str, *, kind: str = "relative dataset name") -> str:
    """A dataset path below some root, e.g. ``101/var/www`` (no pool rule, no ``@``)."""
    _common(name, kind)
    if "@" in name or "#" in name:
        raise _fail(name, "must be a dataset path, not a snapshot or bookmark", kind)
    _check_path(name, name, kind, pool=False)
    return name


def validate_dataset(name: str, *, kind: str = "dataset name") -> str:
    """A full filesystem/volume name ``pool[/component]*`` (no ``@``/``#``)."""
    _common(name, kind)
    if "@" in name or "#" in name:
        raise _fail(name, "must be a dataset, not a snapshot or bookmark", kind)
    _check_path(name, name, kind, pool=True)
    return name


def validate_snapshot_name(short: str, *, kind: str = "snapshot name") -> str:
    """The part after ``@``: one component (``2016-01-01T12:00:00``)."""
    _common(short, kind)
    if "/" in short or "@" in short or "#" in short:
        raise _fail(short, "must not contain '/', '@' or '#'", kind)
    _check_component(short, short, kind)
    return short


def _split_delimited(name: str, delim: str, kind: str) -> tuple[str, str]:
    _common(name, kind)
    if name.count("@") + name.count("#") != 1 or delim not in name:
        raise _fail(name, f"must contain exactly one '{delim}' and no other '@'/'#'", kind)
    dataset, short = name.split(delim, 1)
    _check_path(dataset, name, kind, pool=True)
    if not short:
        raise _fail(name, f"has nothing after '{delim}'", kind)
    if "/" in short:
        raise _fail(name, f"the part after '{delim}' must not contain '/'", kind)
    _check_component(short, name, kind)
    return dataset, short


def validate_snapshot(name: str, *, kind: str = "snapshot") -> str:
    """A full snapshot name ``pool/ds@snap``."""
    _split_delimited(name, "@", kind)
    return name


def validate_bookmark(name: str, *, kind: str = "bookmark") -> str:
    """A full bookmark name ``pool/ds#mark``."""
    _split_delimited(name, "#", kind)
    return name


def validate_name(name: str, *, snapshot: bool = True, bookmark: bool = False, kind: str = "name") -> str:
    """A full dataset name, or (when allowed) a snapshot or bookmark name."""
    _common(name, kind)
    if "@" in name and snapshot:
        return validate_snapshot(name, kind=kind)
    if "#" in name and bookmark:
        return validate_bookmark(name, kind=kind)
    if "@" in name or "#" in name:
        allowed = [w for w, ok in (("a snapshot", snapshot), ("a bookmark", bookmark)) if ok]
        what = " or ".join(["a dataset", *allowed])
        raise _fail(name, f"must be {what}", kind)
    return validate_dataset(name, kind=kind)


def validate_property(name: str, *, kind: str = "property name") -> str:
    """A native property (``quota``, ``userquota@alice``) or a user property ``module:prop`` (lower case)."""
    _common(name, kind, MAX_PROPERTY_LEN)
    if ":" in name and "@" not in name:
        if not _USER_PROP.fullmatch(name):
            raise _fail(name, "a user property is 'module:prop' of a-z 0-9 _ . : - (lower case only)", kind)
        return name
    if _NATIVE_PROP.fullmatch(name) or _QUOTA_PROP.fullmatch(name):
        return name
    raise _fail(name, "a native property is a-z 0-9 _ starting with a letter; a user property needs a ':'",
                kind)


def validate_value(value: str, *, prop: str | None = None) -> str:
    """A property value: a str of at most 8191 characters without control characters (newline, NUL, tab)."""
    kind = f"value of {prop}" if prop else "property value"
    if not isinstance(value, str):
        raise _fail(value, f"must be a string, not {type(value).__name__}", kind)
    if len(value) > MAX_VALUE_LEN:
        raise _fail(value, f"is {len(value)} characters long, at most {MAX_VALUE_LEN} are allowed", kind)
    for ch in value:
        if ord(ch) < 32 or ord(ch) == 127:
            raise _fail(value, f"contains a control character ({ch!r})", kind)
    return value


def validate_tag(tag: str, *, kind: str = "hold tag") -> str:
    """A hold tag: one component (``vpsadmin``, ``vpsadmin:send``)."""
    return validate_component(tag, kind=kind)


def join(*parts: str) -> str:
    """Parts joined by ``/``; each part is one or more valid components, the result at most 255 characters.

    ``join("vz/private", "101", "var/www") == "vz/private/101/var/www"``. The first part may be a pool name,
    no part may be a snapshot.
    """
    if not parts:
        raise _fail("", "join() needs at least one part", "dataset name")
    for part in parts:
        validate_relative(part, kind="name part")
    joined = "/".join(parts)
    if len(joined) > MAX_NAME_LEN:
        raise _fail(joined, f"is {len(joined)} characters long, at most {MAX_NAME_LEN} are allowed",
                    "dataset name")
    return joined


def split_snapshot(name: str) -> tuple[str, str]:
    """``("pool/ds", "snap")`` for a valid ``pool/ds@snap``."""
    return _split_delimited(name, "@", "snapshot")


def is_snapshot(name: str) -> bool:
    return "@" in name


def parent(name: str) -> str | None:
    """The parent dataset of a dataset (``None`` for a pool), or the dataset of a snapshot."""
    if "@" in name:
        return name.split("@", 1)[0]
    head, sep, _ = name.rpartition("/")
    return head if sep else None


def relative(name: str, base: str) -> str | None:
    """``name`` relative to ``base`` (``relative("vz/private/101/a", "vz/private") == "101/a"``).

    ``""`` for ``base`` itself, ``None`` when ``name`` is not ``base`` or below it (``vz/privateX`` is not).
    """
    if name == base:
        return ""
    if name.startswith(base + "/"):
        return name[len(base) + 1:]
    return None
