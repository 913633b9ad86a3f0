"""Prometheus metrics (vpsadmind/metrics.py): the exposition format (checked by a parser of the 0.0.4 text
grammar written here), the HTTP server's answers to odd and hostile requests, and the counters of a real
engine scraped over HTTP with urllib while probe chains run, in process and in a ``vpsadmind`` process."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from vpsadmind import __version__
from vpsadmind.metrics import (
    CONTENT_TYPE,
    Counter,
    Family,
    Histogram,
    MetricsServer,
    QueueDepth,
    render,
    render_metrics,
)
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, wait_chain
from vpsadmind.testing.handlers import PROBE
from vpsadmind.testing.process import DaemonProcess, write_config

# ---- a parser of the text format, version 0.0.4 -------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?:\{{(?P<labels>.*)\}})? (?P<value>\S+)(?: -?\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_HELP = re.compile(rf"^# HELP (?P<name>{_NAME}) (?P<text>.*)$")
_TYPE = re.compile(rf"^# TYPE (?P<name>{_NAME}) (?P<type>counter|gauge|histogram|summary|untyped)$")
_SUFFIXES = {"counter": ("",), "gauge": ("",), "untyped": ("",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("", "_sum", "_count")}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Parsed:
    type: str = "untyped"
    help: str = ""
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _labels(text: str | None) -> Labels:
    if not text:
        return ()
    out, pos = [], 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m is not None, f"bad labels at {text[pos:]!r}"
        out.append((m.group(1), _unescape(m.group(2))))
        pos = m.end()
        if pos < len(text):
            assert text[pos] == ",", f"expected a comma in {text!r}"
            pos += 1
    assert len({k for k, _ in out}) == len(out), f"duplicate label in {text!r}"
    return tuple(out)


def _value(text: str) -> float:
    return {"+Inf": float("inf"), "-Inf": float("-inf"), "NaN": float("nan")}.get(text) or float(text)


def _family_of(name: str, families: dict[str, Parsed], current: str | None) -> str:
    assert current is not None, f"sample {name} before any # TYPE"
    kind = families[current].type
    assert any(name == current + s for s in _SUFFIXES[kind]), f"{name} is not a sample of {current} ({kind})"
    return current


def parse(text: str) -> dict[str, Parsed]:
    """Check every line against the grammar; samples must follow their family's HELP/TYPE, each once."""
    assert text.endswith("\n")
    families: dict[str, Parsed] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if m := _HELP.match(line):
            assert m["name"] not in families or not families[m["name"]].help, f"second HELP of {m['name']}"
            families.setdefault(m["name"], Parsed()).help = _unescape(m["text"])
            current = m["name"]
        elif m := _TYPE.match(line):
            assert not families.get(m["name"], Parsed()).samples, f"TYPE of {m['name']} after its samples"
            families.setdefault(m["name"], Parsed()).type = m["type"]
            current = m["name"]
        else:
            m = _SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            family = _family_of(m["name"], families, current)
            key = (m["name"], _labels(m["labels"]))
            assert key not in families[family].samples, f"duplicate sample {key}"
            families[family].samples[key] = _value(m["value"])
    for name, f in families.items():
        if f.type == "counter":
            assert name.endswith("_total"), name
        if f.type == "histogram":
            _check_histogram(name, f)
    return families


def _check_histogram(name: str, f: Parsed) -> None:
    series: dict[Labels, list[tuple[float, float]]] = {}
    for (sample, labels), value in f.samples.items():
        if sample.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = tuple((k, v) for k, v in labels if k != "le")
            series.setdefault(rest, []).append((_value(le), value))
    for rest, buckets in series.items():
        counts = [v for _le, v in sorted(buckets)]
        assert counts == sorted(counts), f"{name}{rest}: buckets not cumulative"
        assert sorted(buckets)[-1][0] == float("inf")
        assert counts[-1] == f.samples[(name + "_count", rest)]


def value(families: dict[str, Parsed], name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (0 when the series does not exist yet)."""
    for family in families.values():
        for (sample, lbls), v in family.samples.items():
            if sample == name and dict(lbls) == labels:
                return v
    return 0.0


# ---- format ------------------------------------------------------------------------------------------------


def test_exposition_escapes_and_parses() -> None:
    c = Counter("x_events_total", "Help with a \\ backslash\nand a newline.", ("what",))
    c.inc('quote " back \\ new\nline')
    c.inc("plain", amount=2.5)
    h = Histogram("x_seconds", "Durations.", ("kind",), (0.5, 1, 10))
    for v in (0.1, 0.7, 0.7, 30):
        h.observe(v, "a")
    g = Family("x_temperature", "gauge", "A gauge without labels.").add(-1.25)
    text = render([c.family(), h.family(), g, Family("x_empty", "gauge", "No samples yet.")])
    families = parse(text)
    assert families["x_events_total"].help == "Help with a \\ backslash\nand a newline."
    assert value(families, "x_events_total", what='quote " back \\ new\nline') == 1
    assert value(families, "x_events_total", what="plain") == 2.5
    assert [value(families, "x_seconds_bucket", kind="a", le=le) for le in ("0.5", "1", "10", "+Inf")] == [
        1, 3, 3, 4]
    assert value(families, "x_seconds_sum", kind="a") == pytest.approx(31.5)
    assert value(families, "x_temperature") == -1.25
    assert families["x_empty"].samples == {}
    assert 'x_seconds_bucket{kind="a",le="+Inf"} 4\n' in text


# ---- the HTTP server ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def metrics_server(render_fn: Any = None, **kw: Any) -> AsyncIterator[MetricsServer]:
    async def body() -> str:
        return "# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"

    server = MetricsServer(render_fn or body, "127.0.0.1", 0, **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def http(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


async def raw_http(port: int, data: bytes, *, delay: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if delay:
            await asyncio.sleep(delay)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_http_answers() -> None:
    async with metrics_server() as server:
        status, headers, body = await asyncio.to_thread(http, server.port)
        assert (status, headers["Content-Type"], body) == (200, CONTENT_TYPE, "# HELP x_up Up.\n# TYPE x_up gauge\n"
                                                                             "x_up 1\n")
        assert (await asyncio.to_thread(http, server.port, "/metrics?x=1"))[0] == 200
        assert (await asyncio.to_thread(http, server.port, "/"))[0] == 404
        assert (await asyncio.to_thread(http, server.port, "/metricsx"))[0] == 404
        status, headers, _ = await asyncio.to_thread(http, server.port, "/metrics", "POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"
        status, headers, body = await asyncio.to_thread(http, server.port, "/metrics", "HEAD")
        assert status == 200 and body == "" and int(headers["Content-Length"]) > 0
        assert (await raw_http(server.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await raw_http(server.port, b"\x00\xff\r\n\r\n")).startswith(b"HTTP/1.1 400 ")


async def test_http_bounds_size_time_and_clients() -> None:
    async with metrics_server(timeout=0.5, max_clients=3) as server:
        big = b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"x" * 20000 + b"\r\n\r\n"
        assert (await raw_http(server.port, big)).startswith(b"HTTP/1.1 431 ")
        many = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n"
        assert (await raw_http(server.port, many)).startswith(b"HTTP/1.1 431 ")
        started = time.monotonic()
        reply = await raw_http(server.port, b"GET /metrics HTTP/1.1\r\n")  # never finishes its head
        assert reply.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 3
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert (await raw_http(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 503 ")
        for _r, w in held:
            w.close()
        await asyncio.sleep(0.1)
        assert (await asyncio.to_thread(http, server.port))[0] == 200


async def test_render_failure_is_a_500_and_the_server_goes_on() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return "x_up 1\n"

    async with metrics_server(flaky) as server:
        assert (await asyncio.to_thread(http, server.port))[0] == 500
        assert (await asyncio.to_thread(http, server.port))[:3:2] == (200, "x_up 1\n")


# ---- counters of a real engine -------------------------------------------------------------------------------


@dataclass
class Source:
    engine: Any
    start_time: float = field(default_factory=time.time)
    bus: Any = None


async def scrape(port: int) -> dict[str, Parsed]:
    status, headers, body = await asyncio.to_thread(http, port)
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    return parse(body)


def delta(after: dict[str, Parsed], before: dict[str, Parsed], name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_engine_counters_move_by_exactly_what_ran(db: aiomysql.Connection, db_settings: TestDbSettings,
                                                        test_database: str, tmp_path: Path) -> None:
    cfg = make_config(db_settings, test_database, journal=str(tmp_path / "j"))
    async with running_engine(cfg) as engine:
        source = Source(engine)
        async with metrics_server(lambda: render_metrics(source, QueueDepth(ttl=0))) as server:
            before = await scrape(server.port)
            ok = await (ChainBuilder("ok").append(PROBE, server=1).append(PROBE, server=1)
                        .append(PROBE, server=1, params={"warn": True}).fire(db))
            bad = await ChainBuilder("bad").append(PROBE, server=1).append(PROBE, server=1, params={"fail": True}) \
                .fire(db)
            assert (await wait_chain(db, ok.chain_id))["state"] == 2
            assert (await wait_chain(db, bad.chain_id))["state"] == 4
            await engine.wait_idle()
            after = await scrape(server.port)
    t = {"type": str(PROBE), "handler": "Probe"}
    assert delta(after, before, "vpsadmind_transactions_total", **t, direction="execute", result="ok") == 3
    assert delta(after, before, "vpsadmind_transactions_total", **t, direction="execute", result="warning") == 1
    assert delta(after, before, "vpsadmind_transactions_total", **t, direction="execute",
                 result="rolled_back") == 1
    assert delta(after, before, "vpsadmind_transactions_total", **t, direction="rollback", result="ok") == 1
    total = sum(v for (n, _l), v in after["vpsadmind_transactions_total"].samples.items())
    assert total == 6  # nothing else counted
    assert delta(after, before, "vpsadmind_transaction_duration_seconds_count", type=str(PROBE),
                 direction="execute") == 5
    assert delta(after, before, "vpsadmind_transaction_duration_seconds_count", type=str(PROBE),
                 direction="rollback") == 1
    assert {dict(lbl)["state"]: v for (_n, lbl), v in after["vpsadmind_chain_state_changes_total"].samples.items()
            } == {"done": 1, "rollbacking": 1, "failed": 1}
    assert delta(after, before, "vpsadmind_transactions_started_total") == 6
    assert value(after, "vpsadmind_db_up") == 1 and value(after, "vpsadmind_queue_depth") == 0
    assert value(after, "vpsadmind_queue_slots_threads", queue="general") == 6
    assert value(after, "vpsadmind_queue_slots_urgent", queue="general") == 6
    assert value(after, "vpsadmind_queue_open", queue="zfs_send") == 0
    assert value(after, "vpsadmind_build_info", version=__version__,
                 python=dict(next(iter(after["vpsadmind_build_info"].samples))[1])["python"]) == 1
    assert value(after, "vpsadmind_bus_enabled") == 0 and value(after, "vpsadmind_paused") == 0


async def test_queue_depth_slots_and_transfer_bytes(db: aiomysql.Connection, db_settings: TestDbSettings,
                                                    test_database: str, tmp_path: Path) -> None:
    cfg = make_config(db_settings, test_database, journal=str(tmp_path / "j"))
    async with running_engine(cfg) as engine:
        engine.paused = True
        source = Source(engine)
        depth = QueueDepth(ttl=0)
        async with metrics_server(lambda: render_metrics(source, depth)) as server:
            await ChainBuilder("a").append(PROBE, server=1).append(PROBE, server=1).fire(db)
            await ChainBuilder("b").append(PROBE, server=2).fire(db)  # another node's
            m = await scrape(server.port)
            assert value(m, "vpsadmind_queue_depth") == 2 and value(m, "vpsadmind_paused") == 1
            board = engine.ctx.progress
            p = board.open("send", chain_id=1, transaction_id=1, label="tank/1@a -> x")
            p.add(1000)
            m = await scrape(server.port)
            assert value(m, "vpsadmind_transfer_bytes_total", kind="send") == 1000
            assert value(m, "vpsadmind_transfers_running", kind="send") == 1
            p.add(500)
            board.close(p)
            m = await scrape(server.port)
            assert value(m, "vpsadmind_transfer_bytes_total", kind="send") == 1500  # monotonic across the close
            assert value(m, "vpsadmind_transfers_running", kind="send") == 0
            assert value(m, "vpsadmind_transfers_total", kind="send") == 1
            await engine.db.close()  # the database goes away: the scrape still answers, and says so
            m = await scrape(server.port)
            assert value(m, "vpsadmind_db_up") == 0 and "vpsadmind_queue_depth" in m
            assert m["vpsadmind_queue_depth"].samples == {}


# ---- a vpsadmind process ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_a_daemon_process_serves_its_metrics(db: aiomysql.Connection, db_settings: TestDbSettings,
                                                  test_database: str, tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=1, journal=tmp_path / "j",
                       sections={"metrics": {"enabled": True, "listen": "127.0.0.1", "port": port}})
    d = DaemonProcess(cfg, tmp_path / "d.log").start()
    try:
        assert d.wait_for_event("metrics_listening")["port"] == port
        before = await scrape(port)
        assert abs(value(before, "vpsadmind_start_time_seconds") - time.time()) < 60
        fired = await ChainBuilder().append(PROBE, server=1).fire(db)
        assert (await wait_chain(db, fired.chain_id))["state"] == 2
        after = await scrape(port)
        assert delta(after, before, "vpsadmind_transactions_total", type=str(PROBE), handler="Probe",
                     direction="execute", result="ok") == 1
        assert value(after, "vpsadmind_db_up") == 1 and value(after, "vpsadmind_delayed_mounts") == 0
        assert value(after, "vpsadmind_reporter_failures_total", reporter="node_status") == 0
    finally:
        assert d.terminate() == 0
