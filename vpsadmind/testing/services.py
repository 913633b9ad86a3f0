"""What tests need from the machine: the one rule for a missing service, and the zfs-fuse probe.

Under CI (``CI=true``) the machine must provide every service, so a missing one fails the test; elsewhere
(a laptop without zfs-fuse, say) it is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

__all__ = ["unavailable", "zfs_fuse_problem"]


def unavailable(reason: str) -> NoReturn:
    """Fail the current test when ``CI == "true"``, else skip it."""
    import pytest  # a test dependency only, hence imported here

    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def zfs_fuse_problem(timeout: float = 20.0) -> str | None:
    """Why the real zfs/zpool (not fake-zfs on PATH) cannot be used here, or None when the daemon answers."""
    for tool in ("zfs", "zpool"):
        found = shutil.which(tool)
        if found is None:
            return f"{tool} is not installed"
        if Path(found).resolve().name == "fake-zfs":
            return f"{found} is fake-zfs, not zfs-fuse"
    try:
        done = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"zpool list failed: {exc}"
    if done.returncode != 0:
        return f"zpool list exited with {done.returncode}: {done.stderr.strip()}"
    return None
