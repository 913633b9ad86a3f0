"""``fake-vzctl`` and ``fake-vzlist``: entry points and vzctl's command dispatch (``src/vzctl.c`` main and
``run_action``).

Both act by the name they were started under too (symlinks ``vzctl``/``vzlist``), so ``PATH`` tricks work. State
lives under ``$FAKE_VZ_ROOT`` (see layout.py). Global flags ``--quiet``, ``--verbose``, ``--skiplock`` and
``--version`` come before the command. As in vzctl:

* a command needs a numeric CTID (exit 21 "Bad CT ID"); CT 0 only allows ``set``;
* every command except ``create``, ``set`` and ``status`` needs ``<veid>.conf`` (exit 14 "Container config
  file does not exist");
* every command except ``exec``/``exec2``/``exec3`` and ``status`` takes the container lock (exit 9 while
  another holds it; ``--skiplock`` skips it);
* ``exec`` runs ``bash -c "<args joined by spaces>"`` in the container (shell.py) and exits 8 if that fails
  (31 "Container is not running" is folded into 8 too); ``exec2`` exits with the command's own code, 31 if the
  container is not running; ``exec3`` runs argv without a shell. ``exec -`` reads the script from stdin.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable

from vpsadmind.testing.fakevz.errors import (
    EXEC_ERROR,
    INVALID_SYNTAX,
    INVALID_VALUE,
    NOT_RUNNING,
    NOVECONFIG,
    SYSTEM_ERROR,
    VzFail,
)
from vpsadmind.testing.fakevz.layout import ROOT_ENV, Layout

__all__ = ["main_vzctl", "main_vzlist", "run_vzctl", "run_vzlist", "VERSION"]

VERSION = "4.9.4"
Command = Callable[[Layout, int, list[str]], int]
_NO_CONF_OK = frozenset({"create", "set", "status"})
_NO_LOCK = frozenset({"exec", "exec2", "exec3", "status"})
_NOT_MODELLED = frozenset({"enter", "console", "runscript", "chkpnt", "restore", "suspend", "resume", "quotaon",
                           "quotaoff", "quotainit", "convert", "compact", "snapshot", "snapshot-switch",
                           "snapshot-delete", "snapshot-list", "snapshot-mount", "snapshot-umount"})


def _command(name: str) -> Command:
    """Import only what a command needs: every vzctl call is a new process."""
    if name == "set":
        from vpsadmind.testing.fakevz.setcmd import cmd_set

        return cmd_set
    if name.startswith("exec"):
        return functools.partial(_exec, mode=name)
    from vpsadmind.testing.fakevz import lifecycle

    commands: dict[str, Command] = {
        "create": lifecycle.cmd_create, "destroy": lifecycle.cmd_destroy, "delete": lifecycle.cmd_destroy,
        "start": lifecycle.cmd_start, "stop": lifecycle.cmd_stop, "restart": lifecycle.cmd_restart,
        "mount": lifecycle.cmd_mount, "umount": lifecycle.cmd_umount, "status": lifecycle.cmd_status,
    }
    return commands[name]


def _exec(layout: Layout, veid: int, args: list[str], *, mode: str) -> int:
    """exec/exec2 run ``bash -c`` over the space-joined arguments (modelled by shell.py); exec3 runs argv as is
    (modelled by quoting each argument for the same shell)."""
    from vpsadmind.testing.fakevz import shell
    from vpsadmind.testing.fakevz.builtins import Context

    if not args:
        raise VzFail(INVALID_SYNTAX, "No command line given for exec")
    ct = layout.ct(veid)
    if not ct.running or ct.root is None:
        raise VzFail(NOT_RUNNING, "Container is not running")
    if mode == "exec3":
        script = " ".join(shlex.quote(a) for a in args)
    elif args == ["-"]:
        script = sys.stdin.read()
    else:
        script = " ".join(a if a else "''" for a in args)
    private = ct.private or ct.root
    ctx = Context(root=ct.root, private=private, conf=ct.conf(), state=ct.state())
    sys.stdout.flush()
    return shell.run(ctx, script)


_COMMANDS = frozenset({"create", "destroy", "delete", "start", "stop", "restart", "mount", "umount", "status",
                       "set", "exec", "exec2", "exec3"})


def _parse_veid(text: str) -> int:
    if not text.isdigit() or len(text) > 10 or int(text) > 2**31 - 1:
        raise VzFail(INVALID_VALUE, f"Bad CT ID {text}")
    return int(text)


def _faults(layout: Layout, program: str, verb: str, veid: str, args: list[str]) -> VzFail | None:
    """Apply a pending hang; return a pending failure (raised before or after the command by the caller)."""
    if not layout.faults.exists():
        return None
    from vpsadmind.testing.fakevz import faults

    hang = faults.take(layout.root, "hang", program, verb, veid, args)
    if hang is not None:
        time.sleep(hang.seconds)
    fail = faults.take(layout.root, "fail", program, verb, veid, args)
    if fail is None:
        return None
    error = VzFail(fail.rc, fail.message or f"fake-vzctl: injected failure of {verb}")
    if not fail.after:
        raise error
    return error


def _dispatch(layout: Layout, verb: str, veid: int, args: list[str], skiplock: bool) -> int:
    if verb in _NOT_MODELLED:
        raise VzFail(SYSTEM_ERROR, f"fake-vzctl: '{verb}' is not modelled")
    if verb not in _COMMANDS:
        raise VzFail(INVALID_SYNTAX, f"Bad command: {verb}")
    if veid == 0 and verb != "set":
        raise VzFail(INVALID_VALUE, "Only set actions allowed for CT0")
    if verb not in _NO_CONF_OK and not layout.ct(veid).conf_path.exists():
        raise VzFail(NOVECONFIG, "Container config file does not exist")
    after = _faults(layout, "vzctl", verb, str(veid), args)
    lock = contextlib.nullcontext() if skiplock or verb in _NO_LOCK else layout.lock(veid)
    with lock:
        rc = _command(verb)(layout, veid, args)
    if after is not None:
        raise after
    if verb == "exec" and rc:
        return EXEC_ERROR
    return rc


def run_vzctl(args: list[str]) -> int:
    """Run one vzctl command line; prints like vzctl and returns its exit code."""
    skiplock = False
    while args and args[0] in ("--quiet", "--verbose", "--skiplock", "--version", "--help"):
        flag, args = args[0], args[1:]
        if flag == "--version":
            print(f"vzctl version {VERSION} (fake-vzctl)")
            return 0
        if flag == "--help":
            print("Usage: vzctl [options] <command> <ctid> [parameters]  (fake-vzctl, see docs/fake-vzctl.md)")
            return 0
        skiplock = skiplock or flag == "--skiplock"
    verb = ""
    try:
        if not args:
            raise VzFail(INVALID_SYNTAX, "Usage: vzctl [options] <command> <ctid> [parameters]")
        verb = args[0]
        if len(args) < 2:
            raise VzFail(INVALID_VALUE, "CT ID is not given")
        layout = Layout.from_env()
        return _dispatch(layout, verb, _parse_veid(args[1]), args[2:], skiplock)
    except VzFail as exc:
        if exc.stdout:
            sys.stdout.write(exc.stdout)
        if exc.message:
            sys.stdout.flush()
            sys.stderr.write(exc.message + "\n")
        if verb == "exec" and exc.rc == NOT_RUNNING:
            return EXEC_ERROR
        return exc.rc


def run_vzlist(args: list[str]) -> int:
    from vpsadmind.testing.fakevz import vzlist

    try:
        layout = Layout.from_env()
        after = _faults(layout, "vzlist", "list", "*", args)
        rc = vzlist.main(layout, args)
        if after is not None:
            raise after
        return rc
    except VzFail as exc:
        if exc.message:
            sys.stdout.flush()
            sys.stderr.write(exc.message + "\n")
        return exc.rc


def _main(run: Callable[[list[str]], int], argv: list[str] | None) -> int:
    args = list(sys.argv if argv is None else argv)[1:]  # argv[0] is the program name
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)     # like a C program: die quietly on a closed pipe
    if not os.environ.get(ROOT_ENV):
        sys.stderr.write(f"fake-vz: {ROOT_ENV} is not set\n")
        return SYSTEM_ERROR
    rc = run(args)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    return rc


def main_vzctl(argv: list[str] | None = None) -> int:
    """``fake-vzctl`` (or ``vzlist`` when started through a symlink of that name)."""
    args = list(sys.argv if argv is None else argv)
    if args and os.path.basename(args[0]) in ("vzlist", "fake-vzlist"):
        return _main(run_vzlist, args)
    return _main(run_vzctl, args)


def main_vzlist(argv: list[str] | None = None) -> int:
    return _main(run_vzlist, argv)


if __name__ == "__main__":
    sys.exit(main_vzctl())
