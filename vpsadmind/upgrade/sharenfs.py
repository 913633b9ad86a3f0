"""Step ``sharenfs``: in v2.0 any node may NFS-mount any other node's datasets, so every pool's ``sharenfs``
(and every local ``sharenfs`` below it) must let in the address of every node in ``servers`` (mailers
excepted).

The value is read as share options (``rw=@10.0.0.0/24:@10.0.1.5/32,no_root_squash``): ``on``, or options
without any ``rw=``/``ro=`` host list, share with everybody; otherwise a node is let in when an entry of an
``rw=`` list (``*``, ``@net/len``, ``@addr``, ``addr``) covers its ``server_ip4``. Host names are not resolved.
A missing node is added as ``@<ip>/32`` to the first ``rw=`` list (or a new one). A pool that is not shared
at all (``off``) gets ``rw=<every node>,<options>`` only when ``--sharenfs-options`` says which options: the
export options are the administrator's choice; without it the pool is left to a human.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from vpsadmind.upgrade.context import Context, PoolRow, share_tolerant
from vpsadmind.upgrade.report import Row, RowRun, Runner, Status
from vpsadmind.zfs.errors import DatasetNotFound

__all__ = ["Node", "ShareNfs", "allows", "wanted_value", "with_clients"]

_OFF = ("", "-", "off")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    address: ipaddress.IPv4Address


def _matches(spec: str, address: ipaddress.IPv4Address) -> bool:
    spec = spec.strip()
    if spec == "*":
        return True
    try:
        if spec.startswith("@"):
            return address in ipaddress.ip_network(spec[1:], strict=False)
        return ipaddress.ip_address(spec) == address
    except ValueError:
        return False  # a host name or a netgroup: not resolved here


def allows(value: str, address: ipaddress.IPv4Address) -> bool:
    """Whether the share options ``value`` let ``address`` mount read-write."""
    value = value.strip()
    if value in _OFF:
        return False
    if value == "on":
        return True
    options = [opt.strip() for opt in value.split(",")]
    rw_lists = [opt[3:] for opt in options if opt.startswith("rw=")]
    if not rw_lists:
        return not any(opt.startswith("ro=") for opt in options)  # no host list at all: everybody
    return any(_matches(spec, address) for hosts in rw_lists for spec in hosts.split(":"))


def with_clients(value: str, addresses: list[ipaddress.IPv4Address]) -> str:
    """``value`` with ``@<ip>/32`` of each address appended to its first ``rw=`` list (or a new one)."""
    add = ":".join(f"@{a}/32" for a in addresses)
    options = value.strip().split(",")
    for i, opt in enumerate(options):
        if opt.strip().startswith("rw="):
            options[i] = f"{opt.rstrip(':')}:{add}"
            return ",".join(options)
    return ",".join([f"rw={add}", *options])


class ShareNfs:
    name = "sharenfs"
    title = "every pool's sharenfs lets in every node"

    async def inspect(self, ctx: Context) -> list[Row]:
        nodes, rows = await self._nodes(ctx)
        for pool in ctx.pools:
            try:
                props = await ctx.zfs.get(pool.filesystem, ["sharenfs"], recursive=True)
            except DatasetNotFound:
                rows.append(Row(pool.filesystem, "the pool's filesystem does not exist", "fix pools.filesystem",
                                Status.HUMAN))
                continue
            for name in sorted(n for n in props if "@" not in n):
                prop = props[name]["sharenfs"]
                if name == pool.filesystem or prop.source == "local":
                    rows.append(self._row(ctx, pool, name, prop.value, nodes))
        return rows

    async def _nodes(self, ctx: Context) -> tuple[list[Node], list[Row]]:
        servers = await ctx.require_db().fetchall(
            "SELECT server_id, server_name, server_ip4 FROM servers WHERE server_type <> 'mailer' "
            "ORDER BY server_id")
        nodes: list[Node] = []
        rows: list[Row] = []
        for s in servers:
            try:
                nodes.append(Node(str(s["server_name"]), ipaddress.IPv4Address(str(s["server_ip4"]).strip())))
            except ValueError:
                rows.append(Row(f"node {s['server_name']}", f"server_ip4 {s['server_ip4']!r} is not an IPv4 address",
                                "fix servers.server_ip4", Status.HUMAN))
        return nodes, rows

    def _row(self, ctx: Context, pool: PoolRow, name: str, value: str, nodes: list[Node]) -> Row:
        if value.strip() in _OFF:
            if name != pool.filesystem:
                return Row(name, "sharenfs=off set locally: not shared", status=Status.NOTE)
            options = ctx.options.sharenfs_options
            if options is None:
                return Row(name, f"sharenfs={value}: not shared", "choose the export options: "
                           "--sharenfs-options OPTS (e.g. no_root_squash)", Status.HUMAN)
            return Row(name, f"sharenfs={value}: not shared", f"share with all {len(nodes)} nodes, options "
                       f"{options or '(none)'}", Status.TODO, _fixer(ctx, name, nodes))
        missing = [n for n in nodes if not allows(value, n.address)]
        if not missing:
            return Row(name, f"sharenfs={value}", f"lets in all {len(nodes)} nodes" if nodes else "")
        return Row(name, f"sharenfs={value}", "let in " + ", ".join(f"{n.name} ({n.address})" for n in missing),
                   Status.TODO, _fixer(ctx, name, nodes))


def wanted_value(current: str, addresses: list[ipaddress.IPv4Address], options: str | None) -> str | None:
    """The sharenfs that lets every address in, None when nothing is missing (or ``off`` without options)."""
    if current.strip() in _OFF:
        if options is None or not addresses:
            return None
        hosts = ":".join(f"@{a}/32" for a in addresses)
        return f"rw={hosts}" + (f",{options}" if options else "")
    missing = [a for a in addresses if not allows(current, a)]
    return with_clients(current, missing) if missing else None


def _fixer(ctx: Context, name: str, nodes: list[Node]) -> RowRun:
    async def run(runner: Runner) -> str | None:
        current = (await ctx.zfs.get(name, ["sharenfs"]))[name]["sharenfs"].value
        wanted = wanted_value(current, [n.address for n in nodes], ctx.options.sharenfs_options)
        if wanted is None:
            return "nothing missing any more"

        async def stored() -> bool:
            return (await ctx.zfs.get(name, ["sharenfs"]))[name]["sharenfs"].value == wanted

        return await runner.op(f"zfs set sharenfs={wanted} {name}",
                               lambda: share_tolerant(lambda: ctx.zfs.set(name, {"sharenfs": wanted}), stored))
    return run
