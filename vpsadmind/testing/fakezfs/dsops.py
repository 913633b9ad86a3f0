"""Dataset life cycle: create, destroy, snapshot, rollback, clone, promote, rename (zfs-fuse's checks and messages)."""

from __future__ import annotations

import shutil
import time

from vpsadmind.testing.fakezfs import faults, fsdata
from vpsadmind.testing.fakezfs import props as P
from vpsadmind.testing.fakezfs import state as S
from vpsadmind.testing.fakezfs.errors import Busy, CmdError, NoSpace, UsageError, cannot_open
from vpsadmind.testing.fakezfs.names import check_dataset, is_descendant, parent_of, pool_of
from vpsadmind.testing.fakezfs.opts import getopt
from vpsadmind.testing.fakezfs.space import OVERHEAD
from vpsadmind.testing.fakezfs.state import PoolState, Store

__all__ = ["cmd_create", "cmd_destroy", "cmd_snapshot", "cmd_rollback", "cmd_clone", "cmd_promote", "cmd_rename",
           "fault", "take_snapshot", "parse_o", "validate_props", "open_existing", "mount_new",
           "destroy_snapshot_data", "destroy_fs_data"]

_NOT_APPLICABLE = "operation not applicable to datasets of this type"


# -- shared helpers ------------------------------------------------------------------------------------------------
def fault(store: Store, verb: str, names: list[str], prefix: str) -> None:
    """Fire an injected busy/nospace fault for this command, if one matches."""
    hit = faults.take(store.root, ("busy", "nospace"), verb, names)
    if hit is not None:
        raise Busy(f"{prefix}: dataset is busy") if hit.kind == "busy" else NoSpace(f"{prefix}: out of space")


def parse_o(pairs: list[str]) -> list[tuple[str, str]]:
    """``-o k=v`` arguments (zfs checks the '=' and duplicates before anything else)."""
    out: list[tuple[str, str]] = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise CmdError("missing '=' for -o option")
        if any(k == key for k, _ in out):
            raise CmdError(f"property '{key}' specified multiple times")
        out.append((key, value))
    return out


def validate_props(pairs: list[tuple[str, str]], prefix: str) -> dict[str, str]:
    """Check ``-o`` properties of a new filesystem; returns what to store (native names, sizes in bytes)."""
    result: dict[str, str] = {}
    for key, value in pairs:
        if P.is_user_prop(key):
            result[key] = value
            continue
        pdef = P.lookup(key)
        if pdef is None or not pdef.types & P.FS:
            raise CmdError(f"{prefix}: invalid property '{key}'")
        if pdef.readonly:
            raise CmdError(f"{prefix}: '{pdef.name}' is readonly")
        try:
            result[pdef.name] = P.parse_value(pdef, value)
        except CmdError as exc:
            raise CmdError(f"{prefix}: {exc.message}") from None
    return result


def open_existing(store: Store, name: str) -> str:
    """The pool of an existing dataset name, or the "cannot open" error zfs gives."""
    if check_dataset(name, snapshot=None) is not None:
        raise cannot_open(name, "invalid dataset name")
    pool = pool_of(name)
    if not store.exists(pool):
        raise cannot_open(name)
    return pool


def _require_fs(ps: PoolState, name: str) -> None:
    if "@" in name:
        raise cannot_open(name, _NOT_APPLICABLE if ps.snap(name) else "dataset does not exist")
    if ps.fs(name) is None:
        raise cannot_open(name)


def _require_snap(ps: PoolState, name: str) -> None:
    if "@" not in name:
        raise cannot_open(name, _NOT_APPLICABLE if ps.fs(name) else "dataset does not exist")
    if ps.snap(name) is None:
        raise cannot_open(name)


def mount_new(store: Store, ps: PoolState, name: str) -> str | None:
    """Mount a newly created filesystem if it should be; returns zfs's message when that fails."""
    if not ps.can_automount(name):
        return None
    try:
        S.mount(store, ps, name)
    except CmdError as exc:
        return f"{exc.message}\nfilesystem successfully created, but not mounted"
    return None


def _create_parents(store: Store, ps: PoolState, name: str) -> None:
    missing: list[str] = []
    current = parent_of(name)
    while current and current not in ps.datasets:
        missing.append(current)
        current = parent_of(current)
    for parent in reversed(missing):
        ps.new_fs(parent, {}, ps.next_txg())
        mount_new(store, ps, parent)


def _check_parent(store: Store, ps: PoolState, name: str, parents: bool) -> None:
    if parent_of(name) in ps.datasets:
        return
    if not parents:
        raise CmdError(f"cannot create '{name}': parent does not exist")
    _create_parents(store, ps, name)


# -- create --------------------------------------------------------------------------------------------------------
def cmd_create(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "po:b:sV:", "create", missing="missing size argument")
    if any(o == "V" for o, _ in opts):
        raise CmdError("internal error: Function not implemented", 134)
    if not operands:
        raise UsageError("missing filesystem argument", "create")
    if len(operands) > 1:
        raise UsageError("too many arguments", "create")
    name, parents = operands[0], any(o == "p" for o, _ in opts)
    pairs = parse_o([v for o, v in opts if o == "o"])
    prefix = f"cannot create '{name}'"
    reason = check_dataset(name, snapshot=False)
    if reason:
        raise CmdError(f"{prefix}: {reason}")
    pool = pool_of(name)
    if not store.exists(pool):
        raise CmdError(f"{prefix}: no such pool '{pool}'")
    if "/" not in name:
        raise CmdError(f"{prefix}: missing dataset name")
    props = validate_props(pairs, prefix)
    late_error = None
    with store.open_pool(pool, write=True) as ps:
        if name in ps.datasets:
            if parents:
                return 0
            raise CmdError(f"{prefix}: dataset already exists")
        if parent_of(name) not in ps.datasets and not parents:
            raise CmdError(f"{prefix}: parent does not exist")
        fault(store, "create", [name], prefix)
        _check_parent(store, ps, name, parents)
        ps.new_fs(name, props, ps.next_txg())
        late_error = mount_new(store, ps, name)
    if late_error:
        raise CmdError(late_error)
    return 0


# -- destroy -------------------------------------------------------------------------------------------------------
def _dependents(ps: PoolState, name: str) -> list[str]:
    """Everything below a filesystem, in the order zfs lists it: snapshots, then each child's subtree."""
    out = [f"{name}@{s}" for s, _ in ps.datasets[name].ordered_snaps()]
    for child in ps.children(name):
        out.extend(_dependents(ps, child))
        out.append(child)
    return out


def _subtree_postorder(ps: PoolState, name: str) -> list[str]:
    """A filesystem and all that depends on it, dependents first: clones of a snapshot before the snapshot."""
    out: list[str] = []
    for snapname, srec in ps.datasets[name].ordered_snaps():
        for clone in ps.clones_of(srec.id):
            out.extend(_subtree_postorder(ps, clone))
        out.append(f"{name}@{snapname}")
    for child in ps.children(name):
        out.extend(_subtree_postorder(ps, child))
    out.append(name)
    return out


def _clone_closure(ps: PoolState, doomed: list[str]) -> list[str]:
    """Clones of snapshots in ``doomed`` (with everything depending on them) that are not doomed themselves."""
    seen = set(doomed)
    extra: list[str] = []
    for item in doomed:
        found = ps.snap(item) if "@" in item else None
        for clone in ps.clones_of(found[1].id) if found else []:
            for dependent in _subtree_postorder(ps, clone):
                if dependent not in seen:
                    seen.add(dependent)
                    extra.append(dependent)
    return extra


def destroy_snapshot_data(ps: PoolState, full: str) -> None:
    rec, srec = ps.snap(full) or (None, None)
    if rec is None or srec is None:
        return
    del rec.snaps[full.partition("@")[2]]
    shutil.rmtree(ps.snap_dir(srec.id), ignore_errors=True)
    ps.manifest_path(srec.id).unlink(missing_ok=True)


def destroy_fs_data(store: Store, ps: PoolState, name: str) -> None:
    rec = ps.datasets[name]
    mountpoint = ps.mountpoint(name)[0]
    if rec.mounted:
        S.unmount(store, ps, name)
        S.remove_mountpoint(mountpoint)
    for snapname in list(rec.snaps):
        destroy_snapshot_data(ps, f"{name}@{snapname}")
    shutil.rmtree(ps.data_dir(rec.id), ignore_errors=True)
    ps.partial_path(rec.id).unlink(missing_ok=True)          # bytes of an interrupted ``recv -s``, if any
    del ps.datasets[name]


def _destroy_all(store: Store, ps: PoolState, doomed: list[str]) -> None:
    for item in doomed:
        found = ps.snap(item) if "@" in item else None
        if found and found[1].holds:
            raise Busy(f"cannot destroy '{item}': dataset is busy")
    fs_items = sorted((n for n in doomed if "@" not in n and n in ps.datasets), key=lambda n: -n.count("/"))
    for name in fs_items:
        if ps.datasets[name].mounted:
            S.unmount(store, ps, name)
    for item in doomed:
        if "@" in item:
            destroy_snapshot_data(ps, item)
    for name in fs_items:
        destroy_fs_data(store, ps, name)


def cmd_destroy(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "rRfd", "destroy")
    if not operands:
        raise UsageError("missing path argument", "destroy")
    if len(operands) > 1:
        raise UsageError("too many arguments", "destroy")
    flags = {o for o, _ in opts}
    name = operands[0]
    if "@" in name:
        return _destroy_snapshot(store, name, flags)
    pool = open_existing(store, name)
    with store.open_pool(pool, write=True) as ps:
        _require_fs(ps, name)
        if name == pool and not flags & {"r", "R"}:
            raise CmdError(f"cannot destroy '{name}': operation does not apply to pools\n"
                           f"use 'zfs destroy -r {name}' to destroy all datasets in the pool\n"
                           f"use 'zpool destroy {name}' to destroy the pool itself")
        doomed = _dependents(ps, name)
        if doomed and not flags & {"r", "R"}:
            raise CmdError(f"cannot destroy '{name}': filesystem has children\n"
                           "use '-r' to destroy the following datasets:\n" + "\n".join(doomed))
        clones = _clone_closure(ps, [*doomed, name])
        if clones and "R" not in flags:
            raise CmdError(f"cannot destroy '{name}': filesystem has dependent clones\n"
                           "use '-R' to destroy the following datasets:\n" + "\n".join(clones))
        fault(store, "destroy", [name], f"cannot destroy '{name}'")
        _destroy_all(store, ps, [*clones, *doomed] + ([] if name == pool else [name]))
    return 0


def _destroy_snapshot(store: Store, name: str, flags: set[str]) -> int:
    recursive = bool(flags & {"r", "R"})
    missing = (CmdError(f"cannot destroy '{name}': dataset does not exist\nno snapshots destroyed") if recursive
               else cannot_open(name))
    if check_dataset(name, snapshot=True) is not None or not store.exists(pool_of(name)):
        raise missing
    fsname, _, snapname = name.partition("@")
    with store.open_pool(pool_of(name), write=True) as ps:
        if fsname not in ps.datasets:
            raise missing
        scope = [fsname, *ps.descendants(fsname)] if recursive else [fsname]
        targets = [f"{fs}@{snapname}" for fs in scope if snapname in ps.datasets[fs].snaps]
        if not targets:
            raise missing
        clones = _clone_closure(ps, targets)
        if clones and "R" not in flags and "d" not in flags:
            raise CmdError(f"cannot destroy '{targets[0]}': snapshot has dependent clones\n"
                           "use '-R' to destroy the following datasets:\n" + "\n".join(clones))
        fault(store, "destroy", targets, f"cannot destroy '{name}'")
        if "d" in flags:
            targets = _defer(ps, targets)
            clones = []
        _destroy_all(store, ps, [*clones, *targets])
    return 0


def _defer(ps: PoolState, targets: list[str]) -> list[str]:
    """``destroy -d``: held snapshots are marked for destruction on their last release; the rest go now."""
    now: list[str] = []
    for target in targets:
        found = ps.snap(target)
        if found and (found[1].holds or ps.clones_of(found[1].id)):
            found[1].defer_destroy = True
        else:
            now.append(target)
    return now


# -- snapshot ------------------------------------------------------------------------------------------------------
def take_snapshot(store: Store, ps: PoolState, fsname: str, snapname: str, txg: int,
                  props: dict[str, str]) -> S.SnapRec:
    """Freeze a copy of the filesystem's contents as ``fsname@snapname``."""
    rec = ps.datasets[fsname]
    live = ps.live_dir(fsname)
    skip = store.nested_mounts(ps, live) if rec.mounted else frozenset()
    srec = S.SnapRec(id=ps.new_id(), guid=S.new_guid(), createtxg=txg, creation=int(time.time()), props=props)
    target = ps.snap_dir(srec.id)
    target.parent.mkdir(parents=True, exist_ok=True)
    rec.clean_fp = fsdata.fingerprint(fsdata.scan(live, skip))
    fsdata.copy_tree(live, target, skip)
    manifest = fsdata.scan(target)
    fsdata.write_manifest(ps.manifest_path(srec.id), manifest)
    srec.referenced = fsdata.tree_bytes(manifest) + OVERHEAD
    rec.snaps[snapname] = srec
    return srec


def cmd_snapshot(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "ro:", "snapshot")
    if not operands:
        raise UsageError("missing snapshot argument", "snapshot")
    if len(operands) > 1:
        raise UsageError("too many arguments", "snapshot")
    name, recursive = operands[0], any(o == "r" for o, _ in opts)
    pairs = parse_o([v for o, v in opts if o == "o"])
    tail = "\nno snapshots were created" if recursive else ""
    reason = check_dataset(name, snapshot=True)
    if reason:
        raise CmdError(f"cannot snapshot '{name}': {reason}")
    if any(not P.is_user_prop(k) for k, _ in pairs):
        raise CmdError(f"cannot snapshot '{name}': this property can not be modified for snapshots")
    fsname, _, snapname = name.partition("@")
    if not store.exists(pool_of(name)):
        raise CmdError(f"cannot open '{fsname}': dataset does not exist{tail}")
    with store.open_pool(pool_of(name), write=True) as ps:
        if fsname not in ps.datasets:
            raise CmdError(f"cannot open '{fsname}': dataset does not exist{tail}")
        scope = [fsname, *ps.descendants(fsname)] if recursive else [fsname]
        for fs in scope:
            if snapname in ps.datasets[fs].snaps:
                raise CmdError(f"cannot create snapshot '{fs}@{snapname}': dataset already exists{tail}")
        fault(store, "snapshot", [f"{fs}@{snapname}" for fs in scope], f"cannot create snapshot '{name}'")
        txg = ps.next_txg()
        for fs in scope:
            take_snapshot(store, ps, fs, snapname, txg, dict(pairs))
    return 0


# -- rollback ------------------------------------------------------------------------------------------------------
def restore(store: Store, ps: PoolState, fsname: str, snap_id: int) -> None:
    """Make the filesystem's contents equal to a snapshot's (nested mountpoints are left alone)."""
    live = ps.live_dir(fsname)
    keep = store.nested_mounts(ps, live) if ps.datasets[fsname].mounted else frozenset()
    fsdata.clear_tree(live, keep)
    fsdata.copy_tree(ps.snap_dir(snap_id), live, into=True, keep=keep)
    ps.datasets[fsname].clean_fp = fsdata.fingerprint(fsdata.scan(live, keep))


def cmd_rollback(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "rRf", "rollback")
    if not operands:
        raise UsageError("missing dataset argument", "rollback")
    if len(operands) > 1:
        raise UsageError("too many arguments", "rollback")
    flags, name = {o for o, _ in opts}, operands[0]
    pool = open_existing(store, name)
    with store.open_pool(pool, write=True) as ps:
        _require_snap(ps, name)
        fsname, _, snapname = name.partition("@")
        rec = ps.datasets[fsname]
        target = rec.snaps[snapname]
        newer = [f"{fsname}@{n}" for n, s in rec.ordered_snaps() if s.createtxg > target.createtxg]
        if newer and not flags & {"r", "R"}:
            raise CmdError(f"cannot rollback to '{name}': more recent snapshots exist\n"
                           "use '-r' to force deletion of the following snapshots:\n" + "\n".join(newer))
        clones = _clone_closure(ps, newer)
        if clones and "R" not in flags:
            raise CmdError(f"cannot rollback to '{name}': clones of previous snapshots exist\n"
                           "use '-R' to force deletion of the following clones and dependents:\n"
                           + "\n".join(clones))
        fault(store, "rollback", [name], f"cannot rollback to '{name}'")
        _destroy_all(store, ps, [*clones, *newer])
        restore(store, ps, fsname, target.id)
    return 0


# -- clone / promote -----------------------------------------------------------------------------------------------
def cmd_clone(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "po:", "clone")
    if not operands:
        raise UsageError("missing source dataset argument", "clone")
    if len(operands) == 1:
        raise UsageError("missing target dataset argument", "clone")
    if len(operands) > 2:
        raise UsageError("too many arguments", "clone")
    src, dst = operands
    pairs = parse_o([v for o, v in opts if o == "o"])
    prefix = f"cannot create '{dst}'"
    pool = open_existing(store, src)
    late_error = None
    with store.open_pool(pool, write=True) as ps:
        _require_snap(ps, src)
        reason = check_dataset(dst, snapshot=False)
        if reason:
            raise CmdError(f"{prefix}: {reason}")
        if pool_of(dst) != pool:
            raise CmdError(f"{prefix}: source and target pools differ")
        props = validate_props(pairs, prefix)
        if dst in ps.datasets:
            raise CmdError(f"{prefix}: dataset already exists")
        if parent_of(dst) not in ps.datasets and not any(o == "p" for o, _ in opts):
            raise CmdError(f"{prefix}: parent does not exist")
        fault(store, "clone", [src, dst], prefix)
        _check_parent(store, ps, dst, True)
        srec = ps.snap(src)
        assert srec is not None
        rec = ps.new_fs(dst, props, ps.next_txg())
        rec.origin = srec[1].id
        fsdata.copy_tree(ps.snap_dir(srec[1].id), ps.data_dir(rec.id), into=True)
        rec.clean_fp = fsdata.fingerprint(fsdata.scan(ps.data_dir(rec.id)))
        late_error = mount_new(store, ps, dst)
    if late_error:
        raise CmdError(late_error)
    return 0


def cmd_promote(store: Store, args: list[str]) -> int:
    _, operands = getopt(args, "", "promote")
    if not operands:
        raise UsageError("missing clone filesystem argument", "promote")
    if len(operands) > 1:
        raise UsageError("too many arguments", "promote")
    name = operands[0]
    pool = open_existing(store, name)
    with store.open_pool(pool, write=True) as ps:
        _require_fs(ps, name)
        rec = ps.datasets[name]
        origin = ps.snap_by_id(rec.origin) if rec.origin is not None else None
        if origin is None:
            raise CmdError(f"cannot promote '{name}': not a cloned filesystem")
        ofs, _, osrec = origin
        orec = ps.datasets[ofs]
        moving = [n for n, s in orec.ordered_snaps() if s.createtxg <= osrec.createtxg]
        for snapname in moving:
            if snapname in rec.snaps:
                raise CmdError(f"cannot promote '{name}': conflicting snapshot '{snapname}' "
                               f"from parent '{ofs}@{snapname}'")
        fault(store, "promote", [name], f"cannot promote '{name}'")
        for snapname in moving:
            rec.snaps[snapname] = orec.snaps.pop(snapname)
        rec.origin, orec.origin = orec.origin, osrec.id
    return 0


# -- rename --------------------------------------------------------------------------------------------------------
def cmd_rename(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "pr", "rename")
    if not operands:
        raise UsageError("missing source dataset argument", "rename")
    if len(operands) == 1:
        raise UsageError("missing target dataset argument", "rename")
    if len(operands) > 2:
        raise UsageError("too many arguments", "rename")
    flags = {o for o, _ in opts}
    src, dst = operands
    if "@" in src:
        return _rename_snapshot(store, src, dst, flags)
    if "r" in flags:
        raise UsageError("source dataset for recursive rename must be a snapshot", "rename")
    return _rename_fs(store, src, dst, "p" in flags)


def _rename_snapshot(store: Store, src: str, dst: str, flags: set[str]) -> int:
    pool = open_existing(store, src)
    fsname, _, snapname = src.partition("@")
    if "@" not in dst or dst.startswith("@"):
        dst = f"{fsname}@{dst.lstrip('@')}"
    with store.open_pool(pool, write=True) as ps:
        if "p" in flags and ps.snap(src):
            raise cannot_open(src, _NOT_APPLICABLE)
        _require_snap(ps, src)
        if dst.partition("@")[0] != fsname:
            raise CmdError(f"cannot rename to '{dst}': snapshots must be part of same dataset")
        reason = check_dataset(dst, snapshot=True)
        if reason:
            raise CmdError(f"cannot rename to '{dst}': {reason}")
        new = dst.partition("@")[2]
        scope = [fsname, *ps.descendants(fsname)] if "r" in flags else [fsname]
        scope = [fs for fs in scope if snapname in ps.datasets[fs].snaps]
        for fs in scope:
            if new in ps.datasets[fs].snaps and new != snapname:
                raise CmdError(f"cannot rename '{fs}@{snapname}': dataset already exists")
        fault(store, "rename", [src], f"cannot rename '{src}'")
        for fs in scope:
            snaps = ps.datasets[fs].snaps
            snaps[new] = snaps.pop(snapname)
    return 0


def _rename_fs(store: Store, src: str, dst: str, parents: bool) -> int:
    pool = open_existing(store, src)
    with store.open_pool(pool, write=True) as ps:
        _require_fs(ps, src)
        reason = check_dataset(dst, snapshot=False)
        if reason:
            raise CmdError(f"cannot rename to '{dst}': {reason}")
        dst_pool = pool_of(dst)
        if dst_pool != pool:
            raise CmdError(f"cannot create '{dst}': no such pool '{dst_pool}'" if not store.exists(dst_pool)
                           else f"cannot rename to '{dst}': datasets must be within same pool")
        if dst == src:
            return 0
        if is_descendant(dst, src):
            raise CmdError(f"cannot rename to '{dst}': New dataset name cannot be a descendant of current "
                           "dataset name")
        if dst in ps.datasets:
            raise CmdError(f"cannot rename '{src}': dataset already exists")
        if parent_of(dst) not in ps.datasets and not parents:
            raise CmdError(f"cannot create '{dst}': parent does not exist")
        subtree = [src, *ps.descendants(src)]
        if any(ps.datasets[n].mounted for n in subtree):
            raise Busy(f"cannot rename '{src}': dataset is busy")
        fault(store, "rename", [src, dst], f"cannot rename '{src}'")
        _check_parent(store, ps, dst, True)
        old_paths = [ps.mountpoint(n)[0] for n in subtree]
        for n in subtree:
            ps.datasets[dst + n[len(src):]] = ps.datasets.pop(n)
        for path in sorted(old_paths, reverse=True):
            S.remove_mountpoint(path)
    return 0
