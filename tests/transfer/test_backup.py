"""Backups between two nodes as the API chains them: full, then incremental, into a backup tree/branch."""

from __future__ import annotations

import aiomysql

from tests.storage.conftest import output, sh
from tests.transfer.conftest import Node, assert_no_leftovers, run, take_snapshot, tree_digest, write_files
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.transfers import Side, append_initial, append_transfer


async def test_full_then_incremental_backup_into_branch(db: aiomysql.Connection, nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    sh("zfs", "create", f"{n1.pool.name}/101")
    sh("zfs", "create", "-p", f"{n2.pool.name}/backup/101/tree.0/branch-a")
    src_dir = n1.pool.mounted_path(f"{n1.pool.name}/101")
    write_files(src_dir, "a")
    s1 = await take_snapshot(db, n1.pool, "101", "2026-11-25T01:00:00")
    src = Side(1, n1.pool.name, "101")
    dst = Side(2, f"{n2.pool.name}/backup", "101", "tree.0", "branch-a")

    chain, rows = await run(db, append_initial(ChainBuilder("backup"), src, dst, [s1]), n1, n2)
    assert chain["state"] == ChainState.DONE, [(r["t_type"], output(r)) for r in rows]
    branch = f"{n2.pool.name}/backup/101/tree.0/branch-a"
    assert n2.pool.snapshots(branch) == [s1.name]
    assert output(rows[1])["bytes"] > 5 * 64 * 1024

    write_files(src_dir, "b")
    (src_dir / "a-0.bin").unlink()
    s2 = await take_snapshot(db, n1.pool, "101", "2026-11-26T01:00:00")
    write_files(src_dir, "c")
    s3 = await take_snapshot(db, n1.pool, "101", "2026-11-27T01:00:00")
    chain, rows = await run(db, append_transfer(ChainBuilder("backup"), src, dst, [s1, s2, s3]), n1, n2)
    assert chain["state"] == ChainState.DONE, [(r["t_type"], output(r)) for r in rows]
    assert n2.pool.snapshots(branch) == [s1.name, s2.name, s3.name]
    assert tree_digest(n2.pool.mounted_path(branch)) == tree_digest(src_dir)
    await assert_no_leftovers(db, n1, n2)
