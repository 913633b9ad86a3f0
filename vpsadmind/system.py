"""The one way vpsadmind starts processes: argv lists (never a shell), a timeout, the exit codes that count as
success, typed failures carrying argv, code and output, and a call log that tests use to keep command budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from vpsadmind.errors import AgentError

__all__ = ["CommandFailed", "CommandTimeout", "Completed", "run", "spawn", "CallLog", "record_calls"]

_MAX_OUTPUT = 64 * 1024 * 1024


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
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise CommandTimeout(args, timeout or 0) from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
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
    return await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL if stdin is None else stdin,
        stdout=asyncio.subprocess.DEVNULL if stdout is None else stdout,
        stderr=asyncio.subprocess.PIPE if stderr is None else stderr, env=env)
