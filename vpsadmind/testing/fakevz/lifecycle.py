"""fake-vzctl's container lifecycle: create, destroy, start, stop, restart, mount, umount, status.

Behaviour follows legacy vzctl 4.9 (``src/vzctl-actions.c``, ``src/lib/env.c``, ``create.c``, ``destroy.c``):

* ``start``: exit 105 if ``DISABLED="yes"`` (unless ``--force``), 32 if running, 43 without a private area,
  28 for a VSwap config (PHYSPAGES set) without SWAPPAGES; mounts (with the action scripts) unless mounted,
  marks it running and writes the hostname, resolv.conf and DEVNODES placeholders inside;
* ``stop`` of a stopped container prints "Unable to stop: container is not running" and exits **0** without
  unmounting; otherwise it stops and unmounts (umount scripts; 79 leaves it stopped but mounted);
* ``restart`` stops if running, then starts;
* ``create`` copies ``ve-<CONFIGFILE or --config>.conf-sample`` to ``<veid>.conf`` when there is no conf yet,
  unpacks the OS template into the private area (44 if it exists, 91 if the template is missing) and saves
  VE_ROOT, VE_PRIVATE (as given, ``$VEID`` kept), OSTEMPLATE, ORIGIN_SAMPLE, VE_LAYOUT and the options;
* ``destroy``: 32 if running, 41 if mounted; removes the private area, renames ``<veid>.conf`` and its action
  scripts to ``*.destroyed`` and removes the root directory;
* ``status`` prints ``CTID <veid> exist|deleted mounted|unmounted running|down``.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import time
from pathlib import Path

from vpsadmind.testing.fakevz import conffile, mounts
from vpsadmind.testing.fakevz.chroot import ChrootError, resolve
from vpsadmind.testing.fakevz.errors import (
    CP_CONFIG,
    FS_MOUNTED,
    FS_NEW_PRVT,
    FS_NOPRVT,
    FS_NOT_MOUNTED,
    FS_PRVT_EXISTS,
    INVALID_SYNTAX,
    NOTENOUGHUBCPARAMS,
    OSTEMPLATE_NOT_FOUND,
    OSTEMPLATE_NOTSET,
    RUNNING,
    START_DISABLED,
    SYSTEM_ERROR,
    VzFail,
)
from vpsadmind.testing.fakevz.layout import Ct, Layout, expand_veid
from vpsadmind.testing.fakevz.params import CREATE_SPEC, Request, add_option, compose, parse_long

__all__ = ["cmd_status", "cmd_start", "cmd_stop", "cmd_restart", "cmd_mount", "cmd_umount", "cmd_create",
           "cmd_destroy", "start", "stop", "configure_inside", "find_template", "DEFAULT_NPROC"]

DEFAULT_NPROC = 12
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar")
_DESTROYED = ("conf", "mount", "umount", "premount", "postumount", "start", "stop")


def _flags(args: list[str], allowed: tuple[str, ...]) -> set[str]:
    spec = {name: False for name in ("force", "skip_ve_setup", "wait", "fast", "skip-umount")}
    options, rest = parse_long(args, spec, bad_rc=INVALID_SYNTAX)
    if rest:
        raise VzFail(INVALID_SYNTAX, f"Invalid options: {' '.join(rest)}")
    names = {name for name, _ in options}
    for name in names - set(allowed):
        raise VzFail(INVALID_SYNTAX, f"Option --{name} is not applicable to this command")
    return names


def cmd_status(layout: Layout, veid: int, args: list[str]) -> int:
    ct = layout.ct(veid)
    words = ["exist" if ct.exists() else "deleted", "mounted" if mounts.is_mounted(ct) else "unmounted",
             "running" if ct.running else "down"]
    print(f"CTID {veid} {' '.join(words)}")
    return 0


def configure_inside(ct: Ct) -> None:
    """What vzctl's distribution scripts do at start: /etc/hostname, /etc/resolv.conf, DEVNODES (placeholders,
    see builtins.mknod). Only into directories that exist, and never outside the root."""
    conf, root = ct.conf(), ct.root
    if root is None:
        return
    files = {}
    if conf.get("HOSTNAME"):
        files["/etc/hostname"] = conf["HOSTNAME"] + "\n"
    if conf.get("NAMESERVER"):
        files["/etc/resolv.conf"] = "".join(f"nameserver {ns}\n" for ns in conf["NAMESERVER"].split())
    for entry in conf.get("DEVNODES", "").split():
        name, _, perm = entry.rpartition(":")
        if name and perm and perm != "none":
            files.setdefault(f"/dev/{name}", f"fake-vz device node: devnodes {name}\n")
    for path, text in files.items():
        try:
            host = resolve(root, path).host
            if host.parent.is_dir() and not (path.startswith("/dev/") and host.exists()):
                host.write_text(text)
        except (OSError, ChrootError):
            continue


def start(layout: Layout, ct: Ct, *, force: bool = False) -> None:
    conf = ct.conf()
    if conf.get("DISABLED") == "yes" and not force:
        raise VzFail(START_DISABLED, "Container start disabled")
    if ct.running:
        raise VzFail(RUNNING, "Container is already running")
    private = ct.private
    if private is None or not private.is_dir():
        raise VzFail(FS_NOPRVT, f"Container private area {private} does not exist")
    if conf.get("PHYSPAGES") and not conf.get("SWAPPAGES"):
        raise VzFail(NOTENOUGHUBCPARAMS, "Error: required UB parameter swappages not set")
    print("Starting container...")
    if not mounts.is_mounted(ct):
        mounts.mount(layout, ct)
    state = ct.state()
    ct.update_state(running=True, started=time.time(), nproc=state.get("nproc", DEFAULT_NPROC))
    configure_inside(ct)
    print("Container start in progress...")


def stop(layout: Layout, ct: Ct, *, skip_umount: bool = False) -> None:
    if not ct.running:
        print("Unable to stop: container is not running")
        return
    print("Stopping container ...")
    ct.update_state(running=False)
    print("Container was stopped")
    if not skip_umount and mounts.is_mounted(ct):
        mounts.umount(layout, ct)


def cmd_start(layout: Layout, veid: int, args: list[str]) -> int:
    flags = _flags(args, ("force", "skip_ve_setup", "wait"))
    start(layout, layout.ct(veid), force="force" in flags)
    return 0


def cmd_stop(layout: Layout, veid: int, args: list[str]) -> int:
    flags = _flags(args, ("fast", "skip-umount"))
    stop(layout, layout.ct(veid), skip_umount="skip-umount" in flags)
    return 0


def cmd_restart(layout: Layout, veid: int, args: list[str]) -> int:
    flags = _flags(args, ("force", "skip_ve_setup", "wait", "fast"))
    ct = layout.ct(veid)
    print("Restarting container")
    if ct.running:
        stop(layout, ct)
    start(layout, ct, force="force" in flags)
    return 0


def cmd_mount(layout: Layout, veid: int, args: list[str]) -> int:
    _flags(args, ())
    ct = layout.ct(veid)
    if mounts.is_mounted(ct):
        raise VzFail(FS_MOUNTED, "Container is already mounted")
    mounts.mount(layout, ct)
    return 0


def cmd_umount(layout: Layout, veid: int, args: list[str]) -> int:
    _flags(args, ())
    ct = layout.ct(veid)
    if ct.running:
        raise VzFail(RUNNING, "Container is running -- stop it first")
    if not mounts.is_mounted(ct):
        raise VzFail(FS_NOT_MOUNTED, "Container is not mounted")
    mounts.umount(layout, ct)
    return 0


def find_template(layout: Layout, name: str) -> Path | None:
    """``<TEMPLATE>/cache/<name>`` as a directory or tarball."""
    cache = layout.template_dir() / "cache"
    if "/" in name or name in (".", ".."):
        return None
    if (cache / name).is_dir():
        return cache / name
    for suffix in _TAR_SUFFIXES:
        if (cache / f"{name}{suffix}").is_file():
            return cache / f"{name}{suffix}"
    return None


def _unpack(template: Path, private: Path) -> None:
    private.parent.mkdir(parents=True, exist_ok=True)
    if template.is_dir():
        shutil.copytree(template, private, symlinks=True, dirs_exist_ok=True)
        return
    private.mkdir(exist_ok=True)
    with tarfile.open(template) as tar:
        tar.extractall(private, filter="data")


def _create_paths(layout: Layout, ct: Ct, values: dict[str, str]) -> tuple[str, str]:
    conf, globs = ct.conf(), layout.globals()
    private = values.get("private") or conf.get("VE_PRIVATE") or globs.get("VE_PRIVATE")
    root = values.get("root") or conf.get("VE_ROOT") or globs.get("VE_ROOT")
    if not private or not root:
        raise VzFail(SYSTEM_ERROR, "VE_PRIVATE or VE_ROOT is not set")
    layout.check_path(Path(expand_veid(private, ct.veid)), "VE_PRIVATE")
    layout.check_path(Path(expand_veid(root, ct.veid)), "VE_ROOT")
    return private, root


def _sample(layout: Layout, ct: Ct, values: dict[str, str]) -> tuple[str | None, Path | None]:
    if ct.conf_path.exists():
        if "config" in values:
            raise VzFail(INVALID_SYNTAX, "Error: --config option can't be used with an existing config file")
        return None, None
    name = values.get("config") or layout.globals().get("CONFIGFILE")
    if not name:
        return None, None
    sample = layout.conf_dir / f"ve-{name}.conf-sample"
    if not sample.is_file():
        raise VzFail(CP_CONFIG, f"Error: config file {sample} not found")
    return name, sample


def cmd_create(layout: Layout, veid: int, args: list[str]) -> int:
    options, rest = parse_long(args, CREATE_SPEC)
    if rest:
        raise VzFail(INVALID_SYNTAX, f"non-option ARGV-elements: {' '.join(rest)}")
    values = {name: value or "" for name, value in options}
    ct = layout.ct(veid)
    ostemplate = values.get("ostemplate") or ct.conf().get("OSTEMPLATE") or layout.globals().get("DEF_OSTEMPLATE")
    if not ostemplate:
        raise VzFail(OSTEMPLATE_NOTSET, "OS template is not specified")
    private_lit, root_lit = _create_paths(layout, ct, values)
    private = Path(expand_veid(private_lit, veid))
    # vzctl 4.x refuses only a private area that is not an empty directory (``dir_empty(fs->private) != 1``):
    # vpsAdmin creates ``<dataset>/private`` (5201 create_private) before ``vzctl create`` fills it.
    if private.is_symlink() or (private.exists() and (not private.is_dir() or any(private.iterdir()))):
        raise VzFail(FS_PRVT_EXISTS, f"Private area already exists in {private}")
    template = find_template(layout, ostemplate)
    if template is None:
        cache = layout.template_dir() / "cache"
        raise VzFail(OSTEMPLATE_NOT_FOUND, f"Cached OS template {cache}/{ostemplate}.tar.gz not found")
    sample_name, sample = _sample(layout, ct, values)
    req = Request()
    for name, value in options:
        if name in ("ipadd", "hostname", "name", "description", "diskspace"):
            add_option(req, name, value or "")
    print(f"Creating container private area ({ostemplate})")
    try:
        _unpack(template, private)
    except (OSError, tarfile.TarError) as exc:
        shutil.rmtree(private, ignore_errors=True)
        raise VzFail(FS_NEW_PRVT, f"Unable to create container private area: {exc}") from None
    if sample is not None:
        shutil.copyfile(sample, ct.conf_path)
    old = ct.conf()
    changes = {"VE_ROOT": root_lit, "VE_PRIVATE": private_lit, "OSTEMPLATE": ostemplate,
               **({"ORIGIN_SAMPLE": sample_name} if sample_name else {}), "VE_LAYOUT": "simfs", **compose(req, old)}
    conffile.save(ct.conf_path, changes)
    Path(expand_veid(root_lit, veid)).mkdir(parents=True, exist_ok=True)
    print("Performing postcreate actions")
    print(f"CT configuration saved to {ct.conf_path}")
    print("Container private area was created")
    return 0


def cmd_destroy(layout: Layout, veid: int, args: list[str]) -> int:
    _flags(args, ())
    ct = layout.ct(veid)
    if ct.running:
        raise VzFail(RUNNING, "Container is currently running. Stop it first.")
    if mounts.is_mounted(ct):
        raise VzFail(FS_MOUNTED, "Container is currently mounted (umount first)")
    private, root = ct.private, ct.root
    if private is not None:
        layout.check_path(private, "VE_PRIVATE")
        print(f"Destroying container private area: {private}")
        if private.is_symlink() or private.is_file():
            private.unlink()
        elif private.exists():
            shutil.rmtree(private)
    for ext in _DESTROYED:
        path = layout.conf_dir / f"{veid}.{ext}"
        if path.exists():
            path.rename(path.with_name(path.name + ".destroyed"))
    if root is not None and root.is_dir() and not root.is_symlink():
        layout.check_path(root, "VE_ROOT")
        with contextlib.suppress(OSError):      # not empty: vzctl leaves it too
            root.rmdir()
    ct.state_path.unlink(missing_ok=True)
    print("Container private area was destroyed")
    return 0
