"""The demo's storage scenario (see :mod:`vpsadmind.demo`): pools, datasets, properties, a backup tree and branch,
a rolled back dataset, and a backup of dataset 101 from node 1 to node 2, full and then incremental, verified file
by file on node 2 and reported with the size, time and rate of each stream.

The chains are written as the API writes them: rows unconfirmed with ``create`` confirmations, snapshots named
``<time> (unconfirmed)`` until Dataset::Snapshot's post_save names them, and a backup as one chain of
Dataset::Snapshot@1 followed by the transfer (Recv@2, Send@1, RecvCheck@2 per stream,
:mod:`vpsadmind.testing.transfers`) that names its snapshots by id, as the API does for a snapshot made in the
same chain.

This module builds on :mod:`vpsadmind.demo`; the demo imports it only when it runs
(:func:`vpsadmind.demo.scenario_functions`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from vpsadmind import system
from vpsadmind.demo import (
    MIB,
    NODES,
    POOL_ROLES,
    Demo,
    Expect,
    Scenario,
    Storage,
    _create,
    _created,
    _probe,
    fetch,
    ruby_yaml,
    say,
    table,
    utc_now,
)
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder, Confirmation
from vpsadmind.testing.handlers import PROBE
from vpsadmind.testing.transfers import Side, Snap, append_initial, append_transfer

__all__ = ["BackupRun", "StorageRun", "scenario_backup", "scenario_storage"]

POOL_CREATE: Final = 5250               # Pool::Create
DATASET_CREATE: Final = 5201            # Dataset::Create
DATASET_SNAPSHOT: Final = 5204          # Dataset::Snapshot
DATASET_SET: Final = 5216               # Dataset::Set
TREE_CREATE: Final = 5213               # DatasetTree::Create
BRANCH_CREATE: Final = 5206             # Branch::Create
SEND: Final = 5221                      # Dataset::Send
SNAPSHOT_RE: Final = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$"
FS_TIMEOUT: Final = 30.0                # reading or writing the demo's files on a FUSE mount
T = TypeVar("T")


@dataclass(slots=True)
class StorageRun:
    """What the storage scenario made, for its report and for the backup."""

    pool_ids: dict[int, int]                                 # server_id -> pools.id
    dataset: int = 0                                         # datasets.id of 101
    dips: dict[int, int] = field(default_factory=dict)       # server_id -> dataset_in_pools.id of 101
    snapshot: int = 0                                        # snapshots.id of storage_hv's snapshot
    snapshot_fired_as: str = ""
    compression: int = 0    # dataset_properties id of 101's compression on the hypervisor pool
    branch_id: int = 0      # branches.id of tree.0's first branch
    branch_fs: str = ""     # its dataset name below tree.0
    failed_dataset: str = "102"  # the dataset of the failing chain, relative to the pool filesystem
    extra: dict[int, list[str]] = field(default_factory=lambda: {1: [], 2: []})  # names the backup adds

    def branch(self, st: Storage) -> str:
        return f"{st.fs(2)}/101/tree.0/{self.branch_fs}"


# ----------------------------------------------------------------------------------------------------------
# Storage chains


async def scenario_storage(demo: Demo) -> list[Scenario]:
    """Pools, datasets, a snapshot, a property, a backup tree and branch, a rolled back dataset, a backup.

    * ``storage_hv`` (node 1): Pool::Create, Dataset::Create 101 (quota, private/), Dataset::Snapshot,
      Dataset::Set compression=on;
    * ``storage_backup`` (node 2): Pool::Create, Dataset::Create 101, DatasetTree::Create tree.0,
      Branch::Create;
    * ``storage_fail`` (node 1, fired once storage_hv is done, as it needs the pool): Dataset::Create 102,
      Dataset::Snapshot, a failing probe: the chain rolls back, 102 and its snapshot are gone;
    * ``backup_full`` and ``backup_incr`` (once storage_backup is done): see :func:`scenario_backup`;
    * beside them, once node 1's pool exists, the VPS scenario of :mod:`vpsadmind.demo_vps` (its datasets are in
      that pool, so this report lists them too).
    """
    from vpsadmind.demo_vps import vps_beside  # it builds on this module

    st = demo.storage
    assert st is not None, "the storage scenario needs pools"
    run = StorageRun({sid: await demo.insert("pools", node_id=sid, label=f"{NODES[sid - 1][1]} {what}",
                                             filesystem=st.fs(sid), role=role)
                      for sid, (role, what, _fs) in POOL_ROLES.items()})
    hv = await _storage_hv(demo, st, run)
    backup = await _storage_backup(demo, st, run)
    await demo.ended(hv)  # storage_fail and the VPS need node 1's pool
    demo.reports.append(lambda: report_storage(demo, st, run))
    async with vps_beside(demo, st, run) as vps:  # its chains run while the backups do
        fail = await _storage_fail(demo, st, run)
        backups = await scenario_backup(demo, st, run, backup)
    return [hv, backup, fail, *backups, *vps.scenarios]


async def _storage_hv(demo: Demo, st: Storage, run: StorageRun) -> Scenario:
    """Node 1, hypervisor pool: 101 with its properties and a snapshot, then compression=on."""
    fs1 = st.fs(1)
    ds = run.dataset = await demo.new_dataset("101")
    dip1 = run.dips[1] = await demo.insert("dataset_in_pools", dataset_id=ds, pool_id=run.pool_ids[1], confirmed=0)
    props = await demo.new_properties(run.pool_ids[1], ds, dip1, {
        "compression": (False, True), "quota": (64, False), "used": (0, False), "referenced": (0, False),
        "avail": (0, False)})
    run.compression = props["compression"]
    run.snapshot_fired_as = f"{utc_now()} (unconfirmed)"
    snap = run.snapshot = await demo.insert("snapshots", name=run.snapshot_fired_as, dataset_id=ds, confirmed=0)
    sip = await demo.insert("snapshot_in_pools", snapshot_id=snap, dataset_in_pool_id=dip1, confirmed=0)
    b = ChainBuilder("demo_storage_hv").lock("Pool", run.pool_ids[1]).lock("DatasetInPool", dip1)
    b.append(POOL_CREATE, server=1, params={"pool_fs": fs1, "options": {"atime": False}})
    b.append(DATASET_CREATE, server=1,
             params={"pool_fs": fs1, "name": "101", "options": {"quota": 64}, "create_private": True},
             confirmations=[_create(ds), *_created("DatasetInPool", "dataset_in_pools", dip1),
                            *_created("DatasetProperty", "dataset_properties", *props.values())])
    b.append(DATASET_SNAPSHOT, server=1, params={"pool_fs": fs1, "dataset_name": "101", "snapshot_id": snap},
             confirmations=[*_created("Snapshot", "snapshots", snap),
                            *_created("SnapshotInPool", "snapshot_in_pools", sip)])
    b.append(DATASET_SET, server=1,
             params={"pool_fs": fs1, "name": "101", "properties": {"compression": [False, True]}},
             confirmations=[Confirmation.edit_after("DatasetProperty", "dataset_properties",
                                                    {"id": props["compression"]},
                                                    {"value": ruby_yaml(True), "inherited": 0})])
    confirmed: dict[tuple[str, int], int | None] = {("datasets", ds): 1, ("dataset_in_pools", dip1): 1,
                 **{("dataset_properties", i): 1 for i in props.values()},
                 ("snapshots", snap): 1, ("snapshot_in_pools", sip): 1}
    return await demo.fire(
        "storage_hv", "Pool::Create, Dataset::Create 101, Dataset::Snapshot, Dataset::Set compression@1", b,
        first_server=1, expect=lambda t: Expect(ChainState.DONE, [(1, 1)] * 4, rows=confirmed))


async def _storage_backup(demo: Demo, st: Storage, run: StorageRun) -> Scenario:
    """Node 2, backup pool: 101 with tree.0 and its first branch."""
    fs2 = st.fs(2)
    dip2 = run.dips[2] = await demo.insert("dataset_in_pools", dataset_id=run.dataset, pool_id=run.pool_ids[2],
                                           confirmed=0)
    tree = await demo.insert("dataset_trees", dataset_in_pool_id=dip2, index=0, head=1, confirmed=0)
    branch_name = utc_now()
    branch = run.branch_id = await demo.insert("branches", dataset_tree_id=tree, name=branch_name, index=0, head=1,
                                               confirmed=0)
    run.branch_fs = f"branch-{branch_name}.0"
    b = ChainBuilder("demo_storage_backup").lock("Pool", run.pool_ids[2]).lock("DatasetInPool", dip2)
    b.append(POOL_CREATE, server=2, params={"pool_fs": fs2})
    b.append(DATASET_CREATE, server=2, params={"pool_fs": fs2, "name": "101"},
             confirmations=_created("DatasetInPool", "dataset_in_pools", dip2))
    b.append(TREE_CREATE, server=2, params={"pool_fs": fs2, "dataset_name": "101", "tree": "tree.0"},
             confirmations=_created("DatasetTree", "dataset_trees", tree))
    b.append(BRANCH_CREATE, server=2, params={"pool_fs": fs2, "dataset_name": "101", "tree": "tree.0",
                                              "new_branch_name": run.branch_fs},
             confirmations=_created("Branch", "branches", branch))
    return await demo.fire(
        "storage_backup", "Pool::Create, Dataset::Create 101, DatasetTree::Create, Branch::Create@2", b,
        first_server=2, expect=lambda t: Expect(ChainState.DONE, [(1, 1)] * 4, rows={
            ("dataset_in_pools", dip2): 1, ("dataset_trees", tree): 1, ("branches", branch): 1}))


async def _storage_fail(demo: Demo, st: Storage, run: StorageRun) -> Scenario:
    """Node 1 again, once its pool exists: a chain that fails in the middle and rolls back."""
    fs1 = st.fs(1)
    effects = demo.effects("storage_fail")
    ds2 = await demo.new_dataset(run.failed_dataset)
    dip3 = await demo.insert("dataset_in_pools", dataset_id=ds2, pool_id=run.pool_ids[1], confirmed=0)
    props2 = await demo.new_properties(run.pool_ids[1], ds2, dip3,
                                       {"quota": (32, False), "compression": (False, True)})
    snap2 = await demo.insert("snapshots", name=f"{utc_now()} (unconfirmed)", dataset_id=ds2, confirmed=0)
    sip2 = await demo.insert("snapshot_in_pools", snapshot_id=snap2, dataset_in_pool_id=dip3, confirmed=0)
    b = ChainBuilder("demo_storage_fail").lock("DatasetInPool", dip3)
    b.append(DATASET_CREATE, server=1,
             params={"pool_fs": fs1, "name": run.failed_dataset, "options": {"quota": 32}, "create_private": True},
             confirmations=[_create(ds2), *_created("DatasetInPool", "dataset_in_pools", dip3),
                            *_created("DatasetProperty", "dataset_properties", *props2.values())])
    b.append(DATASET_SNAPSHOT, server=1,
             params={"pool_fs": fs1, "dataset_name": run.failed_dataset, "snapshot_id": snap2},
             confirmations=[*_created("Snapshot", "snapshots", snap2),
                            *_created("SnapshotInPool", "snapshot_in_pools", sip2)])
    b.append(PROBE, server=1, params=_probe(effects, fail=True))
    gone: dict[tuple[str, int], int | None] = {
        ("datasets", ds2): None, ("dataset_in_pools", dip3): None,
        **{("dataset_properties", i): None for i in props2.values()},
        ("snapshots", snap2): None, ("snapshot_in_pools", sip2): None}
    return await demo.fire(
        "storage_fail", f"Dataset::Create {run.failed_dataset}, Dataset::Snapshot, failing Probe@1: rolled back", b,
        first_server=1, effects=effects,
        expect=lambda t: Expect(ChainState.FAILED, [(2, 1)] * 3, [f"exec {t[2]}", f"rollback {t[2]}"], gone))


async def report_storage(demo: Demo, st: Storage, run: StorageRun) -> list[str]:
    """Print the pools as zfs lists them, the snapshot name post_save wrote, 101's properties; return what
    differs from what the storage chains (and the backup) must leave."""
    problems: list[str] = []
    fs1, fs2 = st.fs(1), st.fs(2)
    rows = await fetch(demo.conn, "SELECT name, created_at FROM snapshots WHERE id = %s", (run.snapshot,))
    snap = str(rows[0]["name"]) if rows else None
    working = ["vpsadmin", "vpsadmin/download", "vpsadmin/mount"]
    expected = {
        1: [st.pools[1].name, fs1, f"{fs1}/101", f"{fs1}/101@{snap}", *(f"{fs1}/{w}" for w in working)],
        2: [st.pools[2].name, fs2, f"{fs2}/101", f"{fs2}/101/tree.0", run.branch(st),
            *(f"{fs2}/{w}" for w in working)],
    }
    say(f"\nStorage on {st.backend} ({st.why})")
    for server_id, pool in st.pools.items():
        role, what, _fs = POOL_ROLES[server_id]
        say(f"\n  {NODES[server_id - 1][1]}: pools#{run.pool_ids[server_id]} role {role} ({what}), filesystem "
            f"{st.fs(server_id)}")
        say(f"  $ zfs list -t all -o name -r {pool.name}")
        try:
            names = await st.names(pool.name)
        except system.CommandFailed as exc:
            problems.append(f"zfs list of {pool.name} failed: {exc}")
            continue
        for name in names:
            say(f"    {name}")
        want = set(expected[server_id]) | set(run.extra[server_id])
        missing, extra = sorted(want - set(names)), sorted(set(names) - want)
        if missing or extra:
            problems.append(f"pool {pool.name} ({NODES[server_id - 1][1]}): missing {missing}, unexpected {extra}")
    say(f"\n  snapshots#{run.snapshot}: fired as {run.snapshot_fired_as!r}, named by Dataset::Snapshot's post_save "
        f"{snap!r} (created_at {rows[0]['created_at'] if rows else None})")
    if snap is None or not re.match(SNAPSHOT_RE, snap):
        problems.append(f"snapshots#{run.snapshot} is named {snap!r}, expected a UTC time YYYY-MM-DDTHH:MM:SS")
    problems += await _report_properties(demo, st, run)
    return problems


async def _report_properties(demo: Demo, st: Storage, run: StorageRun) -> list[str]:
    problems: list[str] = []
    fs1 = st.fs(1)
    ds = f"{fs1}/101"
    got = (await st.zfs.get(ds, ["quota", "compression", "atime", "mountpoint"])).get(ds, {})
    shown = {k: f"{v.value}{f' = {int(v.value) // MIB} MiB' if k == 'quota' and v.value.isdigit() else ''} "
                f"({v.source})" for k, v in got.items() if k != "mountpoint"}
    mnt = got["mountpoint"].value if "mountpoint" in got else ""
    private = bool(mnt) and os.path.isdir(os.path.join(mnt, "private"))
    say(f"  {ds}: " + ", ".join(f"{k}={v}" for k, v in shown.items()) + f"; private/ "
        f"{'exists' if private else 'MISSING'} in {mnt}")
    want = {"quota": (str(64 * MIB), "local"), "compression": ("on", "local"),
            "atime": ("off", f"inherited from {fs1}")}
    for prop, (value, source) in want.items():
        have = got.get(prop)
        if have is None or (have.value, have.source) != (value, source):
            problems.append(f"{ds}: {prop} is {shown.get(prop)}, expected {value} ({source})")
    if not private:
        problems.append(f"{ds}: no private/ directory (create_private)")
    rows = await fetch(demo.conn, "SELECT value, inherited FROM dataset_properties WHERE id = %s", (run.compression,))
    saved = (rows[0]["value"], int(rows[0]["inherited"])) if rows else None
    say(f"  dataset_properties#{run.compression} compression (edit_after of Dataset::Set): "
        + (f"value {saved[0]!r}, inherited {saved[1]}" if saved else "deleted"))
    if saved != (ruby_yaml(True), 0):
        problems.append(f"dataset_properties#{run.compression}: {saved}, expected {ruby_yaml(True)!r} not inherited")
    failed = f"{fs1}/{run.failed_dataset}"
    left = await st.zfs.exists(failed)
    say(f"  storage_fail: {failed} {'still exists' if left else 'is gone (rolled back), its snapshot with it'}")
    if left:
        problems.append(f"{failed} exists after its chain was rolled back")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Backup: node 1 -> node 2


@dataclass(slots=True)
class BackupRun:
    """One backup chain: the snapshot it took, the source's files when it fired (what the snapshot holds:
    nothing writes to 101 meanwhile) and the branch's files on node 2 after it."""

    scenario: Scenario
    snapshot: int                                               # snapshots.id the chain's Dataset::Snapshot names
    expected: dict[str, str]                                    # path -> sha256 (or "dir", "-> target")
    received: dict[str, str] | None = None
    snapshot_name: str | None = None
    sends: list[dict[str, Any]] = field(default_factory=list)   # (params, t_output) of each Send


async def _off_loop(fn: Callable[[], T], timeout: float = FS_TIMEOUT) -> T:
    """``fn()`` in a daemon thread, waited for at most ``timeout``: file access on a wedged FUSE mount never
    returns, and a thread of asyncio's executor would then hold the demo's exit as well."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def work() -> None:
        try:
            value: Any = fn()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(deliver, False, exc)
        else:
            loop.call_soon_threadsafe(deliver, True, value)

    threading.Thread(target=work, daemon=True, name="demo-files").start()
    return await asyncio.wait_for(future, timeout)


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``, directories as ``dir``, symlinks by target."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel + "/"] = "dir"
    return out


def write_first(private: Path) -> None:
    """What a VPS might hold: a few text files, a symlink and 16 MiB that compression cannot shrink."""
    (private / "etc").mkdir(exist_ok=True)
    (private / "etc" / "hostname").write_text("vps101\n")
    (private / "etc" / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 vps101\n")
    (private / "home" / "user").mkdir(parents=True, exist_ok=True)
    (private / "home" / "user" / "notes.txt").write_text("first backup\n" * 100)
    (private / "var" / "lib").mkdir(parents=True, exist_ok=True)
    (private / "var" / "lib" / "data.bin").write_bytes(os.urandom(16 * MIB))
    (private / "var" / "lib" / "old.log").write_text("to be deleted before the incremental backup\n")
    (private / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/UTC")


def change_files(private: Path) -> None:
    """Changes for the incremental backup: one file rewritten, one appended to, one deleted, 4 MiB new."""
    (private / "etc" / "hostname").write_text("vps101.example\n")
    with open(private / "home" / "user" / "notes.txt", "a") as fh:
        fh.write("incremental backup\n")
    (private / "var" / "lib" / "old.log").unlink()
    (private / "var" / "lib" / "new.bin").write_bytes(os.urandom(4 * MIB))


async def scenario_backup(demo: Demo, st: Storage, run: StorageRun, storage_backup: Scenario) -> list[Scenario]:
    """``backup_full``: files into 101's private/ on node 1, then the API's first backup into the empty branch
    (Dataset::Snapshot@1, a full stream of storage_hv's snapshot and ``-I`` from it to the new one);
    ``backup_incr``: files changed, then Dataset::Snapshot@1 and one ``-I`` stream. After each chain the
    branch's files on node 2 are compared with the source's at the snapshot."""
    await demo.ended(storage_backup)  # the branch must exist and its chain's lock be released
    src = f"{st.fs(1)}/101"
    mountpoint = (await st.zfs.get(src, ["mountpoint"]))[src]["mountpoint"].value
    private = Path(mountpoint) / "private"
    await _off_loop(lambda: write_first(private))
    first = Snap(run.snapshot, run.snapshot_fired_as)
    backups = [await _backup(demo, st, run, "backup_full", [first], private)]
    full = backups[0]
    if int(full.scenario.chain["state"]) == ChainState.DONE:  # else there is no base to send increments from
        await _off_loop(lambda: change_files(private))
        backups.append(await _backup(demo, st, run, "backup_incr", [Snap(full.snapshot, full.snapshot_name or "")],
                                     private))
    demo.reports.append(lambda: report_backup(demo, st, run, backups))
    return [b.scenario for b in backups]


async def _backup(demo: Demo, st: Storage, run: StorageRun, name: str, base: list[Snap],
                  private: Path) -> BackupRun:
    """Fire one backup chain, wait for it, then read what it left on node 2."""
    fs1, fs2 = st.fs(1), st.fs(2)
    initial = name == "backup_full"
    fired_as = f"{utc_now()} (unconfirmed)"
    snap = await demo.insert("snapshots", name=fired_as, dataset_id=run.dataset, confirmed=0)
    sips = [await demo.insert("snapshot_in_pools", snapshot_id=snap, dataset_in_pool_id=run.dips[1], confirmed=0)]
    in_branch = []
    # the rows the API adds for each snapshot the backup gets (the first one sends the older snapshots too)
    for snap_id in [*(s.id for s in base if initial), snap]:
        sips.append(await demo.insert("snapshot_in_pools", snapshot_id=snap_id, dataset_in_pool_id=run.dips[2],
                                      confirmed=0))
        in_branch.append(await demo.insert("snapshot_in_pool_in_branches", snapshot_in_pool_id=sips[-1],
                                           branch_id=run.branch_id, confirmed=0))
    confirm = [*_created("Snapshot", "snapshots", snap), *_created("SnapshotInPool", "snapshot_in_pools", *sips),
               *_created("SnapshotInPoolInBranch", "snapshot_in_pool_in_branches", *in_branch)]
    confirmed: dict[tuple[str, int], int | None] = {(c.table_name, int(c.row_pks["id"])): 1 for c in confirm}
    b = ChainBuilder("dataset_backup").lock("DatasetInPool", run.dips[1]).lock("DatasetInPool", run.dips[2])
    b.append(DATASET_SNAPSHOT, server=1, params={"pool_fs": fs1, "dataset_name": "101", "snapshot_id": snap},
             confirmations=confirm)
    # the new snapshot has no name yet when the chain is fired: the transfers look every name up by id
    src, dst = Side(1, fs1, "101"), Side(2, fs2, "101", "tree.0", run.branch_fs)
    (append_initial if initial else append_transfer)(b, src, dst, [*base, Snap(snap, fired_as)], confirmed=False)
    expected = await _off_loop(lambda: tree_digest(private))
    what = ("files written, Dataset::Snapshot@1, then a full and an -I stream (Recv@2, Send@1, RecvCheck@2 each) "
            "into the empty branch" if initial
            else "files changed, Dataset::Snapshot@1, then one -I stream (Recv@2, Send@1, RecvCheck@2)")
    scenario = await demo.fire(name, what, b, first_server=1,
                               expect=lambda t: Expect(ChainState.DONE, [(1, 1)] * len(t), rows=confirmed))
    done = BackupRun(scenario, snap, expected)
    await demo.ended(scenario)
    await _collect(demo, st, run, done)
    return done


async def _collect(demo: Demo, st: Storage, run: StorageRun, done: BackupRun) -> None:
    """After the chain: the snapshot's name, the Sends' outputs, the branch's files on node 2."""
    rows = await fetch(demo.conn, "SELECT name FROM snapshots WHERE id = %s", (done.snapshot,))
    done.snapshot_name = str(rows[0]["name"]) if rows else None
    done.sends = await fetch(demo.conn, "SELECT t_id, t_param, t_output FROM transactions WHERE transaction_chain_id"
                                        " = %s AND t_type = %s ORDER BY t_id", (done.scenario.fired.chain_id, SEND))
    if int(done.scenario.chain["state"]) != ChainState.DONE or done.snapshot_name is None:
        return
    run.extra[1].append(f"{st.fs(1)}/101@{done.snapshot_name}")
    branch = run.branch(st)
    if not run.extra[2]:  # the first backup brought storage_hv's snapshot along
        first = await fetch(demo.conn, "SELECT name FROM snapshots WHERE id = %s", (run.snapshot,))
        run.extra[2].append(f"{branch}@{first[0]['name']}")
    run.extra[2].append(f"{branch}@{done.snapshot_name}")
    mountpoint = (await st.zfs.get(branch, ["mountpoint"]))[branch]["mountpoint"].value
    done.received = await _off_loop(lambda: tree_digest(Path(mountpoint) / "private"))


async def report_backup(demo: Demo, st: Storage, run: StorageRun, backups: list[BackupRun]) -> list[str]:
    """Print each stream's size, time and rate (the Send's t_output) and the comparison of the files; return
    what differs."""
    names = {int(r["id"]): str(r["name"]) for r in await fetch(
        demo.conn, "SELECT id, name FROM snapshots WHERE dataset_id = %s", (run.dataset,))}
    say(f"\nBackup of 101: node1 {st.fs(1)}/101 -> node2 {run.branch(st)} (size, time and rate: each Send's "
        "t_output)")
    rows: list[list[Any]] = []
    problems: list[str] = []
    for backup in backups:
        for send in backup.sends:
            param, out = json.loads(send["t_param"]), json.loads(send["t_output"] or "{}")
            snaps = [names.get(int(s["id"]), f"#{s['id']}") for s in param["snapshots"]]
            stream = f"full {snaps[0]}" if len(snaps) == 1 else f"-I {snaps[0]} {snaps[-1]}"
            nbytes, secs, rate = out.get("bytes"), out.get("seconds"), out.get("rate")
            rows.append([backup.scenario.fired.chain_id, backup.scenario.name, send["t_id"], stream,
                         _mib(nbytes), f"{secs:.3f} s" if isinstance(secs, int | float) else "-",
                         f"{_mib(rate)}/s" if isinstance(rate, int | float) else "-"])
            if int(backup.scenario.chain["state"]) == ChainState.DONE and (not isinstance(nbytes, int) or nbytes <= 0):
                problems.append(f"{backup.scenario.name}: Send {send['t_id']} reports {nbytes!r} bytes")
    table(["chain", "scenario", "Send", "stream", "size", "time", "rate"], rows)
    for backup in backups:
        problems += _verdict(backup, run.branch(st))
    if len(backups) == 1:
        say("  backup_incr: not fired, the full backup did not end done")
        problems.append("backup_incr: not fired, the full backup did not end done")
    return problems


def _mib(value: object) -> str:
    return f"{value / MIB:.2f} MiB" if isinstance(value, int | float) else "-"


def _verdict(backup: BackupRun, branch: str) -> list[str]:
    """Compare the branch's private/ on node 2 with the source's at the snapshot, file by file."""
    name = backup.scenario.name
    if backup.received is None:
        say(f"  {name}: nothing to compare, the chain did not end done")
        return [f"{name}: no files to compare on node 2"]
    files = [k for k, v in backup.expected.items() if v != "dir"]
    if backup.received == backup.expected:
        say(f"  {name}: {branch}@{backup.snapshot_name}: private/ on node 2 is identical to node 1's at the "
            f"snapshot: {len(files)} files and symlinks, {len(backup.expected) - len(files)} directories, "
            "every file's sha256")
        return []
    differ = sorted(k for k in set(backup.expected) | set(backup.received)
                    if backup.expected.get(k) != backup.received.get(k))
    say(f"  {name}: private/ on node 2 DIFFERS from the source's snapshot: {differ[:10]}")
    return [f"{name}: files differ between node 1's snapshot and node 2: {differ[:10]}"]
