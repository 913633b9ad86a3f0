"""Chains as the vpsAdmin API writes them (rows first, then one ``TransactionChain.fire``), for the soak.

Each chain works on one VPS, and the generator never has two chains of one VPS in flight, so the state of a
VPS before a chain (its datasets, snapshots, conf files, running state and rows) is what a failed chain must
leave. A chain may get a failing probe (90001) at a random step: it must then roll back to exactly that state.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aiomysql

from bench.soak.cluster import BACKUP, CONFIG, HV, TEMPLATE, Cluster
from vpsadmind.testing.chains import ChainBuilder, Confirmation
from vpsadmind.testing.transfers import Side, append_transfer

__all__ = ["Vps", "Planned", "KINDS", "plan", "FAIL", "FAKE_VPS"]

FAIL: Final = 90001                       # the testing handlers' probe; {"fail": true} fails exec
NOOP: Final = 10001
KINDS: Final = ("create", "start", "stop", "restart", "snapshot", "backup", "restore", "migrate", "ip_add",
                "ip_del", "destroy", "mail", "fake")
_ips = itertools.count(10)


@dataclass(slots=True)
class Vps:
    """What the API knows about one VPS (its rows' ids) and what it expects on the nodes."""

    veid: int
    node: int
    dataset: int = 0
    dips: dict[int, int] = field(default_factory=dict)        # server_id -> dataset_in_pools.id
    snapshots: list[tuple[int, int]] = field(default_factory=list)  # (snapshots.id, snapshot_in_pools.id) on node
    tree: int = 0
    branch: int = 0
    branch_fs: str = ""
    backed_up: list[int] = field(default_factory=list)        # snapshots.id in the branch, oldest first
    ips: list[str] = field(default_factory=list)
    running: bool = False
    exists: bool = False
    destroyed: bool = False
    blocked: str = ""          # why the API refuses chains of this VPS (a lock a fatal chain keeps)


@dataclass(slots=True)
class Planned:
    """A chain ready to fire, with what to do to the model when it ends done."""

    kind: str
    vps: Vps
    builder: ChainBuilder
    first_server: int
    fail_at: int | None                           # index of the failing probe, None: must end done
    on_done: Callable[[], None]
    message_id: str | None = None                 # mail: the Message-ID to count in the mailbox
    target: str = ""                              # fake: the dataset it makes in both fake pools
    new_snapshots: list[int] = field(default_factory=list)


class Api:
    """Row writes as the API's ``save!`` does them, on one connection."""

    def __init__(self, conn: aiomysql.Connection, cluster: Cluster) -> None:
        self.conn, self.cluster = conn, cluster

    async def insert(self, table: str, **columns: Any) -> int:
        names = ", ".join(f"`{c}`" for c in columns)
        async with self.conn.cursor() as cur:
            await cur.execute(f"INSERT INTO `{table}` ({names}) VALUES ({', '.join(['%s'] * len(columns))})",
                              tuple(columns.values()))
            return int(cur.lastrowid)


def _created(class_name: str, table: str, *ids: int) -> list[Confirmation]:
    return [Confirmation.create(class_name, table, {"id": i}) for i in ids]


def _snap(sid: int) -> dict[str, Any]:
    """A snapshot the chain itself takes: the daemon looks its name up by id (the API's ``confirmed`` form)."""
    return {"id": sid, "name": "(unconfirmed)", "confirmed": "confirmed"}


class _SnapRef:
    def __init__(self, sid: int) -> None:
        self.id = sid

    def param(self, *, confirmed: bool = True) -> dict[str, Any]:
        return _snap(self.id)


def _with_failure(rng: random.Random, b: ChainBuilder, steps: list[tuple[int, int, dict[str, Any], list[Any]]],
                  fail: bool, vps: int | None, *, last: int | None = None) -> int | None:
    """Append ``(code, server, params, confirmations)`` steps; with ``fail``, a failing probe at a random step
    after the first (and at most at ``last``: after an irreversible step a failure is fatal, by contract)."""
    at = rng.randrange(1, (last if last is not None else len(steps)) + 1) if fail else None
    for i, (code, server, params, confirmations) in enumerate(steps):
        if i == at:
            b.append(FAIL, server=server, params={"fail": True})
        b.append(code, server=server, vps=vps, params=params, confirmations=confirmations)
    if at == len(steps):
        b.append(FAIL, server=steps[-1][1], params={"fail": True})
    return at


async def plan_create(api: Api, rng: random.Random, vps: Vps, fail: bool) -> Planned:
    node = api.cluster.nodes[vps.node]
    pool_id = api.cluster.pool_ids[vps.node]
    ds = await api.insert("datasets", name=str(vps.veid), full_name=str(vps.veid), user_editable=0, user_create=0,
                          user_destroy=0, confirmed=0, object_state=0)
    dip = await api.insert("dataset_in_pools", dataset_id=ds, pool_id=pool_id, confirmed=0)
    await api.insert("vps", vps_id=vps.veid, m_id=1, vps_hostname=f"ct{vps.veid}", vps_server=vps.node,
                     vps_config="", confirmed=0, dataset_in_pool_id=dip, object_state=0)
    ip = f"192.0.2.{next(_ips) % 250 + 2}"
    b = ChainBuilder("vps_create", type_="TransactionChains::Vps::Create").lock("Vps", vps.veid)
    steps: list[tuple[int, int, dict[str, Any], list[Any]]] = [
        (5201, vps.node, {"pool_fs": node.fs, "name": str(vps.veid), "options": {"refquota": 256},
                          "create_private": True},
         [*_created("Dataset", "datasets", ds), *_created("DatasetInPool", "dataset_in_pools", dip)]),
        (3001, vps.node, {"hostname": f"ct{vps.veid}", "template": TEMPLATE, "onboot": True},
         [Confirmation.create("Vps", "vps", {"vps_id": vps.veid})]),
        (2008, vps.node, {"configs": [CONFIG], "pool_fs": node.fs, "dataset_name": str(vps.veid)}, []),
        (2005, vps.node, {"nameserver": ["192.0.2.53"], "original": []}, []),
        (2006, vps.node, {"addr": ip, "version": 4, "register": False}, []),
        (1001, vps.node, {"onboot": True}, []),
    ]
    at = _with_failure(rng, b, steps, fail, vps.veid)

    def done() -> None:
        vps.dataset, vps.dips, vps.exists, vps.running, vps.ips = ds, {vps.node: dip}, True, True, [ip]
    return Planned("create", vps, b, vps.node, at, done)


async def plan_simple(api: Api, rng: random.Random, vps: Vps, kind: str, fail: bool) -> Planned:
    code = {"start": 1001, "stop": 1002, "restart": 1003}[kind]
    b = ChainBuilder(f"vps_{kind}").lock("Vps", vps.veid)
    # Restart has no rollback (v2.0: a restart cannot be undone), so a failure after it cannot restore the
    # state before: such a chain is not a test of rollback
    at = _with_failure(rng, b, [(code, vps.node, {}, [])], fail and kind != "restart", vps.veid)

    def done() -> None:
        vps.running = kind != "stop"
    return Planned(kind, vps, b, vps.node, at, done)


async def plan_snapshot(api: Api, rng: random.Random, vps: Vps, fail: bool) -> Planned:
    node = api.cluster.nodes[vps.node]
    sid = await api.insert("snapshots", name="(unconfirmed)", dataset_id=vps.dataset, confirmed=0)
    sip = await api.insert("snapshot_in_pools", snapshot_id=sid, dataset_in_pool_id=vps.dips[vps.node], confirmed=0)
    b = ChainBuilder("dataset_snapshot").lock("DatasetInPool", vps.dips[vps.node])
    at = _with_failure(rng, b, [(5204, vps.node, {"pool_fs": node.fs, "dataset_name": str(vps.veid),
                                                  "snapshot_id": sid},
                                 [*_created("Snapshot", "snapshots", sid),
                                  *_created("SnapshotInPool", "snapshot_in_pools", sip)])], fail, vps.veid)

    def done() -> None:
        vps.snapshots.append((sid, sip))
    return Planned("snapshot", vps, b, vps.node, at, done, new_snapshots=[sid])


async def _backup_rows(api: Api, vps: Vps) -> tuple[list[tuple[int, int, dict[str, Any], list[Any]]], int]:
    """The backup node's dataset, tree.0 and its branch, made by the first backup of a VPS."""
    fs = api.cluster.nodes[BACKUP].fs
    dip = await api.insert("dataset_in_pools", dataset_id=vps.dataset, pool_id=api.cluster.pool_ids[BACKUP],
                           confirmed=0)
    tree = await api.insert("dataset_trees", dataset_in_pool_id=dip, index=0, head=1, confirmed=0)
    name = f"2026-11-25T00:00:{vps.veid % 60:02d}"
    branch = await api.insert("branches", dataset_tree_id=tree, name=name, index=0, head=1, confirmed=0)
    vps.tree, vps.branch, vps.branch_fs = tree, branch, f"branch-{name}.0"
    steps: list[tuple[int, int, dict[str, Any], list[Any]]] = [
        (5201, BACKUP, {"pool_fs": fs, "name": str(vps.veid)}, _created("DatasetInPool", "dataset_in_pools", dip)),
        (5213, BACKUP, {"pool_fs": fs, "dataset_name": str(vps.veid), "tree": "tree.0"},
         _created("DatasetTree", "dataset_trees", tree)),
        (5206, BACKUP, {"pool_fs": fs, "dataset_name": str(vps.veid), "tree": "tree.0",
                        "new_branch_name": vps.branch_fs}, _created("Branch", "branches", branch))]
    return steps, dip


async def plan_backup(api: Api, rng: random.Random, vps: Vps, fail: bool) -> Planned:
    """Dataset::Snapshot on the hypervisor, then the transfer into the backup branch: the first backup sends
    every snapshot (full, then ``-I``), later ones ``-I`` from the last one backed up."""
    hv, bk = api.cluster.nodes[vps.node], api.cluster.nodes[BACKUP]
    first = not vps.backed_up
    pre: list[tuple[int, int, dict[str, Any], list[Any]]] = []
    backup_dip = vps.dips.get(BACKUP, 0)
    if first:
        pre, backup_dip = await _backup_rows(api, vps)
    sid = await api.insert("snapshots", name="(unconfirmed)", dataset_id=vps.dataset, confirmed=0)
    sip = await api.insert("snapshot_in_pools", snapshot_id=sid, dataset_in_pool_id=vps.dips[vps.node], confirmed=0)
    # what the stream carries: every snapshot (first backup), or every one since the last backed up (a -I
    # stream brings the intermediate ones along), as the API lists them
    on_node = [s for s, _ in vps.snapshots]
    sending = on_node + [sid] if first else on_node[on_node.index(vps.backed_up[-1]):] + [sid]
    confirm = [*_created("Snapshot", "snapshots", sid), *_created("SnapshotInPool", "snapshot_in_pools", sip)]
    for s in (sending if first else sending[1:]):
        bsip = await api.insert("snapshot_in_pools", snapshot_id=s, dataset_in_pool_id=backup_dip, confirmed=0)
        inb = await api.insert("snapshot_in_pool_in_branches", snapshot_in_pool_id=bsip, branch_id=vps.branch,
                               confirmed=0)
        confirm += [*_created("SnapshotInPool", "snapshot_in_pools", bsip),
                    *_created("SnapshotInPoolInBranch", "snapshot_in_pool_in_branches", inb)]
    b = ChainBuilder("dataset_backup").lock("DatasetInPool", vps.dips[vps.node])
    if first:
        b.lock("DatasetInPool", backup_dip)
    snap_step = (5204, vps.node, {"pool_fs": hv.fs, "dataset_name": str(vps.veid), "snapshot_id": sid}, confirm)
    at = _with_failure(rng, b, [*pre, snap_step], fail and rng.random() < 0.5, vps.veid)
    src, dst = Side(vps.node, hv.fs, str(vps.veid)), Side(BACKUP, bk.fs, str(vps.veid), "tree.0", vps.branch_fs)
    refs = [_SnapRef(s) for s in sending]
    if first:
        append_transfer(b, src, dst, refs[:1])
    if len(refs) > 1:
        append_transfer(b, src, dst, refs)
    if fail and at is None:  # the failure after the transfers: Recv's rollback must remove what came
        at = b.size
        b.append(FAIL, server=BACKUP, params={"fail": True})

    def done() -> None:
        vps.snapshots.append((sid, sip))
        vps.dips[BACKUP] = backup_dip
        vps.backed_up += sending if first else sending[1:]
    return Planned("backup", vps, b, vps.node, at, done, new_snapshots=[sid])


async def plan_restore(api: Api, rng: random.Random, vps: Vps, fail: bool) -> Planned:
    """Vps::Restore to the newest snapshot on the hypervisor: stop, ``zfs rollback``, start."""
    hv = api.cluster.nodes[vps.node]
    sid = vps.snapshots[-1][0]
    name = await _snapshot_name(api, sid)
    b = ChainBuilder("vps_restore").lock("Vps", vps.veid).lock("DatasetInPool", vps.dips[vps.node])
    steps: list[tuple[int, int, dict[str, Any], list[Any]]] = [(1002, vps.node, {}, []),
             (5208, vps.node, {"pool_fs": hv.fs, "dataset_name": str(vps.veid), "snapshot": name}, []),
             (1001, vps.node, {}, [])]
    at = _with_failure(rng, b, steps, fail, vps.veid, last=1)  # 5208 (zfs rollback) is irreversible

    def done() -> None:
        vps.running = True
    return Planned("restore", vps, b, vps.node, at, done)


async def _snapshot_name(api: Api, sid: int) -> str:
    async with api.conn.cursor() as cur:
        await cur.execute("SELECT name FROM snapshots WHERE id = %s", (sid,))
        row = await cur.fetchone()
    return str(row[0])


async def plan_migrate(api: Api, rng: random.Random, vps: Vps, fail: bool) -> Planned:
    """Vps::Migrate between the hypervisors (contract 5.6, as tests/vps/test_migration.py): configs, create,
    snapshot and full transfer while it runs, stop, snapshot and ``-I`` transfer, IPs moved, start on the
    destination, ``vps_server`` moved, then the source cleaned up. Only a VPS without snapshots migrates, so
    the source's clean-up destroys exactly what the chain made. A failure comes before the clean-up."""
    src_id = vps.node
    dst_id = HV[1] if src_id == HV[0] else HV[0]
    src, dst = api.cluster.nodes[src_id], api.cluster.nodes[dst_id]
    dst_dip = await api.insert("dataset_in_pools", dataset_id=vps.dataset, pool_id=api.cluster.pool_ids[dst_id],
                               confirmed=0)
    sids, sips = [], []
    for _ in range(2):
        sids.append(await api.insert("snapshots", name="(unconfirmed)", dataset_id=vps.dataset, confirmed=0))
        sips.append(await api.insert("snapshot_in_pools", snapshot_id=sids[-1], dataset_in_pool_id=dst_dip,
                                     confirmed=0))
    b = ChainBuilder("vps_migrate", type_="TransactionChains::Vps::Migrate", urgent_rollback=True)
    b.lock("Vps", vps.veid).lock("DatasetInPool", vps.dips[src_id]).lock("DatasetInPool", dst_dip)
    a, z = Side(src_id, src.fs, str(vps.veid)), Side(dst_id, dst.fs, str(vps.veid))
    b.append(4001, server=dst_id, vps=vps.veid, params={"src_node_addr": src.ip, "local": False,
                                                         "dst_vps": vps.veid})
    b.append(4002, server=dst_id, vps=vps.veid, params={},
             confirmations=_created("DatasetInPool", "dataset_in_pools", dst_dip))
    b.append(5204, server=src_id, vps=vps.veid, params={"pool_fs": src.fs, "dataset_name": str(vps.veid),
                                                         "snapshot_id": sids[0]},
             confirmations=[*_created("Snapshot", "snapshots", sids[0]),
                            *_created("SnapshotInPool", "snapshot_in_pools", sips[0])])
    append_transfer(b, a, z, [_SnapRef(sids[0])])
    b.append(1002, server=src_id, vps=vps.veid, params={})
    b.append(5204, server=src_id, vps=vps.veid, params={"pool_fs": src.fs, "dataset_name": str(vps.veid),
                                                         "snapshot_id": sids[1]},
             confirmations=[*_created("Snapshot", "snapshots", sids[1]),
                            *_created("SnapshotInPool", "snapshot_in_pools", sips[1])])
    append_transfer(b, a, z, [_SnapRef(s) for s in sids])
    for ip in vps.ips:
        b.append(2007, server=src_id, vps=vps.veid, params={"addr": ip, "version": 4, "unregister": False})
        b.append(2006, server=dst_id, vps=vps.veid, params={"addr": ip, "version": 4, "register": False})
    if vps.running:
        b.append(1001, server=dst_id, vps=vps.veid, params={})
    b.append(NOOP, server=dst_id, vps=vps.veid, params={}, confirmations=[
        Confirmation.edit_after("Vps", "vps", {"vps_id": vps.veid}, {"vps_server": dst_id, "dataset_in_pool_id":
                                                                     dst_dip})])
    at: int | None = None
    if fail:
        at = b.size
        b.append(FAIL, server=dst_id, params={"fail": True})
    else:
        b.append(3002, server=src_id, vps=vps.veid, params={})
        for sid in reversed(sids):
            b.append(5212, server=src_id, vps=vps.veid, params={"pool_fs": src.fs, "dataset_name": str(vps.veid),
                                                                 "snapshot": _snap(sid)})
        b.append(5203, server=src_id, vps=vps.veid, params={"pool_fs": src.fs, "name": str(vps.veid)})

    def done() -> None:
        vps.node, vps.dips = dst_id, {dst_id: dst_dip}
        vps.snapshots = list(zip(sids, sips, strict=True))
    return Planned("migrate", vps, b, src_id, at, done, new_snapshots=sids)


async def plan_ip(api: Api, rng: random.Random, vps: Vps, kind: str, fail: bool) -> Planned:
    step: tuple[int, int, dict[str, Any], list[Any]]
    if kind == "ip_add":
        ip = f"192.0.2.{next(_ips) % 250 + 2}"
        step = (2006, vps.node, {"addr": ip, "version": 4, "register": False}, [])
    else:
        ip = vps.ips[-1]
        step = (2007, vps.node, {"addr": ip, "version": 4, "unregister": False}, [])
    b = ChainBuilder(f"vps_{kind}").lock("Vps", vps.veid)
    at = _with_failure(rng, b, [step], fail, vps.veid)

    def done() -> None:
        if kind == "ip_add":
            vps.ips.append(ip)
        else:
            vps.ips.remove(ip)
    return Planned(kind, vps, b, vps.node, at, done)


async def plan_destroy(api: Api, rng: random.Random, vps: Vps, fail: bool) -> Planned:
    """Vps::Destroy: stop, then (irreversible from here) the container, its snapshots and dataset. A failure
    comes after the stop, which then rolls back (the VPS runs again)."""
    hv = api.cluster.nodes[vps.node]
    b = ChainBuilder("vps_destroy", type_="TransactionChains::Vps::Destroy").lock("Vps", vps.veid)
    b.lock("DatasetInPool", vps.dips[vps.node])
    b.append(1002, server=vps.node, vps=vps.veid, params={})
    at: int | None = None
    if fail:
        at = b.size
        b.append(FAIL, server=vps.node, params={"fail": True})
    else:
        b.append(3002, server=vps.node, vps=vps.veid, params={})
        for sid, _sip in reversed(vps.snapshots):
            b.append(5212, server=vps.node, vps=vps.veid, params={"pool_fs": hv.fs, "dataset_name": str(vps.veid),
                                                                  "snapshot": _snap(sid)})
        b.append(5203, server=vps.node, vps=vps.veid, params={"pool_fs": hv.fs, "name": str(vps.veid)})

    def done() -> None:
        vps.exists, vps.running, vps.destroyed = False, False, True
    return Planned("destroy", vps, b, vps.node, at, done)


async def plan_mail(api: Api, rng: random.Random, vps: Vps, n: int) -> Planned:
    mid = f"<soak-{n}-{rng.randrange(1 << 30)}@vpsadmind.test>"
    b = ChainBuilder("mail_send", type_="TransactionChains::Mail::Send")
    b.append(9001, server=BACKUP, params={"to": "admin@example.test", "from": "soak <soak@example.test>",
                                          "subject": f"soak {n}", "text_plain": "Připomínka: soak run.\n",
                                          "message_id": mid})
    return Planned("mail", vps, b, BACKUP, None, lambda: None, message_id=mid)


#: the pseudo-VPS of the chains on hv1's fake pools (one in flight at a time: its state is the fake pools')
FAKE_VPS: Final = 0


async def plan_fake(api: Api, rng: random.Random, vps: Vps, n: int, fail: bool) -> Planned:
    """On hv1's two fake-zfs pools, where the chaos injects zfs errors: Dataset::Create, Dataset::Snapshot,
    then LocalSend of the snapshot into the other fake pool."""
    split = api.cluster.split
    assert split is not None
    a, b = split.fake_pools
    name = f"ds{n}"
    ds = await api.insert("datasets", name=name, full_name=f"fake/{name}", user_editable=0, user_create=0,
                          user_destroy=0, confirmed=0, object_state=0)
    sid = await api.insert("snapshots", name="(unconfirmed)", dataset_id=ds, confirmed=0)
    builder = ChainBuilder("fake_storage")
    steps: list[tuple[int, int, dict[str, Any], list[Any]]] = [
        (5201, HV[0], {"pool_fs": a, "name": name}, _created("Dataset", "datasets", ds)),
        (5204, HV[0], {"pool_fs": a, "dataset_name": name, "snapshot_id": sid},
         _created("Snapshot", "snapshots", sid)),
        (5223, HV[0], {"src_pool_fs": a, "dst_pool_fs": b, "src_dataset_name": name, "dst_dataset_name": name,
                       "snapshots": [_snap(sid)]}, []),
    ]
    at = _with_failure(rng, builder, steps, fail, None)
    return Planned("fake", vps, builder, HV[0], at, lambda: None, new_snapshots=[sid], target=name)


def choose(rng: random.Random, vps: Vps) -> str | None:
    """A kind that makes sense for this VPS now (None: nothing to do with it)."""
    if vps.destroyed or vps.blocked:
        return None
    if vps.veid == FAKE_VPS:
        return "fake"
    if not vps.exists:
        return "create"
    options = ["snapshot", "backup", "ip_add", "mail", "restart", "stop" if vps.running else "start"]
    if vps.snapshots and vps.running:
        options.append("restore")
    if not vps.snapshots and not vps.backed_up:
        options += ["migrate", "migrate"]
    if vps.ips:
        options.append("ip_del")
    if len(vps.snapshots) >= 3 and rng.random() < 0.3:
        options.append("destroy")
    return rng.choice(options)


async def plan(api: Api, rng: random.Random, vps: Vps, kind: str, fail: bool, n: int) -> Planned:
    if kind == "create":
        return await plan_create(api, rng, vps, fail)
    if kind in ("start", "stop", "restart"):
        return await plan_simple(api, rng, vps, kind, fail)
    if kind in ("ip_add", "ip_del"):
        return await plan_ip(api, rng, vps, kind, fail)
    if kind == "mail":
        return await plan_mail(api, rng, vps, n)
    if kind == "fake":
        return await plan_fake(api, rng, vps, n, fail)
    fns = {"snapshot": plan_snapshot, "backup": plan_backup, "restore": plan_restore, "migrate": plan_migrate,
           "destroy": plan_destroy}
    return await fns[kind](api, rng, vps, fail)
