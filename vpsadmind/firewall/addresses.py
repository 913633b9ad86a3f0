"""Address validation: every address is parsed by :mod:`ipaddress` before it may reach a command line.

``parse_address`` accepts a plain IPv4 or IPv6 address (no prefix, no zone id, no surrounding blanks) and
optionally checks that its version is the one ``t_param`` claims. Anything else raises
:class:`~vpsadmind.errors.ParamError`, so that ``1.2.3.4; rm``, ``999.1.1.1``, ``-A`` or ``::1::2`` fail a
transaction before any ``iptables`` or ``tc`` runs.
"""

from __future__ import annotations

import ipaddress
from typing import Final, TypeAlias

from vpsadmind.errors import ParamError

__all__ = ["IPAddress", "VERSIONS", "parse_address", "check_version"]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
VERSIONS: Final = (4, 6)
_MAX_LEN: Final = 64


def check_version(value: object, field: str = "version") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in VERSIONS:
        raise ParamError(f"expected 4 or 6, got {value!r:.40}", field=field)
    return value


def parse_address(value: object, version: int | None = None, *, field: str = "addr") -> IPAddress:
    """``value`` as an address object; ParamError naming ``field`` if it is not a plain IPv4/IPv6 address
    (of ``version`` when given)."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr: IPAddress = value
    else:
        if not isinstance(value, str):
            raise ParamError(f"expected an IP address string, got {type(value).__name__}", field=field)
        if not value or len(value) > _MAX_LEN or value.strip() != value or "%" in value or "/" in value:
            raise ParamError(f"not a plain IP address: {value[:_MAX_LEN]!r}", field=field)
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ParamError(f"not an IP address: {value!r}", field=field) from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise ParamError(f"zone ids are not allowed: {addr}", field=field)
    if version is not None and addr.version != check_version(version):
        raise ParamError(f"{addr} is not an IPv{version} address", field=field)
    return addr
