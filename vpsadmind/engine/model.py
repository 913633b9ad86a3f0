"""The words of the v2.0 contract as types: codes of ``transactions``, ``transaction_chains`` and
``transaction_confirmations``, the row the engine works on, and a handler's result."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TDone",
    "TSuccess",
    "Reversible",
    "ChainState",
    "ConfirmType",
    "Direction",
    "Transaction",
    "Result",
    "utcnow",
]


class TDone(enum.IntEnum):
    WAITING = 0
    DONE = 1
    ROLLED_BACK = 2


class TSuccess(enum.IntEnum):
    FAILED = 0
    OK = 1
    WARNING = 2


class Reversible(enum.IntEnum):
    NOT_REVERSIBLE = 0
    IS_REVERSIBLE = 1
    KEEP_GOING = 2


class ChainState(enum.IntEnum):
    STAGED = 0
    QUEUED = 1
    DONE = 2
    ROLLBACKING = 3
    FAILED = 4
    FATAL = 5
    RESOLVED = 6


class ConfirmType(enum.IntEnum):
    CREATE = 0
    JUST_CREATE = 1
    EDIT_BEFORE = 2
    EDIT_AFTER = 3
    DESTROY = 4
    JUST_DESTROY = 5
    DECREMENT = 6
    INCREMENT = 7


class Direction(enum.IntEnum):
    """Which method of the handler runs: ``exec`` while the chain is queued, ``rollback`` while it rolls back."""

    EXECUTE = 0
    ROLLBACK = 1

    @property
    def label(self) -> str:
        return "execute" if self is Direction.EXECUTE else "rollback"


def utcnow() -> dt.datetime:
    """UTC wall time without tzinfo, as v2.0 stores DATETIME columns.

    Microseconds are kept for durations in logs and events; MariaDB truncates them in DATETIME columns.
    """
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(slots=True)
class Transaction:
    """One ``transactions`` row joined with what the engine needs of its chain."""

    t_id: int
    chain_id: int
    t_type: int
    t_server: int
    t_vps: int | None
    t_depends_on: int | None
    t_urgent: bool
    t_priority: int
    t_success: int
    t_done: int
    t_param: str | None
    reversible: int
    queue: str
    chain_state: int
    chain_progress: int
    chain_size: int
    urgent_rollback: bool
    t_output: str | None = None

    @property
    def direction(self) -> Direction:
        return Direction.ROLLBACK if self.chain_state == ChainState.ROLLBACKING else Direction.EXECUTE

    @property
    def urgent(self) -> bool:
        """v2.0 meant ``urgent_rollback`` to make a chain's rollbacks urgent but never wired it (contract 12.2)."""
        if self.direction is Direction.ROLLBACK and self.urgent_rollback:
            return True
        return self.t_urgent

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Transaction:
        return cls(
            t_id=int(row["t_id"]),
            chain_id=int(row["transaction_chain_id"]),
            t_type=int(row["t_type"]),
            t_server=int(row["t_server"]),
            t_vps=None if row["t_vps"] is None else int(row["t_vps"]),
            t_depends_on=None if row["t_depends_on"] is None else int(row["t_depends_on"]),
            t_urgent=bool(row["t_urgent"]),
            t_priority=int(row["t_priority"]),
            t_success=int(row["t_success"]),
            t_done=int(row["t_done"]),
            t_param=row["t_param"],
            reversible=int(row["reversible"]),
            queue=str(row["queue"] or "general"),
            chain_state=int(row["chain_state"]),
            chain_progress=int(row["chain_progress"]),
            chain_size=int(row["chain_size"]),
            urgent_rollback=bool(row["urgent_rollback"]),
            t_output=row.get("t_output"),
        )


@dataclass(slots=True)
class Result:
    """What running one transaction produced; everything the save needs, and JSON-serialisable for the journal.

    ``data`` carries what ``post_save`` needs but must not land in ``t_output`` (a snapshot name, say),
    so that a journaled result can be saved later without the handler object.
    """

    t_id: int
    chain_id: int
    direction: Direction
    status: TSuccess
    output: dict[str, Any] = field(default_factory=dict)
    self_rolled_back: bool = False
    rollback_failed: bool = False
    skipped: bool = False
    irreversible_in_rollback: bool = False
    started_at: dt.datetime = field(default_factory=utcnow)
    finished_at: dt.datetime = field(default_factory=utcnow)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def t_done(self) -> TDone:
        if self.direction is Direction.ROLLBACK or self.self_rolled_back:
            return TDone.ROLLED_BACK
        return TDone.DONE

    def to_json(self) -> dict[str, Any]:
        return {
            "t_id": self.t_id,
            "chain_id": self.chain_id,
            "direction": int(self.direction),
            "status": int(self.status),
            "output": self.output,
            "self_rolled_back": self.self_rolled_back,
            "rollback_failed": self.rollback_failed,
            "skipped": self.skipped,
            "irreversible_in_rollback": self.irreversible_in_rollback,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "data": self.data,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Result:
        return cls(
            t_id=int(obj["t_id"]),
            chain_id=int(obj["chain_id"]),
            direction=Direction(int(obj["direction"])),
            status=TSuccess(int(obj["status"])),
            output=dict(obj.get("output") or {}),
            self_rolled_back=bool(obj.get("self_rolled_back")),
            rollback_failed=bool(obj.get("rollback_failed")),
            skipped=bool(obj.get("skipped")),
            irreversible_in_rollback=bool(obj.get("irreversible_in_rollback")),
            started_at=dt.datetime.fromisoformat(obj["started_at"]),
            finished_at=dt.datetime.fromisoformat(obj["finished_at"]),
            data=dict(obj.get("data") or {}),
        )
