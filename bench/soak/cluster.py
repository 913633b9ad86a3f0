"""The soak's small cluster: a private MariaDB and Mosquitto (so that the chaos may stop them), three zfs-fuse
pools, a fake OpenVZ tree per hypervisor, an SMTP server on loopback and three real vpsadmind processes.

Nodes (v2.0 roles): ``hv1`` (server 1, 127.0.0.2) and ``hv2`` (server 2, 127.0.0.3) are hypervisors whose VPS
private areas live in their pool (``<pool mountpoint>/<veid>/private``, as ``servers.ve_private`` on a ZFS node);
``backup`` (server 3, 127.0.0.4) keeps the backups in tree/branch datasets. Every daemon loads every handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiomysql
from aiosmtpd.controller import Controller

from vpsadmind.handlers.base import DEFAULT_HANDLER_MODULES
from vpsadmind.testing.chains import register_node
from vpsadmind.testing.db import TestDbSettings, connect, create_database
from vpsadmind.testing.fakescp import Scp, make_scp
from vpsadmind.testing.fakevz.install import fake_vzctl_script, fake_vzlist_script
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, ROOT_ENV
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.testing.mariadb import PrivateMariaDB, free_port
from vpsadmind.testing.mqtt import MosquittoServer
from vpsadmind.testing.process import DaemonProcess, write_config
from vpsadmind.testing.traffic import TrafficNode
from vpsadmind.testing.zfspool import TempPool, unique_pool_name
from vpsadmind.testing.zfssplit import SplitZfs, create_fake_pool, destroy_fake_pool
from vpsadmind.zfs.driver import Zfs

__all__ = ["Cluster", "Node", "Mailbox", "stop_daemons", "start_cluster", "stop_cluster", "TEMPLATE", "SAMPLE",
           "CONFIG", "DATABASE", "HV", "BACKUP"]

DATABASE: Final = "vpsadmind_soak"
TEMPLATE: Final = "debian-8.0-x86_64-minimal"
CONFIG: Final = "vswap-512m"
SAMPLE: Final = 'PHYSPAGES="0:512M"\nSWAPPAGES="0:256M"\nNUMPROC="400"\n'
HV: Final = (1, 2)
BACKUP: Final = 3
NODES: Final = ((1, "hv1", "127.0.0.2"), (2, "hv2", "127.0.0.3"), (3, "backup", "127.0.0.4"))
STALL_TIMEOUT: Final = 8.0       # transfer.stall_timeout: a stalled sender fails its chain within seconds
TRAFFIC_INTERVAL: Final = 1.0    # vpsadmin.transfers_interval of the hypervisors
ACCOUNTING_VPS: Final = 900      # + server_id: the VPS whose addresses carry the pumped traffic
POOL_SIZE: Final = 768 * 1024 * 1024    # sparse
#: v2.0 opens zfs_send 4 h after the start; the soak's backups and migrations send at once, two at a time
QUEUES: Final = {"zfs_send": {"threads": 2, "start_delay": 0}}


@dataclass(slots=True)
class Mailbox:
    """What the SMTP server on loopback received: one entry per DATA, with its Message-ID."""

    messages: list[dict[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        text = envelope.content.decode("utf-8", errors="replace")
        mid = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.lower().startswith("message-id:")), "")
        subject = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                        if line.lower().startswith("subject:")), "")
        self.messages.append({"message_id": mid, "subject": subject})
        return "250 OK"


@dataclass(slots=True)
class Node:
    server_id: int
    name: str
    ip: str
    pool: TempPool
    daemon: DaemonProcess
    vz_root: Path | None = None       # the fake OpenVZ tree (hypervisors)
    starts: int = 0

    @property
    def fs(self) -> str:
        """``pools.filesystem``: the pool itself (as in the migration tests)."""
        return self.pool.name

    @property
    def conf_dir(self) -> Path:
        assert self.vz_root is not None
        return self.vz_root / "etc" / "vz" / "conf"


@dataclass(slots=True)
class Cluster:
    workdir: Path
    db: PrivateMariaDB
    broker: MosquittoServer
    smtp: Controller
    mailbox: Mailbox
    scp: Scp | None = None
    nodes: dict[int, Node] = field(default_factory=dict)
    pool_ids: dict[int, int] = field(default_factory=dict)
    #: the hypervisors' networks (init fw/shaper and traffic accounting in namespaces) and their addresses
    traffic: dict[int, TrafficNode] = field(default_factory=dict)
    #: hv1's fake-zfs pools beside its zfs-fuse pool (zfs faults are injected there)
    split: SplitZfs | None = None
    zfs: Zfs = field(default_factory=lambda: Zfs(timeout=60.0))

    @property
    def settings(self) -> TestDbSettings:
        return self.db.settings()

    async def connect(self) -> aiomysql.Connection:
        return await connect(self.settings, DATABASE)

    def start_daemon(self, server_id: int, *, timeout: float = 60.0) -> float:
        """Start (or restart) a node's daemon and wait until it serves; returns how long that took."""
        node = self.nodes[server_id]
        began = time.monotonic()
        node.daemon.start(wait=False)
        node.daemon.wait_for_event("started", timeout=timeout, count=node.starts + 1)
        node.starts += 1
        return time.monotonic() - began


async def start_cluster(workdir: Path, *, check_interval: float = 1.0) -> Cluster:
    """Everything up, in an order that lets :func:`stop_cluster` clean up whatever part was made."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = PrivateMariaDB(workdir / "mariadb")
    await asyncio.to_thread(db.install)
    await asyncio.to_thread(db.start)
    broker = MosquittoServer(workdir / "mosquitto")
    await asyncio.to_thread(broker.start)
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    cluster = Cluster(workdir, db, broker, smtp, mailbox)
    await create_database(DATABASE, cluster.settings)
    conn = await cluster.connect()
    try:
        for server_id, name, ip in NODES:
            await register_node(conn, server_id, name=name, ip4=ip, server_type="node")
    finally:
        conn.close()
    for server_id, name, ip in NODES:
        pool = TempPool(name=unique_pool_name("sk"), size=POOL_SIZE, base_dir=str(workdir), zfs=cluster.zfs)
        cluster.nodes[server_id] = Node(server_id, name, ip, pool, DaemonProcess(workdir / f"{name}.yml",
                                                                                 workdir / f"{name}.log"))
        await pool.create()
    await _prepare_vz(cluster)
    await asyncio.to_thread(_prepare_network, cluster)
    await asyncio.to_thread(_prepare_fake_pools, cluster)
    await _register_pools(cluster)
    for server_id in cluster.nodes:
        _write_daemon_config(cluster, server_id, check_interval)
    await asyncio.gather(*(asyncio.to_thread(cluster.start_daemon, sid) for sid in cluster.nodes))
    return cluster


async def _prepare_vz(cluster: Cluster) -> None:
    """A fake OpenVZ tree per hypervisor with the template and the config sample; the fake scp of 4001 reads
    "the other node's" conf and mounts files from the other tree (same layout on every node, as in v2.0)."""
    for server_id in HV:
        node = cluster.nodes[server_id]
        node.vz_root = cluster.workdir / f"vz{server_id}"
        shutil.rmtree(node.vz_root, ignore_errors=True)
        await asyncio.to_thread(make_template, node.vz_root, TEMPLATE)
        (node.conf_dir / f"ve-{CONFIG}.conf-sample").write_text(SAMPLE)
        (cluster.workdir / f"mounts{server_id}").mkdir(exist_ok=True)
    a, b = (cluster.nodes[s] for s in HV)
    # a migration's destination asks for the source's paths, which are its own paths on the real cluster
    maps = [(str(a.conf_dir) + "/", str(b.conf_dir) + "/"), (str(b.conf_dir) + "/", str(a.conf_dir) + "/"),
             (str(cluster.workdir / "mounts1") + "/", str(cluster.workdir / "mounts2") + "/"),
             (str(cluster.workdir / "mounts2") + "/", str(cluster.workdir / "mounts1") + "/")]
    shutil.rmtree(cluster.workdir / "scp", ignore_errors=True)
    cluster.scp = make_scp(cluster.workdir / "scp", maps)
    bindir = cluster.workdir / "vzbin"
    bindir.mkdir(exist_ok=True)
    fake_vzctl_script(bindir)
    fake_vzlist_script(bindir)


def _prepare_network(cluster: Cluster) -> None:
    """A network per hypervisor with two addresses of an accounting VPS (``vps_ip`` rows of a VPS no chain
    touches), whose traffic the soak pumps through the node while the chaos runs."""
    for server_id in HV:
        net = TrafficNode(cluster.workdir / f"net{server_id}", backend="nft").create()
        cluster.traffic[server_id] = net
        for i in (2, 3):
            net.add_ip(f"10.9{server_id}.0.{i}")


def _prepare_fake_pools(cluster: Cluster) -> None:
    fake_root = cluster.workdir / "fake-zfs"
    names = [unique_pool_name("fk"), unique_pool_name("fk")]
    cluster.split = SplitZfs.install(cluster.workdir / "split-bin", fake_root, names)
    for name in names:
        create_fake_pool(fake_root, name)


async def _register_traffic(cluster: Cluster, conn: aiomysql.Connection) -> None:
    async with conn.cursor() as cur:
        for server_id, net in cluster.traffic.items():
            vps_id = ACCOUNTING_VPS + server_id
            await cur.execute("INSERT INTO vps (vps_id, m_id, vps_server, vps_config, confirmed, object_state) "
                              "VALUES (%s, 1, %s, '', 1, 0)", (vps_id, server_id))
            for n, ip in enumerate(net.ips):
                await cur.execute("INSERT INTO vps_ip (vps_id, ip_v, ip_location, ip_addr, class_id) "
                                  "VALUES (%s, 4, 1, %s, %s)", (vps_id, ip, 100 * server_id + n))


async def _register_pools(cluster: Cluster) -> None:
    conn = await cluster.connect()
    try:
        async with conn.cursor() as cur:
            for server_id, node in cluster.nodes.items():
                role = 2 if server_id == BACKUP else 0
                await cur.execute("INSERT INTO pools (node_id, label, filesystem, role) VALUES (%s, %s, %s, %s)",
                                  (server_id, f"{node.name} pool", node.fs, role))
                cluster.pool_ids[server_id] = int(cur.lastrowid)
                if node.vz_root is not None:
                    await cur.execute("UPDATE servers SET ve_private = %s WHERE server_id = %s",
                                      (f"{node.pool.mountpoint}/%{{veid}}/private", server_id))
        await _register_traffic(cluster, conn)
    finally:
        conn.close()


def _write_daemon_config(cluster: Cluster, server_id: int, check_interval: float) -> None:
    node = cluster.nodes[server_id]
    assert cluster.scp is not None
    sections: dict[str, Any] = {"mailer": {"smtp_server": "127.0.0.1", "smtp_port": cluster.smtp.port},
                                "transfer": {"stall_timeout": STALL_TIMEOUT}}
    env: dict[str, str] = {}
    if node.vz_root is not None:
        bindir = cluster.workdir / "vzbin"
        sections["vz"] = {"vzctl": str(fake_vzctl_script(bindir)), "vzlist": str(fake_vzlist_script(bindir)),
                          "vz_conf": str(node.vz_root / "etc" / "vz"), "vz_root": str(node.vz_root / "vz"),
                          "ve_private": f"{node.pool.mountpoint}/%{{veid}}/private"}
        env = {ROOT_ENV: str(node.vz_root), ALLOW_ENV: str(node.pool.mountpoint)}
    mqtt = {"enabled": True, "host": cluster.broker.host, "port": cluster.broker.port, "topic_prefix": "soak"}
    bins = {"scp": str(cluster.scp.path)}
    vpsadmin: dict[str, Any] = {"queues": QUEUES, "mounts_dir": str(cluster.workdir / f"mounts{server_id}"),
                                "handler_modules": ["vpsadmind.testing.handlers", *DEFAULT_HANDLER_MODULES]}
    if server_id in cluster.traffic:  # init fw and shaper, traffic accounting: in the node's namespace
        net = cluster.traffic[server_id]
        bins.update(net.bin)
        vpsadmin.update(net.vpsadmin(interval=TRAFFIC_INTERVAL))
    if server_id == HV[0] and cluster.split is not None:
        bins.update(cluster.split.bin)
    write_config(node.daemon.config, cluster.settings, DATABASE, server_id=server_id,
                 journal=cluster.workdir / f"journal{server_id}", check_interval=check_interval, mqtt=mqtt,
                 bin=bins, sections=sections, extra_vpsadmin=vpsadmin)
    node.daemon.env = env


async def stop_daemons(cluster: Cluster) -> list[str]:
    """SIGTERM every daemon (each stores its last traffic counts); returns what did not stop cleanly."""
    problems: list[str] = []
    for node in cluster.nodes.values():
        d = node.daemon
        if d.proc is not None and d.returncode is None:
            try:
                code = await asyncio.to_thread(d.terminate, 30.0)
                if code != 0:
                    problems.append(f"{node.name} exited with {code} on SIGTERM")
            except subprocess.TimeoutExpired:
                d.kill()
                problems.append(f"{node.name} did not stop within 30 s of SIGTERM")
    return problems


async def stop_cluster(cluster: Cluster) -> list[str]:
    """Stop the daemons, destroy the pools, stop the services; returns what could not be cleaned."""
    problems = await stop_daemons(cluster)
    for net in cluster.traffic.values():
        net.close()
    if cluster.split is not None:
        for name in cluster.split.fake_pools:
            with contextlib.suppress(Exception):
                destroy_fake_pool(cluster.split.fake_root, name)
    for node in cluster.nodes.values():
        try:
            await node.pool.destroy()
        except Exception as exc:  # the report says which pool stayed and why
            problems.append(f"pool {node.pool.name}: {exc}")
    with contextlib.suppress(Exception):
        cluster.smtp.stop()
    cluster.broker.stop()
    await asyncio.to_thread(cluster.db.stop)
    return problems
