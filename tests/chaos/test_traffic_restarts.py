"""Issue 9, "traffic counters add up across the restarts": a real daemon counts real traffic in a network
namespace (``init`` fw and ``track_transfers`` on, a 0.2-s interval, so saves are frequent) and is killed with
SIGKILL at random moments of a burst of traffic, right after a counter read returned, right after a save was
committed, and with traffic flowing while it is down. It is restarted each time, reloaded with SIGHUP once,
and ``vpsadmindctl reinit fw`` drops an address and adds one; it stops with SIGTERM. Then, for every address,
the rows in ``transfered_recent`` add up exactly to what was sent through the node, which is also what the
kernel's counters hold: nothing counted twice after a restart, nothing lost.

Whether a kill lands between a read and its commit is left to chance; the deterministic version of that case
is ``test_a_restart_after_a_crash_stores_what_was_not_stored_and_nothing_twice`` in tests/network.

The time from each restart (process start) to its first stored traffic is the recovery figure; the test prints
it (``-s``) and bounds it.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from vpsadmind import ctl
from vpsadmind.testing import services
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.process import DaemonProcess, write_config
from vpsadmind.testing.traffic import Counts, TrafficNode, db_totals

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

SERVER_ID = 7
INTERVAL = 0.2
A, B, C6, D = "10.91.0.2", "10.91.0.3", "fd00:91::2", "10.91.0.4"
CLASS_IDS = {A: 40, B: 41, C6: 42, D: 43}


@pytest.fixture(params=["nft", "legacy"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if os.geteuid() != 0:
        services.unavailable("network namespaces need root")
    n = TrafficNode(tmp_path / "net", backend=request.param)
    try:
        n.create()
    except RuntimeError as exc:
        services.unavailable(f"no traffic node: {exc}")
    try:
        for ip in (A, B, C6, D):
            n.add_ip(ip)
        yield n
    finally:
        n.close()


async def add_rows(db: Any, vps_id: int, ips: list[str]) -> None:
    """The VPS and its addresses as the API leaves them: the daemon's init and reinit read these rows."""
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vps (vps_id, m_id, vps_server, vps_config, object_state) "
                          "VALUES (%s, 1, %s, '', 0) ON DUPLICATE KEY UPDATE vps_server = vps_server",
                          (vps_id, SERVER_ID))
        for ip in ips:
            await cur.execute("INSERT INTO vps_ip (vps_id, ip_v, ip_location, ip_addr, max_tx, max_rx, class_id) "
                              "VALUES (%s, %s, 1, %s, 0, 0, %s)", (vps_id, 6 if ":" in ip else 4, ip, CLASS_IDS[ip]))


async def rows(db: Any) -> int:
    async with db.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM transfered_recent")
        (n,) = await cur.fetchone()
        return int(n)


async def wait_rows(db: Any, more_than: int, timeout: float = 20) -> float:
    """Poll until ``transfered_recent`` has more rows than ``more_than``; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while await rows(db) <= more_than:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no new transfered_recent row within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic()


async def pump_some(node: TrafficNode, rng: random.Random, ips: list[str], rounds: int = 3) -> None:
    for _ in range(rounds):
        await node.pump(rng.choice(ips), rng.randrange(1, 40_000), rng.choice(("in", "out")))


class Daemon:
    """One daemon configuration, started again after every kill (a fresh log per run: ``started`` is per log)."""

    def __init__(self, cfg: Path, tmp: Path) -> None:
        self.cfg, self.tmp, self.runs = cfg, tmp, 0
        self.proc: DaemonProcess | None = None
        self.recoveries: list[float] = []

    def start(self, wait: bool = True) -> DaemonProcess:
        self.runs += 1
        self.proc = DaemonProcess(self.cfg, self.tmp / f"d{self.runs}.log").start(wait=wait, timeout=30)
        return self.proc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    async def restart_and_time(self, db: Any) -> None:
        """Start after a kill, with traffic counted while the daemon was down: the first save after the start
        must hold it (the reporter runs at once), so the first new row marks the recovery."""
        before = await rows(db)
        started = time.monotonic()
        proc = self.start(wait=False)
        self.recoveries.append(await wait_rows(db, before, timeout=30) - started)
        proc.wait_for_event("traffic_reporter_started", timeout=30)


async def kill_while_pumping(d: Daemon, node: TrafficNode, rng: random.Random, ips: list[str]) -> None:
    """SIGKILL at a random moment of a burst of traffic: saves with rows are in flight."""
    async def killer() -> None:
        await asyncio.sleep(rng.uniform(0.0, 3 * INTERVAL))
        d.kill()
    await asyncio.gather(pump_some(node, rng, ips, rounds=6), killer())


async def kill_after_read(d: Daemon, node: TrafficNode, rng: random.Random, ips: list[str]) -> None:
    """SIGKILL as soon as a counter read returned (the wrappers log each call): the traffic it read is usually
    not committed yet, the commit follows within milliseconds."""
    await pump_some(node, rng, ips, rounds=1)
    seen = len(node.calls())

    def watch() -> None:
        deadline = time.monotonic() + 10
        while not any(" -L " in line for line in node.calls()[seen:]) and time.monotonic() < deadline:
            time.sleep(0.0002)
        d.kill()
    await asyncio.to_thread(watch)


async def kill_after_save(d: Daemon, node: TrafficNode, db: Any, rng: random.Random, ips: list[str]) -> None:
    """SIGKILL within milliseconds of a committed save, before the daemon can do anything else."""
    before = await rows(db)
    await pump_some(node, rng, ips, rounds=1)
    await wait_rows(db, before)
    d.kill()


async def vpsadmindctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(ctl.main, list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


async def test_traffic_adds_up_across_kills_restarts_and_reinit(db: Any, db_settings: TestDbSettings,
                                                                test_database: str, tmp_path: Path,
                                                                node: TrafficNode) -> None:
    seed = int(os.environ.get("TRAFFIC_CHAOS_SEED", time.time_ns() % 10**9))
    rng = random.Random(seed)
    await add_rows(db, 501, [A, B, C6])
    sock = tmp_path / "ctl.sock"
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=SERVER_ID,
                       journal=tmp_path / "journal", control_socket=sock, **node.config(interval=INTERVAL))
    d = Daemon(cfg, tmp_path)
    try:
        d.start().wait_for_event("traffic_reporter_started")
        active = [A, B, C6]
        for fault in ["pumping", "after_read", "after_save", "hup", "reinit", "after_read", "pumping",
                      "after_save"]:
            await pump_some(node, rng, active)
            if fault == "hup":
                assert d.proc is not None and d.proc.proc is not None
                d.proc.proc.send_signal(signal.SIGHUP)
                d.proc.wait_for_event("reloaded")
                continue
            if fault == "reinit":  # B leaves the node, D arrives: B's last counts are stored, D counts from now
                async with db.cursor() as cur:
                    await cur.execute("DELETE FROM vps_ip WHERE ip_addr = %s", (B,))
                await add_rows(db, 501, [D])
                assert (await vpsadmindctl("-s", str(sock), "reinit", "fw"))[0] == 0
                active = [A, C6, D]
                continue
            if fault == "pumping":
                await kill_while_pumping(d, node, rng, active)
            elif fault == "after_read":
                await kill_after_read(d, node, rng, active)
            else:
                await kill_after_save(d, node, db, rng, active)
            await pump_some(node, rng, active, rounds=2)  # counted by the kernel while no daemon runs
            await d.restart_and_time(db)
        await pump_some(node, rng, active)
        assert d.proc is not None and d.proc.terminate() == 0
    finally:
        d.kill()  # a failed assertion must not leave a daemon behind
    ips = [A, B, C6, D]
    stored, sent = await db_totals(db, ips), node.expected(ips)
    kernel = node.kernel_totals(active)
    report = (f"seed {seed} ({node.backend}); sent {sent}\nstored {stored}\nkernel {kernel}\n"
              f"recoveries {[round(r, 3) for r in d.recoveries]}")
    print(f"\ntraffic chaos {node.backend}: {d.runs} runs, recovery to the first save: median "
          f"{statistics.median(d.recoveries):.3f} s, max {max(d.recoveries):.3f} s")
    assert {ip: kernel[ip] for ip in active} == {ip: sent[ip] for ip in active}, report  # the rules count right
    assert stored == sent, report
    assert sent[B] != Counts() and sent[D] != Counts()
    assert max(d.recoveries) < 10, report
    errors = [e for run in range(1, d.runs + 1) for e in DaemonProcess(cfg, tmp_path / f"d{run}.log").events()
              if e.get("level") == "error"]
    assert not errors, errors
