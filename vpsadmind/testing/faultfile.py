"""The fault file the fake CLIs share (fake-zfs, fake-vzctl): ``<root>/faults.json`` under ``<root>/faults.lock``.

Each fake defines its own ``Fault`` dataclass (kinds, what it matches); this module only stores them: read,
append, clear and consume one firing, each under an exclusive ``flock`` so that concurrent commands and the
test that injects never see half a file. A fault fires ``remaining`` more times (None = always).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["FaultFile"]


class _Fault(Protocol):
    remaining: int | None


F = TypeVar("F", bound=_Fault)


class FaultFile(Generic[F]):
    """The pending faults of type ``cls`` under ``root``."""

    def __init__(self, root: str | os.PathLike[str], cls: Callable[..., F]) -> None:
        self.root = Path(root)
        self.cls = cls
        self.path = self.root / "faults.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / "faults.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[F]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [self.cls(**item) for item in data.get("faults", [])]

    def _write(self, faults: list[F]) -> None:
        tmp = self.path.with_name(f"faults.json.{os.getpid()}.tmp")
        items: list[Any] = [asdict(f) for f in faults]  # type: ignore[call-overload]
        tmp.write_text(json.dumps({"faults": items}, indent=1))
        os.replace(tmp, self.path)

    def load(self) -> list[F]:
        """The faults still pending."""
        return self._read()

    def inject(self, fault: F) -> F:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._write([*self._read(), fault])
        return fault

    def clear(self) -> None:
        with self._locked():
            self.path.unlink(missing_ok=True)

    def take(self, match: Callable[[F], bool]) -> F | None:
        """Consume one firing of the first pending fault for which ``match`` is true; None if there is none."""
        if not self.path.exists():
            return None
        with self._locked():
            faults = self._read()
            for index, fault in enumerate(faults):
                if match(fault):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            del faults[index]
                        self._write(faults)
                    return fault
            return None
