"""Running the upgrade: inspect the selected steps, print what was found and what would be done, ask, then
apply each step from a fresh inspection (an earlier step may have changed what a later one sees) and print
what was done.

``check`` never changes anything. ``apply`` stops at the first failed operation; everything before it is
done for good, and the next run continues from what it finds (each step derives its work from the real state,
see the step modules).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from vpsadmind.config import Config
from vpsadmind.upgrade.backups import Backups
from vpsadmind.upgrade.context import Context, Options, StateFile
from vpsadmind.upgrade.firewall import Firewall
from vpsadmind.upgrade.nas import Nas
from vpsadmind.upgrade.pools import Pools
from vpsadmind.upgrade.prereq import Prerequisites
from vpsadmind.upgrade.report import (
    Deferred,
    ExitCode,
    Hook,
    Row,
    Runner,
    Status,
    StepReport,
    exit_code,
    render,
)
from vpsadmind.upgrade.reserved import ReservedNames
from vpsadmind.upgrade.sharenfs import ShareNfs
from vpsadmind.zfs.driver import Zfs

__all__ = ["STEP_NAMES", "Result", "Step", "default_state_file", "run_upgrade", "upgrade_zfs"]


class Step(Protocol):
    name: str
    title: str

    async def inspect(self, ctx: Context) -> list[Row]: ...


def _steps() -> list[Step]:
    """In the order of the v2.0 upgrade notes; reserved names before NAS (a child dataset named ``private``
    would be in the way of ``private/``)."""
    return [Prerequisites(), Pools(), ReservedNames(), Backups(), Nas(), ShareNfs(), Firewall()]


STEP_NAMES = tuple(step.name for step in _steps())


@dataclass
class Result:
    code: ExitCode
    reports: list[StepReport] = field(default_factory=list)
    ops: int = 0
    log: list[str] = field(default_factory=list)


def upgrade_zfs(cfg: Config) -> Zfs:
    """The driver with the configured binaries. zfs-fuse may call a dataset busy for a while after an unmount
    or a failed NFS export; in a maintenance window waiting up to about half a minute beats failing."""
    return Zfs(zfs=cfg.bin.get("zfs", "zfs"), zpool=cfg.bin.get("zpool", "zpool"), busy_retries=120)


def default_state_file(cfg: Config) -> str:
    """Next to the daemon's journal (``/var/lib/vpsadmind/upgrade-state.json`` by default)."""
    return os.path.join(os.path.dirname(cfg.journal.path) or ".", "upgrade-state.json")


async def run_upgrade(cfg: Config, *, apply: bool, steps: Sequence[str] | None = None,
                      options: Options | None = None, out: TextIO | None = None,
                      confirm: Callable[[str], bool] | None = None, hook: Hook | None = None,
                      zfs: Zfs | None = None) -> Result:
    """Check (``apply=False``) or apply the selected ``steps`` (all by default). ``confirm`` is asked once
    before the first change (None: no question); ``hook`` is called before every operation (tests)."""
    options = options or Options()
    ctx = Context(cfg, zfs or upgrade_zfs(cfg), options, StateFile(options.state_file or default_state_file(cfg)))
    unknown = sorted(set(steps or ()) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown steps: {', '.join(unknown)}")
    ctx.steps = frozenset(steps or STEP_NAMES)
    out = out or sys.stdout
    try:
        with _exclusive(ctx.state.path + ".lock") if apply else contextlib.nullcontext(True) as locked:
            if not locked:
                out.write(f"another 'vpsadmind upgrade apply' runs on this node ({ctx.state.path}.lock)\n")
                return Result(ExitCode.FAILED)
            return await _Run(ctx, set(ctx.steps), out, hook).run(apply, confirm)
    finally:
        if ctx.db is not None:
            await ctx.db.close()


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[bool]:
    """An exclusive lock for the whole apply: two of them at once would race for the same operations."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


class _Run:
    def __init__(self, ctx: Context, selected: set[str], out: TextIO, hook: Hook | None) -> None:
        self.ctx = ctx
        self.selected = selected
        self.out = out
        self.runner = Runner(hook)

    def _print(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def run(self, apply: bool, confirm: Callable[[str], bool] | None) -> Result:
        plan = await self.inspect_all()
        for report in plan:
            self._print(render(report, check=True))
        if not apply:
            return Result(exit_code(plan, check=True), plan)
        todo = sum(len(report.todo()) for report in plan)
        if todo == 0:
            code = exit_code(plan, check=False)
            self._print("nothing to do\n" if code == ExitCode.NOTHING else "nothing this run can do, see above\n")
            return Result(code, plan)
        if confirm is not None and not confirm(f"apply {todo} changes to this node? [y/N] "):
            self._print("nothing changed\n")
            return Result(exit_code(plan, check=True), plan)
        self._print("\napplying\n\n")
        done = await self.apply_all()
        return Result(exit_code(done, check=False), done, self.runner.ops, self.runner.log)

    def _wanted(self) -> list[Step]:
        """The selected steps; the prerequisites always, as they connect the database and find the pools."""
        return [s for s in _steps() if s.name in self.selected or isinstance(s, Prerequisites)]

    async def inspect_all(self) -> list[StepReport]:
        reports: list[StepReport] = []
        blocked = ""
        for step in self._wanted():
            report = await self._inspect(step, blocked)
            if report.blocking:
                blocked = "the prerequisites are not met"
            if step.name in self.selected or report.blocking:
                reports.append(report)
        return reports

    async def _inspect(self, step: Step, blocked: str) -> StepReport:
        report = StepReport(step.name, step.title)
        if blocked:
            report.skipped = blocked
            return report
        try:
            report.rows = await step.inspect(self.ctx)
        except Exception as exc:  # a step that cannot even look is a failure of this run, not of the node
            report.rows = [Row(step.name, f"inspection failed: {type(exc).__name__}: {exc}", "",
                               Status.FAILED)]
        if isinstance(step, Prerequisites):
            report.blocking = step.blocking
        return report

    async def apply_all(self) -> list[StepReport]:
        reports: list[StepReport] = []
        stop = ""
        for step in self._wanted():
            report = await self._inspect(step, stop)
            if step.name not in self.selected and not report.blocking:
                continue
            if not stop and step.name in self.selected and await self._execute(report):
                stop = f"an operation of step {step.name} failed"
            if report.blocking and not stop:
                stop = "the prerequisites are not met"
            if any(row.status is Status.FAILED for row in report.rows) and not stop:
                stop = f"step {step.name} failed"
            self._print(render(report, check=False))
            reports.append(report)
        return reports

    async def _execute(self, report: StepReport) -> bool:
        """Run the TODO rows in order; True when one failed (the rest of the run is skipped)."""
        for row in report.todo():
            if row.run is None:
                continue
            try:
                note = await row.run(self.runner)
            except Deferred as exc:
                row.status, row.result = Status.PENDING, str(exc)
                continue
            except Exception as exc:
                row.status, row.result = Status.FAILED, f"{type(exc).__name__}: {exc}"
                return True
            row.status, row.result = Status.DONE, note or ""
        return False
