"""Backends for the zfs conformance suite: the real zfs-fuse and fake-zfs, driven through the same CLI.

Machine rules for zfs-fuse (one daemon serves everybody): only pools with unique names on sparse files in a temp
dir, always destroyed at teardown; never ``zfs mount -a``/``unmount -a``; never touch other pools.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vpsadmind.testing.fakezfs.install import fake_zfs_script
from vpsadmind.testing.services import unavailable, zfs_fuse_problem

BUSY = "dataset is busy"
TIMEOUT = 60


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


@dataclass
class Pool:
    name: str
    mnt: Path
    vdev: Path


@dataclass
class Backend:
    """Runs ``zfs``/``zpool`` of one implementation; ``fake`` runs fake-zfs through symlinks in ``bindir``."""

    kind: str                       # "zfs-fuse" | "fake"
    tmp: Path
    env: dict[str, str]
    pools: list[Pool] = field(default_factory=list)

    @property
    def fake(self) -> bool:
        return self.kind == "fake"

    @property
    def root(self) -> Path:
        return Path(self.env["FAKE_ZFS_ROOT"])

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None) -> Result:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, env=self.env, timeout=TIMEOUT,
                              check=False)
        return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def zfs(self, *args: str, stdin: bytes | None = None) -> Result:
        return self.run(["zfs", *args], stdin=stdin)

    def zpool(self, *args: str) -> Result:
        return self.run(["zpool", *args])

    def ok(self, *args: str) -> Result:
        """A zfs command that must succeed (destroy retried while zfs-fuse reports the dataset busy)."""
        result = self.zfs_retry(*args) if args[0] == "destroy" else self.zfs(*args)
        assert result.rc == 0, f"zfs {' '.join(args)} -> rc {result.rc}: {result.err}"
        return result

    def zfs_retry(self, *args: str, attempts: int = 30) -> Result:
        """zfs-fuse refuses the first destroy of a just-used filesystem with EBUSY: retry as the driver does."""
        for _ in range(attempts):
            result = self.zfs(*args)
            if BUSY not in result.err:
                return result
            time.sleep(0.1)
        return result

    def get(self, name: str, prop: str) -> str:
        return self.ok("get", "-H", "-p", "-o", "value", prop, name).out.strip()

    def send_recv(self, send: Sequence[str], recv: Sequence[str]) -> tuple[Result, Result]:
        """``zfs send ... | zfs recv ...`` as two processes joined by a pipe."""
        sender = subprocess.Popen(["zfs", "send", *send], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=self.env)
        assert sender.stdout is not None
        receiver = subprocess.run(["zfs", "recv", *recv], stdin=sender.stdout, capture_output=True, env=self.env,
                                  timeout=TIMEOUT, check=False)
        sender.stdout.close()
        s_err = sender.stderr.read() if sender.stderr else b""
        s_rc = sender.wait(TIMEOUT)
        if sender.stderr:
            sender.stderr.close()
        return (Result(s_rc, "", s_err.decode(errors="replace")),
                Result(receiver.returncode, receiver.stdout.decode(errors="replace"),
                       receiver.stderr.decode(errors="replace")))

    def send_bytes(self, *send: str) -> bytes:
        proc = subprocess.run(["zfs", "send", *send], capture_output=True, env=self.env, timeout=TIMEOUT,
                              check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    def new_pool(self, label: str = "") -> Pool:
        name = f"fz{label}{secrets.token_hex(4)}"
        vdev = self.tmp / f"{name}.img"
        with open(vdev, "wb") as f:
            f.truncate(256 << 20)
        mnt = self.tmp / f"mnt-{name}"
        result = self.zpool("create", "-m", str(mnt), name, str(vdev))
        assert result.rc == 0, result.err
        pool = Pool(name, mnt, vdev)
        self.pools.append(pool)
        return pool

    def cleanup(self) -> None:
        for pool in self.pools:
            for _ in range(20):
                result = self.zpool("destroy", pool.name)
                if result.rc == 0 or "no such pool" in result.err:
                    break
                time.sleep(0.2)
            pool.vdev.unlink(missing_ok=True)


def make_backend(kind: str, tmp: Path) -> Backend:
    env = dict(os.environ)
    env.pop("FAKE_ZFS_ROOT", None)
    if kind == "zfs-fuse":
        problem = zfs_fuse_problem()
        if problem:
            unavailable(f"zfs-fuse unavailable: {problem}")
        return Backend(kind, tmp, env)
    bindir = tmp / "bin"
    bindir.mkdir()
    script = fake_zfs_script(bindir)
    for name in ("zfs", "zpool"):
        (bindir / name).symlink_to(script)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["FAKE_ZFS_ROOT"] = str(tmp / "fakeroot")
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    return Backend(kind, tmp, env)


@pytest.fixture(params=["zfs-fuse", "fake"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    be = make_backend(request.param, tmp_path)
    try:
        yield be
    finally:
        be.cleanup()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Backend]:
    be = make_backend("fake", tmp_path)
    try:
        yield be
    finally:
        be.cleanup()


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[Backend, Backend]]:
    """The two backends side by side, for comparing complete outputs."""
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    real = make_backend("zfs-fuse", tmp_path / "real")
    fk = make_backend("fake", tmp_path / "fake")
    try:
        yield real, fk
    finally:
        real.cleanup()
        fk.cleanup()


@pytest.fixture
def pool(backend: Backend) -> Pool:
    return backend.new_pool()
