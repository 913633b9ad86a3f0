"""Find (or make) the ``fake-zfs`` executable, for tests and the demo that put it on a daemon's path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["fake_zfs_script"]


def fake_zfs_script(bindir: Path) -> Path:
    """The installed ``fake-zfs`` console script, or a wrapper in ``bindir`` that runs it with this interpreter."""
    installed = Path(sys.executable).parent / "fake-zfs"
    if installed.exists():
        return installed
    found = shutil.which("fake-zfs")
    if found:
        return Path(found)
    wrapper = bindir / "fake-zfs"
    wrapper.write_text(f"#!{sys.executable}\nimport sys\nfrom vpsadmind.testing.fakezfs.cli import main\n"
                       "sys.exit(main())\n")
    wrapper.chmod(0o755)
    return wrapper
