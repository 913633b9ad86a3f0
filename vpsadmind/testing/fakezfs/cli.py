"""``fake-zfs``: a file-backed stand-in for zfs-fuse 0.7.0's ``zfs`` and ``zpool`` commands.

It acts as ``zfs`` or ``zpool`` by the name it is started under (symlinks ``zfs``/``zpool`` -> fake-zfs) or by its
first argument (``fake-zfs zfs list``, ``fake-zfs zpool list``). State lives under ``$FAKE_ZFS_ROOT``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

from vpsadmind.testing.fakezfs.errors import FakeZfsError, UsageError
from vpsadmind.testing.fakezfs.state import ROOT_ENV, Store

__all__ = ["main", "run"]

Command = Callable[[Store, list[str]], int]
_NOT_MODELLED = frozenset({"userspace", "groupspace", "share", "unshare", "allow", "unallow"})


_ZFS_COMMANDS = {
    "create": "dsops.cmd_create", "destroy": "dsops.cmd_destroy", "snapshot": "dsops.cmd_snapshot",
    "snap": "dsops.cmd_snapshot", "rollback": "dsops.cmd_rollback", "clone": "dsops.cmd_clone",
    "promote": "dsops.cmd_promote", "rename": "dsops.cmd_rename", "list": "query.cmd_list", "get": "query.cmd_get",
    "set": "propops.cmd_set", "inherit": "propops.cmd_inherit", "hold": "propops.cmd_hold",
    "release": "propops.cmd_release", "holds": "propops.cmd_holds", "mount": "propops.cmd_mount",
    "unmount": "propops.cmd_unmount", "umount": "propops.cmd_unmount", "upgrade": "propops.cmd_upgrade",
    "send": "stream.cmd_send", "receive": "stream.cmd_recv", "recv": "stream.cmd_recv",
}


def _command(command: str) -> Command:
    """Import only the module a command needs (start-up time matters: every zfs call is a new process)."""
    import importlib

    module, func = _ZFS_COMMANDS[command].split(".")
    handler: Command = getattr(importlib.import_module(f"vpsadmind.testing.fakezfs.{module}"), func)
    return handler


def _slow(store: Store, program: str, command: str, args: list[str]) -> None:
    from vpsadmind.testing.fakezfs import faults

    names = [a for a in args if not a.startswith("-") and "=" not in a]
    hit = faults.take(store.root, ("slow",), command, names, program=program)
    if hit is not None:
        time.sleep(hit.seconds)


def _zfs(store: Store, args: list[str]) -> int:
    from vpsadmind.testing.fakezfs.usage import ZFS_COMMANDS

    if not args:
        raise UsageError("missing command", "")
    command, rest = args[0], args[1:]
    if command not in ZFS_COMMANDS:
        raise UsageError(f"unrecognized command '{command}'", "")
    if command in _NOT_MODELLED:
        if command in ("allow", "unallow", "userspace", "groupspace"):
            sys.stdout.write("internal error: /usr/lib/zfs/pyzfs.py not found\n")
            return 255
        raise FakeZfsError(f"fake-zfs: 'zfs {command}' is not modelled")
    _slow(store, "zfs", command, rest)
    return _command(command)(store, rest)


def run(program: str, args: list[str]) -> int:
    """Run one ``zfs``/``zpool`` command line; prints like the real tool and returns its exit code."""
    try:
        from vpsadmind.testing.fakezfs.dialect import check

        check()
        store = Store.from_env()
        if program == "zpool":
            from vpsadmind.testing.fakezfs.zpool import main_zpool

            return main_zpool(store, args)
        return _zfs(store, args)
    except UsageError as exc:
        from vpsadmind.testing.fakezfs.usage import render

        sys.stderr.write(render(exc.program, exc.command, exc.message))
        return exc.rc
    except FakeZfsError as exc:
        if exc.stdout:
            sys.stdout.write(exc.stdout)
        sys.stderr.write(exc.message + "\n")
        return exc.rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0]) if argv else "fake-zfs"
    args = argv[1:]
    if name not in ("zfs", "zpool"):
        if not args or args[0] not in ("zfs", "zpool"):
            sys.stderr.write(f"usage: fake-zfs zfs|zpool <command> [args...]\n"
                             f"       (or run it through symlinks named zfs / zpool); state in ${ROOT_ENV}\n")
            return 2
        name, args = args[0], args[1:]
    if not (name == "zfs" and args[:1] == ["send"]):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)     # like a C program: die quietly on a closed pipe
    rc = run(name, args)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
