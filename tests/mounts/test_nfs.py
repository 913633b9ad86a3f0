"""Remote mounts (NFS of a dataset or of a snapshot clone on another node). This kernel has no NFS, so they are
checked at the argv level: a stand-in ``mount`` records its argv and where its target leads, from 5302 in the
daemon and from the action script alike."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import aiomysql
import pytest

from tests.mounts.conftest import (
    VEID,
    Node,
    chain,
    fake_mount_binary,
    fake_mount_calls,
    mount_hash,
    needs_root,
    run_mounts_chain,
    start,
)
from vpsadmind.engine.model import ChainState
from vpsadmind.system import record_calls

pytestmark = [pytest.mark.slow, needs_root]

NFS_OPTS = "-n -t nfs -overs=3"


def remote_mounts() -> list[dict[str, object]]:
    return [
        mount_hash(7, "/mnt/www", "123/www", pool_fs="storage/vpsfree.cz/nas", type="dataset_remote",
                   src_node_addr="172.16.0.5", mount_opts=NFS_OPTS),
        mount_hash(8, "/mnt/snap", "123/www", pool_fs="storage/backup", type="snapshot_remote",
                   src_node_addr="172.16.0.6", snapshot_id=12, snapshot="2015-01-01T00:00:00",
                   dataset_tree="tree.0", branch="branch-2015-01-01T00:00:00.0", mount_opts=NFS_OPTS, mode="rw"),
    ]


def expected(node: Node, calls: list[dict[str, object]]) -> None:
    argvs = [c["argv"] for c in calls]
    assert [a[:-1] for a in argvs] == [  # type: ignore[index]
        ["--no-canonicalize", "-n", "-t", "nfs", "-overs=3", "-orw",
         "172.16.0.5:/storage/vpsfree.cz/nas/123/www/private"],
        # a snapshot is always mounted read-only, from the clone 5217 made on the storage node
        ["--no-canonicalize", "-n", "-t", "nfs", "-overs=3", "-oro",
         "172.16.0.6:/storage/backup/vpsadmin/mount/12.snapshot/private"],
    ]
    for call, dst in zip(calls, ("/mnt/www", "/mnt/snap"), strict=True):
        target = call["argv"][-1]  # type: ignore[index]
        assert target.startswith("/proc/") and "/fd/" in target
        assert call["targets"] == {target: str(node.ve_root) + dst}  # the directory opened below the root


async def test_remote_mounts_from_5302(db: aiomysql.Connection, node: Node) -> None:
    log = node.tmp / "mount.log"
    cfg = dataclasses.replace(node.cfg, bin={**node.cfg.bin, "mount": str(fake_mount_binary(node.tmp / "mount", log))})
    await start(node)
    with record_calls() as calls:
        run = await run_mounts_chain(db, cfg, chain((5302, {"mounts": remote_mounts()})))
    assert run.state["state"] == ChainState.DONE, run.rows
    expected(node, fake_mount_calls(log))
    assert calls.count("zfs") == 0  # the source is on another node: nothing to look up here
    assert [c[1:-1] for c in calls.calls if c[0] == cfg.bin["mount"]] == [c["argv"][:-1]
                                                                         for c in fake_mount_calls(log)]


async def test_remote_mounts_from_the_action_script(db: aiomysql.Connection, node: Node) -> None:
    log = node.tmp / "mount.log"
    cfg = dataclasses.replace(node.cfg, bin={**node.cfg.bin, "mount": str(fake_mount_binary(node.tmp / "mount", log))})
    run = await run_mounts_chain(db, cfg, chain((5301, {"mounts": remote_mounts()})))
    assert run.state["state"] == ChainState.DONE
    assert f"--mount-bin '{cfg.bin['mount']}'" in node.vz.script_path(VEID, "mount").read_text()
    await node.vz.start(VEID)
    calls = fake_mount_calls(log)
    expected(node, calls)
    assert all(f"/proc/{os.getpid()}/" not in c["argv"][-1] for c in calls)  # type: ignore[index]  # the script's


async def test_remote_umount_keeps_force(db: aiomysql.Connection, node: Node, tmp_path: Path) -> None:
    """``umount -f`` is what an unreachable NFS server needs (v2.0's umount_opts); a local bind mount drops it."""
    await start(node)
    served = tmp_path / "exported"
    served.mkdir()
    (node.ve_root / "mnt/www").mkdir(parents=True)
    # stands in for the NFS mount the remote mount would have made
    subprocess.run(["mount", "--bind", str(served), str(node.ve_root / "mnt/www")], check=True)
    (node.ve_root / "mnt/data").mkdir()
    subprocess.run(["mount", "--bind", str(node.private("101/data")), str(node.ve_root / "mnt/data")], check=True)
    mounts = [remote_mounts()[0], mount_hash(1, "/mnt/data", node=node, umount_opts="-f")]
    with record_calls() as calls:
        run = await run_mounts_chain(db, node.cfg, chain((5303, {"mounts": mounts})))
    assert run.state["state"] == ChainState.DONE, run.rows
    umounts = [c for c in calls.calls if c[0] == "umount"]
    assert [c[1:-1] for c in umounts] == [["--no-canonicalize", "-f"], ["--no-canonicalize"]]  # /mnt/www first
    assert [c[-1].rsplit("/", 1)[1] for c in umounts] == ["www", "data"]
    assert not [m for m in node.mounted() if m.startswith(str(node.ve_root) + "/")]
