"""OS templates for the fake: a minimal container tree in ``<TEMPLATE>/cache/`` (a directory or a tarball)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from vpsadmind.testing.fakevz.layout import Layout

__all__ = ["MINIMAL_FILES", "make_template"]

#: What a minimal template holds (vzctl refuses to start a CT without /sbin/init or /bin/sh: the fake does not
#: check, but the files are there for the tests that look).
MINIMAL_FILES = {
    "etc/os-release": 'NAME="fake-vz minimal"\nID=fakevz\n',
    "etc/hostname": "localhost\n",
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/shadow": "root:*:0:0:99999:7:::\n",
    "sbin/init": "#!/bin/sh\n# fake init\n",
    "bin/sh": "#!/bin/sh\n# fake shell\n",
}
_DIRS = ("dev", "proc", "sys", "tmp", "root", "var/log", "home")


def _fill(base: Path) -> None:
    for name in _DIRS:
        (base / name).mkdir(parents=True, exist_ok=True)
    for name, text in MINIMAL_FILES.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (base / "etc/shadow").chmod(0o600)
    for name in ("sbin/init", "bin/sh"):
        os.chmod(base / name, 0o755)


def make_template(root: str | os.PathLike[str], name: str = "debian-8.0-x86_64-minimal", *,
                  tarball: bool = False) -> Path:
    """Create template ``name`` under the fake root's template cache; returns its path."""
    layout = Layout(Path(root))
    layout.ensure()
    cache = layout.template_dir() / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not tarball:
        target = cache / name
        _fill(target)
        return target
    target = cache / f"{name}.tar.gz"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _fill(Path(tmp))
        with tarfile.open(target, "w:gz") as tar:
            tar.add(tmp, arcname=".")
    return target
