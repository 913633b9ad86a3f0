"""Hostile requests on the control socket of a real :class:`~vpsadmind.daemon.Daemon` (issue 9, item 3).

Hypothesis sends JSON objects with real command names and hostile params, objects of the wrong shape, random
bytes and overlong lines. Every request must get exactly one reply line (``ok`` or ``failed`` with an error)
after the greeting; a failed request must leave the daemon's configuration, pause state and running
transactions as they were (a ``set config`` with bad values changes nothing, a ``kill`` with a hostile id kills
nothing); and ``status`` must still answer afterwards. A probe transaction sleeps in a worker the whole time, so
that ``kill`` has something it must not kill. ``stop``, ``restart`` and ``update`` only get params of a wrong
type (a valid one would legitimately stop the daemon under test).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.harness import count, fuzz_settings
from tests.fuzz.mutate import hostile_text, wrong_typed
from tests.test_control import raw_exchange
from tests.test_control_ops import Running, daemon_running, wait_for
from vpsadmind.control import arequest
from vpsadmind.control.commands import COMMANDS
from vpsadmind.control.protocol import MAX_REQUEST
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.handlers import PROBE
from vpsadmind.testing.process import write_config

STOPPING = ("stop", "restart", "update")
SAFE = sorted(set(COMMANDS) - set(STOPPING))
KEYS = ("resource", "config", "force", "id", "ids", "transactions", "chain", "chains", "vps_id", "mount_id", "id",
        "state", "type", "all", "dst", "mounts", "confirm", "release", "direction", "success")
hostile_params = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(KEYS), hostile_text), wrong_typed, max_size=4),
    st.fixed_dictionaries({"resource": st.sampled_from(["config", "chain", "queue", "x"]),
                           "config": st.one_of(wrong_typed, st.lists(st.dictionaries(
                               st.sampled_from(["vpsadmin", "db", "mailer", "queues", "bin", "x"]),
                               st.dictionaries(st.one_of(st.sampled_from(
                                   ["check_interval", "server_id", "queues", "threads", "smtp_port", "iptables"]),
                                   hostile_text), wrong_typed, max_size=2), max_size=2), max_size=2))}),
    st.fixed_dictionaries({"transactions": st.lists(st.one_of(st.integers(), hostile_text), max_size=3)}),
)
requests = st.one_of(
    st.builds(lambda c, p: {"command": c, "params": p}, st.sampled_from(SAFE), hostile_params),
    st.builds(lambda c, p: {"command": c, "params": p}, st.sampled_from(STOPPING),
              st.one_of(hostile_text, st.lists(st.booleans(), max_size=2), st.integers(), st.booleans())),
    st.builds(lambda c, p: {"command": c, "params": p}, wrong_typed, wrong_typed),
    st.dictionaries(hostile_text, wrong_typed, max_size=3),
).map(lambda obj: json.dumps(obj).encode() + b"\n")
lines = st.one_of(
    requests, requests, requests,
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"") + b"\n"),
    st.sampled_from([b"\n", b"\x00\n", b"[]\n", b"null\n", b'"status"\n', b"{\n", b'{"command":"status"}}\n',
                     b"\xff\xfe{}\n", b'{"command":"status","params":[]}\n', b'{"command":null}\n']),
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A UNIX socket path must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fzc"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture
async def daemon(db: Any, db_settings: TestDbSettings, test_database: str, short_dir: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Running, int]]:
    # the daemon's network commands (init, flush, reinit) must never reach the machine's own firewall
    path = write_config(short_dir / "d.yml", db_settings, test_database, server_id=1, journal=short_dir / "j",
                        bin={"iptables": "/bin/false", "ip6tables": "/bin/false", "tc": "/bin/false"})
    async with daemon_running(path, monkeypatch) as d:
        fired = await ChainBuilder("sleeper").append(PROBE, server=1, params={"sleep": 120}).fire(db)
        await wait_for(lambda: bool(d.running_ids()))
        yield d, fired.transaction_ids[0]
        with contextlib.suppress(Exception):
            await arequest("kill", {"transactions": [fired.transaction_ids[0]]}, socket_path=d.sock)


def state_of(d: Running) -> tuple[Any, ...]:
    return (d.daemon.config, d.running_ids(), d.engine.paused, d.engine.pause_after,
            getattr(d.daemon, "exit_code", None))


async def exchange(sock: str, line: bytes) -> dict[str, Any]:
    greeting, reply, rest = await raw_exchange(sock, line)
    assert json.loads(greeting).keys() == {"version"}, greeting
    assert reply.endswith(b"\n") and rest == b"", (reply, rest)
    obj = json.loads(reply)
    assert obj.get("status") in ("ok", "failed"), obj
    if obj["status"] == "failed":
        error = obj.get("error")
        assert (isinstance(error, str) and error) or (isinstance(error, dict) and error.get("error")), obj
    return dict(obj)


@fuzz_settings(40)
@given(batch=st.lists(lines, min_size=1, max_size=5))
@example(batch=[b'{"command":"ping","params":{"x":"' + b"a" * (MAX_REQUEST + 10) + b'"}}\n'])
@example(batch=[b'{"command":"set","params":{"resource":"config","config":[{"vpsadmin":{"check_interval":"x"}}]}}\n',
                b'{"command":"kill","params":{"transactions":["1; rm -rf /", -1, 99999999999999999999]}}\n',
                b'{"command":"stop","params":[true]}\n'])
async def test_hostile_requests(daemon: tuple[Running, int], batch: list[bytes]) -> None:
    d, sleeper = daemon
    for line in batch:
        before = state_of(d)
        reply = await exchange(d.sock, line)
        count("control:requests")
        count(f"control:{reply['status']}")
        if reply["status"] == "failed":
            assert state_of(d) == before, f"{line[:200]!r} failed ({reply}) but changed the daemon"
        if d.engine.paused or d.engine.pause_after is not None:  # a valid pause: undo it for the next line
            await arequest("resume", socket_path=d.sock)
    assert sleeper in d.running_ids(), "a hostile request killed the running transaction"
    status = await arequest("status", socket_path=d.sock, timeout=5)
    assert status["state"]["run"] in (True, False) and not d.task.done()
