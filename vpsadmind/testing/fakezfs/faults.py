"""Fault injection for the fake zfs: ``$FAKE_ZFS_ROOT/faults.json`` and a small API to write it.

Kinds:

- ``nospace``: the matching command fails with zfs's "out of space" (rc 1) instead of changing anything;
- ``busy``: the matching command fails with "dataset is busy" (rc 1), e.g. destroy/rename N times, then works;
- ``slow``: sleep ``seconds`` before the command runs;
- ``break_send``: ``zfs send`` writes ``after_bytes`` bytes of the stream, then fails (rc 1). It works on
  ``zfs send -t <token>`` too (OpenZFS dialect; rc 255 there): the bytes count from the start of that resumed
  stream, its resume header included, and the dataset glob is tried against the snapshot the token names. Each
  send takes one firing, so ``count=2`` (or two injections) breaks a transfer and then its first resumption.

A fault matches by ``verb`` (a zfs/zpool subcommand, ``*`` for any; ``receive`` is ``recv``) and ``dataset`` (an
fnmatch glob tried against the command's dataset operands), and fires ``remaining`` more times (None = always).

Example::

    from vpsadmind.testing.fakezfs import faults
    faults.busy(root, "destroy", "tank/ct/*", count=2)
    faults.slow(root, "send", seconds=0.5)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from vpsadmind.testing.faultfile import FaultFile

__all__ = ["Fault", "KINDS", "inject", "clear", "load", "take", "no_space", "busy", "slow", "break_send"]

KINDS = ("nospace", "busy", "slow", "break_send")
_VERB_ALIASES = {"receive": "recv", "umount": "unmount", "snap": "snapshot"}


@dataclass
class Fault:
    kind: str
    verb: str = "*"
    dataset: str = "*"
    remaining: int | None = 1
    seconds: float = 0.0
    after_bytes: int = 0
    program: str = "zfs"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        self.verb = _VERB_ALIASES.get(self.verb, self.verb)

    def matches(self, program: str, verb: str, names: Iterable[str]) -> bool:
        if self.program != program or not fnmatchcase(_VERB_ALIASES.get(verb, verb), self.verb):
            return False
        names = list(names)
        if not names:
            return self.dataset == "*"
        return any(fnmatchcase(name, self.dataset) for name in names)


def load(root: str | Path) -> list[Fault]:
    """The faults still pending."""
    return FaultFile(root, Fault).load()


def inject(root: str | Path, fault: Fault) -> Fault:
    return FaultFile(root, Fault).inject(fault)


def clear(root: str | Path) -> None:
    FaultFile(root, Fault).clear()


def take(root: str | Path, kinds: Iterable[str], verb: str, names: Iterable[str], *,
         program: str = "zfs") -> Fault | None:
    """Consume one firing of the first pending fault of one of ``kinds`` that matches; None if there is none."""
    kinds, names = set(kinds), list(names)
    return FaultFile(root, Fault).take(lambda f: f.kind in kinds and f.matches(program, verb, names))


def no_space(root: str | Path, verb: str = "*", dataset: str = "*", count: int | None = 1) -> Fault:
    return inject(root, Fault("nospace", verb, dataset, count))


def busy(root: str | Path, verb: str = "destroy", dataset: str = "*", count: int | None = 1) -> Fault:
    return inject(root, Fault("busy", verb, dataset, count))


def slow(root: str | Path, verb: str = "*", seconds: float = 1.0, dataset: str = "*",
         count: int | None = None) -> Fault:
    return inject(root, Fault("slow", verb, dataset, count, seconds=seconds))


def break_send(root: str | Path, after_bytes: int, dataset: str = "*", count: int | None = 1) -> Fault:
    return inject(root, Fault("break_send", "send", dataset, count, after_bytes=after_bytes))
