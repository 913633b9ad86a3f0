"""A local, fsync'd journal of results that could not be saved because the database was unreachable.

A result is computed once. If MySQL is gone when it should be saved, the result goes to one file here before
anything else happens; the daemon keeps retrying the save, and at start it replays whatever the journal
still holds before it recovers interrupted transactions. So an outage, or a crash during one, loses no result
and runs no handler twice. The transaction's ``t_param`` is not written (it may carry secrets): replay takes it
from the database again, which must be up for the replay anyway.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpsadmind.engine.model import Result, Transaction

__all__ = ["Journal", "JournalEntry"]


@dataclass(slots=True)
class JournalEntry:
    transaction: Transaction
    result: Result
    path: Path

    def to_json(self) -> dict[str, Any]:
        t = self.transaction
        return {
            "version": 1,
            "transaction": {
                "t_id": t.t_id, "transaction_chain_id": t.chain_id, "t_type": t.t_type, "t_server": t.t_server,
                "t_vps": t.t_vps, "t_depends_on": t.t_depends_on, "t_urgent": t.t_urgent,
                "t_priority": t.t_priority, "t_success": t.t_success, "t_done": t.t_done,
                # Not t_param: it may hold a root password (2002) or a private key (7), and the database
                # that will take the result keeps it anyway; replay reads it from there.
                "t_param": None, "reversible": t.reversible, "queue": t.queue,
                "chain_state": t.chain_state, "chain_progress": t.chain_progress, "chain_size": t.chain_size,
                "urgent_rollback": t.urgent_rollback, "t_output": t.t_output,
            },
            "result": self.result.to_json(),
        }


class Journal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.dir = Path(path)

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _file(self, result: Result) -> Path:
        return self.dir / f"{result.t_id:012d}-{result.direction.label}.json"

    def write(self, transaction: Transaction, result: Result) -> JournalEntry:
        """Durably record ``result``: temp file, fsync, rename, fsync of the directory."""
        self.ensure()
        target = self._file(result)
        entry = JournalEntry(transaction, result, target)
        tmp = target.with_suffix(".tmp")
        data = json.dumps(entry.to_json(), default=str).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        self._fsync_dir()
        return entry

    def remove(self, entry: JournalEntry) -> None:
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[JournalEntry]:
        """Every complete entry, oldest transaction first; a torn temp file is discarded (never renamed)."""
        if not self.dir.is_dir():
            return []
        out: list[JournalEntry] = []
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        for path in sorted(self.dir.glob("*.json")):
            obj = json.loads(path.read_text())
            out.append(JournalEntry(Transaction.from_row(obj["transaction"]), Result.from_json(obj["result"]), path))
        return out
