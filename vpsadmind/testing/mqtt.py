"""A throw-away Mosquitto broker for tests (``MosquittoServer``) and ``free_port()``.

Each server writes a tiny config (one listener on 127.0.0.1, anonymous access, no persistence) into its work
directory and runs ``mosquitto -c <file>`` as a subprocess, so tests can stop, kill and restart the broker on
the same port without touching the system broker. When Mosquitto is missing or cannot start, the test is
skipped, or failed when the environment variable ``CI`` is ``"true"`` (see :func:`service_unavailable`).

Example::

    async with MosquittoServer(tmp_path) as broker:
        config = MqttConfig(host=broker.host, port=broker.port)
        ...
        broker.stop()
        broker.start()  # same port
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self

from vpsadmind.testing.services import unavailable

__all__ = ["MosquittoServer", "free_port", "find_mosquitto", "service_unavailable"]

_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (``$PATH`` first, then the usual sbin directories), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def service_unavailable(reason: str) -> NoReturn:
    """Fail the current test when ``CI == "true"`` (CI must provide the service), else skip it."""
    unavailable(reason)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoServer:
    """A private Mosquitto broker listening on ``host:port``.

    Args:
        workdir: Where the config and log go; a temporary directory (removed by :meth:`close`) if None.
        port: Listener port; a free port is chosen if None. It is kept across :meth:`restart`.
        host: Listener address.
        binary: The mosquitto executable; found with :func:`find_mosquitto` if None.
        start_timeout: Seconds to wait for the listener to accept connections.
        extra_config: Lines appended to the generated config (e.g. ``password_file`` and ``acl_file``;
            ``allow_anonymous`` may be overridden by a later line).
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, port: int | None = None,
                 host: str = "127.0.0.1", binary: str | None = None, start_timeout: float = 5.0,
                 extra_config: str = "") -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="mosquitto-")) if workdir is None else Path(workdir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.binary = binary
        self.start_timeout = start_timeout
        self.extra_config = extra_config
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def config_path(self) -> Path:
        return self.workdir / f"mosquitto-{self.port}.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"mosquitto-{self.port}.log"

    def log_text(self) -> str:
        """The broker's log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, port: int | None = None) -> None:
        """Start the broker (on ``port`` if given, else on :attr:`port`) and wait until it listens.

        Skips or fails the test (see :func:`service_unavailable`) when mosquitto is missing or does not start.
        """
        if self.running:
            return
        if port is not None:
            self.port = port
        binary = self.binary or find_mosquitto()
        if binary is None:
            service_unavailable("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # As root, mosquitto drops to user "mosquitto", which cannot read files in pytest's 0700 tmp_path.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.config_path.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\nlog_dest stdout\n"
            f"{user}{self.extra_config.strip()}\n")
        self._log_file = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen([binary, "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                                          stdout=self._log_file, stderr=subprocess.STDOUT)
        except OSError as exc:
            self.stop()
            service_unavailable(f"cannot run {binary}: {exc}")
        deadline = time.monotonic() + self.start_timeout
        while not _port_open(self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                service_unavailable(f"mosquitto did not start on {self.host}:{self.port}: {self.log_text()}")
            time.sleep(0.01)
        self.starts += 1

    def stop(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        """Stop the broker: SIGTERM (or SIGKILL with ``kill=True``), then wait for the process to end."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port (retained messages are lost: no persistence)."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop the broker and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)
