"""``vpsadmindctl``: control a running vpsadmind over its UNIX socket (contract 6.2).

Usage as v2.0's ctl: ``vpsadmindctl [global options] <command> [command options]``; the global options
(``-p/--parsable``, ``-s/--socket``) may also follow the command, as v2.0 accepted them anywhere.

Exit status: 0 on success; 1 with ``Command error: ...`` on stderr when the daemon answers with a failed reply
or cannot be reached (``Command error: Cannot connect to vpsAdmind``); 1 for invalid usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import yaml

from vpsadmind import __version__
from vpsadmind.control.client import ConnectError, Reply, call
from vpsadmind.control.protocol import DEFAULT_SOCKET, ControlError

__all__ = ["main", "build_parser", "format_duration"]

EXIT_NAMES = {100: "stop", 150: "restart", 200: "update"}
NETWORK_RESOURCES = ("all", "fw", "shaper")


def format_duration(seconds: float) -> str:
    """v2.0's ``format_duration``: ``HH:MM:SS``, or ``N days, HH:MM:SS``."""
    interval = max(0, int(seconds))
    d, rest = divmod(interval, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d > 0:
        return f"{d} days, {h:02d}:{m:02d}:{s:02d}"
    return f"{h:02d}:{m:02d}:{s:02d}"


# ---- argument parsing ---------------------------------------------------------------------------------------


def _globals_parser() -> argparse.ArgumentParser:
    """Global options, accepted before and after the command (defaults suppressed: see :func:`main`)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument("-p", "--parsable", action="store_true", default=argparse.SUPPRESS,
                   help="print the daemon's response as JSON, for scripts")
    g.add_argument("-s", "--socket", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"control socket (default {DEFAULT_SOCKET})")
    return p


def build_parser() -> argparse.ArgumentParser:
    glob = _globals_parser()
    p = argparse.ArgumentParser(prog="vpsadmindctl", parents=[glob],
                                description="Control a running vpsadmind over its UNIX socket.")
    p.add_argument("-v", "--version", action="version", version=__version__, help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="<command>")

    st = sub.add_parser("status", parents=[glob], help="show vpsadmind's status")
    st.add_argument("-w", "--workers", action="store_true", help="list running transactions")
    st.add_argument("-c", "--consoles", action="store_true", help="list exported consoles")
    st.add_argument("-m", "--mounts", action="store_true", help="list delayed mounts")
    st.add_argument("-t", "--subtasks", action="store_true", help="list subprocesses blocking chains")
    st.add_argument("-T", "--transfers", action="store_true",
                    help="list running transfers and downloads with their progress")
    st.add_argument("-H", "--no-header", dest="header", action="store_false", help="suppress the header row")

    sub.add_parser("ping", parents=[glob], help="check that vpsadmind answers")
    for name, what in (("stop", "stop"), ("restart", "restart")):
        c = sub.add_parser(name, parents=[glob], help=f"safely {what} vpsadmind (running transactions finish)")
        c.add_argument("-f", "--force", action="store_true",
                       help=f"cancel the transactions being processed and {what} at once")
    pa = sub.add_parser("pause", parents=[glob], help="pause execution of queued transactions")
    pa.add_argument("id", nargs="?", metavar="ID", help="pause after this transaction has finished")
    sub.add_parser("resume", parents=[glob], help="resume execution (also cancels a pending stop/restart/update)")
    sub.add_parser("reload", parents=[glob], help="re-read the configuration file")
    for name, what in (("init", "set up"), ("flush", "remove"), ("reinit", "rebuild")):
        c = sub.add_parser(name, parents=[glob], help=f"{what} the firewall accounting and/or the shaper")
        c.add_argument("resources", nargs="+", choices=NETWORK_RESOURCES, metavar="all|fw|shaper",
                       help="fw (accounting rules), shaper (tc classes) or all")

    get = sub.add_parser("get", parents=[glob], help="show the configuration or the waiting transactions")
    res = get.add_subparsers(dest="resource", metavar="<resource>")
    cfg = res.add_parser("config", parents=[glob], help="the configuration in use (secrets masked)")
    cfg.add_argument("key", nargs="?", metavar="KEY.PATH", help="only this key, e.g. vpsadmin.queues")
    q = res.add_parser("queue", parents=[glob], help="transactions waiting for this node")
    q.add_argument("-l", "--limit", type=int, default=50, metavar="N", help="at most N transactions (default 50)")
    q.add_argument("-H", "--no-header", dest="header", action="store_false", help="suppress the header row")
    _add_operations(sub, glob)
    return p


def _add_operations(sub: Any, glob: argparse.ArgumentParser) -> None:
    """kill, refresh, update, set and chain."""
    k = sub.add_parser("kill", parents=[glob], help="kill running transactions (saved as failed 'Killed'; a "
                       "reversible one rolls itself back)")
    k.add_argument("-a", "--all", action="store_true", help="kill every running transaction")
    k.add_argument("-t", "--type", action="store_true", help="the arguments are transaction types, not ids")
    k.add_argument("ids", nargs="*", metavar="ID|TYPE")
    sub.add_parser("refresh", parents=[glob], help="report node status and storage usage now")
    up = sub.add_parser("update", parents=[glob], help="restart into a newly installed vpsadmind (exit 200; "
                        "running transactions finish)")
    up.add_argument("-f", "--force", action="store_true", help="cancel the transactions being processed and "
                    "update at once")
    st = sub.add_parser("set", parents=[glob], help="change the running configuration (not saved)")
    res = st.add_subparsers(dest="resource", metavar="<resource>")
    cfg = res.add_parser("config", parents=[glob], help="set KEY.PATH=VALUE ... (reload goes back to the file)")
    cfg.add_argument("pairs", nargs="+", metavar="KEY.PATH=VALUE")
    ch = sub.add_parser("chain", parents=[glob], help="list or run a chain's confirmations, release its locks "
                        "and ports", description="confirmations [T...] | confirm [T...] | release [locks|ports]")
    ch.add_argument("chain_id", metavar="CHAIN")
    ch.add_argument("subcommand", choices=("confirmations", "confirm", "release"))
    ch.add_argument("args", nargs="*", metavar="TRANSACTION|locks|ports")
    ch.add_argument("--direction", choices=("execute", "rollback"), default="execute",
                    help="confirm: the direction to apply them in (default execute)")
    ch.add_argument("--success", action=argparse.BooleanOptionalAction, default=True,
                    help="confirm: as if the transactions succeeded (default) or failed")


# ---- output -------------------------------------------------------------------------------------------------


class Output:
    def __init__(self, args: argparse.Namespace, out: TextIO, reply: Reply) -> None:
        self.args = args
        self.out = out
        self.reply = reply
        self.parsable: bool = getattr(args, "parsable", False)

    def line(self, text: str = "") -> None:
        self.out.write(text.rstrip() + "\n")

    def json(self, value: Any) -> None:
        self.out.write(json.dumps(value, sort_keys=True) + "\n")


def _state_text(state: dict[str, Any]) -> str:
    pause, status = state.get("pause"), state.get("status") or 0
    if state.get("run"):
        if pause not in (None, False):
            return f"running, going to pause after {pause}"
        return "running"
    if not status:
        return "paused"
    return f"finishing, going to {EXIT_NAMES.get(status, f'exit {status}')}"


def _count(mapping: Any) -> int:
    return sum(len(v) for v in mapping.values()) if isinstance(mapping, dict) else 0


def _status_summary(o: Output, res: dict[str, Any], now: float) -> None:
    start = res.get("start_time")
    size = res.get("queue_size")
    o.line(f"   Version: {o.reply.version or '-'}")
    o.line(f"     State: {_state_text(res.get('state') or {})}")
    o.line(f"    Uptime: {format_duration(now - start) if start is not None else '-'}")
    o.line(f"  Consoles: {len(res.get('consoles') or {}) if res.get('export_console') else 'disabled'}")
    o.line(f"  Subtasks: {_count(res.get('subprocesses'))}")
    o.line(f"    Mounts: {_count(res.get('delayed_mounts'))}")
    o.line(f" Transfers: {len(res.get('transfers') or [])}")
    o.line(f"Queue size: {'-' if size is None else size}")
    o.line("    Queues:")
    for name, q in (res.get("queues") or {}).items():
        used = q.get("used", len(q.get("workers") or {}))
        opens = ""
        if not q.get("started", True):
            left = q.get("opens_in")
            if left is None and start is not None:
                left = start + q.get("start_delay", 0) - now
            opens = f"opens in {format_duration(left or 0)}"
        o.line(f"    {name:>10}  {used} / {q.get('threads')} (+{q.get('urgent')}) {opens}")


def _mib(n: Any) -> str:
    return "-" if not isinstance(n, int | float) else f"{n / 1048576:.1f} MiB"


def _progress_text(t: dict[str, Any]) -> str:
    """``120.0 MiB / 256.0 MiB, 300.1 MiB/s, 0.4 s left`` for one entry of status' ``transfers``."""
    done = _mib(t.get("bytes"))
    total = f" / {_mib(t['total'])}" if t.get("total") else ""
    eta = t.get("eta")
    left = f", {format_duration(eta)} left" if isinstance(eta, int | float) else ""
    return f"{done}{total}, {_mib(t.get('rate'))}/s{left}"


def _status_transfers(o: Output, res: dict[str, Any]) -> None:
    fmt = "{:<9} {:<8} {:<8} {:<44} {}"
    if o.args.header:
        o.line(fmt.format("KIND", "CHAIN", "TRANS", "PROGRESS", "WHAT"))
    for t in res.get("transfers") or []:
        o.line(fmt.format(t.get("kind", "-"), t.get("chain", "-"), t.get("transaction", "-"), _progress_text(t),
                          t.get("label", "")))


def _status_workers(o: Output, res: dict[str, Any], now: float) -> None:
    fmt = "{:<10} {:<8} {:<8} {:<20.19} {:<6} {:<9} {:<12} {:<8} {}"
    if o.args.header:
        o.line(fmt.format("QUEUE", "CHAIN", "TRANS", "HANDLER", "TYPE", "DIRECTION", "TIME", "PID", "STEP"))
    streams = {t.get("transaction"): t for t in res.get("transfers") or []}
    for name, q in (res.get("queues") or {}).items():
        workers = q.get("workers") or {}
        for chain in sorted(workers, key=lambda c: int(c) if str(c).isdigit() else 0):
            w = workers[chain]
            start = w.get("start")
            stream = streams.get(w.get("id"))
            step = _progress_text(stream) if stream else (w.get("step") or "-")
            o.line(fmt.format(name, chain, w.get("id"), str(w.get("handler")), w.get("type"),
                              w.get("direction", "-"), format_duration(now - start) if start else "-",
                              w.get("pid") or "-", step))


def _status_lists(o: Output, res: dict[str, Any], now: float) -> None:
    a = o.args
    if a.consoles:
        if a.header:
            o.line(f"{'VEID':<5} LISTENERS")
        for veid, n in sorted((res.get("consoles") or {}).items()):
            o.line(f"{veid:<5} {n}")
    if a.subtasks:
        if a.header:
            o.line(f"{'CHAIN':<10} PID")
        for chain, pids in sorted((res.get("subprocesses") or {}).items()):
            for pid in pids:
                o.line(f"{chain:<10} {pid if pid is not None else '-'}")
    if a.mounts:
        if a.header:
            o.line(f"{'VEID':<5} {'ID':<6} {'TYPE':<16} {'TIME':<18} DST")
        for veid, mounts in sorted((res.get("delayed_mounts") or {}).items()):
            for m in mounts:
                reg = m.get("registered_at")
                o.line(f"{veid:<5} {m.get('id', '-')!s:<6} {m.get('type', '-')!s:<16} "
                       f"{format_duration(now - reg) if reg else '-':<18} {m.get('dst', '-')}")


def _print_status(o: Output, res: Any) -> None:
    if o.parsable:
        o.json(res)
        return
    now = time.time()
    a = o.args
    if a.workers:
        _status_workers(o, res, now)
    _status_lists(o, res, now)
    if a.transfers:
        _status_transfers(o, res)
    if not (a.workers or a.consoles or a.subtasks or a.mounts or a.transfers):
        _status_summary(o, res, now)


def _lookup(config: Any, path: str) -> Any:
    node = config
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(path)
    return node


def _print_config(o: Output, res: Any) -> None:
    config = res.get("config") if isinstance(res, dict) else None
    value = config
    if o.args.key:
        try:
            value = _lookup(config, o.args.key)
        except KeyError as exc:
            raise ControlError(f"no such key in the configuration: {o.args.key}") from exc
    if o.parsable:
        o.json(value)
    elif isinstance(value, dict | list):
        o.out.write(yaml.safe_dump(value, default_flow_style=False, sort_keys=False, allow_unicode=True))
    else:
        o.line("null" if value is None else str(value))


def _print_queue(o: Output, res: Any) -> None:
    items = res.get("queue") if isinstance(res, dict) else None
    items = items or []
    if o.parsable:
        o.json(items)
        return
    fmt = "{:<8} {:<8} {:<5} {:<6} {:<9} {:<9} {:<6} {:<4} {:<6} {:<6} {:<8} {}"
    if o.args.header:
        o.line(fmt.format("ID", "CHAIN", "STATE", "TYPE", "DIRECTION", "QUEUE", "URGENT", "PRIO", "USER", "VPS",
                          "DEPENDS", "CREATED"))
    for t in items:
        created = t.get("time")
        when = dt.datetime.fromtimestamp(created).strftime("%Y-%m-%d %H:%M:%S") if created else "-"
        o.line(fmt.format(t.get("id"), t.get("chain"), t.get("state"), t.get("type"), t.get("direction", "-"),
                          t.get("queue", "-"), "yes" if t.get("urgent") else "no", t.get("priority"),
                          t.get("m_id") or "-", t.get("vps_id") or "-", t.get("depends_on") or "-", when))


def _printer(message: str | Callable[[argparse.Namespace], str]) -> Callable[[Output, Any], None]:
    def show(o: Output, res: Any) -> None:
        if o.parsable:
            if res is not None:
                o.json(res)
            return
        o.line(message if isinstance(message, str) else message(o.args))

    return show


def _network_printer(done: str) -> Callable[[Output, Any], None]:
    """v2.0's output of init/flush/reinit: ``Initialized`` and ``Firewall  ...  ok`` per resource done."""

    def show(o: Output, res: Any) -> None:
        if o.parsable:
            o.json(res)
            return
        o.line(done)
        res = res if isinstance(res, dict) else {}
        for key, label in (("fw", "Firewall"), ("shaper", "Shaper")):
            if key in res:
                o.line(f"{label}  ...  ok")

    return show


def _print_ping(o: Output, res: Any) -> None:
    if o.parsable:
        o.json(res)
    else:
        o.line(str(res.get("pong", res)) if isinstance(res, dict) else str(res))


def _print_kill(o: Output, res: Any) -> None:
    """v2.0's: the ids or types nothing was killed for, then ``Killed N transactions``."""
    if o.parsable:
        o.json(res)
        return
    msgs = res.get("msgs") or {}
    for key, msg in msgs.items():
        o.line(f"{key}: {msg}")
    if msgs:
        o.line()
    o.line(f"Killed {res.get('killed', 0)} transactions")


def _print_refresh(o: Output, res: Any) -> None:
    if o.parsable:
        o.json(res)
    else:
        o.line("Refreshed " + (", ".join(res.get("refreshed") or []) or "nothing"))


def _pairs(value: Any) -> str:
    """v2.0's ``format_hash``: ``k=v,k=v``."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


def _print_confirmations(o: Output, res: Any) -> None:
    if o.parsable:
        o.json(res)
        return
    for t_id, items in (res.get("transactions") or {}).items():
        o.line(f"TRANSACTION #{t_id}")
        o.line(f"{'ID':<6} {'TYPE':<13} {'DONE':<4} {'OBJECT':<20} {'ID':<12} ATTRS")
        for c in items:
            o.line(f"{c.get('id', '-')!s:<6} {c.get('type', '-')!s:<13} {1 if c.get('done') else 0:<4} "
                   f"{c.get('class_name', '-')!s:<20} {_pairs(c.get('row_pks')):<12} {_pairs(c.get('attr_changes'))}")
        o.line("-" * 80)


def _print_release(o: Output, res: Any) -> None:
    if o.parsable:
        o.json(res)
        return
    if "locks" in res:
        o.line("RESOURCE LOCKS")
        o.line(f"{'RESOURCE':<30} {'ROW_ID':<10} LOCKED_AT")
        for lock in res["locks"]:
            o.line(f"{lock.get('resource')!s:<30} {lock.get('row_id')!s:<10} {lock.get('created_at') or '-'}")
        o.line(f"Released {len(res['locks'])} locks")
    if "ports" in res:
        o.line("RESERVED PORTS")
        o.line(f"{'NODE':<20} {'ADDR':<20} PORT")
        for port in res["ports"]:
            node = port.get("node_name") or port.get("node_id")
            o.line(f"{node!s:<20} {port.get('addr') or '-'!s:<20} {port.get('port')}")
        o.line(f"Released {len(res['ports'])} ports")


PRINTERS: dict[str, Callable[[Output, Any], None]] = {
    "status": _print_status,
    "ping": _print_ping,
    "stop": _printer("Stop scheduled"),
    "restart": _printer("Restart scheduled"),
    "pause": _printer(lambda a: "Pause scheduled" if a.id is not None else "Paused"),
    "resume": _printer("Resumed"),
    "reload": _printer("Configuration reloaded"),
    "init": _network_printer("Initialized"),
    "flush": _network_printer("Flushed"),
    "reinit": _network_printer("Reinitialized"),
    "get config": _print_config,
    "get queue": _print_queue,
    "kill": _print_kill,
    "refresh": _print_refresh,
    "update": _printer("Update scheduled"),
    "set config": _printer("Config changed"),
    "chain confirmations": _print_confirmations,
    "chain confirm": _print_confirmations,
    "chain release": _print_release,
}


# ---- main ---------------------------------------------------------------------------------------------------


class UsageError(Exception):
    pass


_FLOAT = re.compile(r"^-?\d+\.\d+$")


def _scalar(text: str) -> Any:
    """A ``set config`` value: digits are an integer (v2.0), ``true``/``false``/``null`` and decimal numbers
    their JSON values, anything else the string itself."""
    if text.isdigit():
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return {"true": True, "false": False, "null": None}.get(text, text)


def _set_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    if args.resource != "config":
        raise UsageError("set: specify a resource: config")
    patches: list[dict[str, Any]] = []
    for pair in args.pairs:
        key, eq, value = pair.partition("=")
        parts = key.split(".")
        if not eq or not all(parts):
            raise UsageError(f"set config: expected KEY.PATH=VALUE, got {pair!r}")
        patch: dict[str, Any] = {parts[-1]: _scalar(value)}
        for part in reversed(parts[:-1]):
            patch = {part: patch}
        patches.append(patch)
    return "set config", "set", {"resource": "config", "config": patches}


def _ids(values: list[str], what: str) -> list[int]:
    bad = [v for v in values if not v.isdigit()]
    if bad:
        raise UsageError(f"invalid {what}: {', '.join(bad)}")
    return [int(v) for v in values]


def _kill_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    if args.all:
        return "kill", "kill", {"transactions": "all"}
    if not args.ids:
        raise UsageError(f"kill: missing transaction {'type' if args.type else 'id'}(s)")
    if args.type:
        return "kill", "kill", {"types": _ids(args.ids, "transaction type")}
    return "kill", "kill", {"transactions": _ids(args.ids, "transaction id")}


def _chain_request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    if not args.chain_id.isdigit():
        raise UsageError(f"invalid chain id '{args.chain_id}'")
    sub: str = args.subcommand
    params: dict[str, Any] = {"chain": int(args.chain_id), "command": sub}
    if sub == "release":
        if len(args.args) > 1 or any(a not in ("locks", "ports") for a in args.args):
            raise UsageError("chain release: expected nothing, locks or ports")
        params.update(transactions=None, release=args.args or ["locks", "ports"])
    else:
        params["transactions"] = _ids(args.args, "transaction id") or None
        if sub == "confirm":
            params.update(direction=args.direction, success=bool(args.success))
    return f"chain {sub}", "chain", params


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(printer key, remote command, params) for the parsed arguments."""
    cmd: str = args.command
    if cmd in ("stop", "restart", "update"):
        return cmd, cmd, {"force": bool(args.force)}
    if cmd == "kill":
        return _kill_request(args)
    if cmd == "set":
        return _set_request(args)
    if cmd == "chain":
        return _chain_request(args)
    if cmd == "pause":
        if args.id is not None and not args.id.isdigit():
            raise UsageError("pause: invalid transaction id")
        return cmd, cmd, {"t_id": int(args.id) if args.id is not None else None}
    if cmd in ("init", "flush", "reinit"):
        wanted: list[str] = args.resources
        # v2.0 sends both for "all"
        return cmd, cmd, {"resources": ["fw", "shaper"] if "all" in wanted else list(dict.fromkeys(wanted))}
    if cmd == "get":
        if args.resource is None:
            raise UsageError("get: specify a resource: config or queue")
        if args.resource == "queue":
            if args.limit < 1:
                raise UsageError("get queue: the limit must be a positive number")
            return "get queue", "get", {"resource": "queue", "limit": args.limit}
        return "get config", "get", {"resource": "config"}
    return cmd, cmd, {}


def _parse(argv: Sequence[str] | None, err: TextIO) -> argparse.Namespace | int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (argparse says 2; v2.0 exits 1)
        return 0 if exc.code in (0, None) else 1
    if args.command is None:
        err.write("No command specified\n")
        parser.print_help(err)
        return 1
    return args


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    args = _parse(argv, err)
    if isinstance(args, int):
        return args
    try:
        key, command, params = _request(args)
    except UsageError as exc:
        err.write(f"Command failed\n{exc}\n")
        return 1
    try:
        reply = call(command, params, socket_path=getattr(args, "socket", DEFAULT_SOCKET))
        if not reply.ok:
            err.write(f"Command error: {reply.error_message}\n")
            return 1
        PRINTERS[key](Output(args, out, reply), reply.response)
    except ConnectError as exc:
        err.write(f"Error occurred: {exc.reason}\n")
        err.write("Are you sure that vpsAdmind is running and configured properly?\n")
        err.write(f"Command error: {exc}\n")
        return 1
    except ControlError as exc:
        err.write(f"Command error: {exc}\n")
        return 1
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
