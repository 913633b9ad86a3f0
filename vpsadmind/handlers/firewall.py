"""Firewall::RegIp (2014) and Firewall::UnregIp (2015): the accounting rules of one address (contract 9.1).

Both are idempotent: registering an address that has its rules adds nothing, unregistering one that has none
deletes nothing. The address is validated with :mod:`ipaddress` while the params are parsed, so a bad one
fails the transaction before any command runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpsadmind.firewall.addresses import IPAddress, check_version, parse_address
from vpsadmind.firewall.services import network_for
from vpsadmind.handlers.base import Handler, Outcome, handler, ok

__all__ = ["IpParams", "RegIp", "UnregIp"]


@dataclass(frozen=True, slots=True)
class IpParams:
    addr: str
    version: int

    def __post_init__(self) -> None:
        check_version(self.version)
        parse_address(self.addr, self.version)

    @property
    def ip(self) -> IPAddress:
        return parse_address(self.addr, self.version)


@handler(2014)
class RegIp(Handler[IpParams]):
    """Add the six accounting rules of ``addr``; rollback deletes them."""

    Params = IpParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        added = await network_for(self.ctx).firewall.register(self.params.ip)
        return ok(rules_added=added)

    async def rollback(self) -> Outcome | None:
        deleted = await network_for(self.ctx).firewall.unregister(self.params.ip)
        return ok(rules_deleted=deleted)


@handler(2015)
class UnregIp(Handler[IpParams]):
    """Collect the counts of ``addr`` and delete its rules (keep_going in the API); rollback registers it."""

    Params = IpParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        deleted = await network_for(self.ctx).firewall.unregister(self.params.ip)
        return ok(rules_deleted=deleted)

    async def rollback(self) -> Outcome | None:
        added = await network_for(self.ctx).firewall.register(self.params.ip)
        return ok(rules_added=added)
