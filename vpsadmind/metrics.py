"""Prometheus metrics of the node daemon: text exposition format 0.0.4 over a tiny asyncio HTTP server.

No client library: the format is a few lines of text (``# HELP``, ``# TYPE``, ``name{label="value"} value``),
and the server answers ``GET /metrics`` only (404 elsewhere, 405 for other methods), with a bounded request
size, a deadline per request and a bounded number of clients, so a scraper (or anything else that connects)
can never block the daemon. docs/metrics.md lists every metric.

Two kinds of figures:

* counters the engine updates when it saves a result (:class:`TransactionMetrics`, ``engine.metrics``): by
  type and result, durations, chain state changes, kills;
* gauges and counters read at scrape time from the daemon (:func:`collect`): queues, queue depth (one cached
  ``COUNT(*)``), transfer bytes, database and bus connectivity, start time, build info.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import platform
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from vpsadmind import __version__
from vpsadmind.engine.model import ChainState, Result, Transaction, TSuccess

if TYPE_CHECKING:
    from vpsadmind.engine.core import Engine
    from vpsadmind.engine.save import SaveOutcome

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "Counter", "Family", "Histogram", "MetricsServer",
           "MetricsSource", "QueueDepth", "TransactionMetrics", "collect", "render", "render_metrics",
           "result_label"]

log = structlog.get_logger("vpsadmind.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Transactions last from milliseconds (a NoOp) to hours (a send of a big dataset).
DURATION_BUCKETS: Final = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)

# ---- exposition ---------------------------------------------------------------------------------------------

Labels = dict[str, str]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


@dataclass(slots=True)
class Family:
    """One metric: its samples are (name suffix, labels, value), e.g. ``("_bucket", {"le": "1"}, 3)``."""

    name: str
    type: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | None = None, suffix: str = "") -> Family:
        self.samples.append((suffix, labels or {}, value))
        return self


def render(families: Iterable[Family]) -> str:
    out: list[str] = []
    for f in families:
        out.append(f"# HELP {f.name} {_escape_help(f.help)}")
        out.append(f"# TYPE {f.name} {f.type}")
        for suffix, labels, value in f.samples:
            text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
            out.append(f"{f.name}{suffix}{{{text}}} {_number(value)}" if text else
                       f"{f.name}{suffix} {_number(value)}")
    return "\n".join(out) + "\n"


class Counter:
    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def family(self) -> Family:
        f = Family(self.name, "counter", self.help)
        for key, value in sorted(self._values.items()):
            f.add(value, dict(zip(self.labelnames, key, strict=True)))
        return f


class Histogram:
    def __init__(self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[tuple[str, ...], list[int]] = {}  # per bucket, not cumulative; +Inf last
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts = self._counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        index = next((i for i, bound in enumerate(self.buckets) if value <= bound), len(self.buckets))
        counts[index] += 1
        self._sums[labels] = self._sums.get(labels, 0.0) + value

    def count(self, *labels: str) -> int:
        return sum(self._counts.get(labels, ()))

    def family(self) -> Family:
        f = Family(self.name, "histogram", self.help)
        for key, counts in sorted(self._counts.items()):
            base = dict(zip(self.labelnames, key, strict=True))
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                f.add(running, {**base, "le": "+Inf" if math.isinf(bound) else _number(bound)}, "_bucket")
            f.add(self._sums[key], base, "_sum")
            f.add(running, base, "_count")
        return f


# ---- what the engine counts ---------------------------------------------------------------------------------


def result_label(result: Result) -> str:
    """``ok``, ``warning``, ``failed``, ``rolled_back`` (a failed exec that undid itself) or ``skipped`` (not
    rolled back during a chain rollback: it had failed, or it is keep_going)."""
    if result.skipped:
        return "skipped"
    if result.status == TSuccess.FAILED:
        return "failed"
    if result.self_rolled_back:
        return "rolled_back"
    return "warning" if result.status == TSuccess.WARNING else "ok"


class TransactionMetrics:
    """Counted by the engine once per saved result (journaled results when their save succeeds)."""

    def __init__(self) -> None:
        self.transactions = Counter("vpsadmind_transactions_total",
                                    "Transactions whose result this node saved, by type and result.",
                                    ("type", "handler", "direction", "result"))
        self.duration = Histogram("vpsadmind_transaction_duration_seconds",
                                  "Run time of saved transactions (start to finish of the handler).",
                                  ("type", "direction"), DURATION_BUCKETS)
        self.chain_states = Counter("vpsadmind_chain_state_changes_total",
                                    "Chains this node's saves moved into a state (queued, done, rollbacking, "
                                    "failed, fatal).", ("state",))
        self.kills = Counter("vpsadmind_transactions_killed_total",
                             "Running transactions killed with vpsadmindctl kill.", ("type", "handler"))

    def saved(self, t: Transaction, result: Result, out: SaveOutcome) -> None:
        from vpsadmind.engine.runner import handler_name

        kind = str(t.t_type)
        self.transactions.inc(kind, handler_name(t.t_type), result.direction.label, result_label(result))
        seconds = max(0.0, (result.finished_at - result.started_at).total_seconds())
        self.duration.observe(seconds, kind, result.direction.label)
        if out.closed or out.chain_state != t.chain_state:
            self.chain_states.inc(_state_name(out.chain_state))

    def killed(self, t: Transaction) -> None:
        from vpsadmind.engine.runner import handler_name

        self.kills.inc(str(t.t_type), handler_name(t.t_type))

    def families(self) -> list[Family]:
        return [self.transactions.family(), self.duration.family(), self.chain_states.family(),
                self.kills.family()]


def _state_name(state: int) -> str:
    try:
        return ChainState(state).name.lower()
    except ValueError:
        return str(state)


# ---- what is read at scrape time ----------------------------------------------------------------------------


class MetricsSource(Protocol):
    """What :func:`collect` reads of :class:`vpsadmind.daemon.Daemon`."""

    @property
    def engine(self) -> Engine | None: ...

    @property
    def start_time(self) -> float: ...


class QueueDepth:
    """This node's ``t_done = 0`` count: one ``COUNT(*)`` per ``ttl`` at most, bounded by ``timeout``; the last
    attempt also says whether the database answers."""

    def __init__(self, *, ttl: float = 5.0, timeout: float = 2.0) -> None:
        self.ttl, self.timeout = ttl, timeout
        self.value: int | None = None
        self.db_up = False
        self._at = -math.inf
        self._lock = asyncio.Lock()

    async def get(self, engine: Engine) -> int | None:
        async with self._lock:  # concurrent scrapes share one query
            if time.monotonic() - self._at < self.ttl:
                return self.value
            try:
                async with asyncio.timeout(self.timeout):
                    row = await engine.db.fetchone(
                        "SELECT COUNT(*) AS cnt FROM transactions WHERE t_server = %s AND t_done = 0",
                        (engine.server_id,))
                self.value, self.db_up = (int(row["cnt"]) if row else 0), True
            except Exception as exc:
                log.warning("metrics_queue_depth_failed", error=str(exc) or type(exc).__name__)
                self.value, self.db_up = None, False
            self._at = time.monotonic()
            return self.value


def _gauge(name: str, help: str, value: float | None, labels: Labels | None = None) -> Family:
    f = Family(name, "gauge", help)
    return f.add(value, labels) if value is not None else f


def _process_families(source: MetricsSource) -> list[Family]:
    return [
        _gauge("vpsadmind_build_info", "Version of the running daemon (value 1).", 1,
               {"version": __version__, "python": platform.python_version()}),
        _gauge("vpsadmind_start_time_seconds", "When the daemon started, in unix seconds.", source.start_time),
        _gauge("vpsadmind_pending_exit_code", "Exit code of a pending vpsadmindctl stop (100), restart (150) or "
               "update (200); 0 when none.", getattr(source, "exit_code", 0)),
    ]


def _queue_families(engine: Engine) -> list[Family]:
    now = time.monotonic()
    used = Family("vpsadmind_queue_slots_used", "gauge", "Transactions running in the queue.")
    threads = Family("vpsadmind_queue_slots_threads", "gauge", "Slots of the queue.")
    urgent = Family("vpsadmind_queue_slots_urgent", "gauge", "Extra slots of the queue for urgent transactions.")
    opened = Family("vpsadmind_queue_open", "gauge", "1 once the queue's start_delay has passed.")
    for name, q in sorted(engine.queues.queues.items()):
        labels = {"queue": name}
        used.add(q.used, labels)
        threads.add(q.threads, labels)
        urgent.add(q.urgent, labels)
        opened.add(1 if q.started(now) else 0, labels)
    blockers = sum(1 for tasks in engine.blockers.values() for task in tasks if not task.done())
    return [used, threads, urgent, opened,
            _gauge("vpsadmind_paused", "1 while vpsadmindctl pause (or a pending stop) keeps new work back.",
                   1 if engine.paused else 0),
            _gauge("vpsadmind_chain_blockers", "Background work (transfer receivers) blocking its chain.", blockers)]


_ENGINE_COUNTERS: Final = (
    ("polls", "vpsadmind_engine_polls_total", "Selections of runnable transactions."),
    ("started", "vpsadmind_transactions_started_total", "Transactions started (claimed) by this node."),
    ("journaled", "vpsadmind_results_journaled_total", "Results written to the local journal while the "
     "database was unreachable."),
    ("recovered", "vpsadmind_transactions_recovered_total", "Transactions a crash interrupted, dispatched again "
     "at start."),
    ("claim_lost", "vpsadmind_claims_lost_total", "Claims another daemon (or a concurrent save) won."),
)


def _engine_counters(engine: Engine) -> list[Family]:
    return [Family(name, "counter", text).add(engine.stats.get(key, 0)) for key, name, text in _ENGINE_COUNTERS]


def _transfer_families(engine: Engine) -> list[Family]:
    board = engine.ctx.progress
    total = Family("vpsadmind_transfer_bytes_total", "counter",
                   "Bytes moved by transfers and downloads (finished and running), by kind.")
    running = Family("vpsadmind_transfers_running", "gauge", "Transfers and downloads running now, by kind.")
    done = Family("vpsadmind_transfers_total", "counter", "Transfers and downloads that ended, by kind.")
    for kind, n in sorted(board.total_bytes().items()):
        total.add(n, {"kind": kind})
    counts: dict[str, int] = {}
    for p in list(board.open_streams.values()):
        counts[p.kind] = counts.get(p.kind, 0) + 1
    for kind, n in sorted(counts.items()):
        running.add(n, {"kind": kind})
    for kind, n in sorted(board.closed_count.items()):
        done.add(n, {"kind": kind})
    return [total, running, done]


def _bus_families(source: MetricsSource) -> list[Family]:
    bus = getattr(source, "bus", None)
    stats: dict[str, int] = getattr(bus, "stats", None) or {}
    out = [
        _gauge("vpsadmind_bus_enabled", "1 when the MQTT bus is configured (mqtt.enabled).", 1 if bus else 0),
        _gauge("vpsadmind_bus_connected", "1 while connected and subscribed to the MQTT broker.",
               1 if bus is not None and bus.connected else 0),
    ]
    if bus is not None:
        out.append(_gauge("vpsadmind_bus_queued_messages", "Messages waiting to be sent to the broker.",
                          bus.queued))
        for key, name, text in (("published", "vpsadmind_bus_messages_published_total", "Messages the broker "
                                 "accepted."),
                                ("dropped", "vpsadmind_bus_messages_dropped_total", "Messages dropped (queue "
                                 "full or unpublishable)."),
                                ("reconnects", "vpsadmind_bus_reconnects_total", "Reconnections to the broker.")):
            out.append(Family(name, "counter", text).add(stats.get(key, 0)))
    return out


def _other_families(source: MetricsSource) -> list[Family]:
    out = []
    mounts = getattr(source, "mounts", None)
    if mounts is not None:
        out.append(_gauge("vpsadmind_delayed_mounts", "Mounts registered for a later retry (status -m).",
                          mounts.delayed.count()))
        out.append(_gauge("vpsadmind_mount_states_pending", "Mount state reports not yet written to the "
                          "database.", mounts.reporter.pending_count()))
    reporters: dict[str, Any] = getattr(source, "reporters", None) or {}
    failures = Family("vpsadmind_reporter_failures_total", "counter", "Failed runs of the periodic reporters.")
    for name, reporter in sorted(reporters.items()):
        failures.add(getattr(reporter, "failures", 0), {"reporter": name})
    out.append(failures)
    return out


async def collect(source: MetricsSource, depth: QueueDepth) -> list[Family]:
    """Every family, read now (the queue depth at most ``depth.ttl`` old)."""
    families = _process_families(source)
    engine = source.engine
    if engine is not None:
        value = await depth.get(engine)
        families += engine.metrics.families()
        families += _queue_families(engine)
        families.append(_gauge("vpsadmind_queue_depth", "Transactions of this node not done yet (t_done = 0), "
                               "running ones included.", value))
        families += _engine_counters(engine) + _transfer_families(engine)
    families.append(_gauge("vpsadmind_db_up", "1 if the last query of the metrics (at most 5 s old) answered.",
                           1 if engine is not None and depth.db_up else 0))
    families += _bus_families(source) + _other_families(source)
    return families


async def render_metrics(source: MetricsSource, depth: QueueDepth) -> str:
    return render(await collect(source, depth))


# ---- HTTP ---------------------------------------------------------------------------------------------------

_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
                   503: "Service Unavailable"}


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class MetricsServer:
    """``GET /metrics`` on ``host:port`` answered with ``await render()``; see the module docstring.

    ``port`` 0 binds a free port (tests); :attr:`port` is the bound one once started.
    """

    def __init__(self, render: Callable[[], Awaitable[str]], host: str, port: int, *, timeout: float = 5.0,
                 max_clients: int = 16, max_request: int = 8192) -> None:
        self.render, self.host, self.port = render, host, port
        self.timeout, self.max_clients, self.max_request = timeout, max_clients, max_request
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port, limit=self.max_request)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics_listening", host=self.host, port=self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):  # a scrape in progress is not worth waiting for at shutdown
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def serve(self) -> None:
        """Start, then serve until cancelled; a port that cannot be bound is logged (the daemon serves on)."""
        try:
            await self.start()
        except OSError as exc:
            log.error("metrics_listen_failed", host=self.host, port=self.port, error=exc.strerror or str(exc))
            return
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve_one(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # close(): nobody awaits this task, and asyncio's stream callback logs a cancelled one as an error
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) > self.max_clients:
            await self._reply(writer, 503, "too many clients\n")
            await self._discard(reader, writer, 0.2)  # briefly: this client must not hold a slot
            return
        try:
            async with asyncio.timeout(self.timeout):
                method, path = await self._read_head(reader)
                status, body = await self._answer(method, path)
        except _Refused as exc:
            status, body, method = exc.status, f"{_REASONS[exc.status].lower()}\n", "GET"
        except TimeoutError:
            status, body, method = 408, "request timeout\n", "GET"
        await self._reply(writer, status, body, head_only=method == "HEAD")
        if status != 200:
            await self._discard(reader, writer, 1.0)

    async def _discard(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float) -> None:
        """After refusing a request whose rest may still be coming: end our side, then read and drop a bounded
        amount, since closing a TCP socket with unread data resets it and the client would lose the reply."""
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(seconds):
                total = 0
                while total < 1024 * 1024:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    total += len(chunk)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """Method and path of the request; the headers are read (bounded) and ignored."""
        total = 0
        lines: list[bytes] = []
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise _Refused(431) from None
            except asyncio.IncompleteReadError:
                raise _Refused(400) from None
            total += len(line)
            if total > self.max_request or len(lines) > 100:
                raise _Refused(431)
            if not line.strip():
                break
            lines.append(line)
        parts = lines[0].decode("latin-1").split() if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _Refused(400)
        return parts[0], parts[1]

    async def _answer(self, method: str, target: str) -> tuple[int, str]:
        if target.split("?", 1)[0] != "/metrics":
            return 404, "not found: the metrics are at /metrics\n"
        if method not in ("GET", "HEAD"):
            return 405, "method not allowed\n"
        try:
            return 200, await self.render()
        except Exception:
            log.exception("metrics_render_failed")
            return 500, "internal error, see the daemon log\n"

    async def _reply(self, writer: asyncio.StreamWriter, status: int, body: str, *, head_only: bool = False) -> None:
        data = body.encode()
        ctype = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n")
        if status == 405:
            head += "Allow: GET, HEAD\r\n"
        writer.write(head.encode() + b"\r\n" + (b"" if head_only else data))
        async with asyncio.timeout(self.timeout):
            await writer.drain()
