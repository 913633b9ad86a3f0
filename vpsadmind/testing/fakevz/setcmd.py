"""``fake-vzctl set``: options, ``--applyconfig``, ``--userpasswd``, ``--setmode`` and ``--save`` as vzctl 4.9
(``set()`` and ``run_action()`` in ``src/vzctl-actions.c``):

* without ``--save`` nothing is written ("WARNING: Settings were not saved to config (use --save flag)") and the
  fake applies nothing either (vzctl would apply the values to a running container until its next restart);
* ``--setmode restart`` without ``--save`` is exit 20; ``--root``/``--private`` on a running container exit 32;
* on a running container, a change of CAPABILITY, FEATURES, NETFILTER, IPTABLES, QUOTAUGIDLIMIT, DISK_QUOTA or
  MOUNT_OPTS needs a restart: with ``--setmode restart`` the container is saved and restarted (action scripts
  run), with ``--setmode ignore`` vzctl exits 32 and saves nothing, without ``--setmode`` it warns and saves;
* ``--applyconfig NAME`` reads ``ve-NAME.conf-sample`` (109 if missing) and saves its values except VE_ROOT,
  VE_PRIVATE, OSTEMPLATE, HOSTNAME, DESCRIPTION, NAME and IP_ADDRESS, plus ``ORIGIN_SAMPLE="NAME"``;
* ``--userpasswd user:password`` is never saved; the fake stores ``user:<sha256 of the password>`` in the
  container's ``/etc/shadow`` (74 if the container has no ``/etc``) and never prints the password;
* a ``--ipadd`` of an address another running container has fails with 78.
"""

from __future__ import annotations

import hashlib
import sys

from vpsadmind.testing.fakevz import conffile
from vpsadmind.testing.fakevz.chroot import ChrootError, resolve
from vpsadmind.testing.fakevz.errors import (
    APPLY_CONFIG_ERROR,
    CHANGEPASS,
    FS_NOPRVT,
    INVALID_SYNTAX,
    INVALID_VALUE,
    IP_INUSE,
    RUNNING,
    VzFail,
)
from vpsadmind.testing.fakevz.layout import Ct, Layout
from vpsadmind.testing.fakevz.params import (
    RESTART_KEYS,
    SET_SPEC,
    Request,
    add_option,
    add_sample,
    compose,
    parse_long,
)

__all__ = ["cmd_set", "SHADOW_PREFIX"]

#: How the fake stores a password in the container's /etc/shadow: ``user:fake-sha256$<hex>:...``.
SHADOW_PREFIX = "fake-sha256$"
_FLAGS = ("save", "force", "reset_ub", "setmode", "applyconfig", "userpasswd")


def _set_password(ct: Ct, pair: str) -> None:
    user, sep, password = pair.partition(":")
    if not sep or not user:
        raise VzFail(INVALID_VALUE, "Invalid syntax for --userpasswd (expected user:password)")
    base = ct.root if ct.running else ct.private
    if base is None or not base.is_dir():
        raise VzFail(FS_NOPRVT, f"Container private area {ct.private} does not exist")
    try:
        shadow = resolve(base, "/etc/shadow").host
        if not shadow.parent.is_dir():
            raise FileNotFoundError
        lines = shadow.read_text().splitlines() if shadow.exists() else []
        digest = hashlib.sha256(password.encode()).hexdigest()
        entry = f"{user}:{SHADOW_PREFIX}{digest}:0:0:99999:7:::"
        lines = [line for line in lines if line.split(":", 1)[0] != user] + [entry]
        shadow.write_text("".join(f"{line}\n" for line in lines))
        shadow.chmod(0o600)
    except (OSError, ChrootError):
        raise VzFail(CHANGEPASS, f"Unable to change password for user {user}") from None


def _ip_in_use(layout: Layout, veid: int, req: Request) -> None:
    wanted = {ip.split("/")[0] for ip in req.ip_add}
    if not wanted:
        return
    for other in layout.veids():
        ct = layout.ct(other)
        if other == veid or not ct.running:
            continue
        for ip in ct.conf().get("IP_ADDRESS", "").split():
            if ip.split("/")[0] in wanted:
                raise VzFail(IP_INUSE, f"IP address {ip} is already in use by CT {other}")


def _request(layout: Layout, ct: Ct, options: list[tuple[str, str | None]]) -> tuple[Request, dict[str, str]]:
    """The request from the sample (if any) and the command line; extra changes (ORIGIN_SAMPLE) separately."""
    req = Request()
    extra: dict[str, str] = {}
    for name, value in options:
        if name == "applyconfig" and value is not None:
            sample_path = layout.conf_dir / f"ve-{value}.conf-sample"
            if "/" in value or not sample_path.is_file():
                raise VzFail(APPLY_CONFIG_ERROR, f"Sample config file not found: {sample_path}")
            sample = conffile.read(sample_path)
            for warning in add_sample(req, sample):
                sys.stderr.write(warning + "\n")
            extra["ORIGIN_SAMPLE"] = sample.get("ORIGIN_SAMPLE") or value
    for name, value in options:
        if name not in _FLAGS:
            add_option(req, name, value or "")
    return req, extra


def cmd_set(layout: Layout, veid: int, args: list[str]) -> int:
    options, rest = parse_long(args, SET_SPEC)
    if rest:
        raise VzFail(INVALID_SYNTAX, f"non-option ARGV-elements: {' '.join(rest)}")
    flags = {name: value for name, value in options if name in _FLAGS}
    save, setmode = "save" in flags, flags.get("setmode")
    if setmode not in (None, "restart", "ignore"):
        raise VzFail(INVALID_VALUE, f"Bad parameter for --setmode: {setmode}")
    if setmode == "restart" and not save:
        raise VzFail(INVALID_SYNTAX, "Error: --setmode restart doesn't make sense without --save flag")
    ct = layout.ct(veid)
    running = ct.running
    if running and any(name in ("root", "private") for name, _ in options):
        raise VzFail(RUNNING, "Unable to change VE_PRIVATE/VE_ROOT on a running container")
    for name, value in options:
        if name == "userpasswd":
            _set_password(ct, value or "")
    req, extra = _request(layout, ct, options)
    if running:
        _ip_in_use(layout, veid, req)
    old = ct.conf()
    changes = {**extra, **compose(req, old)}
    needs_restart = running and any(key in RESTART_KEYS for key in changes)
    if needs_restart and setmode == "ignore":
        message = "Error: failed to apply some parameters, not saving configuration file!" if save else ""
        raise VzFail(RUNNING, message)
    if needs_restart and setmode is None:
        sys.stderr.write("WARNING: Some of the parameters could not be applied to a running container.\n"
                         "\tPlease consider using --setmode option\n")
    return _finish(layout, ct, changes, save=save, restart=needs_restart and setmode == "restart",
                   password_only=set(flags) <= {"userpasswd", "force"} and not changes)


def _finish(layout: Layout, ct: Ct, changes: dict[str, str], *, save: bool, restart: bool,
            password_only: bool) -> int:
    from vpsadmind.testing.fakevz.lifecycle import configure_inside, start, stop

    if not save:
        if not password_only:
            suffix = "and will be lost after CT restart " if ct.running else ""
            print(f"WARNING: Settings were not saved to config {suffix}(use --save flag)")
        return 0
    if not ct.conf_path.exists():
        sys.stderr.write(f"WARNING: {ct.conf_path} not found: No such file or directory\n")
    if conffile.save(ct.conf_path, changes):
        print(f"CT configuration saved to {ct.conf_path}")
    else:
        print("No changes in CT configuration, not saving")
    if restart:
        print("Restarting container")
        stop(layout, ct)
        start(layout, ct)
    elif ct.running:
        configure_inside(ct)
    return 0
