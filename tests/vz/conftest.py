"""Fixtures for the vz driver and the fake vzctl/vzlist (real subprocesses, state in a temporary tree).

* ``vzroot``: an initialised ``$FAKE_VZ_ROOT`` (set in the environment) with the minimal template
  :data:`TEMPLATE` in its cache; any bind mount left below it is undone afterwards;
* ``vz``: a :class:`vpsadmind.vz.Vz` on the fake scripts, conf dir ``<root>/etc/vz/conf``, retry pause 0.5 s
  recorded by ``pauses`` instead of slept;
* ``fakevz``: runs ``fake-vzctl``/``fake-vzlist`` directly (``fakevz.vzctl("start", "101")``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vpsadmind.testing.fakevz.install import fake_vzctl_script, fake_vzlist_script
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, MOUNT_ENV, ROOT_ENV, Layout
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.vz import RetryPolicy, Vz

TEMPLATE = "debian-8.0-x86_64-minimal"


class Pauses:
    """Records the retry pauses the driver asks for (and does not sleep)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@dataclass
class FakeVz:
    root: Path
    vzctl_bin: Path
    vzlist_bin: Path

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc" / "vz" / "conf"

    def conf(self, veid: int) -> str:
        return (self.conf_dir / f"{veid}.conf").read_text()

    def run(self, binary: Path, *args: str, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, input=input,
                              env={**os.environ, **(env or {})}, timeout=60)

    def vzctl(self, *args: str, input: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(self.vzctl_bin, *args, input=input, env=env)

    def vzlist(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.vzlist_bin, *args)

    def ok(self, *args: str) -> str:
        done = self.vzctl(*args)
        assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
        return done.stdout


def _unmount_below(root: Path) -> None:
    """Undo bind mounts a failed test left below ``root`` (deepest first)."""
    from vpsadmind.testing.fakevz.mounts import mountpoints

    base = str(root.resolve())
    for mp in sorted((m for m in mountpoints() if m.startswith(base + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, check=False)


@pytest.fixture
def vzroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "fakevz"
    monkeypatch.setenv(ROOT_ENV, str(root))
    monkeypatch.delenv(MOUNT_ENV, raising=False)
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    make_template(root, TEMPLATE)
    try:
        yield root
    finally:
        with contextlib.suppress(OSError):
            _unmount_below(tmp_path)


@pytest.fixture
def fakevz(vzroot: Path, tmp_path: Path) -> FakeVz:
    bindir = tmp_path / "bin"
    return FakeVz(vzroot, fake_vzctl_script(bindir), fake_vzlist_script(bindir))


@pytest.fixture
def pauses() -> Pauses:
    return Pauses()


@pytest.fixture
def vz(fakevz: FakeVz, pauses: Pauses) -> Vz:
    return Vz(vzctl=str(fakevz.vzctl_bin), vzlist=str(fakevz.vzlist_bin), conf_dir=fakevz.conf_dir,
              retry=RetryPolicy(attempts=3, pause=0.5), sleep=pauses, timeout=60)


async def create_ct(vz: Vz, veid: int = 101, *, hostname: str = "ct101") -> None:
    """v2.0's 3001: create from the template, then apply the ``basic`` sample."""
    await vz.create(veid, ostemplate=TEMPLATE, hostname=hostname)
    await vz.applyconfig(veid, "basic", setmode=None)
