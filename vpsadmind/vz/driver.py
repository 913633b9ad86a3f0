"""Async driver over OpenVZ's ``vzctl`` and ``vzlist`` (legacy vzctl 4.9, as vpsAdmin v2.0 ran it).

Processes start only through :func:`vpsadmind.system.run` (argv lists, never a shell; recorded for command
budgets). Every veid, name, path and option value is validated first (:mod:`vpsadmind.vz.validate`), so hostile
input fails with :class:`~vpsadmind.vz.errors.InvalidValue` before anything runs. Failures are typed by vzctl's
exit code (:mod:`vpsadmind.vz.errors`) and carry argv, code and output; the password of :meth:`Vz.set_password`
is replaced by ``***`` in every error.

What v2.0 tolerated and retried (contract 5.2, v2-details 2.7), kept here:

* :meth:`Vz.start` accepts exit 32 (already running) and returns False then; ``vzctl stop`` of a stopped container
  exits 0 by itself; :meth:`Vz.mount`/:meth:`Vz.umount` accept 41/40; :meth:`Vz.destroy` accepts 14 (no conf:
  nothing left to destroy);
* start and stop, each with the ``--onboot`` set that follows it, are tried up to :attr:`RetryPolicy.attempts`
  times (3) with :attr:`RetryPolicy.pause` (5 s) between attempts, like v2.0's ``try_harder``; restart is tried
  once. A missing container (14/43) is not retried: it cannot appear by waiting.

Command budgets: every method runs one command, except start/stop with ``onboot`` (two per attempt) and retried
attempts (one or two more per retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from vpsadmind import system
from vpsadmind.config import VzConfig
from vpsadmind.system import CommandFailed, CommandTimeout, Completed
from vpsadmind.vz import conf as _conf
from vpsadmind.vz import listing
from vpsadmind.vz import validate as v
from vpsadmind.vz.errors import (
    ConfFileError,
    ContainerNotFound,
    ContainerNotRunning,
    ExecFailed,
    InvalidValue,
    VzctlFailed,
    VzError,
    VzTimeout,
    from_exit,
)
from vpsadmind.vz.exitcodes import VzExit
from vpsadmind.vz.options import OptionValue, option_argv

__all__ = ["Vz", "Status", "RetryPolicy", "ExecResult", "ACTION_SCRIPTS", "shell_join"]

log = structlog.get_logger("vpsadmind.vz")
_T = TypeVar("_T")

#: Per-container action scripts vzctl runs from the conf dir (``<veid>.<action>``).
ACTION_SCRIPTS: Final = ("premount", "mount", "start", "stop", "umount", "postumount")

# vzctl's own messages that tell its failures apart from those of a command run by exec2 (which returns the
# command's exit code unchanged, so 31 could be either).
_NOT_RUNNING_MSG: Final = "Container is not running"
_NO_CONFIG_MSG: Final = "config file does not exist"


@dataclass(frozen=True, slots=True)
class Status:
    """``vzctl status``: ``exists`` = private area and conf file exist (vzctl's ``exist``/``deleted``)."""

    veid: int
    exists: bool
    mounted: bool
    running: bool
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """v2.0's ``try_harder`` for start and stop: ``attempts`` tries, ``pause`` seconds between them."""

    attempts: int = 3
    pause: float = 5.0


@dataclass(frozen=True, slots=True)
class ExecResult:
    exitstatus: int
    stdout: str
    stderr: str


def shell_join(argv: Sequence[str]) -> list[str]:
    """The arguments to give ``vzctl exec2`` so that the container runs exactly ``argv``.

    vzctl joins its arguments with spaces and runs ``bash -c "<joined>"`` inside the container, so each argument
    is quoted with :func:`shlex.quote` (single quotes; an embedded ``'`` becomes ``'"'"'``): bash then splits the
    joined string back into the original words, and no ``;``, ``$()``, glob or redirection in an argument is
    interpreted.
    """
    if not argv:
        raise InvalidValue("command", list(argv), "must not be empty")
    return [shlex.quote(v.exec_arg(arg)) for arg in argv]


def _redact(text: str, secrets: Mapping[str, str]) -> str:
    """Replace each secret by its stand-in. Very short secrets are left to the argv rule: vzctl never prints a
    password, and replacing "1" everywhere would garble the veid in the message."""
    for secret, shown in secrets.items():
        if len(secret) >= 3:
            text = text.replace(secret, shown)
    return text


class Vz:
    """One node's vzctl/vzlist. Paths: binaries ``vzctl``/``vzlist`` (looked up on PATH unless absolute), the
    conf dir (``<vz.vz_conf>/conf``). ``env`` adds variables to the inherited environment of every command (e.g.
    ``FAKE_VZ_ROOT`` for the fake harness); ``sleep`` is how retries pause (tests pass a recorder)."""

    def __init__(self, *, vzctl: str = "vzctl", vzlist: str = "vzlist", conf_dir: str | os.PathLike[str] =
                 "/etc/vz/conf", timeout: float | None = 600.0, exec_timeout: float | None = 300.0,
                 retry: RetryPolicy | None = None, env: Mapping[str, str] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.vzctl_bin = vzctl
        self.vzlist_bin = vzlist
        self.conf_dir = Path(conf_dir)
        self.timeout = timeout
        self.exec_timeout = exec_timeout
        self.retry = retry or RetryPolicy()
        self.env = dict(env or {})
        self._sleep = sleep

    @classmethod
    def from_config(cls, vz: VzConfig, **kwargs: Any) -> Vz:
        """A driver for the ``vz`` config section: ``vz.vzctl``, ``vz.vzlist`` and ``<vz.vz_conf>/conf``."""
        return cls(vzctl=vz.vzctl, vzlist=vz.vzlist, conf_dir=Path(vz.vz_conf) / "conf", **kwargs)

    # -- running ------------------------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str] | None:
        return {**os.environ, **self.env} if self.env else None

    async def _run(self, argv: list[str], *, accept: Sequence[int] = (), secrets: Mapping[str, str] | None = None,
                   timeout: float | None = None) -> Completed:
        secrets = secrets or {}
        shown = [secrets.get(arg) or _redact(arg, secrets) for arg in argv]
        try:
            return await system.run(argv, valid_rcs=(0, *accept), timeout=timeout or self.timeout,
                                    env=self._environment())
        except CommandTimeout:
            raise VzTimeout(f"{' '.join(shown[:3])}: timed out after {timeout or self.timeout} s", argv=shown,
                            exitstatus=-1) from None
        except CommandFailed as exc:
            error = from_exit(shown, exc.exitstatus, _redact(exc.stdout, secrets), _redact(exc.stderr, secrets),
                              vzctl=argv[0] != self.vzlist_bin)
            if secrets:
                raise error from None       # the cause would carry the secret in its argv
            raise error from exc
        except OSError as exc:
            raise VzError(f"cannot run {argv[0]}: {exc.strerror or exc}", argv=shown) from None

    async def _vzctl(self, command: str, veid: int, *args: str, accept: Sequence[int] = (),
                     secrets: Mapping[str, str] | None = None, timeout: float | None = None) -> Completed:
        return await self._run([self.vzctl_bin, command, str(veid), *args], accept=accept, secrets=secrets,
                               timeout=timeout)

    async def _attempts(self, what: str, veid: int, op: Callable[[], Awaitable[_T]], attempts: int) -> _T:
        for attempt in range(1, attempts + 1):
            try:
                return await op()
            except VzctlFailed as exc:
                if attempt >= attempts or isinstance(exc, ContainerNotFound):
                    raise
                log.warning("vzctl failed, retrying", action=what, veid=veid, attempt=attempt,
                            attempts=attempts, exitstatus=exc.exitstatus, error=str(exc))
                await self._sleep(self.retry.pause)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- state ----------------------------------------------------------------------------------------------------

    async def status(self, veid: int) -> Status:
        """``vzctl status <veid>``: one command, never fails for a missing container (``exists`` is False)."""
        veid = v.veid(veid)
        done = await self._vzctl("status", veid)
        for line in done.stdout.splitlines():
            words = line.split()
            if len(words) >= 5 and words[0] == "CTID" and words[1] == str(veid):
                return Status(veid, words[2] == "exist", words[3] == "mounted", words[4] == "running",
                              len(words) > 5 and words[5] == "suspended")
        raise VzError(f"vzctl status {veid}: unexpected output {done.stdout.strip()!r}", argv=done.argv,
                      exitstatus=done.exitstatus, stdout=done.stdout, stderr=done.stderr)

    async def is_running(self, veid: int) -> bool:
        return (await self.status(veid)).running

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self, veid: int, *, onboot: bool | None = None, wait: bool = False, force: bool = False,
                    attempts: int | None = None) -> bool:
        """``vzctl start`` (exit 32 = already running is fine), then ``set --onboot yes|no --save`` when
        ``onboot`` is given; the pair is retried per :attr:`retry` (v2.0 transaction 1001 is
        ``start(veid, onboot=True)``). Returns False if the container was already running."""
        veid = v.veid(veid)
        flags = [*(["--wait"] if wait else []), *(["--force"] if force else [])]

        async def once() -> bool:
            done = await self._vzctl("start", veid, *flags, accept=(VzExit.VZ_VE_RUNNING,))
            if onboot is not None:
                await self.set_onboot(veid, onboot)
            return done.exitstatus == 0

        return await self._attempts("start", veid, once, attempts or self.retry.attempts)

    async def stop(self, veid: int, *, onboot: bool | None = None, fast: bool = False,
                   attempts: int | None = None) -> None:
        """``vzctl stop`` (a stopped container is fine: vzctl exits 0), then ``--onboot`` if given; retried per
        :attr:`retry` (v2.0 transaction 1002 is ``stop(veid, onboot=False)``). A failing ``<veid>.umount`` script
        raises ActionScriptFailed: the container is then stopped but still mounted."""
        veid = v.veid(veid)
        flags = ["--fast"] if fast else []

        async def once() -> None:
            await self._vzctl("stop", veid, *flags)
            if onboot is not None:
                await self.set_onboot(veid, onboot)

        await self._attempts("stop", veid, once, attempts or self.retry.attempts)

    async def restart(self, veid: int, *, onboot: bool | None = None, wait: bool = False) -> None:
        """``vzctl restart`` (starts a stopped container too), then ``--onboot`` if given; one attempt, as v2.0's
        transaction 1003."""
        veid = v.veid(veid)
        await self._vzctl("restart", veid, *(["--wait"] if wait else []))
        if onboot is not None:
            await self.set_onboot(veid, onboot)

    async def mount(self, veid: int) -> bool:
        """``vzctl mount`` (runs the premount/mount action scripts); False if it was already mounted (41)."""
        done = await self._vzctl("mount", v.veid(veid), accept=(VzExit.VZ_FS_MOUNTED,))
        return done.exitstatus == 0

    async def umount(self, veid: int) -> bool:
        """``vzctl umount`` (runs the umount/postumount scripts); False if it was not mounted (40)."""
        done = await self._vzctl("umount", v.veid(veid), accept=(VzExit.VZ_FS_NOT_MOUNTED,))
        return done.exitstatus == 0

    async def create(self, veid: int, *, ostemplate: str, hostname: str | None = None,
                     private: str | None = None, root: str | None = None, config: str | None = None,
                     ipadd: Sequence[str] = ()) -> None:
        """``vzctl create <veid> --ostemplate T [--config C] [--private P] [--root R] [--hostname H]
        [--ipadd A ...]`` (v2.0 transaction 3001 passes ostemplate, hostname and private, then applies the
        ``basic`` sample). Raises ContainerExists (44) if the private area exists, TemplateNotFound (91)."""
        veid = v.veid(veid)
        argv = ["--ostemplate", v.name(ostemplate, "ostemplate")]
        if config is not None:
            argv += ["--config", v.name(config, "config")]
        if private is not None:
            argv += ["--private", v.path(private, "private", allow_veid=True)]
        if root is not None:
            argv += ["--root", v.path(root, "root", allow_veid=True)]
        if hostname is not None:
            argv += ["--hostname", v.hostname(hostname)]
        for addr in ipadd:
            argv += ["--ipadd", v.ip(addr, "ipadd", allow_prefix=True)]
        await self._vzctl("create", veid, *argv)

    async def destroy(self, veid: int) -> bool:
        """``vzctl destroy``: removes the private area and renames the conf to ``.destroyed``. False if there was
        no conf (14: nothing to destroy); ContainerRunning (32) / VzctlFailed 41 if it runs or is mounted."""
        done = await self._vzctl("destroy", v.veid(veid), accept=(VzExit.VZ_NOVECONFIG,))
        return done.exitstatus == 0

    # -- settings ------------------------------------------------------------------------------------------------

    async def set(self, veid: int, options: Mapping[str, OptionValue], *, save: bool = True,
                  setmode: str | None = None) -> None:
        """``vzctl set <veid> --opt value ... [--setmode M] [--save]``; see :mod:`vpsadmind.vz.options` for names
        and value forms (lists repeat the option)."""
        veid = v.veid(veid)
        argv = option_argv(options)
        if not argv:
            raise InvalidValue("options", dict(options), "at least one option is needed")
        if setmode is not None:
            argv += ["--setmode", v.setmode(setmode)]
        if save:
            argv.append("--save")
        await self._vzctl("set", veid, *argv)

    async def set_onboot(self, veid: int, onboot: bool) -> None:
        await self.set(veid, {"onboot": onboot})

    async def applyconfig(self, veid: int, name: str, *, setmode: str | None = "restart", save: bool = True) -> None:
        """``vzctl set <veid> --applyconfig NAME --setmode restart --save`` (v2.0 transaction 2008, once per
        config): copies ``ve-NAME.conf-sample`` into the CT's conf except VE_ROOT, VE_PRIVATE, OSTEMPLATE,
        HOSTNAME, DESCRIPTION and IP_ADDRESS. ApplyConfigFailed (109) if the sample is missing."""
        veid = v.veid(veid)
        argv = ["--applyconfig", v.name(name, "config sample")]
        if setmode is not None:
            argv += ["--setmode", v.setmode(setmode)]
        if save:
            argv.append("--save")
        await self._vzctl("set", veid, *argv)

    async def set_password(self, veid: int, user: str, password: str) -> None:
        """``vzctl set <veid> --userpasswd user:password`` (not saved: vzctl writes it inside the container,
        starting a stopped one for the moment). The password never appears in errors or logs."""
        veid = v.veid(veid)
        pair = f"{v.user(user)}:{v.password(password)}"
        await self._vzctl("set", veid, "--userpasswd", pair, secrets={pair: f"{user}:***", password: "***"})

    # -- commands inside the container --------------------------------------------------------------------------

    async def exec(self, veid: int, argv: Sequence[str], *, accept: Sequence[int] = (0,),
                   timeout: float | None = None) -> ExecResult:
        """Run ``argv`` inside the running container with ``vzctl exec2`` (whose exit code is the command's),
        quoting each argument for vzctl's ``bash -c`` (:func:`shell_join`). An exit code in ``accept`` is
        returned; others raise ExecFailed, or ContainerNotRunning / ContainerNotFound when vzctl itself says so."""
        veid = v.veid(veid)
        args = shell_join(argv)
        done = await self._run([self.vzctl_bin, "exec2", str(veid), *args], accept=range(1, 256),
                               timeout=timeout or self.exec_timeout)
        if done.exitstatus in accept:
            return ExecResult(done.exitstatus, done.stdout, done.stderr)
        cls: type[VzctlFailed] = ExecFailed
        if done.exitstatus == VzExit.VZ_VE_NOT_RUNNING and _NOT_RUNNING_MSG in done.stderr:
            cls = ContainerNotRunning
        elif done.exitstatus == VzExit.VZ_NOVECONFIG and _NO_CONFIG_MSG in done.stderr:
            cls = ContainerNotFound
        raise from_exit(done.argv, done.exitstatus, done.stdout, done.stderr, cls=cls)

    async def exec_shell(self, veid: int, command: str, *, accept: Sequence[int] = (0,),
                         timeout: float | None = None) -> ExecResult:
        """v2.0's form ``vzctl exec <veid> "<command>"``: ``command`` is a shell line run by bash in the container
        (``;``, ``&&``, redirections work). Only for constant commands written in this code base, never for text
        that comes from a user. Exit 8 means the command failed (and also that the container is not running:
        plain exec folds every failure into 8); put 8 in ``accept`` to tolerate it as v2.0's Features did."""
        veid = v.veid(veid)
        text = v.exec_arg(command)
        if not text.strip():
            raise InvalidValue("command", command, "must not be empty")
        done = await self._run([self.vzctl_bin, "exec", str(veid), text], accept=range(1, 256),
                               timeout=timeout or self.exec_timeout)
        if done.exitstatus in accept:
            return ExecResult(done.exitstatus, done.stdout, done.stderr)
        raise from_exit(done.argv, done.exitstatus, done.stdout, done.stderr)

    # -- vzlist -----------------------------------------------------------------------------------------------------

    def _vzlist_argv(self, veids: Sequence[int] | None, include_stopped: bool) -> tuple[list[str], list[str]]:
        ids = [str(v.veid(veid)) for veid in veids] if veids is not None else []
        return (["-a"] if include_stopped and veids is None else []), ids

    async def vzlist(self, veids: Sequence[int] | None = None, *, fields: Sequence[str] | None = None,
                     include_stopped: bool = True) -> list[dict[str, Any]]:
        """``vzlist -j [-a] [-o f,...] [veid ...]``: one dict per container (every field without ``fields``).
        Without ``veids`` all containers are listed (``-a``), or only running ones if not ``include_stopped``.
        Containers that do not exist are simply absent (vzlist's exit 1 "not found" gives ``[]``)."""
        flags, ids = self._vzlist_argv(veids, include_stopped)
        if veids is not None and not ids:
            return []
        out = ["-o", ",".join(listing.check_fields(fields, json_mode=True))] if fields is not None else []
        done = await self._run([self.vzlist_bin, "-j", *flags, *out, *ids], accept=(1,))
        if done.exitstatus == 1 and not done.stdout.strip().strip("[]").strip():
            return []
        if done.exitstatus == 1:
            raise from_exit(done.argv, 1, done.stdout, done.stderr, vzctl=False)
        return listing.parse_json(done.stdout)

    async def vzlist_table(self, veids: Sequence[int] | None = None, *,
                           fields: Sequence[str] = listing.DEFAULT_FIELDS,
                           include_stopped: bool = True) -> list[dict[str, str | None]]:
        """``vzlist -H [-a] -o f,... [veid ...]``: text rows as dicts of strings (``-`` becomes None)."""
        flags, ids = self._vzlist_argv(veids, include_stopped)
        if veids is not None and not ids:
            return []
        names = listing.check_fields(fields, json_mode=False)
        done = await self._run([self.vzlist_bin, "-H", *flags, "-o", ",".join(names), *ids], accept=(1,))
        if done.exitstatus == 1:
            return []
        return listing.parse_table(done.stdout, names)

    async def status_row(self, veid: int) -> listing.StatusRow | None:
        """v2.0's status source ``vzlist --no-header <veid>``: nproc and running state, None if not found."""
        veid = v.veid(veid)
        done = await self._run([self.vzlist_bin, "--no-header", str(veid)], accept=(1,))
        if done.exitstatus == 1:
            return None
        return listing.parse_status_row(done.stdout)

    # -- files in the conf dir --------------------------------------------------------------------------------------

    def conf_path(self, veid: int) -> Path:
        return self.conf_dir / f"{v.veid(veid)}.conf"

    def script_path(self, veid: int, action: str) -> Path:
        """``<conf_dir>/<veid>.<action>`` for one of :data:`ACTION_SCRIPTS` (e.g. ``101.mount``)."""
        if action not in ACTION_SCRIPTS:
            raise InvalidValue("action script", action, f"must be one of {', '.join(ACTION_SCRIPTS)}")
        return self.conf_dir / f"{v.veid(veid)}.{action}"

    def sample_path(self, name: str) -> Path:
        return self.conf_dir / f"ve-{v.name(name, 'config sample')}.conf-sample"

    def global_conf_path(self) -> Path:
        """vzctl's global config, ``vz.conf`` next to the conf dir (``/etc/vz/vz.conf``)."""
        return self.conf_dir.parent / "vz.conf"

    def _ct_path(self, veid: int, key: str) -> Path | None:
        veid = v.veid(veid)
        value: str | None = None
        with contextlib.suppress(ConfFileError):
            value = self.read_conf(veid).get(key)
        if not value:
            with contextlib.suppress(ConfFileError):
                value = _conf.ConfFile.load(self.global_conf_path()).get(key)
        return Path(_conf.expand_veid(value, veid)) if value else None

    def ve_root(self, veid: int) -> Path | None:
        """The container's VE_ROOT as vzctl resolves it: its conf, else vz.conf, ``$VEID`` expanded; None if
        neither sets it. Mount destinations live below this path."""
        return self._ct_path(veid, "VE_ROOT")

    def ve_private(self, veid: int) -> Path | None:
        """The container's VE_PRIVATE, resolved like :meth:`ve_root`."""
        return self._ct_path(veid, "VE_PRIVATE")

    def read_conf(self, veid: int) -> _conf.ConfFile:
        """The container's conf file (ConfFileError if missing or unreadable)."""
        return _conf.ConfFile.load(self.conf_path(veid))

    def write_conf(self, veid: int, conf: _conf.ConfFile) -> Path:
        """Save ``conf`` atomically as the container's conf file."""
        return conf.save(self.conf_path(veid))

    def backup_conf(self, veid: int, suffix: str = ".backup") -> Path:
        """``cp -p <veid>.conf <veid>.conf.backup`` (transaction 2008 before applying configs)."""
        return _conf.backup(self.conf_path(veid), suffix)

    def restore_conf(self, veid: int, suffix: str = ".backup") -> bool:
        """Rename the backup over the conf (2008's rollback); False if there is no backup."""
        return _conf.restore(self.conf_path(veid), suffix)

    def write_sample(self, name: str, text: str) -> Path:
        """Write ``ve-<name>.conf-sample`` atomically (7301/7303). Every line must be blank, a comment or a
        ``KEY="value"`` assignment with a conf-safe value: vzctl copies these values into container confs."""
        path = self.sample_path(name)
        sample = _conf.ConfFile.parse(text, path=path)
        for number, line in enumerate(sample.lines, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            probe = _conf.ConfFile([line])
            keys = probe.keys()
            if not keys:
                raise ConfFileError(f"not a KEY=\"value\" line: {line[:80]!r}", path=str(path), line=number)
            try:
                v.conf_key(keys[0])
                v.conf_value(probe.get(keys[0]) or "", keys[0])
            except InvalidValue as exc:
                raise ConfFileError(str(exc), path=str(path), line=number) from None
        _conf.atomic_write(path, sample.render())
        return path

    def read_sample(self, name: str) -> str | None:
        try:
            return self.sample_path(name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def delete_sample(self, name: str) -> bool:
        try:
            self.sample_path(name).unlink()
        except FileNotFoundError:
            return False
        return True
