"""What every storage handler shares: the ZFS driver, name checks and paths, property values, snapshot names.

- :func:`zfs_driver` is the one way a handler gets a :class:`~vpsadmind.zfs.driver.Zfs`: one probed instance
  per handler context and configuration, built from ``bin.zfs`` / ``bin.zpool``.
- ``check_*`` validate names from ``t_param`` with :mod:`vpsadmind.zfs.names` and raise
  :class:`~vpsadmind.errors.ParamError` naming the field; params dataclasses call them in ``__post_init__``,
  so a hostile name fails the transaction before its handler exists, let alone runs a command.
- :func:`zfs_value` is v2.0's ``translate_property`` (contract 7.7): true -> on, false -> off, null -> none,
  quota/refquota N MiB -> ``NM`` with 0 -> none.
- :func:`snapshot_name` is the UTC ``YYYY-MM-DDTHH:MM:SS`` snapshot name (UTC since vpsAdmin 2.1; 2.0 used
  the node's local time, which made names jump at DST changes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from vpsadmind.errors import HandlerError, ParamError
from vpsadmind.zfs import names as zfs_names
from vpsadmind.zfs.driver import Prop, Zfs
from vpsadmind.zfs.errors import DatasetExists, InvalidName, ZfsError

if TYPE_CHECKING:
    from vpsadmind.handlers.base import HandlerContext

__all__ = [
    "SIZE_MIB_PROPS",
    "SnapshotRef",
    "TRANSACTION_PROP",
    "check_component",
    "check_dataset",
    "check_prop_name",
    "check_relative",
    "check_snapshot",
    "dataset_path",
    "ensure_clone",
    "fail",
    "inheritable",
    "is_local",
    "json_output",
    "mount_clone_path",
    "parse_snapshot_time",
    "props_equal",
    "read_props",
    "snapshot_name",
    "tagged_snapshots",
    "valid_snapshot",
    "zfs_driver",
    "zfs_value",
]

#: Properties v2.0 passes in MiB (contract 7.7).
SIZE_MIB_PROPS: Final = frozenset({"quota", "refquota"})
#: User property tagging a snapshot with the ``t_id`` that made it, so that a re-run after a crash finds it.
TRANSACTION_PROP: Final = "org.vpsadmin:transaction"

_SNAPSHOT_FORMAT: Final = "%Y-%m-%dT%H:%M:%S"


# ------------------------------------------------------------------------------------------------------------
# The driver


@dataclass(slots=True)
class _Cached:
    config: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    zfs: Zfs | None = None


_DRIVERS: weakref.WeakKeyDictionary[HandlerContext, _Cached] = weakref.WeakKeyDictionary()


async def zfs_driver(ctx: HandlerContext) -> Zfs:
    """The context's ZFS driver: built from ``ctx.config.bin`` and probed once, then cached on the context.

    A new configuration object (a reload) gets a new driver, so changed ``bin`` paths take effect."""
    entry = _DRIVERS.get(ctx)
    if entry is None or entry.config is not ctx.config:
        entry = _Cached(ctx.config)
        _DRIVERS[ctx] = entry
    if entry.zfs is not None:
        return entry.zfs
    async with entry.lock:
        if entry.zfs is None:
            bins = ctx.config.bin
            driver = Zfs(zfs=bins.get("zfs", "zfs"), zpool=bins.get("zpool", "zpool"))
            driver.caps = await driver.probe()
            entry.zfs = driver
    return entry.zfs


# ------------------------------------------------------------------------------------------------------------
# Names


def _invalid(field_name: str, exc: InvalidName) -> ParamError:
    return ParamError(f"invalid {exc.kind} {_shown(exc.value)}: {exc.rule}", field=field_name)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def check_dataset(field_name: str, value: object) -> str:
    """``value`` as a full dataset name (``vz/private/101``), or ParamError naming ``field_name``."""
    try:
        return zfs_names.validate_dataset(value)  # type: ignore[arg-type]  # it checks the type too
    except InvalidName as exc:
        raise _invalid(field_name, exc) from None


def check_relative(field_name: str, value: object) -> str:
    """A dataset path relative to a pool (``101/var/www``): components only, no leading or trailing slash."""
    try:
        return zfs_names.validate_relative(value)  # type: ignore[arg-type]
    except InvalidName as exc:
        raise _invalid(field_name, exc) from None


def check_component(field_name: str, value: object) -> str:
    """One path component (a tree ``tree.0``, a branch ``branch-2015-01-01T00:00:00.0``)."""
    try:
        return zfs_names.validate_component(value)  # type: ignore[arg-type]
    except InvalidName as exc:
        raise _invalid(field_name, exc) from None


def check_snapshot(field_name: str, value: object) -> str:
    """A snapshot's short name (after ``@``)."""
    try:
        return zfs_names.validate_snapshot_name(value)  # type: ignore[arg-type]
    except InvalidName as exc:
        raise _invalid(field_name, exc) from None


def valid_snapshot(value: object) -> bool:
    try:
        zfs_names.validate_snapshot_name(value)  # type: ignore[arg-type]
    except InvalidName:
        return False
    return True


def check_prop_name(field_name: str, value: str) -> str:
    """A native (``quota``) or user (``org.vpsadmin:x``) property name."""
    try:
        return zfs_names.validate_property(value)
    except InvalidName as exc:
        raise _invalid(field_name, exc) from None


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """A snapshot in ``t_param``: ``{id, name, confirmed}``."""

    id: int
    name: str | None = None
    confirmed: int | str | bool | None = None

    def known_name(self) -> str | None:
        """v2.0: the name in params counts only when ``confirmed == 1``; the API sends the enum's symbol name
        (``"confirmed"``) instead, so in practice the name comes from ``snapshots.name``."""
        return self.name if type(self.confirmed) is int and self.confirmed == 1 else None


def dataset_path(pool_fs: str, dataset: str, tree: str | None = None, branch: str | None = None, *,
                 field_name: str = "dataset_name") -> str:
    """``<pool_fs>/<dataset>[/<tree>/<branch>]``, validated as a whole (length limits apply to the sum)."""
    parts = [pool_fs, dataset]
    if branch is not None:
        if tree is None:
            raise ParamError("a branch needs its tree", field="tree")
        parts += [tree, branch]
    return check_dataset(field_name, "/".join(parts))


def mount_clone_path(pool_fs: str, snapshot_id: int) -> str:
    """``<pool_fs>/vpsadmin/mount/<snapshot_id>.snapshot``, where snapshot clones are mounted from."""
    return check_dataset("snapshot_id", f"{pool_fs}/vpsadmin/mount/{snapshot_id}.snapshot")


# ------------------------------------------------------------------------------------------------------------
# Property values


def zfs_value(prop: str, value: Any, *, field_name: str = "properties") -> str:
    """v2.0's ``translate_property``: the ``zfs set`` text for an API value (contract 7.7)."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    if value is None:
        return "none"
    if prop in SIZE_MIB_PROPS and isinstance(value, int | str) and str(value).isdigit():
        return "none" if int(value) == 0 else f"{int(value)}M"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        try:
            return zfs_names.validate_value(value, prop=prop)
        except InvalidName as exc:
            raise _invalid(f"{field_name}.{prop}", exc) from None
    raise ParamError(f"invalid value for {prop}: {type(value).__name__}", field=f"{field_name}.{prop}")


_SIZE_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)([KMGTPE]?)B?$", re.IGNORECASE)
_UNITS: Final = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def _as_bytes(text: str) -> int | None:
    if text == "none":
        return 0
    m = _SIZE_RE.match(text)
    if m is None:
        return None
    return int(float(m.group(1)) * 1024 ** _UNITS[m.group(2).upper()])


def props_equal(prop: str, wanted: str, actual: str) -> bool:
    """Whether ``zfs get -p`` text ``actual`` is what ``zfs set prop=wanted`` produces (sizes compared as bytes)."""
    if wanted == actual:
        return True
    a, b = _as_bytes(wanted), _as_bytes(actual)
    return a is not None and a == b


def is_local(prop: Prop | None) -> bool:
    return prop is not None and prop.source == "local"


_NOT_INHERITABLE: Final = frozenset({"quota", "refquota", "reservation", "refreservation", "canmount", "volsize",
                                     "version"})


def inheritable(prop: str) -> bool:
    """Whether ``zfs inherit prop`` is allowed (it refuses quota, canmount and the other per-dataset ones)."""
    return prop not in _NOT_INHERITABLE and "@" not in prop


# ------------------------------------------------------------------------------------------------------------
# Snapshots and outputs


def snapshot_name(now: dt.datetime | None = None) -> tuple[str, dt.datetime]:
    """A new snapshot's name (UTC ``YYYY-MM-DDTHH:MM:SS``) and its time as a naive UTC datetime."""
    when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
    return when.strftime(_SNAPSHOT_FORMAT), when


def parse_snapshot_time(name: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(name, _SNAPSHOT_FORMAT)
    except ValueError:
        return None


def json_output(raw: str | None) -> dict[str, Any]:
    """A transaction's saved ``t_output`` as a dict (``{}`` when empty or not JSON)."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def fail(message: str, **output: Any) -> HandlerError:
    return HandlerError(message, output=output)


async def tagged_snapshots(zfs: Zfs, datasets: Sequence[str], t_id: int) -> dict[str, str]:
    """For each dataset, the short name of its snapshot that transaction ``t_id`` made (tagged with
    ``TRANSACTION_PROP``), if any. Snapshots inherit user properties, so only a local value counts."""
    found: dict[str, str] = {}
    for ds in datasets:
        if not await zfs.exists(ds):
            continue
        snaps = await zfs.snapshots(ds)
        if not snaps:
            continue
        props = await zfs.get([s.name for s in snaps], [TRANSACTION_PROP])
        for s in snaps:
            p = props.get(s.name, {}).get(TRANSACTION_PROP)
            if p is not None and p.source == "local" and p.value == str(t_id):
                found[ds] = s.short
    return found


async def read_props(zfs: Zfs, name: str, props: Sequence[str]) -> dict[str, Prop]:
    """``props`` of ``name`` that this zfs knows; one ``zfs get``, or a ``get all`` when some property is
    unknown to the installed zfs (zfs-fuse has no ``sync`` or ``relatime``)."""
    try:
        return dict((await zfs.get(name, list(props))).get(name, {}))
    except ZfsError:
        everything = (await zfs.get(name, ["all"])).get(name, {})
    return {p: everything[p] for p in props if p in everything}


async def ensure_clone(zfs: Zfs, snapshot: str, target: str,
                       properties: Mapping[str, str] | None = None) -> bool:
    """``zfs clone snapshot target``; an existing ``target`` cloned from the same snapshot is accepted (a
    re-run). Returns whether this call made the clone."""
    try:
        await zfs.clone(snapshot, target, properties=properties)
    except DatasetExists:
        origin = (await read_props(zfs, target, ["origin"])).get("origin")
        if origin is None or origin.value != snapshot:
            raise fail(f"{target} already exists and is not a clone of {snapshot} (origin "
                       f"{origin.value if origin else '?'})", dataset=target) from None
        return False
    return True
