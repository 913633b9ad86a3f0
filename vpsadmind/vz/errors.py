"""Typed vzctl/vzlist failures: one root (:class:`VzError`), a few subclasses for the exit codes callers branch on.

=========================  ===================================================================================
class                      raised when
=========================  ===================================================================================
VzError                    root; also a failed command whose code has no subclass (``.code`` tells which)
InvalidValue               a veid, hostname, IP, path, option or value was refused **before** any process ran
ConfFileError              a ``<veid>.conf`` (or sample) could not be read, parsed or written
VzTimeout                  vzctl/vzlist ran longer than the driver's timeout (``exitstatus`` -1)
VzctlFailed                vzctl or vzlist exited with a code the call does not accept (base of the ones below)
ContainerNotFound          14 VZ_NOVECONFIG, 43 VZ_FS_NOPRVT, 53 VZ_UNK_MOUNT_TYPE; vzlist "not found"
ContainerRunning           32 VZ_VE_RUNNING where running is not acceptable (destroy, --private on a running CT)
ContainerNotRunning        31 VZ_VE_NOT_RUNNING (exec2, enter, runscript on a stopped container)
ContainerExists            44 VZ_FS_PRVT_AREA_EXIST (create over an existing private area)
ContainerLocked            9 VZ_LOCKED (another vzctl holds the container lock)
ActionScriptFailed         79 VZ_ACTIONSCRIPT_ERROR (a ``<veid>.mount``/``.umount`` action script failed)
ExecFailed                 the command run by ``exec``/``exec2`` failed (8 for exec, its own code for exec2)
TemplateNotFound           91 VZ_OSTEMPLATE_NOT_FOUND (the OS template cache is missing)
ApplyConfigFailed          109 VZ_APPLY_CONFIG_ERROR (``ve-<name>.conf-sample`` missing or unusable)
=========================  ===================================================================================

Every error carries ``argv`` (secrets such as ``--userpasswd`` values replaced by ``***``), ``exitstatus``,
``stdout``, ``stderr`` and ``code`` (the :class:`~vpsadmind.vz.exitcodes.VzExit` member, or None). The message
says what failed with which value, e.g. ``vzctl start 101: exit 79 VZ_ACTIONSCRIPT_ERROR (container action
script returned an error): Error executing mount script /etc/vz/conf/101.mount``. :attr:`VzError.output` is the
``t_output`` shape of :attr:`vpsadmind.system.CommandFailed.output` plus the class name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from vpsadmind.errors import AgentError
from vpsadmind.vz.exitcodes import VzExit, describe, lookup

__all__ = [
    "VzError", "InvalidValue", "ConfFileError", "VzTimeout", "VzctlFailed", "ContainerNotFound",
    "ContainerRunning", "ContainerNotRunning", "ContainerExists", "ContainerLocked", "ActionScriptFailed",
    "ExecFailed", "TemplateNotFound", "ApplyConfigFailed", "from_exit",
]


class VzError(AgentError):
    """Root of every vz failure. ``exitstatus`` is None when no command ran (validation, conf files)."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), exitstatus: int | None = None,
                 stdout: str = "", stderr: str = "", vzctl: bool = True) -> None:
        self.argv = list(argv)
        self.exitstatus = exitstatus
        self.stdout = stdout
        self.stderr = stderr
        # vzlist's exit codes are not vzerror.h's (1 = nothing found or bad option): only vzctl's are named
        known = vzctl and exitstatus is not None and exitstatus > 0
        self.code: VzExit | None = lookup(exitstatus) if known and exitstatus is not None else None
        super().__init__(message)

    @property
    def output(self) -> dict[str, object]:
        """What goes into ``t_output``: v2.0 merged stdout and stderr of vzctl (``2>&1``), so both are kept."""
        text = "\n".join(part.strip() for part in (self.stdout, self.stderr) if part.strip())
        return {"cmd": " ".join(self.argv), "exitstatus": self.exitstatus, "error": text or str(self),
                "vz_error": type(self).__name__}


class InvalidValue(VzError, ValueError):
    """A value was refused before it reached argv or a conf file: ``field`` names it, ``value`` is what was given
    (shortened), ``rule`` the rule it breaks."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {field} {shown}: {rule}")


class ConfFileError(VzError):
    """A container conf file (or config sample) could not be read, parsed or written: ``path`` and ``line``."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if path and line else (path or "")
        super().__init__(f"{where}: {message}" if where else message)


class VzTimeout(VzError):
    """vzctl/vzlist ran longer than the driver's timeout and was killed (the container lock is released by the
    kernel when vzctl dies, but what vzctl had done so far stays done)."""


class VzctlFailed(VzError):
    """vzctl or vzlist exited with a code the call does not accept."""


class ContainerNotFound(VzctlFailed):
    """No such container: its conf file (14) or private area (43) is missing, or vzlist did not find it."""


class ContainerRunning(VzctlFailed):
    """32: the container runs and the operation needs it stopped."""


class ContainerNotRunning(VzctlFailed):
    """31: the container is stopped and the operation needs it running."""


class ContainerExists(VzctlFailed):
    """44: create found the private area already there."""


class ContainerLocked(VzctlFailed):
    """9: another vzctl holds the container's lock (an action script may be waiting, see docs/vz.md)."""


class ActionScriptFailed(VzctlFailed):
    """79: a mount/umount action script exited non-zero (on start the CT is not started; on stop the CT stopped
    but its private area stays mounted)."""


class ExecFailed(VzctlFailed):
    """The command run inside the container failed: ``exitstatus`` is 8 for ``vzctl exec`` and the command's own
    code for ``vzctl exec2``."""


class TemplateNotFound(VzctlFailed):
    """91: the OS template is not in the template cache."""


class ApplyConfigFailed(VzctlFailed):
    """109: the config sample to apply is missing or broken."""


_BY_CODE: Final[dict[int, type[VzctlFailed]]] = {
    VzExit.VZ_NOVECONFIG: ContainerNotFound,
    VzExit.VZ_FS_NOPRVT: ContainerNotFound,
    VzExit.VZ_UNK_MOUNT_TYPE: ContainerNotFound,
    VzExit.VZ_VE_RUNNING: ContainerRunning,
    VzExit.VZ_VE_NOT_RUNNING: ContainerNotRunning,
    VzExit.VZ_FS_PRVT_AREA_EXIST: ContainerExists,
    VzExit.VZ_LOCKED: ContainerLocked,
    VzExit.VZ_ACTIONSCRIPT_ERROR: ActionScriptFailed,
    VzExit.VZ_COMMAND_EXECUTION_ERROR: ExecFailed,
    VzExit.VZ_OSTEMPLATE_NOT_FOUND: TemplateNotFound,
    VzExit.VZ_APPLY_CONFIG_ERROR: ApplyConfigFailed,
}


def _summary(stdout: str, stderr: str) -> str:
    """The most telling line: vzctl logs errors to stderr, but its progress lines go to stdout."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        lines = [line.strip() for line in stdout.splitlines() if line.strip()][-1:]
    return " ".join(lines)[:2000]


def from_exit(argv: Sequence[str], exitstatus: int, stdout: str, stderr: str, *,
              cls: type[VzctlFailed] | None = None, vzctl: bool = True) -> VzctlFailed:
    """The typed error for a vzctl exit code (``cls`` overrides the class chosen by the code); with
    ``vzctl=False`` (a vzlist failure) the code is not interpreted."""
    kind = cls or (_BY_CODE.get(exitstatus, VzctlFailed) if vzctl else VzctlFailed)
    command = " ".join([os.path.basename(argv[0]), *argv[1:3]]) if argv else "vzctl"
    detail = _summary(stdout, stderr)
    code = describe(exitstatus) if vzctl else str(exitstatus)
    text = f"{command}: exit {code}" + (f": {detail}" if detail else "")
    return kind(text, argv=argv, exitstatus=exitstatus, stdout=stdout, stderr=stderr, vzctl=vzctl)
