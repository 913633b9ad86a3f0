"""The commands fake-vzctl's ``exec`` can run inside a container, each against the container root (every path
goes through :func:`.chroot.resolve`), with coreutils' messages and exit codes.

Modelled: ``true``, ``false``, ``exit``, ``echo``, ``cat``, ``mkdir [-p] [-m]``, ``mknod [-m] NAME b|c|p MAJ MIN``,
``chmod MODE``, ``rm [-f] [-r]``, ``touch``, ``test``/``[`` (``-e -f -d -s -x``, ``!``), ``ls``, ``df [-k] [-P]``,
``hostname``, ``sleep``. Device nodes are not real: ``mknod`` creates a regular file holding
``fake-vz device node: c 10 200`` (so tests need no CAP_MKNOD and no real devices appear in temp dirs); ``p``
makes a real FIFO. ``/proc/meminfo``, ``/proc/uptime`` and ``/proc/loadavg`` are generated from the container's
config and fake state (:func:`meminfo`); ``df`` reports the private area's usage against DISKSPACE.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vpsadmind.testing.fakevz.chroot import ChrootError, Resolved, resolve
from vpsadmind.testing.fakevz.params import LONG_MAX, PAGE, parse_pair

__all__ = ["Context", "ExitScript", "COMMANDS", "meminfo", "disk_usage", "DEVICE_NODE_PREFIX"]

DEVICE_NODE_PREFIX = "fake-vz device node:"
_DEFAULT_MEM_KB = 262144


class ExitScript(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class Context:
    root: Path                  # the container root (VE_ROOT, mounted)
    private: Path
    conf: dict[str, str]
    state: dict[str, Any]
    cwd: str = "/"

    def at(self, path: str, *, follow_last: bool = True) -> Resolved:
        return resolve(self.root, path, follow_last=follow_last, cwd=self.cwd)


Handler = Callable[[Context, list[str], TextIO, TextIO], int]


def _limit_kb(conf: dict[str, str], key: str, default: int) -> int:
    pair = parse_pair(conf.get(key, ""), PAGE) if conf.get(key) else None
    if pair is None or pair[1] >= LONG_MAX:
        return default
    return pair[1] * PAGE // 1024


def meminfo(conf: dict[str, str], state: dict[str, Any]) -> str:
    """A VSwap container's /proc/meminfo: MemTotal from PHYSPAGES' limit, used memory from the fake state
    (``mem_used_kb``, default an eighth of the total)."""
    total = _limit_kb(conf, "PHYSPAGES", _DEFAULT_MEM_KB)
    used = min(int(state.get("mem_used_kb", total // 8)), total)
    swap = _limit_kb(conf, "SWAPPAGES", 0)
    rows = [("MemTotal", total), ("MemFree", total - used), ("Cached", 0), ("Buffers", 0),
            ("Active", used), ("Inactive", 0), ("SwapTotal", swap), ("SwapFree", swap)]
    return "".join(f"{name + ':':<15}{value:>9} kB\n" for name, value in rows)


def _proc(ctx: Context, path: str) -> str | None:
    started = float(ctx.state.get("started", time.time()))
    if path == "/proc/meminfo":
        return meminfo(ctx.conf, ctx.state)
    if path == "/proc/uptime":
        up = max(time.time() - started, 0.0)
        return f"{up:.2f} {up:.2f}\n"
    if path == "/proc/loadavg":
        return f"0.00 0.00 0.00 1/{ctx.state.get('nproc', 12)} 1\n"
    return None


def disk_usage(private: Path) -> int:
    """KiB used under ``private`` (allocated blocks, hard links once, not crossing mounts)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    device = private.stat().st_dev
    for dirpath, dirnames, filenames in os.walk(private):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == device]
    return total // 1024


def _err(err: TextIO, tool: str, text: str) -> int:
    err.write(f"{tool}: {text}\n")
    return 1


def _true(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    return 0


def _false(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    return 1


def _exit(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    raise ExitScript(int(args[0]) % 256 if args and args[0].lstrip("-").isdigit() else 0)


def _echo(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    newline = not (args and args[0] == "-n")
    out.write(" ".join(args[1:] if not newline else args) + ("\n" if newline else ""))
    return 0


def _cat(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    status = 0
    for arg in args:
        try:
            target = ctx.at(arg)
            virtual = _proc(ctx, target.path) if target.path.startswith("/proc/") else None
            out.write(virtual if virtual is not None else target.host.read_text(errors="replace"))
        except ChrootError as exc:
            status = _err(err, "cat", f"{arg}: {exc}")
        except IsADirectoryError:
            status = _err(err, "cat", f"{arg}: Is a directory")
        except OSError as exc:
            status = _err(err, "cat", f"{arg}: {exc.strerror}")
    return status


def _mode(text: str) -> int | None:
    try:
        return int(text, 8) if text and all(c in "01234567" for c in text) else None
    except ValueError:
        return None


def _mkdir(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    parents, mode, names = False, 0o755, []
    it = iter(args)
    for arg in it:
        if arg == "-p":
            parents = True
        elif arg == "-m":
            mode = _mode(next(it, "")) or 0o755
        else:
            names.append(arg)
    status = 0
    for name in names:
        try:
            host = ctx.at(name).host
            if parents:
                host.mkdir(parents=True, exist_ok=True)
            else:
                host.mkdir()
            host.chmod(mode)
        except (OSError, ChrootError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            status = _err(err, "mkdir", f"cannot create directory '{name}': {reason}")
    return status


def _mknod(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    mode = 0o644
    if len(args) >= 2 and args[0] == "-m":
        mode, args = _mode(args[1]) or 0o644, args[2:]
    if len(args) < 2 or args[1] not in ("b", "c", "u", "p") or (args[1] != "p" and len(args) != 4):
        return _err(err, "mknod", "missing operand or wrong node type\nTry 'mknod --help' for more information.")
    name, kind = args[0], args[1]
    try:
        host = ctx.at(name, follow_last=False).host
        if host.exists() or host.is_symlink():
            return _err(err, "mknod", f"'{name}': File exists")
        if kind == "p":
            os.mkfifo(host, mode)
        else:
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{DEVICE_NODE_PREFIX} {'b' if kind == 'b' else 'c'} {args[2]} {args[3]}\n")
        os.chmod(host, mode)
    except (OSError, ChrootError) as exc:
        return _err(err, "mknod", f"'{name}': {exc.strerror if isinstance(exc, OSError) else exc}")
    return 0


def _chmod(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    if len(args) < 2 or _mode(args[0]) is None:
        return _err(err, "chmod", "only octal modes are modelled by fake-vzctl")
    status = 0
    for name in args[1:]:
        try:
            os.chmod(ctx.at(name).host, _mode(args[0]) or 0)
        except (OSError, ChrootError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            status = _err(err, "chmod", f"cannot access '{name}': {reason}")
    return status


def _rm(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    flags = "".join(a[1:] for a in args if a.startswith("-"))
    status = 0
    for name in (a for a in args if not a.startswith("-")):
        try:
            host = ctx.at(name, follow_last=False).host
            if host.is_dir() and not host.is_symlink():
                if "r" not in flags and "R" not in flags:
                    status = _err(err, "rm", f"cannot remove '{name}': Is a directory")
                    continue
                shutil.rmtree(host)
            else:
                host.unlink()
        except FileNotFoundError:
            if "f" not in flags:
                status = _err(err, "rm", f"cannot remove '{name}': No such file or directory")
        except (OSError, ChrootError) as exc:
            status = _err(err, "rm", f"cannot remove '{name}': {exc.strerror if isinstance(exc, OSError) else exc}")
    return status


def _touch(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    status = 0
    for name in args:
        try:
            ctx.at(name).host.touch()
        except (OSError, ChrootError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            status = _err(err, "touch", f"cannot touch '{name}': {reason}")
    return status


def _check(kind: str, host: Path) -> bool:
    if kind == "-e":
        return host.exists()
    if kind == "-f":
        return host.is_file()
    if kind == "-d":
        return host.is_dir()
    if kind == "-s":
        return host.is_file() and host.stat().st_size > 0
    return host.exists() and os.access(host, os.X_OK)


def _test(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    if args and args[-1] == "]":
        args = args[:-1]
    negate = bool(args) and args[0] == "!"
    args = args[1:] if negate else args
    if len(args) != 2 or args[0] not in ("-e", "-f", "-d", "-s", "-x"):
        return 2
    try:
        result = _check(args[0], ctx.at(args[1]).host)
    except ChrootError:
        result = False
    return 0 if result != negate else 1


def _ls(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    status = 0
    for name in [a for a in args if not a.startswith("-")] or ["."]:
        try:
            host = ctx.at(name).host
            entries = sorted(p.name for p in host.iterdir()) if host.is_dir() else [name]
            if not host.exists() and not host.is_symlink():
                raise FileNotFoundError
            out.write("".join(f"{entry}\n" for entry in entries))
        except (OSError, ChrootError):
            status = _err(err, "ls", f"cannot access '{name}': No such file or directory")
    return status if status == 0 else 2


def _df(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    if any(a.startswith("-") and a not in ("-k", "-P", "-kP", "-Pk") for a in args):
        return _err(err, "df", "only -k and -P are modelled by fake-vzctl")
    used = disk_usage(ctx.private)
    pair = parse_pair(ctx.conf.get("DISKSPACE", ""), 1024) if ctx.conf.get("DISKSPACE") else None
    if pair is not None and pair[1] < LONG_MAX:
        total = pair[1]
    else:
        vfs = os.statvfs(ctx.private)
        total = vfs.f_blocks * vfs.f_frsize // 1024
    avail = max(total - used, 0)
    percent = math.ceil(used * 100 / total) if total else 0
    out.write("Filesystem     1K-blocks    Used Available Use% Mounted on\n")
    out.write(f"/dev/simfs     {total:>9} {used:>7} {avail:>9} {percent:>3}% /\n")
    return 0


def _hostname(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    try:
        name = ctx.at("/etc/hostname").host.read_text().strip()
    except (OSError, ChrootError):
        name = ctx.conf.get("HOSTNAME", "localhost")
    out.write(f"{name or 'localhost'}\n")
    return 0


def _sleep(ctx: Context, args: list[str], out: TextIO, err: TextIO) -> int:
    try:
        time.sleep(min(float(args[0]), 3600.0))
    except (IndexError, ValueError):
        return _err(err, "sleep", "invalid time interval")
    return 0


COMMANDS: dict[str, Handler] = {
    "true": _true, "false": _false, "exit": _exit, "echo": _echo, "cat": _cat, "mkdir": _mkdir, "mknod": _mknod,
    "chmod": _chmod, "rm": _rm, "touch": _touch, "test": _test, "[": _test, "ls": _ls, "df": _df,
    "hostname": _hostname, "sleep": _sleep,
}
