"""The soak's generator and bookkeeping: fire chains on idle VPSes, wait for them, check each as it ends, and
check the whole cluster at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiomysql

from bench.soak.cluster import BACKUP, HV, Cluster, stop_daemons
from bench.soak.faults import Chaos
from bench.soak.workload import FAKE_VPS, Api, Planned, Vps, choose, plan
from bench.soak.world import diff, fingerprint, leftovers, zfs_objects
from vpsadmind import system
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ResourceLocked
from vpsadmind.testing.traffic import db_totals
from vpsadmind.testing.zfssplit import fake_run

__all__ = ["Soak", "Flight"]

ENDED = {int(ChainState.DONE), int(ChainState.FAILED), int(ChainState.FATAL), int(ChainState.RESOLVED)}


@dataclass(slots=True)
class Flight:
    planned: Planned
    chain_id: int
    before: dict[str, Any]
    fired_at: float


@dataclass(slots=True)
class Soak:
    cluster: Cluster
    rng: random.Random
    chaos: Chaos
    chains: int
    duration: float
    concurrency: int = 5
    fail_share: float = 0.25
    vps_count: int = 8
    fault_gap: float = 4.0
    vpses: list[Vps] = field(default_factory=list)
    flights: dict[int, Flight] = field(default_factory=dict)       # chain id -> in flight
    outcomes: Counter[str] = field(default_factory=Counter)        # "kind state"
    states: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    fired: int = 0
    fire_errors: int = 0
    mails: list[tuple[int, str]] = field(default_factory=list)    # (chain id, Message-ID) of done mails
    refused: list[str] = field(default_factory=list)              # chains the API could not fire
    next_veid: int = 100
    pump_errors: list[str] = field(default_factory=list)
    unplanned: Counter[str] = field(default_factory=Counter)      # why chains failed without a planned step
    evidence: dict[int, list[str]] = field(default_factory=dict)  # a fatal chain's holds and zfs history
    async def run(self) -> None:
        for i in range(self.vps_count):
            self.next_veid += 1
            self.vpses.append(Vps(self.next_veid, HV[i % len(HV)]))
        if self.cluster.split is not None:
            self.vpses.append(Vps(FAKE_VPS, HV[0], exists=True))
        stop = asyncio.Event()
        pump = asyncio.create_task(self._pump_traffic(stop))
        chaos = asyncio.create_task(self.chaos.run(stop, mean_gap=self.fault_gap))
        deadline = time.monotonic() + self.duration
        conn: aiomysql.Connection | None = None
        try:
            while (self.fired < self.chains and time.monotonic() < deadline) or self.flights:
                conn = await self._connection(conn)
                if conn is None:
                    await asyncio.sleep(0.5)
                    continue
                try:
                    await self._collect(conn)
                    if self.fired < self.chains and time.monotonic() < deadline:
                        await self._fire_some(conn)
                except (aiomysql.Error, OSError, RuntimeError) as exc:  # the DB went away under us: reconnect
                    self.chaos.note(f"soak: DB error, reconnecting ({type(exc).__name__}: {exc})")
                    conn.close()
                    conn = None
                if time.monotonic() > deadline + 300:  # chains still not ended 5 min after the end: stuck
                    break
                if time.monotonic() > deadline and not stop.is_set():
                    stop.set()
                await asyncio.sleep(0.3)
        finally:
            stop.set()
            # the pump ends after its current burst: a cancelled one would leave packets the kernel counted
            # but the ledger does not have
            await asyncio.gather(chaos, pump, return_exceptions=True)
            if conn is not None:
                conn.close()

    async def _pump_traffic(self, stop: asyncio.Event) -> None:
        """Real traffic to and from the accounting addresses, while the daemons are killed, restarted and
        cut off from the database: what the kernel counted must all arrive in the database."""
        while self.cluster.traffic and not stop.is_set():
            sid = self.rng.choice(sorted(self.cluster.traffic))
            net = self.cluster.traffic[sid]
            try:
                await net.pump(self.rng.choice(net.ips), self.rng.randrange(10_000, 300_000),
                               self.rng.choice(("in", "out")))
            except RuntimeError as exc:  # the ledger would not be exact any more: the check says so
                self.pump_errors.append(str(exc))
            await asyncio.sleep(0.5)

    async def _connection(self, conn: aiomysql.Connection | None) -> aiomysql.Connection | None:
        if conn is not None:
            return conn
        try:
            return await self.cluster.connect()
        except (aiomysql.Error, OSError):
            return None

    # ------------------------------------------------------------------------------------------------------

    def _replace_gone(self) -> None:
        """A destroyed VPS makes room for a new one, so the soak never runs out of work."""
        for i, vps in enumerate(self.vpses):
            if vps.destroyed:
                self.next_veid += 1
                self.vpses[i] = Vps(self.next_veid, vps.node)

    async def _fire_some(self, conn: aiomysql.Connection) -> None:
        self._replace_gone()
        busy = {f.planned.vps.veid for f in self.flights.values()}
        idle = [v for v in self.vpses if v.veid not in busy and not v.destroyed]
        self.rng.shuffle(idle)
        for vps in idle:
            if len(self.flights) >= self.concurrency or self.fired >= self.chains:
                return
            kind = choose(self.rng, vps)
            if kind is None:
                continue
            fail = kind != "mail" and self.rng.random() < self.fail_share
            before = await fingerprint(self.cluster, conn, vps.veid)
            try:
                planned = await plan(Api(conn, self.cluster), self.rng, vps, kind, fail, self.fired)
                fired = await planned.builder.fire(conn)
            except ResourceLocked as exc:  # the API refuses too: a chain the soak lost (fired in an outage)
                holder = await _chain_state(conn, exc.holder)  # runs, or a fatal one keeps its locks
                self.refused.append(f"VPS {vps.veid} {kind}: {exc} ({holder})")
                if not holder.endswith(("queued", "rollbacking")):
                    vps.blocked = holder
                continue
            except (aiomysql.Error, OSError) as exc:
                self.fire_errors += 1
                raise RuntimeError(f"firing {kind} for VPS {vps.veid}: {exc}") from exc
            self.fired += 1
            self.flights[fired.chain_id] = Flight(planned, fired.chain_id, before, time.monotonic())

    async def _collect(self, conn: aiomysql.Connection) -> None:
        if not self.flights:
            return
        ids = list(self.flights)
        async with conn.cursor() as cur:
            await cur.execute(f"SELECT id, state FROM transaction_chains WHERE id IN ({', '.join(['%s'] * len(ids))})",
                              ids)
            states = {int(r[0]): int(r[1]) for r in await cur.fetchall()}
        for chain_id, state in states.items():
            if state in ENDED:
                flight = self.flights.pop(chain_id)
                await self._ended(conn, flight, state)

    async def _ended(self, conn: aiomysql.Connection, f: Flight, state: int) -> None:
        p = f.planned
        name = ChainState(state).name.lower()
        self.states[name] += 1
        self.outcomes[f"{p.kind} {name}" + (" (failure planned)" if p.fail_at is not None else "")] += 1
        where = f"chain {f.chain_id} {p.kind} VPS {p.vps.veid}"
        if state == ChainState.DONE:
            if p.fail_at is not None:
                self.violations.append(f"{where}: done although a failing step was planned")
                return
            p.on_done()
            if p.message_id:
                self.mails.append((f.chain_id, p.message_id))
            self.violations += [f"{where}: {v}" for v in await self._check_done(conn, p)]
        elif state == ChainState.FAILED:
            if p.fail_at is None:  # failed by a fault: why, in short
                self.unplanned[await _first_error(conn, f.chain_id)] += 1
            after = await fingerprint(self.cluster, conn, p.vps.veid)
            self.violations += [f"{where} failed but changed: {d}" for d in diff(f.before, after)]
        else:
            self.violations.append(f"{where} ended {name}: {await _errors(conn, f.chain_id)}")
            self.evidence[f.chain_id] = await _evidence(self.cluster, conn, p.vps.veid)

    async def _check_done(self, conn: aiomysql.Connection, p: Planned) -> list[str]:
        """A done chain's own effects, counted on the nodes: every snapshot the model expects exists once and no
        other one; the backup branch holds exactly the snapshots backed up."""
        vps = p.vps
        if p.kind == "fake":
            return await _check_fake(self.cluster, p.target)
        if not vps.exists:
            return []
        objects = await zfs_objects(self.cluster)
        hv = self.cluster.nodes[vps.node]
        names = await _snapshot_names(conn, [s for s, _ in vps.snapshots])
        have = sorted(n.split("@", 1)[1] for n in objects if n.startswith(f"{hv.fs}/{vps.veid}@"))
        out = []
        if have != sorted(names):
            out.append(f"snapshots on {hv.name} {have}, expected {sorted(names)}")
        if vps.backed_up:
            branch = f"{self.cluster.nodes[BACKUP].fs}/{vps.veid}/tree.0/{vps.branch_fs}@"
            got = sorted(n.split("@", 1)[1] for n in objects if n.startswith(branch))
            want = sorted(await _snapshot_names(conn, vps.backed_up))
            if got != want:
                out.append(f"backup branch holds {got}, expected {want}")
        return out


async def _check_fake(cluster: Cluster, name: str) -> list[str]:
    """The dataset and its snapshot are in both fake pools, once."""
    split = cluster.split
    assert split is not None
    out = []
    for pool in split.fake_pools:
        names = (await asyncio.to_thread(fake_run, split.fake_root, "zfs", "list", "-H", "-t", "all", "-o", "name",
                                         "-r", pool)).split()
        mine = [n for n in names if n == f"{pool}/{name}" or n.startswith(f"{pool}/{name}@")]
        if len(mine) != 2:
            out.append(f"fake pool {pool} holds {mine}, expected {name} and one snapshot")
    return out


_NUMBERS = re.compile(r"[0-9a-f]{6,}|\d+(\.\d+)?")


async def _first_error(conn: aiomysql.Connection, chain_id: int) -> str:
    """The handler and error of the chain's first failed transaction, numbers and names left out."""
    async with conn.cursor() as cur:
        # a failed reversible transaction keeps its rollback's t_success, so look for the error itself
        await cur.execute("SELECT t_type, t_output FROM transactions WHERE transaction_chain_id = %s AND "
                          "t_output LIKE %s AND t_output NOT LIKE %s ORDER BY t_id LIMIT 1",
                          (chain_id, '%"error"%', "%Dependency failed%"))
        row = await cur.fetchone()
    if row is None:
        return "?"
    try:
        error = str(json.loads(row[1] or "{}").get("error", ""))
    except ValueError:
        error = str(row[1])
    return f"{row[0]}: {_NUMBERS.sub('N', error.split(chr(10))[0])[:90]}"


async def _evidence(cluster: Cluster, conn: aiomysql.Connection, veid: int) -> list[str]:
    """What a fatal chain's rollback ran into, for the report: the hold ledger and every pool's zfs history of
    the VPS's datasets (holds, releases, sends, destroys)."""
    out: list[str] = []
    async with conn.cursor() as cur:
        await cur.execute("SELECT server_id, tag, snapshot, chain_id, transaction_id FROM vpsadmind_holds")
        out += [f"ledger: {r}" for r in await cur.fetchall()]
    for node in cluster.nodes.values():
        done = await system.run([cluster.zfs.zpool_bin, "history", node.pool.name], timeout=60, valid_rcs=(0, 1))
        out += [f"{node.name}: {line}" for line in done.stdout.splitlines()
                if f"/{veid}@" in line.replace(" ", "@") or f"/{veid} " in line][-40:]
    return out


async def _chain_state(conn: aiomysql.Connection, chain_id: int | None) -> str:
    async with conn.cursor() as cur:
        await cur.execute("SELECT state FROM transaction_chains WHERE id = %s", (chain_id,))
        row = await cur.fetchone()
    return f"chain {chain_id} is {ChainState(int(row[0])).name.lower()}" if row else f"no chain {chain_id}"


async def _snapshot_names(conn: aiomysql.Connection, ids: list[int]) -> list[str]:
    if not ids:
        return []
    async with conn.cursor() as cur:
        await cur.execute(f"SELECT name FROM snapshots WHERE id IN ({', '.join(['%s'] * len(ids))})", ids)
        return [str(r[0]) for r in await cur.fetchall()]


async def _errors(conn: aiomysql.Connection, chain_id: int) -> str:
    async with conn.cursor() as cur:
        await cur.execute("SELECT t_id, t_type, t_done, t_success, LEFT(t_output, 300) FROM transactions "
                          "WHERE transaction_chain_id = %s AND t_success = 0", (chain_id,))
        return "; ".join(str(r) for r in await cur.fetchall()) or "no failed transaction"


async def final_checks(soak: Soak) -> dict[str, list[str]]:
    """The invariants of the whole run, each a list of what breaks it (empty: holds)."""
    conn = await soak.cluster.connect()
    try:
        checks: dict[str, list[str]] = {}
        async with conn.cursor() as cur:
            await cur.execute("SELECT id, state, progress, size FROM transaction_chains "
                              "WHERE state NOT IN (2, 4, 5, 6)")
            checks["every chain ended done, failed or fatal"] = [str(r) for r in await cur.fetchall()]
            await cur.execute("SELECT t.t_id, c.id, c.state, t.t_done, t.t_success FROM transactions t JOIN "
                              "transaction_chains c ON c.id = t.transaction_chain_id WHERE (c.state = 2 AND "
                              "(t.t_done <> 1 OR (t.t_success = 0 AND t.reversible <> 2))) OR (c.state = 4 AND "
                              "t.t_done = 0 AND t.started_at IS NOT NULL)")
            checks["no result lost (done chains: every row done; failed: none half-saved)"] = [
                str(r) for r in await cur.fetchall()]
        checks["failed chains left their VPS exactly as before"] = [v for v in soak.violations if "failed but" in v]
        checks["done chains: each effect exactly once"] = [v for v in soak.violations if "failed but" not in v]
        counted = Counter(m["message_id"] for m in soak.cluster.mailbox.messages)
        checks["mail: each done Mail::Send delivered (duplicates only after a crash re-run)"] = [
            f"chain {c} {mid}: delivered {counted[mid]} times" for c, mid in soak.mails
            if counted[mid] == 0 or (counted[mid] > 1 and not await _resent(conn, c))]
        left = await leftovers(soak.cluster, conn)
        for what, items in left.items():
            checks[f"no {what} left"] = items
        return checks
    finally:
        conn.close()


async def traffic_checks(soak: Soak) -> dict[str, list[str]]:
    """After the daemons stopped (each stores its last counts at SIGTERM): per address, the database holds
    exactly what the soak pumped, across every kill, restart and database outage."""
    problems = await stop_daemons(soak.cluster)
    conn = await soak.cluster.connect()
    try:
        wrong = list(soak.pump_errors) + problems
        for sid, net in soak.cluster.traffic.items():
            stored, sent = await db_totals(conn, net.ips), net.expected()
            wrong += [f"node {sid} {ip}: database {stored[ip]}, pumped {sent[ip]}" for ip in net.ips
                      if stored[ip] != sent[ip]]
        return {"traffic counters add up across the restarts": wrong}
    finally:
        conn.close()


async def _resent(conn: aiomysql.Connection, chain_id: int) -> bool:
    """9001 says in t_output when it ran again after a crash (v2.0 re-sends rather than lose a mail)."""
    async with conn.cursor() as cur:
        await cur.execute("SELECT t_output FROM transactions WHERE transaction_chain_id = %s", (chain_id,))
        row = await cur.fetchone()
    return bool(row and "crash" in str(row[0]))


async def wait_quiet(soak: Soak, timeout: float = 60.0) -> None:
    """Give the daemons' last saves and releases a moment after the last chain ended."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                conn = await soak.cluster.connect()
                try:
                    async with conn.cursor() as cur:
                        await cur.execute("SELECT COUNT(*) FROM vpsadmind_claims")
                        if int((await cur.fetchone())[0]) == 0:
                            return
                finally:
                    conn.close()
                await asyncio.sleep(0.5)
