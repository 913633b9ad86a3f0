"""A fake ``scp`` for tests and the soak: 4001 (Vps::CopyConfigs) on a migration's destination reads the source
node's files with ``scp <src_node_addr>:<path> <dest>``; here "the other node" is another directory tree of the
same machine, found by path prefix (``maps``). Every call's argv is recorded, so a test can count them."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

__all__ = ["FAKE_SCP", "Scp", "make_scp"]

FAKE_SCP = '''#!{python}
"""fake scp for the tests: records its argv, copies <host>:<path> to the last operand, reading <path> where the
first matching prefix of MAPS points (the other node's filesystem)."""
import json, os, shutil, sys
MAPS = {maps!r}
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
operands = [a for a in args if not a.startswith("-")]
src, dst = operands[-2], operands[-1]
path = src.split("]:", 1)[1] if src.startswith("[") else src.split(":", 1)[1]
local = next(to + path[len(prefix):] for prefix, to in MAPS if path.startswith(prefix))
if not os.path.isfile(local):
    print(f"scp: {{path}}: No such file or directory", file=sys.stderr)
    sys.exit(1)
shutil.copy2(local, dst)
'''


@dataclasses.dataclass
class Scp:
    """The fake scp: ``remote`` is the other node's filesystem root, ``calls`` the argv of every run."""

    path: Path
    remote: Path
    log: Path

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def make_scp(directory: Path, maps: list[tuple[str, str]] | None = None) -> Scp:
    """A fake scp in ``directory``; ``maps`` are (prefix, replacement) pairs that say where the "remote" file of
    a path is (default: the same path below ``<directory>/remote-node``)."""
    remote, log, script = directory / "remote-node", directory / "scp.log", directory / "bin-scp" / "scp"
    remote.mkdir(parents=True)
    script.parent.mkdir()
    script.write_text(FAKE_SCP.format(python=sys.executable, maps=maps or [("/", f"{remote}/")], log=str(log)))
    script.chmod(0o755)
    return Scp(script, remote, log)
