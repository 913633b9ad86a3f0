"""Shared pieces of the benchmarks: machine description, statistics, result rows, a throw-away database per
benchmark, real daemon processes with a precise readiness signal, and the API's side of MQTT.

Readiness. The daemons run at log level ``warning``, so the ``started`` log event that
:class:`vpsadmind.testing.process.DaemonProcess` waits for is never written. Instead each daemon gets its own
``NOTIFY_SOCKET`` and the benchmark waits for the systemd ``READY=1`` datagram, which the daemon sends right
after its engine started (node lock taken, journal replayed, interrupted work recovered). With MQTT on, the
benchmark then also waits until the daemon's bus has subscribed to its wake-up topic (see
:meth:`Api.wait_subscribed`), so that no wake-up of a measured chain can be lost to a start-up race.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import aiomqtt
import psutil
import yaml

from vpsadmind.testing.chains import ChainBuilder, FiredChain, register_node
from vpsadmind.testing.db import TestDbSettings, connect, create_database, drop_database
from vpsadmind.testing.mqtt import MosquittoServer
from vpsadmind.testing.process import DaemonProcess, write_config

__all__ = [
    "CHECK_INTERVAL", "DB_PREFIX", "NOOP", "TOPIC_PREFIX", "Api", "BenchContext", "BenchDaemon", "BenchResult",
    "Row", "bench_database", "chain_states", "daemons", "describe_machine", "fire_noop_chain", "fmt_ms",
    "load_average", "percentile", "private_broker", "summarize", "wait_chains_final",
]

NOOP: Final = 10001                       # Utils::NoOp
CHECK_INTERVAL: Final = 1.0               # v2.0's default
FINAL_STATES: Final = (2, 4, 5)           # done, failed, fatal
#: Topic prefix of the benchmark daemons: keeps their wake-ups apart from a demo or test on the shared broker.
TOPIC_PREFIX: Final = "vpsadmin-bench"
DB_PREFIX: Final = "vpsadmind_bench_"
#: The benchmark's own MQTT client disables Nagle's algorithm so that its own small writes are never held back
#: (see docs/benchmarks.md); the daemons and the broker run as configured.
NODELAY: Final = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# ----------------------------------------------------------------------------------------------------------
# Machine description


def _run(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mosquitto_version() -> str:
    binary = "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else "mosquitto"
    first = _run([binary, "-h"]).splitlines()
    return first[0].replace("mosquitto version", "").strip() if first else "unknown"


async def describe_machine(settings: TestDbSettings) -> dict[str, str]:
    """What the figures were measured on: kernel, CPU, memory, service and Python versions, date (UTC)."""
    conn = await connect(settings)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@innodb_buffer_pool_size")
            version, flush, pool = await cur.fetchone()
    finally:
        conn.close()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": _run(["uname", "-r"]),
        "cpu": _cpu_model(),
        "nproc": str(os.cpu_count() or 0),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "mariadb": f"{version} (innodb_flush_log_at_trx_commit={flush}, "
                   f"buffer pool {int(pool) // 2**20} MiB)",
        "mosquitto": _mosquitto_version(),
        "python": platform.python_version(),
        "load": load_average(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: the machine may be shared with other work."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------------------------------------
# Statistics and results


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, min, p50, p90, p99, max, mean of ``values``."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "mean": statistics.fmean(values)}


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass(slots=True)
class Row:
    """One printed figure: ``value`` in ``unit``; ``ok`` is None when the row has no target."""

    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    baseline: str = ""
    text: str = ""  # shown instead of the value when set (e.g. a range)

    def shown(self) -> str:
        if self.text:
            return self.text
        if self.unit == "ms":
            return f"{self.value:.1f} ms"
        if self.unit == "s":
            return f"{self.value:.2f} s"
        if self.unit in ("tx/s", "MB"):
            return f"{self.value:.1f} {self.unit}"
        if self.unit == "%":
            return f"{self.value:.2f} %"
        return f"{self.value:g} {self.unit}".strip()


@dataclass(slots=True)
class BenchResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, metric: str, value: float, unit: str, *, target: str = "", ok: bool | None = None,
            baseline: str = "", text: str = "") -> Row:
        row = Row(metric, value, unit, target, ok, baseline, text)
        self.rows.append(row)
        return row

    @property
    def missed(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "seconds": round(self.seconds, 1),
                "rows": [{"metric": r.metric, "value": r.value, "unit": r.unit, "target": r.target,
                          "ok": r.ok, "baseline": r.baseline, "text": r.text} for r in self.rows],
                "notes": self.notes, "data": self.data}


@dataclass(slots=True)
class BenchContext:
    settings: TestDbSettings
    workdir: Path
    quick: bool = False
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883


# ----------------------------------------------------------------------------------------------------------
# Database


@contextlib.asynccontextmanager
async def bench_database(ctx: BenchContext, name: str, nodes: Sequence[int] = (1,)) -> AsyncIterator[Any]:
    """Create ``vpsadmind_bench_<name>`` with the v2.0 schema and the ``nodes``; yield an autocommit
    connection to it; drop the database at the end."""
    database = DB_PREFIX + name
    await create_database(database, ctx.settings)
    conn = await connect(ctx.settings, database)
    try:
        for server_id in nodes:
            await register_node(conn, server_id, name=f"node{server_id}", ip4=f"127.0.1.{server_id}")
        yield conn
    finally:
        conn.close()
        await drop_database(database, ctx.settings)


async def fire_noop_chain(conn: Any, servers: Sequence[int], name: str = "bench") -> FiredChain:
    """Fire a linear chain of NoOp transactions, one per entry of ``servers``, as the API does."""
    builder = ChainBuilder(name)
    for server in servers:
        builder.append(NOOP, server=server)
    return await builder.fire(conn)


async def chain_states(conn: Any, chain_ids: Sequence[int]) -> dict[int, int]:
    if not chain_ids:
        return {}
    marks = ", ".join(["%s"] * len(chain_ids))
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT id, state FROM transaction_chains WHERE id IN ({marks})", list(chain_ids))
        return {int(i): int(s) for i, s in await cur.fetchall()}


async def wait_chains_final(conn: Any, total: int, *, timeout: float, interval: float = 0.02) -> float:
    """Poll until ``total`` chains are in a final state; returns the monotonic time it was first seen."""
    deadline = time.monotonic() + timeout
    while True:
        async with conn.cursor() as cur:
            await cur.execute("SELECT COUNT(*) FROM transaction_chains WHERE state IN (2, 4, 5)")
            (n,) = await cur.fetchone()
        now = time.monotonic()
        if int(n) >= total:
            return now
        if now > deadline:
            raise TimeoutError(f"only {n} of {total} chains final after {timeout} s")
        await asyncio.sleep(interval)


# ----------------------------------------------------------------------------------------------------------
# Daemon processes


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class BenchDaemon:
    """A real ``python -m vpsadmind.cli -c cfg`` process at log level warning, with v2.0's check interval."""

    def __init__(self, ctx: BenchContext, database: str, server_id: int, *, mqtt: bool,
                 check_interval: float = CHECK_INTERVAL, tag: str = "") -> None:
        self.ctx = ctx
        self.server_id = server_id
        self.mqtt = mqtt
        base = ctx.workdir / f"{database}-{server_id}{tag}"
        base.mkdir(parents=True, exist_ok=True)
        mqtt_cfg = {"enabled": mqtt, "host": ctx.mqtt_host, "port": ctx.mqtt_port, "topic_prefix": TOPIC_PREFIX,
                    "reconnect_interval": 0.5}
        cfg = write_config(base / "vpsadmind.yml", ctx.settings, database, server_id=server_id,
                           journal=base / "journal", check_interval=check_interval, mqtt=mqtt_cfg)
        _adjust_config(cfg, level="warning", control_socket=base / "control.sock")
        self.process = DaemonProcess(cfg, base / "vpsadmind.log")
        self._notify_path = base / "notify.sock"
        self.ready_at: float | None = None

    async def start(self, timeout: float = 30.0) -> float:
        """Start the process and wait for READY=1; returns the monotonic time READY arrived."""
        self._notify_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.bind(str(self._notify_path))
            with _env("NOTIFY_SOCKET", str(self._notify_path)):
                self.process.start(wait=False)
            self.ready_at = await self._await_ready(sock, timeout)
        finally:
            sock.close()
        return self.ready_at

    async def _await_ready(self, sock: socket.socket, timeout: float) -> float:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.2)
                if b"READY=1" in data:
                    return time.monotonic()
            if self.process.returncode is not None:
                break
        raise RuntimeError(f"vpsadmind (server {self.server_id}) not ready, rc={self.process.returncode}: "
                           f"{self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 2000) -> str:
        log = self.process.log
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not end in time."""
        if self.process.proc is None:
            return
        try:
            self.process.terminate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _adjust_config(path: Path, *, level: str, control_socket: Path) -> None:
    """write_config always writes ``log.level: info`` and leaves the control socket at its default
    ``/var/run/vpsadmind.sock``, shared by every daemon of the machine; the benchmarks run at ``level`` with a
    control socket of their own."""
    cfg = yaml.safe_load(path.read_text())
    cfg["log"] = {"level": level, "format": "json"}
    cfg["remote"] = {"socket": str(control_socket)}
    path.write_text(yaml.safe_dump(cfg))


@contextlib.asynccontextmanager
async def daemons(*items: BenchDaemon) -> AsyncIterator[tuple[BenchDaemon, ...]]:
    """Stop every daemon at the end, whatever happened."""
    try:
        yield items
    finally:
        for d in items:
            await asyncio.to_thread(d.stop)


# ----------------------------------------------------------------------------------------------------------
# The API's side of MQTT


@dataclass(slots=True)
class ChainWatch:
    done: asyncio.Future[float]
    events: list[tuple[float, int, int]] = field(default_factory=list)  # (monotonic, state, progress)


class Api:
    """One MQTT client that publishes wake-ups as the API does after its commit, and watches the daemons'
    chain state events and node status."""

    def __init__(self, ctx: BenchContext, *, watch_chains: bool = True) -> None:
        self.ctx = ctx
        self.watch_chains = watch_chains
        self.client = aiomqtt.Client(ctx.mqtt_host, ctx.mqtt_port, identifier=f"bench-api-{os.getpid()}",
                                     socket_options=[NODELAY])
        self.chains: dict[int, ChainWatch] = {}
        self.status: list[tuple[float, int, dict[str, Any]]] = []  # (monotonic, server, payload)
        self._status_changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Api:
        await self.client.__aenter__()
        topics = [f"{TOPIC_PREFIX}/node/+/status"] + ([f"{TOPIC_PREFIX}/chain/+/state"] if self.watch_chains else [])
        await self.client.subscribe([(topic, 1) for topic in topics])
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        await self.client.__aexit__(None, None, None)

    def watch(self, chain_id: int) -> ChainWatch:
        watch = self.chains.get(chain_id)
        if watch is None:
            watch = self.chains[chain_id] = ChainWatch(asyncio.get_running_loop().create_future())
        return watch

    async def _read(self) -> None:
        async for msg in self.client.messages:
            now = time.monotonic()
            parts = msg.topic.value.split("/")
            try:
                payload = json.loads(bytes(msg.payload)) if isinstance(msg.payload, bytes | bytearray) else {}
            except ValueError:
                continue
            if parts[-1] == "state":
                self._on_chain(now, int(parts[-2]), payload)
            elif parts[-1] == "status" and isinstance(payload, dict):
                self.status.append((now, int(parts[-2]), payload))
                self._status_changed.set()

    def _on_chain(self, now: float, chain_id: int, payload: dict[str, Any]) -> None:
        watch = self.watch(chain_id)
        state, progress = int(payload.get("state", -1)), int(payload.get("progress", -1))
        watch.events.append((now, state, progress))
        if state in FINAL_STATES and not watch.done.done():
            watch.done.set_result(now)

    async def wake(self, server_id: int, fired: FiredChain) -> None:
        """What the API publishes after committing a chain whose first transaction runs on ``server_id``."""
        await self.publish_wake(server_id, {"chain": fired.chain_id, "t_id": fired.transaction_ids[0]})

    async def publish_wake(self, server_id: int, payload: dict[str, Any]) -> None:
        await self.client.publish(f"{TOPIC_PREFIX}/node/{server_id}/wake", json.dumps(payload), qos=1)

    async def _wait_status(self, server_id: int, pid: int, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            for at, server, payload in self.status:
                if at >= after and server == server_id and payload.get("pid") == pid \
                        and payload.get("status") == "online":
                    return at
            self._status_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no online status of server {server_id} (pid {pid})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_changed.wait(), min(remaining, 0.05))

    async def wait_subscribed(self, daemon: BenchDaemon, timeout: float = 10.0) -> float:
        """Wait until ``daemon``'s bus is connected and subscribed; returns the monotonic time it was seen.

        The bus publishes its retained ``online`` status before it subscribes, so that alone proves nothing.
        The bus also subscribes to its own status topic (in the same SUBSCRIBE as its wake-up topics) and
        answers an ``offline`` status by publishing ``online`` again: a non-retained ``offline`` probe that
        is answered proves the subscription is active.
        """
        await self._wait_status(daemon.server_id, daemon.pid, 0.0, timeout)
        topic = f"{TOPIC_PREFIX}/node/{daemon.server_id}/status"
        probe = json.dumps({"status": "offline", "reason": "bench readiness probe", "pid": 0})
        first = time.monotonic()
        while time.monotonic() < first + timeout:
            await self.client.publish(topic, probe, qos=1)
            with contextlib.suppress(TimeoutError):
                # Any answer after the first probe will do: only a subscribed bus answers.
                return await self._wait_status(daemon.server_id, daemon.pid, first, 0.01)
        raise TimeoutError(f"the bus of server {daemon.server_id} did not subscribe within {timeout} s")

    async def timed_chain(self, conn: Any, servers: Sequence[int], *, timeout: float = 10.0) -> dict[str, float]:
        """Fire a NoOp chain over ``servers``, publish the wake-up, wait for its done event.

        Returns seconds from before the insert to: the commit (``fire``), the first chain event (``first``,
        the first transaction saved), the done event (``total``); ``step`` is the mean interval between
        consecutive chain events."""
        t0 = time.monotonic()
        fired = await fire_noop_chain(conn, servers)
        fired_at = time.monotonic()
        watch = self.watch(fired.chain_id)
        await self.wake(servers[0], fired)
        done_at = await asyncio.wait_for(watch.done, timeout)
        times = [at for at, _state, _progress in watch.events]
        steps = [b - a for a, b in zip(times, times[1:], strict=False)]
        return {"chain": fired.chain_id, "total": done_at - t0, "fire": fired_at - t0, "first": times[0] - t0,
                "step": statistics.fmean(steps) if steps else 0.0}

    async def timed_chains(self, conn: Any, servers: Sequence[int], n: int, *,
                           warmup: int = 0) -> list[dict[str, float]]:
        """``warmup`` unrecorded chains, then ``n`` recorded ones, one after another; checks that every recorded
        chain is done in the DB."""
        for _ in range(warmup):
            await self.timed_chain(conn, servers)
        samples = [await self.timed_chain(conn, servers) for _ in range(n)]
        states = await chain_states(conn, [int(s["chain"]) for s in samples])
        bad = {c: s for c, s in states.items() if s != 2}
        if bad or len(states) != n:
            raise RuntimeError(f"chains not done in the DB although their done event arrived: {bad}")
        return samples

    async def clear_status(self, server_ids: Sequence[int]) -> None:
        """Remove the retained status messages the benchmark daemons left on the broker."""
        for server_id in server_ids:
            await self.client.publish(f"{TOPIC_PREFIX}/node/{server_id}/status", b"", qos=1, retain=True)


@contextlib.contextmanager
def private_broker(ctx: BenchContext, extra_config: str = "set_tcp_nodelay true") -> Iterator[BenchContext]:
    """A private Mosquitto (``extra_config`` added to its config); yields ``ctx`` pointing at it."""
    server = MosquittoServer(ctx.workdir / "mosquitto", extra_config=extra_config)
    server.start()
    try:
        yield replace(ctx, mqtt_port=server.port)
    finally:
        server.close()
