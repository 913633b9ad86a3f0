"""What every upgrade step reports: rows of a table (object, what was found, what to do, status), the
operation runner that applies them, and the exit code of a whole run.

A step never acts on what it inspected a moment ago: each row that needs work carries a ``run`` callable that
looks at the real state again and performs the remaining small operations through :class:`Runner`, one
:meth:`Runner.op` each. So a run can stop after any operation and the next run picks up from what it finds.
An operation that is already done is not run again, so every operation a run performs is progress (a run
interrupted after its first operation still gets somewhere; the tests rely on it).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "Deferred",
    "ExitCode",
    "Hook",
    "Row",
    "RowRun",
    "Runner",
    "Status",
    "StepReport",
    "UpgradeError",
    "display",
    "exit_code",
    "plural",
    "render",
]

T = TypeVar("T")

#: Called before every operation with the number of operations already done in this run and a description
#: of the next one; tests raise from it to interrupt a run at a chosen point.
Hook = Callable[[int, str], None]


class UpgradeError(Exception):
    """An operation found a state it must not touch; the message says what a human should look at."""


class Deferred(Exception):
    """Raised by a row's work when it cannot be done now (the daemon stopped meanwhile): the row is pending."""


class ExitCode(enum.IntEnum):
    """Exit status of ``vpsadmind upgrade`` (documented in docs/upgrade.md)."""

    NOTHING = 0   # nothing to do: the node (or the selected steps) is already in the v2.0 layout
    FAILED = 1    # an operation failed, or the tool could not start; re-running after the fix is safe
    USAGE = 2     # invalid command line (argparse)
    DONE = 3      # apply changed something and nothing is left to do
    PENDING = 4   # work remains: check found work for apply, or apply left some (an option, the daemon, "no")
    HUMAN = 5     # something needs a decision or a fix by a human; everything else was still handled


class Status(enum.Enum):
    OK = "ok"                 # already as v2.0 wants it
    NOTE = "note"             # information only
    TODO = "todo"             # apply does it
    DONE = "done"             # apply did it
    PENDING = "pending"       # left for a later run: needs an option, the running daemon or a confirmation
    HUMAN = "needs a human"   # the tool will not decide this
    FAILED = "failed"         # an operation failed


class Runner:
    """Runs the operations of an apply, counting them and calling the test hook before each one."""

    def __init__(self, hook: Hook | None = None) -> None:
        self.hook = hook
        self.ops = 0
        self.log: list[str] = []

    async def op(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        if self.hook is not None:
            self.hook(self.ops, what)
        result = await fn()
        self.ops += 1
        self.log.append(what)
        return result


#: The work behind a TODO row: returns a note for the "result" column (or None).
RowRun = Callable[[Runner], Awaitable[str | None]]


@dataclass
class Row:
    subject: str
    found: str
    action: str = ""
    status: Status = Status.OK
    run: RowRun | None = field(default=None, repr=False)
    result: str = ""


@dataclass
class StepReport:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    blocking: bool = False     # the prerequisites failed: the other steps cannot run
    skipped: str = ""          # why the step was not inspected at all

    def todo(self) -> list[Row]:
        return [row for row in self.rows if row.status is Status.TODO]


def exit_code(reports: Iterable[StepReport], *, check: bool) -> ExitCode:
    """The most severe outcome: failed > needs a human > work remains > done > nothing."""
    statuses = {row.status for report in reports for row in report.rows}
    if Status.FAILED in statuses:
        return ExitCode.FAILED
    if Status.HUMAN in statuses:
        return ExitCode.HUMAN
    if Status.PENDING in statuses or Status.TODO in statuses:
        return ExitCode.PENDING
    if Status.DONE in statuses and not check:
        return ExitCode.DONE
    return ExitCode.NOTHING


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 snapshot``, ``2 snapshots``."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def display(name: str | bytes) -> str:
    """A name as it can be printed on one line: undecodable bytes as ``\\xNN``, control characters escaped."""
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:          # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


_STATUS_WORDS = {
    # (status, check mode) -> the word in the status column
    (Status.TODO, True): "would do",
    (Status.TODO, False): "not done",
}


def _status_word(status: Status, check: bool) -> str:
    return _STATUS_WORDS.get((status, check), status.value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]
    # The last column is not padded (no trailing blanks); very wide cells simply push the line out.
    fmt = [f"{{:<{w}}}" for w in widths[:-1]] + ["{}"]
    lines = ["  ".join(f.format(c) for f, c in zip(fmt, header, strict=True)).rstrip()]
    lines += ["  ".join(f.format(c) for f, c in zip(fmt, row, strict=True)).rstrip() for row in rows]
    return lines


def render(report: StepReport, *, check: bool) -> str:
    """The step's table: what was found, what would be (or was) done, and the status of each object."""
    head = f"== {report.name}: {report.title} =="
    if report.skipped:
        return f"{head}\n  skipped: {report.skipped}\n"
    if not report.rows:
        return f"{head}\n  nothing found\n"
    verb = "would do" if check else "action"
    cells = []
    for row in report.rows:
        status = _status_word(row.status, check)
        action = row.action + (f" [{row.result}]" if row.result else "")
        cells.append([row.subject, row.found, action or "-", status])
    body = _table(["object", "found", verb, "status"], cells)
    return head + "\n" + "\n".join("  " + line for line in body) + "\n"
