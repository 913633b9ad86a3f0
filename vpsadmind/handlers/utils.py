"""Utility transactions of v2.0."""

from __future__ import annotations

from vpsadmind.handlers.base import Handler, Outcome, handler
from vpsadmind.handlers.params import NoParams

__all__ = ["NoOp"]


@handler(10001)
class NoOp(Handler[NoParams]):
    """Utils::NoOp: does nothing; chains use it to carry confirmations to a point in the chain."""

    Params = NoParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        return None

    async def rollback(self) -> Outcome | None:
        return None
