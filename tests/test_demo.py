"""``make demo`` end to end: ``python -m vpsadmind.demo`` as a subprocess, with two real daemons.

Each run uses its own database and MQTT topic prefix, so it neither clobbers ``vpsadmind_demo`` nor mixes
its wake-ups and events with another demo on the same broker.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpsadmind.testing.db import TestDbSettings, drop_database_sync, random_database_name, require_mariadb

pytestmark = pytest.mark.slow

EXPECTED_STATES = {"hop": "done", "noops": "done", "rollback": "failed", "keep_going": "done"}


@pytest.fixture
def demo_database(db_settings: TestDbSettings) -> Iterator[str]:
    require_mariadb(db_settings)
    name = random_database_name("vpsadmind_demotest_")
    try:
        yield name
    finally:
        drop_database_sync(name, db_settings)


def run_demo(workdir: Path, database: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vpsadmind.demo", "--workdir", str(workdir), "--database", database,
           "--topic-prefix", f"vpsadmin-test-{secrets.token_hex(4)}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.parametrize("mode", ["mqtt", "no-mqtt"])
def test_demo_ends_every_chain_as_expected(tmp_path: Path, demo_database: str, mode: str) -> None:
    proc = run_demo(tmp_path, demo_database, *(["--no-mqtt"] if mode == "no-mqtt" else []))
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out}\n{proc.stderr}"
    for name, state in EXPECTED_STATES.items():
        assert re.search(rf"^\s+\d+\s+{name}\s+{state}\s", out, re.MULTILINE), f"{name} not {state}:\n{out}"
    assert "Demo OK: hop done, noops done, rollback failed, keep_going done" in out
    assert "node1 exit code 0, node2 exit code 0" in out
    assert "Resource locks left: 0   port reservations left: 0" in out
    assert re.search(r"datasets#\d+\s+hop\s+confirmed=1\s", out)
    assert re.search(r"datasets#\d+\s+rollback\s+deleted\s", out)
    # the rollback ran in reverse order, each transaction on its own node
    assert re.search(r"rollback\s+exec (\d+)@node1, exec (\d+)@node2, exec (\d+)@node1, rollback \3@node1, "
                     r"rollback \2@node2, rollback \1@node1", out), out
    if mode == "no-mqtt":
        assert "MQTT: off (disabled by --no-mqtt)" in out
    assert (tmp_path / "node1.log").exists() and (tmp_path / "node2.log").exists()


def test_demo_refuses_a_bad_database_name(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "production")
    assert proc.returncode == 2
    assert "must match vpsadmind" in proc.stderr
