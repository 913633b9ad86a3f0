"""What the installed zfs can do, found cheaply at start (:func:`probe`), and the usage-text parser behind it.

The probe needs no pool and at most three short commands (about 10 ms on zfs-fuse):

1. ``zfs`` with no arguments prints the usage of every subcommand (rc 2). From it: the subcommands
   (``bookmark``, ``holds``, ...), the flags of ``list``, ``get``, ``send`` and ``receive``, whether
   ``snapshot`` and ``set`` take several operands (a trailing ``...``).
2. ``zfs holds <a name that cannot exist>``, only if ``holds`` is listed: zfs-fuse lists it but the command
   needs Solaris' ``/usr/lib/zfs/pyzfs.py`` (rc 255 "internal error"); a real implementation says the
   dataset does not exist (rc 1).
3. ``zfs receive -u -e <a name that cannot exist>`` (stdin is /dev/null), only for those of ``-u``/``-e`` the
   usage does not list: zfs-fuse accepts both without documenting them. An "invalid option 'x'" (rc 2) drops
   ``x`` and tries the rest again, the way zfs-autobackup probes ``send -L/-e/-c``.

The zfs-fuse dialect (``Capabilities.fuse``) is recognised by the ``zfs-fuse`` daemon binary or its socket
``/var/run/zfs/zfs_socket`` with no ``/dev/zfs`` (the OpenZFS kernel interface) on the machine.

Results on zfs-fuse 0.7.0: no ``list -p``, single-operand ``snapshot`` and ``set``, no bookmarks, no working
``holds``, no resumable receive, no ``get -t``; send ``-D -I -R -i -p``; receive ``-F -d -e -n -u -v``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from vpsadmind import system
from vpsadmind.system import CommandFailed
from vpsadmind.zfs.errors import DaemonDown, ZfsError, classify, from_failure

__all__ = ["Capabilities", "Usage", "parse_usage", "detect_fuse", "probe", "PROBE_DATASET"]

#: The target of probe commands: a pool nobody names like this, so the probes never touch data.
PROBE_DATASET: Final = "vpsadmind_probe_nonexistent_pool/probe"
_FUSE_SOCKET: Final = "/var/run/zfs/zfs_socket"
_DEV_ZFS: Final = "/dev/zfs"
_OPTION: Final = re.compile(r"(?:^|\s)-([A-Za-z]+)")
_ALTERNATIVES: Final = re.compile(r"-\[([A-Za-z|]+)\]")
_INVALID_OPTION: Final = re.compile(r"invalid option '(.)'")
_UNDOCUMENTED_RECV: Final = ("u", "e")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the installed zfs supports, found once at start by :meth:`Zfs.probe`."""

    list_parsable: bool = False          # zfs list -p
    multi_snapshot: bool = False         # zfs snapshot a@x b@x (atomic, several datasets)
    holds_listing: bool = False          # zfs holds
    bookmarks: bool = False
    resumable_receive: bool = False      # zfs recv -s / receive_resume_token
    send_flags: frozenset[str] = frozenset()   # e.g. {"-p", "-R", "-i", "-I", "-D", "-c", "-L", "-e", "-w"}
    recv_flags: frozenset[str] = frozenset()   # e.g. {"-F", "-u", "-d", "-e", "-s", "-o", "-x"}
    fuse: bool = False                   # zfs-fuse dialect (busy destroy retry, unmount before rename)
    multi_set: bool = False              # zfs set a=1 b=2 ds (OpenZFS >= 0.7); zfs-fuse reads b=2 as a dataset
    get_types: bool = False              # zfs get -t snapshot|filesystem
    commands: frozenset[str] = frozenset()     # subcommands listed by the usage text


@dataclass(frozen=True, slots=True)
class Usage:
    """The usage text of ``zfs`` split per subcommand (a subcommand may have several usage lines)."""

    lines: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def commands(self) -> frozenset[str]:
        return frozenset(self.lines)

    def flags(self, command: str) -> frozenset[str]:
        """Single-letter options of ``command`` as ``-x`` strings, over all its usage lines."""
        found: set[str] = set()
        for line in self.lines.get(command, ()):
            line = _ALTERNATIVES.sub(lambda m: "-" + m.group(1).replace("|", ""), line)  # -[i|I] -> -iI
            for group in _OPTION.findall(re.sub(r"[\[\]|]", " ", line)):
                found.update(f"-{ch}" for ch in group)
        return frozenset(found)

    def takes_many(self, command: str, operand: str) -> bool:
        """Whether a usage line of ``command`` repeats the operand containing ``operand`` (``<x> ...``)."""
        pattern = re.compile(r"<[^>]*" + re.escape(operand) + r"[^>]*>(?:@<[^>]*>)?\s*\.\.\.")
        return any(pattern.search(line) for line in self.lines.get(command, ()))


def parse_usage(text: str) -> Usage:
    """Split ``zfs``'s usage text (``\\t<command> ...`` lines, continuation lines indented further)."""
    lines: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        if raw.startswith("\t") and len(raw) > 1 and raw[1].isalpha():
            word = raw.split(None, 1)[0]
            current = lines.setdefault(word, [])
            current.append(raw.strip())
        elif current is not None and raw.startswith(("\t ", "\t\t", "    ")) and raw.strip():
            current[-1] += " " + raw.strip()
        else:
            current = None
    return Usage({k: tuple(v) for k, v in lines.items()})


def detect_fuse(zfs_bin: str = "zfs", *, socket: str = _FUSE_SOCKET, dev_zfs: str = _DEV_ZFS) -> bool:
    """Whether ``zfs_bin`` talks to zfs-fuse: its daemon binary or socket exists and ``/dev/zfs`` does not."""
    if os.path.exists(dev_zfs):
        return False
    resolved = shutil.which(zfs_bin) or zfs_bin
    beside = os.path.join(os.path.dirname(os.path.realpath(resolved)), "zfs-fuse")
    return os.path.exists(socket) or os.path.exists(beside) or shutil.which("zfs-fuse") is not None


async def _output(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = await system.run(argv, valid_rcs=range(-255, 256), timeout=timeout)
    except CommandFailed as exc:  # only a timeout gets here
        raise from_failure(exc) from exc
    except OSError as exc:
        raise ZfsError(f"cannot run {argv[0]}: {exc}", argv=argv) from exc
    return done.exitstatus, done.stderr + done.stdout


def _raise_if_down(argv: list[str], rc: int, text: str) -> None:
    if rc != 0 and classify(text) is DaemonDown:
        raise DaemonDown(f"{argv[0]}: {' '.join(text.split())}", argv=argv, exitstatus=rc, stderr=text)


async def _holds_work(zfs_bin: str, timeout: float) -> bool:
    argv = [zfs_bin, "holds", f"{PROBE_DATASET}@probe"]
    rc, text = await _output(argv, timeout)
    _raise_if_down(argv, rc, text)
    return rc in (0, 1) and "internal error" not in text and "invalid option" not in text


async def _accepted_recv_flags(zfs_bin: str, candidates: list[str], timeout: float) -> set[str]:
    """Which of ``candidates`` (letters) ``zfs receive`` parses; one call, plus one per rejected flag."""
    left = list(candidates)
    while left:
        argv = [zfs_bin, "receive", *(f"-{c}" for c in left), PROBE_DATASET]
        rc, text = await _output(argv, timeout)
        _raise_if_down(argv, rc, text)
        bad = _INVALID_OPTION.search(text)
        if rc != 2 or bad is None or bad.group(1) not in left:
            return set(left) if rc != 2 else set()
        left.remove(bad.group(1))
    return set()


async def probe(zfs_bin: str = "zfs", *, timeout: float = 30.0, fuse: bool | None = None) -> Capabilities:
    """Find the capabilities of ``zfs_bin`` (see the module docstring); raises DaemonDown when zfs-fuse's
    daemon does not answer, ZfsError when ``zfs_bin`` cannot run or prints no usage."""
    argv = [zfs_bin]
    rc, text = await _output(argv, timeout)
    _raise_if_down(argv, rc, text)
    usage = parse_usage(text)
    if not usage.lines:
        raise ZfsError(f"{zfs_bin} printed no usage text (rc {rc}): {text.strip()[:200]!r}", argv=argv,
                       exitstatus=rc, stderr=text)
    recv_flags = set(usage.flags("receive"))
    undocumented = [c for c in _UNDOCUMENTED_RECV if f"-{c}" not in recv_flags]
    if undocumented:
        recv_flags |= {f"-{c}" for c in await _accepted_recv_flags(zfs_bin, undocumented, timeout)}
    holds = "holds" in usage.commands and await _holds_work(zfs_bin, timeout)
    return Capabilities(
        list_parsable="-p" in usage.flags("list"),
        multi_snapshot=usage.takes_many("snapshot", "snap"),
        holds_listing=holds,
        bookmarks="bookmark" in usage.commands,
        resumable_receive="-s" in recv_flags,
        send_flags=usage.flags("send"),
        recv_flags=frozenset(recv_flags),
        fuse=detect_fuse(zfs_bin) if fuse is None else fuse,
        multi_set=usage.takes_many("set", "property=value"),
        get_types="-t" in usage.flags("get"),
        commands=usage.commands,
    )
