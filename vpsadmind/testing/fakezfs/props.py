"""The zfs-fuse 0.7.0 (pool version 23) property table: defaults, what can be set or inherited, value parsing and
formatting (``-p`` bytes or human-readable sizes), and the usage table zfs prints on a bad property."""

from __future__ import annotations

import time
from dataclasses import dataclass

from vpsadmind.testing.fakezfs.errors import CmdError

__all__ = [
    "PropDef", "PROPS", "ALL_ORDER", "is_user_prop", "lookup", "parse_value", "nicenum", "parse_size",
    "format_value", "usage_table", "FS", "SNAP",
]

FS = 1
SNAP = 2
_BOTH = FS | SNAP
_ONOFF = ("on", "off")


@dataclass(frozen=True, slots=True)
class PropDef:
    name: str
    kind: str                      # "size" | "index" | "string" | "number" (readonly numbers: guid, createtxg)
    default: str = ""              # value of an unset settable property (source "default")
    readonly: bool = False         # computed by zfs (used, guid, ...)
    setonce: bool = False          # only at create time (casesensitivity, ...); shown as EDIT NO
    inherit: bool = False
    values: str = ""               # the VALUES column of the usage table
    choices: tuple[str, ...] = ()
    types: int = FS                # where the property applies
    hidden: bool = False           # not in ``get all`` and not in the usage table, but can be asked for by name
    none_zero: bool = False        # "none" means 0 (quota, refquota, reservation, refreservation)

    @property
    def editable(self) -> bool:
        return not (self.readonly or self.setonce)


def _idx(name: str, choices: tuple[str, ...], default: str, *, types: int = FS, inherit: bool = True,
         values: str = "", setonce: bool = False) -> PropDef:
    return PropDef(name, "index", default, inherit=inherit, choices=choices, types=types, setonce=setonce,
                   values=values or " | ".join(choices))


def _ro(name: str, kind: str, values: str, types: int = _BOTH, *, hidden: bool = False) -> PropDef:
    return PropDef(name, kind, readonly=True, values=values, types=types, hidden=hidden)


def _size(name: str, *, none_zero: bool = True, values: str = "<size> | none") -> PropDef:
    return PropDef(name, "size", "0", values=values, none_zero=none_zero)


_GZIP = tuple(f"gzip-{i}" for i in range(1, 10))
_DEFS = [
    _ro("type", "string", "filesystem | volume | snapshot"),
    _ro("creation", "number", "<date>"),
    _ro("used", "size", "<size>"),
    _ro("available", "size", "<size>", FS),
    _ro("referenced", "size", "<size>"),
    _ro("compressratio", "string", "<1.00x or higher if compressed>"),
    _ro("mounted", "string", "yes | no", FS),
    _ro("origin", "string", "<snapshot>", FS),
    _size("quota"),
    _size("reservation"),
    PropDef("volsize", "size", values="<size>", types=0),
    PropDef("volblocksize", "size", values="512 to 128k, power of 2", types=0, setonce=True, inherit=True),
    PropDef("recordsize", "size", "131072", inherit=True, values="512 to 128k, power of 2"),
    PropDef("mountpoint", "string", "", inherit=True, values="<path> | legacy | none"),
    PropDef("sharenfs", "string", "off", inherit=True, values="on | off | share(1M) options"),
    _idx("checksum", ("on", "off", "fletcher2", "fletcher4", "sha256"), "on"),
    _idx("compression", ("on", "off", "lzjb", "gzip", *_GZIP, "zle"), "off",
         values="on | off | lzjb | gzip | gzip-[1-9] | zle"),
    _idx("atime", _ONOFF, "on"),
    _idx("devices", _ONOFF, "on", types=_BOTH),
    _idx("exec", _ONOFF, "on", types=_BOTH),
    _idx("setuid", _ONOFF, "on", types=_BOTH),
    _idx("readonly", _ONOFF, "off"),
    _idx("zoned", _ONOFF, "off"),
    _idx("snapdir", ("hidden", "visible"), "hidden"),
    _idx("aclmode", ("discard", "groupmask", "passthrough"), "groupmask"),
    _idx("aclinherit", ("discard", "noallow", "restricted", "passthrough", "passthrough-x"), "restricted"),
    _ro("createtxg", "number", "", hidden=True),
    _ro("name", "string", "", hidden=True),
    _idx("canmount", ("on", "off", "noauto"), "on", inherit=False),
    _idx("xattr", _ONOFF, "on", types=_BOTH),
    _idx("copies", ("1", "2", "3"), "1"),
    PropDef("version", "string", "4", inherit=False, values="1 | 2 | 3 | 4 | current", types=_BOTH),
    _idx("utf8only", _ONOFF, "off", types=_BOTH, setonce=True),
    _idx("normalization", ("none", "formC", "formD", "formKC", "formKD"), "none", types=_BOTH, setonce=True),
    _idx("casesensitivity", ("sensitive", "insensitive", "mixed"), "sensitive", types=_BOTH, setonce=True),
    _idx("vscan", _ONOFF, "off"),
    _idx("nbmand", _ONOFF, "off", types=_BOTH),
    PropDef("sharesmb", "string", "off", inherit=True, values="on | off | sharemgr(1M) options"),
    _size("refquota"),
    _size("refreservation"),
    _ro("guid", "number", "", hidden=True),
    _idx("primarycache", ("all", "none", "metadata"), "all", types=_BOTH),
    _idx("secondarycache", ("all", "none", "metadata"), "all", types=_BOTH),
    _ro("usedbysnapshots", "size", "<size>", FS),
    _ro("usedbydataset", "size", "<size>", FS),
    _ro("usedbychildren", "size", "<size>", FS),
    _ro("usedbyrefreservation", "size", "<size>", FS),
    _ro("defer_destroy", "string", "yes | no", SNAP),
    _ro("userrefs", "number", "<count>", SNAP),
    _idx("logbias", ("latency", "throughput"), "latency"),
    _ro("objsetid", "number", "", hidden=True),
    _idx("dedup", ("on", "off", "verify", "sha256", "sha256,verify"), "off",
         values="on | off | verify | sha256[,verify]"),
    PropDef("mlslabel", "string", "", inherit=True, values="<sensitivity label>", types=_BOTH),
]

PROPS: dict[str, PropDef] = {p.name: p for p in _DEFS}
# zfs's enum order: the order of ``zfs get all`` rows.
ALL_ORDER: tuple[str, ...] = tuple(p.name for p in _DEFS)
_ALIASES = {"avail": "available", "refer": "referenced", "ratio": "compressratio", "recsize": "recordsize",
            "reserv": "reservation", "refreserv": "refreservation", "compress": "compression",
            "usedsnap": "usedbysnapshots", "usedds": "usedbydataset", "usedchild": "usedbychildren",
            "usedrefreserv": "usedbyrefreservation"}
_USER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.:")


def is_user_prop(name: str) -> bool:
    return ":" in name and len(name) < 256 and all(c in _USER_CHARS for c in name)


def lookup(name: str) -> PropDef | None:
    """The native property called ``name`` (or one of zfs's short aliases)."""
    return PROPS.get(_ALIASES.get(name, name))


_SUFFIXES = "BKMGTPEZ"


def parse_size(value: str) -> int:
    """``zfs_nicestrtonum``: "10M" -> 10485760, "1.5K" -> 1536, "5MB" ok, "5Mi" rejected."""
    if not value or not (value[0].isdigit() or value[0] == "."):
        raise CmdError(f"bad numeric value '{value}'")
    i = 0
    while i < len(value) and value[i].isdigit():
        i += 1
    number, end = value[:i], value[i:]
    if end.startswith("."):
        j = 1
        while j < len(end) and end[j].isdigit():
            j += 1
        fval, suffix = float(number + end[:j] or "0"), end[j:]
        result = int(fval * (1 << _shift(suffix)))
    else:
        result = int(number or "0") << _shift(end)
    if result >= 1 << 64:
        raise CmdError("numeric value is too large")
    return result


def _shift(suffix: str) -> int:
    if not suffix:
        return 0
    idx = _SUFFIXES.find(suffix[0].upper())
    ok = idx >= 0 and (len(suffix) == 1 or (len(suffix) == 2 and suffix[1] in "bB" and idx != 0))
    if not ok:
        raise CmdError(f"invalid numeric suffix '{suffix}'")
    return 10 * idx


def nicenum(num: int) -> str:
    """``zfs_nicenum``: 1536 -> "1.50K", 1048576 -> "1M", 118784 -> "116K"."""
    n, index = num, 0
    while n >= 1024:
        n //= 1024
        index += 1
    unit = " KMGTPE"[index]
    if index == 0:
        return str(n)
    if num & ((1 << (10 * index)) - 1) == 0:
        return f"{n}{unit}"
    for precision in (2, 1, 0):
        text = f"{num / (1 << (10 * index)):.{precision}f}{unit}"
        if len(text) <= 5:
            break
    return text


def parse_value(prop: PropDef, value: str) -> str:
    """Validate a value for ``zfs set``/``create -o`` and return what is stored (sizes as byte counts)."""
    if prop.kind == "index":
        if value not in prop.choices:
            raise CmdError(f"'{prop.name}' must be one of '{prop.values}'")
        return value
    if prop.name == "version":
        if value not in ("1", "2", "3", "4", "current"):
            raise CmdError(f"'{prop.name}' must be one of '{prop.values}'")
        return "4"
    if prop.name == "mountpoint":
        if value not in ("none", "legacy") and not value.startswith("/"):
            raise CmdError("'mountpoint' must be an absolute path, 'none', or 'legacy'")
        if value.startswith("/"):
            return value.rstrip("/") or "/"
        return value
    if prop.kind != "size":
        return value
    if prop.none_zero and value == "none":
        return "0"
    number = parse_size(value)
    if prop.name == "recordsize" and (number < 512 or number > 131072 or number & (number - 1)):
        raise CmdError("'recordsize' must be power of 2 from 512 to 128k")
    if number == 0 and prop.name in ("quota", "refquota"):
        raise CmdError("use 'none' to disable quota/refquota")
    return str(number)


def format_value(prop: PropDef, raw: str, parsable: bool) -> str:
    """Turn a stored/computed value into what ``zfs get`` prints (``-p`` or human-readable)."""
    if raw == "-" or parsable:
        return raw
    if prop.name == "creation":
        return time.strftime("%a %b %e %H:%M %Y", time.localtime(int(raw)))
    if prop.kind == "size" and raw.isdigit():
        if prop.none_zero and raw == "0":
            return "none"
        return nicenum(int(raw))
    if prop.name in ("guid", "createtxg", "objsetid") and raw.isdigit():
        return nicenum(int(raw))
    return raw


_USERQUOTA_ROWS = (
    "\tuserused@...     NO       NO   <size>\n"
    "\tgroupused@...    NO       NO   <size>\n"
    "\tuserquota@...   YES       NO   <size> | none\n"
    "\tgroupquota@...  YES       NO   <size> | none\n"
)
_TABLE_TAIL = (
    "\nSizes are specified in bytes with standard units such as K, M, G, etc.\n"
    "\nUser-defined properties can be specified by using a name containing a colon (:).\n"
    "\nThe {user|group}{used|quota}@ properties must be appended with\n"
    "a user or group specifier of one of these forms:\n"
    '    POSIX name      (eg: "matt")\n'
    '    POSIX id        (eg: "126829")\n'
    '    SMB name@domain (eg: "matt@sun")\n'
    '    SMB SID         (eg: "S-1-234-567-89")\n'
)


def usage_table() -> str:
    """The property list zfs appends to the usage of set/get/list/inherit (read-only ones first)."""
    shown = [p for p in _DEFS if not p.hidden]
    shown.sort(key=lambda p: (not p.readonly, p.name))
    rows = []
    for p in shown:
        edit = "YES    " if p.editable else " NO    "
        inherit = "  YES   " if p.inherit else "   NO   "
        rows.append(f"\t{p.name:<15} {edit}{inherit}{p.values or '-'}\n")
    return ("\nThe following properties are supported:\n\n\tPROPERTY       EDIT  INHERIT   VALUES\n\n"
            + "".join(rows) + _USERQUOTA_ROWS + _TABLE_TAIL)
