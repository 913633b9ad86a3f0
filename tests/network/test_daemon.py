"""The network subsystem inside a real daemon process: ``vpsadmin.init`` sets up the accounting chains and the
shaper at start, ``vpsadmindctl init|flush|reinit`` act on them, and traffic flows into ``transfered_recent``
through the reporter, each datagram exactly once, the last ones stored at the stop.

The daemon runs in the root namespace (it must reach MariaDB); its ``bin.iptables``, ``bin.ip6tables`` and
``bin.tc`` are wrappers that run the real tools inside the test's node namespace, whose VPS-facing interface
is renamed ``venet0`` as on an OpenVZ node.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.engine_helpers import fetch
from tests.network.nets import EXT_V4, VPS_V4, VPS_V6, Topology, UdpSink, udp_send
from vpsadmind import ctl
from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.process import DaemonProcess, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SERVER_ID = 3
A, B, D = VPS_V4[0], VPS_V4[1], VPS_V4[2]
C6 = VPS_V6[0]


def wrappers(bindir: Path, topo: Topology, backend: str) -> dict[str, str]:
    """``bin`` entries: ``<bindir>/iptables`` runs ``ip netns exec <node> iptables-<backend>``, and so on; the
    Firewall derives ``iptables-restore`` from ``bin.iptables``, so that one is written too."""
    bindir.mkdir()
    targets = {"iptables": f"iptables-{backend}", "ip6tables": f"ip6tables-{backend}", "tc": "tc"}
    for name, real in list(targets.items())[:2]:
        targets[f"{name}-restore"] = f"{real}-restore"
    for name, real in targets.items():
        # this kernel has no sch_sfq (docs/network.md): v2.0's leaf qdisc becomes pfifo on tc's standard input
        feed = "sed 's/ sfq perturb 10$/ pfifo/' | " if name == "tc" else ""
        script = bindir / name
        script.write_text(f'#!/bin/sh\n{feed}exec ip netns exec {topo.node} {real} "$@"\n')
        script.chmod(0o755)
    return {name: str(bindir / name) for name in ("iptables", "ip6tables", "tc")}


def venet0(topo: Topology) -> None:
    """Rename the node's VPS-facing interface to v2.0's ``venet0`` (the shaper's rx device), keeping its
    addresses, then resolve the neighbours again."""
    ns, dev = topo.node, topo.venet
    for argv in ([*topo.prefix_argv(), "sysctl", "-qw", f"net.ipv6.conf.{dev}.keep_addr_on_down=1"],
                 ["ip", "-n", ns, "link", "set", dev, "down"], ["ip", "-n", ns, "link", "set", dev, "name", "venet0"],
                 ["ip", "-n", ns, "link", "set", "venet0", "up"]):
        subprocess.run(argv, check=True, capture_output=True)
    topo.warm_up()


async def add_ip(db: Any, vps_id: int, addr: str, class_id: int) -> None:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vps_ip (vps_id, ip_v, ip_location, ip_addr, max_tx, max_rx, class_id) "
                          "VALUES (%s, %s, 1, %s, 1000000, 2000000, %s)",
                          (vps_id, 6 if ":" in addr else 4, addr, class_id))


async def add_vps(db: Any, vps_id: int, server: int) -> None:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vps (vps_id, m_id, vps_server, vps_config, object_state) "
                          "VALUES (%s, 1, %s, '', 0)", (vps_id, server))


def save(topo: Topology, backend: str) -> str:
    return subprocess.run([*topo.prefix_argv(), f"iptables-{backend}-save", "-t", "filter"], capture_output=True,
                          text=True, check=True).stdout


def registered(topo: Topology, backend: str) -> set[str]:
    """Addresses with a ``-s <addr>/32 -p tcp`` accounting rule, in whichever accounting chain."""
    return {line.split()[3][:-3] for line in save(topo, backend).splitlines()
            if line.startswith("-A accounting") and " -s " in line and "-p tcp" in line}


def tc_classes(topo: Topology) -> set[str]:
    out = subprocess.run([*topo.prefix_argv(), "tc", "class", "show", "dev", "venet0"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[2] for line in out.splitlines() if line.startswith("class")}


async def vpsadmindctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = await asyncio.to_thread(ctl.main, list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


async def send(topo: Topology, src: str, port: int, count: int) -> None:
    sink = await UdpSink.start(topo.ext, EXT_V4, port)
    await udp_send(topo.vps, src, EXT_V4, port, count, 100)
    assert await sink.stop((topo.vps, src)) == (count, count * 100)  # + 1 STOP datagram counted by iptables


async def udp_out(db: Any, addr: str) -> int:
    rows = await fetch(db, "SELECT SUM(tr_packets_out) AS n FROM transfered_recent WHERE tr_ip = %s "
                           "AND tr_proto = 'udp'", (addr,))
    return int(rows[0]["n"] or 0)


async def wait_udp_out(db: Any, addr: str, want: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while (got := await udp_out(db, addr)) < want and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return got


async def test_daemon_inits_reinits_and_reports_traffic(db: Any, db_settings: TestDbSettings, test_database: str,
                                                        tmp_path: Path, topo: Topology, backend: str) -> None:
    venet0(topo)
    await add_vps(db, 101, SERVER_ID)
    await add_vps(db, 102, 99)  # another node's VPS: none of its addresses may get a rule here
    for addr, class_id in ((A, 10), (B, 11), (C6, 12)):
        await add_ip(db, 101, addr, class_id)
    await add_ip(db, 102, VPS_V4[5], 20)
    sock = tmp_path / "ctl.sock"
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=SERVER_ID, journal=tmp_path / "j",
                       control_socket=sock, bin=wrappers(tmp_path / "bin", topo, backend),
                       extra_vpsadmin={"init": True, "track_transfers": True, "transfers_interval": 0.3,
                                       "netdev": topo.netdev, "max_tx": 10**8, "max_rx": 10**8})
    d = DaemonProcess(cfg, tmp_path / "d.log").start()
    try:
        # init at start: chains with this node's addresses, and the shaper's classes
        assert d.wait_for_event("network_initialised", resource="fw")["result"] == {"4": 2, "6": 1}
        assert d.wait_for_event("network_initialised", resource="shaper")["result"] is True
        d.wait_for_event("traffic_reporter_started")
        assert registered(topo, backend) == {A, B}
        assert {"1:1", "1:10", "1:11", "1:12"} <= tc_classes(topo) and "1:20" not in tc_classes(topo)

        await send(topo, A, 7201, 300)
        await send(topo, B, 7202, 50)
        assert await wait_udp_out(db, A, 301) == 301
        d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]  # the same Network serves on after a reload
        d.wait_for_event("reloaded")

        # B leaves the node, D arrives: reinit fw keeps A's rules (and counters) and stores B's last counts
        async with db.cursor() as cur:
            await cur.execute("DELETE FROM vps_ip WHERE ip_addr = %s", (B,))
        await add_ip(db, 101, D, 13)
        assert await vpsadmindctl("-s", str(sock), "reinit", "fw") == (0, "Reinitialized\nFirewall  ...  ok\n", "")
        assert registered(topo, backend) == {A, D}
        assert await wait_udp_out(db, B, 51) == 51
        rc, out, _ = await vpsadmindctl("-p", "-s", str(sock), "reinit", "shaper")
        assert (rc, json.loads(out)) == (0, {"shaper": True})
        assert {"1:10", "1:12", "1:13"} <= tc_classes(topo) and "1:11" not in tc_classes(topo)
        rc, out, err = await vpsadmindctl("-p", "-s", str(sock), "init", "all")
        assert rc == 0, err
        assert json.loads(out) == {"fw": {"4": None, "6": None}, "shaper": True}  # chains exist
        assert (await vpsadmindctl("-s", str(sock), "flush", "disk"))[0] == 1  # a usage error, nothing sent

        await send(topo, A, 7203, 200)  # the reporter may or may not read these before the stop: either way once
    finally:
        assert d.terminate() == 0
    assert await udp_out(db, A) == 301 + 201
    assert await udp_out(db, B) == 51
    assert await udp_out(db, D) == 0
    assert registered(topo, backend) == {A, D}  # a stop leaves the rules: the kernel keeps counting
    assert not [e for e in d.events() if e.get("level") == "error"], d.log.read_text()[-3000:]


async def test_stop_stores_what_was_counted_since_the_last_interval(db: Any, db_settings: TestDbSettings,
                                                                     test_database: str, tmp_path: Path,
                                                                     topo: Topology, backend: str) -> None:
    """An interval of an hour: the reporter's first run (at start) cannot see the traffic, only the stop can."""
    venet0(topo)
    await add_vps(db, 101, SERVER_ID)
    await add_ip(db, 101, A, 10)
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=SERVER_ID, journal=tmp_path / "j",
                       bin=wrappers(tmp_path / "bin", topo, backend),
                       extra_vpsadmin={"init": True, "track_transfers": True, "transfers_interval": 3600,
                                       "netdev": topo.netdev})
    d = DaemonProcess(cfg, tmp_path / "d.log").start()
    try:
        d.wait_for_event("traffic_reporter_started")
        assert registered(topo, backend) == {A}
        await send(topo, A, 7211, 300)
        assert await udp_out(db, A) == 0
    finally:
        assert d.terminate() == 0
    assert await udp_out(db, A) == 301
    assert not [e for e in d.events() if e.get("level") == "error"], d.log.read_text()[-3000:]


async def test_init_failure_is_logged_and_the_daemon_serves_on(db: Any, db_settings: TestDbSettings,
                                                               test_database: str, tmp_path: Path) -> None:
    """No namespace needed: iptables and tc that do not exist fail the init, loudly, and nothing else."""
    missing = str(tmp_path / "no-such-tool")
    sock = tmp_path / "ctl.sock"
    cfg = write_config(tmp_path / "d.yml", db_settings, test_database, server_id=SERVER_ID, journal=tmp_path / "j",
                       control_socket=sock, bin={"iptables": missing, "ip6tables": missing, "tc": missing},
                       extra_vpsadmin={"init": True, "track_transfers": True, "transfers_interval": 0.2})
    d = DaemonProcess(cfg, tmp_path / "d.log").start()
    try:
        failed = {e["resource"]: e["error"] for e in d.events() if e.get("event") == "network_init_failed"}
        assert set(failed) == {"fw", "shaper"} and all("no-such-tool" in err for err in failed.values())
        d.wait_for_event("traffic report failed", timeout=10)  # logged each interval, never fatal
        assert await vpsadmindctl("-s", str(sock), "ping") == (0, "pong\n", "")
        rc, _, err = await vpsadmindctl("-s", str(sock), "reinit", "fw")
        assert rc == 1 and err.startswith("Command error: ")
        assert d.returncode is None
    finally:
        assert d.terminate() == 0
