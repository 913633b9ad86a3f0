"""Probe handlers for tests and the demo (type codes 90001-90003, outside v2.0's range).

They count their own effects in a file (one line per exec or rollback), so a test can prove from the
effects themselves, not from logs, how often a handler ran. Enable them with
``vpsadmin.handler_modules: [vpsadmind.testing.handlers]``.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

from vpsadmind import system
from vpsadmind.db import Tx
from vpsadmind.engine.model import Direction, Result
from vpsadmind.handlers.base import Handler, Outcome, Recovery, failed, handler, ok, warning

__all__ = ["ProbeParams", "Probe", "IdempotentProbe", "RecoveringProbe", "PROBE", "IDEMPOTENT_PROBE",
           "RECOVERING_PROBE", "read_effects"]

PROBE = 90001
IDEMPOTENT_PROBE = 90002
RECOVERING_PROBE = 90003


@dataclass(frozen=True, slots=True)
class ProbeParams:
    effects: str | None = None        # file that receives one line per exec/rollback
    sleep: float = 0.0                 # seconds to wait after the effect (a window to kill the daemon in)
    fail: bool = False                 # exec fails (after its effect)
    raise_error: bool = False          # fail by raising instead of returning a failure
    fail_rollback: bool = False
    warn: bool = False
    mark: bool = False                 # post_save writes sysconfig 'probe:<t_id>'
    command: list[str] | None = None   # run this (vpsadmind.system.run) after the effect, before the sleep


def _effect(path: str | None, line: str) -> None:
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_effects(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        return []


@handler(PROBE)
class Probe(Handler[ProbeParams]):
    """Not idempotent: each exec appends ``exec <t_id>``."""

    Params = ProbeParams

    async def exec(self) -> Outcome | None:
        p = self.params
        _effect(p.effects, f"exec {self.transaction.t_id}")
        if p.command:
            await system.run(p.command)
        if p.sleep:
            await asyncio.sleep(p.sleep)
        if p.fail:
            if p.raise_error:
                raise RuntimeError(f"probe {self.transaction.t_id} failed on purpose")
            return failed(f"probe {self.transaction.t_id} failed on purpose")
        if p.warn:
            return warning(note="probe warning")
        return Outcome(output={"probe": self.transaction.t_id}, data={"mark": p.mark})

    async def rollback(self) -> Outcome | None:
        p = self.params
        _effect(p.effects, f"rollback {self.transaction.t_id}")
        if p.fail_rollback:
            raise RuntimeError(f"probe {self.transaction.t_id} rollback failed on purpose")
        return ok()

    async def post_save(self, tx: Tx, result: Result) -> None:
        if result.data.get("mark"):
            await tx.execute("REPLACE INTO sysconfig (cfg_name, cfg_value) VALUES (%s, %s)",
                             (f"probe:{self.transaction.t_id}", json.dumps(result.output)))


@handler(IDEMPOTENT_PROBE)
class IdempotentProbe(Probe):
    """Declares itself safe to run again after a crash."""

    idempotent = True


@handler(RECOVERING_PROBE)
class RecoveringProbe(Probe):
    """Looks at its effects file to learn whether the interrupted exec already happened."""

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        lines = read_effects(self.params.effects or "")
        mine = f"{'exec' if direction is Direction.EXECUTE else 'rollback'} {self.transaction.t_id}"
        if mine in lines:
            return ok(recovered_from="effects file")
        return Recovery.RERUN


def probe_params(**kwargs: Any) -> dict[str, Any]:
    """Params for a probe transaction, as a chain builder's ``params``."""
    return dict(kwargs)
