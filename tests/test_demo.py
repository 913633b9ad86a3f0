"""``make demo`` end to end: ``python -m vpsadmind.demo`` as a subprocess, with two real daemons.

Each run uses its own database and MQTT topic prefix, so it neither clobbers ``vpsadmind_demo`` nor mixes
its wake-ups and events with another demo on the same broker. The storage scenario runs on the fake-zfs harness
always and on zfs-fuse when it is available (skipped otherwise, failing when ``CI=true``); the demo makes its
own uniquely named pools and destroys them. The VPS scenario (node 1 on the fake vzctl, bind mounts) runs when the
tests run as root, and nothing it mounted may stay mounted after the demo.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpsadmind.demo import _zpool, destroy_pools
from vpsadmind.testing.db import TestDbSettings, drop_database_sync, random_database_name, require_mariadb
from vpsadmind.testing.services import unavailable, zfs_fuse_problem
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.zfs.driver import Zfs

pytestmark = pytest.mark.slow

#: The VPS scenario needs bind mounts; without root the demo says it skipped it.
VPS = os.geteuid() == 0
VPS_STATES = {"vps_create": "done", "vps_mount": "done", "vps_stop": "done"} if VPS else {}
EXPECTED_STATES = {"hop": "done", "noops": "done", "rollback": "failed", "keep_going": "done",
                   "storage_hv": "done", "storage_backup": "done", "storage_fail": "failed",
                   "backup_full": "done", "backup_incr": "done", **VPS_STATES}
BACKENDS = {"fuse": "zfs-fuse", "fake": "fake-zfs"}
SNAP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


def require_zfs_fuse() -> None:
    problem = zfs_fuse_problem()
    if problem is None:
        return
    unavailable(f"zfs-fuse is not available: {problem}")


@pytest.fixture
def demo_database(db_settings: TestDbSettings) -> Iterator[str]:
    require_mariadb(db_settings)
    name = random_database_name("vpsadmind_demotest_")
    try:
        yield name
    finally:
        drop_database_sync(name, db_settings)


def run_demo(workdir: Path, database: str, *extra: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vpsadmind.demo", "--workdir", str(workdir), "--database", database,
           "--topic-prefix", f"vpsadmin-test-{secrets.token_hex(4)}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False, env=env)


def check_storage(out: str, backend: str, *, vps: bool = VPS) -> None:
    """The storage part of the report: both pools as zfs lists them, the snapshot post_save named, the
    properties Dataset::Create and Dataset::Set left, the rolled back dataset gone, the backup's snapshots on
    both nodes, the pools destroyed."""
    assert re.search(rf"^Storage: {backend} \(", out, re.MULTILINE), out
    assert f"Storage on {backend} (" in out
    assert f"every chain ended as expected (storage on {backend})." in out
    hv = re.search(r"^  \$ zfs list -t all -o name -r (vd[0-9a-f]{8})\n((?:    \S+\n)+)", out, re.MULTILINE)
    assert hv, out
    pool1, names1 = hv.group(1), hv.group(2).split()
    snap = re.search(rf"named by Dataset::Snapshot's post_save '({SNAP})'", out)
    assert snap, out
    fs = f"{pool1}/vz"
    # storage_hv's snapshot, then one per backup chain (backup_full, backup_incr)
    snaps = [n.split("@")[1] for n in names1 if n.startswith(f"{fs}/101@")]
    assert len(snaps) == 3 and snaps[0] == snap.group(1) and snaps == sorted(snaps), names1
    vps_datasets = [f"{fs}/201", f"{fs}/201/data"] if vps else []
    assert names1 == [pool1, fs, f"{fs}/101", *(f"{fs}/101@{s}" for s in snaps), *vps_datasets, f"{fs}/vpsadmin",
                      f"{fs}/vpsadmin/download", f"{fs}/vpsadmin/mount"], out
    backup = re.findall(r"^  \$ zfs list -t all -o name -r (vd[0-9a-f]{8})\n((?:    \S+\n)+)", out, re.MULTILINE)
    assert len(backup) == 2, out
    pool2, names2 = backup[1][0], backup[1][1].split()
    bfs = f"{pool2}/backup"
    branch = [n for n in names2 if "/tree.0/" in n and "@" not in n]
    assert len(branch) == 1 and re.fullmatch(rf"{bfs}/101/tree\.0/branch-{SNAP}\.0", branch[0]), names2
    assert sorted(names2) == sorted([pool2, bfs, f"{bfs}/101", f"{bfs}/101/tree.0", branch[0],
                                     *(f"{branch[0]}@{s}" for s in snaps), f"{bfs}/vpsadmin",
                                     f"{bfs}/vpsadmin/download", f"{bfs}/vpsadmin/mount"]), names2
    check_backup(out, snaps, branch[0])
    assert re.search(rf"fired as '{SNAP} \(unconfirmed\)'", out)
    assert f"{fs}/101: quota=67108864 = 64 MiB (local), compression=on (local), atime=off (inherited from {fs}); " \
           "private/ exists" in out
    assert "compression (edit_after of Dataset::Set): value '--- true\\n...\\n', inherited 0" in out
    assert f"storage_fail: {fs}/102 is gone (rolled back)" in out
    for row, scenario, state in [("datasets", "storage_hv", "confirmed=1"), ("dataset_in_pools", "storage_hv",
                                 "confirmed=1"), ("snapshots", "storage_hv", "confirmed=1"),
                                 ("snapshot_in_pools", "storage_hv", "confirmed=1"),
                                 ("dataset_trees", "storage_backup", "confirmed=1"),
                                 ("branches", "storage_backup", "confirmed=1"),
                                 ("datasets", "storage_fail", "deleted"), ("snapshots", "storage_fail", "deleted")]:
        assert re.search(rf"^\s+{row}#\d+\s+{scenario}\s+{state}\s+{state}$", out, re.MULTILINE), (row, out)
    assert re.search(r"dataset_properties#\d+-\d+\s+storage_hv\s+confirmed=1\s+confirmed=1", out)
    assert re.search(r"dataset_properties#\d+-\d+\s+storage_fail\s+deleted\s+deleted", out)
    assert re.search(r"storage_fail\s+exec (\d+)@node1, rollback \1@node1", out), out
    assert f"Pools destroyed: {pool1}, {pool2}" in out
    if backend == "zfs-fuse":
        live = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True, timeout=30,
                              check=False).stdout.split()
        assert pool1 not in live and pool2 not in live


def check_vps(out: str, workdir: Path) -> None:
    """The VPS report: running in vzlist with the conf the chain wrote and 1001's vps_status row, the VPS root and
    the dataset bind-mounted below it, a file each way through the mount, then stopped with both mounts gone."""
    if not VPS:
        assert "VPS 201: not run (bind mounts need root)" in out, out
        return
    root = f"{workdir.resolve()}/fake-vz/root/vz/root/201"
    assert re.search(r"^\s+201\s+12 running\s+-\s+demo-vps$", out, re.MULTILINE), out
    assert '201.conf: HOSTNAME="demo-vps" NAMESERVER="192.0.2.53" CPUS="2" PHYSPAGES="0:262144" ' \
           'SWAPPAGES="0:65536" ORIGIN_SAMPLE="vswap-512m" ONBOOT="yes"' in out, out
    # 2003 gave it 1 GiB of RAM; the fake reports an eighth of it used
    assert re.search(r"vps_status \(1001's post_save\): up 1, nproc 12, memory 128 MiB, disk \d+ MiB; "
                     r"vps#201 confirmed=1", out), out
    assert re.search(r"mounts#\d+ /mnt/data <- vd[0-9a-f]{8}/vz/201/data, current_state mounted; 5301 wrote ", out)
    # target, fstype, source[path]: zfs-fuse names the dataset and its private/, fake-zfs the disk and the directory
    assert re.search(rf"^    {re.escape(root)}\s+\S+\s+\S*201\S*/private\]$", out, re.MULTILINE), out
    assert re.search(rf"^    {re.escape(root)}/mnt/data\s+\S+\s+\S*201\S*/private\]$", out, re.MULTILINE), out
    assert "inside the VPS `cat /mnt/data/hello.txt`: 'written on the host into dataset 201/data'" in out
    assert re.search(r"the host reads \S+/201/data/private/from-vps.txt: 'written inside VPS 201'", out), out
    assert "after vps_stop: vps_status up 0, nproc 0, memory 0 MiB, disk 0 MiB; vzlist: 201 - stopped - demo-vps" in out
    assert f"current_state unmounted (the .umount action script's report); mounted at or below {root}: nothing" in out
    for row in ("datasets", "dataset_in_pools", "mounts"):
        assert re.search(rf"^\s+{row}#\d+\s+vps_mount\s+confirmed=1\s+confirmed=1$", out, re.MULTILINE), (row, out)
    assert re.search(r"^\s+dataset_properties#\d+\s+vps_create\s+confirmed=1\s+confirmed=1$", out, re.MULTILINE)


def mounted_below(path: Path) -> list[str]:
    prefix = f"{path.resolve()}/"
    with open("/proc/self/mountinfo") as fh:
        return [f.split()[4] for f in fh if f.split()[4].startswith(prefix)]


def check_backup(out: str, snaps: list[str], branch: str) -> None:
    """The backup report: each Send's stream with its size, time and rate, and node 2's files identical to the
    source's at each backup's snapshot."""
    size = r"(\d+\.\d\d) MiB\s+(\d+\.\d{3}) s\s+(\d+\.\d\d) MiB/s"
    full = re.search(rf"^  \d+\s+backup_full\s+\d+\s+full {snaps[0]}\s+{size}$", out, re.MULTILINE)
    first = re.search(rf"^  \d+\s+backup_full\s+\d+\s+-I {snaps[0]} {snaps[1]}\s+{size}$", out, re.MULTILINE)
    incr = re.search(rf"^  \d+\s+backup_incr\s+\d+\s+-I {snaps[1]} {snaps[2]}\s+{size}$", out, re.MULTILINE)
    assert full and first and incr, out
    assert float(first.group(1)) >= 16.0 and float(incr.group(1)) >= 4.0, out  # the random data, incompressible
    for name, snap in (("backup_full", snaps[1]), ("backup_incr", snaps[2])):
        assert f"  {name}: {branch}@{snap}: private/ on node 2 is identical to node 1's at the snapshot: 6 files " \
               "and symlinks, 5 directories" in out, out


@pytest.mark.parametrize(("mode", "zfs"), [("mqtt", "fake"), ("no-mqtt", "fake"), ("mqtt", "fuse")])
def test_demo_ends_every_chain_as_expected(tmp_path: Path, demo_database: str, mode: str, zfs: str) -> None:
    if zfs == "fuse":
        require_zfs_fuse()
    proc = run_demo(tmp_path, demo_database, "--zfs", zfs, *(["--no-mqtt"] if mode == "no-mqtt" else []))
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out}\n{proc.stderr}"
    for name, state in EXPECTED_STATES.items():
        assert re.search(rf"^\s+\d+\s+{name}\s+{state}\s", out, re.MULTILINE), f"{name} not {state}:\n{out}"
    assert ("Demo OK: hop done, noops done, rollback failed, keep_going done, storage_hv done, "
            "storage_backup done, storage_fail failed, backup_full done, backup_incr done"
            + (", vps_create done, vps_mount done, vps_stop done" if VPS else "")
            + " - every chain ended as expected") in out
    check_storage(out, BACKENDS[zfs])
    check_vps(out, tmp_path)
    assert mounted_below(tmp_path) == [], "the demo left something mounted"
    assert "node1 exit code 0, node2 exit code 0" in out
    assert "Resource locks left: 0   port reservations left: 0" in out
    assert re.search(r"datasets#\d+\s+hop\s+confirmed=1\s", out)
    assert re.search(r"datasets#\d+\s+rollback\s+deleted\s", out)
    # the rollback ran in reverse order, each transaction on its own node
    assert re.search(r"rollback\s+exec (\d+)@node1, exec (\d+)@node2, exec (\d+)@node1, rollback \3@node1, "
                     r"rollback \2@node2, rollback \1@node1", out), out
    if mode == "no-mqtt":
        assert "MQTT: off (disabled by --no-mqtt)" in out
    assert (tmp_path / "node1.log").exists() and (tmp_path / "node2.log").exists()


def test_demo_falls_back_to_fake_zfs_without_zfs_fuse(tmp_path: Path, demo_database: str) -> None:
    """``--zfs auto`` (the default) when ``zpool`` cannot run: fake-zfs, and the output says why;
    ``--zfs fuse`` then refuses to start."""
    empty = tmp_path / "emptybin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    proc = run_demo(tmp_path / "work", demo_database, "--zfs", "fuse", env=env)
    assert proc.returncode == 1
    assert "DEMO FAILED: --zfs fuse: zfs-fuse cannot be used here (zpool is not installed)" in proc.stdout
    proc = run_demo(tmp_path / "work", demo_database, env=env)
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Storage: fake-zfs (zfs-fuse cannot run here (zpool is not installed), --zfs auto)" in proc.stdout
    check_storage(proc.stdout, "fake-zfs", vps=False)
    # without PATH there is no mount(8): the VPS scenario says why it did not run
    assert ("VPS 201: not run (bind mounts need root)" if not VPS else
            "VPS 201: not run (mount and umount not on PATH)") in proc.stdout


def test_demo_refuses_a_bad_database_name(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "production")
    assert proc.returncode == 2
    assert "must match vpsadmind" in proc.stderr


def test_zpool_cleanup_is_bounded_when_zfs_fuse_hangs(tmp_path: Path) -> None:
    """The pools' cleanup neither waits for a grandchild that keeps the output open (zfs-fuse's ``zpool destroy``
    starts ``umount``, which hangs with a wedged daemon) nor for a zpool that never ends."""
    forks = tmp_path / "forks"
    forks.write_text("#!/bin/sh\nsleep 30 &\necho \"cannot open 'x': no such pool\"\nexit 1\n")
    hangs = tmp_path / "hangs"
    hangs.write_text("#!/bin/sh\nexec sleep 30\n")
    for script in (forks, hangs):
        script.chmod(0o755)
    started = time.monotonic()
    assert asyncio.run(_zpool(str(forks), "destroy", "x", timeout=10)) == (1, "cannot open 'x': no such pool")
    rc, why = asyncio.run(_zpool(str(hangs), "destroy", "x", timeout=0.5))
    assert rc is None and "did not end within 0.5 s" in why
    # a pool that cannot be destroyed is reported with the command to do it later, and keeps its vdev
    pool = TempPool(name="vd00000000", zfs=Zfs(zfs=str(hangs), zpool=str(hangs)))
    pool.created, pool.directory = True, str(tmp_path / "pooldir")
    (tmp_path / "pooldir").mkdir()
    problems = asyncio.run(destroy_pools([pool], budget=1.0))
    assert problems == [f"pool vd00000000 not destroyed (zpool destroy vd00000000 did not end within 2 s): destroy it "
                        f"later with {hangs} destroy vd00000000"]
    assert pool.created and (tmp_path / "pooldir").is_dir()
    assert time.monotonic() - started < 10
