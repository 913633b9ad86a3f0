"""The operations commands of contract 6.2 end to end: ``vpsadmindctl`` (in a worker thread) against a
:class:`~vpsadmind.daemon.Daemon` running in the test's loop on MariaDB, with real transactions in flight.

kill, pause/resume, refresh, update, set config, chain confirmations/confirm/release, delayed_mount and
mount_state; the real-process variants (kill and stop through the socket of a ``vpsadmind`` process) are in
tests/test_daemon.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shlex
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from tests.engine_helpers import fetch, output
from vpsadmind import ctl
from vpsadmind.control import acall, arequest
from vpsadmind.control.commands import lifecycle
from vpsadmind.daemon import Daemon
from vpsadmind.testing.chains import ChainBuilder, Confirmation, register_node
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import transactions_of, wait_chain
from vpsadmind.testing.handlers import PROBE, read_effects
from vpsadmind.testing.process import write_config

pytestmark = pytest.mark.slow


async def run_ctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(ctl.main, list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


async def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


class Running:
    """A daemon of server 1 in this loop; ``sock`` is its control socket."""

    def __init__(self, daemon: Daemon, task: asyncio.Task[int], sock: str) -> None:
        self.daemon, self.task, self.sock = daemon, task, sock

    @property
    def engine(self) -> Any:
        return self.daemon.engine

    async def ctl(self, *argv: str) -> tuple[int, str, str]:
        return await run_ctl("-s", self.sock, *argv)

    def running_ids(self) -> set[int]:
        return {r.transaction.t_id for r in self.engine.running.values()}


@pytest.fixture
def daemon_config(db_settings: TestDbSettings, test_database: str, tmp_path: Path) -> Path:
    return write_config(tmp_path / "d.yml", db_settings, test_database, server_id=1, journal=tmp_path / "j",
                        extra_vpsadmin={"status_interval": 0.3})


@contextlib.asynccontextmanager
async def daemon_running(path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    # the daemon would point structlog at pytest's captured stderr when it applies a configuration
    monkeypatch.setattr("vpsadmind.daemon.configure_logging", lambda *a, **k: None)
    daemon = Daemon(str(path))
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: daemon.node_status is not None or task.done())
    assert not task.done(), task.result()
    try:
        yield Running(daemon, task, daemon.config.remote_socket)
    finally:
        if not task.done():
            daemon.request_stop()
        await asyncio.wait_for(task, 30)


# ---- kill -------------------------------------------------------------------------------------------------


async def test_kill_by_id_rolls_the_transaction_and_its_chain_back(
        db: aiomysql.Connection, daemon_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    effects = str(tmp_path / "effects")
    fired = await (ChainBuilder("k").append(PROBE, server=1, params={"effects": effects})
                   .append(PROBE, server=1, params={"effects": effects, "sleep": 60}).fire(db))
    first, second = fired.transaction_ids
    async with daemon_running(daemon_config, monkeypatch) as d:
        await wait_for(lambda: second in d.running_ids())
        rc, out, err = await d.ctl("kill", str(second), "999999")
        assert (rc, err) == (0, "")
        assert out == "999999: No such transaction\n\nKilled 1 transactions\n"
        chain = await wait_chain(db, fired.chain_id)
        rows = await transactions_of(db, fired.chain_id)
        assert d.engine.stats["killed"] == 1
    assert chain["state"] == 4 and chain["progress"] == 0  # failed, after rolling back
    killed = rows[1]
    assert (killed["t_done"], killed["t_success"]) == (2, 1)  # rolled itself back; the rollback succeeded
    assert output(killed)["error"] == "Killed" and output(killed)["rollback"]["status"] == "ok"
    assert (rows[0]["t_done"], rows[0]["t_success"]) == (2, 1)  # then the chain rolled the first one back
    assert read_effects(effects) == [f"exec {first}", f"exec {second}", f"rollback {second}", f"rollback {first}"]


async def test_kill_sigterms_the_running_command_and_status_shows_it(
        db: aiomysql.Connection, daemon_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "got-term"
    script = f"trap 'echo TERM > {marker}; exit 143' TERM; while :; do sleep 0.05; done"
    fired = await ChainBuilder("k").append(PROBE, server=1, params={"command": ["sh", "-c", script]},
                                           reversible=0).fire(db)
    t_id = fired.transaction_ids[0]
    async with daemon_running(daemon_config, monkeypatch) as d:
        await wait_for(lambda: any(r.pid for r in d.engine.running.values()))
        status = await arequest("status", socket_path=d.sock)
        worker = status["queues"]["general"]["workers"][str(fired.chain_id)]
        assert worker["id"] == t_id and worker["step"] == shlex.join(["sh", "-c", script]) and worker["pid"] > 0
        rc, out, _ = await d.ctl("status", "-w", "-H")
        assert out.split()[7:10] == [str(worker["pid"]), "sh", "-c"]
        assert await arequest("kill", {"types": [PROBE, 4242]}, socket_path=d.sock) == {
            "killed": 1, "msgs": {"4242": "No transaction with this type"}}
        chain = await wait_chain(db, fired.chain_id)
    assert marker.read_text() == "TERM\n"  # SIGTERM first, and the command had time to act on it
    assert chain["state"] == 4
    row = (await transactions_of(db, fired.chain_id))[0]
    assert (row["t_done"], row["t_success"]) == (1, 0)  # irreversible: failed, nothing to roll back
    assert output(row) == {"error": "Killed"}


async def test_kill_all_and_errors(db: aiomysql.Connection, daemon_config: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    chains = [await (ChainBuilder(f"c{i}").append(PROBE, server=1, params={"sleep": 60}, reversible=2)
                     .append(PROBE, server=1).fire(db)) for i in range(3)]
    async with daemon_running(daemon_config, monkeypatch) as d:
        await wait_for(lambda: len(d.running_ids()) == 3)
        rc, out, _ = await d.ctl("kill", "-a")
        assert (rc, out) == (0, "Killed 3 transactions\n")
        for fired in chains:  # keep_going: the chain goes on after the killed transaction
            assert (await wait_chain(db, fired.chain_id))["state"] == 2
            killed, after = await transactions_of(db, fired.chain_id)
            assert (killed["t_done"], killed["t_success"], output(killed)) == (1, 0, {"error": "Killed"})
            assert (after["t_done"], after["t_success"]) == (1, 1)
        assert await run_ctl("-s", d.sock, "kill", "-a", "-p") == (0, '{"killed": 0, "msgs": {}}\n', "")
        for argv, err in ((["kill"], "missing transaction id"), (["kill", "-t"], "missing transaction type"),
                          (["kill", "x1"], "invalid transaction id: x1")):
            rc, out, error = await d.ctl(*argv)
            assert rc == 1 and out == "" and err in error
        for params, err in (({}, "give transactions"), ({"transactions": [0]}, "positive integer"),
                            ({"types": "90001"}, "non-empty list")):
            reply = await acall("kill", params, socket_path=d.sock)
            assert not reply.ok and err in reply.error_message


# ---- pause and resume with work in flight ---------------------------------------------------------------


async def test_pause_lets_running_work_finish_and_starts_nothing_until_resume(
        db: aiomysql.Connection, daemon_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fired = await (ChainBuilder("p").append(PROBE, server=1, params={"sleep": 0.8})
                   .append(PROBE, server=1).fire(db))
    first, second = fired.transaction_ids
    async with daemon_running(daemon_config, monkeypatch) as d:
        await wait_for(lambda: first in d.running_ids())
        assert await d.ctl("pause") == (0, "Paused\n", "")
        other = await ChainBuilder("o").append(PROBE, server=1).fire(db)
        rows = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the running one finishes and is saved ...
            rows = await transactions_of(db, fired.chain_id)
            if rows[0]["t_done"] == 1:
                break
            await asyncio.sleep(0.05)
        assert rows[0]["t_success"] == 1
        await asyncio.sleep(0.5)  # ... but neither its follower nor a new chain starts while paused
        assert d.running_ids() == set()
        assert (await transactions_of(db, fired.chain_id))[1]["started_at"] is None
        assert (await transactions_of(db, other.chain_id))[0]["started_at"] is None
        rc, out, _ = await d.ctl("status")
        assert "     State: paused" in out and "Queue size: 2" in out
        assert await d.ctl("resume") == (0, "Resumed\n", "")
        assert (await wait_chain(db, fired.chain_id))["state"] == 2
        assert (await wait_chain(db, other.chain_id))["state"] == 2
        assert second not in d.running_ids()


async def test_pause_after_a_transaction(db: aiomysql.Connection, daemon_config: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fired = await (ChainBuilder("p").append(PROBE, server=1, params={"sleep": 0.5})
                   .append(PROBE, server=1).fire(db))
    first, second = fired.transaction_ids
    async with daemon_running(daemon_config, monkeypatch) as d:
        await wait_for(lambda: first in d.running_ids())
        assert await d.ctl("pause", str(first)) == (0, "Pause scheduled\n", "")
        rc, out, _ = await d.ctl("status")
        assert f"     State: running, going to pause after {first}" in out
        await wait_for(lambda: d.engine.paused)
        await asyncio.sleep(0.4)
        rows = await transactions_of(db, fired.chain_id)
        assert rows[0]["t_done"] == 1 and rows[1]["started_at"] is None
        await d.ctl("resume")
        assert (await wait_chain(db, fired.chain_id))["state"] == 2


# ---- refresh, update, set config -----------------------------------------------------------------------


async def test_refresh_reports_node_status_now(db: aiomysql.Connection, daemon_config: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async with daemon_running(daemon_config, monkeypatch) as d:
        assert d.daemon.node_status is not None
        d.daemon.node_status.stop()  # only refresh writes from now on
        await asyncio.sleep(0.5)
        await db.query("DELETE FROM servers_status")
        rc, out, _ = await d.ctl("refresh")
        assert (rc, out) == (0, "Refreshed node_status\n")
        rows = await fetch(db, "SELECT server_id, kernel, daemon FROM servers_status")
        assert rows == [{"server_id": 1, "kernel": d.daemon.node_status.last.kernel, "daemon": 0}]  # type: ignore[union-attr]

        async def broken() -> None:
            raise RuntimeError("zfs is gone")

        d.daemon.refreshers["storage"] = broken
        reply = await acall("refresh", socket_path=d.sock)
        assert reply.error == {"error": "refresh of storage failed: RuntimeError: zfs is gone",
                               "failed": {"storage": "RuntimeError: zfs is gone"}, "refreshed": ["node_status"]}


async def test_update_refuses_without_a_new_version_then_restarts_with_200(
        db: aiomysql.Connection, daemon_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fired = await ChainBuilder("u").append(PROBE, server=1, params={"sleep": 0.6}).fire(db)
    async with daemon_running(daemon_config, monkeypatch) as d:
        rc, out, err = await d.ctl("update")
        assert rc == 1 and "no update installed: the running vpsadmind" in err
        assert d.daemon.exit_code == 0
        await wait_for(lambda: fired.transaction_ids[0] in d.running_ids())
        monkeypatch.setattr(lifecycle, "installed_version", lambda: "99.0.0")
        assert await d.ctl("update") == (0, "Update scheduled\n", "")
        rc, out, _ = await d.ctl("status")
        assert "     State: finishing, going to update" in out
        assert await asyncio.wait_for(d.task, 20) == 200
    assert (await wait_chain(db, fired.chain_id))["state"] == 2  # drained, not cut


async def test_set_config_changes_the_running_configuration(daemon_config: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async with daemon_running(daemon_config, monkeypatch) as d:
        rc, out, err = await d.ctl("set", "config", "vpsadmin.queues.general.threads=2",
                                   "vpsadmin.check_interval=0.2", "mailer.smtp_server=mx.example.org")
        assert (rc, out, err) == (0, "Config changed\n", "")
        assert d.engine.queues.get("general").threads == 2 and d.engine.config.check_interval == 0.2
        assert d.engine.ctx.config.mailer.smtp_server == "mx.example.org"
        config = (await arequest("get", {"resource": "config"}, socket_path=d.sock))["config"]
        assert config["vpsadmin"]["queues"]["general"]["threads"] == 2
        # v2.0's ctl sends "true"/"false" as strings: read as the boolean the key holds
        reply = await arequest("set", {"resource": "config", "config": [{"vpsadmin": {"update_vps_status":
                                                                                    "true"}}]}, socket_path=d.sock)
        assert reply == {"changed": ["vpsadmin.update_vps_status"]} and d.daemon.config.update_vps_status is True
        for argv, err in ((["vpsadmin.check_interval=soon"], "vpsadmin.check_interval"),
                          (["vpsadmin.no_such=1"], "unknown key"),
                          (["db.pass=x"], "db.pass: takes effect only at start"),
                          (["vpsadmin.server_id=2"], "vpsadmin.server_id: takes effect only at start"),
                          (["novalue"], "expected KEY.PATH=VALUE")):
            rc, out, error = await d.ctl("set", "config", *argv)
            assert rc == 1 and err in error, (argv, error)
        assert d.daemon.config.check_interval == 0.2 and d.daemon.config.server_id == 1
        rc, _, _ = await d.ctl("reload")  # the file again: the settings were not saved
        assert rc == 0 and d.daemon.config.check_interval == 0.1


# ---- chain confirmations, confirm, release -----------------------------------------------------------------


async def fatal_chain(db: aiomysql.Connection) -> tuple[Any, int]:
    """A chain that went fatal (its rollback failed) with confirmations, two locks and a reserved port."""
    await register_node(db, 1, name="node1", ip4="192.0.2.1")
    await db.query("INSERT INTO datasets (id, name, full_name, confirmed, user_editable, user_create, "
                   "user_destroy, object_state) VALUES (10, 'new', 'new', 0, 0, 0, 0, 0), "
                   "(11, 'old', 'old', 1, 0, 0, 0, 0)")
    b = (ChainBuilder("fatal").lock("Vps", 101).lock("Dataset", 10).reserve_port(1)
         .append(PROBE, server=1, params={"fail_rollback": True}, confirmations=[
             Confirmation.create("Dataset", "datasets", {"id": 10}),
             Confirmation.edit_before("Dataset", "datasets", {"id": 11}, {"name": "orig"})])
         .append(PROBE, server=1, params={"fail": True}))
    fired = await b.fire(db)
    return fired, fired.transaction_ids[0]


async def test_chain_confirmations_confirm_and_release_of_a_fatal_chain(
        db: aiomysql.Connection, daemon_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fired, t1 = await fatal_chain(db)
    async with daemon_running(daemon_config, monkeypatch) as d:
        assert (await wait_chain(db, fired.chain_id))["state"] == 5
        chain = str(fired.chain_id)
        listed = await arequest("chain", {"chain": fired.chain_id, "command": "confirmations",
                                          "transactions": None}, socket_path=d.sock)
        assert listed == {"transactions": {str(t1): [
            {"id": fired.confirmation_ids[0], "class_name": "Dataset", "row_pks": {"id": 10}, "attr_changes": None,
             "type": "create", "done": False},
            {"id": fired.confirmation_ids[1], "class_name": "Dataset", "row_pks": {"id": 11},
             "attr_changes": {"name": "orig"}, "type": "edit_before", "done": False}]}}
        rc, out, _ = await d.ctl("chain", chain, "confirmations")
        lines = out.splitlines()
        assert rc == 0 and lines[0] == f"TRANSACTION #{t1}" and lines[1].split() == [
            "ID", "TYPE", "DONE", "OBJECT", "ID", "ATTRS"]
        assert lines[2].split() == [str(fired.confirmation_ids[0]), "create", "0", "Dataset", "id=10"]
        assert lines[3].split() == [str(fired.confirmation_ids[1]), "edit_before", "0", "Dataset", "id=11",
                                    "name=orig"]
        assert (await d.ctl("chain", chain, "confirmations", str(fired.transaction_ids[1])))[1] == ""

        # the failed chain's confirmations, as its rollback would have run them
        rc, out, _ = await d.ctl("chain", chain, "confirm", "--direction", "rollback", "-p")
        assert rc == 0 and [c["type"] for c in json.loads(out)["transactions"][str(t1)]] == ["create",
                                                                                             "edit_before"]
        assert await fetch(db, "SELECT id, name FROM datasets ORDER BY id") == [{"id": 11, "name": "orig"}]
        assert {r["done"] for r in await fetch(db, "SELECT done FROM transaction_confirmations")} == {1}

        rc, out, _ = await d.ctl("chain", chain, "release", "locks")
        assert rc == 0 and out.splitlines()[0] == "RESOURCE LOCKS" and out.splitlines()[-1] == "Released 2 locks"
        assert {tuple(line.split()[:2]) for line in out.splitlines()[2:4]} == {("Vps", "101"), ("Dataset", "10")}
        assert await fetch(db, "SELECT * FROM resource_locks") == []
        reserved = await fetch(db, "SELECT port, addr FROM port_reservations WHERE transaction_chain_id = %s",
                               (fired.chain_id,))
        assert len(reserved) == 1 and reserved[0]["addr"] == "192.0.2.1"
        released = await arequest("chain", {"chain": fired.chain_id, "command": "release", "release": None},
                                  socket_path=d.sock)
        assert released == {"locks": [], "ports": [{"node_id": 1, "node_name": "node1", "addr": "192.0.2.1",
                                                    "port": reserved[0]["port"]}]}
        assert await fetch(db, "SELECT COUNT(*) AS n FROM port_reservations WHERE transaction_chain_id IS NOT "
                               "NULL OR addr IS NOT NULL") == [{"n": 0}]
        for params, err in (({"chain": 999999, "command": "confirmations"}, "No such chain 999999"),
                            ({"chain": fired.chain_id, "command": "explode"}, "Unknown chain command explode"),
                            ({"chain": fired.chain_id, "command": "release", "release": ["disks"]},
                             "release must be a list of locks and/or ports"),
                            ({"chain": fired.chain_id, "command": "confirm", "direction": "sideways"},
                             "direction must be execute or rollback"),
                            ({"chain": "x", "command": "confirm"}, "chain must be a positive integer")):
            reply = await acall("chain", params, socket_path=d.sock)
            assert not reply.ok and err in reply.error_message, (params, reply)
        for argv, err in ((["chain", "x", "confirm"], "invalid chain id 'x'"),
                          (["chain", chain, "release", "disks"], "expected nothing, locks or ports")):
            rc, _, error = await d.ctl(*argv)
            assert rc == 1 and err in error


async def test_chain_confirm_is_all_or_nothing(db: aiomysql.Connection, daemon_config: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    await db.query("INSERT INTO datasets (id, name, full_name, confirmed, user_editable, user_create, "
                   "user_destroy, object_state) VALUES (10, 'new', 'new', 0, 0, 0, 0, 0)")
    fired = await (ChainBuilder("c").append(PROBE, server=1, confirmations=[
        Confirmation.create("Dataset", "datasets", {"id": 10}),
        Confirmation.increment("Dataset", "no_such_table", {"id": 1}, "n")]).fire(db))
    async with daemon_running(daemon_config, monkeypatch) as d:
        assert (await wait_chain(db, fired.chain_id))["state"] == 2  # closing skipped the broken one
        rows = await fetch(db, "SELECT done FROM transaction_confirmations ORDER BY id")
        assert [r["done"] for r in rows] == [1, 0]
        await db.query("UPDATE datasets SET confirmed = 0")
        rc, out, err = await d.ctl("chain", str(fired.chain_id), "confirm", str(fired.transaction_ids[0]))
        assert rc == 1 and f"confirmation {fired.confirmation_ids[1]} of transaction" in err
        assert "nothing was applied" in err
        assert await fetch(db, "SELECT confirmed FROM datasets") == [{"confirmed": 0}]  # rolled back
        rows = await fetch(db, "SELECT done FROM transaction_confirmations ORDER BY id")
        assert [r["done"] for r in rows] == [1, 0]


# ---- delayed_mount and mount_state -------------------------------------------------------------------------


async def insert_mount(db: aiomysql.Connection, mount_id: int, vps_id: int, dst: str) -> None:
    await db.query("INSERT INTO mounts (id, vps_id, dst, mount_opts, umount_opts, mount_type, mode, "
                   f"object_state) VALUES ({mount_id}, {vps_id}, '{dst}', '--bind', '-f', 'bind', 'rw', 0)")


async def mount_states(db: aiomysql.Connection) -> dict[int, int]:
    return {r["id"]: r["current_state"] for r in await fetch(db, "SELECT id, current_state FROM mounts")}


async def test_mount_state_and_delayed_mount(db: aiomysql.Connection, daemon_config: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for mid, dst in ((7, "/mnt/www"), (8, "/mnt/www/sub"), (9, "/srv")):
        await insert_mount(db, mid, 101, dst)
    async with daemon_running(daemon_config, monkeypatch) as d:
        # the action script's messages, as v2.0's mounter sends them
        assert await arequest("mount_state", {"vps_id": 101, "mount_id": 9, "state": "mounted"},
                              socket_path=d.sock) is None
        await arequest("mount_state", {"vps_id": "101", "mount_id": "8", "state": "skipped"}, socket_path=d.sock)
        mount = {"id": 7, "on_start_fail": "mount_later", "type": "dataset_remote", "src_node_addr": "192.0.2.5",
                 "pool_fs": "storage/nas", "dataset_name": "101/www", "dst": "/mnt/www",
                 "mount_opts": "-n -t nfs -overs=3", "umount_opts": "-f", "mode": "rw"}
        assert await arequest("delayed_mount", {"vps_id": 101, "mount": mount}, socket_path=d.sock) is None
        await arequest("delayed_mount", {"vps_id": 101, "mount": {**mount, "dst": "/changed"}}, socket_path=d.sock)
        await arequest("delayed_mount", {"vps_id": 102, "mount": {"id": 12, "dst": "/a", "type": "snapshot_local"}},
                       socket_path=d.sock)
        deadline = time.monotonic() + 10
        while await mount_states(db) != {7: 4, 8: 3, 9: 1} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await mount_states(db) == {7: 4, 8: 3, 9: 1}  # delayed, skipped, mounted

        status = await arequest("status", socket_path=d.sock)
        delayed = status["delayed_mounts"]
        assert sorted(delayed) == ["101", "102"]
        assert delayed["101"][0]["dst"] == "/mnt/www"  # registered once: the second report changed nothing
        assert abs(delayed["101"][0]["registered_at"] - time.time()) < 30
        rc, out, _ = await d.ctl("status", "-m")
        lines = out.splitlines()
        assert lines[0].split() == ["VEID", "ID", "TYPE", "TIME", "DST"]
        assert lines[1].split()[:3] == ["101", "7", "dataset_remote"] and lines[1].endswith("/mnt/www")
        assert lines[2].split()[:3] == ["102", "12", "snapshot_local"]
        rc, out, _ = await d.ctl("status")
        assert "    Mounts: 2" in out
        registry = d.daemon.mounts
        assert registry is not None and registry.delayed.forget_vps(102)[0]["id"] == 12
        for params, err in (({"vps_id": 101, "mount_id": 7, "state": "exploded"}, "state must be one of created"),
                            ({"vps_id": 0, "mount_id": 7, "state": "mounted"}, "vps_id must be a positive"),
                            ({"vps_id": 101, "mount": {"dst": "/x"}}, "mount.id must be a positive integer"),
                            ({"vps_id": 101, "mount": "7"}, "mount must be an object")):
            command = "mount_state" if "state" in params else "delayed_mount"
            reply = await acall(command, params, socket_path=d.sock)
            assert not reply.ok and err in reply.error_message, (params, reply)
