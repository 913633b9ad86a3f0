"""vzctl's option parsing and the values it writes into ``<veid>.conf`` (``src/lib/config.c`` ``parse_*`` and
``store_*``), for ``set`` and ``create`` and for applying ``ve-<name>.conf-sample``.

What is written (legacy vzctl 4.9):

* UBC ``--<name> b[:l]``: ``NAME="b:l"``, or ``NAME="b"`` when barrier = limit; suffixes K/M/G/T/P/B are
  converted to pages (page-based params) or bytes; ``unlimited`` stays ``unlimited``. ``num*`` take no suffix;
* ``--ram``/``--swap``: ``PHYSPAGES``/``SWAPPAGES="0:<pages>"`` (bytes rounded up to 4 KiB pages);
* ``--diskspace``: ``DISKSPACE="soft:hard"`` in KiB; ``--diskinodes``: ``DISKINODES="soft:hard"``;
* ``--ipadd``/``--ipdel``: ``IP_ADDRESS`` = old list minus deleted plus added (re-adding moves it to the end),
  canonical IPv6; ``--ipdel all`` empties it;
* ``--nameserver``/``--searchdomain``: the list given in this call replaces the old one;
* ``--capability``: the union of old and new, upper-case, in kernel capability order, ``NAME:on|off``;
* ``--features``: the union, in vzctl's order (sysfs nfs sit ipip ppp ipgre bridge nfsd), ``name:on|off``;
* ``--devices``/``--devnodes``: old entries not overridden, then new ones, each followed by a space; ``:none``
  removes an entry; removing the last one writes ``""``;
* everything else verbatim (``ONBOOT="yes"``, ``HOSTNAME``, ``OSTEMPLATE``, ``VE_ROOT="/vz/root/$VEID"``, ...).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vpsadmind.testing.fakevz.errors import INVALID_SYNTAX, INVALID_VALUE, VzFail

__all__ = [
    "PAGE", "LONG_MAX", "UBC", "FEATURES", "CAPS", "SET_SPEC", "CREATE_SPEC", "RESTART_KEYS", "Request",
    "SAMPLE_SKIP", "parse_long", "add_option", "add_sample", "compose", "ubcstr", "parse_pair",
]

PAGE = 4096
LONG_MAX = 2**63 - 1
_MUL = {"t": 1024**4, "g": 1024**3, "m": 1024**2, "k": 1024, "p": PAGE, "b": 1}

# UBC option -> divisor for suffixed values (pages, bytes, or 0 = no suffix allowed).
UBC: dict[str, int] = {
    "kmemsize": 1, "lockedpages": PAGE, "privvmpages": PAGE, "shmpages": PAGE, "numproc": 0, "physpages": PAGE,
    "vmguarpages": PAGE, "oomguarpages": PAGE, "numtcpsock": 0, "numflock": 0, "numpty": 0, "numsiginfo": 0,
    "tcpsndbuf": 1, "tcprcvbuf": 1, "othersockbuf": 1, "dgramrcvbuf": 1, "numothersock": 0, "numfile": 0,
    "dcachesize": 1, "numiptent": 0, "avnumproc": 0, "swappages": PAGE,
}
FEATURES = ("sysfs", "nfs", "sit", "ipip", "ppp", "ipgre", "bridge", "nfsd")
CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
        "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
        "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "VE_ADMIN", "SETFCAP")

# Plain options: name -> conf key (value checked by _SCALAR_CHECK).
_SCALARS = {
    "onboot": "ONBOOT", "bootorder": "BOOTORDER", "root": "VE_ROOT", "private": "VE_PRIVATE", "disabled": "DISABLED",
    "name": "NAME", "description": "DESCRIPTION", "hostname": "HOSTNAME", "ostemplate": "OSTEMPLATE",
    "cpuunits": "CPUUNITS", "cpuweight": "CPUWEIGHT", "cpulimit": "CPULIMIT", "cpus": "CPUS", "cpumask": "CPUMASK",
    "ioprio": "IOPRIO", "netfilter": "NETFILTER", "diskquota": "DISK_QUOTA", "quotatime": "QUOTATIME",
    "quotaugidlimit": "QUOTAUGIDLIMIT", "mount_opts": "MOUNT_OPTS", "meminfo": "MEMINFO", "layout": "VE_LAYOUT",
}
_LISTS = ("ipadd", "ip", "ipdel", "nameserver", "searchdomain", "capability", "features", "devices", "devnodes",
          "iptables")

#: getopt specs: option -> takes an argument.
SET_SPEC: dict[str, bool] = {
    **{name: True for name in (*_SCALARS, *_LISTS, *UBC, "ram", "swap", "diskspace", "diskinodes", "applyconfig",
                               "userpasswd", "setmode", "noatime")},
    "save": False, "force": False, "reset_ub": False,
}
CREATE_SPEC: dict[str, bool] = {name: True for name in (
    "ostemplate", "config", "private", "root", "ipadd", "hostname", "name", "description", "layout", "ve_layout",
    "velayout", "diskspace")}

#: Keys whose change needs a restart of a running container (``check_set_mode``).
RESTART_KEYS = frozenset({"CAPABILITY", "FEATURES", "NETFILTER", "IPTABLES", "QUOTAUGIDLIMIT", "DISK_QUOTA",
                          "MOUNT_OPTS"})
#: Keys ``--applyconfig`` does not copy from a sample.
SAMPLE_SKIP = frozenset({"VE_ROOT", "VE_PRIVATE", "OSTEMPLATE", "HOSTNAME", "DESCRIPTION", "IP_ADDRESS", "NAME"})
_SAMPLE_LISTS = {"CAPABILITY": "capability", "FEATURES": "features", "DEVICES": "devices", "DEVNODES": "devnodes",
                 "NAMESERVER": "nameserver", "SEARCHDOMAIN": "searchdomain", "IPTABLES": "iptables"}


def parse_long(args: Sequence[str], spec: Mapping[str, bool], *,
               bad_rc: int = INVALID_VALUE) -> tuple[list[tuple[str, str | None]], list[str]]:
    """getopt_long over ``--name value`` / ``--name=value`` (unique prefixes accepted, as getopt does)."""
    options: list[tuple[str, str | None]] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            rest += args[index:]
            break
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        if not arg.startswith("--"):
            raise VzFail(bad_rc, f"vzctl: invalid option -- '{arg[1:2]}'")
        name, eq, value = arg[2:].partition("=")
        matches = [n for n in spec if n == name] or [n for n in spec if n.startswith(name)]
        if len(matches) != 1:
            kind = "ambiguous" if matches else "unrecognized"
            raise VzFail(bad_rc, f"vzctl: {kind} option '--{name}'")
        name = matches[0]
        if not spec[name]:
            if eq:
                raise VzFail(bad_rc, f"vzctl: option '--{name}' doesn't allow an argument")
            options.append((name, None))
        elif eq:
            options.append((name, value))
        elif index < len(args):
            options.append((name, args[index]))
            index += 1
        else:
            raise VzFail(bad_rc, f"vzctl: option '--{name}' requires an argument")
    return options, rest


def _bad(name: str, value: str) -> VzFail:
    return VzFail(INVALID_VALUE, f"Bad parameter for --{name}: {value}")


def _number(text: str, divisor: int) -> tuple[int, str] | None:
    """``parse_ul_sfx``: a number with an optional suffix (divided by ``divisor``) or ``unlimited``."""
    if text.startswith("unlimited"):
        return LONG_MAX, text[9:]
    m = re.match(r"(\d+(?:\.\d+)?)(.*)$", text)
    if not m:
        return None
    value: int | float = float(m[1]) if "." in m[1] else int(m[1])
    tail = m[2]
    if tail[:1] not in ("", ":"):
        mul = _MUL.get(tail[0].lower())
        if not divisor or mul is None:
            return None
        # vzctl computes in long double and truncates; integer maths gives the same result without rounding
        value = value * mul // divisor if isinstance(value, int) else value * mul / divisor
        tail = tail[1:]
    return min(int(value), LONG_MAX), tail


def parse_pair(text: str, divisor: int) -> tuple[int, int] | None:
    """``parse_twoul_sfx``: ``barrier[:limit]`` (limit = barrier when omitted)."""
    first = _number(text, divisor)
    if first is None:
        return None
    if not first[1]:
        return first[0], first[0]
    second = _number(first[1][1:], divisor) if first[1][0] == ":" else None
    if second is None or second[1]:
        return None
    return first[0], second[0]


def ubcstr(barrier: int, limit: int) -> str:
    def one(v: int) -> str:
        return "unlimited" if v >= LONG_MAX else str(v)
    return one(barrier) if barrier == limit else f"{one(barrier)}:{one(limit)}"


def _vswap(value: str) -> str | None:
    parsed = _number(value, 1)
    if parsed is None or parsed[1]:
        return None
    return f"0:{min(math.ceil(parsed[0] / PAGE), LONG_MAX)}"


def _ip(value: str) -> str | None:
    addr, _, prefix = value.partition("/")
    try:
        canon = ipaddress.ip_address(addr).compressed
    except ValueError:
        return None
    if prefix and not prefix.isdigit():
        return None
    return f"{canon}/{prefix}" if prefix else canon


_SCALAR_CHECK = {
    "onboot": r"yes|no", "disabled": r"yes|no", "diskquota": r"yes|no", "bootorder": r"\d+", "cpuunits": r"\d+",
    "cpuweight": r"\d+", "cpulimit": r"\d+%?", "cpus": r"\d+|unlimited", "ioprio": r"[0-7]", "quotatime": r"\d+",
    "quotaugidlimit": r"\d+", "netfilter": r"disabled|stateless|stateful|full", "cpumask": r"all|[\d,-]+",
    "layout": r"simfs", "root": r"/.*", "private": r"/.*",
}


@dataclass
class Request:
    """What one ``set`` (or a sample) asks for, before it is merged with the old conf by :func:`compose`."""

    scalars: dict[str, str] = field(default_factory=dict)
    ip_add: list[str] = field(default_factory=list)
    ip_del: list[str] = field(default_factory=list)
    ip_del_all: bool = False
    lists: dict[str, list[str]] = field(default_factory=dict)    # NAMESERVER/SEARCHDOMAIN/IPTABLES: replaced
    caps: dict[str, str] = field(default_factory=dict)
    features: dict[str, str] = field(default_factory=dict)
    devices: list[tuple[str, str]] = field(default_factory=list)     # (id "c:10:200", perm or "")
    devnodes: list[tuple[str, str]] = field(default_factory=list)    # (name, perm or "")


def _switches(name: str, value: str, known: Sequence[str], upper: bool) -> list[tuple[str, str]]:
    out = []
    for token in re.split(r"[\s,]+", value.strip()):
        key, sep, state = token.rpartition(":")
        key = key.upper() if upper else key
        if not token or not sep or state not in ("on", "off") or key not in known:
            raise _bad(name, value)
        out.append((key, state))
    return out


def _dev_entry(name: str, token: str) -> tuple[str, str]:
    if name == "devices":
        m = re.fullmatch(r"([bc]):(\d+):(\d+|all):(none|[rwq]+)", token)
        if not m or m[2] == "7":        # vzctl refuses the loop device major
            raise _bad(name, token)
        ident, perm = f"{m[1]}:{m[2]}:{m[3]}", m[4]
    else:
        ident, _, perm = token.rpartition(":")
        if not ident or ".." in ident.split("/") or not re.fullmatch(r"none|[rwq]+", perm):
            raise _bad(name, token)
    order = "".join(c for c in "rwq" if c in perm) if perm != "none" else ""
    return ident, order


def _add_list(req: Request, name: str, value: str) -> None:
    if name in ("ipadd", "ip", "ipdel"):
        for token in value.split():
            if name == "ipdel" and token == "all":
                req.ip_del_all = True
                continue
            canon = _ip(token)
            if canon is None:
                raise _bad(name, value)
            if canon.split("/")[0] not in ("0.0.0.0", "::"):
                (req.ip_del if name == "ipdel" else req.ip_add).append(canon)
    elif name in ("nameserver", "searchdomain", "iptables"):
        req.lists.setdefault(name.upper(), []).extend(value.split())
    elif name == "capability":
        req.caps.update(_switches(name, value, CAPS, upper=True))
    elif name == "features":
        req.features.update(_switches(name, value, FEATURES, upper=False))
    else:
        target = req.devices if name == "devices" else req.devnodes
        target.extend(_dev_entry(name, token) for token in value.split())


def add_option(req: Request, name: str, value: str) -> None:
    """One ``--name value`` of ``set``/``create`` into ``req`` (exit 21 "Bad parameter" for a bad value)."""
    if name in _LISTS:
        _add_list(req, name, value)
    elif name in UBC:
        pair = parse_pair(value, UBC[name])
        if pair is None:
            raise _bad(name, value)
        req.scalars[name.upper()] = ubcstr(*pair)
    elif name in ("ram", "swap"):
        pages = _vswap(value)
        if pages is None:
            raise _bad(name, value)
        req.scalars["PHYSPAGES" if name == "ram" else "SWAPPAGES"] = pages
    elif name in ("diskspace", "diskinodes"):
        pair = parse_pair(value, 1024 if name == "diskspace" else 1)
        if pair is None:
            raise _bad(name, value)
        req.scalars[name.upper()] = f"{pair[0]}:{pair[1]}"
    elif name in _SCALARS:
        pattern = _SCALAR_CHECK.get(name)
        if (pattern and not re.fullmatch(pattern, value)) or '"' in value or "\n" in value:
            raise _bad(name, value)
        req.scalars[_SCALARS[name]] = value.rstrip("%") if name == "cpulimit" else value
    elif name != "noatime":             # vzctl accepts and ignores --noatime
        raise VzFail(INVALID_SYNTAX, f"vzctl: unrecognized option '--{name}'")


def add_sample(req: Request, sample: Mapping[str, str]) -> list[str]:
    """Load a config sample's values as ``--applyconfig`` does; returns warnings for values it skipped."""
    warnings = []
    by_key = {key: name for name, key in _SCALARS.items()}
    for key, value in sample.items():
        if key in SAMPLE_SKIP:
            continue
        name = by_key.get(key) or _SAMPLE_LISTS.get(key) or key.lower()
        if name not in SET_SPEC or name in ("ram", "swap"):
            continue
        try:
            add_option(req, name, value)
        except VzFail:
            warnings.append(f"Warning: ignoring bad value of {key} in the sample: {value}")
    return warnings


def _merge_switches(old: str, new: Mapping[str, str], order: Sequence[str], upper: bool) -> str:
    merged: dict[str, str] = {}
    for token in old.split():
        key, _, state = token.rpartition(":")
        merged[key.upper() if upper else key] = state
    merged.update(new)
    return " ".join(f"{key}:{merged[key]}" for key in order if key in merged)


def _merge_devs(old: str, new: Sequence[tuple[str, str]]) -> str | None:
    entries = [(ident, perm) for ident, _, perm in (token.rpartition(":") for token in old.split())]
    new_ids = {ident for ident, _ in new}
    kept = [(i, p) for i, p in entries if i not in new_ids and p and p != "none"]
    kept += [(i, p) for i, p in new if p]
    if not kept and not (entries and new):
        return None
    return "".join(f"{ident}:{perm} " for ident, perm in kept)


def compose(req: Request, old: Mapping[str, str]) -> dict[str, str]:
    """The ``KEY -> value`` lines vzctl would write for ``req`` on top of the conf ``old``."""
    changes = dict(req.scalars)
    if req.ip_add or req.ip_del or req.ip_del_all:
        current = [] if req.ip_del_all else old.get("IP_ADDRESS", "").split()
        bare = {ip.split("/")[0] for ip in (*req.ip_del, *req.ip_add)}
        current = [ip for ip in current if ip.split("/")[0] not in bare]
        changes["IP_ADDRESS"] = " ".join(dict.fromkeys([*current, *req.ip_add]))
    for key, values in req.lists.items():
        changes[key] = " ".join(values)
    if req.caps:
        changes["CAPABILITY"] = _merge_switches(old.get("CAPABILITY", ""), req.caps, CAPS, upper=True)
    if req.features:
        changes["FEATURES"] = _merge_switches(old.get("FEATURES", ""), req.features, FEATURES, upper=False)
    for key, entries in (("DEVICES", req.devices), ("DEVNODES", req.devnodes)):
        if entries:
            merged = _merge_devs(old.get(key, ""), entries)
            if merged is not None:
                changes[key] = merged
    return {key: value for key, value in changes.items() if old.get(key) != value or key not in old}
