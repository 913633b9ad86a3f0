"""The zfs call budget of a transfer: the zfs/zpool commands both nodes run together for an initial transfer
(the API's two chains' worth: a full stream of the oldest snapshot, then ``-I`` to the newest) and for a
one-snapshot incremental. They must be a few per transfer and none per snapshot: zfs-fuse serializes its
commands and answers each in milliseconds to tens of them, so a dataset with hundreds of snapshots must not
cost hundreds of calls.

The engines run in this process, so :func:`vpsadmind.system.record_calls` sees every command of both nodes,
the ``zfs send``/``zfs recv`` streams included (they are started through :func:`vpsadmind.system.spawn`). The
capability probe each daemon runs once in its lifetime, at its first zfs use, is done before counting: it is
not a cost of the transfer. bench/transfer.py reports the same figures (docs/benchmarks.md, "transfer").
"""

from __future__ import annotations

from typing import Final

import aiomysql

from tests.storage.conftest import output, sh
from tests.transfer.conftest import Node, cluster, take_snapshot, write_files
from vpsadmind.engine.model import ChainState
from vpsadmind.handlers.storage_common import zfs_driver
from vpsadmind.system import CallLog, record_calls
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import transactions_of, wait_chain
from vpsadmind.testing.transfers import Side, Snap, append_initial, append_transfer

#: Measured: 16 for the initial transfer (7 for the full stream into a new dataset + 9 for the ``-I`` one) and
#: 9 for the incremental, whatever the number of snapshots: Recv lists the target's snapshots and holds the
#: common one; Send reads guid/size of the first and last snapshot in one ``zfs get``, holds both in one
#: ``zfs hold``, sends and releases them in one ``zfs release``; ``zfs recv``; RecvCheck reads the guid and
#: releases the receiving side's hold. The pins leave room for a new check, not for a loop over snapshots.
INITIAL_BUDGET: Final = 18
INCREMENTAL_BUDGET: Final = 10


def zfs_calls(log: CallLog) -> int:
    return log.count("zfs") + log.count("zpool")


async def make_snapshots(db: aiomysql.Connection, node: Node, dataset: str, count: int) -> list[Snap]:
    """``count`` snapshots of a new dataset, each after a small change (so each carries data)."""
    sh("zfs", "create", f"{node.pool.name}/{dataset}")
    root = node.pool.mounted_path(f"{node.pool.name}/{dataset}")
    snaps = []
    for i in range(count):
        write_files(root, f"s{i}", count=1, size=4096)
        snaps.append(await take_snapshot(db, node.pool, dataset, f"2026-01-01T{i // 60:02d}:{i % 60:02d}:00"))
    return snaps


async def counted(db: aiomysql.Connection, builder: ChainBuilder) -> int:
    """Fire ``builder`` and wait for it, counting the zfs/zpool calls meanwhile (engines already running)."""
    with record_calls() as log:
        fired = await builder.fire(db)
        chain = await wait_chain(db, fired.chain_id, timeout=90)
    rows = await transactions_of(db, fired.chain_id)
    assert chain["state"] == ChainState.DONE, [(r["t_type"], output(r)) for r in rows]
    return zfs_calls(log)


async def measure(db: aiomysql.Connection, nodes: tuple[Node, Node], dataset: str, count: int) -> tuple[int, int]:
    """(calls of the initial transfer of ``count`` snapshots, calls of a one-snapshot incremental after it)."""
    n1, n2 = nodes
    snaps = await make_snapshots(db, n1, dataset, count)
    src, dst = Side(1, n1.pool.name, dataset), Side(2, n2.pool.name, dataset)
    async with cluster(n1, n2) as engines:
        for engine in engines:
            await zfs_driver(engine.ctx)  # the once-per-daemon capability probe, outside the count
        initial = await counted(db, append_initial(ChainBuilder("backup"), src, dst, snaps))
        write_files(n1.pool.mounted_path(f"{n1.pool.name}/{dataset}"), "next", count=1, size=4096)
        last = await take_snapshot(db, n1.pool, dataset, "2026-01-02T00:00:00")
        incremental = await counted(db, append_transfer(ChainBuilder("backup"), src, dst, [snaps[-1], last]))
    assert n2.pool.snapshots(f"{n2.pool.name}/{dataset}") == [s.name for s in snaps] + [last.name]
    return initial, incremental


async def test_zfs_calls_of_a_transfer_do_not_grow_with_snapshots(db: aiomysql.Connection,
                                                                  nodes: tuple[Node, Node]) -> None:
    few = await measure(db, nodes, "101", 3)
    many = await measure(db, nodes, "102", 100)
    assert many == few, f"100 snapshots cost {many} zfs calls (initial, incremental), 3 snapshots {few}"
    initial, incremental = many
    assert initial <= INITIAL_BUDGET, f"initial transfer: {initial} zfs calls, budget {INITIAL_BUDGET}"
    assert incremental <= INCREMENTAL_BUDGET, f"incremental: {incremental} zfs calls, budget {INCREMENTAL_BUDGET}"
