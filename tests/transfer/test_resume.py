"""Resumable receive (OpenZFS): a stream that breaks resumes from the receiver's token instead of starting
over. zfs-fuse has no resumable receive, so this runs on fake-zfs in its OpenZFS dialect, through the same
daemons, CLI and chains."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import aiomysql
import pytest

from tests.storage.conftest import output
from tests.transfer.conftest import Node, run, tree_digest, write_files
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.fakezfs import faults
from vpsadmind.testing.fakezfs.install import fake_zfs_script
from vpsadmind.testing.transfers import Side, Snap, append_initial, append_transfer
from vpsadmind.testing.zfspool import TempPool
from vpsadmind.zfs.driver import Zfs


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, Path]:
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    script = fake_zfs_script(bindir)
    for name in ("zfs", "zpool"):
        (bindir / name).symlink_to(script)
    root = tmp_path / "fakeroot"
    monkeypatch.setenv("FAKE_ZFS_ROOT", str(root))
    monkeypatch.setenv("FAKE_ZFS_DIALECT", "openzfs")
    return str(bindir / "zfs"), str(bindir / "zpool"), root


def zfs(binary: str, *args: str) -> str:
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout


async def test_broken_streams_resume_from_the_token(db: aiomysql.Connection, nodes: tuple[Node, Node],
                                                    fake: tuple[str, str, Path], tmp_path: Path) -> None:
    zfs_bin, zpool_bin, root = fake
    pools = []
    for _ in (1, 2):
        tp = TempPool(base_dir=str(tmp_path), zfs=Zfs(zfs=zfs_bin, zpool=zpool_bin, timeout=30.0))
        await tp.create()
        pools.append(tp)
    n1, n2 = (dataclasses.replace(n, cfg=dataclasses.replace(n.cfg, bin={"zfs": zfs_bin, "zpool": zpool_bin}))
              for n in nodes)
    try:
        p1, p2 = pools[0].name, pools[1].name
        zfs(zfs_bin, "create", f"{p1}/101")
        zfs(zfs_bin, "create", "-p", f"{p2}/backup/101/tree.0/branch-a")
        data = Path(zfs(zfs_bin, "get", "-H", "-o", "value", "mountpoint", f"{p1}/101").strip())
        snaps = []
        for i, name in enumerate(("2026-11-25T01:00:00", "2026-11-26T01:00:00", "2026-11-27T01:00:00")):
            write_files(data, f"s{i}", count=4, size=256 * 1024)
            zfs(zfs_bin, "snapshot", f"{p1}/101@{name}")
            async with db.cursor() as cur:
                await cur.execute("INSERT INTO snapshots (name, dataset_id, confirmed) VALUES (%s, 1, 1)", (name,))
                snaps.append(Snap(int(cur.lastrowid), name))
        src = Side(1, p1, "101")
        dst = Side(2, f"{p2}/backup", "101", "tree.0", "branch-a")
        branch = f"{p2}/backup/101/tree.0/branch-a"

        faults.break_send(root, after_bytes=300_000, count=1)
        chain, rows = await run(db, append_initial(ChainBuilder("backup"), src, dst, snaps[:1]), n1, n2)
        assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
        sent = output(rows[1])
        assert sent["resumed"] is True and sent["attempts"] == 2, sent

        faults.break_send(root, after_bytes=700_000, count=1)  # in the middle of the second snapshot's record
        chain, rows = await run(db, append_transfer(ChainBuilder("backup"), src, dst, snaps), n1, n2)
        assert chain["state"] == ChainState.DONE, [output(r) for r in rows]
        sent = output(rows[1])
        assert sent["resumed"] is True, sent
        listed = zfs(zfs_bin, "list", "-H", "-t", "snapshot", "-o", "name", "-r", branch).split()
        assert [n.split("@")[1] for n in listed] == [s.name for s in snaps]
        mnt = Path(zfs(zfs_bin, "get", "-H", "-o", "value", "mountpoint", branch).strip())
        assert tree_digest(mnt) == tree_digest(data)
        guid = zfs(zfs_bin, "get", "-H", "-p", "-o", "value", "guid", f"{p1}/101@{snaps[-1].name}").strip()
        assert output(rows[2])["guid"] == guid
    finally:
        for tp in pools:
            await tp.destroy()
