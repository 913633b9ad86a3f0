"""5302 Vps::Mount and 5303 Vps::Umount through a real engine and MariaDB: real bind mounts of zfs-fuse datasets
into a fake-vzctl container whose root is itself a bind mount, state reports in ``mounts.current_state``, the
rollbacks, snapshot mounts of a 5217 clone, and the escape refusal."""

from __future__ import annotations

import errno
import os

import aiomysql
import pytest

from tests.mounts.conftest import (
    VEID,
    Node,
    chain,
    insert_vps_and_mounts,
    mount_hash,
    mount_states,
    needs_root,
    run_mounts_chain,
    start,
)
from vpsadmind.engine.model import ChainState
from vpsadmind.mounts.node import mount_node
from vpsadmind.testing.engine import running_engine, wait_chain

pytestmark = [pytest.mark.slow, needs_root]

MOUNTED, UNMOUNTED = 1, 2


def is_mount(node: Node, dst: str) -> bool:
    return str(node.ve_root) + dst in node.mounted()


async def test_mount_and_umount_a_running_vps(db: aiomysql.Connection, node: Node) -> None:
    await insert_vps_and_mounts(db, 1, 2)
    node.make_dataset("101/ro", "read only\n")
    await start(node)
    mounts = [mount_hash(1, "/mnt/data", node=node), mount_hash(2, "/srv/ro", "101/ro", node=node, mode="ro")]
    run = await run_mounts_chain(db, node.cfg, chain((5302, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE, run.rows
    assert run.output(0)["mounted"] == [1, 2]
    root = node.ve_root
    assert (root / "mnt/data/hello").read_text() == "from 101/data\n"
    (root / "mnt/data/written").write_text("by the VPS\n")
    assert (node.private("101/data") / "written").read_text() == "by the VPS\n"  # the dataset itself
    with pytest.raises(OSError) as info:
        (root / "srv/ro/x").write_text("no")
    assert info.value.errno == errno.EROFS
    assert await mount_states(db) == {1: MOUNTED, 2: MOUNTED}

    run = await run_mounts_chain(db, node.cfg, chain((5302, {"mounts": mounts})))  # again: already mounted
    assert run.state["state"] == ChainState.DONE and run.output(0)["mounted"] == []
    assert [m for m in node.mounted() if m.startswith(str(root) + "/")] == [f"{root}/mnt/data", f"{root}/srv/ro"]

    run = await run_mounts_chain(db, node.cfg, chain((5303, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE and sorted(run.output(0)["unmounted"]) == [1, 2]
    assert not is_mount(node, "/mnt/data") and not is_mount(node, "/srv/ro")
    assert await mount_states(db) == {1: UNMOUNTED, 2: UNMOUNTED}
    await node.vz.stop(VEID)  # the root unmounts: nothing was left below it


async def test_stopped_vps_is_left_alone(db: aiomysql.Connection, node: Node) -> None:
    mounts = [mount_hash(1, "/mnt/data", node=node)]
    for code in (5302, 5303):
        run = await run_mounts_chain(db, node.cfg, chain((code, {"mounts": mounts})))
        assert run.state["state"] == ChainState.DONE and run.output(0)["running"] is False
    assert not [m for m in node.mounted() if m.startswith(str(node.root))]
    assert not (node.ve_root / "mnt").exists()


async def test_mount_is_oneshot_and_undoes_itself(db: aiomysql.Connection, node: Node) -> None:
    await start(node)
    mounts = [mount_hash(1, "/mnt/data", node=node), mount_hash(2, "/mnt/gone", "101/gone", node=node,
                                                                 on_start_fail="skip")]
    run = await run_mounts_chain(db, node.cfg, chain((5302, {"mounts": mounts})))
    assert run.state["state"] == ChainState.FAILED
    out = run.output(0)
    assert "mount 2 (/mnt/gone)" in out["error"] and "101/gone" in out["error"]  # skip does not apply here
    assert out["rollback"]["unmounted"] == [1]
    assert not is_mount(node, "/mnt/data")


async def test_chain_rollback_unmounts_what_5302_mounted(db: aiomysql.Connection, node: Node) -> None:
    await start(node)
    node.make_dataset("101/other")
    pre = [mount_hash(3, "/mnt/pre", "101/other", node=node)]
    assert (await run_mounts_chain(db, node.cfg, chain((5302, {"mounts": pre})))).state["state"] == ChainState.DONE
    mounts = [*pre, mount_hash(1, "/mnt/data", node=node)]
    run = await run_mounts_chain(db, node.cfg, chain((5302, {"mounts": mounts}), fail=True))
    assert run.state["state"] == ChainState.FAILED and run.rows[0]["t_done"] == 2
    assert not is_mount(node, "/mnt/data")
    assert is_mount(node, "/mnt/pre")  # it was mounted before this chain: not its rollback's to undo


async def test_umount_tolerates_not_mounted_and_rollback_mounts_again(db: aiomysql.Connection, node: Node) -> None:
    await insert_vps_and_mounts(db, 1, 2, 3)
    await start(node)
    node.make_dataset("101/data/sub", "child\n")
    mounts = [mount_hash(1, "/mnt/data", node=node), mount_hash(2, "/mnt/data/sub", "101/data/sub", node=node),
              mount_hash(3, "/mnt/never", node=node)]
    assert (await run_mounts_chain(db, node.cfg, chain((5302, {"mounts": mounts[:2]})))).state["state"] == 2
    # parents first in the params: 5303 still unmounts the child first
    run = await run_mounts_chain(db, node.cfg, chain((5303, {"mounts": mounts}), fail=True))
    assert run.state["state"] == ChainState.FAILED and run.rows[0]["t_done"] == 2
    assert is_mount(node, "/mnt/data") and is_mount(node, "/mnt/data/sub")  # mounted again by the rollback
    assert (node.ve_root / "mnt/data/sub/hello").read_text() == "child\n"
    assert not is_mount(node, "/mnt/never")  # it had not been unmounted, so it is not mounted by the rollback
    assert (await mount_states(db))[3] == UNMOUNTED

    run = await run_mounts_chain(db, node.cfg, chain((5303, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE and run.output(0)["unmounted"] == [2, 1]
    assert await mount_states(db) == {1: UNMOUNTED, 2: UNMOUNTED, 3: UNMOUNTED}


async def test_mount_and_umount_drop_delayed_entries(db: aiomysql.Connection, node: Node) -> None:
    await start(node)
    mounts = [mount_hash(1, "/mnt/data", node=node)]
    fired = await chain((5302, {"mounts": mounts})).fire(db)
    async with running_engine(node.cfg) as engine:
        delayed = mount_node(engine.ctx).registry.delayed
        delayed.register(VEID, mounts[0])
        delayed.register(VEID, mount_hash(2, "/mnt/other", node=node))
        assert (await wait_chain(db, fired.chain_id))["state"] == ChainState.DONE
        assert list(delayed.pending(VEID)) == [2]


async def test_snapshot_mount_of_a_clone(db: aiomysql.Connection, node: Node) -> None:
    """5217 clones the snapshot to ``<pool_fs>/vpsadmin/mount/<id>.snapshot``, 5302 bind-mounts its ``private``
    read-only (later versions of v2.0's mounter; 2.0's ``mount -t zfs`` of the snapshot needs a zfs mount
    helper zfs-fuse does not have)."""
    node.pool.zfs("create", "-p", f"{node.pool_fs}/vpsadmin/mount")
    node.pool.zfs("snapshot", f"{node.pool_fs}/101/data@2015-01-01T00:00:00")
    (node.private("101/data") / "hello").write_text("changed after the snapshot\n")
    await start(node)
    snap = mount_hash(5, "/mnt/snap", node=node, type="snapshot_local", snapshot_id=77,
                      snapshot="2015-01-01T00:00:00", mount_opts="-t zfs", mode="ro")
    clone = {"pool_fs": node.pool_fs, "dataset_name": "101/data", "snapshot_id": 77,
             "snapshot": "2015-01-01T00:00:00"}
    run = await run_mounts_chain(db, node.cfg, chain((5217, clone), (5302, {"mounts": [snap]})))
    assert run.state["state"] == ChainState.DONE, run.rows
    assert (node.ve_root / "mnt/snap/hello").read_text() == "from 101/data\n"
    with pytest.raises(OSError):
        (node.ve_root / "mnt/snap/x").write_text("no")
    run = await run_mounts_chain(db, node.cfg, chain((5303, {"mounts": [snap]}), (5218, clone)))
    assert run.state["state"] == ChainState.DONE, run.rows
    assert not node.pool.exists(f"{node.pool_fs}/vpsadmin/mount/77.snapshot")


async def test_destination_symlinked_to_the_host_is_refused(db: aiomysql.Connection, node: Node) -> None:
    """The container plants ``/mnt/x -> <host dir>`` (and ``/srv -> <host dir>``): the mounts are refused, the host
    directory gets no mount and no new directory."""
    host = node.tmp / "host-etc"
    host.mkdir()
    (host / "shadow").write_text("secret\n")
    await start(node)
    (node.ve_root / "mnt").mkdir()
    os.symlink(host, node.ve_root / "mnt" / "x")
    os.symlink("../../../../host-etc", node.ve_root / "srv")
    assert (node.ve_root / "srv" / "shadow").exists()  # the relative link does reach the host directory
    for dst in ("/mnt/x", "/srv/www"):
        run = await run_mounts_chain(db, node.cfg, chain((5302, {"mounts": [mount_hash(1, dst, node=node)]})))
        assert run.state["state"] == ChainState.FAILED
        out = run.output(0)
        assert "is a symbolic link: refusing to follow it out of the VPS root" in out["error"], out
        assert out["mount_id"] == 1 and out["dst"] == dst
    assert sorted(p.name for p in host.iterdir()) == ["shadow"]
    assert not host.is_mount() and str(host) not in node.mounted()
    assert not [m for m in node.mounted() if m.startswith(str(node.ve_root) + "/")]
