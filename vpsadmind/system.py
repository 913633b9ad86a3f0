"""The one way vpsadmind starts processes: argv lists (never a shell), a timeout, the exit codes that count as
success, typed failures carrying argv, code and output, and a call log that tests use to keep command budgets.

Every process started here while a :class:`ProcessGroup` is tracked (:func:`track`, done by the engine for each
running transaction) joins that group: ``vpsadmindctl status -w`` shows its command and pid as the
transaction's step, and ``vpsadmindctl kill`` terminates what is left of it. A cancelled :func:`run` (kill,
forced stop) sends SIGTERM and gives the process ``TERM_GRACE`` seconds before SIGKILL, as v2.0 SIGTERMed the
child of a killed worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from vpsadmind.errors import AgentError

__all__ = ["CommandFailed", "CommandTimeout", "Completed", "run", "spawn", "CallLog", "record_calls",
           "ProcessGroup", "track", "untrack", "TERM_GRACE"]

_MAX_OUTPUT = 64 * 1024 * 1024
#: Seconds a cancelled :func:`run` gives its process between SIGTERM and SIGKILL.
TERM_GRACE: Final = 5.0


class ProcessGroup:
    """The child processes one transaction started (see the module docstring); newest last."""

    def __init__(self) -> None:
        self._procs: dict[asyncio.subprocess.Process, list[str]] = {}

    def add(self, proc: asyncio.subprocess.Process, argv: list[str]) -> None:
        for old in [p for p in self._procs if p.returncode is not None]:
            del self._procs[old]  # spawned streams are not discarded by their callers: forget the exited
        self._procs[proc] = argv

    def discard(self, proc: asyncio.subprocess.Process) -> None:
        self._procs.pop(proc, None)

    def live(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of the processes still running, oldest first."""
        return [(p.pid, argv) for p, argv in self._procs.items() if p.returncode is None]

    def current(self) -> tuple[int, list[str]] | None:
        """The newest process still running: v2.0's ``step`` and ``pid`` of a worker."""
        live = self.live()
        return live[-1] if live else None

    def terminate(self, sig: int = signal.SIGTERM) -> list[int]:
        """Send ``sig`` to every live process; returns their pids."""
        sent = []
        for pid, _argv in self.live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                sent.append(pid)
        return sent


_group: contextvars.ContextVar[ProcessGroup | None] = contextvars.ContextVar("vpsadmind_process_group",
                                                                              default=None)


def track(group: ProcessGroup) -> contextvars.Token[ProcessGroup | None]:
    """Processes started from now on in this task (and tasks it creates) join ``group``."""
    return _group.set(group)


def untrack(token: contextvars.Token[ProcessGroup | None]) -> None:
    _group.reset(token)


def _join(proc: asyncio.subprocess.Process, argv: list[str]) -> ProcessGroup | None:
    group = _group.get()
    if group is not None:
        group.add(proc, argv)
    return group


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, up to TERM_GRACE seconds to exit, then SIGKILL (also when cancelled again while waiting)."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await _reaped(proc, TERM_GRACE)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await _reaped(proc, TERM_GRACE)


async def _reaped(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Wait until the process has exited, at most ``timeout`` seconds. Not ``proc.wait()``: that also waits
    for its pipes, which a grandchild (``sh -c 'sleep 60 & ...'``) may hold open long after the kill."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.returncode is None and loop.time() < deadline:
        await asyncio.sleep(0.02)


class CommandFailed(AgentError):
    """A command exited with a code not in its valid set; ``output`` is what v2.0 put into ``t_output``."""

    def __init__(self, argv: Sequence[str], exitstatus: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.exitstatus = exitstatus
        self.stdout = stdout
        self.stderr = stderr
        detail = (stderr or stdout).strip()
        super().__init__(f"{' '.join(self.argv)} exited with {exitstatus}" + (f": {detail}" if detail else ""))

    @property
    def output(self) -> dict[str, object]:
        return {"cmd": " ".join(self.argv), "exitstatus": self.exitstatus, "error": (self.stderr or self.stdout)}


class CommandTimeout(CommandFailed):
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(argv, -1, "", f"timed out after {timeout} s")


@dataclass(frozen=True, slots=True)
class Completed:
    argv: list[str]
    exitstatus: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class CallLog:
    """Every argv run while it is active (see :func:`record_calls`)."""

    calls: list[list[str]] = field(default_factory=list)

    def count(self, program: str | None = None, *, subcommand: str | None = None) -> int:
        def match(argv: list[str]) -> bool:
            if program is not None and os.path.basename(argv[0]) != program:
                return False
            return subcommand is None or (len(argv) > 1 and argv[1] == subcommand)

        return sum(1 for argv in self.calls if match(argv))


_logs: list[CallLog] = []


@contextlib.contextmanager
def record_calls() -> Iterator[CallLog]:
    log = CallLog()
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.remove(log)


async def run(argv: Sequence[str], *, valid_rcs: Sequence[int] = (0,), timeout: float | None = None,
              input: bytes | None = None, env: dict[str, str] | None = None, cwd: str | None = None) -> Completed:
    """Run ``argv`` and return its output; raise CommandFailed for an exit code outside ``valid_rcs``."""
    args = [str(a) for a in argv]
    if not args or not args[0]:
        raise AgentError("empty command")
    for log in _logs:
        log.calls.append(args)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd,
        limit=_MAX_OUTPUT)
    group = _join(proc, args)
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CommandTimeout(args, timeout or 0) from None
    except asyncio.CancelledError:
        await _terminate(proc)
        raise
    finally:
        if group is not None:
            group.discard(proc)
    rc = proc.returncode if proc.returncode is not None else -1
    done = Completed(args, rc, out.decode(errors="replace"), err.decode(errors="replace"),
                     time.monotonic() - started)
    if rc not in valid_rcs:
        raise CommandFailed(args, rc, done.stdout, done.stderr)
    return done


async def spawn(argv: Sequence[str], *, stdin: int | None = None, stdout: int | None = None,
                stderr: int | None = None, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """Start ``argv`` with the given file descriptors (``asyncio.subprocess.PIPE``/``DEVNULL`` or a real fd)
    and return it running: for streams (``zfs send``/``recv``) that the caller wires and waits for itself.
    The call is recorded like :func:`run`'s."""
    args = [str(a) for a in argv]
    if not args or not args[0]:
        raise AgentError("empty command")
    for log in _logs:
        log.calls.append(args)
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
        stdout=asyncio.subprocess.DEVNULL if stdout is None else stdout,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr, env=env)
    _join(proc, args)
    return proc
