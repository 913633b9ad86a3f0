"""Snapshot downloads (5004 Dataset::DownloadSnapshot, 5005 Dataset::RemoveDownload) on real zfs-fuse pools,
mostly as whole chains through a real engine and MariaDB.

zfs-fuse has no ``.zfs`` directory, so archives come from the temporary clone; one test fakes a
``.zfs/snapshot/<snap>`` directory to cover the path real ZoL takes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from tests.storage.conftest import Direct, Pool, assert_done, failing, output, run_chain, sh
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState, TSuccess
from vpsadmind.errors import HandlerError, ParamError
from vpsadmind.handlers.base import HANDLERS, Outcome, import_handler_modules
from vpsadmind.handlers.params import parse_params
from vpsadmind.progress import ProgressBoard
from vpsadmind.system import record_calls
from vpsadmind.testing.chains import ChainBuilder

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
S1, S2, S3 = "2016-01-01T10:00:00", "2016-01-02T10:00:00", "2016-01-03T10:00:00"


@dataclass
class Area:
    """A pool dataset ``<pool>/vz`` with its working datasets and a VPS dataset ``vz/101``."""

    pool: Pool
    fs: str

    @property
    def download_dir(self) -> Path:
        return self.pool.mounted_path(f"{self.fs}/vpsadmin/download")

    @property
    def mount_dir(self) -> Path:
        return self.pool.mounted_path(f"{self.fs}/vpsadmin/mount")

    def data(self, ds: str = "101") -> Path:
        return self.pool.mounted_path(f"{self.fs}/{ds}")

    def listing(self) -> dict[str, list[str]]:
        """Everything below the download and mount dirs (names only), to see what a run left."""
        found: dict[str, list[str]] = {}
        for top in (self.download_dir, self.mount_dir):
            for root, dirs, files in os.walk(top):
                found[os.path.relpath(root, top.parent)] = sorted(dirs + files)
        return found


def make_area(pool: Pool) -> Area:
    fs = f"{pool.name}/vz"
    for ds in ("vpsadmin/download", "vpsadmin/mount", "101"):
        pool.zfs("create", "-p", f"{fs}/{ds}")
    return Area(pool, fs)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root`` by relative path (``.zfs`` fakes excluded)."""
    found: dict[str, bytes] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".zfs"]
        for name in files:
            path = Path(dirpath, name)
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def tar_tree(archive: bytes) -> tuple[set[str], dict[str, bytes]]:
    """(top-level names, regular files by path) of a tar.gz."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        files = {}
        for m in tar.getmembers():
            if m.isfile():
                extracted = tar.extractfile(m)
                assert extracted is not None
                files[m.name] = extracted.read()
    return tops, files


FIRST = {"etc/hostname": b"vps101\n", "var/www/index.html": b"<h1>hi</h1>\n", "empty": b"",
         "big.bin": os.urandom(3 * MIB + 12345)}


def first_snapshot(area: Area) -> dict[str, bytes]:
    """Files, snapshot S1, then changes that the download of S1 must not contain."""
    write_tree(area.data(), FIRST)
    area.pool.zfs("snapshot", f"{area.fs}/101@{S1}")
    write_tree(area.data(), {"etc/hostname": b"changed\n", "new-file": b"after the snapshot"})
    (area.data() / "var/www/index.html").unlink()
    return dict(FIRST)


async def insert_download(db: aiomysql.Connection, secret: str, file_name: str) -> int:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO snapshot_downloads (user_id, pool_id, secret_key, file_name, confirmed, "
                          "object_state) VALUES (1, 1, %s, %s, 0, 0)", (secret, file_name))
        return int(cur.lastrowid)


async def download_row(db: aiomysql.Connection, download_id: int) -> dict[str, Any]:
    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT * FROM snapshot_downloads WHERE id = %s", (download_id,))
        row = await cur.fetchone()
    assert row is not None
    return dict(row)


def chain(*steps: tuple[int, dict[str, Any]], fail: bool = False) -> ChainBuilder:
    b = ChainBuilder("download")
    for code, params in steps:
        b.append(code, server=1, params=params)
    return failing(b) if fail else b


async def new_download(db: aiomysql.Connection, area: Area, file_name: str, **extra: Any) -> dict[str, Any]:
    secret = secrets.token_hex(50)
    download_id = await insert_download(db, secret, file_name)
    return {"pool_fs": area.fs, "dataset_name": "101", "snapshot": S1, "secret_key": secret,
            "file_name": file_name, "download_id": download_id, **extra}


def assert_published(area: Area, params: dict[str, Any]) -> bytes:
    """The file and its checksum are in place with their modes, nothing else is; returns the file."""
    secret_dir = area.download_dir / params["secret_key"]
    name = params["file_name"]
    assert sorted(os.listdir(secret_dir)) == [name, f"{name}.sha256"]
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o711
    for entry in (name, f"{name}.sha256"):
        assert stat.S_IMODE((secret_dir / entry).stat().st_mode) == 0o644
    content = (secret_dir / name).read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    assert (secret_dir / f"{name}.sha256").read_text() == f"{digest}  {name}\n"
    return content


def assert_no_clone(area: Area) -> None:
    assert not [n for n in area.pool.names() if n.endswith(".download")]
    assert os.listdir(area.mount_dir) == []


# ------------------------------------------------------------------------------------------------------------
# 5004: formats


async def test_archive_holds_the_snapshot_under_its_name(db: Any, cfg: Config, pool: Pool) -> None:
    area = make_area(pool)
    expected = first_snapshot(area)
    params = await new_download(db, area, "101__2016-01-01T10-00-00.tar.gz")
    state, rows = await run_chain(db, cfg, chain((5004, params)))
    assert_done(state, rows)
    archive = assert_published(area, params)
    tops, files = tar_tree(archive)
    assert tops == {S1}
    assert files == {f"{S1}/{rel}": content for rel, content in expected.items()}
    out = output(rows[0])
    assert out["source"] == "clone" and out["format"] == "archive" and out["size"] == len(archive)
    assert params["secret_key"] not in json.dumps(out)
    row = await download_row(db, params["download_id"])
    assert row["size"] == len(archive) // MIB == 3  # MiB, rounded down as v2.0's integer division
    assert_no_clone(area)
    assert pool.snapshots(f"{area.fs}/101") == [S1]


async def test_archive_reads_dot_zfs_snapshot_where_it_exists(direct: Direct, pool: Pool) -> None:
    """Real ZoL path: ``<mnt>/.zfs/snapshot/<snap>`` (faked here with a plain directory) is used, no clone."""
    area = make_area(pool)
    first_snapshot(area)
    fake = area.data() / ".zfs" / "snapshot" / S1
    write_tree(fake, {"from-dot-zfs": b"zol"})
    params = {"pool_fs": area.fs, "dataset_name": "101", "snapshot": S1, "secret_key": "ab" * 16,
              "file_name": "x.tar.gz", "download_id": 5}
    with record_calls() as calls:
        out = await direct.make(5004, params).exec()
    assert isinstance(out, Outcome) and out.output["source"] == ".zfs"
    assert calls.count("zfs", subcommand="clone") == 0
    _tops, files = tar_tree(assert_published(area, params))
    assert files == {f"{S1}/from-dot-zfs": b"zol"}


async def test_streams_full_and_incremental_receive_back(db: Any, cfg: Config, pool: Pool) -> None:
    area = make_area(pool)
    states = {}
    for snap, files in ((S1, {"a": b"one", "d/b": b"two"}), (S2, {"a": b"one-two"}), (S3, {"c": b"three"})):
        write_tree(area.data(), files)
        pool.zfs("snapshot", f"{area.fs}/101@{snap}")
        states[snap] = read_tree(area.data())
    full = await new_download(db, area, "101__s1.dat", format="stream")
    inc = await new_download(db, area, "101__s1__s3.inc.dat.gz", format="incremental_stream", snapshot=S3,
                             from_snapshot=S1)
    async with db.cursor() as cur:
        await cur.execute("ALTER TABLE snapshot_downloads ADD COLUMN sha256sum VARCHAR(64) NULL")
    try:
        state, rows = await run_chain(db, cfg, chain((5004, full), (5004, inc)))
        assert_done(state, rows)
        rows_db = [await download_row(db, p["download_id"]) for p in (full, inc)]
    finally:
        async with db.cursor() as cur:
            await cur.execute("ALTER TABLE snapshot_downloads DROP COLUMN sha256sum")
    stream = assert_published(area, full)
    inc_gz = assert_published(area, inc)
    for row, content in zip(rows_db, (stream, inc_gz), strict=True):
        assert row["sha256sum"] == hashlib.sha256(content).hexdigest()
        assert row["size"] == len(content) // MIB
    target = f"{pool.name}/restore"
    sh("zfs", "recv", target, input=stream)  # a raw stream: the name has no .gz
    assert pool.snapshots(target) == [S1]
    assert read_tree(pool.mounted_path(target)) == states[S1]
    sh("zfs", "recv", "-F", target, input=gzip.decompress(inc_gz))
    assert pool.snapshots(target) == [S1, S2, S3]  # -I: the intermediate snapshot came along
    assert read_tree(pool.mounted_path(target)) == states[S3]


async def test_backup_pool_branch_path(db: Any, cfg: Config, pool: Pool) -> None:
    area = make_area(pool)
    branch = f"{area.fs}/101/tree.0/branch-2016-01-01T00:00:00.0"
    pool.zfs("create", "-p", branch)
    write_tree(pool.mounted_path(branch), {"backup": b"in the branch"})
    pool.zfs("snapshot", f"{branch}@{S1}")
    params = await new_download(db, area, "101__backup.tar.gz", tree="tree.0",
                                branch="branch-2016-01-01T00:00:00.0")
    state, rows = await run_chain(db, cfg, chain((5004, params)))
    assert_done(state, rows)
    _tops, files = tar_tree(assert_published(area, params))
    assert files == {f"{S1}/backup": b"in the branch"}
    assert_no_clone(area)


# ------------------------------------------------------------------------------------------------------------
# Rollback, 5005, crash re-runs


async def test_rollback_removes_exactly_what_was_made(db: Any, cfg: Config, pool: Pool) -> None:
    area = make_area(pool)
    first_snapshot(area)
    other = area.download_dir / ("f" * 100)
    write_tree(other, {"other.tar.gz": b"another download"})
    before, listing = pool.state(), area.listing()
    params = await new_download(db, area, "101.tar.gz")
    state, rows = await run_chain(db, cfg, chain((5004, params), fail=True))
    assert state["state"] == ChainState.FAILED, [(r["t_type"], output(r)) for r in rows]
    assert rows[0]["t_done"] == 2 and rows[0]["t_success"] == TSuccess.OK, output(rows[0])
    assert pool.state() == before
    assert area.listing() == listing
    assert (other / "other.tar.gz").read_bytes() == b"another download"


async def test_remove_download(db: Any, cfg: Config, pool: Pool) -> None:
    area = make_area(pool)
    first_snapshot(area)
    params = await new_download(db, area, "101.tar.gz")
    state, rows = await run_chain(db, cfg, chain((5004, params)))
    assert_done(state, rows)
    remove = {k: params[k] for k in ("pool_fs", "secret_key", "file_name")}
    # a clone left by a failed 5004: 5005 finds it through snapshot_downloads.id
    clone = f"{area.fs}/vpsadmin/mount/{params['download_id']}.download"
    pool.zfs("clone", "-o", f"mountpoint={area.mount_dir}/{params['download_id']}.download/{S1}",
             f"{area.fs}/101@{S1}", clone)
    state, rows = await run_chain(db, cfg, chain((5005, remove)))
    assert_done(state, rows)
    assert not (area.download_dir / params["secret_key"]).exists()
    assert_no_clone(area)
    state, rows = await run_chain(db, cfg, chain((5005, remove)))  # already gone: fine
    assert_done(state, rows)
    assert output(rows[0])["removed"] == []


async def test_remove_download_keeps_foreign_entries(direct: Direct, pool: Pool) -> None:
    area = make_area(pool)
    secret_dir = area.download_dir / ("0" * 100)
    write_tree(secret_dir, {"x.tar.gz": b"x", "x.tar.gz.sha256": b"s", ".x.tar.gz.part": b"p",
                            "not-ours": b"keep"})
    out = await direct.make(5005, {"pool_fs": area.fs, "secret_key": "0" * 100, "file_name": "x.tar.gz",
                                   "download_id": 9}).exec()
    assert isinstance(out, Outcome) and out.status == TSuccess.WARNING
    assert out.output["kept"] == ["not-ours"]
    assert os.listdir(secret_dir) == ["not-ours"]


async def test_rerun_after_a_crash_cleans_leftovers_and_reports_progress(direct: Direct, pool: Pool) -> None:
    area = make_area(pool)
    expected = first_snapshot(area)
    secret = "c" * 100
    params = {"pool_fs": area.fs, "dataset_name": "101", "snapshot": S1, "secret_key": secret,
              "file_name": "a.tar.gz", "download_id": 77}
    # what a run killed half-way leaves: part files and the mounted clone with its work directory
    write_tree(area.download_dir / secret, {".a.tar.gz.part": b"half", ".a.tar.gz.sha256.part": b"x"})
    pool.zfs("clone", "-o", f"mountpoint={area.mount_dir}/77.download/{S1}", f"{area.fs}/101@{S1}",
             f"{area.fs}/vpsadmin/mount/77.download")
    events: list[dict[str, Any]] = []

    class Sink:
        def progress_event(self, payload: dict[str, Any]) -> None:
            events.append(payload)

    direct.ctx.progress = ProgressBoard(lambda: Sink())
    out = await direct.make(5004, params, t_id=40).exec()
    assert isinstance(out, Outcome) and out.data["size"] == out.output["size"]
    _tops, files = tar_tree(assert_published(area, params))
    assert files == {f"{S1}/{rel}": content for rel, content in expected.items()}
    assert_no_clone(area)
    referenced = int(pool.prop(f"{area.fs}/101@{S1}", "referenced")[0])
    assert events[0]["kind"] == "download" and events[0]["total"] == referenced
    assert events[-1]["state"] == "done" and events[-1]["bytes"] >= len(expected["big.bin"])
    assert all(secret not in json.dumps(e) for e in events)
    assert direct.ctx.progress.items() == []


async def test_a_failing_send_closes_progress_and_rollback_cleans(direct: Direct, pool: Pool) -> None:
    area = make_area(pool)
    for snap in (S1, S2):
        pool.zfs("snapshot", f"{area.fs}/101@{snap}")
    events: list[dict[str, Any]] = []

    class Sink:
        def progress_event(self, payload: dict[str, Any]) -> None:
            events.append(payload)

    direct.ctx.progress = ProgressBoard(lambda: Sink())
    # from a newer snapshot to an older one: zfs send refuses after the part file exists
    params = {"pool_fs": area.fs, "dataset_name": "101", "snapshot": S1, "from_snapshot": S2, "secret_key": "d" * 64,
              "file_name": "x.dat", "download_id": 3, "format": "incremental_stream"}
    h = direct.make(5004, params)
    with pytest.raises(HandlerError, match="exited with"):
        await h.exec()
    assert events[-1]["state"] == "failed" and "d" * 64 not in events[-1]["error"]
    assert os.listdir(area.download_dir / ("d" * 64)) == [".x.dat.part"]
    out = await h.rollback()
    assert isinstance(out, Outcome) and out.status == TSuccess.OK
    assert os.listdir(area.download_dir) == []
    # a missing snapshot fails before anything is made
    with pytest.raises(HandlerError, match="does not exist"):
        await direct.make(5004, {**params, "format": "stream", "snapshot": "2000-01-01T00:00:00",
                                 "from_snapshot": None}).exec()
    assert os.listdir(area.download_dir) == []


# ------------------------------------------------------------------------------------------------------------
# Hostile params


GOOD: dict[str, Any] = {"pool_fs": "tank/vz", "dataset_name": "101", "snapshot": S1, "secret_key": "a" * 100,
                        "file_name": "101__x.tar.gz", "download_id": 1}

BAD_5004: list[tuple[str, dict[str, Any]]] = [
    ("file_name", {"file_name": "../etc/passwd"}),
    ("file_name", {"file_name": "a/b"}),
    ("file_name", {"file_name": ".."}),
    ("file_name", {"file_name": "."}),
    ("file_name", {"file_name": ""}),
    ("file_name", {"file_name": "x\x00y"}),
    ("file_name", {"file_name": "x\ny"}),
    ("file_name", {"file_name": "é" * 121}),  # 242 bytes
    ("file_name", {"file_name": "\udc80"}),
    ("file_name", {"file_name": 5}),
    ("secret_key", {"secret_key": "../" + "a" * 97}),
    ("secret_key", {"secret_key": "A" * 100}),
    ("secret_key", {"secret_key": "a" * 31}),
    ("secret_key", {"secret_key": "a" * 129}),
    ("secret_key", {"secret_key": "a" * 99 + "\n"}),
    ("snapshot", {"snapshot": "../x"}),
    ("snapshot", {"snapshot": "-rf"}),
    ("snapshot", {"snapshot": "a b"}),
    ("dataset_name", {"dataset_name": "101/../../etc"}),
    ("pool_fs", {"pool_fs": "tank/vz;rm"}),
    ("branch", {"tree": "tree.0", "branch": "../x"}),
    ("branch", {"tree": "tree.0"}),
    ("tree", {"branch": "branch-a.0"}),
    ("format", {"format": "zip"}),
    ("from_snapshot", {"format": "incremental_stream"}),
    ("from_snapshot", {"format": "incremental_stream", "from_snapshot": "x@y"}),
    ("from_snapshot", {"format": "incremental_stream", "from_snapshot": S1}),
    ("from_snapshot", {"format": "stream", "from_snapshot": S1}),
    ("download_id", {"download_id": 0}),
    ("download_id", {"download_id": "1"}),
]


@pytest.mark.parametrize(("field", "change"), BAD_5004, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_5004)])
def test_hostile_download_params_name_the_field(field: str, change: dict[str, Any]) -> None:
    import_handler_modules()
    with pytest.raises(ParamError) as err:
        parse_params(HANDLERS[5004].Params, {**GOOD, **change})
    assert err.value.field == field, str(err.value)


@pytest.mark.parametrize(("field", "change"), [("file_name", {"file_name": "../x"}),
                                               ("secret_key", {"secret_key": "../../"}),
                                               ("download_id", {"download_id": -1})])
def test_hostile_remove_params_name_the_field(field: str, change: dict[str, Any]) -> None:
    import_handler_modules()
    good = {k: GOOD[k] for k in ("pool_fs", "secret_key", "file_name")}
    with pytest.raises(ParamError) as err:
        parse_params(HANDLERS[5005].Params, {**good, **change})
    assert err.value.field == field, str(err.value)


def test_good_params_parse() -> None:
    import_handler_modules()
    p = parse_params(HANDLERS[5004].Params, {**GOOD, "tree": "tree.0", "branch": "branch-a.0"})
    assert p.snapshot_name() == f"tank/vz/101/tree.0/branch-a.0@{S1}" and p.kind == "archive" and p.gzip()
    s = parse_params(HANDLERS[5004].Params, {**GOOD, "format": "stream", "file_name": "x.dat"})
    assert not s.gzip()


async def test_hostile_chains_fail_without_side_effects(db: Any, cfg: Config, pool: Pool) -> None:
    area = make_area(pool)
    first_snapshot(area)
    before, listing = pool.state(), area.listing()
    good = await new_download(db, area, "x.tar.gz")
    cases = [("file_name", {**good, "file_name": "../../../escape.tar.gz"}),
             ("secret_key", {**good, "secret_key": "../" + "a" * 40}),
             ("snapshot", {**good, "snapshot": "../../x"})]
    with record_calls() as calls:
        for field, params in cases:
            state, rows = await run_chain(db, cfg, chain((5004, params)))
            assert state["state"] == ChainState.FAILED
            assert output(rows[0])["field"] == field and output(rows[0])["error"].startswith("Bad param")
            if field == "snapshot":
                continue
            state, rows = await run_chain(db, cfg, chain((5005, {k: params[k] for k in (
                "pool_fs", "secret_key", "file_name")})))
            assert state["state"] == ChainState.FAILED and output(rows[0])["field"] == field
    assert [c for c in calls.calls if os.path.basename(c[0]) in ("zfs", "tar")] == []
    assert pool.state() == before and area.listing() == listing
    assert not (Path(area.download_dir).parent / "escape.tar.gz").exists()
