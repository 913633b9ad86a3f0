"""Where the fake keeps things, and one container's view of them.

Under ``$FAKE_VZ_ROOT`` (created with defaults on first use)::

    etc/vz/vz.conf                  global config: VE_ROOT, VE_PRIVATE, TEMPLATE, LOCKDIR, CONFIGFILE, ...
    etc/vz/conf/<veid>.conf         container configs, ve-<name>.conf-sample, <veid>.mount/.umount/... scripts
    vz/private/<veid>/              default private areas (VE_PRIVATE="<root>/vz/private/$VEID")
    vz/root/<veid>/                 default root mount points (VE_ROOT)
    vz/template/cache/<name>/       OS templates: a directory, or <name>.tar[.gz|.xz|.bz2]
    vz/lock/<veid>.lck              per-container lock (flock), as vzctl's LOCKDIR
    var/lib/fake-vz/<veid>.json     what the kernel would know: running or not, process count, memory used
    faults.json                     injected faults (faults.py)

Paths stored in conf files are real absolute host paths (the defaults point inside the root), so a daemon
configured with ``vz.vz_conf = <root>/etc/vz`` and ``vz.vz_root = <root>/vz`` sees the same files. As a safety
net the fake refuses to create, mount or delete a private area or root outside ``$FAKE_VZ_ROOT`` and the
colon-separated prefixes in ``$FAKE_VZ_ALLOW`` (exit 3).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vpsadmind.testing.fakevz import conffile
from vpsadmind.testing.fakevz.errors import LOCKED, NOCONFIG, SYSTEM_ERROR, VzFail

__all__ = ["ROOT_ENV", "ALLOW_ENV", "MOUNT_ENV", "Layout", "Ct", "BASIC_SAMPLE", "expand_veid"]

ROOT_ENV = "FAKE_VZ_ROOT"
ALLOW_ENV = "FAKE_VZ_ALLOW"
MOUNT_ENV = "FAKE_VZ_MOUNT"

#: ``ve-basic.conf-sample`` written at init: a VSwap sample like vzctl's ``ve-vswap-256m.conf-sample``.
BASIC_SAMPLE = """\
# Sample container configuration (fake-vzctl), like vzctl's vswap samples.
# RAM
PHYSPAGES="0:256M"
# Swap
SWAPPAGES="0:512M"
# Disk quota parameters (in form of softlimit:hardlimit)
DISKSPACE="2G:2.2G"
DISKINODES="131072:144179"
QUOTATIME="0"
# CPU fair scheduler parameter
CPUUNITS="1000"
NETFILTER="stateless"
"""


def expand_veid(value: str, veid: int) -> str:
    return value.replace("${VEID}", str(veid)).replace("$VEID", str(veid))


def _global_conf(root: Path) -> str:
    return (
        "## Global parameters (fake-vzctl)\n"
        "VIRTUOZZO=yes\n"
        f'LOCKDIR="{root}/vz/lock"\n'
        f'DUMPDIR="{root}/vz/dump"\n'
        "VE0CPUUNITS=1000\n"
        "LOGGING=no\n"
        "DISK_QUOTA=no\n"
        f'VE_ROOT="{root}/vz/root/$VEID"\n'
        f'VE_PRIVATE="{root}/vz/private/$VEID"\n'
        f'TEMPLATE="{root}/vz/template"\n'
        'CONFIGFILE="basic"\n'
        'DEF_OSTEMPLATE="debian-8.0-x86_64-minimal"\n'
        'VE_LAYOUT="simfs"\n'
    )


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.etc = root / "etc" / "vz"
        self.conf_dir = self.etc / "conf"
        self.global_conf = self.etc / "vz.conf"
        self.run_dir = root / "var" / "lib" / "fake-vz"
        self.faults = root / "faults.json"

    @classmethod
    def from_env(cls) -> Layout:
        value = os.environ.get(ROOT_ENV, "")
        if not value:
            raise VzFail(SYSTEM_ERROR, f"fake-vzctl: {ROOT_ENV} is not set")
        if not os.path.isabs(value) or any(c in value for c in '"\n\\$`'):
            raise VzFail(SYSTEM_ERROR, f"fake-vzctl: {ROOT_ENV} must be an absolute path without quotes")
        layout = cls(Path(value))
        layout.ensure()
        return layout

    def ensure(self) -> None:
        """Create the default tree on first use; a tree whose vz.conf was removed fails like vzctl (exit 10)."""
        if self.etc.is_dir():
            if not self.global_conf.is_file():
                raise VzFail(NOCONFIG, f"Global configuration file {self.global_conf} not found")
            return
        for sub in ("etc/vz/conf", "vz/private", "vz/root", "vz/template/cache", "vz/lock", "vz/dump",
                    "var/lib/fake-vz"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "ve-basic.conf-sample").write_text(BASIC_SAMPLE)
        tmp = self.global_conf.with_name("vz.conf.tmp")
        tmp.write_text(_global_conf(self.root))
        os.replace(tmp, self.global_conf)

    def globals(self) -> dict[str, str]:
        return conffile.read(self.global_conf)

    def template_dir(self) -> Path:
        return Path(self.globals().get("TEMPLATE") or self.root / "vz" / "template")

    def lock_dir(self) -> Path:
        return Path(self.globals().get("LOCKDIR") or self.root / "vz" / "lock")

    def mount_mode(self) -> str:
        mode = os.environ.get(MOUNT_ENV, "link")
        if mode not in ("link", "bind"):
            raise VzFail(SYSTEM_ERROR, f"fake-vzctl: {MOUNT_ENV} must be link or bind, not {mode!r}")
        return mode

    def ct(self, veid: int) -> Ct:
        return Ct(self, veid)

    def veids(self) -> list[int]:
        """Containers that have a conf file."""
        found = []
        for path in self.conf_dir.glob("*.conf"):
            if path.stem.isdigit() and int(path.stem) > 0:
                found.append(int(path.stem))
        return sorted(found)

    def allowed(self) -> list[Path]:
        extra = [Path(p) for p in os.environ.get(ALLOW_ENV, "").split(":") if p]
        return [self.root.resolve(), *(p.resolve() for p in extra)]

    def check_path(self, path: Path, what: str) -> Path:
        """``path`` if it lies inside the root or an allowed prefix, else exit 3 (a guard for the host)."""
        resolved = path.resolve()
        for prefix in self.allowed():
            if resolved == prefix or prefix in resolved.parents:
                return path
        raise VzFail(SYSTEM_ERROR, f"fake-vzctl: refusing to touch {what} {path} outside ${ROOT_ENV} "
                                   f"(add its prefix to ${ALLOW_ENV} to allow it)")

    @contextlib.contextmanager
    def lock(self, veid: int) -> Iterator[None]:
        """vzctl's per-container lock: a second vzctl on the same container fails with exit 9."""
        directory = self.lock_dir()
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / f"{veid}.lck", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise VzFail(LOCKED, "Container already locked") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            try:
                yield
            finally:
                os.ftruncate(fd, 0)     # vzctl removes its lock file; an empty one reads as free
        finally:
            os.close(fd)


class Ct:
    """One container: its conf, paths and runtime state (read fresh on every access: other fake processes and
    action scripts change them)."""

    def __init__(self, layout: Layout, veid: int) -> None:
        self.layout = layout
        self.veid = veid
        self.conf_path = layout.conf_dir / f"{veid}.conf"
        self.state_path = layout.run_dir / f"{veid}.json"

    def conf(self) -> dict[str, str]:
        return conffile.read(self.conf_path)

    def _path(self, key: str) -> Path | None:
        value = self.conf().get(key) or self.layout.globals().get(key)
        return Path(expand_veid(value, self.veid)) if value else None

    @property
    def private(self) -> Path | None:
        return self._path("VE_PRIVATE")

    @property
    def root(self) -> Path | None:
        return self._path("VE_ROOT")

    def exists(self) -> bool:
        private = self.private
        return self.conf_path.is_file() and private is not None and private.is_dir()

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update_state(self, **values: Any) -> None:
        data = {**self.state(), **values}
        self.layout.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.state_path)

    @property
    def running(self) -> bool:
        return bool(self.state().get("running"))
