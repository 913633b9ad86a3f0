"""Dataset and pool name checks with zfs's messages (``dataset_namecheck``/``pool_namecheck``)."""

from __future__ import annotations

__all__ = ["check_dataset", "check_pool", "split_snap", "parent_of", "pool_of", "is_descendant"]

_VALID = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.: ")
MAXNAMELEN = 256


def _component_error(name: str) -> str | None:
    for ch in name:
        if ch not in _VALID and ch not in "/@":
            return f"invalid character '{ch}' in name"
    return None


def check_dataset(name: str, *, snapshot: bool | None) -> str | None:
    """The reason ``name`` is invalid, or None. ``snapshot``: True = must be one, False = must not, None = any."""
    if len(name) >= MAXNAMELEN:
        return "name is too long"
    if name.startswith("/"):
        return "leading slash in name"
    bad = _component_error(name)
    if bad:
        return bad
    fs, at, snap = name.partition("@")
    if not fs or "//" in fs or (at and fs.endswith("/")):
        return "empty component in name"
    if fs.endswith("/"):
        return "trailing slash in name"
    if at:
        if snapshot is False:
            return "snapshot delimiter '@' in filesystem name"
        if "@" in snap:
            return "multiple '@' delimiters in name"
        if not snap:
            return "empty component in name"
        if "/" in snap:
            return "trailing slash in name"
    elif snapshot:
        return "missing '@' delimiter in snapshot name"
    return None


def check_pool(name: str) -> str | None:
    if "/" in name:
        return "invalid character '/' in pool name"
    bad = _component_error(name)
    if bad:
        return bad.replace(" in name", " in pool name")
    if "@" in name:
        return "invalid character '@' in pool name"
    if not name[:1].isalpha():
        return "name must begin with a letter"
    if name in ("mirror", "raidz", "spare", "log", "cache") or name.startswith(("mirror", "raidz", "spare")):
        return "name is reserved"
    return None


def split_snap(name: str) -> tuple[str, str]:
    fs, _, snap = name.partition("@")
    return fs, snap


def parent_of(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def pool_of(name: str) -> str:
    return name.split("/", 1)[0].split("@", 1)[0]


def is_descendant(name: str, ancestor: str) -> bool:
    """True when ``name`` is ``ancestor`` itself or lies below it (filesystems only)."""
    return name == ancestor or name.startswith(ancestor + "/")
