"""A v1.22 storage node on a throw-away zfs-fuse pool, and the v2.0 layout it must end in.

Inside one TempPool ``P`` two vpsAdmin pools (``pools`` rows of node 1):

* ``P/backup`` (backup role) holds flat v1.22 backup datasets made the way v1.22 made them, by ``zfs recv`` of
  streams sent from a source dataset (``P/src/<veid>``, destroyed afterwards):

  - ``101``: ``@backup-...`` snapshots and a ``@restore-<time>.1`` one;
  - ``102``: half renamed already (``@<time>`` and ``@backup-<time>``), as after a partial run of v1.22's script;
  - ``103``: an empty flat dataset (no backups);
  - ``104``: already in the v2.0 layout and registered in the database;

Neither is NFS-shared (see build_zfs).

* ``P/nas`` (primary role) holds NAS datasets with their data at the root:

  - ``1000``: hidden files, names with spaces, a newline, bytes that are not UTF-8 and regex characters, a user
    directory called ``private``, look-alikes of the child mountpoint (``wwwXdata``, ``www.data.old``), a
    symlink, a hard link, an empty directory, a file starting with ``-``, an unusual owner and mode of the
    root, a snapshot; child datasets ``1000/www.data`` and ``1000/www.data/deep``;
  - ``1001`` with a child dataset named ``private`` (a reserved name);
  - ``1002`` empty, ``1003`` already in the v2.0 layout (only ``private/``).

The database gets the matching ``servers``, ``pools``, ``datasets``, ``dataset_in_pools`` rows, a registered
tree for ``104``, and a NAS mount of a VPS on another node.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NODE_IP = "10.1.0.1"
HYPERVISOR_IP = "10.1.0.2"
NEW_PRIVATE = "private-data"

BACKUP_SNAPS: dict[str, list[str]] = {
    "101": ["backup-2015-07-01T01:00:03", "backup-2015-07-02T01:00:04", "restore-2015-07-01T01:00:03.1",
            "backup-2015-07-03T01:00:05"],
    "102": ["2015-07-01T02:00:00", "backup-2015-07-02T02:00:00"],
}
V2_BACKUP = ("104", "branch-2015-06-01T00:00:00.0", "2015-06-01T00:00:00")

ROOT_FILES: dict[bytes, bytes] = {
    b"a.txt": b"alpha\n",
    b".hidden": b"hidden at the root\n",
    b".hidden dir/inner": b"inside a hidden directory\n",
    b"name with spaces.txt": b"spaces\n",
    b"new\nline": b"a newline in the name\n",
    b"bytes-\xff\xfe.bin": bytes(range(256)),
    b"regex[a-z]*.+?(x)|y$": b"regex characters\n",
    b"private/keep.txt": b"the user's own private directory\n",
    b"private/private/deeper": b"nested private\n",
    b"wwwXdata/x": b"matches the unanchored regex www.data\n",
    b"www.data.old": b"starts like the child mountpoint\n",
    b"-dash-start": b"looks like an option\n",
    b"secret": b"mode 0600\n",
}


def sh(*argv: str, check: bool = True, input: bytes | None = None) -> str:
    done = subprocess.run(list(argv), capture_output=True, input=input, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.decode()}")
    return done.stdout.decode()


def destroy(name: str, attempts: int = 30) -> None:
    """``zfs destroy -r``; zfs-fuse refuses the first destroy of a mounted filesystem ("busy")."""
    for _ in range(attempts):
        done = subprocess.run(["zfs", "destroy", "-r", name], capture_output=True, timeout=60, check=False)
        if done.returncode == 0:
            return
        assert b"busy" in done.stderr, done.stderr.decode()
        time.sleep(0.1)
    raise AssertionError(f"zfs destroy -r {name}: still busy")


def zfs_set_shared(prop: str, name: str) -> None:
    """``zfs set sharenfs=...``: zfs-fuse stores it, then fails the export (no NFS server here)."""
    sh("zfs", "set", prop, name, check=False)
    key, value = prop.split("=", 1)
    assert sh("zfs", "get", "-H", "-o", "value", key, name).strip() == value


def send_recv(snapshot: str, target: str, base: str | None = None) -> None:
    send = subprocess.Popen(["zfs", "send", *(["-I", base] if base else []), snapshot], stdout=subprocess.PIPE)
    assert send.stdout is not None
    recv = subprocess.run(["zfs", "recv", "-F", target], stdin=send.stdout, capture_output=True, timeout=60,
                          check=False)
    send.stdout.close()
    assert send.wait(60) == 0 and recv.returncode == 0, recv.stderr.decode()


def mountpoint(name: str) -> bytes:
    return os.fsencode(sh("zfs", "get", "-H", "-o", "value", "mountpoint", name).strip())


def write(root: bytes, files: dict[bytes, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


@dataclass
class V1Node:
    pool: str                      # the zpool
    nas: str                       # pools.filesystem of the primary pool
    backup: str                    # pools.filesystem of the backup pool
    nas_datasets: list[str] = field(default_factory=list)

    def ds(self, rel: str) -> str:
        return f"{self.pool}/{rel}"


def _make_source(name: str, snaps: list[str], seed: int) -> None:
    sh("zfs", "create", "-p", name)
    root = mountpoint(name)
    rnd = random.Random(seed)
    for i, snap in enumerate(snaps):
        write(root, {b"etc/hostname": f"vps {name} gen {i}\n".encode(), f"data/{i}.bin".encode(): rnd.randbytes(
            4096 + i)})
        sh("zfs", "snapshot", f"{name}@{snap}")


def build_backups(node: V1Node) -> None:
    for seed, (veid, snaps) in enumerate(BACKUP_SNAPS.items()):
        src = node.ds(f"src/{veid}")
        _make_source(src, snaps, seed)
        target = f"{node.backup}/{veid}"
        send_recv(f"{src}@{snaps[0]}", target)
        send_recv(f"{src}@{snaps[-1]}", target, base=f"{src}@{snaps[0]}")
    sh("zfs", "create", f"{node.backup}/103")
    veid, branch, snap = V2_BACKUP
    src = node.ds(f"src/{veid}")
    _make_source(src, [snap], 99)
    sh("zfs", "create", "-p", f"{node.backup}/{veid}/tree.0")
    send_recv(f"{src}@{snap}", f"{node.backup}/{veid}/tree.0/{branch}")
    destroy(node.ds("src"))


def build_nas(node: V1Node) -> None:
    for rel in ("1000", "1000/www.data", "1000/www.data/deep", "1001", "1001/private", "1002", "1003"):
        sh("zfs", "create", "-p", f"{node.nas}/{rel}")
        node.nas_datasets.append(f"{node.nas}/{rel}")
    root = mountpoint(f"{node.nas}/1000")
    write(root, ROOT_FILES)
    os.mkdir(os.path.join(root, b"empty-dir"))
    os.symlink(b"a.txt", os.path.join(root, b"link"))
    os.link(os.path.join(root, b"a.txt"), os.path.join(root, b"a-hardlink"))
    os.chmod(os.path.join(root, b"secret"), 0o600)
    os.chown(root, 1234, 2345)
    os.chmod(root, 0o751)
    write(mountpoint(f"{node.nas}/1000/www.data"), {b".htaccess": b"deny\n", b"index.html": b"<p>hi</p>\n",
                                                    b"x y/z": b"z\n"})
    write(mountpoint(f"{node.nas}/1000/www.data/deep"), {b"f": b"deep\n"})
    write(mountpoint(f"{node.nas}/1001"), {b"data.txt": b"1001\n"})
    write(mountpoint(f"{node.nas}/1001/private"), {b"inside.txt": b"in the dataset named private\n"})
    write(mountpoint(f"{node.nas}/1003"), {b"private/migrated.txt": b"already v2\n"})
    sh("zfs", "snapshot", f"{node.nas}/1000@before-upgrade")


def build_zfs(pool: str) -> V1Node:
    node = V1Node(pool, f"{pool}/nas", f"{pool}/backup")
    sh("zfs", "create", node.nas)
    sh("zfs", "create", node.backup)
    build_backups(node)
    build_nas(node)
    # Not NFS-shared: zfs-fuse (without an NFS server here) fails every export, and after a failed export it
    # now and then keeps a dataset busy for renames for half a minute or more. The sharenfs step shares the
    # pools last, after every rename (tests/upgrade/test_cases.py covers adding nodes to a share).
    return node


# -- database --------------------------------------------------------------------------------------------------

_DATASETS = [  # id, full_name, pool id
    (101, "101", 2), (102, "102", 2), (103, "103", 2), (104, "104", 2),
    (1000, "1000", 1), (1001, "1000/www.data", 1), (1002, "1000/www.data/deep", 1), (1010, "1001", 1),
    (1011, "1001/private", 1), (1012, "1001/private/sub", None), (1020, "1002", 1), (1030, "1003", 1),
]


async def _execute(db: Any, sql: str, args: Iterable[Any] = ()) -> int:
    async with db.cursor() as cur:
        await cur.execute(sql, tuple(args))
        return int(cur.lastrowid)


async def build_db(db: Any, node: V1Node) -> None:
    for sid, name, kind, ip in ((1, "storage1", "storage", NODE_IP), (2, "node1", "node", HYPERVISOR_IP),
                                (3, "mailer", "mailer", "10.1.0.3")):
        await _execute(db, "INSERT INTO servers (server_id, server_name, server_type, server_location, server_ip4, "
                           "environment_id) VALUES (%s, %s, %s, 1, %s, 1)", (sid, name, kind, ip))
    await _execute(db, "INSERT INTO pools (id, node_id, label, filesystem, role) VALUES (1, 1, 'nas', %s, 1), "
                       "(2, 1, 'backup', %s, 2)", (node.nas, node.backup))
    for ds_id, full, pool_id in _DATASETS:
        await _execute(db, "INSERT INTO datasets (id, name, full_name, user_editable, user_create, user_destroy, "
                           "confirmed, object_state) VALUES (%s, %s, %s, 1, 1, 0, 1, 0)",
                       (ds_id, full.rsplit("/", 1)[-1], full))
        if pool_id is not None:
            await _execute(db, "INSERT INTO dataset_in_pools (id, dataset_id, pool_id, confirmed) "
                               "VALUES (%s, %s, %s, 1)", (ds_id, ds_id, pool_id))
    veid, branch, snap = V2_BACKUP
    tree = await _execute(db, "INSERT INTO dataset_trees (dataset_in_pool_id, `index`, head, confirmed) "
                              "VALUES (%s, 0, 1, 1)", (int(veid),))
    await _execute(db, "INSERT INTO branches (dataset_tree_id, name, `index`, head, confirmed) "
                       "VALUES (%s, %s, 0, 1, 1)", (tree, snap))
    await _execute(db, "INSERT INTO vps (vps_id, m_id, vps_server, vps_config, object_state) "
                       "VALUES (101, 1, 2, '', 0)")
    await _execute(db, "INSERT INTO mounts (vps_id, dst, mount_opts, umount_opts, mount_type, dataset_in_pool_id, "
                       "mode, object_state) VALUES (101, '/mnt/nas', '', '', 'nfs', 1000, 'rw', 0)")


async def fetch(db: Any, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
    import aiomysql

    async with db.cursor(aiomysql.DictCursor) as cur:
        await cur.execute(sql, tuple(args))
        return [dict(r) for r in await cur.fetchall()]


# -- what must not change -------------------------------------------------------------------------------------

Entry = tuple[Any, ...]


def digest_tree(root: bytes, skip: Iterable[bytes] = ()) -> dict[bytes, Entry]:
    """Every entry below ``root`` (``b""`` is the root itself): files by sha256, directories and symlinks by
    what they are, all with mode and owner. Paths in ``skip`` (child mountpoints) are not entered."""
    skipped = {os.path.normpath(s) for s in skip}
    out: dict[bytes, Entry] = {}

    def visit(path: bytes, rel: bytes) -> None:
        st = os.lstat(path)
        owner = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                out[rel] = ("f", hashlib.sha256(fh.read()).hexdigest(), *owner)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", *owner)
            for name in os.listdir(path):
                child = os.path.join(path, name)
                if os.path.normpath(child) not in skipped and name != b".zfs":
                    visit(child, os.path.join(rel, name) if rel else name)

    visit(root, b"")
    return out


def snapshot_guids(dataset: str) -> list[tuple[str, str]]:
    """``[(snapshot name, guid)]`` of ``dataset``, oldest first."""
    out = sh("zfs", "get", "-H", "-p", "-o", "name,property,value", "-r", "-d", "1", "guid,createtxg", dataset)
    rows: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, prop, value = line.split("\t")
        if name.startswith(dataset + "@"):
            rows.setdefault(name.split("@", 1)[1], {})[prop] = value
    return [(n, v["guid"]) for n, v in sorted(rows.items(), key=lambda kv: int(kv[1]["createtxg"]))]


def snapshot_creation(dataset: str, snap: str) -> int:
    return int(sh("zfs", "get", "-H", "-p", "-o", "value", "creation", f"{dataset}@{snap}").strip())


def all_names(top: str) -> list[str]:
    return sorted(sh("zfs", "list", "-H", "-t", "all", "-o", "name", "-r", top).split())


def local_markers(top: str) -> list[str]:
    out = sh("zfs", "get", "-H", "-o", "name,property,value,source", "-r", "vpsadmin:upgrade-nas", top)
    return [line for line in out.splitlines() if line.endswith("\tlocal")]


def unmounted(top: str) -> list[str]:
    out = sh("zfs", "get", "-H", "-o", "name,value", "-r", "mounted", top)
    return [line.split("\t")[0] for line in out.splitlines() if "@" not in line and line.endswith("\tno")]


def child_mountpoints(dataset: str) -> list[bytes]:
    out = sh("zfs", "get", "-H", "-o", "name,value", "-r", "mountpoint", dataset)
    return [os.fsencode(line.split("\t")[1]) for line in out.splitlines()
            if line.split("\t")[0] != dataset and "@" not in line]


@dataclass
class Before:
    """What the v1.22 node held: NAS trees per dataset, backup snapshots (name, guid) and head contents."""

    nas: dict[str, dict[bytes, Entry]]
    snaps: dict[str, list[tuple[str, str]]]
    heads: dict[str, dict[bytes, Entry]]
    creation: dict[str, int]
    nas_snaps: list[tuple[str, str]]


def record(node: V1Node) -> Before:
    nas = {ds: digest_tree(mountpoint(ds), child_mountpoints(ds)) for ds in node.nas_datasets}
    snaps, heads, creation = {}, {}, {}
    for veid in BACKUP_SNAPS:
        ds = f"{node.backup}/{veid}"
        snaps[veid] = snapshot_guids(ds)
        heads[veid] = digest_tree(mountpoint(ds))
        for name, _ in snaps[veid]:
            if name.startswith("restore-"):
                creation[veid] = snapshot_creation(ds, name)
    return Before(nas, snaps, heads, creation, snapshot_guids(f"{node.nas}/1000"))


def renamed(ds: str) -> str:
    """Where a NAS dataset is after the reserved-names step (``--rename-private private-data``)."""
    return ds.replace("/1001/private", f"/1001/{NEW_PRIVATE}")


def v2_snapshot_name(name: str, creation: int) -> str:
    if name.startswith("backup-"):
        return name[len("backup-"):]
    if name.startswith("restore-"):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(creation))
    return name


def expected_backup(before: Before, veid: str) -> list[tuple[str, str]]:
    """The (v2.0 name, guid) list a migrated backup must have: the same snapshots, renamed by the policy."""
    return [(v2_snapshot_name(n, before.creation.get(veid, 0)), g) for n, g in before.snaps[veid]]


def expected_names(node: V1Node, before: Before) -> list[str]:
    names = [node.backup, node.nas]
    for pool_fs in (node.backup, node.nas):
        names += [f"{pool_fs}/vpsadmin", f"{pool_fs}/vpsadmin/mount", f"{pool_fs}/vpsadmin/download"]
    for veid in BACKUP_SNAPS:
        snaps = expected_backup(before, veid)
        branch = f"{node.backup}/{veid}/tree.0/branch-{snaps[0][0]}.0"
        names += [f"{node.backup}/{veid}", f"{node.backup}/{veid}/tree.0", branch]
        names += [f"{branch}@{n}" for n, _ in snaps]
    veid, branch, snap = V2_BACKUP
    names += [f"{node.backup}/103", f"{node.backup}/{veid}", f"{node.backup}/{veid}/tree.0",
              f"{node.backup}/{veid}/tree.0/{branch}", f"{node.backup}/{veid}/tree.0/{branch}@{snap}"]
    names += [renamed(ds) for ds in node.nas_datasets] + [f"{node.nas}/1000@before-upgrade"]
    return sorted(names)


def assert_v2_layout(node: V1Node, before: Before) -> None:
    """Exactly the v2.0 layout, every byte and snapshot of the v1.22 node kept."""
    assert sorted(all_names(node.backup) + all_names(node.nas)) == expected_names(node, before)
    assert snapshot_guids(f"{node.nas}/1000") == before.nas_snaps
    for veid in BACKUP_SNAPS:
        snaps = expected_backup(before, veid)
        branch = f"{node.backup}/{veid}/tree.0/branch-{snaps[0][0]}.0"
        assert snapshot_guids(branch) == snaps
        assert digest_tree(mountpoint(branch)) == before.heads[veid]
    for ds, old in before.nas.items():
        now = renamed(ds)
        after = digest_tree(mountpoint(now), child_mountpoints(now))
        if ds.endswith("/1003"):
            assert after == old
            continue
        moved = {b"": old[b""], b"private": old[b""]}
        moved.update({b"private/" + rel: entry for rel, entry in old.items() if rel})
        assert after == moved, sorted(set(after.items()) ^ set(moved.items()))
    private = os.path.join(mountpoint(f"{node.nas}/1000"), b"private")
    assert os.lstat(os.path.join(private, b"a.txt")).st_ino == os.lstat(os.path.join(private, b"a-hardlink")).st_ino
    assert local_markers(node.pool) == []
    assert unmounted(node.pool) == []
