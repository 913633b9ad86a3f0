"""Typed ZFS failures, parsed from what ``zfs``/``zpool`` print (names follow pyzfs' ``libzfs_core.exceptions``).

:func:`from_failure` turns a :class:`vpsadmind.system.CommandFailed` into the matching :class:`ZfsError`
subclass by looking at the reason in "cannot <verb> '<name>': <reason>" (and the few messages of other shapes).
The messages below were produced on zfs-fuse 0.7.0 (Debian 0.7.0-25+b1, pool version 23) on file-backed
pools; the OpenZFS spellings that differ are matched too (marked *OpenZFS*).

=============================  ====  ==========================================================================
class                          rc    exact message (``P`` = pool, ``T`` = a hold tag)
=============================  ====  ==========================================================================
DatasetNotFound                1     ``cannot open 'P/missing': dataset does not exist`` (destroy, snapshot,
                                     clone/rollback from a missing snapshot, get, set, inherit, mount, ...)
DatasetNotFound                1     ``cannot destroy 'P/a@nosuch': dataset does not exist`` + ``no snapshots
                                     destroyed`` (``destroy -r``); *OpenZFS* ``could not find any snapshots
                                     to destroy; check snapshot names.``
DatasetNotFound                1     ``cannot hold 'P/a@nosuch': dataset does not exist``, ``cannot release 'T'
                                     from 'P/a@nosuch': dataset does not exist``
DatasetNotFound                1     ``cannot receive new filesystem stream: dataset does not exist`` (parent
                                     of the target missing)
ParentNotFound                 1     ``cannot create 'P/nopar/x': parent does not exist`` (also rename)
PoolNotFound                   1     ``cannot create 'nopool/a': no such pool 'nopool'``;
                                     ``cannot open 'nopool': no such pool`` (zpool)
DatasetExists                  1     ``cannot create 'P/a': dataset already exists``; ``cannot create snapshot
                                     'P/a@s1': dataset already exists``; ``cannot rename 'P/b': dataset already
                                     exists``; ``cannot rename 'P/a@s1': dataset already exists``
DestinationExists              1     ``cannot receive new filesystem stream: destination 'P/dst' exists`` +
                                     ``must specify -F to overwrite it``
DestinationHasSnapshots        1     ``cannot receive new filesystem stream: destination has snapshots
                                     (eg. P/dst@1)`` + ``must destroy them to overwrite it``
DestinationModified            1     ``cannot receive incremental stream: destination P/dst has been modified``
                                     + ``since most recent snapshot`` (two lines)
DatasetBusy                    1     ``cannot destroy 'P/d1': dataset is busy`` (zfs-fuse: the first destroy of a
                                     mounted fs, always); ``cannot rename 'P/r1': dataset is busy`` (mounted fs
                                     on zfs-fuse); *OpenZFS* ``pool or dataset is busy``
DatasetBusy                    1     ``umount: <mnt>/a: target is busy.`` + ``cannot unmount '<mnt>/a': umount
                                     failed: umount child process failed`` (a process has its cwd inside;
                                     unmount, rename and destroy of a mounted fs all say this)
SnapshotIsHeld                 1     ``cannot destroy 'P/a@s1': dataset is busy`` when ``userrefs`` > 0: the
                                     text is the same as DatasetBusy, the driver tells them apart by asking
                                     ``userrefs``
HoldExists                     1     ``cannot hold 'P/a@s1': tag already exists on this dataset``
NoSuchHold                     1     ``cannot release 'T' from 'P/a@s1': no such tag on this dataset``
DatasetHasChildren             1     ``cannot destroy 'P/a': filesystem has children`` + ``use '-r' to destroy
                                     the following datasets:`` + the list
SnapshotIsCloned               1     ``cannot destroy 'P/a@s1': snapshot has dependent clones`` / ``cannot
                                     destroy 'P/a': filesystem has dependent clones`` + ``use '-R' ...``
MoreRecentSnapshots            1     ``cannot rollback to 'P/a@s1': more recent snapshots exist`` + ``use '-r'
                                     to force deletion of the following snapshots:`` + the list
NoSpace                        1     ``cannot create 'P/big': out of space`` (reservation larger than the pool);
                                     ``cannot set property for 'P/c': size is greater than available space``
InvalidStream                  1     ``cannot receive new filesystem stream: invalid backup stream`` (truncated);
                                     ``cannot receive: invalid stream (bad magic number)`` (garbage);
                                     ``cannot receive: failed to read from stream`` (empty)
InvalidName                    1     ``cannot snapshot 'P/s@bad%name': invalid character % in name``;
                                     ``cannot create 'P/xxx…': name is too long``; ``cannot create 'P/a//b':
                                     empty component in name``; ``cannot open 'compression=on': invalid
                                     dataset name``
InvalidProperty                1/2   ``cannot set property for 'P/a': bad numeric value 'foo'``; ``cannot set
                                     property for 'P/a': invalid property 'nosuchprop'``; ``bad property list:
                                     invalid property 'nosuchprop'`` (get, rc 2); ``invalid property
                                     'nosuchprop'`` (inherit, rc 2); ``'quota' property cannot be inherited``
WrongType                      1     ``'P/src' is not a snapshot`` (hold on a filesystem); ``cannot promote
                                     'P/a': not a cloned filesystem``
AlreadyMounted                 1     ``cannot mount 'P/a': filesystem already mounted``
NotMounted                     1     ``cannot unmount 'P/b': not currently mounted``
Unsupported                    2     ``invalid option 'p'`` (+ usage), ``unrecognized command 'bookmark'``;
                                 255 ``internal error: /usr/lib/zfs/pyzfs.py not found`` (``zfs holds``)
DaemonDown                     1     ``connect: No such file or directory`` + ``Please make sure that the
                                     zfs-fuse daemon is running.`` + ``internal error: failed to initialize
                                     ZFS library`` (every zfs/zpool call, even ``zfs`` with no arguments)
ZfsTimeout                     -1    the command ran longer than the driver's timeout
ZfsError                       any   anything else, e.g. ``cannot rename to 'P/o@1': snapshots must be part of
                                     same dataset``, ``internal error: Argument list too long`` (rc 134, a
                                     property value of 8192 characters)
=============================  ====  ==========================================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Final

from vpsadmind.errors import AgentError
from vpsadmind.system import CommandFailed, CommandTimeout

__all__ = [
    "ZfsError",
    "DatasetNotFound",
    "ParentNotFound",
    "PoolNotFound",
    "DatasetExists",
    "DestinationExists",
    "DestinationHasSnapshots",
    "DestinationModified",
    "DatasetBusy",
    "SnapshotIsHeld",
    "HoldExists",
    "NoSuchHold",
    "HoldNotFound",
    "DatasetHasChildren",
    "SnapshotIsCloned",
    "MoreRecentSnapshots",
    "NoSpace",
    "InvalidStream",
    "InvalidName",
    "NameInvalid",
    "InvalidProperty",
    "WrongType",
    "AlreadyMounted",
    "NotMounted",
    "Unsupported",
    "DaemonDown",
    "ZfsTimeout",
    "from_failure",
    "classify",
]


class ZfsError(AgentError):
    """A zfs/zpool command failed (or would have: see :class:`InvalidName`).

    Attributes:
        argv: the command line (empty when no command ran).
        exitstatus: its exit code (``None`` when no command ran, -1 after a timeout).
        stderr / stdout: what it printed.
        verb / name / reason: parsed from "cannot <verb> '<name>': <reason>" when the message has that shape.
    """

    def __init__(self, message: str, *, argv: Sequence[str] = (), exitstatus: int | None = None,
                 stderr: str = "", stdout: str = "", verb: str | None = None, name: str | None = None,
                 reason: str | None = None) -> None:
        self.argv = list(argv)
        self.exitstatus = exitstatus
        self.stderr = stderr
        self.stdout = stdout
        self.verb = verb
        self.name = name
        self.reason = reason
        super().__init__(message)

    @property
    def output(self) -> dict[str, object]:
        """What goes into ``t_output`` (the keys of :attr:`vpsadmind.system.CommandFailed.output`, plus the class)."""
        return {"cmd": " ".join(self.argv), "exitstatus": self.exitstatus,
                "error": (self.stderr or self.stdout or str(self)).strip(), "zfs_error": type(self).__name__}


class DatasetNotFound(ZfsError):
    """The dataset, snapshot or pool named does not exist."""


class ParentNotFound(ZfsError):
    """The parent of a dataset to create (or rename to) does not exist."""


class PoolNotFound(DatasetNotFound):
    """The pool does not exist (a pool's root dataset is missing, hence a DatasetNotFound too)."""


class DatasetExists(ZfsError):
    """The dataset or snapshot to create, clone or rename to already exists."""


class DestinationExists(DatasetExists):
    """A full receive into an existing dataset without ``-F``."""


class DestinationHasSnapshots(ZfsError):
    """A forced full receive into a dataset that has snapshots."""


class DestinationModified(ZfsError):
    """An incremental receive into a target changed since its latest snapshot (``recv -F`` rolls it back)."""


class DatasetBusy(ZfsError):
    """The dataset is in use (mounted and busy, held, or, on zfs-fuse, not yet released after unmount)."""


class SnapshotIsHeld(DatasetBusy):
    """A snapshot with user holds (``userrefs`` > 0) cannot be destroyed."""


class HoldExists(ZfsError):
    """The snapshot already has a hold with this tag."""


class NoSuchHold(ZfsError):
    """The snapshot has no hold with this tag."""


HoldNotFound = NoSuchHold  # the pyzfs name


class DatasetHasChildren(ZfsError):
    """A non-recursive destroy of a filesystem with children or snapshots."""


class SnapshotIsCloned(ZfsError):
    """The snapshot (or a snapshot of the filesystem) has dependent clones."""


class MoreRecentSnapshots(ZfsError):
    """A rollback without ``-r`` to a snapshot that is not the latest."""


class NoSpace(ZfsError):
    """The pool or a quota has no room for the operation."""


class InvalidStream(ZfsError):
    """A receive got a truncated, empty or garbage stream."""


class InvalidName(ZfsError):
    """A name (or property name, or value) breaks ZFS's grammar; raised before any command runs.

    ``value`` is the offending text, ``rule`` the rule it breaks, ``kind`` what it was meant to be.
    """

    def __init__(self, value: str, reason: str, *, kind: str = "name", argv: Sequence[str] = (),
                 exitstatus: int | None = None, stderr: str = "") -> None:
        self.value = value
        self.rule = reason
        self.kind = kind
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(f"invalid ZFS {kind} {shown!r}: {reason}", argv=argv, exitstatus=exitstatus,
                         stderr=stderr, name=value, reason=reason)


NameInvalid = InvalidName  # the pyzfs name


class InvalidProperty(ZfsError):
    """zfs rejected a property name or value (unknown property, bad number, not inheritable)."""


class WrongType(ZfsError):
    """The operation does not apply to this kind of dataset (a hold on a filesystem, promote of a non-clone)."""


class AlreadyMounted(ZfsError):
    """``zfs mount`` of a mounted filesystem."""


class NotMounted(ZfsError):
    """``zfs unmount`` of a filesystem that is not mounted."""


class Unsupported(ZfsError):
    """The installed zfs lacks the option, command or helper used."""


class DaemonDown(ZfsError):
    """zfs-fuse's daemon (or the OpenZFS kernel module) is not there: no zfs command can work."""


class ZfsTimeout(ZfsError):
    """The command ran longer than the driver's timeout (zfs-fuse's daemon may still finish it)."""


# Checked in order against the whole message (lines joined by spaces); the first match wins.
_RULES: Final[tuple[tuple[re.Pattern[str], type[ZfsError]], ...]] = tuple(
    (re.compile(pattern), cls) for pattern, cls in (
        (r"zfs-fuse daemon is running|failed to initialize ZFS library|ZFS modules are not loaded"
         r"|/dev/zfs and /proc/self/mounts are required", DaemonDown),
        (r"no such pool", PoolNotFound),
        (r"parent does not exist", ParentNotFound),
        (r"dataset does not exist|could not find any snapshots to destroy|no such dataset", DatasetNotFound),
        (r"destination '[^']*' exists|must specify -F to overwrite", DestinationExists),
        (r"destination has snapshots", DestinationHasSnapshots),
        (r"has been modified since most recent snapshot", DestinationModified),
        (r"dataset already exists", DatasetExists),
        (r"tag already exists on this dataset", HoldExists),
        (r"no such tag on this dataset", NoSuchHold),
        (r"has dependent clones", SnapshotIsCloned),
        (r"filesystem has children", DatasetHasChildren),
        (r"more recent snapshots exist|more recent snapshots or bookmarks exist", MoreRecentSnapshots),
        (r"dataset is busy|pool or dataset is busy|device busy|resource busy|target is busy|umount failed",
         DatasetBusy),
        (r"out of space|greater than available space|quota exceeded", NoSpace),
        (r"invalid backup stream|invalid stream|failed to read from stream|checksum mismatch"
         r"|stream ends prematurely", InvalidStream),
        (r"invalid character|name is too long|empty component|invalid dataset name|leading slash"
         r"|trailing slash|multiple '@' delimiters|multiple '#' delimiters", InvalidName),
        (r"invalid property|bad numeric value|must be one of|cannot be inherited|bad property list"
         r"|property is read-only|read-only property", InvalidProperty),
        (r"is not a snapshot|not a cloned filesystem|operation not applicable", WrongType),
        (r"filesystem already mounted", AlreadyMounted),
        (r"not currently mounted", NotMounted),
        (r"invalid option|unrecognized command|pyzfs\.py not found|Function not implemented"
         r"|too many arguments", Unsupported),
    )
)

_CANNOT_NAMED: Final = re.compile(
    r"^cannot (?P<verb>[a-z][a-z ]*?)(?: to)? '(?P<first>[^']*)'(?: from '(?P<target>[^']*)')?: (?P<reason>.*)$")
_CANNOT_PLAIN: Final = re.compile(r"^cannot (?P<verb>[a-z][^:']*?): (?P<reason>.*)$")
_QUOTED_FIRST: Final = re.compile(r"^'(?P<first>[^']*)' (?P<reason>.*)$")


def classify(message: str) -> type[ZfsError]:
    """The ZfsError subclass for a zfs/zpool error message (``ZfsError`` itself when nothing matches)."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    for pattern, cls in _RULES:
        if pattern.search(text):
            return cls
    return ZfsError


def parse_message(message: str) -> tuple[str | None, str | None, str | None]:
    """``(verb, name, reason)`` from the first line shaped like "cannot <verb> '<name>': <reason>".

    For ``cannot release 'tag' from 'ds@snap': ...`` the name is the snapshot, not the tag.
    """
    for raw in message.splitlines():
        line = raw.strip()
        m = _CANNOT_NAMED.match(line)
        if m:
            return m["verb"], m["target"] or m["first"], m["reason"]
        m = _CANNOT_PLAIN.match(line)
        if m:
            return m["verb"], None, m["reason"]
        m = _QUOTED_FIRST.match(line)
        if m:
            return None, m["first"], m["reason"]
    return None, None, None


def _summary(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    # zfs prints the usage after "invalid option"/"bad property list"; keep the first line only then.
    if any(line.startswith("usage:") for line in lines):
        return lines[0]
    return " ".join(lines)[:2000]


def from_failure(exc: CommandFailed) -> ZfsError:
    """The typed ZfsError for a failed zfs/zpool command (``exc`` becomes its ``__cause__`` when raised)."""
    if isinstance(exc, CommandTimeout):
        return ZfsTimeout(str(exc), argv=exc.argv, exitstatus=exc.exitstatus, stderr=exc.stderr)
    message = exc.stderr.strip() or exc.stdout.strip()
    cls = classify(message)
    verb, name, reason = parse_message(message)
    summary = _summary(message) or f"exited with {exc.exitstatus}"
    command = " ".join([os.path.basename(exc.argv[0]), *exc.argv[1:2]]) if exc.argv else "zfs"
    text = f"{command}: {summary}"
    if cls is InvalidName:
        return InvalidName(name or " ".join(exc.argv[2:]), reason or summary, argv=exc.argv,
                           exitstatus=exc.exitstatus, stderr=exc.stderr)
    return cls(text, argv=exc.argv, exitstatus=exc.exitstatus, stderr=exc.stderr, stdout=exc.stdout, verb=verb,
               name=name, reason=reason)
