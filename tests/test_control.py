"""The control socket (contract 6.1/6.2) and ``vpsadmindctl``.

Protocol tests run the server against a stub daemon; the status and queue tests against a real engine on
MariaDB. The ctl runs in a worker thread (``vpsadmind.ctl.main``) against the server in the test's loop, and
once as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from vpsadmind import __version__, ctl
from vpsadmind.config import DEFAULT_QUEUES, Config, config_from_dict
from vpsadmind.control import COMMANDS, CommandFailed, ControlError, ControlServer, Reply, acall, call
from vpsadmind.control.client import CommandError, ConnectError, arequest
from vpsadmind.engine.queues import Queues
from vpsadmind.system import CommandFailed as SystemCommandFailed
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config, running_engine, wait_chain
from vpsadmind.testing.handlers import PROBE

# ---- fixtures and stubs ----------------------------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: a UNIX socket path must stay under 108 bytes, pytest's tmp_path may not."""
    with tempfile.TemporaryDirectory(prefix="vctl-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def sock(sock_dir: Path) -> str:
    return str(sock_dir / "ctl.sock")


def stub_config(path: str, **vpsadmin: Any) -> Config:
    raw = {"db": {"hosts": ["127.0.0.1"], "user": "vpsadmin", "pass": "s3cret", "name": "vpsadmin"},
           "vpsadmin": {"server_id": 7, **vpsadmin}, "mqtt": {"password": "mq-secret"}}
    return dataclasses.replace(config_from_dict(raw), remote_socket=path)


class StubDb:
    async def fetchone(self, sql: str, args: Any = None) -> dict[str, Any]:
        return {"cnt": 0}


class StubEngine:
    """What the commands read of vpsadmind.engine.core.Engine, with nothing running."""

    def __init__(self) -> None:
        self.paused = False
        self.pause_after: int | None = None
        self.woken = 0
        self.server_id = 7
        self.queues = Queues(DEFAULT_QUEUES)
        self.running: dict[int, Any] = {}
        self.blockers: dict[int, Any] = {}
        self.stats: dict[str, int] = {}
        self.start_time = time.time()
        self.db = StubDb()

    def wake(self, payload: dict[str, Any] | None = None) -> None:
        self.woken += 1


class StubDaemon:
    """The attributes a ControlServer needs of vpsadmind.daemon.Daemon."""

    def __init__(self, path: str, *, engine: Any = None, config_path: str = "/nonexistent.yml") -> None:
        self.config = stub_config(path)
        self.config_path = config_path
        self.engine = engine
        self.stop_requests = 0
        self.reloads = 0

    def request_stop(self) -> None:
        self.stop_requests += 1

    def reload(self) -> None:
        self.reloads += 1
        with contextlib.suppress(Exception):
            from vpsadmind.config import load_config

            self.config = dataclasses.replace(load_config(self.config_path),
                                              remote_socket=self.config.remote_socket)


class CancellableDaemon(StubDaemon):
    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.cancelled = 0

    def cancel_stop(self) -> bool:
        self.cancelled += 1
        return True


@contextlib.asynccontextmanager
async def serving(daemon: Any, **kw: Any) -> AsyncIterator[ControlServer]:
    server = ControlServer(daemon, **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def raw_exchange(path: str, data: bytes | None, *, shut_wr: bool = False) -> tuple[bytes, bytes, bytes]:
    """Greeting line, reply line and whatever follows (must be nothing: one request per connection)."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        greeting = await reader.readline()
        if data is not None:
            writer.write(data)
            await writer.drain()
        if shut_wr:
            writer.write_eof()
        reply = await asyncio.wait_for(reader.readline(), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
        return greeting, reply, rest
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def run_ctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(ctl.main, list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


# ---- wire protocol ---------------------------------------------------------------------------------------


async def test_greeting_then_one_request_per_connection(sock: str) -> None:
    async with serving(StubDaemon(sock)):
        greeting, reply, rest = await raw_exchange(sock, b'{"command":"ping","params":{}}\n')
    assert greeting == b'{"version":"' + __version__.encode() + b'"}\n'
    assert reply == b'{"status":"ok","response":{"pong":"pong"}}\n'
    assert rest == b""  # the server closes after the reply


async def test_request_without_newline_is_parsed_at_eof(sock: str) -> None:
    async with serving(StubDaemon(sock)):
        _, reply, _ = await raw_exchange(sock, b'{"command":"ping"}', shut_wr=True)
    assert json.loads(reply) == {"status": "ok", "response": {"pong": "pong"}}


@pytest.mark.parametrize(("line", "error"), [
    (b'{"command":"no_such_thing","params":{}}\n', "Unsupported command"),
    (b'{"params":{}}\n', "Unsupported command"),
    (b'{"command":42}\n', "Unsupported command"),
    (b'{"command": "ping", \n', "Syntax error"),
    (b"not json at all\n", "Syntax error"),
    (b"[1, 2, 3]\n", "Syntax error"),
    (b"\xff\xfe\n", "Syntax error"),
    (b'{"command":"ping","params":[1]}\n', "Invalid params: expected an object"),
])
async def test_malformed_requests_get_failed_replies(sock: str, line: bytes, error: str) -> None:
    async with serving(StubDaemon(sock)):
        _, reply, rest = await raw_exchange(sock, line)
    assert json.loads(reply) == {"status": "failed", "error": error}
    assert rest == b""


async def test_oversized_request_is_refused_and_server_keeps_serving(sock: str) -> None:
    async with serving(StubDaemon(sock), max_request=64 * 1024):
        reply = await acall("ping", {"junk": "x" * (200 * 1024)}, socket_path=sock)
        assert reply == Reply("failed", error="Request too large", version=__version__)
        # the default limit is 1 MiB
    async with serving(StubDaemon(sock)):
        reply = await acall("ping", {"junk": "x" * (1024 * 1024 + 10)}, socket_path=sock)
        assert reply.error == "Request too large"
        reply = await acall("ping", {"junk": "x" * (512 * 1024)}, socket_path=sock)
        assert reply.ok
        assert await arequest("ping", socket_path=sock) == {"pong": "pong"}


async def test_silent_client_is_dropped_while_others_are_served(sock: str) -> None:
    async with serving(StubDaemon(sock), idle_timeout=0.6):
        reader, writer = await asyncio.open_unix_connection(sock)
        assert json.loads(await reader.readline()) == {"version": __version__}
        started = time.monotonic()
        for _ in range(3):  # served at once although the silent client holds its connection
            assert await arequest("ping", socket_path=sock, timeout=2) == {"pong": "pong"}
        assert time.monotonic() - started < 0.5
        reply = await asyncio.wait_for(reader.readline(), 3)
        waited = time.monotonic() - started
        assert json.loads(reply) == {"status": "failed", "error": "Request timeout"}
        assert await reader.read() == b""  # dropped
        assert 0.4 < waited < 2.5
        writer.close()


async def test_too_many_clients_are_turned_away(sock: str) -> None:
    async with serving(StubDaemon(sock), max_clients=2, idle_timeout=5):
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_unix_connection(sock)
            await reader.readline()
            held.append(writer)
        reply = await acall("ping", socket_path=sock, timeout=2)
        assert reply == Reply("failed", error="Too many clients")
        for w in held:
            w.close()
        await asyncio.sleep(0.1)
        assert (await acall("ping", socket_path=sock)).ok


async def test_failing_command_gives_failed_reply_and_server_survives(sock: str) -> None:
    async def boom(daemon: Any, params: dict[str, Any]) -> None:
        raise RuntimeError("kaboom: " + str(params.get("why")))

    async def refuse(daemon: Any, params: dict[str, Any]) -> None:
        raise CommandFailed({"cmd": "zfs list", "exitstatus": 1, "error": "no pool"})

    async def unencodable(daemon: Any, params: dict[str, Any]) -> Any:
        return {"value": float("nan"), "obj": object()}

    commands = {**COMMANDS, "boom": boom, "refuse": refuse, "weird": unencodable}
    async with serving(StubDaemon(sock), commands=commands):
        assert await acall("boom", {"why": "test"}, socket_path=sock) == Reply(
            "failed", error="kaboom: test", version=__version__)
        reply = await acall("refuse", socket_path=sock)
        assert reply.error == {"cmd": "zfs list", "exitstatus": 1, "error": "no pool"}
        assert reply.error_message == "no pool"
        assert (await acall("weird", socket_path=sock)).ok  # str() of unknown objects, NaN as JSON allows
        with pytest.raises(CommandError, match="kaboom"):
            await arequest("boom", socket_path=sock)
        assert await arequest("ping", socket_path=sock) == {"pong": "pong"}


async def test_concurrent_clients(sock: str) -> None:
    async with serving(StubDaemon(sock)):
        replies = await asyncio.gather(*(arequest("ping", socket_path=sock) for _ in range(40)))
    assert replies == [{"pong": "pong"}] * 40


# ---- hostile input: never blocks the daemon or the other clients ------------------------------------------


async def ping_time(path: str) -> float:
    started = time.monotonic()
    assert await arequest("ping", socket_path=path, timeout=5) == {"pong": "pong"}
    return time.monotonic() - started


async def test_a_10_mib_line_is_refused_while_others_are_served(sock: str) -> None:
    async with serving(StubDaemon(sock)) as server:
        reader, writer = await asyncio.open_unix_connection(sock)
        await reader.readline()

        async def flood() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(10):  # 10 MiB of one line, never a newline until the end
                    writer.write(b"x" * (1024 * 1024))
                    await writer.drain()
                writer.write(b"\n")
                await writer.drain()

        sender = asyncio.create_task(flood())
        assert await ping_time(sock) < 1.0
        reply = await asyncio.wait_for(reader.readline(), 10)
        assert json.loads(reply) == {"status": "failed", "error": "Request too large"}
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and the connection is closed
        await asyncio.wait_for(sender, 10)
        writer.close()
        await wait_for(lambda: not server._clients)


async def test_a_trickling_client_is_cut_at_the_deadline(sock: str) -> None:
    """One byte every 50 ms keeps the connection busy but never completes a line: the deadline is for the
    whole request, not per byte."""
    async with serving(StubDaemon(sock), idle_timeout=0.6):
        reader, writer = await asyncio.open_unix_connection(sock)
        await reader.readline()
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b'{"command": "ping", "params": {"padding": "' + b"x" * 200:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

        sender = asyncio.create_task(trickle())
        assert await ping_time(sock) < 0.5
        reply = await asyncio.wait_for(reader.readline(), 5)
        assert json.loads(reply) == {"status": "failed", "error": "Request timeout"}
        assert 0.5 < time.monotonic() - started < 2.0
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


@pytest.mark.parametrize("line", [
    bytes(range(256)) + b"\n",                       # every byte value, NUL included
    b"\x00" * 4096 + b"\n",
    b'{"command":"ping","params":' + b"[" * 100_000 + b"\n",  # nesting deeper than the parser's recursion
    b'{"command":"ping","params":{"a":' * 20_000 + b"\n",
])
async def test_garbage_gets_syntax_error(sock: str, line: bytes) -> None:
    async with serving(StubDaemon(sock)):
        _, reply, rest = await raw_exchange(sock, line)
        assert json.loads(reply) == {"status": "failed", "error": "Syntax error"} and rest == b""
        assert await arequest("ping", socket_path=sock) == {"pong": "pong"}


async def test_clients_that_connect_and_leave_or_stay_silent(sock: str) -> None:
    async with serving(StubDaemon(sock), idle_timeout=30) as server:
        for _ in range(20):  # greeting read, then gone without a word: no reply, nothing left behind
            reader, writer = await asyncio.open_unix_connection(sock)
            await reader.readline()
            writer.close()
        silent = [await asyncio.open_unix_connection(sock) for _ in range(30)]  # connected, never send
        started = time.monotonic()
        replies = await asyncio.gather(*(arequest("ping", socket_path=sock, timeout=5) for _ in range(30)))
        assert replies == [{"pong": "pong"}] * 30 and time.monotonic() - started < 2.0
        assert len(server._clients) == 30  # only the silent ones are still held
        for _, w in silent:
            w.close()
        await wait_for(lambda: not server._clients)


# ---- the socket file -------------------------------------------------------------------------------------


async def test_socket_mode_is_0600_whatever_the_umask(sock: str) -> None:
    old = os.umask(0)
    try:
        async with serving(StubDaemon(sock)):
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    finally:
        os.umask(old)
    assert os.umask(old) == old  # restored by the server as well


async def test_socket_mode_0600_owner_and_removal(sock: str) -> None:
    async with serving(StubDaemon(sock)) as server:
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        assert server.listening
    assert not os.path.exists(sock)


async def test_stale_socket_is_replaced(sock: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock)
    s.close()  # the file stays, nobody listens
    assert os.path.exists(sock)
    async with serving(StubDaemon(sock)):
        assert await arequest("ping", socket_path=sock) == {"pong": "pong"}


async def test_live_socket_and_other_files_are_not_taken_over(sock: str, sock_dir: Path) -> None:
    async with serving(StubDaemon(sock)):
        with pytest.raises(ControlError, match="another process is listening"):
            await ControlServer(StubDaemon(sock)).start()
        assert await arequest("ping", socket_path=sock) == {"pong": "pong"}
    regular = sock_dir / "file"
    regular.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        await ControlServer(StubDaemon(str(regular))).start()
    assert regular.read_text() == "keep me"


async def test_serve_runs_until_cancelled_and_logs_setup_errors(sock: str, sock_dir: Path) -> None:
    task = asyncio.create_task(ControlServer(StubDaemon(sock)).serve())
    for _ in range(100):
        if os.path.exists(sock):
            break
        await asyncio.sleep(0.01)
    assert await arequest("ping", socket_path=sock) == {"pong": "pong"}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not os.path.exists(sock)
    # a socket that cannot be created: serve() returns (logged), the daemon goes on
    bad = str(sock_dir / "missing-dir" / "ctl.sock")
    await asyncio.wait_for(ControlServer(StubDaemon(bad)).serve(), 2)


# ---- commands on a stub daemon ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cmd", "code"), [("stop", 100), ("restart", 150)])
async def test_stop_and_restart_schedule_the_v2_exit_code(sock: str, cmd: str, code: int) -> None:
    daemon = StubDaemon(sock, engine=StubEngine())
    async with serving(daemon):
        assert await arequest(cmd, {"force": False}, socket_path=sock) is None
        assert (daemon.exit_code, daemon.stop_requests) == (code, 1)  # type: ignore[attr-defined]
        assert not getattr(daemon, "force_stop", False)
        await arequest(cmd, {"force": True}, socket_path=sock)
        assert daemon.force_stop is True  # type: ignore[attr-defined]
        status = await arequest("status", socket_path=sock)
        assert status["state"] == {"run": False, "pause": None, "status": code}
        reply = await acall(cmd, {"force": "maybe"}, socket_path=sock)
        assert reply.error == "force must be a boolean, got 'maybe'"


async def test_resume_cancels_a_pending_stop_when_the_daemon_can(sock: str) -> None:
    daemon = CancellableDaemon(sock, engine=StubEngine())
    async with serving(daemon):
        await arequest("stop", {"force": True}, socket_path=sock)
        await arequest("resume", socket_path=sock)
        assert daemon.cancelled == 1
        assert (daemon.exit_code, daemon.force_stop) == (0, False)  # type: ignore[attr-defined]
    plain = StubDaemon(sock, engine=StubEngine())  # no cancel_stop(): the stop goes on
    async with serving(plain):
        await arequest("stop", socket_path=sock)
        await arequest("resume", socket_path=sock)
        assert plain.exit_code == 100  # type: ignore[attr-defined]


async def test_pause_and_resume(sock: str) -> None:
    engine = StubEngine()
    async with serving(StubDaemon(sock, engine=engine)):
        assert await arequest("pause", {"t_id": 1234}, socket_path=sock) is None
        assert (engine.paused, engine.pause_after) == (False, 1234)
        assert (await arequest("status", socket_path=sock))["state"] == {"run": True, "pause": 1234, "status": 0}
        await arequest("pause", {"t_id": None}, socket_path=sock)
        assert (engine.paused, engine.pause_after) == (True, None)
        assert (await arequest("status", socket_path=sock))["state"] == {"run": False, "pause": True, "status": 0}
        await arequest("resume", socket_path=sock)
        assert (engine.paused, engine.pause_after, engine.woken) == (False, None, 1)
        await arequest("pause", {"t_id": "77"}, socket_path=sock)
        assert engine.pause_after == 77
        for bad in (0, -1, "x", True, 1.5):
            reply = await acall("pause", {"t_id": bad}, socket_path=sock)
            assert not reply.ok and "t_id must be a positive integer" in reply.error_message
    async with serving(StubDaemon(sock)):
        assert (await acall("pause", socket_path=sock)).error == "the engine is not running"


async def test_reload(sock: str, sock_dir: Path) -> None:
    path = sock_dir / "vpsadmind.yml"
    path.write_text(":db:\n  :hosts: [127.0.0.1]\n:vpsadmin:\n  :server_id: 7\n  :check_interval: 3\n")
    daemon = StubDaemon(sock, config_path=str(path))
    async with serving(daemon):
        assert await arequest("reload", socket_path=sock) is None
        assert daemon.config.check_interval == 3.0
        path.write_text(":db:\n  :hosts: [127.0.0.1]\n:vpsadmin:\n  :server_id: 7\n  :no_such_key: 1\n")
        reply = await acall("reload", socket_path=sock)
        assert not reply.ok and "no_such_key" in reply.error_message and "unknown key" in reply.error_message
        assert daemon.reloads == 1  # a bad file never reaches the daemon
        daemon.reload = lambda: None  # type: ignore[method-assign]  # a daemon that keeps its config
        path.write_text(":db:\n  :hosts: [127.0.0.1]\n:vpsadmin:\n  :server_id: 7\n")
        reply = await acall("reload", socket_path=sock)
        assert reply.error == "the configuration was not reloaded, see the daemon log"


async def test_get_config_masks_secrets_and_unknown_resource(sock: str) -> None:
    async with serving(StubDaemon(sock)):
        config = (await arequest("get", {"resource": "config"}, socket_path=sock))["config"]
        assert config["db"]["pass"] == "***"
        assert config["mqtt"]["password"] == "***"
        assert config["mqtt"]["username"] is None  # null stays null
        assert config["db"]["user"] == "vpsadmin"
        assert config["vpsadmin"]["server_id"] == 7
        assert config["remote"]["socket"] == "/var/run/vpsadmind.sock"
        assert (await acall("get", {"resource": "ip_map"}, socket_path=sock)).error == "Unknown resource ip_map"
        assert (await acall("get", socket_path=sock)).error == "Unknown resource None"


async def test_status_without_engine(sock: str) -> None:
    async with serving(StubDaemon(sock)):
        status = await arequest("status", socket_path=sock)
    assert status["state"] == {"run": True, "pause": None, "status": 0}
    assert status["queues"] == {} and status["queue_size"] is None


# ---- against a real engine -------------------------------------------------------------------------------


def engine_config(db_settings: TestDbSettings, database: str, tmp_path: Path, sock: str) -> Config:
    cfg = make_config(db_settings, database, journal=str(tmp_path / "journal"))
    return dataclasses.replace(cfg, remote_socket=sock)


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


async def test_status_shape_with_running_engine(db: Any, db_settings: TestDbSettings, test_database: str,
                                                tmp_path: Path, sock: str) -> None:
    cfg = engine_config(db_settings, test_database, tmp_path, sock)
    async with running_engine(cfg) as engine, serving(StubDaemon(sock, engine=engine)):
        daemon_cfg = cfg
        assert daemon_cfg.remote_socket == sock
        fired = await (ChainBuilder("slow").append(PROBE, server=1, params={"sleep": 1.0})
                       .append(PROBE, server=1).fire(db))
        await wait_for(lambda: fired.chain_id in engine.running)
        status = await arequest("status", socket_path=sock)
        assert set(status) >= {"state", "queues", "export_console", "consoles", "subprocesses",
                               "delayed_mounts", "start_time", "queue_size"}
        assert status["state"] == {"run": True, "pause": None, "status": 0}
        assert status["export_console"] is False
        assert status["consoles"] == {} and status["delayed_mounts"] == {} and status["subprocesses"] == {}
        assert abs(status["start_time"] - time.time()) < 60
        assert status["queue_size"] == 1  # the chain's second transaction
        general = status["queues"]["general"]
        assert {k: general[k] for k in ("threads", "urgent", "start_delay", "started")} == {
            "threads": 6, "urgent": 6, "start_delay": 0, "started": True}
        worker = general["workers"][str(fired.chain_id)]
        assert worker["id"] == fired.transaction_ids[0]
        assert worker["type"] == PROBE and worker["handler"] == "Probe"
        assert worker["step"] is None and worker["pid"] is None
        assert abs(worker["start"] - time.time()) < 10
        zfs_send = status["queues"]["zfs_send"]
        assert zfs_send["started"] is False and zfs_send["start_delay"] == 4 * 3600
        assert 0 < zfs_send["opens_in"] <= 4 * 3600
        assert zfs_send["workers"] == {}

        rc, out, err = await run_ctl("-s", sock, "status")
        assert rc == 0, err
        assert "     State: running" in out
        assert "Queue size: 1" in out
        assert "   general  1 / 6 (+6)" in out
        assert "  zfs_send  0 / 1 (+0) opens in 03:5" in out
        assert f"   Version: {__version__}" in out

        rc, out, _ = await run_ctl("status", "-w", "-s", sock)
        assert rc == 0
        header, row = out.splitlines()[:2]
        assert header.split()[:5] == ["QUEUE", "CHAIN", "TRANS", "HANDLER", "TYPE"]
        assert row.split()[:6] == ["general", str(fired.chain_id), str(fired.transaction_ids[0]), "Probe",
                                   str(PROBE), "execute"]
        rc, out, _ = await run_ctl("status", "-w", "-H", "-s", sock)
        assert out.splitlines()[0].split()[0] == "general"

        rc, out, _ = await run_ctl("-p", "-s", sock, "status")
        assert rc == 0 and json.loads(out)["queues"]["general"]["workers"][str(fired.chain_id)]["id"] == \
            fired.transaction_ids[0]
        await wait_chain(db, fired.chain_id)


async def test_pause_get_queue_and_resume(db: Any, db_settings: TestDbSettings, test_database: str,
                                          tmp_path: Path, sock: str) -> None:
    cfg = engine_config(db_settings, test_database, tmp_path, sock)
    async with running_engine(cfg) as engine, serving(StubDaemon(sock, engine=engine)):
        rc, out, _ = await run_ctl("-s", sock, "pause")
        assert (rc, out, engine.paused) == (0, "Paused\n", True)
        rc, out, _ = await run_ctl("-s", sock, "status")
        assert "     State: paused" in out
        before = int(time.time())
        a = await (ChainBuilder("a", user_id=5).append(PROBE, server=1, vps=101, params={"n": 1}, urgent=True,
                                                      priority=3).append(PROBE, server=1).fire(db))
        b = await ChainBuilder("b").append(PROBE, server=1, queue="storage").fire(db)
        other = await ChainBuilder("elsewhere").append(PROBE, server=2).fire(db)
        queue = (await arequest("get", {"resource": "queue", "limit": 50}, socket_path=sock))["queue"]
        assert [t["id"] for t in queue] == [a.transaction_ids[0], b.transaction_ids[0]]  # priority desc, id asc
        first = queue[0]
        assert {k: first[k] for k in ("id", "chain", "state", "type", "m_id", "vps_id", "depends_on", "fallback",
                                      "urgent", "priority")} == {
            "id": a.transaction_ids[0], "chain": a.chain_id, "state": 1, "type": PROBE, "m_id": 5,
            "vps_id": 101, "depends_on": 0, "fallback": None, "urgent": True, "priority": 3}
        assert json.loads(first["params"]) == {"n": 1}
        assert before - 2 <= first["time"] <= time.time() + 2
        assert queue[1]["queue"] == "storage" and queue[1]["m_id"] == 0 and queue[1]["urgent"] is False
        assert other.chain_id not in {t["chain"] for t in queue}
        limited = (await arequest("get", {"resource": "queue", "limit": 1}, socket_path=sock))["queue"]
        assert [t["id"] for t in limited] == [a.transaction_ids[0]]
        status = await arequest("status", socket_path=sock)
        assert status["queue_size"] == 3 and status["state"]["pause"] is True

        rc, out, _ = await run_ctl("-s", sock, "get", "queue")
        lines = out.splitlines()
        assert lines[0].split()[:4] == ["ID", "CHAIN", "STATE", "TYPE"]
        assert [line.split()[0] for line in lines[1:]] == [str(a.transaction_ids[0]), str(b.transaction_ids[0])]
        rc, out, _ = await run_ctl("-s", sock, "get", "queue", "-l", "1", "-H")
        assert [line.split()[0] for line in out.splitlines()] == [str(a.transaction_ids[0])]
        rc, out, _ = await run_ctl("-p", "-s", sock, "get", "queue")
        assert [t["id"] for t in json.loads(out)] == [a.transaction_ids[0], b.transaction_ids[0]]

        rc, out, _ = await run_ctl("-s", sock, "pause", "123")
        assert (rc, out) == (0, "Pause scheduled\n")
        rc, out, _ = await run_ctl("-s", sock, "resume")
        assert (rc, out) == (0, "Resumed\n")
        assert engine.paused is False and engine.pause_after is None  # type: ignore[attr-defined]
        assert (await wait_chain(db, a.chain_id))["state"] == 2
        assert (await wait_chain(db, b.chain_id))["state"] == 2
        assert (await arequest("get", {"resource": "queue"}, socket_path=sock))["queue"] == []


# ---- init, flush, reinit ---------------------------------------------------------------------------------


class FakeNetwork:
    """Records what the commands ask of the node's Network and answers as :class:`Network` does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail: Exception | None = None

    async def _do(self, op: str, resources: Any) -> dict[str, Any]:
        self.calls.append((op, list(resources)))
        if self.fail is not None:
            raise self.fail
        res = {"fw", "shaper"} if "all" in resources else set(resources)
        out: dict[str, Any] = {}
        if "fw" in res:
            out["fw"] = {4: 2, 6: None} if op == "init" else {4: True, 6: False} if op == "flush" else {4: 2, 6: 0}
        if "shaper" in res:
            out["shaper"] = True
        return out

    async def init(self, resources: Any) -> dict[str, Any]:
        return await self._do("init", resources)

    async def flush(self, resources: Any) -> dict[str, Any]:
        return await self._do("flush", resources)

    async def reinit(self, resources: Any) -> dict[str, Any]:
        return await self._do("reinit", resources)


class StubCtx:
    def __init__(self, config: Config) -> None:
        self.config = config


def network_daemon(sock: str) -> tuple[StubDaemon, FakeNetwork]:
    from vpsadmind.firewall.services import install

    engine = StubEngine()
    daemon = StubDaemon(sock, engine=engine)
    engine.ctx = StubCtx(daemon.config)  # type: ignore[attr-defined]
    network = FakeNetwork()
    install(engine.ctx, network)  # type: ignore[attr-defined, arg-type]
    return daemon, network


async def test_init_flush_reinit_answer_as_v2(sock: str) -> None:
    daemon, network = network_daemon(sock)
    async with serving(daemon):
        assert await arequest("init", {"resources": ["fw", "shaper"]}, socket_path=sock) == {
            "fw": {"4": 2, "6": None}, "shaper": True}
        assert await arequest("flush", {"resources": ["fw"]}, socket_path=sock) == {"fw": {"4": True, "6": False}}
        assert await arequest("reinit", {"resources": "shaper"}, socket_path=sock) == {"shaper": True}
        assert network.calls == [("init", ["fw", "shaper"]), ("flush", ["fw"]), ("reinit", ["shaper"])]
        for bad, error in ((None, "non-empty list"), ([], "non-empty list"), (["fw", 4], "non-empty list"),
                           (["disk"], "unknown resources ['disk']"), ({"fw": 1}, "non-empty list")):
            reply = await acall("reinit", {"resources": bad}, socket_path=sock)
            assert not reply.ok and error in reply.error_message, (bad, reply)
        assert len(network.calls) == 3  # refused before the Network was asked
        network.fail = SystemCommandFailed(["iptables-restore", "-w", "30", "--noflush"], 2, "",
                                           "iptables-restore: line 3 failed")
        reply = await acall("reinit", {"resources": ["fw"]}, socket_path=sock)
        assert reply.error == {"cmd": "iptables-restore -w 30 --noflush", "exitstatus": 2,
                               "error": "iptables-restore: line 3 failed"}
    async with serving(StubDaemon(sock)):  # no engine yet (the daemon still waits for the database)
        reply = await acall("init", {"resources": ["fw"]}, socket_path=sock)
        assert not reply.ok and "engine is not running" in reply.error_message


async def test_ctl_init_flush_reinit(sock: str) -> None:
    daemon, network = network_daemon(sock)
    async with serving(daemon):
        assert await run_ctl("-s", sock, "init", "all") == (0, "Initialized\nFirewall  ...  ok\nShaper  ...  ok\n", "")
        assert await run_ctl("-s", sock, "flush", "shaper") == (0, "Flushed\nShaper  ...  ok\n", "")
        assert await run_ctl("reinit", "fw", "fw", "-s", sock) == (0, "Reinitialized\nFirewall  ...  ok\n", "")
        rc, out, _ = await run_ctl("-p", "-s", sock, "reinit", "fw", "shaper")
        assert (rc, json.loads(out)) == (0, {"fw": {"4": 2, "6": 0}, "shaper": True})
        # v2.0's ctl sends both resources for "all"; duplicates are sent once
        assert network.calls == [("init", ["fw", "shaper"]), ("flush", ["shaper"]), ("reinit", ["fw"]),
                                 ("reinit", ["fw", "shaper"])]
        network.fail = SystemCommandFailed(["tc", "-force", "-batch", "-"], 1, "",
                                           "RTNETLINK answers: Invalid argument")
        rc, out, err = await run_ctl("-s", sock, "reinit", "shaper")
        assert (rc, out, err) == (1, "", "Command error: RTNETLINK answers: Invalid argument\n")
    for argv in (["init"], ["flush", "disk"], ["reinit", "fw", "-x"]):
        rc, out, _ = await run_ctl("-s", sock, *argv)
        assert (rc, out) == (1, "")
    assert len(network.calls) == 5


# ---- vpsadmindctl ----------------------------------------------------------------------------------------


async def test_ctl_commands_and_exit_codes(sock: str) -> None:
    daemon = StubDaemon(sock, engine=StubEngine())
    async with serving(daemon):
        assert await run_ctl("-s", sock, "ping") == (0, "pong\n", "")
        assert await run_ctl("ping", "-p", "--socket", sock) == (0, '{"pong": "pong"}\n', "")
        rc, out, _ = await run_ctl("-s", sock, "get", "config", "db.pass")
        assert (rc, out) == (0, "***\n")
        rc, out, _ = await run_ctl("-s", sock, "get", "config", "vpsadmin.queues.zfs_send")
        assert rc == 0 and "start_delay: 14400" in out
        rc, out, _ = await run_ctl("-p", "-s", sock, "get", "config")
        assert rc == 0 and json.loads(out)["db"]["pass"] == "***"
        rc, _, err = await run_ctl("-s", sock, "get", "config", "no.such.key")
        assert rc == 1 and "Command error: no such key in the configuration: no.such.key" in err
        rc, out, _ = await run_ctl("-s", sock, "restart")
        assert (rc, out, daemon.exit_code) == (0, "Restart scheduled\n", 150)  # type: ignore[attr-defined]
        rc, out, _ = await run_ctl("-s", sock, "stop", "-f")
        assert (rc, out, daemon.exit_code, daemon.force_stop) == (  # type: ignore[attr-defined]
            0, "Stop scheduled\n", 100, True)
        rc, out, _ = await run_ctl("-s", sock, "status")
        assert "     State: finishing, going to stop" in out
        # a failed reply: exit 1 and "Command error: ..."
        rc, out, err = await run_ctl("-s", sock, "reload")
        assert rc == 1 and out == "" and err.startswith("Command error: ") and "does not exist" in err
        rc, _, err = await run_ctl("-s", sock, "pause", "abc")
        assert rc == 1 and "invalid transaction id" in err
    rc, out, err = await run_ctl("-s", sock, "status")
    assert rc == 1 and out == ""
    assert err.endswith("Command error: Cannot connect to vpsAdmind\n")
    assert "Are you sure that vpsAdmind is running" in err


async def test_ctl_usage() -> None:
    rc, out, err = await run_ctl()
    assert rc == 1 and "No command specified" in err
    rc, _, _ = await run_ctl("no-such-command")
    assert rc == 1
    rc, _, _ = await run_ctl("get")
    assert rc == 1


def test_ctl_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["-v"]) == 0
    assert capsys.readouterr().out.strip() == __version__


def test_ctl_format_duration() -> None:
    assert ctl.format_duration(0) == "00:00:00"
    assert ctl.format_duration(3 * 3600 + 61) == "03:01:01"
    assert ctl.format_duration(2 * 86400 + 5) == "2 days, 00:00:05"


def test_sync_client_cannot_connect(sock: str) -> None:
    with pytest.raises(ConnectError, match="^Cannot connect to vpsAdmind$") as info:
        call("ping", socket_path=sock)
    assert "No such file or directory" in info.value.reason


def test_ctl_console_script_without_daemon(sock: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "vpsadmind.ctl", "-s", sock, "status"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == "Command error: Cannot connect to vpsAdmind"


# ---- the control socket in a real daemon process ---------------------------------------------------------


async def test_ctl_stop_drains_and_resume_cancels_it(db: Any, db_settings: Any, test_database: str,
                                                      tmp_path: Path) -> None:
    from vpsadmind.testing.chains import ChainBuilder
    from vpsadmind.testing.engine import wait_chain
    from vpsadmind.testing.process import DaemonProcess, write_config

    sock = tmp_path / "ctl.sock"
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=1, journal=tmp_path / "j",
                       control_socket=sock)
    d = DaemonProcess(cfg, tmp_path / "d.log").start()
    try:
        fired = await ChainBuilder().append(90001, server=1, params={"sleep": 1.0}).fire(db)
        d.wait_for_event("transaction_start")
        assert ctl.main(["-s", str(sock), "stop"]) == 0
        d.wait_for_event("stop_pending")
        late = await ChainBuilder().append(10001, server=1).fire(db)
        assert ctl.main(["-s", str(sock), "resume"]) == 0
        d.wait_for_event("stop_cancelled")
        assert (await wait_chain(db, fired.chain_id))["state"] == 2
        assert (await wait_chain(db, late.chain_id))["state"] == 2
        assert ctl.main(["-s", str(sock), "restart"]) == 0
        assert await asyncio.to_thread(d.wait, 20) == 150
    finally:
        d.kill()


async def test_status_shows_transfer_progress(sock: str) -> None:
    from types import SimpleNamespace

    from vpsadmind.progress import ProgressBoard

    engine = StubEngine()
    board = ProgressBoard()
    engine.ctx = SimpleNamespace(progress=board)  # type: ignore[attr-defined]
    p = board.open("send", chain_id=12, transaction_id=34, label="tank/101@s -> 127.0.0.3:10000",
                   total=256 * 1048576)
    p.add(64 * 1048576)
    async with serving(StubDaemon(sock, engine=engine)):
        rc, summary, _ = await run_ctl("-s", sock, "status")
        assert rc == 0 and " Transfers: 1" in summary
        rc, listing, _ = await run_ctl("-s", sock, "status", "-T")
        assert rc == 0
        header, row = listing.splitlines()
        assert header.split()[:4] == ["KIND", "CHAIN", "TRANS", "PROGRESS"]
        assert row.split()[:3] == ["send", "12", "34"]
        assert "64.0 MiB / 256.0 MiB" in row and "MiB/s" in row and "left" in row
        assert row.endswith("tank/101@s -> 127.0.0.3:10000")
        rc, parsable, _ = await run_ctl("-s", sock, "-p", "status")
        assert json.loads(parsable)["transfers"][0]["bytes"] == 64 * 1048576
