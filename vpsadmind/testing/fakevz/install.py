"""Find (or make) the ``fake-vzctl``/``fake-vzlist`` executables, and a bin directory where they are called
``vzctl``/``vzlist``, for tests and the demo that put them on a daemon's path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["fake_vzctl_script", "fake_vzlist_script", "bin_dir"]

_MAINS = {"fake-vzctl": "main_vzctl", "fake-vzlist": "main_vzlist"}


def _script(name: str, bindir: Path) -> Path:
    installed = Path(sys.executable).parent / name
    if installed.exists():
        return installed
    found = shutil.which(name)
    if found:
        return Path(found)
    bindir.mkdir(parents=True, exist_ok=True)
    wrapper = bindir / name
    wrapper.write_text(f"#!{sys.executable}\nimport sys\nfrom vpsadmind.testing.fakevz.cli import {_MAINS[name]}\n"
                       f"sys.exit({_MAINS[name]}())\n")
    wrapper.chmod(0o755)
    return wrapper


def fake_vzctl_script(bindir: Path) -> Path:
    """The installed ``fake-vzctl`` console script, or a wrapper in ``bindir`` running it with this Python."""
    return _script("fake-vzctl", bindir)


def fake_vzlist_script(bindir: Path) -> Path:
    return _script("fake-vzlist", bindir)


def bin_dir(bindir: Path) -> Path:
    """``bindir`` with symlinks ``vzctl`` and ``vzlist`` to the fake scripts (put it first on PATH)."""
    bindir.mkdir(parents=True, exist_ok=True)
    for name, target in (("vzctl", fake_vzctl_script(bindir)), ("vzlist", fake_vzlist_script(bindir))):
        link = bindir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return bindir
