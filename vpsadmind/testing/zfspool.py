"""Throw-away ZFS pools on sparse files, for tests, the demo and benchmarks.

One zfs-fuse daemon serves the whole machine and other people test on it at the same time, so a TempPool:

* has a unique name (``vt`` + 8 hex digits by default) and lives on a sparse file in its own temporary
  directory, mounted below that directory (``<tmpdir>/mnt``);
* is destroyed with ``zpool destroy <its name>`` only; nothing here ever runs ``zfs mount -a`` or
  ``zfs unmount -a`` or touches another pool.

Usage::

    async with TempPool() as pool:
        await pool.zfs.create(f"{pool.name}/a")

:func:`zfs_unavailable` says why no pool can be made (no ``zpool`` binary, daemon down), for skipping tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from types import TracebackType

from vpsadmind import system
from vpsadmind.system import CommandFailed, CommandTimeout
from vpsadmind.zfs.capabilities import Capabilities
from vpsadmind.zfs.driver import Zfs
from vpsadmind.zfs.errors import ZfsError

__all__ = ["TempPool", "zfs_unavailable", "unique_pool_name"]

_cached_caps: dict[str, Capabilities] = {}


def unique_pool_name(prefix: str = "vt") -> str:
    """``vt`` + 8 random hex digits: a pool name nobody else on the machine uses."""
    return prefix + secrets.token_hex(4)


async def zfs_unavailable(zpool: str = "zpool") -> str | None:
    """Why test pools cannot be created here, or ``None`` when they can."""
    if shutil.which(zpool) is None:
        return f"{zpool} is not installed"
    try:
        await system.run([zpool, "list", "-H", "-o", "name"], timeout=30)
    except CommandFailed as exc:
        return f"{zpool} list failed: {(exc.stderr or exc.stdout).strip()[:200]}"
    except OSError as exc:
        return f"cannot run {zpool}: {exc}"
    return None


class TempPool:
    """A pool ``name`` on a ``size`` sparse file under a fresh temporary directory.

    Attributes (after :meth:`create`): ``name``, ``mountpoint`` (where the pool's root filesystem is
    mounted), ``directory`` (the temporary directory), ``file`` (the vdev) and ``zfs`` (a probed Zfs).
    """

    def __init__(self, *, name: str | None = None, size: int = 256 * 1024 * 1024, base_dir: str | None = None,
                 zfs: Zfs | None = None, properties: dict[str, str] | None = None) -> None:
        self.name = name or unique_pool_name()
        self.size = size
        self.base_dir = base_dir
        self.zfs = zfs or Zfs(timeout=30.0)  # a wedged daemon fails a test instead of hanging it
        self.properties = dict(properties or {})
        self.directory = ""
        self.file = ""
        self.mountpoint = ""
        self.created = False

    async def create(self) -> TempPool:
        """Make the file, ``zpool create -m <dir>/mnt <name> <file>``, and probe the driver (cached)."""
        if self.name in await self.zfs.pools():
            raise ZfsError(f"pool {self.name} already exists: a TempPool never touches a pool it did not make")
        self.directory = tempfile.mkdtemp(prefix=f"{self.name}.", dir=self.base_dir)
        self.file = os.path.join(self.directory, "vdev")
        self.mountpoint = os.path.join(self.directory, "mnt")
        with open(self.file, "wb") as fh:
            fh.truncate(self.size)
        opts = [arg for k, v in self.properties.items() for arg in ("-O", f"{k}={v}")]
        try:
            await system.run([self.zfs.zpool_bin, "create", "-m", self.mountpoint, *opts, self.name, self.file],
                             timeout=60)
        except BaseException as exc:
            if not isinstance(exc, CommandFailed) or isinstance(exc, CommandTimeout):
                # A killed client does not stop zfs-fuse's daemon: no half-made pool may stay behind (the
                # name was checked to be free above, so this pool can only be ours).
                with contextlib.suppress(Exception):
                    await system.run([self.zfs.zpool_bin, "destroy", "-f", self.name], timeout=60)
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.created = True
        caps = _cached_caps.get(self.zfs.zfs_bin)
        if caps is None:
            caps = _cached_caps[self.zfs.zfs_bin] = await self.zfs.probe()
        self.zfs.caps = caps
        return self

    async def destroy(self) -> None:
        """``zpool destroy`` (``-f`` if a plain destroy fails), then remove the directory. Idempotent."""
        if self.created:
            try:
                await system.run([self.zfs.zpool_bin, "destroy", self.name], timeout=60)
            except CommandFailed:
                await self._force_destroy()
            self.created = False
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""

    async def _force_destroy(self, attempts: int = 5) -> None:
        """``zpool destroy -f``; zfs-fuse may call a pool busy for a moment after its last receive or
        unmount, so "busy" is retried. Raises if it never works: the directory then stays for a look."""
        for attempt in range(attempts):
            try:
                await system.run([self.zfs.zpool_bin, "destroy", "-f", self.name], timeout=60)
                return
            except CommandFailed as exc:
                if "busy" not in exc.stderr or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))

    def path(self, *parts: str) -> str:
        """``<pool>/<parts...>``."""
        return "/".join([self.name, *parts])

    async def __aenter__(self) -> TempPool:
        return await self.create()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.destroy()
