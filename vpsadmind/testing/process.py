"""Run vpsadmind as a real process for tests, the demo and benchmarks: write its config, start it, wait until
it serves, stop it with SIGTERM or kill it with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vpsadmind.testing.db import TestDbSettings

__all__ = ["DaemonProcess", "write_config"]


def write_config(path: Path, settings: TestDbSettings, database: str, *, server_id: int, journal: Path,
                 check_interval: float = 0.1, mqtt: dict[str, Any] | None = None,
                 extra_vpsadmin: dict[str, Any] | None = None, db_extra: dict[str, Any] | None = None,
                 hosts: list[str] | None = None, log_level: str = "info",
                 control_socket: Path | None = None, bin: dict[str, str] | None = None,
                 sections: dict[str, Any] | None = None) -> Path:
    """A daemon config for tests; the control socket defaults to a file beside the config so that several
    test daemons on one machine do not collide on /var/run/vpsadmind.sock. ``bin`` overrides paths of the
    ``bin`` section (e.g. ``{"zfs": ..., "zpool": ...}`` pointing at fake-zfs); ``sections`` adds or replaces
    whole top-level sections (``queues``, ``transfer``, ...)."""
    cfg: dict[str, Any] = {
        "db": {"hosts": hosts or [f"{settings.host}:{settings.port}"], "user": settings.user,
               "pass": settings.password, "name": database, "retry_interval": 1, "connect_timeout": 2,
               **(db_extra or {})},
        # init and track_transfers off: a test daemon must not touch the iptables and tc of the machine it
        # runs on (a test that wants them points bin.iptables/tc into a network namespace); update_vps_status
        # off: there is no vzctl here (a test that wants the reporter points vz.vzlist at fake-vzlist)
        "vpsadmin": {"server_id": server_id, "check_interval": check_interval, "shutdown_timeout": 10,
                     "handler_modules": ["vpsadmind.testing.handlers"], "db_version_interval": 0.5,
                     "init": False, "track_transfers": False, "update_vps_status": False,
                     **(extra_vpsadmin or {})},
        "journal": {"path": str(journal)},
        "mqtt": mqtt or {"enabled": False},
        "log": {"level": log_level, "format": "json"},
        "remote": {"socket": str(control_socket or path.with_suffix(".sock"))},
    }
    if bin:
        cfg["bin"] = dict(bin)
    cfg.update(sections or {})
    path.write_text(yaml.safe_dump(cfg))
    return path


class DaemonProcess:
    """``python -m vpsadmind.cli -c <config>`` with its output in ``log``; ``env`` is added to the
    environment it inherits (e.g. ``FAKE_ZFS_ROOT``)."""

    def __init__(self, config: Path, log: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> DaemonProcess:
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([sys.executable, "-m", "vpsadmind.cli", "-c", str(self.config)],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"})
        out.close()
        if wait:
            self.wait_for_event("started", timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.log.exists():
            return out
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def wait_for_event(self, event: str, *, timeout: float = 20.0, count: int = 1, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == event
                     and all(e.get(k) == v for k, v in fields.items())]
            if len(found) >= count:
                return found[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.02)
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        raise TimeoutError(f"no {event!r} {fields} from vpsadmind (rc={self.returncode}); log tail:\n{tail}")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)
