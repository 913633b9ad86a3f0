"""``zfs list`` and ``zfs get``: property values with their sources, traversal, sorting and output formats."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vpsadmind.testing.fakezfs import dialect
from vpsadmind.testing.fakezfs import props as P
from vpsadmind.testing.fakezfs import state as S
from vpsadmind.testing.fakezfs.errors import UsageError
from vpsadmind.testing.fakezfs.names import pool_of
from vpsadmind.testing.fakezfs.opts import getopt
from vpsadmind.testing.fakezfs.space import Usage
from vpsadmind.testing.fakezfs.state import PoolState, Store

__all__ = ["resolve", "cmd_list", "cmd_get", "Ctx"]

_NA = ("-", "-")
_FIXED = {"version": "4", "compressratio": "1.00x", "mlslabel": "off"}
_SETONCE = ("utf8only", "normalization", "casesensitivity")
# OpenZFS dialect only, and only when asked for by name (not in ``get all``): "-" or the token of a partial receive
_RESUME_PROP = "receive_resume_token"


@dataclass
class Ctx:
    """One pool opened for reading plus a usage cache."""

    store: Store
    ps: PoolState
    usage: Usage = field(init=False)

    def __post_init__(self) -> None:
        self.usage = Usage(self.store, self.ps)


def resolve(ctx: Ctx, name: str, prop: str) -> tuple[str, str]:
    """(raw value, source) of ``prop`` on a filesystem or snapshot, as ``zfs get -p`` prints them."""
    if prop == _RESUME_PROP:
        rec = None if "@" in name else ctx.ps.datasets[name]
        return (rec.resume["token"] if rec is not None and rec.resume else "-"), "-"
    if "@" in name:
        return _snap_prop(ctx, name, prop)
    return _fs_prop(ctx, name, prop)


def _common(ctx: Ctx, name: str, prop: str) -> tuple[str, str] | None:
    ps = ctx.ps
    if prop == "name":
        return name, "-"
    if prop in _FIXED:
        return _FIXED[prop], "-"
    if prop in _SETONCE:
        fsname = name.partition("@")[0]
        return ps.datasets[fsname].props.get(prop, P.PROPS[prop].default), "-"
    found = ps.snap(name)
    obj: S.SnapRec | S.FsRec = found[1] if found else ps.datasets[name]
    ids = {"guid": obj.guid, "createtxg": obj.createtxg, "creation": obj.creation, "objsetid": obj.id + 20}
    if prop in ids:
        return str(ids[prop]), "-"
    return None


def _fs_prop(ctx: Ctx, name: str, prop: str) -> tuple[str, str]:
    ps, usage = ctx.ps, ctx.usage
    if P.is_user_prop(prop):
        return ps.inherited(name, prop) or _NA
    common = _common(ctx, name, prop)
    if common:
        return common
    rec = ps.datasets[name]
    computed: dict[str, Callable[[], str]] = {
        "type": lambda: "filesystem", "used": lambda: str(usage.used(name)),
        "available": lambda: str(usage.available(name)), "referenced": lambda: str(usage.referenced(name)),
        "usedbysnapshots": lambda: str(usage.usedbysnapshots(name)),
        "usedbydataset": lambda: str(usage.usedbydataset(name)),
        "usedbychildren": lambda: str(usage.usedbychildren(name)),
        "usedbyrefreservation": lambda: str(usage.usedbyrefreservation(name)),
        "mounted": lambda: "yes" if rec.mounted else "no", "origin": lambda: ps.origin_name(rec) or "-",
    }
    if prop in computed:
        return computed[prop](), "-"
    pdef = P.PROPS[prop]
    if not pdef.types & P.FS:
        return _NA
    if prop == "mountpoint":
        return ps.mountpoint(name)
    if pdef.inherit:
        return ps.inherited(name, prop) or (pdef.default, "default")
    if prop in rec.props:
        return rec.props[prop], "received" if prop in rec.received else "local"
    return pdef.default, "default"


def _snap_prop(ctx: Ctx, name: str, prop: str) -> tuple[str, str]:
    ps = ctx.ps
    fsname, _, snapname = name.partition("@")
    rec = ps.datasets[fsname]
    srec = rec.snaps[snapname]
    pdef = P.PROPS.get(prop)
    if P.is_user_prop(prop) or (pdef and pdef.inherit and not pdef.setonce and pdef.types & P.SNAP
                                and prop not in _FIXED):
        if prop in srec.props:
            return srec.props[prop], "received" if prop in srec.received else "local"
        found = ps.inherited(fsname, prop)
        if found:
            source = found[1] if found[1].startswith("inherited") else f"inherited from {fsname}"
            return found[0], source
        return _NA if P.is_user_prop(prop) else (P.PROPS[prop].default, "default")
    common = _common(ctx, name, prop)
    if common:
        return common
    computed: dict[str, Callable[[], str]] = {
        "type": lambda: "snapshot", "used": lambda: str(ctx.usage.snapshot_used(fsname, snapname)),
        "referenced": lambda: str(srec.referenced), "defer_destroy": lambda: "on" if srec.defer_destroy else "off",
        "userrefs": lambda: str(len(srec.holds)),
    }
    if prop in computed:
        return computed[prop](), "-"
    return _NA


# -- traversal -----------------------------------------------------------------------------------------------------
@dataclass
class Walk:
    types: frozenset[str]        # "filesystem", "snapshot"
    depth: int | None            # None = not recursive, -1 = unlimited
    explicit_types: bool


def _walk_fs(ps: PoolState, name: str, walk: Walk, level: int) -> Iterator[str]:
    if "filesystem" in walk.types:
        yield name
    if walk.depth is None or (walk.depth >= 0 and level >= walk.depth):
        return
    if "snapshot" in walk.types:
        for snapname, _ in ps.datasets[name].ordered_snaps():
            yield f"{name}@{snapname}"
    for child in ps.children(name):
        yield from _walk_fs(ps, child, walk, level + 1)


def _targets(store: Store, operands: list[str], walk: Walk, errors: list[str]) -> dict[str, list[str]]:
    """pool -> names to show. Problems go to ``errors`` (rc 1, the rest is still printed)."""
    out: dict[str, list[str]] = {}
    if not operands:
        for pool in store.pool_names():
            operands.append(pool)
        walk.depth = -1 if walk.depth is None else walk.depth
    for operand in operands:
        pool = pool_of(operand)
        ps = store.read_pool(pool) if store.exists(pool) else None
        found = ps is not None and (ps.snap(operand) if "@" in operand else ps.fs(operand)) is not None
        if ps is None or not found:
            errors.append(f"cannot open '{operand}': dataset does not exist")
            continue
        names = out.setdefault(pool, [])
        if "@" in operand:
            if "snapshot" not in walk.types:
                errors.append(f"cannot open '{operand}': operation not applicable to datasets of this type")
            else:
                names.append(operand)
            continue
        if walk.depth is None and "filesystem" not in walk.types:
            errors.append(f"cannot open '{operand}': operation not applicable to datasets of this type")
            continue
        names.extend(_walk_fs(ps, operand, walk, 0))
    return out


def zfs_compare_key(ctx: Ctx, name: str) -> tuple[str, int, int]:
    fsname, at, _ = name.partition("@")
    if not at:
        return fsname, 0, 0
    srec = ctx.ps.snap(name)
    return fsname, 1, srec[1].createtxg if srec else 0


def _sort(ctx: Ctx, names: list[str], sorts: list[tuple[str, bool]]) -> list[str]:
    result = sorted(dict.fromkeys(names), key=lambda n: zfs_compare_key(ctx, n))
    for prop, descending in reversed(sorts):
        def key(n: str, prop: str = prop) -> tuple[int, int, str]:
            raw, _ = resolve(ctx, n, prop)
            if raw == "-":
                return (1, 0, "")
            if raw.isdigit() and prop not in ("name",):
                return (0, int(raw), "")
            return (0, 0, raw)
        valid = [n for n in result if key(n)[0] == 0]
        invalid = [n for n in result if key(n)[0] == 1]
        result = sorted(valid, key=key, reverse=descending) + invalid
    return result


# -- zfs list ------------------------------------------------------------------------------------------------------
def _check_prop(name: str, command: str, message: str = "bad property list: invalid property '{}'") -> str:
    pdef = P.lookup(name)
    if pdef is not None:
        return pdef.name
    if name == _RESUME_PROP and dialect.openzfs():
        return name
    if P.is_user_prop(name):
        return name
    raise UsageError(message.format(name), command)


def _parse_depth(value: str, command: str) -> int:
    try:
        depth = int(value)
    except ValueError:
        raise UsageError(f"{value} is not an integer", command) from None
    if depth < 0:
        raise UsageError("Depth can not be negative.", command)
    return depth


def _parse_types(value: str) -> frozenset[str]:
    types: set[str] = set()
    for item in value.split(","):
        if item == "all":
            types |= {"filesystem", "snapshot"}
        elif item in ("filesystem", "snapshot", "volume"):
            types.add(item)
        else:
            raise UsageError(f"invalid type '{item}'", "list")
    return frozenset(types)


def cmd_list(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "rHd:o:t:s:S:", "list")
    columns = ["name", "used", "available", "referenced", "mountpoint"]
    walk = Walk(frozenset({"filesystem"}), None, False)
    scripted, sorts = False, []
    for opt, value in opts:
        if opt == "r":
            walk.depth = -1
        elif opt == "d":
            walk.depth = _parse_depth(value, "list")
        elif opt == "H":
            scripted = True
        elif opt == "o" and value == "space":
            columns = ["name", "available", "used", "usedbysnapshots", "usedbydataset", "usedbyrefreservation",
                       "usedbychildren"]
        elif opt == "o":
            columns = [_check_prop(c, "list") for c in value.split(",")]
        elif opt == "t":
            walk.types, walk.explicit_types = _parse_types(value), True
        else:
            sorts.append((_check_prop(value, "list", "invalid property '{}'"), opt == "S"))
    if operands and not walk.explicit_types and walk.depth is None:
        walk.types = frozenset({"filesystem", "snapshot"})
    errors: list[str] = []
    rows: list[list[str]] = []
    for pool, names in _targets(store, operands, walk, errors).items():
        with store.open_pool(pool, write=False) as ps:
            ctx = Ctx(store, ps)
            for name in _sort(ctx, names, sorts):
                rows.append([_list_cell(ctx, name, col) for col in columns])
    _print_table(rows, columns, scripted)
    return _finish(errors, bool(rows) or bool(operands), "list")


def _list_cell(ctx: Ctx, name: str, col: str) -> str:
    raw, _ = resolve(ctx, name, col)
    return P.format_value(P.PROPS[col], raw, False) if col in P.PROPS else raw


_HEADERS = {"available": "AVAIL", "referenced": "REFER", "compressratio": "RATIO", "recordsize": "RECSIZE",
            "reservation": "RESERV", "refreservation": "REFRESERV", "compression": "COMPRESS",
            "usedbysnapshots": "USEDSNAP", "usedbydataset": "USEDDS", "usedbyrefreservation": "USEDREFRESERV",
            "usedbychildren": "USEDCHILD"}


def _print_table(rows: list[list[str]], columns: list[str], scripted: bool) -> None:
    out = sys.stdout
    if scripted:
        for row in rows:
            out.write("\t".join(row) + "\n")
        return
    headers = [_HEADERS.get(c, c.upper()) for c in columns]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = [c in P.PROPS and P.PROPS[c].kind in ("size", "number") for c in columns]
    for row in [headers, *rows]:
        cells = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


def _finish(errors: list[str], printed: bool, command: str) -> int:
    for message in errors:
        sys.stderr.write(message + "\n")
    if not errors and not printed and command == "list":
        sys.stderr.write("no datasets available\n")
    return 1 if errors else 0


# -- zfs get -------------------------------------------------------------------------------------------------------
_FIELDS = ("name", "property", "value", "received", "source")
_SOURCES = ("local", "default", "inherited", "temporary", "none", "received")


def _source_kind(source: str) -> str:
    if source.startswith("inherited"):
        return "inherited"
    return "none" if source == "-" else source


def _all_props(ctx: Ctx, name: str) -> list[str]:
    is_snap = "@" in name
    wanted = P.SNAP if is_snap else P.FS
    names = [p for p in P.ALL_ORDER if not P.PROPS[p].hidden and P.PROPS[p].types & wanted]
    if not is_snap and ctx.ps.datasets[name].origin is None:
        names.remove("origin")
    return names + _user_props(ctx, name)


def _user_props(ctx: Ctx, name: str) -> list[str]:
    fsname, _, snapname = name.partition("@")
    found: set[str] = set()
    if snapname:
        found.update(ctx.ps.datasets[fsname].snaps[snapname].props)
    current = fsname
    while current:
        found.update(p for p in ctx.ps.datasets[current].props if P.is_user_prop(p))
        current = current.rpartition("/")[0]
    return sorted(found)


def _parse_get(args: list[str]) -> tuple[list[str], Walk, bool, bool, list[str], set[str], list[str]]:
    opts, operands = getopt(args, "rHpd:o:s:", "get")
    walk = Walk(frozenset({"filesystem", "snapshot"}), None, False)
    scripted = parsable = False
    fields = ["name", "property", "value", "source"]
    sources = set(_SOURCES)
    for opt, value in opts:
        if opt == "r":
            walk.depth = -1
        elif opt == "d":
            walk.depth = _parse_depth(value, "get")
        elif opt in "Hp":
            scripted, parsable = scripted or opt == "H", parsable or opt == "p"
        elif opt == "o":
            fields = list(_FIELDS) if value == "all" else value.split(",")
            for f in fields:
                if f not in _FIELDS:
                    raise UsageError(f"invalid column name '{f}'", "get")
        else:
            sources = set(value.split(","))
            for s in sources:
                if s not in _SOURCES:
                    raise UsageError(f"invalid source '{s}'", "get")
    if not operands:
        raise UsageError("missing property argument", "get")
    props = ["all"] if operands[0] == "all" else [_check_prop(p, "get") for p in operands[0].split(",")]
    return props, walk, scripted, parsable, fields, sources, operands[1:]


def cmd_get(store: Store, args: list[str]) -> int:
    props, walk, scripted, parsable, fields, sources, operands = _parse_get(args)
    errors: list[str] = []
    rows: list[list[str]] = []
    for pool, names in _targets(store, operands, walk, errors).items():
        with store.open_pool(pool, write=False) as ps:
            ctx = Ctx(store, ps)
            for name in _sort(ctx, names, []):
                for prop in _all_props(ctx, name) if props == ["all"] else props:
                    raw, source = resolve(ctx, name, prop)
                    if prop == "mlslabel" and props == ["all"] and "@" in name:
                        raw = "0"                      # zfs-fuse: "0" in get all, "off" when asked by name
                    if _source_kind(source) not in sources:
                        continue
                    value = P.format_value(P.PROPS[prop], raw, parsable) if prop in P.PROPS else raw
                    cells = {"name": name, "property": prop, "value": value, "received": "-", "source": source}
                    rows.append([cells[f] for f in fields])
    if scripted:
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
    elif rows:
        headers = [f.upper() for f in fields]
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
        for row in [headers, *rows]:
            sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return _finish(errors, True, "get")
