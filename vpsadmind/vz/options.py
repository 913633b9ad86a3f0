"""``vzctl set`` options: a mapping of option names to values becomes ``--opt value`` arguments, each validated.

Names are vzctl's long option names without the dashes (``ipadd``, ``ram``, ``features``). A value is a string,
an int, a bool (for the yes/no options) or a list; a list repeats the option (``{"nameserver": ["1.1.1.1",
"8.8.8.8"]}`` gives ``--nameserver 1.1.1.1 --nameserver 8.8.8.8``, as v2.0 did). Options that are not in
:data:`SET_OPTIONS` are refused: the flags ``--save``/``--setmode``/``--applyconfig``/``--userpasswd`` have their
own driver methods, and anything else would be a typo that vzctl rejects with exit 21 anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Final, TypeAlias

from vpsadmind.vz import validate as v
from vpsadmind.vz.errors import InvalidValue

__all__ = ["OptionValue", "SET_OPTIONS", "REPEATABLE", "UBC_OPTIONS", "option_argv", "format_value"]

OptionValue: TypeAlias = "str | int | bool | Sequence[str | int]"

#: Beancounter options (``barrier[:limit]``); vzctl writes them as ``NAME="barrier:limit"`` in pages/bytes.
UBC_OPTIONS: Final = (
    "kmemsize", "lockedpages", "privvmpages", "shmpages", "numproc", "physpages", "vmguarpages", "oomguarpages",
    "numtcpsock", "numflock", "numpty", "numsiginfo", "tcpsndbuf", "tcprcvbuf", "othersockbuf", "dgramrcvbuf",
    "numothersock", "numfile", "dcachesize", "numiptent", "avnumproc", "swappages",
)

_Check = Callable[[object], str]


def _ipdel(value: object) -> str:
    return "all" if value == "all" else v.ip(value, "ipdel", allow_prefix=True)


SET_OPTIONS: Final[dict[str, _Check]] = {
    "onboot": partial(v.yesno, field="onboot"),
    "bootorder": partial(v.integer, field="bootorder"),
    "root": partial(v.path, field="root", allow_veid=True),
    "private": partial(v.path, field="private", allow_veid=True),
    "disabled": partial(v.yesno, field="disabled"),
    "name": partial(v.name, field="name"),
    "description": partial(v.conf_value, field="description"),
    "ostemplate": partial(v.name, field="ostemplate"),
    "hostname": v.hostname,
    "searchdomain": partial(v.hostname, field="searchdomain"),
    "nameserver": v.nameserver,
    "ipadd": partial(v.ip, field="ipadd", allow_prefix=True),
    "ipdel": _ipdel,
    "ram": partial(v.size, field="ram"),
    "swap": partial(v.size, field="swap"),
    "cpuunits": partial(v.integer, field="cpuunits", minimum=8, maximum=500000),
    "cpulimit": partial(v.integer, field="cpulimit"),
    "cpus": partial(v.integer, field="cpus", minimum=1, maximum=4096),
    "cpumask": v.cpumask,
    "ioprio": partial(v.integer, field="ioprio", maximum=7),
    "netfilter": v.netfilter,
    "diskquota": partial(v.yesno, field="diskquota"),
    "diskspace": partial(v.ubc, field="diskspace"),
    "diskinodes": partial(v.ubc, field="diskinodes"),
    "quotatime": partial(v.integer, field="quotatime"),
    "quotaugidlimit": partial(v.integer, field="quotaugidlimit"),
    "capability": v.capability,
    "devices": v.device,
    "devnodes": v.devnode,
    "features": v.feature,
    **{name: partial(v.ubc, field=name) for name in UBC_OPTIONS},
}

#: Options that may be given several times in one call (and so accept a list).
REPEATABLE: Final = frozenset({"nameserver", "searchdomain", "ipadd", "ipdel", "capability", "devices",
                               "devnodes", "features"})


def format_value(option: str, value: object) -> list[str]:
    """The validated argument strings for one option (one per repetition)."""
    check = SET_OPTIONS.get(option)
    if check is None:
        raise InvalidValue("option", option, "not a vzctl set option this driver passes (see SET_OPTIONS)")
    if isinstance(value, (list, tuple)):
        if option not in REPEATABLE:
            raise InvalidValue(option, value, "takes one value, not a list")
        if not value:
            raise InvalidValue(option, value, "needs at least one value")
        return [check(item) for item in value]
    return [check(value)]


def option_argv(options: Mapping[str, object]) -> list[str]:
    """``--opt value`` arguments for ``vzctl set``, in the mapping's order; raises InvalidValue before anything
    runs if a name or value is not acceptable."""
    argv: list[str] = []
    for option, value in options.items():
        name = v.option_name(option)
        for item in format_value(name, value):
            argv += [f"--{name}", item]
    return argv
