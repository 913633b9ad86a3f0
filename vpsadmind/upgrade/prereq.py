"""Step ``prerequisites``: the daemon's config, database access (and this node's row and pools), a working
``zfs``, the transfer tool of the configured protocol, and ``mounts_dir`` (created when missing)."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Final

from vpsadmind.db import Database
from vpsadmind.upgrade.context import Context, PoolRow
from vpsadmind.upgrade.report import Row, Runner, Status
from vpsadmind.zfs.errors import ZfsError

__all__ = ["Prerequisites"]

#: What the configured transfer protocol runs besides zfs (contract 7.3: v2.0 sends through netcat).
_TRANSFER_TOOLS: Final = {"nc": ("nc",), "vpsadmind": ()}


class Prerequisites:
    name = "prerequisites"
    title = "config, database, zfs, transfer tool, mounts_dir"

    def __init__(self) -> None:
        #: Set by :meth:`inspect`: the other steps cannot run (no database, no zfs, unknown node).
        self.blocking = False

    async def inspect(self, ctx: Context) -> list[Row]:
        cfg = ctx.cfg
        rows = [Row("config", f"{cfg.path or '(built in)'}: server_id {cfg.server_id}")]
        rows += [Row("config", f"warning: {w}", status=Status.NOTE) for w in cfg.warnings]
        db_row = await self._database(ctx)
        zfs_row = await self._zfs(ctx)
        self.blocking = Status.HUMAN in (db_row.status, zfs_row.status)
        rows += [db_row, zfs_row, *self._transfer_tools(ctx), self._mounts_dir(ctx)]
        if not self.blocking:
            rows.append(Row("pools", ", ".join(f"{p.filesystem} ({p.role_name})" for p in ctx.pools)
                            or "this node has no pools in the database", status=Status.NOTE))
        return rows

    async def _database(self, ctx: Context) -> Row:
        where = ", ".join(ctx.cfg.db.hosts) + f" database {ctx.cfg.db.name}"
        try:
            if ctx.db is None:
                ctx.db = Database(ctx.cfg.db)
            server = await ctx.db.fetchone(
                "SELECT server_id, server_name, server_type, server_ip4 FROM servers WHERE server_id = %s",
                (ctx.server_id,))
            pools = await ctx.db.fetchall(
                "SELECT id, label, filesystem, role FROM pools WHERE node_id = %s ORDER BY id", (ctx.server_id,))
        except Exception as exc:  # unreachable (AgentError) or refused by the server (pymysql's own errors)
            return Row("database", f"{where}: {type(exc).__name__}: {exc}", "fix db access in the config",
                       Status.HUMAN)
        if server is None:
            return Row("database", f"{where}: no servers row with server_id {ctx.server_id}",
                       "register the node in vpsAdmin or fix vpsadmin.server_id", Status.HUMAN)
        ctx.server = server
        ctx.pools = [PoolRow(int(p["id"]), str(p["label"]), str(p["filesystem"]), int(p["role"])) for p in pools]
        return Row("database", f"{where}: node {server['server_name']} ({server['server_type']}, "
                               f"{server['server_ip4']})")

    async def _zfs(self, ctx: Context) -> Row:
        try:
            caps = await ctx.zfs.probe()
        except (ZfsError, OSError) as exc:
            return Row("zfs", f"{ctx.zfs.zfs_bin}: {exc}", "install zfs or start its daemon", Status.HUMAN)
        return Row("zfs", f"{ctx.zfs.zfs_bin}: {'zfs-fuse' if caps.fuse else 'OpenZFS'}")

    def _transfer_tools(self, ctx: Context) -> list[Row]:
        protocol = ctx.cfg.transfer.protocol
        rows: list[Row] = []
        for tool in _TRANSFER_TOOLS.get(protocol, ()):
            binary = ctx.cfg.bin.get(tool, tool)
            found = shutil.which(binary)
            if found is None:
                rows.append(Row(f"transfer tool {tool}", f"protocol {protocol}: {binary} not found",
                                f"install {tool} (v2.0 transfers use netcat)", Status.HUMAN))
            else:
                rows.append(Row(f"transfer tool {tool}", f"protocol {protocol}: {found}"))
        if not rows:
            rows.append(Row("transfer tool", f"protocol {protocol}: built in, needs only zfs"))
        return rows

    def _mounts_dir(self, ctx: Context) -> Row:
        path = ctx.cfg.mounts_dir
        if os.path.isdir(path):
            return Row("mounts_dir", f"{path}: exists")
        if os.path.lexists(path):
            return Row("mounts_dir", f"{path}: exists but is not a directory", "remove or fix it", Status.HUMAN)

        async def run(runner: Runner) -> str | None:
            await runner.op(f"mkdir -p {path}", lambda: asyncio.to_thread(os.makedirs, path, 0o755, True))
            return None

        return Row("mounts_dir", f"{path}: missing", f"mkdir -p {path}", Status.TODO, run)
