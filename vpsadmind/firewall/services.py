"""The node's network accounting and shaping as one object: firewall, shaper, the database rows they are built
from, and the ``init`` / ``flush`` / ``reinit`` of vpsadmindctl (contract 6.2, 10.6).

Handlers get the :class:`Network` of their context with :func:`network_for` (one per context and config, so
that the firewall lock is shared by every handler, the traffic reporter and the control commands). The daemon
passes the one it builds to :func:`install` at start (with its traffic reporter) and installs it again after a reload,
so that a new configuration never brings a second Firewall (a second lock and baseline) into play; tests
install their own (e.g. one that runs inside a network namespace).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog

from vpsadmind.db import Database
from vpsadmind.errors import AgentError, ParamError
from vpsadmind.firewall.accounting import Firewall
from vpsadmind.firewall.shaper import ShapedIp, Shaper
from vpsadmind.reporters.traffic import TrafficReporter

if TYPE_CHECKING:
    from vpsadmind.config import Config
    from vpsadmind.handlers.base import HandlerContext

__all__ = ["Network", "RESOURCES", "active_ips", "install", "network_for"]

log = structlog.get_logger("vpsadmind.network")

RESOURCES: Final = ("fw", "shaper")
#: ``servers.max_tx``/``max_rx`` defaults (bytes/s), used when neither config nor database has a value.
DEFAULT_NODE_RATE: Final = 235929600

_ACTIVE_IPS: Final = ("SELECT vps_ip.ip_addr AS addr, vps_ip.ip_v AS version, vps_ip.class_id AS class_id, "
                      "vps_ip.max_tx AS max_tx, vps_ip.max_rx AS max_rx FROM vps_ip "
                      "INNER JOIN vps ON vps.vps_id = vps_ip.vps_id WHERE vps.vps_server = %s "
                      "ORDER BY vps_ip.ip_id")


async def active_ips(db: Database, server_id: int) -> list[ShapedIp]:
    """The addresses of the VPSes on node ``server_id`` (``vps_ip`` joined to ``vps``); a row whose address,
    class or rates are invalid is logged and left out, so it never reaches a command."""
    out: list[ShapedIp] = []
    for row in await db.fetchall(_ACTIVE_IPS, (server_id,)):
        try:
            out.append(ShapedIp.of(row["addr"], row["class_id"], row["max_tx"], row["max_rx"],
                                   int(row["version"]), field="vps_ip"))
        except (ParamError, TypeError, ValueError) as exc:
            log.error("invalid vps_ip row skipped", row=row, error=str(exc))
    return out


class Network:
    """Accounting, shaping and traffic reporting of one node."""

    def __init__(self, db: Database, server_id: int, *, firewall: Firewall, shaper: Shaper,
                 max_tx: int | None = None, max_rx: int | None = None, reporter: TrafficReporter | None = None
                 ) -> None:
        self.db = db
        self.server_id = server_id
        self.firewall = firewall
        self.shaper = shaper
        self.max_tx = max_tx
        self.max_rx = max_rx
        self.reporter = reporter or TrafficReporter(firewall, db, server_id)

    @classmethod
    def from_config(cls, config: Config, db: Database, *, argv_prefix: Sequence[str] = ()) -> Network:
        bins = config.bin
        fw = Firewall(iptables=bins.get("iptables", "iptables"), ip6tables=bins.get("ip6tables", "ip6tables"),
                      argv_prefix=argv_prefix)
        shaper = Shaper(tc=bins.get("tc", "tc"), netdev=config.netdev, argv_prefix=argv_prefix)
        return cls(db, config.server_id, firewall=fw, shaper=shaper, max_tx=config.max_tx, max_rx=config.max_rx)

    def apply_config(self, config: Config) -> None:
        """A reloaded configuration: the node's limits apply at the next shaper init; the firewall and the shaper
        are kept (their locks, counter baselines and uncollected traffic), so changed commands or devices
        apply at a restart, which is logged."""
        self.max_tx, self.max_rx = config.max_tx, config.max_rx
        bins = config.bin
        now = {"bin.iptables": self.firewall.binaries[4], "bin.ip6tables": self.firewall.binaries[6],
               "bin.tc": self.shaper.tc, "vpsadmin.netdev": self.shaper.netdev}
        new = {"bin.iptables": bins.get("iptables", "iptables"), "bin.ip6tables": bins.get("ip6tables", "ip6tables"),
               "bin.tc": bins.get("tc", "tc"), "vpsadmin.netdev": config.netdev}
        changed = sorted(k for k in now if now[k] != new[k])
        if changed:
            log.warning("network_config_needs_restart", keys=changed)

    @staticmethod
    def shaper_ip(addr: str, shaper: dict[str, Any]) -> ShapedIp:
        """A :class:`ShapedIp` from an address and a v2.0 ``shaper`` object (``class_id``, ``max_tx``, ``max_rx``)."""
        return ShapedIp.of(addr, shaper.get("class_id"), shaper.get("max_tx"), shaper.get("max_rx"))

    async def ips(self) -> list[ShapedIp]:
        return await active_ips(self.db, self.server_id)

    async def node_limits(self) -> tuple[int, int]:
        """``(max_tx, max_rx)``: the configured values, else this node's ``servers`` row, else v2.0's default."""
        tx, rx = self.max_tx, self.max_rx
        if tx is None or rx is None:
            row = await self.db.fetchone("SELECT max_tx, max_rx FROM servers WHERE server_id = %s",
                                         (self.server_id,))
            tx = tx if tx is not None else int(row["max_tx"]) if row else DEFAULT_NODE_RATE
            rx = rx if rx is not None else int(row["max_rx"]) if row else DEFAULT_NODE_RATE
        return tx, rx

    async def shaper_init(self, max_tx: int | None = None, max_rx: int | None = None) -> int:
        tx, rx = await self.node_limits()
        return await self.shaper.init(tx if max_tx is None else max_tx, rx if max_rx is None else max_rx,
                                      await self.ips())

    async def init(self, resources: Iterable[str] = RESOURCES) -> dict[str, Any]:
        """v2.0 ``init``: ``{"fw": {4: n or None, 6: ...}, "shaper": True}`` for the requested resources."""
        res = _resources(resources)
        out: dict[str, Any] = {}
        if "fw" in res:
            out["fw"] = await self.firewall.init(ip.addr for ip in await self.ips())
        if "shaper" in res:
            await self.shaper_init()
            out["shaper"] = True
        return out

    async def flush(self, resources: Iterable[str] = RESOURCES) -> dict[str, Any]:
        """v2.0 ``flush``: fw collects and stores the traffic, then removes the chains; shaper drops the roots."""
        res = _resources(resources)
        out: dict[str, Any] = {}
        if "fw" in res:
            out["fw"] = await self.firewall.flush()
            await self.reporter.save_pending()
        if "shaper" in res:
            await self.shaper.flush()
            out["shaper"] = True
        return out

    async def reinit(self, resources: Iterable[str] = RESOURCES) -> dict[str, Any]:
        """v2.0 ``reinit``; for fw without losing a count, keeping only the addresses active on this node."""
        res = _resources(resources)
        out: dict[str, Any] = {}
        if "fw" in res:
            out["fw"] = await self.firewall.reinit(ip.addr for ip in await self.ips())
            await self.reporter.save_pending()
        if "shaper" in res:
            await self.shaper.flush()
            await self.shaper_init()
            out["shaper"] = True
        return out


def _resources(resources: Iterable[str]) -> set[str]:
    res = set(resources)
    if "all" in res:
        res = set(RESOURCES)
    unknown = res - set(RESOURCES)
    if unknown or not res:
        raise AgentError(f"unknown resources {sorted(unknown)}; expected fw, shaper or all")
    return res


_NETWORKS: weakref.WeakKeyDictionary[HandlerContext, tuple[Any, Network]] = weakref.WeakKeyDictionary()


def install(ctx: HandlerContext, network: Network) -> None:
    """Make ``network`` the one that handlers running with ``ctx`` use."""
    _NETWORKS[ctx] = (ctx.config, network)


def network_for(ctx: HandlerContext) -> Network:
    """The context's :class:`Network` (built from its config on first use, rebuilt after a config reload)."""
    entry = _NETWORKS.get(ctx)
    if entry is None or entry[0] is not ctx.config:
        entry = (ctx.config, Network.from_config(ctx.config, ctx.db))
        _NETWORKS[ctx] = entry
    return entry[1]
