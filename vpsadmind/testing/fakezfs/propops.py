"""zfs set / inherit / hold / release / holds / mount / unmount / upgrade."""

from __future__ import annotations

import os
import sys

from vpsadmind.testing.fakezfs import props as P
from vpsadmind.testing.fakezfs import state as S
from vpsadmind.testing.fakezfs.dsops import destroy_snapshot_data, fault, open_existing
from vpsadmind.testing.fakezfs.errors import CmdError, FakeZfsError, UsageError, cannot_open
from vpsadmind.testing.fakezfs.names import pool_of
from vpsadmind.testing.fakezfs.opts import getopt
from vpsadmind.testing.fakezfs.space import Usage
from vpsadmind.testing.fakezfs.state import PoolState, Store

__all__ = ["cmd_set", "cmd_inherit", "cmd_hold", "cmd_release", "cmd_holds", "cmd_mount", "cmd_unmount",
           "cmd_upgrade"]

_REMOUNT = frozenset({"mountpoint", "canmount"})


def _each(names: list[str], action: object) -> int:
    """Run ``action(name)`` for every operand; errors are printed and turn the exit code to 1, as zfs does."""
    rc = 0
    for name in names:
        try:
            action(name)  # type: ignore[operator]
        except FakeZfsError as exc:
            sys.stderr.write(exc.message + "\n")
            rc = max(rc, exc.rc)
    return rc


# -- set -----------------------------------------------------------------------------------------------------------
def _check_set(store: Store, ps: PoolState, target: str, key: str, value: str) -> tuple[str, str]:
    """Validate ``key=value`` for ``target``; returns (property name, stored value) or raises zfs's message."""
    if P.is_user_prop(key):
        if len(value) > 8191:
            raise CmdError("property value too long")
        return key, value
    pdef = P.lookup(key)
    if pdef is None:
        raise CmdError(f"invalid property '{key}'")
    if not pdef.editable:
        raise CmdError(f"'{pdef.name}' is readonly")
    if "@" in target or not pdef.types & P.FS:
        raise CmdError("this property can not be modified for snapshots")
    stored = P.parse_value(pdef, value)
    if pdef.name in ("quota", "refquota") and stored != "0":
        usage = Usage(store, ps)
        current = usage.used(target) if pdef.name == "quota" else usage.referenced(target)
        if int(stored) < current:
            raise CmdError("size is less than current used or reserved space")
    return pdef.name, stored


def cmd_set(store: Store, args: list[str]) -> int:
    _, operands = getopt(args, "", "set")
    if not operands:
        raise UsageError("missing property=value argument", "set")
    if len(operands) == 1:
        raise UsageError("missing dataset name", "set")
    key, _, value = operands[0].partition("=")
    if not value:
        raise UsageError("missing value in property=value argument", "set")

    def apply(target: str) -> None:
        pool = open_existing(store, target)
        with store.open_pool(pool, write=True) as ps:
            _require_any(ps, target)
            try:
                name, stored = _check_set(store, ps, target, key, value)
            except CmdError as exc:
                raise CmdError(f"cannot set property for '{target}': {exc.message}") from None
            fault(store, "set", [target], f"cannot set property for '{target}'")
            _store(store, ps, target, name, stored)

    return _each(operands[1:], apply)


def _require_any(ps: PoolState, name: str) -> None:
    if (ps.snap(name) if "@" in name else ps.fs(name)) is None:
        raise cannot_open(name)


def _store(store: Store, ps: PoolState, target: str, name: str, stored: str | None) -> None:
    """Set (or with None, remove) the local value of a property, remounting around mountpoint/canmount."""
    if "@" in target:
        found = ps.snap(target)
        assert found is not None
        table, received = found[1].props, found[1].received
    else:
        table, received = ps.datasets[target].props, ps.datasets[target].received
    if name in received:
        received.remove(name)
    if name not in _REMOUNT or "@" in target:
        _put(table, name, stored)
        return
    with S.remounting(store, ps, target):
        _put(table, name, stored)


def _put(table: dict[str, str], name: str, stored: str | None) -> None:
    if stored is None:
        table.pop(name, None)
    else:
        table[name] = stored


# -- inherit -------------------------------------------------------------------------------------------------------
def _check_inherit(prop: str) -> str:
    if P.is_user_prop(prop):
        return prop
    pdef = P.lookup(prop)
    if pdef is None:
        raise UsageError(f"invalid property '{prop}'", "inherit")
    if pdef.readonly:
        raise CmdError(f"{prop} property is read-only")
    if not pdef.inherit:
        raise CmdError(f"'{prop}' property cannot be inherited\nuse 'zfs set {prop}=none' to clear")
    return pdef.name


def cmd_inherit(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "rS", "inherit")
    if not operands:
        raise UsageError("missing property argument", "inherit")
    if len(operands) == 1:
        raise UsageError("missing dataset argument", "inherit")
    flags = {o for o, _ in opts}
    prop = _check_inherit(operands[0])

    def apply(target: str) -> None:
        pool = open_existing(store, target)
        with store.open_pool(pool, write=True) as ps:
            _require_any(ps, target)
            if "@" in target and not P.is_user_prop(prop):
                raise CmdError(f"cannot inherit {prop} for '{target}': this property can not be modified "
                               "for snapshots")
            fault(store, "inherit", [target], f"cannot inherit {prop} for '{target}'")
            scope = [target]
            if "r" in flags and "@" not in target:
                scope += ps.descendants(target)
                if P.is_user_prop(prop):
                    scope += [f"{fs}@{s}" for fs in [target, *ps.descendants(target)] for s in ps.datasets[fs].snaps]
            for name in scope:
                if "S" in flags and "@" not in name and prop in ps.datasets[name].received:
                    continue
                _store(store, ps, name, prop, None)

    return _each(operands[1:], apply)


# -- holds ---------------------------------------------------------------------------------------------------------
def _hold_scope(ps: PoolState, snap: str, recursive: bool) -> list[str]:
    fsname, _, snapname = snap.partition("@")
    if not recursive:
        return [snap]
    return [f"{fs}@{snapname}" for fs in [fsname, *ps.descendants(fsname)] if snapname in ps.datasets[fs].snaps]


def cmd_hold(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "r", "hold")
    if len(operands) < 2:
        raise UsageError("", "hold")
    tag, recursive = operands[0], any(o == "r" for o, _ in opts)

    def apply(snap: str) -> None:
        if "@" not in snap:
            raise CmdError(f"'{snap}' is not a snapshot")
        if not store.exists(pool_of(snap)):
            raise CmdError(f"cannot hold '{snap}': dataset does not exist")
        with store.open_pool(pool_of(snap), write=True) as ps:
            if ps.snap(snap) is None:
                raise CmdError(f"cannot hold '{snap}': dataset does not exist")
            scope = _hold_scope(ps, snap, recursive)
            for name in scope:
                found = ps.snap(name)
                if found and tag in found[1].holds:
                    raise CmdError(f"cannot hold '{name}': tag already exists on this dataset")
            fault(store, "hold", scope, f"cannot hold '{snap}'")
            for name in scope:
                found = ps.snap(name)
                assert found is not None
                found[1].holds.append(tag)

    return _each(operands[1:], apply)


def cmd_release(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "r", "release")
    if len(operands) < 2:
        raise UsageError("", "release")
    tag, recursive = operands[0], any(o == "r" for o, _ in opts)

    def apply(snap: str) -> None:
        if "@" not in snap:
            raise CmdError(f"'{snap}' is not a snapshot")
        if not store.exists(pool_of(snap)):
            raise CmdError(f"cannot release '{tag}' from '{snap}': dataset does not exist")
        with store.open_pool(pool_of(snap), write=True) as ps:
            if ps.snap(snap) is None:
                raise CmdError(f"cannot release '{tag}' from '{snap}': dataset does not exist")
            scope = _hold_scope(ps, snap, recursive)
            for name in scope:
                found = ps.snap(name)
                if found is None or tag not in found[1].holds:
                    raise CmdError(f"cannot release '{tag}' from '{name}': no such tag on this dataset")
            fault(store, "release", scope, f"cannot release '{tag}' from '{snap}'")
            for name in scope:
                found = ps.snap(name)
                assert found is not None
                found[1].holds.remove(tag)
                if found[1].defer_destroy and not found[1].holds and not ps.clones_of(found[1].id):
                    destroy_snapshot_data(ps, name)

    return _each(operands[1:], apply)


def cmd_holds(store: Store, args: list[str]) -> int:
    """zfs-fuse ships ``zfs holds`` without the Solaris helper it needs: this is what it prints."""
    del store, args
    sys.stdout.write("internal error: /usr/lib/zfs/pyzfs.py not found\n")
    return 255


# -- mount / unmount -----------------------------------------------------------------------------------------------
def _all_fs(store: Store) -> list[tuple[str, str]]:
    return [(pool, name) for pool in store.pool_names() for name in sorted((store.read_pool(pool) or
                                                                            _EMPTY).datasets)]


_EMPTY = PoolState("", 0, 0, [])


def cmd_mount(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "vOo:a", "mount")
    if any(o == "a" for o, _ in opts):
        return _each([name for _, name in _all_fs(store)], lambda n: _mount_one(store, n, quiet=True))
    if not operands:
        for pool in store.pool_names():
            ps = store.read_pool(pool) or _EMPTY
            for name in sorted(ps.datasets):
                if ps.datasets[name].mounted:
                    sys.stdout.write(f"{name:<30}  {ps.mountpoint(name)[0]}\n")
        return 0
    if len(operands) > 1:
        raise UsageError("too many arguments", "mount")
    _mount_one(store, operands[0], quiet=False)
    return 0


def _mount_one(store: Store, name: str, *, quiet: bool) -> None:
    pool = open_existing(store, name)
    with store.open_pool(pool, write=True) as ps:
        if "@" in name or ps.fs(name) is None:
            raise cannot_open(name, "operation not applicable to datasets of this type" if ps.snap(name)
                              else "dataset does not exist")
        rec = ps.datasets[name]
        if quiet and (rec.mounted or not ps.can_automount(name)):
            return
        if ps.value(name, "canmount") == "off":
            raise CmdError(f"cannot mount '{name}': 'canmount' property is set to 'off'")
        fault(store, "mount", [name], f"cannot mount '{name}'")
        S.mount(store, ps, name)


def cmd_unmount(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "fa", "unmount")
    if any(o == "a" for o, _ in opts):
        names = [name for _, name in _all_fs(store)]
        return _each(sorted(names, reverse=True), lambda n: _unmount_one(store, n, quiet=True))
    if not operands:
        raise UsageError("missing filesystem argument", "unmount")
    if len(operands) > 1:
        raise UsageError("too many arguments", "unmount")
    _unmount_one(store, operands[0], quiet=False)
    return 0


def _unmount_one(store: Store, name: str, *, quiet: bool) -> None:
    if name.startswith("/"):
        found = store.mount_table().get(os.path.realpath(name))
        if found is None:
            reason = "not a mountpoint" if os.path.exists(name) else "No such file or directory"
            raise CmdError(f"cannot unmount '{name}': {reason}")
        name = found
    pool = open_existing(store, name)
    with store.open_pool(pool, write=True) as ps:
        if "@" in name or ps.fs(name) is None:
            raise cannot_open(name, "operation not applicable to datasets of this type" if ps.snap(name)
                              else "dataset does not exist")
        if not ps.datasets[name].mounted:
            if quiet:
                return
            raise CmdError(f"cannot unmount '{name}': not currently mounted")
        fault(store, "unmount", [name], f"cannot unmount '{name}'")
        S.unmount(store, ps, name)


_VERSIONS = """The following filesystem versions are supported:

VER  DESCRIPTION
---  --------------------------------------------------------
 1   Initial ZFS filesystem version
 2   Enhanced directory entries
 3   Case insensitive and File system unique identifier (FUID)
 4   userquota, groupquota properties

For more information on a particular version, including supported releases, see:

http://www.opensolaris.org/os/community/zfs/version/zpl/N

Where 'N' is the version number.
"""


def cmd_upgrade(store: Store, args: list[str]) -> int:
    opts, _ = getopt(args, "vraV:", "upgrade")
    del store
    if any(o == "v" for o, _ in opts):
        sys.stdout.write(_VERSIONS)
    else:
        sys.stdout.write("This system is currently running ZFS filesystem version 4.\n\n"
                         "All filesystems are formatted with the current version.\n")
    return 0
