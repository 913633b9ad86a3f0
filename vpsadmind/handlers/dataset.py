"""Dataset, snapshot and clone transactions of v2.0 (contract 5.4, 7.2, 7.5, 7.7).

Every name from ``t_param`` is validated in the params' ``__post_init__``: a hostile name fails the
transaction with ``Bad param: <field>: ...`` before the handler exists. Names read from the database (5212)
are validated before the command that uses them. Each class says in its docstring how it survives a crash
(``idempotent`` re-run, or a ``recover`` that inspects ZFS).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from vpsadmind.engine.model import Direction, Result
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Handler, Outcome, Recovery, handler, ok
from vpsadmind.handlers.storage_common import (
    TRANSACTION_PROP,
    SnapshotRef,
    check_component,
    check_dataset,
    check_prop_name,
    check_relative,
    check_snapshot,
    dataset_path,
    ensure_clone,
    fail,
    inheritable,
    json_output,
    mount_clone_path,
    parse_snapshot_time,
    props_equal,
    read_props,
    snapshot_name,
    tagged_snapshots,
    valid_snapshot,
    zfs_driver,
    zfs_value,
)
from vpsadmind.zfs.errors import DatasetExists

if TYPE_CHECKING:
    from vpsadmind.db import Tx
    from vpsadmind.zfs.driver import Zfs

__all__ = [
    "ApplyRollback", "CloneSnapshot", "CloneSnapshotName", "DatasetCreate", "DatasetDestroy", "DatasetInherit",
    "DatasetSet", "DestroySnapshot", "GroupSnapshot", "LocalRollback", "PrepareRollback", "RemoveClone",
    "DatasetSnapshot",
]

_SNAPSHOT_RETRIES = 3


def _check_ds(pool_fs: str, name: str, field_name: str) -> None:
    check_dataset("pool_fs", pool_fs)
    check_relative(field_name, name)
    dataset_path(pool_fs, name, field_name=field_name)


def _check_options(options: dict[str, Any] | None, field_name: str = "options") -> dict[str, str]:
    return {check_prop_name(f"{field_name}.{k}", k): zfs_value(k, v, field_name=field_name)
            for k, v in (options or {}).items()}


# ------------------------------------------------------------------------------------------------------------
# 5201 Dataset::Create, 5203 Dataset::Destroy


@dataclass(frozen=True, slots=True)
class CreateParams:
    pool_fs: str
    name: str
    options: dict[str, Any] | None = None
    create_private: bool | None = False

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.name, "name")
        _check_options(self.options)


@handler(5201)
class DatasetCreate(Handler[CreateParams]):
    """``zfs create -p [-o k=v] <pool_fs>/<name>`` and, when ``create_private``, ``<mountpoint>/private``.

    Idempotent: an existing dataset is accepted when every option is set on it locally with the wanted
    value (a re-run after a crash), and an existing ``private`` directory is kept. Rollback destroys the
    dataset (not recursively; a missing one is fine), except in the same run when exec found a different
    dataset in the way."""

    Params = CreateParams
    idempotent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._foreign = False

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        path = f"{p.pool_fs}/{p.name}"
        options = _check_options(p.options)
        # ``zfs create -p`` succeeds silently on an existing dataset, so look first
        existed = await zfs.exists(path)
        if existed:
            await self._require_match(zfs, path, options)
        else:
            await zfs.create(path, properties=options or None, parents=True)
        if not p.create_private:
            return ok(existed=True) if existed else None
        mnt = await zfs.mountpoint(path)
        if mnt is None:
            raise fail(f"{path} is not mounted, cannot create its private directory", dataset=path)
        private = os.path.join(mnt, "private")
        await asyncio.to_thread(_mkdir, private)
        return ok(private=private, existed=True) if existed else ok(private=private)

    async def _require_match(self, zfs: Zfs, path: str, options: dict[str, str]) -> None:
        current = await read_props(zfs, path, ["type", *options])
        kind = current.get("type")
        wrong = [] if kind is None or kind.value == "filesystem" else [f"type={kind.value}"]
        for prop, wanted in options.items():
            have = current.get(prop)
            if have is None or have.source != "local" or not props_equal(prop, wanted, have.value):
                wrong.append(f"{prop}={have.value if have else '?'} ({have.source if have else '?'}), "
                             f"wanted {wanted}")
        if wrong:
            self._foreign = True
            raise fail(f"{path} already exists and differs: {'; '.join(wrong)}", dataset=path)

    async def rollback(self) -> Outcome | None:
        if self._foreign:
            return ok(note="the existing dataset was not made by this transaction; kept")
        zfs = await zfs_driver(self.ctx)
        await zfs.destroy(f"{self.params.pool_fs}/{self.params.name}", missing_ok=True)
        return None


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if os.path.islink(path) or not os.path.isdir(path):
            raise fail(f"{path} exists and is not a directory", path=path) from None


@dataclass(frozen=True, slots=True)
class DestroyParams:
    pool_fs: str
    name: str

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.name, "name")


@handler(5203)
class DatasetDestroy(Handler[DestroyParams]):
    """``zfs destroy <pool_fs>/<name>`` (not recursive; the API destroys children first). Irreversible.
    Idempotent: a dataset that is already gone is fine."""

    Params = DestroyParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        await zfs.destroy(f"{self.params.pool_fs}/{self.params.name}", missing_ok=True)
        return None


# ------------------------------------------------------------------------------------------------------------
# 5204 Dataset::Snapshot, 5215 Dataset::GroupSnapshot


@dataclass(frozen=True, slots=True)
class SnapshotParams:
    pool_fs: str
    dataset_name: str
    snapshot_id: int

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.dataset_name, "dataset_name")


@dataclass(frozen=True, slots=True)
class GroupItem:
    pool_fs: str
    dataset_name: str
    snapshot_id: int


@dataclass(frozen=True, slots=True)
class GroupSnapshotParams:
    snapshots: list[GroupItem]

    def __post_init__(self) -> None:
        if not self.snapshots:
            raise ParamError("at least one snapshot is needed", field="snapshots")
        for i, s in enumerate(self.snapshots):
            check_dataset(f"snapshots[{i}].pool_fs", s.pool_fs)
            check_relative(f"snapshots[{i}].dataset_name", s.dataset_name)
            dataset_path(s.pool_fs, s.dataset_name, field_name=f"snapshots[{i}].dataset_name")


class _SnapshotBase(Handler[Any]):
    """Shared by 5204 and 5215: one UTC name for all datasets, each snapshot tagged with ``t_id``.

    Not idempotent: a plain re-run would make a second snapshot with a newer name. ``recover`` instead looks
    for snapshots tagged with this transaction and reuses their name (finishing a group that a crash cut
    in half); rollback destroys by the name from exec, ``t_output`` or ``snapshots.name``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._name: str | None = None

    def _targets(self) -> list[tuple[str, int]]:
        """(dataset, snapshot id) pairs."""
        raise NotImplementedError

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        targets = [ds for ds, _ in self._targets()]
        tag = {TRANSACTION_PROP: str(self.transaction.t_id)}
        if self._name is not None:  # recover found part of the group: finish it under the same name
            missing = [ds for ds in targets if not await zfs.exists(f"{ds}@{self._name}")]
            if missing:
                await zfs.snapshot([f"{ds}@{self._name}" for ds in missing], properties=tag)
            return self._outcome(self._name)
        for attempt in range(_SNAPSHOT_RETRIES):
            name, _when = snapshot_name()
            try:
                await zfs.snapshot([f"{ds}@{name}" for ds in targets], properties=tag)
            except DatasetExists:  # another snapshot of the same second: try again in the next second
                if attempt + 1 == _SNAPSHOT_RETRIES:
                    raise
                await self._drop_partial(zfs, targets, name)
                await asyncio.sleep(1.01 - dt.datetime.now().microsecond / 1e6)
                continue
            self._name = name  # only now: a self-rollback must never destroy a snapshot it did not make
            return self._outcome(name)
        raise AssertionError("unreachable")

    async def _drop_partial(self, zfs: Zfs, targets: list[str], name: str) -> None:
        """Destroy what this transaction made of a group that failed on a name collision."""
        found = await tagged_snapshots(zfs, targets, self.transaction.t_id)
        for ds, short in found.items():
            if short == name:
                await zfs.destroy(f"{ds}@{name}", missing_ok=True)

    def _outcome(self, name: str) -> Outcome:
        when = parse_snapshot_time(name)
        created = when.isoformat() if when else None
        return Outcome(output={"name": name, "created_at": created}, data={"name": name, "created_at": created})

    async def post_save(self, tx: Tx, result: Result) -> None:
        name = result.data.get("name")
        if not name:
            return
        created = result.data.get("created_at")
        when = dt.datetime.fromisoformat(created) if created else None
        for _ds, snapshot_id in self._targets():
            await tx.execute("UPDATE snapshots SET name = %s, created_at = %s WHERE id = %s",
                             (name, when, snapshot_id))

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        if direction is Direction.ROLLBACK:
            return Recovery.RERUN
        zfs = await zfs_driver(self.ctx)
        targets = [ds for ds, _ in self._targets()]
        found = await tagged_snapshots(zfs, targets, self.transaction.t_id)
        names = set(found.values())
        if len(names) > 1:
            raise fail(f"transaction {self.transaction.t_id} made snapshots with different names: {sorted(names)}")
        if not names:
            return Recovery.RERUN
        self._name = names.pop()
        if len(found) == len(targets):
            return self._outcome(self._name)
        return Recovery.RERUN

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        name = self._name or await self._saved_name()
        targets = [ds for ds, _ in self._targets()]
        if name is None:
            found = await tagged_snapshots(zfs, targets, self.transaction.t_id)
            name = next(iter(found.values()), None)
        if name is None:
            return ok(note="no snapshot of this transaction found; nothing to destroy")
        check_snapshot("name", name)
        for ds in targets:
            await zfs.destroy(f"{ds}@{name}", missing_ok=True)
        return ok(destroyed=name)

    async def _saved_name(self) -> str | None:
        """The name from exec's ``t_output``, else ``snapshots.name`` as post_save wrote it."""
        name = json_output(self.transaction.t_output).get("name")
        if isinstance(name, str) and valid_snapshot(name):
            return name
        row = await self.ctx.db.fetchone("SELECT name FROM snapshots WHERE id = %s", (self._targets()[0][1],))
        name = row["name"] if row else None
        return name if isinstance(name, str) and valid_snapshot(name) else None


@handler(5204)
class DatasetSnapshot(_SnapshotBase):
    """``zfs snapshot <pool_fs>/<ds>@<UTC time>``; post_save writes ``snapshots.name`` and ``created_at``."""

    Params = SnapshotParams

    def _targets(self) -> list[tuple[str, int]]:
        p = self.params
        return [(f"{p.pool_fs}/{p.dataset_name}", p.snapshot_id)]


@handler(5215)
class GroupSnapshot(_SnapshotBase):
    """One snapshot name for all datasets, through the driver's multi-dataset snapshot (atomic where zfs
    supports it); post_save names every ``snapshots`` row."""

    Params = GroupSnapshotParams

    def _targets(self) -> list[tuple[str, int]]:
        return [(f"{s.pool_fs}/{s.dataset_name}", s.snapshot_id) for s in self.params.snapshots]


# ------------------------------------------------------------------------------------------------------------
# 5208 Dataset::LocalRollback, 5209 Dataset::PrepareRollback


@dataclass(frozen=True, slots=True)
class LocalRollbackParams:
    pool_fs: str
    dataset_name: str
    snapshot: str

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.dataset_name, "dataset_name")
        check_snapshot("snapshot", self.snapshot)


@handler(5208)
class LocalRollback(Handler[LocalRollbackParams]):
    """``zfs rollback -r <pool_fs>/<ds>@<snapshot>``. Irreversible. Idempotent: rolling back to the same
    snapshot again leaves the same state."""

    Params = LocalRollbackParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        await zfs.rollback(f"{p.pool_fs}/{p.dataset_name}@{p.snapshot}", recursive=True)
        return None


@dataclass(frozen=True, slots=True)
class DatasetParams:
    pool_fs: str
    dataset_name: str

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.dataset_name, "dataset_name")
        check_dataset("dataset_name", f"{self.pool_fs}/{self.dataset_name}{ROLLBACK_SUFFIX}")


ROLLBACK_SUFFIX = ".rollback"


@handler(5209)
class PrepareRollback(Handler[DatasetParams]):
    """``zfs create -o canmount=noauto <pool_fs>/<ds>.rollback``; rollback destroys it with whatever was
    received into it. Idempotent: an existing ``.rollback`` with canmount=noauto is accepted."""

    Params = DatasetParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        temp = f"{p.pool_fs}/{p.dataset_name}{ROLLBACK_SUFFIX}"
        try:
            await zfs.create(temp, properties={"canmount": "noauto"})
        except DatasetExists:
            canmount = (await read_props(zfs, temp, ["canmount"])).get("canmount")
            if canmount is None or canmount.value != "noauto":
                raise fail(f"{temp} already exists with canmount={canmount.value if canmount else '?'}",
                           dataset=temp) from None
            return ok(existed=True)
        return None

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        await zfs.destroy(f"{p.pool_fs}/{p.dataset_name}{ROLLBACK_SUFFIX}", recursive=True, missing_ok=True)
        return None


# ------------------------------------------------------------------------------------------------------------
# 5211 Dataset::ApplyRollback


@dataclass(frozen=True, slots=True)
class Descendant:
    name: str
    full_name: str


@dataclass(frozen=True, slots=True)
class ApplyRollbackParams:
    pool_fs: str
    dataset_name: str
    descendant_datasets: list[Descendant] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.dataset_name, "dataset_name")
        check_dataset("dataset_name", f"{self.pool_fs}/{self.dataset_name}{ROLLBACK_SUFFIX}")
        prefix = self.dataset_name + "/"
        for i, d in enumerate(self.descendant_datasets):
            where = f"descendant_datasets[{i}].full_name"
            if not d.full_name.startswith(prefix):
                raise ParamError(f"{d.full_name[:80]!r} is not below {self.dataset_name!r}", field=where)
            check_relative(where, d.full_name)
            dataset_path(self.pool_fs, d.full_name, field_name=where)
            dataset_path(self.pool_fs, self.dataset_name + ROLLBACK_SUFFIX + "/" + d.full_name[len(prefix):],
                         field_name=where)

    def relative(self) -> list[str]:
        """Descendants relative to the dataset, parents first."""
        prefix = len(self.dataset_name) + 1
        return sorted({d.full_name[prefix:] for d in self.descendant_datasets})


# Saved before the swap and applied after it (contract 7.5); unknown ones (zfs-fuse: sync) are skipped.
SAVED_PROPS = ("atime", "compression", "mountpoint", "quota", "recordsize", "refquota", "sync")
NEVER_INHERITED = frozenset({"quota", "refquota", "canmount"})
_MARK = "org.vpsadmin:rollback."           # + property, on <ds>.rollback: "local:<value>" or "inherit:"
_MARK_DONE = "org.vpsadmin:rollback-saved"  # set last: all marks are complete
_MARK_CANMOUNT = "org.vpsadmin:rollback-canmount"  # on each descendant: its canmount before the swap


@handler(5211)
class ApplyRollback(Handler[ApplyRollbackParams]):
    """Swap ``<ds>.rollback`` in place of ``<ds>`` keeping children and properties (contract 7.5).

    The state it needs across steps (the original's properties, each descendant's canmount) is stored as user
    properties on the datasets themselves before anything is destroyed, so exec can resume from any step:
    ``recover`` re-runs it while ``<ds>.rollback`` or the marks exist, and reports done otherwise.
    Irreversible, as in v2.0. Unlike v2.0, descendants get their own canmount back instead of ``on``.
    """

    Params = ApplyRollbackParams

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        origin = f"{p.pool_fs}/{p.dataset_name}"
        temp = origin + ROLLBACK_SUFFIX
        has_temp = await zfs.exists(temp)
        if not has_temp and not await self._marked(zfs, origin):
            raise fail(f"{temp} does not exist: nothing to apply (PrepareRollback and a receive come first)",
                       dataset=temp)
        if has_temp and await zfs.exists(origin):
            await self._save_state(zfs, origin, temp)
            await self._detach(zfs, origin, temp)
            await zfs.destroy(origin, recursive=True)
        if has_temp:
            await zfs.rename(temp, origin)
        restored = await self._restore(zfs, origin)
        return ok(restored=restored, descendants=p.relative())

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        zfs = await zfs_driver(self.ctx)
        origin = f"{self.params.pool_fs}/{self.params.dataset_name}"
        if await zfs.exists(origin + ROLLBACK_SUFFIX) or await self._marked(zfs, origin):
            return Recovery.RERUN
        return ok(note="the interrupted run had already completed the swap")

    @staticmethod
    async def _marked(zfs: Zfs, name: str) -> bool:
        if not await zfs.exists(name):
            return False
        done = (await zfs.get(name, [_MARK_DONE])).get(name, {}).get(_MARK_DONE)
        return done is not None and done.source == "local"

    async def _save_state(self, zfs: Zfs, origin: str, temp: str) -> None:
        """Marks on ``temp`` (the original's properties) and on each descendant (its canmount)."""
        for rel in self.params.relative():
            child = f"{origin}/{rel}"
            if not await zfs.exists(child):
                continue
            got = await zfs.get(child, ["canmount", _MARK_CANMOUNT])
            props = got.get(child, {})
            mark = props.get(_MARK_CANMOUNT)
            canmount = props.get("canmount")
            if (mark is None or mark.source != "local") and canmount is not None:
                value = f"local:{canmount.value}" if canmount.source == "local" else "inherit:"
                await zfs.set(child, {_MARK_CANMOUNT: value})
        if await self._marked(zfs, temp):
            return
        saved = await read_props(zfs, origin, SAVED_PROPS)
        marks = {_MARK + prop: (f"local:{pr.value}" if pr.source == "local" else "inherit:")
                 for prop, pr in saved.items()}
        if marks:
            await zfs.set(temp, marks)
        await zfs.set(temp, {_MARK_DONE: "1"})

    async def _detach(self, zfs: Zfs, origin: str, temp: str) -> None:
        """Unmount the original, canmount=off on descendants, direct children moved under ``temp``."""
        rels = self.params.relative()
        mounted = await zfs.get(origin, ["mounted"], recursive=True)
        for name in sorted(mounted, reverse=True):  # children before their parents
            state = mounted[name].get("mounted")
            if "@" not in name and state is not None and state.value == "yes":
                await zfs.unmount(name)
        for rel in reversed(rels):
            if await zfs.exists(f"{origin}/{rel}"):
                await zfs.set(f"{origin}/{rel}", {"canmount": "off"})
        for rel in rels:
            if "/" in rel:
                continue
            src, dst = f"{origin}/{rel}", f"{temp}/{rel}"
            if not await zfs.exists(src):
                continue
            if await zfs.exists(dst):
                raise fail(f"both {src} and {dst} exist; cannot move the child", dataset=src)
            await zfs.rename(src, dst)

    async def _restore(self, zfs: Zfs, origin: str) -> dict[str, str]:
        """Re-apply the saved properties, canmount and mounts, then drop the marks."""
        names = [_MARK + prop for prop in SAVED_PROPS]
        marks = (await zfs.get(origin, [*names, _MARK_DONE])).get(origin, {})
        restored: dict[str, str] = {}
        for prop in SAVED_PROPS:
            mark = marks.get(_MARK + prop)
            if mark is None or mark.source != "local":
                continue
            kind, _, value = mark.value.partition(":")
            if kind == "local":
                await zfs.set(origin, {prop: value})
                restored[prop] = value
            elif prop not in NEVER_INHERITED:
                await zfs.inherit(origin, prop)
                restored[prop] = "inherited"
        await zfs.set(origin, {"canmount": "on"})
        if await zfs.mountpoint(origin) is None:
            await zfs.mount(origin)
        for rel in self.params.relative():
            await self._restore_child(zfs, f"{origin}/{rel}")
        for name in names:
            mark = marks.get(name)
            if mark is not None and mark.source == "local":
                await zfs.inherit(origin, name)
        await zfs.inherit(origin, _MARK_DONE)
        return restored

    @staticmethod
    async def _restore_child(zfs: Zfs, child: str) -> None:
        if not await zfs.exists(child):
            return
        mark = (await zfs.get(child, [_MARK_CANMOUNT])).get(child, {}).get(_MARK_CANMOUNT)
        canmount = "on"
        if mark is not None and mark.source == "local" and mark.value.startswith("local:"):
            canmount = mark.value.partition(":")[2]
        await zfs.set(child, {"canmount": canmount})
        if canmount == "on" and await zfs.mountpoint(child) is None:
            await zfs.mount(child)
        if mark is not None and mark.source == "local":
            await zfs.inherit(child, _MARK_CANMOUNT)


# ------------------------------------------------------------------------------------------------------------
# 5212 Dataset::DestroySnapshot


@dataclass(frozen=True, slots=True)
class DestroySnapshotParams:
    pool_fs: str
    dataset_name: str
    snapshot: SnapshotRef
    tree: str | None = None
    branch: str | None = None

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.dataset_name, "dataset_name")
        if self.branch is not None:
            check_component("tree", self.tree)
            check_component("branch", self.branch)
        self.path()
        if self.confirmed():
            check_snapshot("snapshot.name", self.snapshot.name)

    def confirmed(self) -> bool:
        return self.snapshot.known_name() is not None

    def path(self) -> str:
        return dataset_path(self.pool_fs, self.dataset_name, self.tree, self.branch)


@handler(5212)
class DestroySnapshot(Handler[DestroySnapshotParams]):
    """``zfs destroy <pool_fs>/<ds>[/<tree>/<branch>]@<snap>``, the name from ``snapshots`` by id unless
    confirmed == 1. Irreversible. Idempotent: a snapshot that is already gone is fine."""

    Params = DestroySnapshotParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        p = self.params
        if p.confirmed():
            assert p.snapshot.name is not None
            name = p.snapshot.name
        else:
            row = await self.ctx.db.fetchone("SELECT name FROM snapshots WHERE id = %s", (p.snapshot.id,))
            if row is None:
                raise fail(f"snapshot {p.snapshot.id} is not in the database", snapshot_id=p.snapshot.id)
            name = check_snapshot("snapshots.name", row["name"])
        zfs = await zfs_driver(self.ctx)
        await zfs.destroy(f"{p.path()}@{name}", missing_ok=True)
        return ok(snapshot=name)


# ------------------------------------------------------------------------------------------------------------
# 5216 Dataset::Set, 5219 Dataset::Inherit


#: properties Set and Inherit refuse: a ``mountpoint`` would mount the dataset over any host path (the API's
#: editable properties, contract 7.7, never include it; found by the fuzzing of issue 9)
NOT_SETTABLE: Final = frozenset({"mountpoint", "zoned"})


def _settable(field_name: str, prop: str) -> None:
    check_prop_name(field_name, prop)
    if prop in NOT_SETTABLE:
        raise ParamError(f"{prop} cannot be set or inherited by a transaction (it would mount the dataset "
                         "elsewhere on the node)", field=field_name)


@dataclass(frozen=True, slots=True)
class SetParams:
    pool_fs: str
    name: str
    properties: dict[str, list[Any]]

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.name, "name")
        for prop, pair in self.properties.items():
            _settable(f"properties.{prop}", prop)
            if len(pair) != 2:
                raise ParamError("expected [old, new]", field=f"properties.{prop}")
            zfs_value(prop, pair[0])
            zfs_value(prop, pair[1])


async def _not_local(zfs: Zfs, path: str, props: list[str]) -> list[str]:
    current = await read_props(zfs, path, props)
    return [p for p in props if p in current and current[p].source != "local"]


async def _put_back(zfs: Zfs, path: str, values: dict[str, str], inherit: list[str]) -> None:
    """Set ``values``, but inherit the properties that were inherited before (where zfs can inherit)."""
    for prop, value in values.items():
        if prop in inherit and inheritable(prop):
            await zfs.inherit(path, prop)
        else:
            await zfs.set(path, {prop: value})


def _saved_list(raw: str | None, key: str) -> list[str] | None:
    value = json_output(raw).get(key)
    return [str(x) for x in value] if isinstance(value, list) else None


@handler(5216)
class DatasetSet(Handler[SetParams]):
    """``zfs set prop=<new>`` per property (values translated as in contract 7.7); rollback sets ``old``.

    Better than v2.0: properties that were inherited before exec are inherited again by rollback instead of
    being pinned locally (exec records them in ``t_output.inherited_before``). Idempotent."""

    Params = SetParams
    idempotent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inherited: list[str] | None = None

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        path = f"{p.pool_fs}/{p.name}"
        self._inherited = await _not_local(zfs, path, list(p.properties))
        for prop, (_old, new) in p.properties.items():
            await zfs.set(path, {prop: zfs_value(prop, new)})
        return ok(inherited_before=self._inherited)

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        inherited = self._inherited
        if inherited is None:
            inherited = _saved_list(self.transaction.t_output, "inherited_before") or []
        old = {prop: zfs_value(prop, pair[0]) for prop, pair in p.properties.items()}
        await _put_back(zfs, f"{p.pool_fs}/{p.name}", old, inherited)
        return None


@dataclass(frozen=True, slots=True)
class InheritParams:
    pool_fs: str
    name: str
    properties: dict[str, Any]

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.name, "name")
        for prop, value in self.properties.items():
            _settable(f"properties.{prop}", prop)
            zfs_value(prop, value)


@handler(5219)
class DatasetInherit(Handler[InheritParams]):
    """``zfs inherit prop`` per property; rollback sets the given current values back (properties that were
    not set locally before exec stay inherited). Idempotent."""

    Params = InheritParams
    idempotent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inherited: list[str] | None = None

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        path = f"{p.pool_fs}/{p.name}"
        self._inherited = await _not_local(zfs, path, list(p.properties))
        for prop in p.properties:
            await zfs.inherit(path, prop)
        return ok(inherited_before=self._inherited)

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        inherited = self._inherited
        if inherited is None:
            inherited = _saved_list(self.transaction.t_output, "inherited_before") or []
        values = {prop: zfs_value(prop, v) for prop, v in p.properties.items()}
        await _put_back(zfs, f"{p.pool_fs}/{p.name}", values, inherited)
        return None


# ------------------------------------------------------------------------------------------------------------
# 5217 Dataset::CloneSnapshot, 5218 Dataset::RemoveClone, 5224 Dataset::CloneSnapshotName


@dataclass(frozen=True, slots=True)
class CloneParams:
    pool_fs: str
    dataset_name: str
    snapshot_id: int
    snapshot: str
    dataset_tree: str | None = None
    branch: str | None = None

    def __post_init__(self) -> None:
        _check_ds(self.pool_fs, self.dataset_name, "dataset_name")
        check_snapshot("snapshot", self.snapshot)
        if self.branch is not None:
            check_component("dataset_tree", self.dataset_tree)
            check_component("branch", self.branch)
        self.source()
        mount_clone_path(self.pool_fs, self.snapshot_id)

    def source(self) -> str:
        """``<pool_fs>/<ds>[/<dataset_tree>/<branch>]@<snapshot>``."""
        if self.branch is not None and self.dataset_tree is None:
            raise ParamError("a branch needs its dataset_tree", field="dataset_tree")
        return dataset_path(self.pool_fs, self.dataset_name, self.dataset_tree, self.branch) + "@" + self.snapshot

    def target(self) -> str:
        return mount_clone_path(self.pool_fs, self.snapshot_id)


@handler(5217)
class CloneSnapshot(Handler[CloneParams]):
    """``zfs clone <source>@<snap> <pool_fs>/vpsadmin/mount/<snapshot_id>.snapshot``; rollback destroys the
    clone. Idempotent: an existing clone of the same snapshot is accepted."""

    Params = CloneParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        made = await ensure_clone(zfs, self.params.source(), self.params.target())
        return None if made else ok(existed=True)

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        await zfs.destroy(self.params.target(), missing_ok=True)
        return None


@handler(5218)
class RemoveClone(Handler[CloneParams]):
    """Destroys the snapshot clone; rollback clones it again from the same source, including
    ``dataset_tree``/``branch`` on backup pools (v2.0 forgot them, contract 12.7). Idempotent both ways."""

    Params = CloneParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        await zfs.destroy(self.params.target(), missing_ok=True)
        return None

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        await ensure_clone(zfs, self.params.source(), self.params.target())
        return None


_SNAPSHOT_ID: Final = re.compile(r"[1-9][0-9]{0,9}")
_INT_MAX: Final = 2**31 - 1  # snapshots.id is INT(11)


@dataclass(frozen=True, slots=True)
class CloneSnapshotNameParams:
    snapshots: dict[str, list[Any]]

    def __post_init__(self) -> None:
        for key, pair in self.snapshots.items():
            where = f"snapshots.{key:.40}"
            # ASCII digits within snapshots.id (INT): str.isdigit() also takes "²" and "١", which int() refuses,
            # and a number beyond INT is no row of ours (MySQL would truncate it)
            if not _SNAPSHOT_ID.fullmatch(key) or int(key) > _INT_MAX:
                raise ParamError(f"expected a snapshot id (1-{_INT_MAX}) as the key", field=where)
            if len(pair) != 2 or not (pair[0] is None or isinstance(pair[0], str)) \
                    or type(pair[1]) is not int or not 1 <= pair[1] <= _INT_MAX:
                raise ParamError(f"expected [old_name, new_snapshot_id (1-{_INT_MAX})]", field=where)


@handler(5224)
class CloneSnapshotName(Handler[CloneSnapshotNameParams]):
    """DB only: copies the names of the original snapshots onto their copies (``snapshots: {orig_id:
    [old_name, new_id]}``); rollback writes the old names back. Idempotent."""

    Params = CloneSnapshotNameParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        items = self.params.snapshots
        if not items:
            return None
        async with self.ctx.db.transaction() as tx:
            ids = [int(k) for k in items]
            rows = await tx.fetchall("SELECT id, name FROM snapshots WHERE id IN ("
                                     + ", ".join(["%s"] * len(ids)) + ")", ids)
            for row in rows:
                await tx.execute("UPDATE snapshots SET name = %s WHERE id = %s",
                                 (row["name"], items[str(row["id"])][1]))
        return ok(copied=len(rows))

    async def rollback(self) -> Outcome | None:
        async with self.ctx.db.transaction() as tx:
            for old, new_id in self.params.snapshots.values():
                if old is not None:
                    await tx.execute("UPDATE snapshots SET name = %s WHERE id = %s", (old, new_id))
        return None
