"""Step ``firewall``: v2.0 keeps accounting rules only for active addresses, so the rules a v1.22 daemon left
behind are rebuilt once with ``reinit fw`` through the running daemon's control socket (what
``vpsadmindctl reinit fw`` sends). Nothing on the node shows that this was done, so it is recorded in the
upgrade state file. A daemon that does not run is reported (pending), not an error: start it and run the
step again."""

from __future__ import annotations

import datetime as dt

from vpsadmind.control.client import ConnectError, ProtocolError, acall
from vpsadmind.upgrade.context import Context
from vpsadmind.upgrade.report import Deferred, Row, RowRun, Runner, Status, UpgradeError

__all__ = ["Firewall", "STATE_KEY"]

STATE_KEY = "firewall_reinit"
_TIMEOUT = 300.0  # a reinit rebuilds every rule: give it time


class Firewall:
    name = "firewall"
    title = "reinit fw through the running daemon"

    async def inspect(self, ctx: Context) -> list[Row]:
        socket = ctx.cfg.remote_socket
        done = ctx.state.load().get(STATE_KEY)
        if done:
            return [Row("firewall", f"reinitialized {done}")]
        try:
            reply = await acall("ping", socket_path=socket, timeout=10.0)
        except (ConnectError, ProtocolError) as exc:
            return [Row("firewall", f"daemon not running ({socket}: {exc})",
                        "start vpsadmind, then run this step again", Status.PENDING)]
        if not reply.ok:
            return [Row("firewall", f"daemon at {socket} answers: {reply.error_message}",
                        "reinit fw", Status.TODO, self._run(ctx))]
        return [Row("firewall", f"daemon running ({socket})", "reinit fw", Status.TODO, self._run(ctx))]

    def _run(self, ctx: Context) -> RowRun:
        async def run(runner: Runner) -> str | None:
            try:
                reply = await runner.op("reinit fw", lambda: acall(
                    "reinit", {"resources": ["fw"]}, socket_path=ctx.cfg.remote_socket, timeout=_TIMEOUT))
            except ConnectError as exc:
                raise Deferred(f"daemon not running any more: {exc.reason}") from exc
            if not reply.ok:
                raise UpgradeError(f"reinit fw: {reply.error_message}")
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            ctx.state.update(**{STATE_KEY: stamp})
            return f"rules: {reply.response}"
        return run
