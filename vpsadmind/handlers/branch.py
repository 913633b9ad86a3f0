"""Trees and branches of backup datasets (contract 5.4, 7.4): ``<pool_fs>/<ds>/<tree>/<branch>``.

A history break makes a new tree (5213); a rollback to a snapshot S inside branch B makes a new head branch by
cloning ``B@S`` and promoting the clone (5206), after which ZFS keeps the snapshots <= S in the new branch and
B keeps the newer ones, now depending on ``new@S``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Handler, Outcome, handler, ok
from vpsadmind.handlers.storage_common import (
    check_component,
    check_dataset,
    check_relative,
    check_snapshot,
    dataset_path,
    ensure_clone,
    fail,
    read_props,
    zfs_driver,
)
from vpsadmind.zfs.errors import DatasetExists

if TYPE_CHECKING:
    from vpsadmind.zfs.driver import Zfs

__all__ = ["BranchCreate", "BranchDestroy", "TreeCreate", "TreeDestroy"]


async def _origin(zfs: Zfs, name: str) -> str | None:
    """The ``origin`` snapshot of ``name``, or None for a dataset that is not a clone."""
    origin = (await read_props(zfs, name, ["origin"])).get("origin")
    if origin is None or origin.value in ("", "-"):
        return None
    return origin.value


async def _create_filesystem(zfs: Zfs, name: str) -> bool:
    """``zfs create name``; an existing filesystem is accepted (a re-run). Returns whether it was made."""
    try:
        await zfs.create(name)
    except DatasetExists:
        kind = (await read_props(zfs, name, ["type"])).get("type")
        if kind is not None and kind.value != "filesystem":
            raise fail(f"{name} already exists and is a {kind.value}", dataset=name) from None
        return False
    return True


# ------------------------------------------------------------------------------------------------------------
# 5206 Branch::Create, 5207 Branch::Destroy


@dataclass(frozen=True, slots=True)
class BranchCreateParams:
    pool_fs: str
    dataset_name: str
    tree: str
    new_branch_name: str
    from_branch_name: str | None = None
    from_snapshot: str | None = None

    def __post_init__(self) -> None:
        check_dataset("pool_fs", self.pool_fs)
        check_relative("dataset_name", self.dataset_name)
        check_component("tree", self.tree)
        check_component("new_branch_name", self.new_branch_name)
        dataset_path(self.pool_fs, self.dataset_name, self.tree, self.new_branch_name, field_name="new_branch_name")
        if self.from_branch_name is not None:
            check_component("from_branch_name", self.from_branch_name)
            check_snapshot("from_snapshot", self.from_snapshot)
            dataset_path(self.pool_fs, self.dataset_name, self.tree, self.from_branch_name,
                         field_name="from_branch_name")
            if self.from_branch_name == self.new_branch_name:
                raise ParamError("must differ from new_branch_name", field="from_branch_name")

    def branch(self, name: str) -> str:
        return f"{self.pool_fs}/{self.dataset_name}/{self.tree}/{name}"


@handler(5206)
class BranchCreate(Handler[BranchCreateParams]):
    """With ``from_branch_name``: ``zfs clone <from>@<snap> <new>`` then ``zfs promote <new>``; otherwise
    ``zfs create <new>``. Rollback promotes the old branch back (so it gets its snapshots again) and destroys
    the new one.

    Idempotent: exec looks at where the interrupted run stopped (new branch missing, cloned but not promoted,
    or promoted) and does only what is left; rollback likewise."""

    Params = BranchCreateParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        new = p.branch(p.new_branch_name)
        if p.from_branch_name is None:
            made = await _create_filesystem(zfs, new)
            return None if made else ok(existed=True)
        old = p.branch(p.from_branch_name)
        source = f"{old}@{p.from_snapshot}"
        if await zfs.exists(new) and await _origin(zfs, old) == f"{new}@{p.from_snapshot}":
            return ok(existed=True, note="already cloned and promoted")
        await ensure_clone(zfs, source, new)
        await zfs.promote(new)
        return ok(origin=source)

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        new = p.branch(p.new_branch_name)
        if not await zfs.exists(new):
            return ok(note="the new branch does not exist")
        if p.from_branch_name is not None:
            old = p.branch(p.from_branch_name)
            if await zfs.exists(old) and (await _origin(zfs, old) or "").startswith(new + "@"):
                await zfs.promote(old)
        await zfs.destroy(new)
        return None


@dataclass(frozen=True, slots=True)
class BranchParams:
    pool_fs: str
    dataset_name: str
    tree: str
    branch: str

    def __post_init__(self) -> None:
        check_dataset("pool_fs", self.pool_fs)
        check_relative("dataset_name", self.dataset_name)
        check_component("tree", self.tree)
        check_component("branch", self.branch)
        dataset_path(self.pool_fs, self.dataset_name, self.tree, self.branch, field_name="branch")


@handler(5207)
class BranchDestroy(Handler[BranchParams]):
    """``zfs destroy <pool_fs>/<ds>/<tree>/<branch>`` (not recursive: the API destroys a branch once it has
    no snapshots left). Irreversible. Idempotent: a branch that is already gone is fine."""

    Params = BranchParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        p = self.params
        await zfs.destroy(dataset_path(p.pool_fs, p.dataset_name, p.tree, p.branch), missing_ok=True)
        return None


# ------------------------------------------------------------------------------------------------------------
# 5213 DatasetTree::Create, 5214 DatasetTree::Destroy


@dataclass(frozen=True, slots=True)
class TreeParams:
    pool_fs: str
    dataset_name: str
    tree: str

    def __post_init__(self) -> None:
        check_dataset("pool_fs", self.pool_fs)
        check_relative("dataset_name", self.dataset_name)
        check_component("tree", self.tree)
        check_dataset("tree", self.path())

    def path(self) -> str:
        return f"{self.pool_fs}/{self.dataset_name}/{self.tree}"


@handler(5213)
class TreeCreate(Handler[TreeParams]):
    """``zfs create <pool_fs>/<ds>/<tree>``; rollback destroys it. Idempotent: an existing tree is accepted."""

    Params = TreeParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        made = await _create_filesystem(zfs, self.params.path())
        return None if made else ok(existed=True)

    async def rollback(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        await zfs.destroy(self.params.path(), missing_ok=True)
        return None


@handler(5214)
class TreeDestroy(Handler[TreeParams]):
    """``zfs destroy <pool_fs>/<ds>/<tree>`` (not recursive: its branches are destroyed first). Irreversible.
    Idempotent: a tree that is already gone is fine."""

    Params = TreeParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        zfs = await zfs_driver(self.ctx)
        await zfs.destroy(self.params.path(), missing_ok=True)
        return None
