"""Fault injection for fake-vzctl/fake-vzlist: ``$FAKE_VZ_ROOT/faults.json`` and a small API to write it.

Kinds:

- ``fail``: the matching command exits ``rc`` with ``message`` on stderr. By default nothing is done
  (``after=False``); with ``after=True`` the command runs first and then fails with that code, like a vzctl that
  did its work but reported an error (a start that succeeded but whose ``--onboot`` save failed, say);
- ``hang``: sleep ``seconds`` before the command runs (a slow or stuck vzctl, for timeouts).

A fault matches by ``program`` (``vzctl``/``vzlist``), ``verb`` (a vzctl command, fnmatch glob, ``*`` = any;
``delete`` is ``destroy``; vzlist's verb is ``list``), ``veid`` (a glob against the container id, ``*`` = any)
and ``arg`` (if set, an argument that must be on the command line, e.g. ``--applyconfig``). It fires
``remaining`` more times (None = always).

Example::

    from vpsadmind.testing.fakevz import faults
    faults.fail(root, "start", veid="101", rc=79, message="Error executing mount script", count=2)
    faults.hang(root, "stop", seconds=5)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from vpsadmind.testing.faultfile import FaultFile

__all__ = ["Fault", "KINDS", "inject", "clear", "load", "take", "fail", "hang"]

KINDS = ("fail", "hang")
_ALIASES = {"delete": "destroy"}


@dataclass
class Fault:
    kind: str
    verb: str = "*"
    veid: str = "*"
    remaining: int | None = 1
    rc: int = 3
    message: str = ""
    seconds: float = 0.0
    after: bool = False
    program: str = "vzctl"
    arg: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        self.verb = _ALIASES.get(self.verb, self.verb)

    def matches(self, program: str, verb: str, veid: str, args: Sequence[str]) -> bool:
        if self.program != program or not fnmatchcase(_ALIASES.get(verb, verb), self.verb):
            return False
        if not fnmatchcase(veid, self.veid):
            return False
        return self.arg is None or self.arg in args


def load(root: str | os.PathLike[str]) -> list[Fault]:
    """The faults still pending."""
    return FaultFile(root, Fault).load()


def inject(root: str | os.PathLike[str], fault: Fault) -> Fault:
    return FaultFile(root, Fault).inject(fault)


def clear(root: str | os.PathLike[str]) -> None:
    FaultFile(root, Fault).clear()


def take(root: str | os.PathLike[str], kind: str, program: str, verb: str, veid: str,
         args: Sequence[str]) -> Fault | None:
    """Consume one firing of the first pending fault of ``kind`` that matches; None if there is none."""
    return FaultFile(root, Fault).take(lambda f: f.kind == kind and f.matches(program, verb, veid, args))


def fail(root: str | os.PathLike[str], verb: str = "*", *, veid: str = "*", rc: int = 3, message: str = "",
         count: int | None = 1, after: bool = False, program: str = "vzctl", arg: str | None = None) -> Fault:
    return inject(root, Fault("fail", verb, veid, count, rc=rc, message=message, after=after, program=program,
                              arg=arg))


def hang(root: str | os.PathLike[str], verb: str = "*", *, seconds: float = 1.0, veid: str = "*",
         count: int | None = None, program: str = "vzctl", arg: str | None = None) -> Fault:
    return inject(root, Fault("hang", verb, veid, count, seconds=seconds, program=program, arg=arg))
