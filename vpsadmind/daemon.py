"""The daemon process: configuration, logging, bus, engine, signals and systemd notifications wired together."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import structlog

from vpsadmind import __version__
from vpsadmind.config import Config, load_config
from vpsadmind.engine.core import Engine
from vpsadmind.errors import AgentError, ConfigError, NodeLocked
from vpsadmind.handlers.base import import_handler_modules
from vpsadmind.log import configure_logging
from vpsadmind.sdnotify import notify, watchdog_interval

if TYPE_CHECKING:
    from vpsadmind.db import Database
    from vpsadmind.firewall.services import Network
    from vpsadmind.mount_registry import Mounts
    from vpsadmind.reporters.node_status import NodeStatusReporter

__all__ = ["Daemon", "EXIT_OK", "EXIT_ERR", "EXIT_LOCKED"]

EXIT_OK = 0
EXIT_ERR = 1
EXIT_LOCKED = 3
#: How long a stop waits for a traffic collection in progress (a database that does not answer) before it
#: cancels it; the last collection after the engine has stopped gets as long.
TRAFFIC_STOP_TIMEOUT: Final = 30.0
#: How long a stop waits for a node status report or the last mount state writes before it cancels them.
REPORTER_STOP_TIMEOUT: Final = 10.0

log = structlog.get_logger("vpsadmind.daemon")


class Daemon:
    def __init__(self, config_path: str, *, config: Config | None = None) -> None:
        self.config_path = config_path
        self.config = config or load_config(config_path)
        self.engine: Engine | None = None
        self.bus: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.exit_code = 0        # vpsadmindctl stop/restart/update: 100 / 150 / 200 (v2.0's exit codes)
        self.force_stop = False   # stop/restart -f: cancel running transactions instead of waiting
        self._drain: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self.network: Network | None = None      # firewall, shaper and traffic reporter of this node
        self._traffic: asyncio.Task[None] | None = None
        self._traffic_db: Database | None = None
        self.start_time = time.time()
        self.mounts: Mounts | None = None        # delayed mounts and mount state reports (mount_registry.py)
        self.node_status: NodeStatusReporter | None = None
        self._node_status: asyncio.Task[None] | None = None
        # Periodic reporters by name (their failure counts are metrics) and what ``vpsadmindctl refresh`` runs.
        self.reporters: dict[str, Any] = {}
        self.refreshers: dict[str, Callable[[], Awaitable[Any]]] = {}
        self.loops: dict[str, tuple[Any, asyncio.Task[None]]] = {}

    def request_stop(self) -> None:
        """SIGTERM, or ``vpsadmindctl stop|restart``: a ctl stop without -f first drains (no new work, wait for
        running work, no time bound, cancellable by ``resume`` as in v2.0); a signal stops within the bound."""
        if self.exit_code and not self.force_stop and self.engine is not None and not self._stop.is_set():
            if self._drain is None or self._drain.done():
                log.info("stop_pending", exit_code=self.exit_code)
                self.engine.paused = True
                self._drain = asyncio.get_running_loop().create_task(self._wait_drained(self.engine))
            return
        log.info("stop_requested")
        self._stop.set()

    async def _wait_drained(self, engine: Engine) -> None:
        while engine.running or engine.blockers:
            await asyncio.sleep(0.1)
        self._stop.set()

    def cancel_stop(self) -> bool:
        """``resume`` during a pending ctl stop: work goes on. False once the stop has begun."""
        if self._drain is None or self._drain.done() or self._stop.is_set():
            return False
        self._drain.cancel()
        self._drain = None
        if self.engine is not None:
            self.engine.paused = False
        log.info("stop_cancelled")
        return True

    def reload(self) -> None:
        """SIGHUP: re-read the file; a bad file is reported and the running configuration kept."""
        from vpsadmind.control.commands.configuration import changed_keys, restart_only

        notify("RELOADING=1")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc))
            notify("READY=1")
            return
        if new.server_id != self.config.server_id:
            log.error("reload_refused", error="vpsadmin.server_id cannot change while running")
            notify("READY=1")
            return
        later = [k for k in changed_keys(self.config.raw, new.raw) if restart_only(k)]
        if later:
            log.warning("config_needs_restart", keys=later)
        self.apply_config(new)
        log.info("reloaded", path=self.config_path)
        notify("READY=1")

    def apply_config(self, new: Config) -> None:
        """Make ``new`` the running configuration (``reload``, ``vpsadmindctl set config``)."""
        self.config = new
        configure_logging(new.log.level, new.log.format)
        if self.engine is not None:
            self.engine.config = new
            self.engine.ctx.config = new
            self.engine.queues.reconfigure(new.queues)
            if self.network is not None:  # the same Network (its lock and counters) under the new config
                from vpsadmind.firewall.services import install

                self.network.apply_config(new)
                install(self.engine.ctx, self.network)

    async def run(self) -> int:
        cfg = self.config
        for warning in cfg.warnings:
            log.warning("config_obsolete_key", path=self.config_path, detail=warning)
        import_handler_modules(cfg.handler_modules)
        engine = Engine(cfg)
        self.engine = engine
        from vpsadmind.control.server import ControlServer

        self._start_mounts(engine)
        # before engine.start(): status answers while the daemon still waits for the database, and metrics say so
        self._tasks.append(asyncio.create_task(ControlServer(self).serve(), name="control"))
        self._start_metrics()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await engine.start()
        except NodeLocked as exc:
            log.error("node_locked", error=str(exc))
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await engine.db.close()
            return EXIT_LOCKED
        self._start_bus(engine)
        self._start_node_status(engine)
        self._start_vps_status(engine)
        self._start_delayed_mounter(engine)
        await self._start_network(engine)
        self._start_storage_reporter(engine)
        log.info("started", version=__version__, server_id=cfg.server_id, pid_queue_slots=engine.queues.capacity)
        notify(f"READY=1\nSTATUS=serving server_id {cfg.server_id}")
        self._start_watchdog()
        return await self._serve(engine)

    def _start_bus(self, engine: Engine) -> None:
        if not self.config.mqtt.enabled:
            return
        from vpsadmind.bus import Bus

        self.bus = Bus(self.config.mqtt, server_id=self.config.server_id, on_wake=engine.wake)
        engine.events = self.bus
        self._tasks.append(asyncio.create_task(self.bus.run(), name="bus"))

    async def _start_network(self, engine: Engine) -> None:
        """The node's Network, which handlers and control commands share (one firewall lock, one pending
        traffic table); then v2.0's init at start (contract 10.6) and the traffic reporter (9.1)."""
        from vpsadmind.db import Database
        from vpsadmind.firewall.services import Network, install
        from vpsadmind.reporters.traffic import TrafficReporter

        cfg = self.config
        try:
            network = Network.from_config(cfg, engine.db)
        except AgentError as exc:  # e.g. a netdev name tc would not take: handlers fail, the daemon serves
            log.error("network_setup_failed", error=str(exc))
            return
        # its own pool (connected on first use): the last collection at stop runs after the engine closed its own
        self._traffic_db = Database(cfg.db)
        network.reporter = TrafficReporter(network.firewall, self._traffic_db, cfg.server_id, events=self.bus,
                                           interval=cfg.transfers_interval)
        install(engine.ctx, network)
        self.network = network
        if cfg.init:
            await self._init_network(network)
        if cfg.track_transfers:
            self._traffic = asyncio.create_task(network.reporter.run(), name="traffic-reporter")
            log.info("traffic_reporter_started", interval=cfg.transfers_interval)

    async def _init_network(self, network: Network) -> None:
        """Accounting chains, then the shaper's trees, each on its own: iptables or tc failing (a device that
        does not exist, no netfilter) is logged as an error and the daemon serves on, since transactions and
        the control socket (``vpsadmindctl reinit`` to repair) do not depend on them."""
        for resource in ("fw", "shaper"):
            try:
                result = await network.init([resource])
            except Exception as exc:
                log.error("network_init_failed", resource=resource, error=f"{type(exc).__name__}: {exc}")
            else:
                log.info("network_initialised", resource=resource, result=result[resource])

    async def _stop_traffic_reporter(self) -> None:
        """Let a collection in progress finish (cancelling ``iptables -L -Z`` could lose what it zeroed)."""
        task = self._traffic
        if task is None or self.network is None:
            return
        self.network.reporter.stop()
        done, _ = await asyncio.wait({task}, timeout=TRAFFIC_STOP_TIMEOUT)
        if not done:
            log.error("traffic_reporter_stuck", timeout=TRAFFIC_STOP_TIMEOUT)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _close_network(self) -> None:
        """After the engine has stopped, so that no transaction reads the chains any more: store what was
        counted since the last interval (and what the last transactions' reads collected), then close."""
        if self.network is not None and self._traffic is not None:
            try:
                await asyncio.wait_for(self.network.reporter.close(), TRAFFIC_STOP_TIMEOUT)
            except TimeoutError:
                log.error("final traffic report timed out", timeout=TRAFFIC_STOP_TIMEOUT)
        if self._traffic_db is not None:
            await self._traffic_db.close()

    def _start_storage_reporter(self, engine: Engine) -> None:
        """``storage.update_status``: the usage of this node's pools every ``resources_interval`` (contract 10.7)."""
        if self.config.storage.update_status:
            self._reporter = asyncio.create_task(self._report_storage(engine), name="storage-reporter")
            self._tasks.append(self._reporter)

    async def _report_storage(self, engine: Engine) -> None:
        from vpsadmind.handlers.storage_common import zfs_driver
        from vpsadmind.reporters.storage import StorageReporter

        server_id, interval = self.config.server_id, self.config.resources_interval
        # Until this node has a pool, only the database is asked: a node without pools may have no zfs at all.
        # Then the handlers' probed driver; StorageReporter reads the pools again at every run.
        while True:
            try:
                if await engine.db.fetchone("SELECT id FROM pools WHERE node_id = %s LIMIT 1", (server_id,)):
                    zfs = await zfs_driver(engine.ctx)
                    break
            except Exception as exc:  # DB outage, zfs not answering the probe: try again next interval
                log.error("storage_reporter_not_started", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(interval)
        log.info("storage_reporter_started", interval=interval, zfs=zfs.zfs_bin)
        reporter = StorageReporter(engine.db, zfs, server_id, events=self.bus, interval=interval)
        self.reporters["storage"] = reporter
        self.refreshers["storage"] = reporter.run_once
        await reporter.run()

    def _start_node_status(self, engine: Engine) -> None:
        """``servers_status`` every ``status_interval`` (contract 10.3), retained on the bus beside the node's
        online/offline status (whose Last Will the bus sets)."""
        from vpsadmind.reporters.node_status import NodeStatusReporter

        cfg = self.config
        reporter = NodeStatusReporter(engine.db, cfg.server_id, events=self.bus, interval=cfg.status_interval,
                                      vz_root=cfg.vz.vz_root)
        self.node_status = reporter
        self.reporters["node_status"] = reporter
        self.refreshers["node_status"] = reporter.run_once
        self._node_status = asyncio.create_task(reporter.run(), name="node-status")
        log.info("node_status_reporter_started", interval=cfg.status_interval)

    def _start_loop(self, name: str, loop: Any) -> None:
        """A background loop with ``run()`` and a graceful ``stop()`` (a reporter, the delayed mounter),
        stopped by :meth:`_stop_reporters` before the database closes."""
        self.loops[name] = (loop, asyncio.create_task(loop.run(), name=name))

    def _start_vps_status(self, engine: Engine) -> None:
        """``vps_status`` of this node's VPSes every ``resources_interval`` (contract 10.4), on the bus too."""
        if not self.config.update_vps_status:
            return
        from vpsadmind.handlers.vps_common import vz_for
        from vpsadmind.reporters.vps_status import VpsStatusReporter

        reporter = VpsStatusReporter(engine.db, vz_for(engine.ctx), self.config.server_id, events=self.bus,
                                     interval=self.config.resources_interval)
        self.reporters["vps_status"] = reporter
        self.refreshers["vps_status"] = reporter.run_once
        self._start_loop("vps-status", reporter)

    def _start_delayed_mounter(self, engine: Engine) -> None:
        """Retries the delayed mounts of running VPSes (contract 10.1); after engine.start(), because it
        loads the mounts still marked delayed from the database."""
        from vpsadmind.mounts.delayed import DelayedMounter

        self._start_loop("delayed-mounts", DelayedMounter(engine.ctx))

    def _start_mounts(self, engine: Engine) -> None:
        from vpsadmind.mount_registry import Mounts, install

        self.mounts = Mounts(engine.db)
        install(engine.ctx, self.mounts)
        self._tasks.append(asyncio.create_task(self.mounts.reporter.run(), name="mount-states"))

    def _start_metrics(self) -> None:
        """``metrics.enabled``: Prometheus metrics on ``metrics.listen:metrics.port`` (docs/metrics.md)."""
        cfg = self.config.metrics
        if not cfg.enabled:
            return
        from vpsadmind.metrics import MetricsServer, QueueDepth, render_metrics

        depth = QueueDepth()
        server = MetricsServer(lambda: render_metrics(self, depth), cfg.listen, cfg.port)
        self._tasks.append(asyncio.create_task(server.serve(), name="metrics"))

    async def _stop_reporters(self) -> None:
        """Before the engine closes the database under them: the storage reporter is cancelled (it only reads
        and updates usage), the node status report in progress may finish, queued mount states are written."""
        if self._reporter is not None:
            await _cancel(self._reporter)
        task = self._node_status
        if task is not None and self.node_status is not None:
            self.node_status.stop()
            done, _ = await asyncio.wait({task}, timeout=REPORTER_STOP_TIMEOUT)
            if not done:
                log.error("node_status_reporter_stuck", timeout=REPORTER_STOP_TIMEOUT)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for name, (loop, task) in self.loops.items():
            loop.stop()  # a round in progress (mount commands, vzctl exec) may finish
            done, _ = await asyncio.wait({task}, timeout=REPORTER_STOP_TIMEOUT)
            if not done:
                log.error("loop_stuck_at_stop", loop=name, timeout=REPORTER_STOP_TIMEOUT)
                await _cancel(task)
        if self.mounts is not None:
            await self.mounts.reporter.stop(REPORTER_STOP_TIMEOUT)

    def _start_watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return

        async def keepalive() -> None:
            while True:
                notify("WATCHDOG=1")
                await asyncio.sleep(interval)

        self._tasks.append(asyncio.create_task(keepalive(), name="watchdog"))

    async def _serve(self, engine: Engine) -> int:
        engine_task = asyncio.create_task(engine.run(), name="engine")
        stop_task = asyncio.create_task(self._stop.wait(), name="stop")
        await asyncio.wait({engine_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        code = EXIT_OK
        if engine_task.done() and engine_task.exception() is not None:
            exc = engine_task.exception()
            log.error("engine_failed", error=str(exc))
            code = EXIT_LOCKED if isinstance(exc, NodeLocked) else EXIT_ERR
        if code == EXIT_OK and self.exit_code:
            code = self.exit_code
        notify("STOPPING=1")
        await self._stop_reporters()
        await self._stop_traffic_reporter()
        await engine.stop(timeout=0 if self.force_stop else self.config.shutdown_timeout)
        await self._close_network()
        for task in (engine_task, stop_task):
            task.cancel()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(engine_task, stop_task, *self._tasks, return_exceptions=True)
        log.info("stopped", code=code)
        return code


async def _cancel(task: asyncio.Task[Any], *, tries: int = 50) -> None:
    """Cancel ``task`` and wait for it, cancelling again while it runs on: in Python 3.11 ``asyncio.wait_for``
    (aiomysql connects with it) swallows a cancellation that arrives just as the wrapped call completes
    (CPython gh-86296), and the task would then sleep through its next interval."""
    for _ in range(tries):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            break
    else:
        log.error("task_not_cancellable", task=task.get_name())
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: never "exception was never retrieved" at exit


def run_daemon(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"vpsadmind: {exc}")
        return EXIT_ERR
    configure_logging(config.log.level, config.log.format)
    try:
        return asyncio.run(Daemon(config_path, config=config).run())
    except AgentError as exc:
        log.error("fatal", error=str(exc))
        return EXIT_ERR
