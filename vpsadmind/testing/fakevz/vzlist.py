"""``fake-vzlist``: vzlist 4.9's selection, fields, text columns and JSON (``src/vzlist.c``).

* selection: running containers by default, ``-a`` all, ``-S`` stopped only, explicit ids whatever their state;
  nothing found is exit 1 ("Container(s) not found" on stderr; ``[]`` with ``-j``);
* text: a header (unless ``-H``/``--no-header``) and one line per container, each column printed with vzlist's
  width and alignment, every column but the last trimmed to its width (so ``ip`` shows its first address unless
  it is last; ``-t`` turns trimming off), unset values as ``-``, trailing blanks removed;
* ``-j``: an array of objects, every unsuffixed field without ``-o``; suffixed fields are refused.

Values come from the conf file and the fake runtime state: UBC barrier/limit from the conf; held values are 0
except ``numproc`` (the fake's process count, 12 after start) and ``physpages`` (the fake's used memory);
``diskspace`` usage is the private area's real usage while running.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpsadmind.testing.fakevz import mounts
from vpsadmind.testing.fakevz.builtins import disk_usage
from vpsadmind.testing.fakevz.errors import VzFail
from vpsadmind.testing.fakevz.layout import Layout
from vpsadmind.testing.fakevz.params import FEATURES, LONG_MAX, PAGE, UBC, parse_pair

__all__ = ["main", "FIELDS", "UBC_HEADERS"]

UBC_HEADERS = {
    "kmemsize": "KMEMSIZE", "lockedpages": "LOCKEDP", "privvmpages": "PRIVVMP", "shmpages": "SHMP",
    "numproc": "NPROC", "physpages": "PHYSP", "vmguarpages": "VMGUARP", "oomguarpages": "OOMGUARP",
    "numtcpsock": "NTCPSOCK", "numflock": "NFLOCK", "numpty": "NPTY", "numsiginfo": "NSIGINFO",
    "tcpsndbuf": "TCPSNDB", "tcprcvbuf": "TCPRCVB", "othersockbuf": "OTHSOCKB", "dgramrcvbuf": "DGRAMRB",
    "numothersock": "NOTHSOCK", "dcachesize": "DCACHESZ", "numfile": "NFILE", "numiptent": "NIPTENT",
    "swappages": "SWAPP",
}
_UBC_INDEX = {"": "held", "m": "maxheld", "b": "barrier", "l": "limit", "f": "failcnt"}
_STRINGS = {"private": "PRIVATE", "root": "ROOT", "mount_opts": "MOUNT_OPTS", "origin_sample": "ORIGIN_SAMPLE",
            "hostname": "HOSTNAME", "name": "NAME", "description": "DESCRIPTION", "ostemplate": "OSTEMPLATE"}
_WIDTH = {"private": 32, "root": 32, "mount_opts": 16, "origin_sample": 32, "hostname": 32, "name": 32,
          "description": 32, "ostemplate": 32}
_LISTS = {"ip": ("IP_ADDR", "IP_ADDRESS"), "nameserver": ("NAMESERVER", "NAMESERVER"),
          "searchdomain": ("SEARCHDOMAIN", "SEARCHDOMAIN")}
# Fields printed right-aligned: name -> (header, width)
_NUMERIC = {"ctid": ("CTID", 10), "veid": ("CTID", 10), "vpsid": ("CTID", 10), "smart_name": ("SMARTNAME", 10),
            "laverage": ("LAVERAGE", 14), "uptime": ("UPTIME", 15), "cpulimit": ("CPULIM", 7),
            "cpuunits": ("CPUUNI", 7), "cpus": ("CPUS", 5), "ioprio": ("IOP", 3), "onboot": ("ONBOOT", 6),
            "bootorder": ("BOOTORDER", 10), "vswap": ("VSWAP", 5), "disabled": ("DISABL", 6)}
#: vzlist 4.9's unsuffixed fields, in the order ``vzlist -j`` prints them.
FIELDS = ("ctid", "veid", "vpsid", "private", "root", "mount_opts", "origin_sample", "hostname", "name",
          "smart_name", "description", "ostemplate", "ip", "nameserver", "searchdomain", "status", *UBC_HEADERS,
          "diskspace", "diskinodes", "laverage", "uptime", "cpulimit", "cpuunits", "cpus", "ioprio", "onboot",
          "bootorder", "layout", "features", "vswap", "disabled")


@dataclass
class Rec:
    veid: int
    conf: dict[str, str]
    state: dict[str, Any]
    status: str
    private: str | None
    root: str | None

    @property
    def running(self) -> bool:
        return self.status == "running"


def _record(layout: Layout, veid: int) -> Rec:
    ct = layout.ct(veid)
    status = "running" if ct.running else ("mounted" if mounts.is_mounted(ct) else "stopped")
    private, root = ct.private, ct.root
    return Rec(veid, ct.conf(), ct.state(), status, str(private) if private else None, str(root) if root else None)


def _ubc(rec: Rec, name: str) -> dict[str, int]:
    pair = parse_pair(rec.conf.get(name.upper(), ""), UBC[name]) if rec.conf.get(name.upper()) else None
    barrier, limit = pair or (0, 0)
    held = 0
    if rec.running and name == "numproc":
        held = int(rec.state.get("nproc", 0))
    elif rec.running and name == "physpages":
        held = int(rec.state.get("mem_used_kb", 0)) * 1024 // PAGE
    return {"held": held, "maxheld": held, "barrier": barrier, "limit": limit,
            "failcnt": 0}


def _quota(rec: Rec, name: str) -> dict[str, int] | None:
    if not (rec.conf.get("DISKSPACE") and rec.conf.get("DISKINODES")):
        return None
    pair = parse_pair(rec.conf[name.upper()], 1024 if name == "diskspace" else 1) or (0, 0)
    usage = 0
    if rec.running and rec.private and name == "diskspace":
        try:
            usage = disk_usage(Path(rec.private))
        except OSError:
            usage = 0
    return {"usage": usage, "softlimit": pair[0], "hardlimit": pair[1]}


def _int(rec: Rec, key: str) -> int | None:
    value = rec.conf.get(key, "")
    return int(value) if value.isdigit() else None


def _features(rec: Rec) -> dict[str, bool] | None:
    found = dict(token.rsplit(":", 1) for token in rec.conf.get("FEATURES", "").split() if ":" in token)
    return {name: found[name] == "on" for name in FEATURES if name in found} or None


def _vswap(rec: Rec) -> bool:
    pair = parse_pair(rec.conf.get("PHYSPAGES", ""), PAGE) if rec.conf.get("PHYSPAGES") else None
    return pair is not None and pair[1] not in (LONG_MAX, 2**31 - 1)


def _value(rec: Rec, field: str) -> Any:
    """The JSON value of ``field`` (a suffixed UBC/quota field gives one number)."""
    base, _, suffix = field.partition(".")
    if base in ("ctid", "veid", "vpsid"):
        return rec.veid
    if base in ("private", "root"):
        return rec.private if base == "private" else rec.root
    if base in _STRINGS:
        return rec.conf.get(_STRINGS[base]) or None
    if base == "smart_name":
        return rec.conf.get("NAME") or rec.veid
    if base in _LISTS:
        return rec.conf.get(_LISTS[base][1], "").split()
    if base == "status":
        return rec.status
    if base in UBC:
        ubc = _ubc(rec, base)
        return ubc if not suffix else ubc[_UBC_INDEX[suffix]]
    if base in ("diskspace", "diskinodes"):
        quota = _quota(rec, base)
        return quota if not suffix or quota is None else quota[{"s": "softlimit", "h": "hardlimit"}[suffix]]
    return _other(rec, base)


def _other(rec: Rec, base: str) -> Any:
    if base == "laverage":
        return [0.0, 0.0, 0.0] if rec.running else None
    if base == "uptime":
        return round(time.time() - float(rec.state.get("started", time.time())), 3) if rec.running else 0.0
    if base in ("cpulimit", "cpuunits"):
        if _int(rec, "CPULIMIT") is None and _int(rec, "CPUUNITS") is None:
            return None
        return _int(rec, base.upper()) or 0
    if base == "cpus":
        return _int(rec, "CPUS") or 0
    if base == "ioprio":
        return _int(rec, "IOPRIO") or 0
    if base == "onboot":
        return {"yes": True, "no": False}.get(rec.conf.get("ONBOOT", ""))
    if base == "bootorder":
        return _int(rec, "BOOTORDER")
    if base == "layout":
        return "simfs"
    if base == "features":
        return _features(rec)
    if base == "vswap":
        return _vswap(rec)
    if base == "disabled":
        return rec.conf.get("DISABLED") == "yes"
    raise VzFail(1, f"Unknown field: {base}")


def _text(rec: Rec, field: str, last: bool, trim: bool) -> str:
    base, _, suffix = field.partition(".")
    value = _value(rec, field)
    if base in _LISTS:
        words = value or ["-"]
        text, width = (" ".join(words) if last or not trim else words[0]), 15
        return text if last else f"{text[:width] if trim else text:<{width}}"
    if base in _STRINGS or base in ("status", "layout", "features"):
        if base == "features":
            value = ",".join(f"{k}:{'on' if v else 'off'}" for k, v in (value or {}).items()) or None
        width = _WIDTH.get(base, {"status": 9, "layout": 6, "features": 15}.get(base, 0))
        text = "-" if value is None else str(value)
        return text if last else f"{text[:width] if trim else text:<{width}}"
    if base in UBC or base in ("diskspace", "diskinodes"):
        if isinstance(value, dict):
            value = value["held"] if base in UBC else value["usage"]
        stopped_blank = base in UBC and not rec.running and suffix in ("", "m", "f")
        blank = value is None or stopped_blank or (base in ("diskspace", "diskinodes") and not suffix and not value)
        return f"{'-' if blank else value:>10}"
    return f"{_numeric_text(rec, base, value):>{_NUMERIC[base][1]}}"


def _numeric_text(rec: Rec, base: str, value: Any) -> str:
    if base == "laverage":
        return "/".join(f"{x:.2f}" for x in value) if value else "-"
    if base == "uptime":
        if not rec.running:
            return "-"
        secs = int(value)
        return f"{secs // 86400:03d}d{secs // 3600 % 24:02d}h:{secs // 60 % 60:02d}m:{secs % 60:02d}s"
    if base in ("onboot", "vswap", "disabled"):
        return "yes" if value else "no"
    if base in ("cpus",) and not value:
        return "-"
    return "-" if value is None else str(value)


def _header(field: str) -> str:
    base, _, suffix = field.partition(".")
    if base in UBC:
        name, width, align = UBC_HEADERS[base] + (f".{suffix.upper()}" if suffix else ""), 10, ">"
    elif base in ("diskspace", "diskinodes"):
        name = ("DSPACE" if base == "diskspace" else "DINODES") + (f".{suffix.upper()}" if suffix else "")
        width, align = 10, ">"
    elif base in _LISTS:
        name, width, align = _LISTS[base][0], 15, "<"
    elif base in _STRINGS:
        name, width, align = _STRINGS[base], _WIDTH[base], ">" if base == "origin_sample" else "<"
    elif base in ("status", "features"):
        name, width, align = base.upper(), 9 if base == "status" else 15, "<"
    elif base == "layout":
        name, width, align = "LAYOUT", 6, ">"
    else:
        name, (_, width), align = _NUMERIC[base][0], _NUMERIC[base], ">"
    return f"{name:{align}{width}}"


def _check_fields(fields: list[str], json_mode: bool) -> None:
    for field in fields:
        base, _, suffix = field.partition(".")
        known = base in FIELDS and (not suffix or (base in UBC and suffix in "mblf" and len(suffix) == 1)
                                    or (base in ("diskspace", "diskinodes") and suffix in ("s", "h")))
        if not known:
            raise VzFail(1, f"Unknown field: {field}")
        if suffix and json_mode:
            raise VzFail(1, f"Field {field} can not be used in json mode")


def _json_value(value: Any) -> str:
    if isinstance(value, dict):
        inner = ",\n".join(f'      "{k}": {json.dumps(v)}' for k, v in value.items())
        return "{\n" + inner + "\n    }"
    return json.dumps(value)


def _print_json(recs: list[Rec], fields: list[str] | None) -> None:
    names = fields or list(FIELDS)
    objects = []
    for rec in recs:
        body = ",\n".join(f'    "{name}": {_json_value(_value(rec, name))}' for name in names)
        objects.append("  {\n" + body + "\n  }")
    sys.stdout.write("[\n" + ",\n".join(objects) + "\n]\n" if objects else "[]\n")


@dataclass
class _Opts:
    all: bool = False
    stopped: bool = False
    header: bool = True
    json: bool = False
    trim: bool = True
    fields: list[str] | None = None
    sort: str | None = None
    ids: list[int] | None = None


def _only_ids(opts: _Opts) -> None:
    """``-1``: a synonym for ``-H -octid``."""
    opts.header = False
    opts.fields = ["ctid"]


_FLAG_SETTERS: dict[str, Callable[[_Opts], None]] = {
    "-a": lambda o: setattr(o, "all", True), "--all": lambda o: setattr(o, "all", True),
    "-S": lambda o: setattr(o, "stopped", True), "--stopped": lambda o: setattr(o, "stopped", True),
    "-H": lambda o: setattr(o, "header", False), "--no-header": lambda o: setattr(o, "header", False),
    "-j": lambda o: setattr(o, "json", True), "--json": lambda o: setattr(o, "json", True),
    "-t": lambda o: setattr(o, "trim", False), "--no-trim": lambda o: setattr(o, "trim", False),
    "-1": _only_ids,
}


def _parse(args: list[str]) -> _Opts:
    opts = _Opts()
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg in _FLAG_SETTERS:
            _FLAG_SETTERS[arg](opts)
        elif arg in ("-o", "--output", "-s", "--sort") or arg.startswith(("-o", "--output=", "-s", "--sort=")):
            long = arg.startswith("--")
            value = arg.split("=", 1)[1] if long and "=" in arg else (arg[2:] if not long and len(arg) > 2 else None)
            if value is None:
                if index >= len(args):
                    raise VzFail(1, f"vzlist: option '{arg}' requires an argument")
                value, index = args[index], index + 1
            if arg.startswith(("-o", "--output")):
                opts.fields = [f for f in value.split(",") if f]
            else:
                opts.sort = value
        elif arg.isdigit() and int(arg) > 0:
            opts.ids = [*(opts.ids or []), int(arg)]
        elif arg.startswith("-"):
            raise VzFail(1, f"fake-vzlist: option {arg} is not modelled")
        else:
            raise VzFail(1, f"Bad container ID {arg}")
    return opts


def _select(layout: Layout, opts: _Opts) -> list[Rec]:
    known = set(layout.veids())
    if opts.ids is not None:
        wanted = sorted(set(opts.ids) & known)
        recs = [_record(layout, veid) for veid in wanted]
    else:
        recs = [_record(layout, veid) for veid in sorted(known)]
        if opts.stopped:
            recs = [r for r in recs if not r.running]
        elif not opts.all:
            recs = [r for r in recs if r.running]
    if opts.sort:
        field, reverse = opts.sort.lstrip("-"), opts.sort.startswith("-")
        _check_fields([field], False)
        recs.sort(key=lambda r: (str(_value(r, field)) if not isinstance(_value(r, field), int)
                                 else f"{_value(r, field):020d}"), reverse=reverse)
    return recs


def main(layout: Layout, args: list[str]) -> int:
    opts = _parse(args)
    if opts.fields is not None:
        _check_fields(opts.fields, opts.json)
    recs = _select(layout, opts)
    if opts.json:
        _print_json(recs, opts.fields)
        return 0 if recs else 1
    if not recs:
        raise VzFail(1, "Container(s) not found")
    fields = opts.fields or ["ctid", "numproc", "status", "ip", "hostname"]
    if opts.header:
        print(" ".join(_header(f) for f in fields).rstrip())
    for rec in recs:
        cells = [_text(rec, f, i == len(fields) - 1, opts.trim) for i, f in enumerate(fields)]
        print(" ".join(cells).rstrip())
    return 0
