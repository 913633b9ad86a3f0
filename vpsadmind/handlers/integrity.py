"""Integrity checks of v2.0 (contract 5.5, 8): 6005 IntegrityCheck::Storage, 6006 IntegrityCheck::Vps and
6001 IntegrityCheck::Finalize. What is compared and why it differs from v2.0 is in docs/integrity.md.

The API pre-registers an ``integrity_objects`` row for every expected object and passes the tree of them in
``t_param``; every item carries its ``integrity_object_id`` and ``ancestry``. 6005 and 6006 compare the node's
real state with that tree and record one ``integrity_facts`` row per comparison, plus new objects for what
exists but should not ("strays"). 6001 counts facts into the objects and objects into the check.

How a run survives a crash: 6005/6006 only read the node in ``exec``; the facts travel in ``Outcome.data``
and are written by ``post_save``, inside the DB transaction that saves the result (and from the journal
after a database outage). A re-run therefore never finds facts of an earlier run, and for good measure the
write first deletes what its module wrote for the check on this node, so it replaces instead of appending.
6001 recomputes everything from the facts, so running it twice is harmless.
Rollback has nothing to undo: the node is never changed, and the facts are a record of what was seen.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ipaddress
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import yaml

from vpsadmind.engine.model import Result, TSuccess
from vpsadmind.errors import ParamError
from vpsadmind.handlers import storage_common as sc
from vpsadmind.handlers.base import Handler, Outcome, handler
from vpsadmind.handlers.params import parse_params
from vpsadmind.vz import InvalidValue, Vz, VzError, expand_veid, pages_to_mib
from vpsadmind.vz import validate as vz_validate
from vpsadmind.zfs import names as zfs_names
from vpsadmind.zfs.driver import Prop, Zfs
from vpsadmind.zfs.errors import DatasetNotFound, InvalidProperty, ZfsError

if TYPE_CHECKING:
    from vpsadmind.db import Tx

__all__ = [
    "FinalizeCheck", "FinalizeParams", "StorageCheck", "StorageParams", "VpsCheck", "VpsParams", "finalize_check",
    "ruby_yaml", "STORAGE_CLASSES", "STORAGE_STRAY_CLASSES", "VPS_CLASSES", "VPS_STRAY_CLASSES", "VZLIST_FIELDS",
    "ZFS_PROPERTIES",
]

LOW, NORMAL, HIGH = 0, 1, 2  # integrity_facts.severity

#: Classes of the objects of each module (as the API registers them), and of those it creates itself for what
#: should not exist. The modules' classes are disjoint, and a check has one transaction per module and node:
#: that is what lets a re-run find (and replace) what its own module wrote.
STORAGE_CLASSES: Final = ("Pool", "DatasetProperty", "SnapshotDownload", "SnapshotInPool", "DatasetInPool",
                          "DatasetTree", "Branch", "SnapshotInPoolInBranch")
STORAGE_STRAY_CLASSES: Final = ("DatasetInPool", "SnapshotInPool", "SnapshotDownload", "Branch")
VPS_CLASSES: Final = ("Vps", "IpAddress")
VPS_STRAY_CLASSES: Final = VPS_CLASSES

#: What v2.0's storage module read of every object (names of expected properties are added to these).
ZFS_PROPERTIES: Final = ("type", "mounted", "mountpoint", "origin", "clones", "quota", "refquota", "compression",
                         "recordsize", "sync", "atime", "relatime", "sharenfs")
#: Registered as dataset properties by the API but reported by the node, never configured: nothing to expect.
_REPORTED: Final = frozenset({"used", "referenced", "avail", "available"})
_SPECIAL: Final = ("vpsadmin", "vpsadmin/download", "vpsadmin/mount")
_MIB: Final = 1024 * 1024

VZLIST_FIELDS: Final = ("veid", "status", "onboot", "private", "root", "hostname", "ostemplate", "physpages",
                        "swappages", "cpus", "cpulimit", "ip")

_ANCESTRY: Final = re.compile(r"[1-9][0-9]{0,10}(?:/[1-9][0-9]{0,10})*")
_SECRET_KEY: Final = re.compile(r"[A-Za-z0-9]{1,255}")
_FILE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+@-]{0,254}")
_INVALID_PROP: Final = re.compile(r"invalid property '([^']+)'")
_BRANCH_ORIGIN: Final = r"/tree\.\d+/branch-[^/@]+@"
# Column sizes of integrity_facts (strict SQL mode refuses longer values, which would lose the whole save).
_VALUE_LEN: Final = 255
_MESSAGE_LEN: Final = 1000
_ROWS_PER_INSERT: Final = 1000


# ------------------------------------------------------------------------------------------------------------
# Params: the trees of Transactions::IntegrityCheck::Storage/Vps. Items are validated by the top-level params
# (their ``__post_init__`` knows the full path of every field, e.g. ``pools[0].datasets[2].snapshots[1].name``).


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegrityObject:
    """What ``serialize_query`` adds to every item: its pre-registered object and that object's ancestry."""

    integrity_object_id: int
    ancestry: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PropertyItem(IntegrityObject):
    name: str
    value: Any = None
    inherited: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadItem(IntegrityObject):
    secret_key: str
    file_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MountCloneItem(IntegrityObject):
    id: int
    dataset: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotItem(IntegrityObject):
    name: str
    reference_count: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class CloneItem(IntegrityObject):
    dataset: str
    tree: str
    branch: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchSnapshotItem(IntegrityObject):
    """``origin`` and ``reference_count`` are sent too, and ignored as in v2.0 (unknown keys are dropped)."""

    name: str
    clones: list[CloneItem] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class BranchItem(IntegrityObject):
    name: str
    snapshots: list[BranchSnapshotItem] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeItem(IntegrityObject):
    name: str
    branches: list[BranchItem] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetItem(IntegrityObject):
    """``datasets`` (the children, nested to any depth) come as plain objects and are parsed into DatasetItem
    by StorageParams' checks: a recursive field type would send type-driven walkers (the params fuzzer's
    generators) into endless recursion."""

    name: str
    properties: list[PropertyItem] = field(default_factory=list)
    snapshots: list[SnapshotItem] = field(default_factory=list)
    trees: list[TreeItem] = field(default_factory=list)
    datasets: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolItem(IntegrityObject):
    filesystem: str
    properties: list[PropertyItem] = field(default_factory=list)
    downloads: list[DownloadItem] = field(default_factory=list)
    mount_clones: list[MountCloneItem] = field(default_factory=list)
    datasets: list[DatasetItem] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class IpItem(IntegrityObject):
    addr: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VpsItem(IntegrityObject):
    vps_id: int
    status: bool = False
    hostname: str | None = None
    os_template: str | None = None
    memory: int | None = None
    swap: int | None = None
    cpu: int | None = None
    ip_addresses: list[IpItem] = field(default_factory=list)


def _check_id(path: str, value: int, minimum: int = 1) -> None:
    """An id or count: at least ``minimum`` and within the DB's INT(11)."""
    if not minimum <= value < 2**31:
        raise ParamError(f"must be between {minimum} and {2**31 - 1}, got {str(value)[:20]}", field=path)


def _check_object(path: str, item: IntegrityObject) -> None:
    _check_id(f"{path}.integrity_object_id", item.integrity_object_id)
    if item.ancestry is not None and (len(item.ancestry) > 255 or not _ANCESTRY.fullmatch(item.ancestry)):
        raise ParamError(f"expected object ids separated by '/', got {item.ancestry[:80]!r}", field=f"{path}.ancestry")


def _check_text(path: str, value: str | None, pattern: re.Pattern[str] | None = None) -> None:
    """A value compared and written to the DB only: no control characters, at most 255 characters."""
    if value is not None and (len(value) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in value)
                              or (pattern is not None and not pattern.fullmatch(value)) or value in (".", "..")):
        raise ParamError(f"invalid value {value[:80]!r}", field=path)


def _check_properties(path: str, items: Sequence[PropertyItem]) -> None:
    for i, p in enumerate(items):
        at = f"{path}[{i}]"
        _check_object(at, p)
        sc.check_prop_name(f"{at}.name", p.name)
        v = p.value
        if not (v is None or isinstance(v, bool | int | float) or isinstance(v, str) and len(v) < 8192 and (
                v.isprintable())):
            raise ParamError(f"expected a printable property value, got {str(v)[:80]!r}", field=f"{at}.value")


def _check_branch(path: str, fs: str, ds: str, tree: str, b: BranchItem) -> None:
    _check_object(path, b)
    sc.check_component(f"{path}.name", b.name)
    sc.dataset_path(fs, ds, tree, b.name, field_name=f"{path}.name")
    for i, s in enumerate(b.snapshots):
        at = f"{path}.snapshots[{i}]"
        _check_object(at, s)
        sc.check_snapshot(f"{at}.name", s.name)
        for j, c in enumerate(s.clones):
            cat = f"{at}.clones[{j}]"
            _check_object(cat, c)
            sc.check_relative(f"{cat}.dataset", c.dataset)
            sc.check_component(f"{cat}.tree", c.tree)
            sc.check_component(f"{cat}.branch", c.branch)
            sc.dataset_path(fs, c.dataset, c.tree, c.branch, field_name=f"{cat}.branch")


def _check_dataset(path: str, fs: str, ds: DatasetItem) -> None:
    _check_object(path, ds)
    sc.check_relative(f"{path}.name", ds.name)
    sc.dataset_path(fs, ds.name, field_name=f"{path}.name")
    _check_properties(f"{path}.properties", ds.properties)
    for i, s in enumerate(ds.snapshots):
        _check_object(f"{path}.snapshots[{i}]", s)
        sc.check_snapshot(f"{path}.snapshots[{i}].name", s.name)
        _check_id(f"{path}.snapshots[{i}].reference_count", s.reference_count, 0)
    for i, t in enumerate(ds.trees):
        _check_object(f"{path}.trees[{i}]", t)
        sc.check_component(f"{path}.trees[{i}].name", t.name)
        for j, b in enumerate(t.branches):
            _check_branch(f"{path}.trees[{i}].branches[{j}]", fs, ds.name, t.name, b)
    children = [_child_dataset(f"{path}.datasets[{i}]", raw) for i, raw in enumerate(ds.datasets)]
    object.__setattr__(ds, "datasets", children)  # frozen, but still being built: parse_params has not returned
    for i, sub in enumerate(children):
        _check_dataset(f"{path}.datasets[{i}]", fs, sub)


def _child_dataset(path: str, raw: Any) -> DatasetItem:
    if isinstance(raw, DatasetItem):
        return raw
    try:
        return parse_params(DatasetItem, raw)
    except ParamError as exc:
        inner = exc.field
        message = str(exc).removeprefix(f"{inner}: ") if inner else str(exc)
        raise ParamError(message, field=f"{path}.{inner}" if inner else path) from None


def _check_pool(path: str, pool: PoolItem) -> None:
    _check_object(path, pool)
    fs = sc.check_dataset(f"{path}.filesystem", pool.filesystem)
    _check_properties(f"{path}.properties", pool.properties)
    for i, dl in enumerate(pool.downloads):
        _check_object(f"{path}.downloads[{i}]", dl)
        _check_text(f"{path}.downloads[{i}].secret_key", dl.secret_key, _SECRET_KEY)
        _check_text(f"{path}.downloads[{i}].file_name", dl.file_name, _FILE_NAME)
    for i, c in enumerate(pool.mount_clones):
        at = f"{path}.mount_clones[{i}]"
        _check_object(at, c)
        _check_id(f"{at}.id", c.id)
        sc.check_relative(f"{at}.dataset", c.dataset)
        sc.check_snapshot(f"{at}.name", c.name)
        sc.dataset_path(fs, c.dataset, field_name=f"{at}.dataset")
        sc.check_dataset(f"{at}.id", f"{fs}/vpsadmin/mount/{c.id}.snapshot")
    for i, ds in enumerate(pool.datasets):
        _check_dataset(f"{path}.datasets[{i}]", fs, ds)


@dataclass(frozen=True, slots=True)
class StorageParams:
    integrity_check_id: int
    pools: list[PoolItem] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_id("integrity_check_id", self.integrity_check_id)
        for i, pool in enumerate(self.pools):
            _check_pool(f"pools[{i}]", pool)


@dataclass(frozen=True, slots=True)
class VpsParams:
    integrity_check_id: int
    vpses: list[VpsItem] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_id("integrity_check_id", self.integrity_check_id)
        for i, vps in enumerate(self.vpses):
            _check_vps(f"vpses[{i}]", vps)


def _check_vps(path: str, vps: VpsItem) -> None:
    _check_object(path, vps)
    try:
        vz_validate.veid(vps.vps_id)
        if vps.os_template is not None:
            vz_validate.name(vps.os_template, "os_template")
        for i, ip in enumerate(vps.ip_addresses):
            _check_object(f"{path}.ip_addresses[{i}]", ip)
            vz_validate.ip(ip.addr, f"ip_addresses[{i}].addr")
    except InvalidValue as exc:
        name = {"veid": "vps_id"}.get(exc.field, exc.field)
        raise ParamError(f"invalid value: {exc.rule}", field=f"{path}.{name}") from None
    _check_text(f"{path}.hostname", vps.hostname)
    for name in ("memory", "swap", "cpu"):
        if getattr(vps, name) is not None:
            _check_id(f"{path}.{name}", getattr(vps, name), 0)


@dataclass(frozen=True, slots=True)
class FinalizeParams:
    integrity_check_id: int

    def __post_init__(self) -> None:
        _check_id("integrity_check_id", self.integrity_check_id)


# ------------------------------------------------------------------------------------------------------------
# Facts, strays and how they are written


def _same(expected: Any, actual: Any) -> bool:
    """Equality without Python's ``True == 1`` (a boolean fact never equals a count)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


@dataclass(slots=True)
class Facts:
    """Facts and strays of one run as JSON lists (they travel in ``Outcome.data``, and through the journal):
    ``[object_id, name, expected, actual, true?, severity, message]`` and ``[parent_id, parent_ancestry,
    class_name, name, expected, actual, true?, severity, message]``."""

    facts: list[list[Any]] = field(default_factory=list)
    strays: list[list[Any]] = field(default_factory=list)

    def add(self, obj: IntegrityObject, name: str, expected: Any, actual: Any, severity: int, message: str, *,
            status: bool | None = None) -> bool:
        true = _same(expected, actual) if status is None else status
        self.facts.append([obj.integrity_object_id, name, expected, actual, true, severity,
                           None if true else message])
        return true

    def stray(self, parent: IntegrityObject | None, class_name: str, severity: int, message: str) -> None:
        """Something exists that should not: a new object under ``parent`` with a false ``exists`` fact."""
        self.strays.append([parent.integrity_object_id if parent else None, parent.ancestry if parent else None,
                            class_name, "exists", False, True, False, severity, message])

    def outcome(self, errors: list[str]) -> Outcome:
        """Warning when something could not be read at all (its objects say why), ok otherwise."""
        output: dict[str, Any] = {"facts": len(self.facts) + len(self.strays), "stray_objects": len(self.strays),
                                  "false_facts": sum(1 for f in self.facts if not f[4]) + len(self.strays)}
        if errors:
            output["errors"] = errors[:50]
        return Outcome(TSuccess.WARNING if errors else TSuccess.OK, output,
                       {"facts": self.facts, "strays": self.strays})


def ruby_yaml(value: Any) -> str:
    """``value`` as a YAML document that fits ``expected_value``/``actual_value`` (VARCHAR(255)), in the
    shape Ruby's ``YAML.dump`` wrote (``"--- true\\n...\\n"``); a longer value is shortened with ``...``."""
    if value is None or isinstance(value, bool | int | str):  # most facts are true/true: dump each value once
        return _ruby_yaml_scalar(type(value).__name__, value)
    return _ruby_yaml(value)


@functools.lru_cache(maxsize=4096)
def _ruby_yaml_scalar(_kind: str, value: Any) -> str:  # the type is in the key: True and 1 differ
    return _ruby_yaml(value)


def _ruby_yaml(value: Any) -> str:
    text = yaml.safe_dump(value, explicit_start=True, default_flow_style=False, allow_unicode=True, width=4096)
    cut = 200
    while len(text) > _VALUE_LEN:
        text = yaml.safe_dump(str(value)[:cut] + "...", explicit_start=True, allow_unicode=True, width=4096)
        cut //= 2
    return text


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _child_ancestry(parent_id: int | None, parent_ancestry: str | None) -> tuple[str | None, int]:
    """The ancestry gem's path of a new child (``"<parent's ancestry>/<parent id>"``) and its depth.

    v2.0 wrote the parent's own ancestry, making a stray a sibling of its parent. A path longer than the
    column is cut at a ``/``: the stray then hangs under a more distant ancestor, which is still true."""
    if parent_id is None:
        return None, 0
    path = f"{parent_ancestry}/{parent_id}" if parent_ancestry else str(parent_id)
    while len(path) > 255:
        path = path.rpartition("/")[0]
    return path, path.count("/") + 1


def _fact_row(object_id: int, fact: Sequence[Any], now: str) -> tuple[Any, ...]:
    name, expected, actual, true, severity, message = fact
    return (object_id, str(name)[:30], ruby_yaml(expected), ruby_yaml(actual), 1 if true else 0, int(severity),
            None if message is None else str(message)[:_MESSAGE_LEN], now)


_INSERT_FACT: Final = ("INSERT INTO integrity_facts (integrity_object_id, name, expected_value, actual_value, status, "
                       "severity, message, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")


def _marks(values: Sequence[str]) -> str:
    return ", ".join(["%s"] * len(values))


async def write_facts(tx: Tx, *, check_id: int, node_id: int, classes: Sequence[str], stray_classes: Sequence[str],
                      data: dict[str, Any]) -> None:
    """Replace what this module wrote for this check on this node with the facts and strays in ``data``.

    The engine never commits a second ``post_save`` of one transaction, so the deletes find nothing unless
    someone ran it again by hand; they are one pass over the facts (joined to objects by primary key), as
    ``integrity_facts`` has no index on ``integrity_object_id``."""
    await tx.execute("DELETE f FROM integrity_facts f JOIN integrity_objects o ON o.id = f.integrity_object_id "
                     f"WHERE o.integrity_check_id = %s AND o.node_id = %s AND o.class_name IN ({_marks(classes)})",
                     (check_id, node_id, *classes))
    # The API registers every object with its row_id; only the daemon creates objects without one.
    await tx.execute("DELETE FROM integrity_objects WHERE integrity_check_id = %s AND node_id = %s AND row_id IS NULL "
                     f"AND class_name IN ({_marks(stray_classes)})", (check_id, node_id, *stray_classes))
    now = _utcnow()
    rows = [_fact_row(int(f[0]), f[1:], now) for f in data.get("facts", ())]
    for parent_id, parent_ancestry, class_name, *fact in data.get("strays", ()):
        ancestry, depth = _child_ancestry(parent_id, parent_ancestry)
        await tx.execute(
            "INSERT INTO integrity_objects (integrity_check_id, node_id, class_name, row_id, ancestry, "
            "ancestry_depth, status, created_at, updated_at) VALUES (%s, %s, %s, NULL, %s, %s, 0, %s, %s)",
            (check_id, node_id, class_name, ancestry, depth, now, now))
        rows.append(_fact_row(tx.lastrowid, fact, now))
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        await tx.executemany(_INSERT_FACT, rows[start:start + _ROWS_PER_INSERT])


class _FactsHandler(Handler[Any]):
    """6005/6006: facts computed by ``exec`` and written by ``post_save`` (see the module docstring)."""

    classes: tuple[str, ...] = ()
    stray_classes: tuple[str, ...] = ()

    async def post_save(self, tx: Tx, result: Result) -> None:
        await write_facts(tx, check_id=self.params.integrity_check_id, node_id=self.ctx.server_id,
                          classes=self.classes, stray_classes=self.stray_classes, data=result.data)


# ------------------------------------------------------------------------------------------------------------
# 6005 Storage: reading a pool


#: Properties a zfs binary refused (zfs-fuse has no ``clones``, ``sync`` or ``relatime``): asked only once.
_UNSUPPORTED: dict[str, set[str]] = {}


async def read_pool(zfs: Zfs, fs: str, wanted: Sequence[str]) -> dict[str, dict[str, Prop]]:
    """``fs`` and every dataset and snapshot below it with the ``wanted`` properties: one ``zfs get -r -Hp``.

    ``zfs get`` refuses the whole list for one unknown property; such a property is dropped, remembered for
    this binary and the call repeated, so only the first check on a node pays the extra calls."""
    skip = _UNSUPPORTED.setdefault(zfs.zfs_bin, set())
    props = [p for p in dict.fromkeys(wanted) if p not in skip]
    while True:
        try:
            return await zfs.get(fs, props, recursive=True)
        except InvalidProperty as exc:
            m = _INVALID_PROP.search(exc.stderr or str(exc))
            if m is None or m.group(1) not in props or len(props) == 1:
                raise
            skip.add(m.group(1))
            props.remove(m.group(1))


def _clones(objects: dict[str, dict[str, Prop]]) -> dict[str, set[str]]:
    """Full snapshot name -> full names of its clones, from ``origin`` (what zfs-fuse has) and ``clones``."""
    found: dict[str, set[str]] = {}
    for name, props in objects.items():
        origin = props.get("origin")
        if origin is not None and origin.value not in ("", "-"):
            found.setdefault(origin.value, set()).add(name)
        listed = props.get("clones")
        if "@" in name and listed is not None and listed.value not in ("", "-"):
            found.setdefault(name, set()).update(v for v in listed.value.split(",") if v)
    return found


def _relative(fs: str, name: str) -> str | None:
    """``''`` for ``fs``, ``a/b`` below it, ``a@s`` for snapshots and ``@s`` for snapshots of ``fs`` itself."""
    return name[len(fs):] if name.startswith(fs + "@") else zfs_names.relative(name, fs)


def _api_value(prop: str, value: str) -> Any:
    """A ``zfs get -p`` value in the API's terms (v2.0's ``clean_value``): on/off as booleans, sizes of
    quota/refquota in MiB (0 for none, as the API stores it), numbers as integers."""
    if value == "-":
        return None
    if prop in ("quota", "refquota"):
        if value in ("none", "0"):
            return 0
        if value.isdigit():
            size = int(value)
            return size // _MIB if size % _MIB == 0 else round(size / _MIB, 3)
    if value in ("on", "off"):
        return value == "on"
    return int(value) if value.isdigit() else value


def _expected_value(prop: str, value: Any) -> Any:
    """The API's value, with the two spellings of "nothing" that the node shows otherwise: quota null is
    ``none`` (0), an empty ``sharenfs`` is ``off`` (v2.0 reported these as false facts)."""
    if prop in ("quota", "refquota") and value is None:
        return 0
    if prop == "sharenfs" and value in ("", None):
        return False
    return value


def _inherited(prop: str, source: str) -> bool:
    """Whether the API would call the property inherited: not set here, for a property that can inherit.
    quota and refquota never inherit, so the API keeps ``inherited: false`` for them even at their default."""
    return sc.inheritable(prop) and (source == "default" or source.startswith("inherited"))


def _expected_props(items: Sequence[PropertyItem], datasets: Sequence[DatasetItem]) -> Iterator[str]:
    """Names of the properties the params expect anywhere in a pool (beyond :data:`ZFS_PROPERTIES`)."""
    for p in items:
        if p.name not in _REPORTED:
            yield p.name
    for ds in datasets:
        yield from _expected_props(ds.properties, ds.datasets)


# ------------------------------------------------------------------------------------------------------------
# 6005 Storage: comparing a pool


class _PoolCheck:
    """Compares one pool of the params with what :func:`read_pool` found. Every real object the params account
    for is taken; what is left at the end is stray. ``gone`` says why nothing of the pool exists."""

    def __init__(self, pool: PoolItem, objects: dict[str, dict[str, Prop]], facts: Facts, gone: str | None) -> None:
        self.pool = pool
        self.fs = pool.filesystem
        self.facts = facts
        self.gone = gone
        self.objects = {rel: props for name, props in objects.items()
                        if (rel := _relative(self.fs, name)) is not None}
        self.clones = _clones(objects)
        self.taken: set[str] = set()
        # relative names of expected datasets, trees and branches: where stray objects are placed
        self.index: dict[str, IntegrityObject] = {}

    def take(self, rel: str) -> dict[str, Prop] | None:
        found = self.objects.get(rel)
        if found is not None:
            self.taken.add(rel)
        return found

    def full(self, rel: str) -> str:
        return self.fs + rel if not rel or rel.startswith("@") else f"{self.fs}/{rel}"

    async def run(self) -> None:
        pool = self.pool
        if self.exists(pool, "", "pool filesystem", self.gone)[0]:
            for p in pool.properties:
                self.property(p, self.objects[""])
            for name in _SPECIAL:
                self.facts.add(pool, name, True, self.take(name) is not None, HIGH,
                               f"dataset '{self.full(name)}' does not exist")
        await self.downloads()
        for c in pool.mount_clones:
            self.mount_clone(c)
        for ds in pool.datasets:
            self.dataset(ds, self.gone)
        self.leftovers()

    def property(self, p: PropertyItem, real: dict[str, Prop]) -> None:
        have = real.get(p.name)
        if p.name in _REPORTED or have is None:  # not a setting, or unknown to this zfs: undetermined
            return
        self.facts.add(p, "is", _expected_value(p.name, p.value), _api_value(p.name, have.value), NORMAL,
                       f"{p.name} is {have.value}")
        inherited = _inherited(p.name, have.source)
        self.facts.add(p, "inherited", p.inherited, inherited, NORMAL,
                       f"{p.name} is {'' if inherited else 'not '}inherited (source: {have.source})")

    async def downloads(self) -> None:
        """Download directories in the mounted ``vpsadmin/download``; unexpected ones are stray."""
        props = self.objects.get("vpsadmin/download", {})
        mounted, where = props.get("mounted"), props.get("mountpoint")
        entries: set[str] = set()
        why = self.gone or f"dataset '{self.full('vpsadmin/download')}' does not exist or is not mounted"
        if mounted is not None and mounted.value == "yes" and where is not None and where.value.startswith("/"):
            try:
                entries, why = set(await asyncio.to_thread(os.listdir, where.value)), ""
            except OSError as exc:
                why = f"cannot list {where.value}: {exc.strerror or exc}"
        for dl in self.pool.downloads:
            found = not why and dl.secret_key in entries
            entries.discard(dl.secret_key)
            self.facts.add(dl, "dir_exists", True, found, NORMAL, why or f"download '{dl.secret_key}' does not exist")
            has_file = found and where is not None and await asyncio.to_thread(
                os.path.isfile, os.path.join(where.value, dl.secret_key, dl.file_name))
            self.facts.add(dl, "file_exists", True, has_file, NORMAL, why or f"file '{dl.file_name}' does not exist")
        for extra in sorted(entries):
            self.facts.stray(self.pool, "SnapshotDownload", LOW, f"download '{extra}' exists while it should not")

    def mount_clone(self, c: MountCloneItem) -> None:
        rel = f"vpsadmin/mount/{c.id}.snapshot"
        if not self.exists(c, rel, "mount clone", self.gone)[0]:
            return
        expected = f"{self.fs}/{c.dataset}@{c.name}"
        origin = self.objects[rel].get("origin")
        actual = origin.value if origin is not None and origin.value not in ("", "-") else None
        # On a backup pool the snapshot lives in a branch: v2.0 expected the plain dataset and failed there.
        in_branch = re.escape(f"{self.fs}/{c.dataset}") + _BRANCH_ORIGIN + re.escape(c.name)
        matches = actual == expected or (actual is not None and re.fullmatch(in_branch, actual) is not None)
        self.facts.add(c, "origin", expected, actual, HIGH, f"origin is '{actual}'", status=matches)

    def exists(self, item: IntegrityObject, rel: str, what: str, gone: str | None) -> tuple[bool, str]:
        """The ``exists`` fact of ``item``, and the reason objects below it are missing if it is."""
        why = gone or f"{what} '{self.full(rel)}' does not exist"
        return self.facts.add(item, "exists", True, self.take(rel) is not None, HIGH, why), why

    def dataset(self, ds: DatasetItem, gone: str | None) -> None:
        self.index[ds.name] = ds
        exists, why = self.exists(ds, ds.name, "dataset", gone)
        below = None if exists else why
        if exists:
            for p in ds.properties:
                self.property(p, self.objects[ds.name])
        for s in ds.snapshots:
            full = self.full(f"{ds.name}@{s.name}")
            if self.exists(s, f"{ds.name}@{s.name}", "snapshot", below)[0]:
                count = len(self.clones.get(full, ()))
                self.facts.add(s, "reference_count", s.reference_count, count, HIGH, f"'{full}' has {count} clone(s)")
        for t in ds.trees:
            rel = f"{ds.name}/{t.name}"
            self.index[rel] = t
            exists, why = self.exists(t, rel, "dataset tree", below)
            for b in t.branches:
                self.branch(rel, b, None if exists else why)
        for sub in ds.datasets:
            self.dataset(sub, below)

    def branch(self, tree: str, b: BranchItem, gone: str | None) -> None:
        rel = f"{tree}/{b.name}"
        self.index[rel] = b
        exists, why = self.exists(b, rel, "dataset branch", gone)
        for s in b.snapshots:
            self.branch_snapshot(rel, s, None if exists else why)

    def branch_snapshot(self, branch: str, s: BranchSnapshotItem, gone: str | None) -> None:
        full = self.full(f"{branch}@{s.name}")
        exists, why = self.exists(s, f"{branch}@{s.name}", "snapshot", gone)
        # Clones in vpsadmin/mount are remote mounts, checked as mount clones of the pool.
        mounts = f"{self.fs}/vpsadmin/mount/"
        clones = sorted(c for c in self.clones.get(full, ()) if not c.startswith(mounts)) if exists else []
        for c in s.clones:
            want = f"{self.fs}/{c.dataset}/{c.tree}/{c.branch}"
            found = want in clones
            if found:
                clones.remove(want)
            self.facts.add(c, "clones", want, want if found else None, HIGH,
                           why if not exists else f"'{want}' is not a clone of '{full}'")
        for extra in clones:
            self.facts.stray(s, "Branch", HIGH, f"unexpected clone '{extra}' of '{full}'")
            extra_rel = _relative(self.fs, extra)
            if extra_rel is not None:  # reported here: not a second time as a stray dataset
                self.taken.add(extra_rel)

    def leftovers(self) -> None:
        for rel in sorted(set(self.objects) - self.taken):
            kind = self.objects[rel].get("type")
            snapshot = kind.value == "snapshot" if kind is not None else "@" in rel
            self.facts.stray(self.parent_of(rel), "SnapshotInPool" if snapshot else "DatasetInPool", NORMAL,
                             f"{'snapshot' if snapshot else 'dataset'} '{self.full(rel)}' should not exist")

    def parent_of(self, rel: str) -> IntegrityObject:
        """The nearest expected dataset, tree or branch above a stray object (its own dataset for a
        snapshot); the pool for the pool's own snapshots and anything in ``vpsadmin``."""
        dataset, at, _snapshot = rel.partition("@")
        if not dataset or dataset.split("/", 1)[0] == "vpsadmin":
            return self.pool
        base = dataset if at else dataset.rpartition("/")[0]
        while base:
            if base in self.index:
                return self.index[base]
            base = base.rpartition("/")[0]
        return self.pool


@handler(6005)
class StorageCheck(_FactsHandler):
    """Compares every pool of the params with ZFS: one recursive ``zfs get`` per pool, whatever its size. A
    missing or unreadable pool (zfs failing, its daemon down) is a false ``exists`` fact of the pool, never a
    failed transaction; an unreadable one makes the result a warning naming the error."""

    Params = StorageParams
    params: StorageParams
    idempotent = True
    classes, stray_classes = STORAGE_CLASSES, STORAGE_STRAY_CLASSES

    async def exec(self) -> Outcome | None:
        facts = Facts()
        errors: list[str] = []
        zfs: Zfs | None = None
        try:
            zfs = await sc.zfs_driver(self.ctx)
        except ZfsError as exc:
            errors.append(f"zfs: {exc}")
        for pool in self.params.pools:
            error = await self._check_pool(zfs, pool, facts, errors[0] if zfs is None else None)
            if error is not None and zfs is not None:
                errors.append(error)
        return facts.outcome(errors)

    async def _check_pool(self, zfs: Zfs | None, pool: PoolItem, facts: Facts, error: str | None) -> str | None:
        objects: dict[str, dict[str, Prop]] = {}
        gone = None
        if zfs is not None:
            try:
                objects = await read_pool(zfs, pool.filesystem,
                                          [*ZFS_PROPERTIES, *_expected_props(pool.properties, pool.datasets)])
            except DatasetNotFound:
                gone = f"pool filesystem '{pool.filesystem}' does not exist"
            except ZfsError as exc:
                error = f"{pool.filesystem}: {exc}"
        if error is not None:
            # Unreadable is not missing: the pool says why, and nothing below it is judged (undetermined).
            facts.add(pool, "exists", True, False, HIGH, f"cannot read pool filesystem '{pool.filesystem}': {error}")
            return error
        await _PoolCheck(pool, objects, facts, gone).run()
        return None


# ------------------------------------------------------------------------------------------------------------
# 6006 Vps


def _ubc_mib(value: Any) -> int | None:
    """A UBC field of ``vzlist -j`` (``{held, maxheld, barrier, limit, failcnt}`` in pages) as its limit in MiB."""
    limit = value.get("limit") if isinstance(value, dict) else None
    return pages_to_mib(limit) if isinstance(limit, int) and not isinstance(limit, bool) else None


def _ip(text: str) -> str:
    """An address in canonical form, so that ``2001:db8:0::1`` and ``2001:db8::1`` are the same."""
    try:
        return ipaddress.ip_interface(text).ip.compressed
    except ValueError:
        return text


class _VpsCheck:
    """Compares the expected VPSes with one ``vzlist -j -a`` listing; listed VPSes left at the end are stray."""

    def __init__(self, facts: Facts, listed: list[dict[str, Any]], private: str, vz_root: str) -> None:
        self.facts = facts
        self.real = {row["veid"]: row for row in listed
                     if isinstance(row.get("veid"), int) and not isinstance(row.get("veid"), bool)}
        self.private = private
        self.vz_root = vz_root

    def vps(self, item: VpsItem) -> None:
        row = self.real.pop(item.vps_id, None)
        why = f"VPS {item.vps_id} does not exist"
        if not self.facts.add(item, "exists", True, row is not None, HIGH, why):
            for ip in item.ip_addresses:
                self.facts.add(ip, "exists", True, False, HIGH, why)
            return
        assert row is not None
        self.settings(item, row)
        self.addresses(item, row)

    def settings(self, item: VpsItem, row: dict[str, Any]) -> None:
        veid, add = item.vps_id, self.facts.add
        status = row.get("status")
        running = {"running": True, "stopped": False}.get(status, status) if isinstance(status, str) else None
        add(item, "status", item.status, running, NORMAL, f"status is '{status}'")
        # v2.0: a running VPS starts on boot, a stopped one does not
        add(item, "onboot", item.status, row.get("onboot"), NORMAL, f"onboot is {row.get('onboot')}")
        private = expand_veid(self.private.replace("%{veid}", str(veid)).replace("%veid%", str(veid)), veid)
        add(item, "private", private, row.get("private"), HIGH, f"private is '{row.get('private')}'")
        root = os.path.join(self.vz_root, "root", str(veid))
        add(item, "root", root, row.get("root"), HIGH, f"root is '{row.get('root')}'")
        add(item, "hostname", item.hostname, row.get("hostname"), LOW, f"hostname is '{row.get('hostname')}'")
        add(item, "os_template", item.os_template, row.get("ostemplate"), NORMAL,
            f"OS template is '{row.get('ostemplate')}'")
        memory, swap = _ubc_mib(row.get("physpages")), _ubc_mib(row.get("swappages"))
        add(item, "memory", item.memory, memory, NORMAL, f"memory (physpages) is {memory} MiB")
        add(item, "swap", item.swap, swap, NORMAL, f"swap (swappages) is {swap} MiB")
        add(item, "cpu", item.cpu, row.get("cpus"), NORMAL, f"CPUs: {row.get('cpus')}")
        # v2.0 named this fact "cpu" too, which made the two indistinguishable in the API
        add(item, "cpulimit", None if item.cpu is None else item.cpu * 100, row.get("cpulimit"), NORMAL,
            f"CPU limit is {row.get('cpulimit')}")

    def addresses(self, item: VpsItem, row: dict[str, Any]) -> None:
        real = [_ip(a) for a in row.get("ip") or () if isinstance(a, str)]
        for ip in item.ip_addresses:
            want = _ip(ip.addr)
            found = want in real
            if found:
                real.remove(want)
            self.facts.add(ip, "exists", True, found, HIGH, f"IP address '{ip.addr}' is not present")
        for extra in real:
            self.facts.stray(item, "IpAddress", NORMAL, f"IP address '{extra}' should not be present")

    def strays(self) -> None:
        for veid in sorted(self.real):
            self.facts.stray(None, "Vps", HIGH, f"VPS {veid} should not exist")


@handler(6006)
class VpsCheck(_FactsHandler):
    """Compares the expected VPSes with ``vzlist -j -a -o <VZLIST_FIELDS>`` (one command). When vzlist fails,
    every expected VPS gets a false ``exists`` fact saying why and the result is a warning."""

    Params = VpsParams
    params: VpsParams
    idempotent = True
    classes, stray_classes = VPS_CLASSES, VPS_STRAY_CLASSES

    async def exec(self) -> Outcome | None:
        facts = Facts()
        try:
            listed = await Vz.from_config(self.ctx.config.vz).vzlist(fields=VZLIST_FIELDS)
        except VzError as exc:
            for vps in self.params.vpses:
                facts.add(vps, "exists", True, False, HIGH, f"cannot list VPSes: {exc}")
            return facts.outcome([f"vzlist: {exc}"])
        check = _VpsCheck(facts, listed, await self._private_template(), self.ctx.config.vz.vz_root)
        for vps in self.params.vpses:
            check.vps(vps)
        check.strays()
        return facts.outcome([])

    async def _private_template(self) -> str:
        # v2.0 replaced vz.ve_private with the node's row at start; this daemon reads it when it is needed.
        row = await self.ctx.db.fetchone("SELECT ve_private FROM servers WHERE server_id = %s", (self.ctx.server_id,))
        if row is not None and row.get("ve_private"):
            return str(row["ve_private"])
        return self.ctx.config.vz.ve_private


# ------------------------------------------------------------------------------------------------------------
# 6001 Finalize

# Facts -> objects in one statement. The derived table is aggregated, so MariaDB materialises it before the
# update (no "can't specify target table" error). An object is broken only by a false fact of normal or high
# severity (v2.0 left out the "false": every object with a normal fact was broken); one without facts was not
# checked at all and stays undetermined (0), where v2.0 called it integral.
_OBJECTS_SQL: Final = """
UPDATE integrity_objects o LEFT JOIN (
    SELECT f.integrity_object_id AS object_id, COUNT(*) AS facts, SUM(f.status = 1) AS true_facts,
           SUM(f.status <> 1) AS false_facts, MAX(f.status <> 1 AND f.severity > 0) AS broken
    FROM integrity_facts f JOIN integrity_objects fo ON fo.id = f.integrity_object_id
    WHERE fo.integrity_check_id = %s GROUP BY f.integrity_object_id
) s ON s.object_id = o.id
SET o.checked_facts = COALESCE(s.facts, 0), o.true_facts = COALESCE(s.true_facts, 0),
    o.false_facts = COALESCE(s.false_facts, 0), o.updated_at = %s,
    o.status = CASE WHEN s.facts IS NULL THEN 0 WHEN s.broken = 1 THEN 2 ELSE 1 END
WHERE o.integrity_check_id = %s"""

# Objects -> the check. Checked objects are those with facts (integral + broken); the check is broken when
# an object is, i.e. when a fact of normal or high severity is false (v2.0's rule for the check).
_CHECK_SQL: Final = """
UPDATE integrity_checks c JOIN (
    SELECT COALESCE(SUM(checked_facts > 0), 0) AS checked, COALESCE(SUM(status = 1), 0) AS integral,
           COALESCE(SUM(status = 2), 0) AS broken, COALESCE(SUM(checked_facts), 0) AS facts,
           COALESCE(SUM(true_facts), 0) AS true_facts, COALESCE(SUM(false_facts), 0) AS false_facts
    FROM integrity_objects WHERE integrity_check_id = %s
) s
SET c.status = IF(s.broken > 0, 2, 1), c.checked_objects = s.checked, c.integral_objects = s.integral,
    c.broken_objects = s.broken, c.checked_facts = s.facts, c.true_facts = s.true_facts,
    c.false_facts = s.false_facts, c.updated_at = %s, c.finished_at = %s
WHERE c.id = %s"""

_SUMMARY: Final = ("status", "checked_objects", "integral_objects", "broken_objects", "checked_facts",
                   "true_facts", "false_facts")


async def finalize_check(tx: Tx, check_id: int) -> dict[str, int] | None:
    """Summarise check ``check_id`` into its objects and its row; the summary, or None without such a check."""
    now = _utcnow()
    await tx.execute(_OBJECTS_SQL, (check_id, now, check_id))
    await tx.execute(_CHECK_SQL, (check_id, now, now, check_id))
    row = await tx.fetchone(f"SELECT {', '.join(_SUMMARY)} FROM integrity_checks WHERE id = %s", (check_id,))
    return None if row is None else {k: int(row[k]) for k in _SUMMARY}


@handler(6001)
class FinalizeCheck(Handler[FinalizeParams]):
    """Counts the facts of the whole check (every node's) into its objects and the check: two statements in
    one DB transaction, recomputed from the facts on every run (idempotent); rollback has nothing to undo."""

    Params = FinalizeParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        check_id = self.params.integrity_check_id
        summary = await self.ctx.db.run(lambda tx: finalize_check(tx, check_id))
        if summary is None:
            return Outcome(TSuccess.FAILED, {"error": f"integrity check {check_id} does not exist"})
        return Outcome(TSuccess.OK, dict(summary))
