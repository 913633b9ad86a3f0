"""The node a fuzzed handler runs on, and the fingerprint of everything a given input may not touch.

One :class:`Sandbox` per test: a fake-zfs pool ``tank`` (``tank/vz/101`` with a snapshot and a private area,
``tank/vz/102`` beside it, ``tank/backup/101``), fake-vzctl containers 101 (the target VPS of every transaction)
and 102, whose private area holds a symlink to a host directory outside everything (``canary/host``), the
mounts dir, the ssh and host-key paths of the node handlers, and a canary tree no handler has a reason to touch.

:meth:`Sandbox.fingerprint` hashes every file below the sandbox root and every dataset of the fake pool, except
what a :class:`Scope` says the input may change: the datasets its params name (with their descendants,
snapshots and mountpoints) and the paths of the VPSes and files they name. Comparing it before and after an input
is the "nothing outside the intended dataset or VPS root changes" check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from vpsadmind.config import Config, NodeConfig, VzConfig
from vpsadmind.testing.fakevz.install import fake_vzctl_script, fake_vzlist_script
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, MOUNT_ENV, ROOT_ENV
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.testing.fakezfs.install import fake_zfs_script

POOL = "tank"
POOL_FS = "tank/vz"
BACKUP_FS = "tank/backup"
VEID, OTHER_VEID = 101, 102
DOOMED_VEID = 105  # the one 3002 (Destroy) runs for
TEMPLATE = "debian-8.0-x86_64-minimal"
SNAPSHOT = "2020-01-01T00:00:00"
# Fake-zfs bookkeeping that changes on every command (or read) and says nothing about the datasets.
_POOL_VOLATILE = frozenset({"txg", "next_id"})
# Directories whose contents are bookkeeping, not state: locks, staging, the fakes' own run files.
_SKIP_NAMES = frozenset({"lock", "faults.lock", "__pycache__"})


@dataclasses.dataclass
class Scope:
    """What one input may change: datasets (with descendants, snapshots and mountpoints), paths (relative to the
    sandbox root, each with everything below it) and whole VPSes (conf files, private area, root, run state)."""

    datasets: set[str] = dataclasses.field(default_factory=set)
    paths: set[str] = dataclasses.field(default_factory=set)
    vpses: set[int] = dataclasses.field(default_factory=set)

    def covers_dataset(self, name: str) -> bool:
        base = name.split("@", 1)[0]
        return any(base == d or base.startswith(d + "/") for d in self.datasets)

    def covers_path(self, rel: str) -> bool:
        return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in self.paths)


def _sh(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
                          check=False)
    assert done.returncode == 0, f"{argv}: {done.stdout} {done.stderr}"
    return done.stdout


@dataclasses.dataclass
class Sandbox:
    root: Path

    # ---------------------------------------------------------------------------------------------- layout
    @property
    def fz(self) -> Path:
        return self.root / "fz"

    @property
    def mnt(self) -> Path:
        return self.root / POOL

    @property
    def vzroot(self) -> Path:
        return self.root / "fakevz"

    @property
    def canary(self) -> Path:
        return self.root / "canary"

    @property
    def bindir(self) -> Path:
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        return {"FAKE_ZFS_ROOT": str(self.fz), "FAKE_ZFS_POOL_SIZE": "1G", ROOT_ENV: str(self.vzroot)}

    def zfs(self, *args: str) -> str:
        return _sh([str(self.bindir / "zfs"), *args], self.env)

    def vzctl(self, *args: str) -> str:
        return _sh([str(self.bindir / "fake-vzctl"), *args], self.env)

    def private(self, veid: int) -> Path:
        return self.vzroot / "vz" / "private" / str(veid)

    def build(self) -> None:
        """Create the pool, the datasets, the containers and the canary tree."""
        self.bindir.mkdir(parents=True)
        script = fake_zfs_script(self.bindir)
        for name in ("zfs", "zpool"):
            (self.bindir / name).symlink_to(script)
        for name, make in (("fake-vzctl", fake_vzctl_script), ("fake-vzlist", fake_vzlist_script)):
            found = make(self.bindir)
            if found != self.bindir / name:
                (self.bindir / name).symlink_to(found)
        _sh([str(self.bindir / "zpool"), "create", "-m", str(self.mnt), POOL, str(self.root / "tank.img")],
            self.env)
        for ds in (f"{POOL_FS}/{VEID}/private", f"{POOL_FS}/{VEID}/old", f"{POOL_FS}/{OTHER_VEID}",
                   f"{BACKUP_FS}/{VEID}/tree.0", f"{BACKUP_FS}/vpsadmin/download", f"{BACKUP_FS}/vpsadmin/mount",
                   f"{POOL_FS}/vpsadmin/mount"):
            self.zfs("create", "-p", ds)
        (self.mnt / "vz" / str(VEID) / "private" / "file").write_text("target data\n")
        (self.mnt / "vz" / str(OTHER_VEID) / "file").write_text("the neighbour's data\n")
        (self.mnt / "backup" / str(VEID) / "file").write_text("backup\n")
        for ds in (f"{POOL_FS}/{VEID}", f"{POOL_FS}/{OTHER_VEID}", f"{BACKUP_FS}/{VEID}"):
            self.zfs("snapshot", f"{ds}@{SNAPSHOT}")
        self._build_canary()
        self._build_containers()
        for sub in ("mounts", "ssh", "host-keys", "journal", "remote-node"):
            (self.root / sub).mkdir(exist_ok=True)
        for kind in ("rsa", "dsa"):
            (self.root / "host-keys" / f"ssh_host_{kind}_key.pub").write_text(f"ssh-{kind} AAAAfake{kind} root@node\n")
        (self.root / "ssh" / "known_hosts").write_text("old.example ssh-rsa AAAAold\n")

    def _build_canary(self) -> None:
        host = self.canary / "host"
        host.mkdir(parents=True)
        (host / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (host / "shadow").write_text("root:*:1::::::\n")
        (self.canary / "secret").write_text("nobody may change this\n")

    def _build_containers(self) -> None:
        make_template(self.vzroot, TEMPLATE)
        for veid in (VEID, OTHER_VEID, DOOMED_VEID):
            self.vzctl("create", str(veid), "--ostemplate", TEMPLATE, "--hostname", f"ct{veid}")
            self.vzctl("set", str(veid), "--applyconfig", "basic", "--save")
        # A hostile container: its user planted links to the host in its private area.
        for veid in (VEID, OTHER_VEID):
            private = self.private(veid)
            (private / "mnt").mkdir(exist_ok=True)
            (private / "mnt" / "escape").symlink_to(self.canary / "host")
            (private / "mnt" / "up").symlink_to("../../../../../../../../..")
            (private / "hostetc").symlink_to(self.canary / "host")

    def config(self, base: Config) -> Config:
        """``base`` (database, journal) with every path of the node inside the sandbox."""
        vz = VzConfig(vzctl=str(self.bindir / "fake-vzctl"), vzlist=str(self.bindir / "fake-vzlist"),
                      vz_root=str(self.vzroot / "vz"), vz_conf=str(self.vzroot / "etc" / "vz"),
                      ve_private=f"{self.vzroot}/vz/private/%{{veid}}")
        node = NodeConfig(pubkey_types=["rsa", "dsa"],
                          pubkey_path=str(self.root / "host-keys" / "ssh_host_%{type}_key.pub"),
                          known_hosts=str(self.root / "ssh" / "known_hosts"))
        bins = {**base.bin, "zfs": str(self.bindir / "zfs"), "zpool": str(self.bindir / "zpool"),
                # never the host's: a mutation that turns on registration must not reach its firewall
                "iptables": "/bin/false", "ip6tables": "/bin/false", "tc": "/bin/false", "nc": "/bin/false",
                "scp": "/bin/false", "mount": "/bin/false", "umount": "/bin/false"}
        return dataclasses.replace(base, vz=vz, node=node, bin=bins, mounts_dir=str(self.root / "mounts"),
                                   remote_socket=str(self.root / "ctl.sock"))

    # ----------------------------------------------------------------------------------------- fingerprint
    def vps_paths(self, veid: int) -> set[str]:
        """What belongs to VPS ``veid``: its conf files, private area, root and the fakes' run files."""
        conf = "fakevz/etc/vz/conf"
        return {f"{conf}/{veid}.conf", f"{conf}/{veid}.mount", f"{conf}/{veid}.umount",
                f"{conf}/{veid}.conf.destroyed", f"{conf}/{veid}.conf.backup",
                f"fakevz/vz/private/{veid}", f"fakevz/vz/root/{veid}", f"fakevz/var/lib/fake-vz/{veid}.json",
                f"fakevz/vz/lock/{veid}.lck", f"mounts/{veid}.mounts", f"mounts/{veid}.mounts.tmp",
                f"fakevz/vz/dump/Dump.{veid}"}

    def fingerprint(self, scope: Scope) -> dict[str, Any]:
        """Everything ``scope`` does not cover: files below the root (path -> kind and content) and datasets."""
        skip = set(scope.paths)
        for veid in scope.vpses:
            skip |= self.vps_paths(veid)
        mountpoints = {self._rel_mountpoint(ds) for ds in scope.datasets}
        files = {rel: what for rel, what in self._walk() if not Scope(paths=skip | mountpoints).covers_path(rel)}
        return {"files": files, "zfs": self._zfs_state(scope)}

    def _rel_mountpoint(self, dataset: str) -> str:
        rel = dataset[len(POOL):] if dataset == POOL or dataset.startswith(POOL + "/") else "/\x00none"
        return f"{POOL}{rel}"

    def _walk(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir.startswith("fz/pools/") and rel_dir.count("/") >= 2:
                dirnames[:] = []  # the fake's internal copies: the state file below says what they hold
                continue
            dirnames[:] = [d for d in dirnames if d not in _SKIP_NAMES]
            for name in (*dirnames, *filenames):
                if name in _SKIP_NAMES:
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
                yield rel, _describe(path)

    def _zfs_state(self, scope: Scope) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for state_file in sorted((self.fz / "pools").glob("*/state.json")):
            state = json.loads(state_file.read_text())
            # one entry per dataset, so that a difference names the dataset
            out.update({n: v for n, v in state.pop("datasets", {}).items() if not scope.covers_dataset(n)})
            out[f"pool {state_file.parent.name}"] = {k: v for k, v in state.items() if k not in _POOL_VOLATILE}
        return out

    def mounted_below(self) -> list[str]:
        prefix = str(self.root.resolve()) + "/"
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            points = [line.split()[1].encode().decode("unicode_escape") for line in fh]
        return sorted(p for p in points if p.startswith(prefix))


def _describe(path: str) -> tuple[Any, ...]:
    st = os.lstat(path)
    if os.path.islink(path):
        return ("link", os.readlink(path))
    if os.path.isdir(path):
        return ("dir", st.st_mode)
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read(1 << 20)).hexdigest()
        return ("file", st.st_mode, st.st_size, digest)
    return ("other", st.st_mode)


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when nothing changed)."""
    out: list[str] = []
    for key in ("files", "zfs"):
        a, b = before[key], after[key]
        for name in sorted(set(a) | set(b), key=str):
            if a.get(name) != b.get(name):
                out.append(f"{key} {name!r}: {str(a.get(name))[:300]} -> {str(b.get(name))[:300]}")
    return out


@contextlib.contextmanager
def environment(box: Sandbox) -> Iterator[None]:
    """The fakes' environment variables for this process (the drivers pass os.environ on)."""
    saved = {k: os.environ.get(k) for k in (*box.env, MOUNT_ENV, ALLOW_ENV)}
    os.environ.update(box.env)
    os.environ.pop(MOUNT_ENV, None)
    os.environ.pop(ALLOW_ENV, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def unique(values: Iterable[str]) -> list[str]:
    return sorted(set(values))
