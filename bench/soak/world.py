"""What the soak looks at: a fingerprint of one VPS on every node (its datasets and snapshots by name and guid,
its conf files by content, whether it runs, its rows) and the leftovers of the whole cluster (holds, receivers,
clones, ``.rollback`` datasets, locks, ports, claims, journals)."""

from __future__ import annotations

import asyncio
import difflib
import os
from pathlib import Path
from typing import Any

import aiomysql

from bench.soak.cluster import HV, Cluster
from bench.soak.workload import FAKE_VPS
from vpsadmind import system
from vpsadmind.testing.fakevz.layout import Layout
from vpsadmind.testing.zfssplit import fake_state

__all__ = ["fingerprint", "zfs_objects", "zfs_processes", "leftovers", "diff"]

#: columns the reporters change on their own (used/avail, timestamps) are not part of a row's identity
_ROW_QUERIES = {
    "vps": "SELECT vps_id, vps_server, dataset_in_pool_id, confirmed FROM vps WHERE vps_id = %s",
    "datasets": "SELECT id, full_name, confirmed FROM datasets WHERE full_name = %s",
    "dataset_in_pools": "SELECT d.id, d.pool_id, d.confirmed FROM dataset_in_pools d JOIN datasets s "
                        "ON s.id = d.dataset_id WHERE s.full_name = %s",
    "snapshots": "SELECT n.id, n.name, n.confirmed FROM snapshots n JOIN datasets s ON s.id = n.dataset_id "
                 "WHERE s.full_name = %s",
    "snapshot_in_pools": "SELECT p.id, p.dataset_in_pool_id, p.confirmed FROM snapshot_in_pools p JOIN snapshots n "
                         "ON n.id = p.snapshot_id JOIN datasets s ON s.id = n.dataset_id WHERE s.full_name = %s",
    "dataset_trees": "SELECT t.id, t.confirmed FROM dataset_trees t JOIN dataset_in_pools d ON "
                     "d.id = t.dataset_in_pool_id JOIN datasets s ON s.id = d.dataset_id WHERE s.full_name = %s",
    "branches": "SELECT b.id, b.name, b.confirmed FROM branches b JOIN dataset_trees t ON t.id = b.dataset_tree_id "
                "JOIN dataset_in_pools d ON d.id = t.dataset_in_pool_id JOIN datasets s ON s.id = d.dataset_id "
                "WHERE s.full_name = %s",
}


async def zfs_objects(cluster: Cluster) -> dict[str, str]:
    """Every dataset and snapshot of the soak's pools: name -> guid (one ``zfs list`` for all pools)."""
    pools = [n.pool.name for n in cluster.nodes.values()]
    done = await system.run([cluster.zfs.zfs_bin, "list", "-H", "-t", "all", "-o", "name,guid", "-r",
                             *pools], timeout=120)
    out: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, guid = line.partition("\t")
        out[name] = guid
    return out


def _files(cluster: Cluster, veid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for sid in HV:
        node = cluster.nodes[sid]
        for path in sorted(node.conf_dir.glob(f"{veid}.*")):
            if path.name.endswith(".destroyed"):  # vzctl destroy's own record of a container, as on v2.0
                continue
            out[f"{node.name}:{path.name}"] = path.read_text(errors="replace")
        ct = Layout(node.vz_root).ct(veid) if node.vz_root else None
        out[f"{node.name}:running"] = str(bool(ct is not None and ct.exists() and ct.running))
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: repr(value)}


async def fingerprint(cluster: Cluster, conn: aiomysql.Connection, veid: int) -> dict[str, Any]:
    """The VPS as every node and the database see it (the pseudo-VPS 0: hv1's fake pools)."""
    if veid == FAKE_VPS and cluster.split is not None:
        root = cluster.split.fake_root
        return {"zfs": await asyncio.to_thread(lambda: _flat(fake_state(root))), "files": {}, "rows": {}}
    objects = await zfs_objects(cluster)
    mine = {name: guid for name, guid in objects.items()
            if any(name.startswith(f"{n.fs}/{veid}") and name[len(f"{n.fs}/{veid}"):][:1] in ("", "/", "@", ".")
                   for n in cluster.nodes.values())}
    rows: dict[str, Any] = {}
    async with conn.cursor() as cur:
        for table, sql in _ROW_QUERIES.items():
            await cur.execute(sql, (veid if table == "vps" else str(veid),))
            rows[table] = sorted(tuple(r) for r in await cur.fetchall())
    files = await asyncio.to_thread(_files, cluster, veid)
    return {"zfs": mine, "files": files, "rows": rows}


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed, one line per key of each part."""
    out: list[str] = []
    for part in ("zfs", "files", "rows"):
        a, b = before[part], after[part]
        for key in sorted(set(a) | set(b)):
            old, new = a.get(key), b.get(key)
            if old == new:
                continue
            if isinstance(old, str) and isinstance(new, str) and "\n" in old + new:  # a conf file: the lines
                lines = [d for d in difflib.ndiff(old.splitlines(), new.splitlines()) if d[:1] in "+-"]
                out.append(f"{part} {key}: {'; '.join(lines)[:400]}")
            else:
                out.append(f"{part} {key}: {old!r} -> {new!r}")
    return out


async def _holds(cluster: Cluster, snapshots: list[str]) -> list[str]:
    """Snapshots with user holds (``userrefs`` > 0: zfs-fuse has no ``zfs holds``)."""
    out: list[str] = []
    for i in range(0, len(snapshots), 200):
        done = await system.run([cluster.zfs.zfs_bin, "get", "-H", "-o", "name,value", "userrefs",
                                 *snapshots[i:i + 200]], timeout=120)
        out += [line for line in done.stdout.splitlines() if line.split("\t")[-1].strip() not in ("0", "-", "")]
    return out


def zfs_processes(*verbs: str) -> list[tuple[int, str]]:
    """``(pid, pool)`` of running ``zfs <verb>`` processes for any of ``verbs`` (zfs-fuse's CLI rewrites ``@`` in
    its argv as a space, so the pool is the first word after the verb's options up to ``/``)."""
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            words = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split()
        except OSError:
            continue
        if len(words) > 2 and os.path.basename(words[0]) == "zfs" and words[1] in verbs:
            operand = next((w for w in words[2:] if not w.startswith("-")), "")
            found.append((int(entry), operand.split("/")[0].split("@")[0]))
    return found


async def leftovers(cluster: Cluster, conn: aiomysql.Connection) -> dict[str, list[str]]:
    """What must be gone once every chain ended: by kind, what is left."""
    objects = await zfs_objects(cluster)
    out: dict[str, list[str]] = {
        "holds": await _holds(cluster, [n for n in objects if "@" in n]),
        "receiver processes": [f"pid {pid}: zfs recv into {pool}"
                               for pid, pool in await asyncio.to_thread(zfs_processes, "recv", "receive")],
        ".rollback / temporary datasets": [n for n in objects if ".rollback" in n or "vpsadmind-" in n.split("@")[0]
                                           or "%" in n],
    }
    queries = {
        "resource locks": "SELECT resource, row_id, transaction_chain_id FROM resource_locks",
        "port reservations": "SELECT node_id, addr, port, transaction_chain_id FROM port_reservations "
                             "WHERE transaction_chain_id IS NOT NULL OR addr IS NOT NULL",
        "claims": "SELECT * FROM vpsadmind_claims",
        "transfers rows": "SELECT * FROM vpsadmind_transfers",
        "hold ledger rows": "SELECT * FROM vpsadmind_holds",
    }
    async with conn.cursor() as cur:
        for what, sql in queries.items():
            try:
                await cur.execute(sql)
                out[what] = [str(r) for r in await cur.fetchall()]
            except aiomysql.Error as exc:
                out[what] = [f"query failed: {exc}"]
    out["journal entries"] = [str(p) for sid in cluster.nodes for p in (cluster.workdir / f"journal{sid}").glob("*")
                              if p.is_file() and p.stat().st_size > 0]
    return out
