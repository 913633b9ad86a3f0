"""``make demo``: two real vpsadmind daemons, chains fired the way the vpsAdmin API fires them, and a report.

Run as ``python -m vpsadmind.demo [--workdir DIR] [--keep-running] [--no-mqtt] [--zfs auto|fuse|fake]``. It
recreates the database ``vpsadmind_demo`` with nodes ``node1`` (server 1) and ``node2`` (server 2), creates one
throw-away ZFS pool per node (a uniquely named zfs-fuse pool on a sparse file in the work directory, or the
fake-zfs harness when zfs-fuse cannot run), starts one daemon per node (``check_interval`` 1 s, v2.0's default,
MQTT on), fires one chain per scenario with :class:`~vpsadmind.testing.chains.ChainBuilder` followed by the
wake-up ``docs/mqtt.md`` asks of the API, waits for every chain to end, prints a report, stops the daemons with
SIGTERM, destroys the pools and exits 0 when everything ended as each scenario expects, else 1. The database is
kept for inspection and recreated at the next run.

A scenario is a function that fires one or more chains and returns a :class:`Scenario` (or a list of them) with
what each chain must end as (:class:`Expect`); add new ones to :func:`scenario_functions`. A scenario may also add a
report of its own to :attr:`Demo.reports`, which prints what it checks and returns what differs. The storage
scenario, with a backup of a dataset from node 1 to node 2 (full, then incremental), is in
:mod:`vpsadmind.demo_transfer`; the VPS scenario (a VPS created, started, given a dataset mount and stopped on node
1's fake vzctl, beside the backups) in :mod:`vpsadmind.demo_vps`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiomqtt
import aiomysql

from vpsadmind import system
from vpsadmind.engine.model import ChainState
from vpsadmind.engine.runner import handler_name
from vpsadmind.handlers.base import import_handler_modules
from vpsadmind.testing.chains import ChainBuilder, Confirmation, FiredChain, register_node
from vpsadmind.testing.db import TestDbSettings, connect, create_database
from vpsadmind.testing.engine import transactions_of, wait_chain
from vpsadmind.testing.fakezfs.install import fake_zfs_script
from vpsadmind.testing.handlers import PROBE, read_effects
from vpsadmind.testing.process import DaemonProcess, write_config
from vpsadmind.testing.zfspool import TempPool, unique_pool_name, zfs_unavailable
from vpsadmind.zfs.driver import Zfs

if TYPE_CHECKING:
    from vpsadmind.demo_vps import FakeVzNode

__all__ = ["Demo", "Expect", "Scenario", "Storage", "main", "run", "scenario_hop", "scenario_keep_going",
           "scenario_noops", "scenario_functions", "scenario_rollback"]

DEMO_DATABASE: Final = "vpsadmind_demo"
DEFAULT_WORKDIR: Final = Path("/tmp/vpsadmind-demo")
NOOP: Final = 10001                     # Utils::NoOp
KEEP_GOING: Final = 2                   # transactions.reversible
CHECK_INTERVAL: Final = 1.0             # v2.0's default: without wake-ups every hop may wait this long
NODES: Final = ((1, "node1", "127.0.0.2"), (2, "node2", "127.0.0.3"))
_DB_NAME_RE: Final = re.compile(r"^vpsadmind[A-Za-z0-9_]{0,55}$")
_T_DONE: Final = {0: "0 waiting", 1: "1 done", 2: "2 rolled back"}
_T_SUCCESS: Final = {0: "0 failed", 1: "1 ok", 2: "2 warning"}
#: server_id -> (pools.role, what the role is, the pool's filesystem below the pool): v2.0's roles are
#: 0 hypervisor, 1 primary, 2 backup.
POOL_ROLES: Final = {1: (0, "hypervisor", "vz"), 2: (2, "backup", "backup")}
POOL_SIZE: Final = 256 * 1024 * 1024    # sparse: a few MiB on disk
MIB: Final = 1024 * 1024
ZPOOL_PROBE_TIMEOUT: Final = 10.0       # --zfs auto: a zfs-fuse that does not answer by then is not used
#: v2.0 opens the zfs_send queue 4 h after the daemon started; the demo's backup sends at once.
SEND_QUEUE: Final = {"zfs_send": {"threads": 1, "start_delay": 0}}
_POOL_DIR_RE: Final = re.compile(r"^vd[0-9a-f]{8}\.[A-Za-z0-9_]+$")  # a TempPool directory of an earlier run


def say(text: str = "") -> None:
    with contextlib.suppress(BrokenPipeError):  # `| head`: the demo must still stop its daemons and pools
        print(text, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> None:
    """Print a plain text table, columns as wide as their widest cell."""
    cells = [[str(c) for c in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        say(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            say(indent + "  ".join("-" * w for w in widths))


# ----------------------------------------------------------------------------------------------------------
# The API's side of MQTT: wake-ups after each commit, and a watcher of the daemons' events


class Mqtt:
    """One MQTT client of the demo. It publishes wake-ups as the API does and counts the daemons' events.

    The broker is optional: when it cannot be reached, :meth:`wake` does nothing and the daemons find the work
    by polling, at most ``check_interval`` later.
    """

    def __init__(self, host: str, port: int, prefix: str, *, enabled: bool) -> None:
        self.host, self.port, self.prefix, self.enabled = host, port, prefix, enabled
        self.client: aiomqtt.Client | None = None
        self.error: str | None = None if enabled else "disabled by --no-mqtt"
        self.counts: Counter[str] = Counter()
        self.t_done: dict[int, int] = {}   # t_id -> t_done of its latest transaction event
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        if not self.enabled:
            return
        client = aiomqtt.Client(self.host, self.port, identifier=f"vpsadmind-demo-{os.getpid()}", timeout=3)
        try:
            await stack.enter_async_context(client)
            for sub in ("node/+/transactions", "chain/+/state", "node/+/wake", "nodes/wake"):
                await client.subscribe(f"{self.prefix}/{sub}", qos=1)
        except (aiomqtt.MqttError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.client = client
        self._task = asyncio.create_task(self._watch(client), name="mqtt-watch")
        stack.push_async_callback(self._stop_watch)

    @property
    def state(self) -> str:
        if self.client is not None:
            return f"broker {self.host}:{self.port} reachable: wake-ups on, topics {self.prefix}/..."
        return (f"off ({self.error}): the daemons find work by polling every {CHECK_INTERVAL:g} s, "
                "so each hop between nodes may take up to that long")

    async def wake(self, server: int, chain: int, t_id: int) -> None:
        """After the commit: ``<p>/node/<server>/wake`` with ``{"chain", "t_id"}``, qos 1, not retained."""
        if self.client is None:
            return
        payload = json.dumps({"chain": chain, "t_id": t_id})
        try:
            await self.client.publish(f"{self.prefix}/node/{server}/wake", payload, qos=1, timeout=2)
            self.sent += 1
        except (aiomqtt.MqttError, OSError) as exc:  # best effort, as for the API: polling still finds it
            say(f"  (wake-up for chain {chain} not sent: {exc}; node {server} will find it by polling)")

    async def settle(self, t_done: dict[int, int], timeout: float = 1.0) -> None:
        """Give the last events (published after the daemons' commits) a moment to arrive: wait until the
        latest event of each transaction says what the database says (``t_done``)."""
        deadline = time.monotonic() + timeout
        while self.client is not None and time.monotonic() < deadline:
            if all(self.t_done.get(t) == done for t, done in t_done.items()):
                return
            await asyncio.sleep(0.02)

    async def _watch(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for msg in client.messages:
                topic = msg.topic.value
                kind = topic.rsplit("/", 1)[-1]
                self.counts[kind] += 1
                if kind == "transactions":
                    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                        event = json.loads(msg.payload)
                        self.t_done[int(event["t_id"])] = int(event["t_done"])

    async def _stop_watch(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# ----------------------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True, slots=True)
class Expect:
    """How a chain must end: its state, (t_done, t_success) per transaction in t_id order, the probe effects
    in order, and ``confirmed`` of the (table, id) rows its confirmations touch (None: the row is deleted)."""

    state: ChainState
    transactions: list[tuple[int, int]]
    effects: list[str] | None = None
    rows: dict[tuple[str, int], int | None] = field(default_factory=dict)


@dataclass(slots=True)
class Scenario:
    name: str
    what: str
    fired: FiredChain
    expect: Expect
    effects: Path | None
    fired_at: float
    ended_at: float = 0.0
    chain: dict[str, Any] = field(default_factory=dict)
    transactions: list[dict[str, Any]] = field(default_factory=list)


Report = Callable[[], Awaitable[list[str]]]


@dataclass(slots=True)
class Demo:
    """What a scenario needs: the API's DB connection, the MQTT side, the work directory, the pools (None
    without storage) and the time the whole demo must end by (``time.monotonic()``). ``reports`` collects the
    scenarios' own reports, run after the chains' report.

    Each fired chain is waited for at once in the background, on a connection of its own from ``connect``
    (``conn`` serves the scenarios, one query at a time): a chain's wall time then ends when it ends, even while
    a later scenario still fires and waits for chains of its own (see :meth:`ended`)."""

    conn: aiomysql.Connection
    mqtt: Mqtt
    workdir: Path
    storage: Storage | None = None
    deadline: float = float("inf")
    reports: list[Report] = field(default_factory=list)
    connect: Callable[[], Awaitable[aiomysql.Connection]] | None = None
    waiters: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # chain id -> its waiter
    vz: FakeVzNode | None = None  # node 1's fake OpenVZ (the VPS scenario)

    def effects(self, name: str) -> Path:
        return self.workdir / f"effects-{name}.txt"

    async def insert(self, table: str, **columns: Any) -> int:
        """One row as the API's ``save!`` writes it; returns its id."""
        names = ", ".join(f"`{c}`" for c in columns)
        marks = ", ".join(["%s"] * len(columns))
        async with self.conn.cursor() as cur:
            await cur.execute(f"INSERT INTO `{table}` ({names}) VALUES ({marks})", tuple(columns.values()))
            return int(cur.lastrowid)

    async def new_dataset(self, name: str) -> int:
        """Insert a ``datasets`` row as the API does before it fires the chain that creates it."""
        return await self.insert("datasets", name=name.rsplit("/", 1)[-1], full_name=name, user_editable=0,
                                 user_create=0, user_destroy=0, confirmed=0, object_state=0)

    async def new_properties(self, pool_id: int, dataset_id: int, dip_id: int,
                             values: dict[str, tuple[Any, bool]]) -> dict[str, int]:
        """``dataset_properties`` rows of a new dataset in a pool (unconfirmed), ``name -> (value, inherited)``;
        the value is stored as Rails ``serialize`` stores it. Returns ``name -> id``."""
        return {name: await self.insert("dataset_properties", pool_id=pool_id, dataset_id=dataset_id,
                                        dataset_in_pool_id=dip_id, name=name, value=ruby_yaml(value),
                                        inherited=int(inherited), confirmed=0)
                for name, (value, inherited) in values.items()}

    async def fire(self, name: str, what: str, builder: ChainBuilder, *, first_server: int,
                   expect: Callable[[list[int]], Expect], effects: Path | None = None) -> Scenario:
        """Fire ``builder`` like ``TransactionChain.fire``, then wake the first node (after the commit)."""
        fired_at = time.monotonic()
        fired = await builder.fire(self.conn)
        await self.mqtt.wake(first_server, fired.chain_id, fired.transaction_ids[0])
        ports = ", ".join(f"port {addr}:{port} (node {node})" for node, addr, port in fired.ports)
        say(f"  fired chain {fired.chain_id:>3} {name:<14} {len(fired.transaction_ids):>2} transactions"
            f"{', ' + ports if ports else ''}")
        scenario = Scenario(name, what, fired, expect(fired.transaction_ids), effects, fired_at)
        self.waiters[fired.chain_id] = asyncio.create_task(self._wait_end(scenario), name=f"chain-{fired.chain_id}")
        return scenario

    async def _wait_end(self, s: Scenario) -> None:
        assert self.connect is not None, "Demo.connect is needed to wait for chains"
        conn = await self.connect()
        try:
            # wait_chain's own timeout comes first: its error lists the transactions of the chain that hangs
            s.chain = await wait_chain(conn, s.fired.chain_id, timeout=max(self.deadline - time.monotonic() - 3, 1))
            s.ended_at = time.monotonic()
        finally:
            conn.close()

    async def ended(self, *scenarios: Scenario) -> None:
        """Wait until the chains of ``scenarios`` ended (then in ``.chain``, and ``.ended_at`` set)."""
        await asyncio.gather(*(self.waiters[s.fired.chain_id] for s in scenarios))

    async def stop_waiting(self) -> None:
        """Cancel the waiters still running (the demo failed early)."""
        for task in self.waiters.values():
            task.cancel()
        await asyncio.gather(*self.waiters.values(), return_exceptions=True)


def _probe(effects: Path, **params: Any) -> dict[str, Any]:
    return {"effects": str(effects), **params}


def _create(dataset: int) -> Confirmation:
    return Confirmation.create("Dataset", "datasets", {"id": dataset})


def _created(class_name: str, table: str, *ids: int) -> list[Confirmation]:
    return [Confirmation.create(class_name, table, {"id": i}) for i in ids]


def ruby_yaml(value: Any) -> str:
    """A scalar as Ruby's ``YAML.dump`` writes it into a serialized column: ``"--- true\\n...\\n"``."""
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return f"--- {text}\n...\n"


def utc_now() -> str:
    """The API's timestamp in names (snapshots, branches): UTC ``YYYY-MM-DDTHH:MM:SS``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


async def scenario_hop(demo: Demo) -> Scenario:
    """NoOp@node1 -> Probe@node2 -> NoOp@node1, with a lock, a port on node 2 and a create confirmation."""
    effects = demo.effects("hop")
    ds = await demo.new_dataset("demo/hop")
    b = ChainBuilder("demo_hop").lock("Dataset", ds).reserve_port(2)
    b.append(NOOP, server=1, confirmations=[_create(ds)])
    b.append(PROBE, server=2, params=_probe(effects, addr=b.addr_ref(), port=b.port_ref()))
    b.append(NOOP, server=1)
    return await demo.fire(
        "hop", "NoOp@1 -> Probe@2 -> NoOp@1, lock Dataset, port on node 2, create confirmation", b,
        first_server=1, effects=effects,
        expect=lambda t: Expect(ChainState.DONE, [(1, 1)] * 3, [f"exec {t[1]}"], {("datasets", ds): 1}))


async def scenario_noops(demo: Demo) -> Scenario:
    """Ten NoOps on node 1: the daemon starts each follower at once, without waiting for a poll."""
    b = ChainBuilder("demo_noops")
    for _ in range(10):
        b.append(NOOP, server=1)
    return await demo.fire("noops", "10 x NoOp@1", b, first_server=1,
                           expect=lambda t: Expect(ChainState.DONE, [(1, 1)] * 10))


async def scenario_rollback(demo: Demo) -> Scenario:
    """Probe@1 -> Probe@2 -> failing Probe@1: the failing one rolls itself back, then the others in reverse
    order on their own nodes; the created row is deleted and the lock released."""
    effects = demo.effects("rollback")
    ds = await demo.new_dataset("demo/rollback")
    b = ChainBuilder("demo_rollback").lock("Dataset", ds)
    b.append(PROBE, server=1, params=_probe(effects), confirmations=[_create(ds)])
    b.append(PROBE, server=2, params=_probe(effects))
    b.append(PROBE, server=1, params=_probe(effects, fail=True))
    return await demo.fire(
        "rollback", "Probe@1 -> Probe@2 -> failing Probe@1, lock Dataset, create confirmation", b,
        first_server=1, effects=effects,
        # a failed transaction that rolled itself back keeps the rollback's status (v2.0), hence (2, 1)
        expect=lambda t: Expect(ChainState.FAILED, [(2, 1)] * 3,
                                [f"exec {x}" for x in t] + [f"rollback {x}" for x in reversed(t)],
                                {("datasets", ds): None}))


async def scenario_keep_going(demo: Demo) -> Scenario:
    """NoOp@1 -> failing keep_going Probe@2 -> NoOp@1: the failure is recorded and the chain goes on."""
    effects = demo.effects("keep_going")
    b = ChainBuilder("demo_keep_going")
    b.append(NOOP, server=1)
    b.append(PROBE, server=2, params=_probe(effects, fail=True), reversible=KEEP_GOING)
    b.append(NOOP, server=1)
    return await demo.fire(
        "keep_going", "NoOp@1 -> failing Probe@2 (reversible=2 keep_going) -> NoOp@1", b,
        first_server=1, effects=effects,
        expect=lambda t: Expect(ChainState.DONE, [(1, 1), (1, 0), (1, 1)], [f"exec {t[1]}"]))


# ----------------------------------------------------------------------------------------------------------
# Storage: one pool per node, dataset chains on them


@dataclass(slots=True)
class Storage:
    """The ZFS side of the demo: the backend (``zfs-fuse`` or ``fake-zfs``) and why it was chosen, its driver,
    the ``bin`` section and environment the daemons need for it (fake-zfs only) and one pool per node."""

    backend: str
    why: str
    zfs: Zfs
    bin: dict[str, str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    pools: dict[int, TempPool] = field(default_factory=dict)  # server_id -> pool

    def fs(self, server_id: int) -> str:
        """``pools.filesystem`` of the node: ``<pool>/vz`` (hypervisor) or ``<pool>/backup``."""
        return self.pools[server_id].path(POOL_ROLES[server_id][2])

    async def names(self, pool: str) -> list[str]:
        """``zfs list -H -t all -o name -r <pool>``, in zfs's order."""
        done = await system.run([self.zfs.zfs_bin, "list", "-H", "-t", "all", "-o", "name", "-r", pool],
                                timeout=30)
        return done.stdout.split()

    def destroy_hint(self) -> str:
        names = " ".join(tp.name for tp in self.pools.values())
        if self.backend == "fake-zfs":
            return " && ".join(f"FAKE_ZFS_ROOT={self.env['FAKE_ZFS_ROOT']} {self.zfs.zpool_bin} destroy {tp.name}"
                               for tp in self.pools.values())
        return f"for p in {names}; do zpool destroy $p; done"


async def select_storage(mode: str, workdir: Path) -> Storage:
    """zfs-fuse when ``zpool list`` works (``auto``, ``fuse``), else (``auto``, ``fake``) fake-zfs through
    ``zfs``/``zpool`` symlinks in ``<workdir>/fake-zfs/bin`` with its state in ``<workdir>/fake-zfs/root``."""
    if mode in ("auto", "fuse"):
        try:
            async with asyncio.timeout(ZPOOL_PROBE_TIMEOUT):
                problem = await zfs_unavailable()
        except TimeoutError:  # a wedged zfs-fuse daemon: the demo must stay bounded in time
            problem = f"zpool list did not answer within {ZPOOL_PROBE_TIMEOUT:g} s"
        if problem is None:
            return Storage("zfs-fuse", f"zpool list works, --zfs {mode}", Zfs(timeout=30.0))
        if mode == "fuse":
            raise DemoError(f"--zfs fuse: zfs-fuse cannot be used here ({problem})")
        why = f"zfs-fuse cannot run here ({problem}), --zfs auto"
    else:
        why = "--zfs fake"
    base = workdir / "fake-zfs"
    shutil.rmtree(base, ignore_errors=True)  # the state of an earlier run: its pools are gone with it
    bindir = base / "bin"
    bindir.mkdir(parents=True)
    script = fake_zfs_script(bindir)
    for name in ("zfs", "zpool"):
        (bindir / name).symlink_to(script)
    root = str(base / "root")
    os.environ["FAKE_ZFS_ROOT"] = root  # the demo's own zfs commands (pools, report)
    bins = {"zfs": str(bindir / "zfs"), "zpool": str(bindir / "zpool")}
    return Storage("fake-zfs", why, Zfs(zfs=bins["zfs"], zpool=bins["zpool"], timeout=30.0), bin=bins,
                   env={"FAKE_ZFS_ROOT": root})


async def create_pools(storage: Storage, workdir: Path, created: list[TempPool]) -> None:
    """One TempPool per node (``vd`` + 8 hex digits, a sparse file in the work directory); each is appended to
    ``created`` before it is made, so that it is destroyed whatever happens next. Directories of earlier
    runs' pools are removed unless their pool still exists."""
    live = set(await storage.zfs.pools())
    for old in sorted(workdir.iterdir()):
        if _POOL_DIR_RE.match(old.name) and old.is_dir():
            name = old.name.split(".", 1)[0]
            if name in live:
                say(f"  pool {name} of an earlier run (--keep-running?) still exists, left alone: destroy it with "
                    f"zpool destroy {name}")
            else:
                shutil.rmtree(old, ignore_errors=True)
    for server_id in POOL_ROLES:
        pool = TempPool(name=unique_pool_name("vd"), size=POOL_SIZE, base_dir=str(workdir), zfs=storage.zfs)
        storage.pools[server_id] = pool
        created.append(pool)
    for pool in storage.pools.values():  # one at a time: zfs-fuse is shared with everybody on the machine
        await pool.create()
    for server_id, pool in storage.pools.items():
        role, what, _fs = POOL_ROLES[server_id]
        say(f"  {NODES[server_id - 1][1]}: pool {pool.name} ({POOL_SIZE // MIB} MiB sparse file {pool.file}), "
            f"{what} pool filesystem {storage.fs(server_id)}")


async def _zpool(zpool: str, *args: str, timeout: float) -> tuple[int | None, str]:
    """``zpool <args>`` with its output in a temporary file, not a pipe (zfs-fuse's ``zpool destroy`` starts
    ``umount``, which inherits the pipes and holds them for ever when the daemon is wedged), waiting at most
    ``timeout`` seconds: ``(None, why)`` when it did not end, and it is then left alone."""
    with tempfile.TemporaryFile() as out:
        proc = await asyncio.create_subprocess_exec(zpool, *args, stdin=subprocess.DEVNULL, stdout=out,
                                                    stderr=subprocess.STDOUT)
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):  # reaped, unless it is stuck in the kernel (D state)
                await asyncio.wait_for(proc.wait(), 1.0)
            return None, f"zpool {' '.join(args)} did not end within {timeout:g} s"
        out.seek(0)
        return rc, out.read().decode(errors="replace").strip()


async def _remove_directory(path: str, timeout: float = 5.0) -> None:
    """rmtree in a daemon thread, waited for at most ``timeout``: a stat on a hung FUSE mount never returns."""
    thread = threading.Thread(target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def destroy_pools(pools: Sequence[TempPool], budget: float = 30.0) -> list[str]:
    """``zpool destroy`` each pool (``-f`` after a few refusals), retrying while zfs-fuse says it is busy (it does
    for a moment after writes), for at most ``budget`` seconds in all and at least one try per pool: a wedged
    zfs-fuse must not hold the demo. A destroyed pool's directory is removed; a pool that is left keeps its vdev.
    Returns what could not be destroyed, with the command to do it later."""
    problems: list[str] = []
    deadline = time.monotonic() + budget
    for pool in pools:
        tries = 0
        while pool.created:
            force = ["-f"] if tries >= 3 else []
            rc, out = await _zpool(pool.zfs.zpool_bin, "destroy", *force, pool.name,
                                   timeout=max(deadline - time.monotonic(), 2.0))
            tries += 1
            if rc == 0 or "no such pool" in out:
                pool.created = False
            elif rc is None or time.monotonic() + 0.5 >= deadline:
                problems.append(f"pool {pool.name} not destroyed ({out or f'exit code {rc}'}): destroy it later "
                                f"with {pool.zfs.zpool_bin} destroy {pool.name}")
                break
            else:
                await asyncio.sleep(0.5)
        if not pool.created and pool.directory:
            await _remove_directory(pool.directory)
            pool.directory = ""
    return problems


ScenarioFn = Callable[[Demo], Awaitable[Scenario | list[Scenario]]]


def scenario_functions() -> list[ScenarioFn]:
    """The scenarios, in the order they fire. The storage one (with the backup between the nodes) lives in
    :mod:`vpsadmind.demo_transfer`, which builds on this module: it is imported here, when the demo runs, so
    that importing either module never needs the other one half-initialised."""
    from vpsadmind.demo_transfer import scenario_storage

    return [scenario_hop, scenario_noops, scenario_rollback, scenario_keep_going, scenario_storage]


# ----------------------------------------------------------------------------------------------------------
# Database, daemons


class DemoError(Exception):
    """A condition the demo explains in one sentence, without a traceback."""


async def check_not_served(settings: TestDbSettings, database: str) -> None:
    """Refuse to touch ``database`` while daemons still serve it (left by a run with ``--keep-running``)."""
    conn = await connect(settings)
    held: list[str] = []
    try:
        async with conn.cursor() as cur:
            for server_id, name, _ip in NODES:
                # the named lock a daemon holds for its node, see vpsadmind/engine/node_lock.py
                await cur.execute("SELECT IS_USED_LOCK(%s)", (f"vpsadmind:{database}:{server_id}"[:64],))
                holder = (await cur.fetchone())[0]
                if holder is None:
                    continue
                with contextlib.suppress(aiomysql.Error):  # who holds it, as the daemon itself records it
                    await cur.execute(f"SELECT pid, host FROM `{database}`.vpsadmind_nodes WHERE server_id = %s "
                                      "AND connection_id = %s", (server_id, holder))
                    row = await cur.fetchone()
                    holder = f"pid {row[0]} on {row[1]}" if row else f"MySQL connection {holder}"
                held.append(f"{name} by {holder}")
    finally:
        conn.close()
    if held:
        raise DemoError(f"database {database} is still served by daemons ({', '.join(held)}), probably from a "
                        "run with --keep-running: stop them first with kill -TERM <pid>")


async def prepare_database(settings: TestDbSettings, database: str) -> None:
    """(Re)create ``database`` with the v2.0 schema and register the nodes with their free ports."""
    await create_database(database, settings)
    conn = await connect(settings, database)
    try:
        for server_id, name, ip in NODES:
            await register_node(conn, server_id, name=name, ip4=ip, server_type="node")
    finally:
        conn.close()


def clean_workdir(workdir: Path) -> None:
    """Remove what a previous run left: logs, configs, effects and journals (a stale journal would replay
    results of the old database into the new one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for server_id, name, _ip in NODES:
        for path in (workdir / f"{name}.yml", workdir / f"{name}.log"):
            path.unlink(missing_ok=True)
        shutil.rmtree(workdir / f"journal{server_id}", ignore_errors=True)
    for path in workdir.glob("effects-*.txt"):
        path.unlink()


async def start_daemons(args: argparse.Namespace, settings: TestDbSettings, daemons: list[DaemonProcess],
                        storage: Storage | None = None, vz: FakeVzNode | None = None) -> None:
    mqtt: dict[str, Any] = ({"enabled": True, "host": args.mqtt_host, "port": args.mqtt_port,
                             "topic_prefix": args.topic_prefix} if not args.no_mqtt else {"enabled": False})
    for server_id, name, _ip in NODES:
        extra = vz.daemon(server_id) if vz else None  # the VPS handlers, and node 1's fake vzctl
        cfg = write_config(args.workdir / f"{name}.yml", settings, args.database, server_id=server_id,
                           journal=args.workdir / f"journal{server_id}", check_interval=CHECK_INTERVAL, mqtt=mqtt,
                           bin=storage.bin if storage else None, sections=extra.sections if extra else None,
                           extra_vpsadmin={"queues": SEND_QUEUE, **(extra.vpsadmin if extra else {})})
        env = {**(storage.env if storage else {}), **(extra.env if extra else {})}
        daemons.append(DaemonProcess(cfg, args.workdir / f"{name}.log", env=env))
    await asyncio.gather(*(asyncio.to_thread(d.start, timeout=20.0) for d in daemons))
    for (server_id, name, ip), d in zip(NODES, daemons, strict=True):
        say(f"  {name} (server_id {server_id}, {ip}): pid {d.pid}, config {d.config}, log {d.log}")


async def stop_daemons(daemons: Sequence[DaemonProcess], timeout: float = 15.0) -> list[int | None]:
    """SIGTERM each running daemon and wait; one that does not end within ``timeout`` is killed."""

    def stop(d: DaemonProcess) -> int | None:
        if d.proc is None:
            return None
        try:
            return d.terminate(timeout=timeout)
        except subprocess.TimeoutExpired:
            d.kill()
            return d.returncode

    return list(await asyncio.gather(*(asyncio.to_thread(stop, d) for d in daemons)))


# ----------------------------------------------------------------------------------------------------------
# Waiting, report, verdict


async def fetch(conn: aiomysql.Connection, sql: str, args: Any = None) -> list[dict[str, Any]]:
    async with conn.cursor(aiomysql.DictCursor) as cur:
        await cur.execute(sql, args)
        return [dict(r) for r in await cur.fetchall()]


def _state_name(code: int) -> str:
    return {int(c): c.name.lower() for c in ChainState}.get(code, f"state {code}")


def report_chains(scenarios: Sequence[Scenario]) -> None:
    say("\nChains (wall time: from fire to the end seen in the database)")
    table(["chain", "scenario", "state", "size", "progress", "wall"],
          [[s.fired.chain_id, s.name, _state_name(int(s.chain["state"])), s.chain["size"],
            f"{s.chain['progress']}/{s.chain['size']}", f"{s.ended_at - s.fired_at:.2f} s"] for s in scenarios])


def report_transactions(scenarios: Sequence[Scenario]) -> None:
    say("\nTransactions (rev: reversible, 2 = keep_going; t_done: 1 done, 2 rolled back; "
        "duration: finished_at - started_at, whole seconds as v2.0's DATETIME columns store them)")
    for s in scenarios:
        say(f"\n  chain {s.fired.chain_id} {s.name} ({s.what}): {_state_name(int(s.chain['state']))}")
        rows = []
        for t in s.transactions:
            secs = (t["finished_at"] - t["started_at"]).total_seconds() if t["finished_at"] and t["started_at"] \
                else None
            rows.append([t["t_id"], f"node{t['t_server']}", t["t_type"], handler_name(int(t["t_type"])),
                         t["reversible"], _T_DONE.get(t["t_done"], t["t_done"]),
                         _T_SUCCESS.get(t["t_success"], t["t_success"]), "-" if secs is None else f"{secs:.0f} s",
                         str(t["t_output"] or "")[:72]])
        table(["t_id", "node", "type", "handler", "rev", "t_done", "t_success", "duration", "t_output"],
              rows, indent="    ")


def report_effects(scenarios: Sequence[Scenario]) -> None:
    say("\nProbe effects (one line per exec or rollback, in the order they happened)")
    rows = []
    for s in scenarios:
        if s.effects is None:
            continue
        node = {int(t["t_id"]): int(t["t_server"]) for t in s.transactions}
        lines = read_effects(str(s.effects))
        shown = [f"{line}@node{node.get(int(line.split()[-1]), '?')}" for line in lines] or ["(none)"]
        rows.append([s.name, ", ".join(shown)])
    table(["scenario", "effects"], rows)


async def report_leftovers(conn: aiomysql.Connection, scenarios: Sequence[Scenario]) -> list[str]:
    """Print locks, ports and confirmation rows; return what differs from the expectations."""
    problems: list[str] = []
    locks = await fetch(conn, "SELECT resource, row_id, transaction_chain_id FROM resource_locks")
    ports = await fetch(conn, "SELECT node_id, addr, port, transaction_chain_id FROM port_reservations "
                              "WHERE addr IS NOT NULL OR transaction_chain_id IS NOT NULL")
    say(f"\nResource locks left: {len(locks)}   port reservations left: {len(ports)}")
    for row in locks + ports:
        say(f"  {row}")
        problems.append(f"left behind: {row}")
    expected = {row: (s, want) for s in scenarios for row, want in s.expect.rows.items()}
    if not expected:
        return problems
    say("\nRows with confirmations (create: confirmed 0 -> 1 when the chain is done, deleted when rolled back; "
        "consecutive ids of one table shown as a range)")
    rows: list[list[Any]] = []
    for (tbl, row_id), (s, want) in expected.items():
        found = await fetch(conn, f"SELECT confirmed FROM `{tbl}` WHERE id = %s", (row_id,))
        got = int(found[0]["confirmed"]) if found else None
        now = "deleted" if got is None else f"confirmed={got}"
        wanted = "deleted" if want is None else f"confirmed={want}"
        if got != want:
            problems.append(f"{s.name}: {tbl}#{row_id} is {now}, expected {wanted}")
        last = rows[-1] if rows else None
        if last is not None and last[0] == tbl and last[2] == row_id - 1 and last[3:] == [s.name, now, wanted]:
            last[2] = row_id
        else:
            rows.append([tbl, row_id, row_id, s.name, now, wanted])
    table(["row", "scenario", "now", "expected"],
          [[f"{tbl}#{first}" + (f"-{end}" if end != first else ""), *rest] for tbl, first, end, *rest in rows])
    return problems


def check(s: Scenario) -> list[str]:
    """What differs between how the chain ended and how its scenario expects it to end."""
    problems: list[str] = []
    state = int(s.chain["state"])
    if state != s.expect.state:
        problems.append(f"{s.name}: chain {s.fired.chain_id} ended {_state_name(state)}, "
                        f"expected {s.expect.state.name.lower()}")
    got = [(int(t["t_done"]), int(t["t_success"])) for t in s.transactions]
    if got != s.expect.transactions:
        problems.append(f"{s.name}: (t_done, t_success) {got}, expected {s.expect.transactions}")
    if s.expect.effects is not None and s.effects is not None:
        effects = read_effects(str(s.effects))
        if effects != s.expect.effects:
            problems.append(f"{s.name}: effects {effects}, expected {s.expect.effects}")
    return problems


def report_mqtt(mqtt: Mqtt, daemons: Sequence[DaemonProcess]) -> None:
    if mqtt.client is None:
        say(f"\nMQTT: {mqtt.state}")
        return
    c = mqtt.counts
    node_wakes = max(c["wake"] - mqtt.sent, 0)
    up = [name for (_sid, name, _ip), d in zip(NODES, daemons, strict=True)
          if any(e.get("event") == "mqtt connected" for e in d.events())]
    say(f"\nMQTT ({mqtt.host}:{mqtt.port}, daemons connected: {', '.join(up) or 'none'}): {mqtt.sent} wake-ups "
        f"published by the demo "
        f"as the API, {node_wakes} node-to-node wake-ups, {c['transactions']} transaction events, "
        f"{c['state']} chain state events")


# ----------------------------------------------------------------------------------------------------------
# Main


async def demo(args: argparse.Namespace, daemons: list[DaemonProcess], pools: list[TempPool]) -> int:
    from vpsadmind.demo_vps import HANDLER_MODULES, prepare_vz  # it builds on this module: imported once it runs

    settings = TestDbSettings.from_env()
    import_handler_modules(HANDLER_MODULES)  # handler names for the report
    say(f"vpsadmind demo: database {args.database} on {settings.describe()}, work directory {args.workdir}")
    await check_not_served(settings, args.database)
    clean_workdir(args.workdir)
    await prepare_database(settings, args.database)
    storage = await select_storage(args.zfs, args.workdir)
    say(f"Storage: {storage.backend} ({storage.why}); one pool per node")
    await create_pools(storage, args.workdir, pools)
    vz = await prepare_vz(args.workdir, storage)
    say(f"VPS node: node1, {vz.describe()}")
    async with contextlib.AsyncExitStack() as stack:
        mqtt = Mqtt(args.mqtt_host, args.mqtt_port, args.topic_prefix, enabled=not args.no_mqtt)
        await mqtt.start(stack)
        say(f"MQTT: {mqtt.state}")
        say(f"\nStarting two daemons (check_interval {CHECK_INTERVAL:g} s"
            + (f", bin.zfs {storage.bin['zfs']}" if storage.bin else "") + ")")
        await start_daemons(args, settings, daemons, storage, vz)
        conn = await connect(settings, args.database)
        stack.callback(conn.close)
        say("\nFiring chains as the API does (one DB transaction each, then the MQTT wake-up if MQTT is on)")
        ctx = Demo(conn, mqtt, args.workdir, storage, args.deadline, connect=lambda: connect(settings, args.database),
                   vz=vz)
        stack.push_async_callback(ctx.stop_waiting)
        scenarios: list[Scenario] = []
        for scenario in scenario_functions():
            fired = await scenario(ctx)
            scenarios += fired if isinstance(fired, list) else [fired]
        await ctx.ended(*scenarios)
        for s in scenarios:
            s.transactions = await transactions_of(conn, s.fired.chain_id)
        await mqtt.settle({int(t["t_id"]): int(t["t_done"]) for s in scenarios for t in s.transactions})
        report_chains(scenarios)
        report_transactions(scenarios)
        report_effects(scenarios)
        problems = await report_leftovers(conn, scenarios)
        for report in ctx.reports:
            problems += await report()
        report_mqtt(mqtt, daemons)
    problems = [p for s in scenarios for p in check(s)] + problems + await finish(args, daemons, pools, storage)
    say(f"\nDatabase {args.database} is kept for inspection (recreated at the next run).")
    if problems:
        say("\nDEMO FAILED: the run differs from what the scenarios expect:")
        for p in problems:
            say(f"  - {p}")
        return 1
    say("\nDemo OK: " + ", ".join(f"{s.name} {_state_name(int(s.chain['state']))}" for s in scenarios)
        + f" - every chain ended as expected (storage on {storage.backend}).")
    return 0


async def finish(args: argparse.Namespace, daemons: list[DaemonProcess], pools: list[TempPool],
                 storage: Storage) -> list[str]:
    """Stop the daemons and destroy the pools (or, with ``--keep-running``, say how to); return what failed."""
    if args.keep_running:
        say("\nDaemons keep running (--keep-running):")
        for (_sid, name, _ip), d in zip(NODES, daemons, strict=True):
            say(f"  {name}: pid {d.pid}, log {d.log}")
        say(f"  stop them with: kill -TERM {' '.join(str(d.pid) for d in daemons)}")
        say(f"Pools kept ({', '.join(p.name for p in pools)}); after stopping the daemons destroy them with: "
            f"{storage.destroy_hint()}")
        return []
    codes = await stop_daemons(daemons)
    say("\nDaemons stopped with SIGTERM: " + ", ".join(
        f"{name} exit code {code}" for (_sid, name, _ip), code in zip(NODES, codes, strict=True)))
    problems = [f"{name} exited with {code}, expected 0"
                for (_sid, name, _ip), code in zip(NODES, codes, strict=True) if code != 0]
    problems += [f"left mounted after the daemons stopped (unmounted now): {m}" for m in await _release(args)]
    failed = await destroy_pools(pools)
    say(f"Pools destroyed: {', '.join(p.name for p in pools if not p.created) or 'none'}")
    return problems + failed


async def _release(args: argparse.Namespace) -> list[str]:
    from vpsadmind.demo_vps import release_mounts

    return await release_mounts(args.workdir)


async def run(args: argparse.Namespace) -> int:
    """:func:`demo` under a global timeout; daemons are stopped and pools destroyed on any error (and on
    success unless ``--keep-running``)."""
    daemons: list[DaemonProcess] = []
    pools: list[TempPool] = []
    keep = False
    args.deadline = time.monotonic() + args.timeout
    task = asyncio.current_task()
    if task is not None:  # SIGTERM: stop the daemons as on any other error
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with asyncio.timeout(args.timeout):
            code = await demo(args, daemons, pools)
        keep = args.keep_running and code == 0
        return code
    except (TimeoutError, DemoError) as exc:
        say(f"\nDEMO FAILED: {exc or f'not finished within {args.timeout:g} s (--timeout)'}")
        return 1
    except Exception as exc:
        traceback.print_exc()
        say(f"\nDEMO FAILED: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if not keep:  # daemons first: they may still run zfs commands on the pools
            left = [d for d in daemons if d.proc is not None and d.returncode is None]
            codes = await stop_daemons(left, timeout=10.0) if left else None
            if mounts := await _release(args):  # a bind mount into a pool would keep it busy, or stay in /tmp
                say(f"Unmounted what the VPS left mounted: {', '.join(mounts)}")
            left_pools = [p for p in pools if p.created or p.directory]
            failed = await destroy_pools(left_pools) if left_pools else None
            if codes is not None:
                say(f"Stopped the daemons left running: exit codes {codes}")
            if failed:
                say(f"Pools left behind: {'; '.join(failed)}")
            elif failed is not None:
                say(f"Destroyed the pools left: {', '.join(p.name for p in left_pools)}")


def _database(value: str) -> str:
    if not _DB_NAME_RE.match(value):
        raise argparse.ArgumentTypeError("must match vpsadmind[A-Za-z0-9_]* (at most 64 characters)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vpsadmind.demo", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"configs, logs, journals and probe effects (default {DEFAULT_WORKDIR})")
    p.add_argument("--keep-running", action="store_true", help="leave the daemons running at the end")
    p.add_argument("--no-mqtt", action="store_true", help="daemons without the MQTT bus: polling only")
    p.add_argument("--zfs", choices=("auto", "fuse", "fake"), default="auto",
                   help="pools on zfs-fuse, on the fake-zfs harness, or (auto, the default) on zfs-fuse when "
                        "`zpool list` works, else fake-zfs")
    p.add_argument("--database", type=_database, default=DEMO_DATABASE,
                   help=f"database to (re)create (default {DEMO_DATABASE})")
    p.add_argument("--mqtt-host", default="127.0.0.1", help="MQTT broker (default 127.0.0.1)")
    p.add_argument("--mqtt-port", type=int, default=1883, help="MQTT broker port (default 1883)")
    p.add_argument("--topic-prefix", default="vpsadmin", help="MQTT topic prefix (default vpsadmin)")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.workdir = args.workdir.resolve()
    try:
        return asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("\ninterrupted")
        return 130


if __name__ == "__main__":
    # Run the copy of this module that vpsadmind.demo_transfer imports, not this one (``__main__``): with two
    # copies, the storage scenario's classes (DemoError, Expect, ...) would not be the ones main() checks for.
    from vpsadmind.demo import main as canonical_main

    sys.exit(canonical_main())
