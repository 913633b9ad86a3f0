"""The chaos: faults injected at random moments while the chains run, each recorded with when and what.

* ``kill``: ``kill -9`` of a daemon at a random moment, restarted after a pause;
* ``kill_transfer``: the same while a ``zfs send`` of a transfer runs (the source or the destination);
* ``kill_save``: the same in the middle of a result save: the soak holds the row locks of a chain's
  ``resource_locks`` (which the save of its last transaction deletes), waits until the daemon's save blocks on
  them inside its DB transaction, kills the daemon and lets go;
* ``db``: the private MariaDB stopped for a few seconds, then started;
* ``broker``: Mosquitto stopped for a few seconds, then started;
* ``full_pool``: the backup pool's quota set to what it uses, so receives run out of space, then lifted;
* ``stall``: a ``zfs send`` stopped (SIGSTOP) past the stall watchdog, then continued;
* ``zfs``: a zfs error on hv1's fake pools through the fake-zfs harness (no space for a create, a snapshot
  or a receive; a destroy busy 3 times; a stream broken at byte N), waited for until a chain meets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiomysql

from bench.soak.cluster import BACKUP, DATABASE, STALL_TIMEOUT, Cluster
from bench.soak.world import zfs_processes
from vpsadmind import system
from vpsadmind.testing.db import connect
from vpsadmind.testing.fakezfs import faults as fakefaults

__all__ = ["Chaos", "FAULT_KINDS", "Recovery"]

FAULT_KINDS: Final = ("kill", "kill_transfer", "kill_save", "db", "broker", "full_pool", "stall", "zfs")


@dataclass(slots=True)
class Recovery:
    """One kill: how long until the restarted daemon served, and until it saved its next result."""

    node: str
    kind: str
    serving: float
    next_save: float | None = None


@dataclass(slots=True)
class Chaos:
    cluster: Cluster
    rng: random.Random
    kinds: tuple[str, ...] = FAULT_KINDS
    counts: Counter[str] = field(default_factory=Counter)
    missed: Counter[str] = field(default_factory=Counter)   # a fault whose moment did not come in time
    recoveries: list[Recovery] = field(default_factory=list)
    zfs_faults: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:7.1f} s  {text}")

    async def run(self, stop: asyncio.Event, *, mean_gap: float) -> None:
        """Inject one fault after another, ``mean_gap`` seconds apart on average, until ``stop`` is set."""
        while self.kinds and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.expovariate(1 / mean_gap))
                return
            kind = self.rng.choice(self.kinds)
            try:
                done = await getattr(self, f"fault_{kind}")()
            except Exception as exc:  # a fault that could not be injected is reported, not fatal to the soak
                self.note(f"{kind}: could not inject: {type(exc).__name__}: {exc}")
                done = False
            if done:
                self.counts[kind] += 1
            else:
                self.missed[kind] += 1

    # ------------------------------------------------------------------------------------------------------
    # Daemons

    async def _kill_and_restart(self, server_id: int, kind: str) -> None:
        node = self.cluster.nodes[server_id]
        killed_at = time.monotonic()
        await asyncio.to_thread(node.daemon.kill)
        saves_before = _saves(node.daemon.log)
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        serving = await asyncio.to_thread(self.cluster.start_daemon, server_id)
        rec = Recovery(node.name, kind, time.monotonic() - killed_at)
        self.recoveries.append(rec)
        self.note(f"{kind}: {node.name} killed, serving again after {rec.serving:.2f} s (start {serving:.2f} s)")
        asyncio.get_running_loop().create_task(self._watch_save(node.daemon.log, saves_before, killed_at, rec))

    async def _watch_save(self, log: Path, before: int, killed_at: float, rec: Recovery) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _saves(log) > before:
                rec.next_save = time.monotonic() - killed_at
                return
            await asyncio.sleep(0.1)

    async def fault_kill(self) -> bool:
        await self._kill_and_restart(self.rng.choice(list(self.cluster.nodes)), "kill")
        return True

    async def fault_kill_transfer(self) -> bool:
        """Wait (up to 30 s) for a transfer's ``zfs send``, then kill its source or destination daemon."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sends = await asyncio.to_thread(zfs_processes, "send")
            if sends:
                pid, pool = sends[0]
                src = next((s for s, n in self.cluster.nodes.items() if n.pool.name == pool), None)
                if src is None:
                    return False
                victim = src if self.rng.random() < 0.5 else BACKUP if src != BACKUP else 1
                self.note(f"kill_transfer: zfs send pid {pid} from {self.cluster.nodes[src].name} running")
                await self._kill_and_restart(victim, "kill_transfer")
                return True
            await asyncio.sleep(0.05)
        return False

    async def fault_kill_save(self) -> bool:
        conn = await connect(self.cluster.settings, DATABASE)
        try:
            return await self._kill_in_save(conn)
        finally:
            conn.close()

    async def _kill_in_save(self, conn: aiomysql.Connection) -> bool:
        """Lock the ``resource_locks`` rows of a running chain, wait until a daemon's save blocks on them inside
        its DB transaction (a chain's final save deletes its locks, and with no index on the chain id that
        DELETE scans the whole table), kill that daemon, let go."""
        async with conn.cursor() as cur:
            # a chain with steps to go: its final save comes while the soak holds the rows (the daemon reads
            # committed, so only that chain's own DELETE waits for them)
            await cur.execute("SELECT c.id FROM transaction_chains c JOIN resource_locks l ON "
                              "l.transaction_chain_id = c.id WHERE c.state = 1 AND c.size - c.progress >= 2 "
                              "ORDER BY c.size - c.progress DESC LIMIT 1")
            row = await cur.fetchone()
        if row is None:
            return False
        await conn.begin()
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT id FROM resource_locks WHERE transaction_chain_id = %s", (int(row[0]),))
                ids = [int(r[0]) for r in await cur.fetchall()]
                if not ids:
                    return False
                await cur.execute(f"SELECT * FROM resource_locks WHERE id IN ({', '.join(['%s'] * len(ids))}) "
                                  "FOR UPDATE", ids)
                thread = await _lock_waiter(cur, 30.0)
                if thread is None:
                    return False
                server = await asyncio.to_thread(self._daemon_of_thread, thread[1])
                if server is None:
                    return False
                self.note(f"kill_save: {self.cluster.nodes[server].name}'s save is blocked inside its DB "
                          f"transaction (MariaDB thread {thread[0]}, port {thread[1]})")
                await asyncio.to_thread(self.cluster.nodes[server].daemon.kill)
        finally:
            await conn.rollback()
        await self._kill_and_restart(server, "kill_save")
        return True

    def _daemon_of_thread(self, port: int) -> int | None:
        """The node whose daemon owns the MariaDB connection with client ``port`` (from the process list)."""
        for server_id, node in self.cluster.nodes.items():
            if node.daemon.proc is not None and port in _local_ports(node.daemon.pid):
                return server_id
        return None

    # ------------------------------------------------------------------------------------------------------
    # Services, pools, streams

    async def fault_db(self) -> bool:
        pause = self.rng.uniform(2.0, 8.0)
        await asyncio.to_thread(self.cluster.db.stop)
        self.note(f"db: MariaDB stopped for {pause:.1f} s")
        await asyncio.sleep(pause)
        await asyncio.to_thread(self.cluster.db.start)
        return True

    async def fault_broker(self) -> bool:
        pause = self.rng.uniform(1.0, 6.0)
        await asyncio.to_thread(self.cluster.broker.stop)
        self.note(f"broker: Mosquitto stopped for {pause:.1f} s")
        await asyncio.sleep(pause)
        await asyncio.to_thread(self.cluster.broker.start)
        return True

    async def fault_full_pool(self) -> bool:
        pool = self.cluster.nodes[BACKUP].pool.name
        zfs = self.cluster.zfs.zfs_bin
        used = (await self.cluster.zfs.get(pool, ["used"]))[pool]["used"].value
        pause = self.rng.uniform(8.0, 20.0)
        await system.run([zfs, "set", f"quota={int(used) + 64 * 1024}", pool], timeout=60)
        self.note(f"full_pool: {pool} full (quota = used) for {pause:.1f} s")
        try:
            await asyncio.sleep(pause)
        finally:
            await system.run([zfs, "set", "quota=none", pool], timeout=60)
        return True

    async def fault_stall(self) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sends = await asyncio.to_thread(zfs_processes, "send")
            if sends:
                pid = sends[0][0]
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                self.note(f"stall: zfs send pid {pid} stopped for {STALL_TIMEOUT + 4:.0f} s")
                await asyncio.sleep(STALL_TIMEOUT + 4)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                return True
            await asyncio.sleep(0.05)
        return False


    async def fault_zfs(self) -> bool:
        split = self.cluster.split
        if split is None:
            return False
        root, (a, b) = split.fake_root, split.fake_pools
        choices: list[tuple[str, Callable[[], fakefaults.Fault]]] = [
            ("no space for a create", lambda: fakefaults.no_space(root, "create", f"{a}/*")),
            ("no space for a snapshot", lambda: fakefaults.no_space(root, "snapshot", f"{a}/*")),
            ("no space for a receive", lambda: fakefaults.no_space(root, "recv", f"{b}/*")),
            ("destroy busy 3 times", lambda: fakefaults.busy(root, "destroy", f"{a}/*", count=3)),
            ("stream broken", lambda: fakefaults.break_send(root, self.rng.randrange(0, 4096), f"{a}/*")),
        ]
        what, inject = self.rng.choice(choices)
        fault = await asyncio.to_thread(inject)
        self.note(f"zfs: {what} on the fake pools")
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            if fault not in await asyncio.to_thread(fakefaults.load, root):
                self.zfs_faults[what] += 1
                return True
            await asyncio.sleep(0.2)
        await asyncio.to_thread(fakefaults.clear, root)  # not met in time: withdrawn (one fault at a time)
        return False


async def _lock_waiter(cur: aiomysql.Cursor, timeout: float) -> tuple[int, int] | None:
    """The MariaDB thread id and client port of a save that waits on the held rows (its ``DELETE FROM
    resource_locks`` runs and does not finish), within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await cur.execute("SELECT ID, HOST FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
                          "AND INFO LIKE 'DELETE FROM resource_locks%%' AND TIME_MS > 200")
        row = await cur.fetchone()
        if row is not None and ":" in str(row[1]):
            return int(row[0]), int(str(row[1]).rsplit(":", 1)[1])
        await asyncio.sleep(0.02)
    return None


def _local_ports(pid: int) -> set[int]:
    """The local TCP ports of ``pid``'s sockets (its socket inodes looked up in /proc/net/tcp)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _saves(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count('"transaction_saved"')
    except OSError:
        return 0
