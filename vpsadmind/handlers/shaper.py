"""Shaper transactions (contract 5.1, 5.2, 9.2): 2009 Change, 2010 Set, 2011 Unset, 2012 RootChange.

Rollbacks as v2.0: Set <-> Unset, Change applies ``shaper_original``, RootChange applies ``original`` (and does
nothing without it). All are idempotent: tc objects are replaced, and deleting what is gone is fine.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpsadmind.firewall.addresses import check_version, parse_address
from vpsadmind.firewall.services import network_for
from vpsadmind.firewall.shaper import ShapedIp, check_class_id, check_rate
from vpsadmind.handlers.base import Handler, Outcome, handler, ok

__all__ = ["ShaperSpec", "ShaperIpParams", "ShaperChangeParams", "RootLimits", "RootChangeParams",
           "ShaperSet", "ShaperUnset", "ShaperChange", "RootChange"]


@dataclass(frozen=True, slots=True)
class ShaperSpec:
    class_id: int
    max_tx: int
    max_rx: int

    def __post_init__(self) -> None:
        check_class_id(self.class_id, "class_id")
        check_rate(self.max_tx, "max_tx")
        check_rate(self.max_rx, "max_rx")


@dataclass(frozen=True, slots=True)
class ShaperIpParams:
    addr: str
    version: int
    shaper: ShaperSpec

    def __post_init__(self) -> None:
        check_version(self.version)
        parse_address(self.addr, self.version)

    def shaped(self, spec: ShaperSpec | None = None) -> ShapedIp:
        s = spec or self.shaper
        return ShapedIp(parse_address(self.addr, self.version), s.class_id, s.max_tx, s.max_rx)


@dataclass(frozen=True, slots=True)
class ShaperChangeParams(ShaperIpParams):
    shaper_original: ShaperSpec | None = None


@dataclass(frozen=True, slots=True)
class RootLimits:
    max_tx: int
    max_rx: int

    def __post_init__(self) -> None:
        check_rate(self.max_tx, "max_tx")
        check_rate(self.max_rx, "max_rx")


@dataclass(frozen=True, slots=True)
class RootChangeParams(RootLimits):
    original: RootLimits | None = None


@handler(2010)
class ShaperSet(Handler[ShaperIpParams]):
    Params = ShaperIpParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        await network_for(self.ctx).shaper.set(self.params.shaped())
        return None

    async def rollback(self) -> Outcome | None:
        await network_for(self.ctx).shaper.unset(self.params.shaped())
        return None


@handler(2011)
class ShaperUnset(Handler[ShaperIpParams]):
    Params = ShaperIpParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        await network_for(self.ctx).shaper.unset(self.params.shaped())
        return None

    async def rollback(self) -> Outcome | None:
        await network_for(self.ctx).shaper.set(self.params.shaped())
        return None


@handler(2009)
class ShaperChange(Handler[ShaperChangeParams]):
    Params = ShaperChangeParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        await network_for(self.ctx).shaper.change(self.params.shaped())
        return None

    async def rollback(self) -> Outcome | None:
        original = self.params.shaper_original
        if original is None:
            return ok(note="no shaper_original, nothing to restore")
        await network_for(self.ctx).shaper.change(self.params.shaped(original))
        return None


async def _apply_root(handler_: Handler[RootChangeParams], limits: RootLimits) -> Outcome:
    net = network_for(handler_.ctx)
    if await net.shaper.root_change(limits.max_tx, limits.max_rx):
        return ok()
    shaped = await net.shaper_init(limits.max_tx, limits.max_rx)  # v2.0: re-init when class 1:1 is missing
    return ok(reinitialised=True, shaped=shaped)


@handler(2012)
class RootChange(Handler[RootChangeParams]):
    Params = RootChangeParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        return await _apply_root(self, self.params)

    async def rollback(self) -> Outcome | None:
        if self.params.original is None:
            return ok(note="no original limits, nothing to restore")
        return await _apply_root(self, self.params.original)
