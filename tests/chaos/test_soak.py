"""A short run of the reliability soak (``python -m bench.soak``, issue 9) in CI: three real daemons on zfs-fuse
and the fake vzctl, a private MariaDB and Mosquitto, chains of every kind (a quarter of them failing at a random
step) and every kind of fault. The run must end with every invariant holding; docs/reliability.md has the figures
of the long runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vpsadmind.testing.mariadb import PrivateMariaDB
from vpsadmind.testing.services import unavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_short_soak_keeps_every_invariant(tmp_path: Path) -> None:
    if not PrivateMariaDB.available():
        unavailable("mariadbd and mariadb-install-db are needed for the soak's private database")
    report = tmp_path / "soak.json"
    # the work directory must be reachable by the private MariaDB's user (pytest's tmp dirs are 0700)
    workdir = Path("/tmp") / f"vpsadmind-soak-test-{tmp_path.name}"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--chains", "120", "--duration", "90", "--seed", "9",
                           "--fault-gap", "1",
                           "--json", str(report), "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    figures = json.loads(report.read_text())
    assert figures["fired"] == 120
    assert all(n == 0 for n in figures["invariants"].values()), figures["violations"]
    assert sum(figures["faults"].values()) >= 3, figures  # the chaos did run
    assert figures["states"].get("failed", 0) >= 5, figures  # planned failures rolled back
