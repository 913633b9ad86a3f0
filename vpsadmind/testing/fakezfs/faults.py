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

import fcntl
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path

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


def _path(root: str | Path) -> Path:
    return Path(root) / "faults.json"


def _locked(root: str | Path) -> int:
    fd = os.open(Path(root) / "faults.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _read(root: str | Path) -> list[Fault]:
    try:
        data = json.loads(_path(root).read_text())
    except FileNotFoundError:
        return []
    return [Fault(**item) for item in data.get("faults", [])]


def _write(root: str | Path, faults: list[Fault]) -> None:
    path = _path(root)
    tmp = path.with_name(f"faults.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"faults": [asdict(f) for f in faults]}, indent=1))
    os.replace(tmp, path)


def load(root: str | Path) -> list[Fault]:
    """The faults still pending."""
    return _read(root)


def inject(root: str | Path, fault: Fault) -> Fault:
    Path(root).mkdir(parents=True, exist_ok=True)
    fd = _locked(root)
    try:
        _write(root, [*_read(root), fault])
    finally:
        os.close(fd)
    return fault


def clear(root: str | Path) -> None:
    fd = _locked(root)
    try:
        _path(root).unlink(missing_ok=True)
    finally:
        os.close(fd)


def take(root: str | Path, kinds: Iterable[str], verb: str, names: Iterable[str], *,
         program: str = "zfs") -> Fault | None:
    """Consume one firing of the first pending fault of one of ``kinds`` that matches; None if there is none."""
    if not _path(root).exists():
        return None
    kinds, names = set(kinds), list(names)
    fd = _locked(root)
    try:
        faults = _read(root)
        for index, fault in enumerate(faults):
            if fault.kind in kinds and fault.matches(program, verb, names):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del faults[index]
                    _write(root, faults)
                return fault
        return None
    finally:
        os.close(fd)


def no_space(root: str | Path, verb: str = "*", dataset: str = "*", count: int | None = 1) -> Fault:
    return inject(root, Fault("nospace", verb, dataset, count))


def busy(root: str | Path, verb: str = "destroy", dataset: str = "*", count: int | None = 1) -> Fault:
    return inject(root, Fault("busy", verb, dataset, count))


def slow(root: str | Path, verb: str = "*", seconds: float = 1.0, dataset: str = "*",
         count: int | None = None) -> Fault:
    return inject(root, Fault("slow", verb, dataset, count, seconds=seconds))


def break_send(root: str | Path, after_bytes: int, dataset: str = "*", count: int | None = 1) -> Fault:
    return inject(root, Fault("break_send", "send", dataset, count, after_bytes=after_bytes))
