"""The fake ``zpool``: create, destroy, list, get, status, upgrade."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from vpsadmind.testing.fakezfs import faults
from vpsadmind.testing.fakezfs import state as S
from vpsadmind.testing.fakezfs.dsops import destroy_fs_data, mount_new, parse_o, validate_props
from vpsadmind.testing.fakezfs.errors import CmdError, UsageError
from vpsadmind.testing.fakezfs.names import check_pool
from vpsadmind.testing.fakezfs.opts import getopt
from vpsadmind.testing.fakezfs.props import nicenum, parse_size
from vpsadmind.testing.fakezfs.space import Usage
from vpsadmind.testing.fakezfs.state import PoolState, Store
from vpsadmind.testing.fakezfs.usage import ZPOOL_PROPS

__all__ = ["main_zpool", "vdev_size", "POOL_SIZE_ENV"]

POOL_SIZE_ENV = "FAKE_ZFS_POOL_SIZE"
_MIN_VDEV = 64 << 20
_KEYWORDS = frozenset({"mirror", "raidz", "raidz1", "raidz2", "raidz3", "spare", "log", "cache"})
_COLUMNS = {"name": "NAME", "size": "SIZE", "allocated": "ALLOC", "alloc": "ALLOC", "free": "FREE",
            "capacity": "CAP", "cap": "CAP", "dedupratio": "DEDUP", "dedup": "DEDUP", "health": "HEALTH",
            "altroot": "ALTROOT", "guid": "GUID", "version": "VERSION"}


def vdev_size(raw: int) -> int:
    """zpool's SIZE of a file vdev: minus 4.5 MiB of labels, rounded down to whole metaslabs."""
    asize = (raw - (9 << 19)) & ~((256 << 10) - 1)
    ms_shift = max((asize // 200).bit_length(), 1)
    return (asize >> ms_shift) << ms_shift


def _vdevs_size(vdevs: list[str]) -> tuple[int, list[str]]:
    total, warnings = 0, []
    env = os.environ.get(POOL_SIZE_ENV)
    for vdev in vdevs:
        if vdev in _KEYWORDS:
            continue
        path = Path(vdev)
        if path.exists():
            raw = path.stat().st_size if path.is_file() else 1 << 30
        elif env:
            raw = parse_size(env)
        else:
            raise CmdError(f"cannot open '{vdev}': No such file or directory")
        if raw < _MIN_VDEV:
            raise CmdError("cannot create '{pool}': one or more devices is less than the minimum size (64M)")
        if raw >= 128 << 20:
            warnings.append(f"Defaulting to 4K blocksize (ashift=12) for '{vdev}'")
        total += vdev_size(raw)
    return total, warnings


def _check_vdevs_free(store: Store, vdevs: list[str]) -> None:
    for pool in store.pool_names():
        ps = store.read_pool(pool)
        for vdev in vdevs:
            if ps is not None and os.path.abspath(vdev) in ps.vdevs:
                raise CmdError(f"invalid vdev specification\nuse '-f' to override the following errors:\n"
                               f"{os.path.abspath(vdev)} is part of active pool '{pool}'")


def _create(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "fnm:o:O:R:", "create", program="zpool")
    if not operands:
        raise UsageError("missing pool name argument", "create", program="zpool")
    if len(operands) == 1:
        raise UsageError("missing vdev specification", "create", program="zpool")
    pool, vdevs = operands[0], operands[1:]
    reason = check_pool(pool)
    if reason:
        extra = "\nuse 'zfs create' to create a dataset" if "/" in pool else ""
        raise CmdError(f"cannot create '{pool}': {reason}{extra}")
    mountpoint = next((v for o, v in opts if o == "m"), None)
    fs_props = validate_props(parse_o([v for o, v in opts if o == "O"]), f"cannot create '{pool}'")
    if mountpoint is not None:
        fs_props["mountpoint"] = mountpoint
    try:
        size, warnings = _vdevs_size(vdevs)
    except CmdError as exc:
        raise CmdError(exc.message.replace("{pool}", pool)) from None
    for line in warnings:
        sys.stderr.write(line + "\n")
    with store.global_lock():
        if store.exists(pool):
            raise CmdError(f"cannot create '{pool}': pool already exists")
        if not any(o == "f" for o, _ in opts):
            _check_vdevs_free(store, vdevs)
        if any(o == "n" for o, _ in opts):
            return 0
        _new_pool(store, pool, size, [os.path.abspath(v) for v in vdevs if v not in _KEYWORDS], fs_props)
    return 0


def _new_pool(store: Store, pool: str, size: int, vdevs: list[str], fs_props: dict[str, str]) -> None:
    directory = store.pools_dir / pool
    S.create_pool_dirs(directory)
    ps = PoolState(pool, S.new_guid(), size, vdevs, created=int(time.time()), dir=directory)
    ps.new_fs(pool, fs_props, 1)
    S.save_state(ps)
    with store.open_pool(pool, write=True) as locked:
        mount_new(store, locked, pool)


def _destroy(store: Store, args: list[str]) -> int:
    _, operands = getopt(args, "f", "destroy", program="zpool")
    if not operands:
        raise UsageError("missing pool argument", "destroy", program="zpool")
    if len(operands) > 1:
        raise UsageError("too many arguments", "destroy", program="zpool")
    pool = operands[0]
    with store.global_lock():
        if not store.exists(pool):
            raise CmdError(f"cannot open '{pool}': no such pool")
        with store.open_pool(pool, write=False) as ps:
            for name in sorted(ps.datasets, key=lambda n: -n.count("/")):
                destroy_fs_data(store, ps, name)
            S.save_state(ps)
            S.remove_pool_dir(ps.dir)
    return 0


def _pool_values(store: Store, ps: PoolState) -> dict[str, str]:
    alloc = Usage(store, ps).used(ps.name)
    return {"name": ps.name, "size": nicenum(ps.size), "allocated": nicenum(alloc), "alloc": nicenum(alloc),
            "free": nicenum(max(ps.size - alloc, 0)), "capacity": f"{alloc * 100 // max(ps.size, 1)}%",
            "cap": f"{alloc * 100 // max(ps.size, 1)}%", "dedupratio": "1.00x", "dedup": "1.00x",
            "health": "ONLINE", "altroot": "-", "guid": str(ps.guid), "version": "23"}


def _bad_prop(name: str, command: str) -> UsageError:
    return UsageError(f"bad property list: invalid property '{name}'", command, program="zpool")


def _list(store: Store, args: list[str]) -> int:
    opts, operands = getopt(args, "Ho:", "list", program="zpool")
    columns = ["name", "size", "allocated", "free", "capacity", "dedupratio", "health", "altroot"]
    scripted = False
    for opt, value in opts:
        if opt == "H":
            scripted = True
        else:
            columns = value.split(",")
            for col in columns:
                if col not in _COLUMNS:
                    raise _bad_prop(col, "list")
    rows, rc = [], 0
    for pool in operands or store.pool_names():
        if not store.exists(pool):
            sys.stderr.write(f"cannot open '{pool}': no such pool\n")
            rc = 1
            continue
        with store.open_pool(pool, write=False) as ps:
            values = _pool_values(store, ps)
        rows.append([values[c] for c in columns])
    if not rows and not operands:
        sys.stdout.write("no pools available\n")
        return rc
    _table(rows, [_COLUMNS[c] for c in columns], scripted, right=not scripted)
    return rc


def _table(rows: list[list[str]], headers: list[str], scripted: bool, *, right: bool) -> None:
    if scripted:
        for row in rows:
            sys.stdout.write("\t".join(row) + "\n")
        return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        cells = [c.ljust(w) if i == 0 or not right or headers[i] in ("HEALTH", "ALTROOT") else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")


_GET_DEFAULTS = {"altroot": ("-", "default"), "bootfs": ("-", "default"), "delegation": ("on", "default"),
                 "autoreplace": ("off", "default"), "cachefile": ("-", "default"), "failmode": ("wait", "default"),
                 "listsnapshots": ("off", "default"), "autoexpand": ("off", "default"),
                 "dedupditto": ("0", "default"), "ashift": ("0", "default"), "version": ("23", "default"),
                 "guid": ("", "default")}
_GET_ORDER = ("size", "capacity", "altroot", "health", "guid", "version", "bootfs", "delegation", "autoreplace",
              "cachefile", "failmode", "listsnapshots", "autoexpand", "dedupditto", "dedupratio", "free",
              "allocated", "ashift")


def _get(store: Store, args: list[str]) -> int:
    _, operands = getopt(args, "", "get", program="zpool")
    if not operands:
        raise UsageError("missing property argument", "get", program="zpool")
    names = list(_GET_ORDER) if operands[0] == "all" else operands[0].split(",")
    known = {n for n, _, _ in ZPOOL_PROPS}
    for name in names:
        if name not in known:
            raise _bad_prop(name, "get")
    rows, rc = [], 0
    for pool in operands[1:] or store.pool_names():
        if not store.exists(pool):
            sys.stderr.write(f"cannot open '{pool}': no such pool\n")
            rc = 1
            continue
        with store.open_pool(pool, write=False) as ps:
            values = _pool_values(store, ps)
        for name in names:
            value, source = _GET_DEFAULTS.get(name, (values.get(name, "-"), "-"))
            if name == "guid":
                value = values["guid"]
            rows.append([pool, name, value, source])
    _table(rows, ["NAME", "PROPERTY", "VALUE", "SOURCE"], False, right=False)
    return rc


def _status(store: Store, args: list[str]) -> int:
    _, operands = getopt(args, "vx", "status", program="zpool")
    pools = operands or store.pool_names()
    if not pools:
        sys.stdout.write("no pools available\n")
        return 0
    for index, pool in enumerate(pools):
        if not store.exists(pool):
            sys.stderr.write(f"cannot open '{pool}': no such pool\n")
            return 1
        ps = store.read_pool(pool)
        assert ps is not None
        width = max(len(pool), *(len(v) + 2 for v in ps.vdevs)) if ps.vdevs else len(pool)
        lines = [f"  pool: {pool}", " state: ONLINE", " scrub: none requested", "config:", "",
                 f"\t{'NAME':<{width}}  STATE     READ WRITE CKSUM", f"\t{pool:<{width}}  ONLINE       0     0     0"]
        lines += [f"\t  {v:<{width - 2}}  ONLINE       0     0     0" for v in ps.vdevs]
        lines += ["", "errors: No known data errors"]
        sys.stdout.write(("\n" if index else "") + "\n".join(lines) + "\n")
    return 0


_POOL_VERSIONS = (
    "Initial ZFS version", "Ditto blocks (replicated metadata)", "Hot spares and double parity RAID-Z",
    "zpool history", "Compression using the gzip algorithm", "bootfs pool property", "Separate intent log devices",
    "Delegated administration", "refquota and refreservation properties", "Cache devices",
    "Improved scrub performance", "Snapshot properties", "snapused property", "passthrough-x aclinherit",
    "user/group space accounting", "stmf property support", "Triple-parity RAID-Z", "Snapshot user holds",
    "Log device removal", "Compression using zle (zero-length encoding)", "Deduplication", "Received properties",
    "Slim ZIL",
)


def _upgrade(store: Store, args: list[str]) -> int:
    opts, _ = getopt(args, "vaV:", "upgrade", program="zpool")
    del store
    if not any(o == "v" for o, _ in opts):
        sys.stdout.write("This system is currently running ZFS pool version 23.\n\n"
                         "All pools are formatted using this version.\n")
        return 0
    rows = "".join(f" {i:<3} {d}\n" for i, d in enumerate(_POOL_VERSIONS, 1))
    sys.stdout.write("This system is currently running ZFS pool version 23.\n\nThe following versions are "
                     "supported:\n\nVER  DESCRIPTION\n---  " + "-" * 56 + "\n" + rows +
                     "\nFor more information on a particular version, including supported releases, see:\n\n"
                     "http://www.opensolaris.org/os/community/zfs/version/N\n\n"
                     "Where 'N' is the version number.\n")
    return 0


_COMMANDS = {"create": _create, "destroy": _destroy, "list": _list, "get": _get, "status": _status,
             "upgrade": _upgrade}


def main_zpool(store: Store, args: list[str]) -> int:
    from vpsadmind.testing.fakezfs.usage import ZPOOL_COMMANDS

    if not args:
        raise UsageError("missing command", "", program="zpool")
    command, rest = args[0], args[1:]
    if command not in ZPOOL_COMMANDS:
        raise UsageError(f"unrecognized command '{command}'", "", program="zpool")
    if command not in _COMMANDS:
        raise CmdError(f"fake-zfs: 'zpool {command}' is not modelled")
    hit = faults.take(store.root, ("slow",), command, rest[-1:], program="zpool")
    if hit is not None:
        time.sleep(hit.seconds)
    return _COMMANDS[command](store, rest)
