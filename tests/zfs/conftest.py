"""ZFS fixtures: a fresh file-backed pool per test on the machine's zfs-fuse (or OpenZFS).

* ``zfs_pool`` (function): a :class:`vpsadmind.testing.zfspool.TempPool` already created: ``.name``,
  ``.mountpoint``, ``.zfs`` (a probed :class:`vpsadmind.zfs.Zfs`); destroyed after the test. Pools are 256 MiB
  sparse files with unique ``vt<hex>`` names; nothing else on the machine is touched.
* When zfs is not usable the test is skipped, or fails when ``CI=true``.

Other test packages can reuse it with ``from tests.zfs.conftest import zfs_pool  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from vpsadmind.testing.services import unavailable
from vpsadmind.testing.zfspool import TempPool, zfs_unavailable

_unavailable: list[str | None] = []


async def require_zfs() -> None:
    """Skip (or fail under CI) unless test pools can be created here; checked once per session."""
    if not _unavailable:
        _unavailable.append(await zfs_unavailable())
    reason = _unavailable[0]
    if reason is None:
        return
    unavailable(f"zfs not available: {reason}")


@pytest_asyncio.fixture
async def zfs_pool() -> AsyncIterator[TempPool]:
    await require_zfs()
    pool = TempPool()
    await pool.create()
    try:
        yield pool
    finally:
        await pool.destroy()
