"""A private MariaDB server in a temporary directory, for tests that stop and start the database.

The machine's shared server is never stopped by tests; this one has its own datadir, socket and port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymysql

from vpsadmind.testing.db import TestDbSettings, create_database_sync

__all__ = ["PrivateMariaDB", "free_port", "private_server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateMariaDB:
    def __init__(self, base: Path | None = None, port: int | None = None) -> None:
        # The server runs as user mysql, which cannot enter pytest's 0700 tmp directories.
        self.base = base or Path(tempfile.mkdtemp(prefix="vpsadmind-mariadb-"))
        self.port = port or free_port()
        self.datadir = self.base / "data"
        self.socket = self.base / "mysqld.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return bool(shutil.which("mariadbd") or os.path.exists("/usr/sbin/mariadbd")) and bool(
            shutil.which("mariadb-install-db"))

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        shutil.chown(self.base, "mysql", "mysql")
        subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={self.datadir}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=60)

    def start(self, timeout: float = 20.0) -> None:
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = subprocess.Popen(
            [mariadbd, "--no-defaults", "--user=mysql", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.base / 'mysqld.pid'}",
             f"--log-error={self.base / 'error.log'}", "--innodb-buffer-pool-size=32M",
             "--skip-log-bin", "--innodb-log-file-size=8M"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=1).close()
                return
            except pymysql.err.OperationalError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"private MariaDB did not start: {(self.base / 'error.log').read_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc = None

    def remove(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def settings(self) -> TestDbSettings:
        return TestDbSettings(host="127.0.0.1", port=self.port, user="root", password="")

    def create_database(self, name: str) -> None:
        create_database_sync(name, self.settings())


@contextmanager
def private_server(database: str) -> Iterator[PrivateMariaDB]:
    """A private MariaDB with ``database`` created, removed at the end; a test that cannot have one skips (or,
    with ``CI=true``, fails)."""
    from vpsadmind.testing.services import unavailable

    if not PrivateMariaDB.available():
        unavailable("mariadbd/mariadb-install-db are not installed")
    server = PrivateMariaDB()
    server.install()
    try:
        server.start()
        server.create_database(database)
        yield server
    finally:
        server.remove()
