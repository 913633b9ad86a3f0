"""zfs faults on a fake pool beside a real one, in one real daemon process (issue 9).

The node has one zfs-fuse pool (a TempPool) and two fake-zfs pools; its ``bin.zfs``/``bin.zpool`` are the
vpsadmind.testing.zfssplit dispatchers. Chains are written the way the API writes them, faults are injected with
fake-zfs's fault file (no space, busy, a stream broken at byte N), and after each chain:

* it ended failed (or done where the driver's busy retry is the v2.0 behaviour), with zfs's own error;
* the fault fired (nothing of it is left pending);
* the fake pools' fingerprint (names, guids, properties, holds, contents, staged receives) is exactly as before,
  minus what a successful chain was asked to do;
* the real pool (every dataset, snapshot and non-volatile property, and its files) is untouched;
* no hold (ledger or zfs), temporary clone or ``.rollback`` dataset is left;
* a normal chain on the real pool and one on a fake pool still succeed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pytest
import pytest_asyncio

from tests.storage.conftest import Pool, require_zfs, sh
from tests.transfer.conftest import tree_digest, write_files
from vpsadmind.engine.model import ChainState
from vpsadmind.testing.chains import ChainBuilder, register_node
from vpsadmind.testing.db import (
    TestDbSettings,
    connect,
    create_database_sync,
    drop_database_sync,
    random_database_name,
    require_mariadb,
)
from vpsadmind.testing.engine import transactions_of, wait_chain
from vpsadmind.testing.fakezfs import faults
from vpsadmind.testing.process import DaemonProcess, write_config
from vpsadmind.testing.transfers import Side, Snap, append_local
from vpsadmind.testing.zfspool import TempPool, unique_pool_name
from vpsadmind.testing.zfssplit import SplitZfs, create_fake_pool, destroy_fake_pool, fake_run, fake_state

pytestmark = pytest.mark.slow

SID = 31
PROBE_FAIL = 90001
_names = itertools.count(1)


@dataclass
class Node:
    settings: TestDbSettings
    database: str
    split: SplitZfs
    real: Pool
    daemon: DaemonProcess

    @property
    def root(self) -> Path:
        return self.split.fake_root

    @property
    def fa(self) -> str:
        return self.split.fake_pools[0]

    @property
    def fb(self) -> str:
        return self.split.fake_pools[1]

    def fake(self, *args: str) -> str:
        return fake_run(self.root, "zfs", *args)

    def fake_mnt(self, dataset: str) -> Path:
        return self.root / "mnt" / dataset

    def state(self) -> tuple[dict[str, Any], Any, dict[str, str]]:
        """Fake pools, real pool (names and non-volatile properties, with the real zfs), real files."""
        return fake_state(self.root), self.real.state(), tree_digest(self.real.mountpoint)


def _destroy_real(tp: TempPool) -> None:
    for attempt in range(20):  # zfs-fuse calls a pool busy for a moment after the last unmount
        try:
            asyncio.run(tp.destroy())
            return
        except Exception:
            if attempt == 19:
                raise
            subprocess.run(["sleep", "0.5"], check=False)


async def _register(settings: TestDbSettings, database: str) -> None:
    conn = await connect(settings, database)
    try:
        await register_node(conn, SID, name="split", ip4="127.0.0.31")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One daemon for the module: its own database, one zfs-fuse pool, two fake pools."""
    require_zfs()
    settings = TestDbSettings.from_env()
    require_mariadb(settings)
    tmp = tmp_path_factory.mktemp("split")
    database = random_database_name()
    create_database_sync(database, settings)
    tp = TempPool(base_dir=str(tmp))
    asyncio.run(tp.create())
    split = SplitZfs.install(tmp / "bin", tmp / "fz", [unique_pool_name("fz"), unique_pool_name("fz")])
    daemon: DaemonProcess | None = None
    try:
        for pool in split.fake_pools:
            create_fake_pool(split.fake_root, pool)
        sh("zfs", "create", f"{tp.name}/vz")
        write_files(Path(tp.mountpoint) / "vz", "real", count=2, size=4096)
        fake_run(split.fake_root, "zfs", "create", f"{split.fake_pools[0]}/vz")
        fake_run(split.fake_root, "zfs", "create", f"{split.fake_pools[1]}/backup")
        asyncio.run(_register(settings, database))
        config = write_config(tmp / "node.yml", settings, database, server_id=SID, journal=tmp / "journal",
                              bin=split.bin,
                              extra_vpsadmin={"queues": {"zfs_send": {"threads": 1, "start_delay": 0}}})
        daemon = DaemonProcess(config, tmp / "node.log").start()
        yield Node(settings, database, split, Pool(tp.name, Path(tp.mountpoint)), daemon)
    finally:
        if daemon is not None:
            daemon.terminate()
        _destroy_real(tp)
        for pool in split.fake_pools:
            destroy_fake_pool(split.fake_root, pool)
        drop_database_sync(database, settings)


@pytest_asyncio.fixture
async def conn(node: Node) -> AsyncIterator[aiomysql.Connection]:
    c = await connect(node.settings, node.database)
    try:
        yield c
    finally:
        c.close()


# -- helpers ----------------------------------------------------------------------------------------------------

async def run(conn: aiomysql.Connection, builder: ChainBuilder, timeout: float = 60.0
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    fired = await builder.fire(conn)
    chain = await wait_chain(conn, fired.chain_id, timeout=timeout)
    return chain, await transactions_of(conn, fired.chain_id)


def output(row: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(row["t_output"])) if row["t_output"] else {}


def assert_failed(chain: dict[str, Any], rows: list[dict[str, Any]], error: str) -> None:
    outputs = [(r["t_type"], output(r)) for r in rows]
    assert chain["state"] == ChainState.FAILED, outputs
    assert any(error in str(out.get("error", "")) for _, out in outputs), outputs


def assert_done(chain: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    assert chain["state"] == ChainState.DONE, [(r["t_type"], output(r)) for r in rows]


async def snapshot_row(conn: aiomysql.Connection, name: str = "(unconfirmed)", confirmed: int = 0) -> int:
    async with conn.cursor() as cur:
        await cur.execute("INSERT INTO snapshots (name, dataset_id, confirmed) VALUES (%s, 1, %s)",
                          (name, confirmed))
        return int(cur.lastrowid)


async def fake_snapshot(conn: aiomysql.Connection, node: Node, dataset: str, name: str) -> Snap:
    """A snapshot taken on a fake pool as an earlier chain would have left it (with its ``snapshots`` row)."""
    node.fake("snapshot", f"{dataset}@{name}")
    return Snap(await snapshot_row(conn, name, 1), name)


async def assert_clean(conn: aiomysql.Connection, node: Node,
                       before: tuple[dict[str, Any], Any, dict[str, str]]) -> None:
    """The state is exactly ``before``, every injected fault fired, nothing is left behind."""
    assert faults.load(node.root) == []
    fake, real, files = node.state()
    assert fake == before[0], differences(before[0], fake)
    assert real == before[1]
    assert files == before[2]
    await assert_no_leftovers(conn, node)


async def assert_no_leftovers(conn: aiomysql.Connection, node: Node) -> None:
    async with conn.cursor() as cur:
        await cur.execute("SELECT tag, snapshot FROM vpsadmind_holds")
        assert list(await cur.fetchall()) == []
    for pool in fake_state(node.root, contents=False).values():
        assert pool["leftovers"] == []
        for name, ds in pool["datasets"].items():
            assert not name.endswith(".rollback") and "/vpsadmin/mount/" not in name, name
            assert ds["origin"] is None and ds["resume"] is None, name
            assert all(s["holds"] == [] for s in ds["snapshots"].values()), (name, ds["snapshots"])
    names = node.real.names()
    assert not [n for n in names if n.endswith(".rollback") or "/vpsadmin/mount/" in n], names
    held = sh("zfs", "get", "-H", "-p", "-r", "-o", "name,value", "userrefs", node.real.name)
    assert [line for line in held.splitlines() if "@" in line and not line.endswith("\t0")] == []


async def assert_still_works(conn: aiomysql.Connection, node: Node) -> None:
    """A create + snapshot chain on the real pool and one on a fake pool, at the same time, both done."""
    fired = []
    for pool_fs in (f"{node.real.name}/vz", f"{node.fa}/vz"):
        name = f"ok{next(_names)}"
        builder = ChainBuilder("ok").append(5201, server=SID, params={"pool_fs": pool_fs, "name": name})
        builder.append(5204, server=SID, params={"pool_fs": pool_fs, "dataset_name": name,
                                                 "snapshot_id": await snapshot_row(conn)})
        fired.append(await builder.fire(conn))
    for f in fired:
        chain = await wait_chain(conn, f.chain_id, timeout=60)
        assert_done(chain, await transactions_of(conn, f.chain_id))
    await assert_no_leftovers(conn, node)


def send_recv(zfs: str, snapshot: str, target: str) -> None:
    """``zfs send snapshot | zfs recv target``, as an earlier backup would have left the target."""
    send = subprocess.Popen([zfs, "send", snapshot], stdout=subprocess.PIPE)
    recv = subprocess.run([zfs, "recv", target], stdin=send.stdout, capture_output=True, timeout=60, check=False)
    assert send.stdout is not None
    send.stdout.close()
    assert (send.wait(timeout=60), recv.returncode) == (0, 0), recv.stderr


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Where two fingerprints differ, as ``path: old -> new`` lines (for assertion messages)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in differences(old.get(key, "<missing>"), new.get(key, "<missing>"), f"{path}/{key}")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def without(state: dict[str, Any], pool: str, *datasets: str) -> dict[str, Any]:
    """``state`` minus ``datasets`` of ``pool`` (what a successful chain was asked to remove)."""
    out = json.loads(json.dumps(state))
    for name in datasets:
        del out[pool]["datasets"][name]
    return dict(out)


# -- no space ---------------------------------------------------------------------------------------------------

async def test_no_space_on_create(conn: aiomysql.Connection, node: Node) -> None:
    before = node.state()
    faults.no_space(node.root, "create", f"{node.fa}/*")
    chain, rows = await run(conn, ChainBuilder("create").append(5201, server=SID, params={
        "pool_fs": f"{node.fa}/vz", "name": "101", "options": {"quota": 100, "compression": True}}))
    assert_failed(chain, rows, "out of space")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


async def test_no_space_on_snapshot_rolls_the_chain_back(conn: aiomysql.Connection, node: Node) -> None:
    """Create a child and change a property, then the snapshot finds the fake pool full: all of it goes."""
    ds = f"{node.fa}/vz/102"
    node.fake("create", ds)
    write_files(node.fake_mnt(ds), "a", count=2, size=8192)
    before = node.state()
    faults.no_space(node.root, "snapshot", f"{node.fa}/*")
    builder = ChainBuilder("snapshot")
    builder.append(5201, server=SID, params={"pool_fs": f"{node.fa}/vz", "name": "102/child"})
    builder.append(5216, server=SID, params={"pool_fs": f"{node.fa}/vz", "name": "102",
                                             "properties": {"compression": [False, True]}})
    builder.append(5204, server=SID, params={"pool_fs": f"{node.fa}/vz", "dataset_name": "102",
                                             "snapshot_id": await snapshot_row(conn)})
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "out of space")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


async def test_no_space_on_recv(conn: aiomysql.Connection, node: Node) -> None:
    ds = f"{node.fa}/vz/103"
    node.fake("create", ds)
    write_files(node.fake_mnt(ds), "b", count=3, size=64 * 1024)
    s1 = await fake_snapshot(conn, node, ds, "2026-01-01T00:00:01")
    before = node.state()
    faults.no_space(node.root, "recv", f"{node.fb}/*")
    builder = append_local(ChainBuilder("local"), Side(SID, f"{node.fa}/vz", "103"),
                           Side(SID, f"{node.fb}/backup", "103"), [s1])
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "out of space")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


# -- broken streams ---------------------------------------------------------------------------------------------

async def test_full_stream_broken_at_byte_n(conn: aiomysql.Connection, node: Node) -> None:
    ds = f"{node.fa}/vz/104"
    node.fake("create", ds)
    write_files(node.fake_mnt(ds), "c", count=4, size=256 * 1024)
    s1 = await fake_snapshot(conn, node, ds, "2026-01-01T00:00:01")
    before = node.state()
    faults.break_send(node.root, after_bytes=300_000, dataset=f"{node.fa}/*")
    builder = append_local(ChainBuilder("local"), Side(SID, f"{node.fa}/vz", "104"),
                           Side(SID, f"{node.fb}/backup", "104"), [s1])
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "Input/output error")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


async def test_incremental_stream_broken_after_its_first_snapshot(conn: aiomysql.Connection, node: Node) -> None:
    """``send -I s1 s3`` broken inside the record of s3: the target keeps s2 (as ZFS does for -I), and the
    transaction's rollback must destroy it again, keeping the common s1."""
    src, dst = f"{node.fa}/vz/105", f"{node.fb}/backup/105"
    node.fake("create", src)
    snaps = []
    for i in (1, 2, 3):
        write_files(node.fake_mnt(src), f"d{i}", count=2, size=128 * 1024)
        snaps.append(await fake_snapshot(conn, node, src, f"2026-01-01T00:00:0{i}"))
    send_recv(str(node.split.zfs), f"{src}@{snaps[0].name}", dst)
    first_record = len(subprocess.run([str(node.split.zfs), "send", "-i", f"{src}@{snaps[0].name}",
                                       f"{src}@{snaps[1].name}"], capture_output=True, check=True).stdout)
    before = node.state()
    faults.break_send(node.root, after_bytes=first_record + 50_000, dataset=f"{node.fa}/*")
    builder = append_local(ChainBuilder("local"), Side(SID, f"{node.fa}/vz", "105"),
                           Side(SID, f"{node.fb}/backup", "105"), snaps)
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "Input/output error")
    assert output(rows[0])["rollback"]["destroyed"] == [snaps[1].name]   # s3 never arrived
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


# -- busy -------------------------------------------------------------------------------------------------------

async def test_busy_destroy_is_retried(conn: aiomysql.Connection, node: Node) -> None:
    ds = f"{node.fa}/vz/106"
    node.fake("create", ds)
    before = node.state()
    faults.busy(node.root, "destroy", ds, count=3)
    chain, rows = await run(conn, ChainBuilder("destroy").append(5203, server=SID, params={
        "pool_fs": f"{node.fa}/vz", "name": "106"}))
    assert_done(chain, rows)
    assert faults.load(node.root) == []
    assert node.state() == (without(before[0], node.fa, ds), before[1], before[2])
    await assert_no_leftovers(conn, node)
    await assert_still_works(conn, node)


async def test_busy_destroy_beyond_the_retries_fails(conn: aiomysql.Connection, node: Node) -> None:
    """The driver retries "busy" 20 times on zfs-fuse (its first destroy of a used filesystem always is);
    a 21st refusal fails the transaction and the dataset stays as it was."""
    ds = f"{node.fa}/vz/107"
    node.fake("create", ds)
    write_files(node.fake_mnt(ds), "e", count=1, size=4096)
    before = node.state()
    faults.busy(node.root, "destroy", ds, count=21)
    chain, rows = await run(conn, ChainBuilder("destroy").append(5203, server=SID, params={
        "pool_fs": f"{node.fa}/vz", "name": "107"}))
    assert_failed(chain, rows, "dataset is busy")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


async def test_busy_destroy_in_a_chain_rollback_is_retried(conn: aiomysql.Connection, node: Node) -> None:
    before = node.state()
    faults.busy(node.root, "destroy", f"{node.fa}/vz/108", count=3)
    builder = ChainBuilder("create").append(5201, server=SID, params={"pool_fs": f"{node.fa}/vz", "name": "108"})
    builder.append(PROBE_FAIL, server=SID, params={"fail": True})
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "failed on purpose")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


async def test_busy_rename_in_apply_rollback_is_retried(conn: aiomysql.Connection, node: Node) -> None:
    """PrepareRollback + ApplyRollback (the swap renames ``<ds>.rollback`` to ``<ds>``): three busy renames are
    retried, the swap completes, and no ``.rollback`` is left."""
    ds = f"{node.fa}/vz/109"
    node.fake("create", ds)
    before = node.state()
    faults.busy(node.root, "rename", f"{node.fa}/*", count=3)
    builder = ChainBuilder("rollback")
    params = {"pool_fs": f"{node.fa}/vz", "dataset_name": "109"}
    builder.append(5209, server=SID, params=params)
    builder.append(5211, server=SID, params={**params, "descendant_datasets": []})
    chain, rows = await run(conn, builder)
    assert_done(chain, rows)
    assert faults.load(node.root) == []
    after = node.state()
    swapped = after[0][node.fa]["datasets"][ds]
    assert swapped["guid"] != before[0][node.fa]["datasets"][ds]["guid"] and swapped["mounted"]
    assert (without(after[0], node.fa, ds), after[1], after[2]) == (without(before[0], node.fa, ds), *before[1:])
    await assert_no_leftovers(conn, node)
    await assert_still_works(conn, node)


# -- one chain over the real pool and a fake one ----------------------------------------------------------------

async def test_real_create_then_fake_snapshot_without_space(conn: aiomysql.Connection, node: Node) -> None:
    ds = f"{node.fa}/vz/110"
    node.fake("create", ds)
    before = node.state()
    faults.no_space(node.root, "snapshot", f"{node.fa}/*")
    builder = ChainBuilder("mixed")
    builder.append(5201, server=SID, params={"pool_fs": f"{node.real.name}/vz", "name": "201",
                                             "options": {"compression": True}, "create_private": True})
    builder.append(5204, server=SID, params={"pool_fs": f"{node.fa}/vz", "dataset_name": "110",
                                             "snapshot_id": await snapshot_row(conn)})
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "out of space")
    assert json.loads(output(rows[0])["execute_output"])["private"]   # the real create ran, then was undone
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


async def test_group_snapshot_over_both_without_space_on_the_fake(conn: aiomysql.Connection, node: Node) -> None:
    """5215 snapshots the real dataset first, then the fake one fails: the real snapshot is destroyed again."""
    real_ds, fake_ds = f"{node.real.name}/vz/202", f"{node.fa}/vz/111"
    sh("zfs", "create", real_ds)
    node.fake("create", fake_ds)
    before = node.state()
    faults.no_space(node.root, "snapshot", f"{node.fa}/*")
    chain, rows = await run(conn, ChainBuilder("group").append(5215, server=SID, params={"snapshots": [
        {"pool_fs": f"{node.real.name}/vz", "dataset_name": "202", "snapshot_id": await snapshot_row(conn)},
        {"pool_fs": f"{node.fa}/vz", "dataset_name": "111", "snapshot_id": await snapshot_row(conn)}]}))
    assert_failed(chain, rows, "out of space")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


# -- regressions ------------------------------------------------------------------------------------------------

async def test_busy_unmount_before_a_local_send_leaves_no_hold(conn: aiomysql.Connection, node: Node) -> None:
    """LocalSend into the API's fresh (mounted, empty) backup branch unmounts it first on zfs-fuse; when that
    unmount fails, the holds already taken on the source snapshots must be released all the same."""
    src, dst = f"{node.fa}/vz/112", f"{node.fb}/backup/112"
    node.fake("create", src)
    node.fake("create", dst)
    write_files(node.fake_mnt(src), "f", count=1, size=4096)
    s1 = await fake_snapshot(conn, node, src, "2026-01-01T00:00:01")
    before = node.state()
    faults.busy(node.root, "unmount", dst, count=1)
    builder = append_local(ChainBuilder("local"), Side(SID, f"{node.fa}/vz", "112"),
                           Side(SID, f"{node.fb}/backup", "112"), [s1])
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "dataset is busy")
    await assert_clean(conn, node, before)
    await assert_still_works(conn, node)


async def test_local_send_rollback_restores_the_target_files(conn: aiomysql.Connection, node: Node) -> None:
    """On zfs-fuse: a LocalSend of ``-I s1 s3`` onto a target that had s1, then a later step fails. Destroying
    s2 and s3 is not enough: the target's files were s3's; the rollback must bring back s1's."""
    src, dst = f"{node.real.name}/vz/203", f"{node.real.name}/vz/203-copy"
    sh("zfs", "create", src)
    mnt = node.real.mounted_path(src)
    snaps = []
    for i in (1, 2, 3):
        write_files(mnt, f"g{i}", count=1, size=16 * 1024)
        name = f"2026-01-01T00:00:0{i}"
        sh("zfs", "snapshot", f"{src}@{name}")
        snaps.append(Snap(await snapshot_row(conn, name, 1), name))
    send_recv("zfs", f"{src}@{snaps[0].name}", dst)
    before = node.state()
    builder = append_local(ChainBuilder("local"), Side(SID, f"{node.real.name}/vz", "203"),
                           Side(SID, f"{node.real.name}/vz", "203-copy"), snaps)
    builder.append(PROBE_FAIL, server=SID, params={"fail": True})
    chain, rows = await run(conn, builder)
    assert_failed(chain, rows, "failed on purpose")
    assert json.loads(output(rows[0])["execute_output"])["bytes"] > 0   # the stream did arrive
    assert output(rows[0])["destroyed"] == [snaps[2].name, snaps[1].name]
    await assert_clean(conn, node, before)
