"""Checks every value before it reaches vzctl's argv or a conf file; each returns the normalised value or raises
:class:`~vpsadmind.vz.errors.InvalidValue` (``field``, ``value``, ``rule``).

Why so strict when argv needs no shell quoting: vzctl writes most values verbatim into ``<veid>.conf`` as
``KEY="value"`` lines, and that file is a shell fragment (v1.22 action scripts sourced it, admins still do). A
``"`` or newline in a value would end the assignment and start a new line of the file (a forged ``VE_ROOT=`` or a
command), and ``$``, a backtick or ``\\`` would be expanded by a shell that sources it. So conf values may not
contain any of ``" \\ ` $`` nor control characters; the one exception is the literal ``$VEID`` that vzctl itself
documents for ``--root``/``--private``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

from vpsadmind.vz.errors import InvalidValue

__all__ = [
    "VEID_MAX", "FEATURES", "CAPABILITIES", "NETFILTER_MODES", "veid", "hostname", "ip", "nameserver", "path",
    "name", "conf_value", "conf_key", "option_name", "user", "password", "size", "ubc", "device", "devnode",
    "feature", "capability", "netfilter", "yesno", "setmode", "integer", "exec_arg", "cpumask",
]

#: vzctl parses the CTID into a C ``int``; 0 is the host (CT0) and is refused here.
VEID_MAX: Final = 2**31 - 1

#: ``--features`` names vzctl 4.9 knows (``src/lib/vzfeatures.c``), in the order it writes them.
FEATURES: Final = ("sysfs", "nfs", "sit", "ipip", "ppp", "ipgre", "bridge", "nfsd")

#: ``--capability`` names (``src/lib/cap.c``), lower case; vzctl matches them case-insensitively.
CAPABILITIES: Final = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
    "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
    "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "ve_admin", "setfcap",
)

NETFILTER_MODES: Final = ("disabled", "stateless", "stateful", "full")

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_KEY = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_OPTION = re.compile(r"[a-z][a-z0-9_]{0,31}")
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_SIZE = re.compile(r"(?:\d{1,20}(?:\.\d{1,6})?[KMGTPBkmgtpb]?|unlimited)")
_DEVICE = re.compile(r"[bc]:\d{1,4}:(?:\d{1,7}|all):(?:none|[rwq]{1,3})")
_DEVNODE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+/-]{0,127}:(?:none|[rwq]{1,3})")
_CPUMASK = re.compile(r"all|\d{1,4}(?:-\d{1,4})?(?:,\d{1,4}(?:-\d{1,4})?){0,255}")
# Characters no conf value may hold (see the module doc); control characters are checked separately.
_CONF_FORBIDDEN: Final = frozenset('"\\`$')
_VEID_TOKENS = ("${VEID}", "$VEID")


def _text(field: str, value: object, *, max_len: int = 4096) -> str:
    if not isinstance(value, str):
        raise InvalidValue(field, value, f"must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidValue(field, value, "must not be empty")
    if len(value) > max_len:
        raise InvalidValue(field, value, f"longer than {max_len} characters")
    for char in value:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise InvalidValue(field, value, f"control character {char!r} (newline, NUL, ...) not allowed")
    return value


def veid(value: object) -> int:
    """A container id: a positive int (or its decimal string) up to 2**31-1. Names are not accepted."""
    if isinstance(value, bool):
        raise InvalidValue("veid", value, "must be an integer, not a bool")
    if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,9}", value):
        value = int(value)
    if not isinstance(value, int):
        raise InvalidValue("veid", value, "must be a positive integer")
    if not 1 <= value <= VEID_MAX:
        raise InvalidValue("veid", value, f"must be between 1 and {VEID_MAX}")
    return value


def hostname(value: object, field: str = "hostname") -> str:
    """An RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, at most 253 chars."""
    text = _text(field, value, max_len=253)
    labels = text.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidValue(field, value, "labels must be 1-63 letters, digits or inner hyphens, separated by dots")
    return text


def ip(value: object, field: str = "ip", *, allow_prefix: bool = False) -> str:
    """An IPv4/IPv6 address in canonical form (``2001:db8::1``); with ``allow_prefix`` also ``addr/len`` as
    vzctl's ``--ipadd`` accepts. ``0.0.0.0`` and ``::`` are refused (vzctl silently ignores them)."""
    text = _text(field, value, max_len=64)
    try:
        if allow_prefix and "/" in text:
            iface = ipaddress.ip_interface(text)
            addr, shown = iface.ip, f"{iface.ip.compressed}/{iface.network.prefixlen}"
        else:
            addr = ipaddress.ip_address(text)
            shown = addr.compressed
    except ValueError:
        raise InvalidValue(field, value, "not an IPv4 or IPv6 address") from None
    if addr.is_unspecified:
        raise InvalidValue(field, value, "the unspecified address is not allowed")
    return shown


def nameserver(value: object) -> str:
    return ip(value, "nameserver")


def path(value: object, field: str = "path", *, allow_veid: bool = False) -> str:
    """An absolute path without ``..`` components, conf-safe (no quotes, backslashes, ``$`` or control characters;
    with ``allow_veid`` the literal ``$VEID``/``${VEID}`` that vzctl substitutes is allowed)."""
    text = _text(field, value)
    if not text.startswith("/"):
        raise InvalidValue(field, value, "must be an absolute path")
    if ".." in text.split("/"):
        raise InvalidValue(field, value, "must not contain '..' components")
    stripped = text
    if allow_veid:
        for token in _VEID_TOKENS:
            stripped = stripped.replace(token, "")
    bad = _CONF_FORBIDDEN.intersection(stripped)
    if bad:
        raise InvalidValue(field, value, f"must not contain {''.join(sorted(bad))!r}")
    return text


def name(value: object, field: str = "name") -> str:
    """An OS template, config sample or container name: letters, digits and ``. _ + -``, no ``/``."""
    text = _text(field, value, max_len=255)
    if not _NAME.fullmatch(text) or text in (".", ".."):
        raise InvalidValue(field, value, "must be letters, digits, '.', '_', '+' or '-' and start alphanumeric")
    return text


def conf_value(value: object, field: str = "value") -> str:
    """Any text vzctl would store verbatim between double quotes (see the module doc for what is refused)."""
    if isinstance(value, str) and value == "":
        return value
    text = _text(field, value)
    bad = _CONF_FORBIDDEN.intersection(text)
    if bad:
        raise InvalidValue(field, value, f"must not contain {''.join(sorted(bad))!r} (it would break the conf file)")
    return text


def conf_key(value: object) -> str:
    """A conf file key (``PHYSPAGES``, ``VE_ROOT``): upper-case letters, digits and underscores."""
    text = _text("conf key", value, max_len=64)
    if not _KEY.fullmatch(text):
        raise InvalidValue("conf key", value, "must be upper-case letters, digits and '_'")
    return text


def option_name(value: object) -> str:
    text = _text("option", value, max_len=32)
    if not _OPTION.fullmatch(text):
        raise InvalidValue("option", value, "must be a lower-case vzctl option name without dashes")
    return text


def user(value: object) -> str:
    text = _text("user", value, max_len=32)
    if not _USER.fullmatch(text):
        raise InvalidValue("user", value, "must be a lower-case login name")
    return text


def password(value: object) -> str:
    """Any printable text: vzctl splits ``user:password`` at the first colon, so colons are fine; a newline would
    inject a second ``chpasswd`` line inside the container, so control characters are not."""
    return _text("password", value, max_len=512)


def size(value: object, field: str) -> str:
    """A byte count for ``--ram``/``--swap``/``--diskspace``: an int or ``<n>[KMGTPB]`` or ``unlimited``."""
    if isinstance(value, bool):
        raise InvalidValue(field, value, "must be a size, not a bool")
    if isinstance(value, int):
        if value < 0:
            raise InvalidValue(field, value, "must not be negative")
        return str(value)
    text = _text(field, value, max_len=32)
    if not _SIZE.fullmatch(text):
        raise InvalidValue(field, value, "must be a number with an optional K/M/G/T/P/B suffix, or 'unlimited'")
    return text


def ubc(value: object, field: str) -> str:
    """A beancounter value ``barrier[:limit]`` (each a size), or a single int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return size(value, field)
    text = _text(field, value, max_len=64)
    parts = text.split(":")
    if len(parts) > 2:
        raise InvalidValue(field, value, "must be barrier[:limit]")
    for part in parts:
        size(part, field)
    return text


def device(value: object) -> str:
    """``--devices``: ``b|c:major:minor|all:perm`` with perm ``r``, ``w``, ``q`` combinations or ``none``."""
    text = _text("devices", value, max_len=64)
    if not _DEVICE.fullmatch(text):
        raise InvalidValue("devices", value, "must be b|c:major:minor|all:[r][w][q]|none")
    return text


def devnode(value: object) -> str:
    """``--devnodes``: ``name:perm`` where name is a path below ``/dev`` (``net/tun``) without ``..``."""
    text = _text("devnodes", value, max_len=160)
    if not _DEVNODE.fullmatch(text) or ".." in text.rpartition(":")[0].split("/"):
        raise InvalidValue("devnodes", value, "must be <name below /dev>:[r][w][q]|none")
    return text


def _switch(field: str, value: object, known: Iterable[str]) -> str:
    text = _text(field, value, max_len=64)
    key, sep, state = text.lower().rpartition(":")
    if not sep or state not in ("on", "off"):
        raise InvalidValue(field, value, "must be <name>:on or <name>:off")
    if key not in known:
        raise InvalidValue(field, value, f"unknown name {key!r}")
    return f"{key}:{state}"


def feature(value: object) -> str:
    """``--features``: ``name:on|off`` for one of :data:`FEATURES`."""
    return _switch("features", value, FEATURES)


def capability(value: object) -> str:
    """``--capability``: ``name:on|off`` for one of :data:`CAPABILITIES` (lower-cased)."""
    return _switch("capability", value, CAPABILITIES)


def netfilter(value: object) -> str:
    text = _text("netfilter", value, max_len=16)
    if text not in NETFILTER_MODES:
        raise InvalidValue("netfilter", value, f"must be one of {', '.join(NETFILTER_MODES)}")
    return text


def yesno(value: object, field: str) -> str:
    """``yes``/``no`` (a bool is converted)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value in ("yes", "no"):
        return str(value)
    raise InvalidValue(field, value, "must be yes, no or a bool")


def setmode(value: object) -> str:
    if value in ("restart", "ignore"):
        return str(value)
    raise InvalidValue("setmode", value, "must be restart or ignore")


def integer(value: object, field: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> str:
    """A decimal integer (an int or its string) within ``[minimum, maximum]``, returned as a string."""
    if isinstance(value, bool):
        raise InvalidValue(field, value, "must be an integer, not a bool")
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value):
        value = int(value)
    if not isinstance(value, int):
        raise InvalidValue(field, value, "must be an integer")
    if not minimum <= value <= maximum:
        raise InvalidValue(field, value, f"must be between {minimum} and {maximum}")
    return str(value)


def cpumask(value: object) -> str:
    text = _text("cpumask", value, max_len=1024)
    if not _CPUMASK.fullmatch(text):
        raise InvalidValue("cpumask", value, "must be 'all' or a list like 0-2,7")
    return text


def exec_arg(value: object) -> str:
    """One argument of a command run inside a container: any text without control characters (it is shell-quoted
    for ``vzctl exec2``, see docs/vz.md); the empty string is allowed."""
    if isinstance(value, str) and value == "":
        return value
    return _text("exec argument", value, max_len=65536)
