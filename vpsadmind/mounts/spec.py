"""The mount hash of ``t_param`` and of the mounts data file (contract 10.1, v2-details 4.6), validated.

Every value here ends up in a command line (``mount``/``umount`` argv) or a path below the VPS root, so each one
is checked before anything runs, and a failure names the field (``mounts[2].dst``):

* ``dst`` follows the API's rule (``[A-Za-z0-9_-/.]{3,500}``, absolute, no ``.``/``..``/empty component, no
  trailing slash). Quotes, spaces and newlines are refused; the path is still walked component by component at
  mount time (:mod:`vpsadmind.mounts.paths`), because the container's own files are hostile;
* ``mount_opts``/``umount_opts`` were shell text in v2.0 (interpolated into ``mount <opts> ...``). Here they are
  split on blanks into argv words and each word must be a known, harmless option: ``-a``, ``--move``,
  ``-o remount``, ``X-mount.mkdir`` and the like would act outside the one target we resolved;
* pool and dataset names go through the ZFS name rules, ``src_node_addr`` must be an IP address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from vpsadmind.errors import ParamError
from vpsadmind.handlers.params import parse_params
from vpsadmind.handlers.storage_common import (
    check_component,
    check_dataset,
    check_relative,
    check_snapshot,
    mount_clone_path,
)

__all__ = [
    "MODES",
    "MOUNT_TYPES",
    "ON_START_FAIL",
    "MountOptions",
    "MountSpec",
    "MountsParams",
    "check_dst",
    "parse_mount_opts",
    "parse_mounts",
    "parse_umount_opts",
]

#: ``mounts.on_start_fail`` enum names (0 skip, 1 mount_later, 2 fail_start, 3 wait_for_mount).
ON_START_FAIL: Final = ("skip", "mount_later", "fail_start", "wait_for_mount")
MOUNT_TYPES: Final = ("dataset_local", "dataset_remote", "snapshot_local", "snapshot_remote")
MODES: Final = ("ro", "rw")

OnStartFail = Literal["skip", "mount_later", "fail_start", "wait_for_mount"]
MountType = Literal["dataset_local", "dataset_remote", "snapshot_local", "snapshot_remote"]
Mode = Literal["ro", "rw"]

# The API's rule for ``mounts.dst`` (models/mount.rb): these characters only, 3 to 500 of them.
_DST_RE: Final = re.compile(r"^[A-Za-z0-9_\-/.]{3,500}$")
# A word of an option list (``vers=3``, ``nolock``, ``timeo=600``): no quotes, blanks, slashes or ``$``.
_OPT_ITEM_RE: Final = re.compile(r"^[A-Za-z0-9_.:=+-]{1,100}$")
# ``-o`` items that would change what or where mount(8) mounts, or run a helper of the option's choosing.
_FORBIDDEN_ITEMS: Final = frozenset({
    "remount", "move", "rbind", "loop", "defaults", "owner", "user", "users", "group",
    "shared", "rshared", "private", "rprivate", "slave", "rslave", "unbindable", "runbindable",
})
_FORBIDDEN_PREFIXES: Final = ("x-", "make-", "helper=", "uhelper=", "offset=", "sizelimit=", "loop=", "comment=")
_MOUNT_FLAGS: Final = frozenset({"-n", "--no-mtab", "-v", "--verbose", "-s", "--sloppy"})
_FSTYPES: Final = frozenset({"nfs", "nfs4", "zfs"})
_UMOUNT_FLAGS: Final = frozenset({"-f", "--force", "-l", "--lazy", "-n", "--no-mtab", "-v", "--verbose"})


@dataclass(frozen=True, slots=True)
class MountOptions:
    """``mount_opts`` as argv: pass-through ``flags``, ``bind``, the ``-t`` type and the ``-o`` items."""

    flags: tuple[str, ...] = ()
    bind: bool = False
    fstype: str | None = None
    options: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The words for a non-bind mount (``-n -t nfs -overs=3``), in a fixed order."""
        out = list(self.flags)
        if self.fstype:
            out += ["-t", self.fstype]
        if self.options:
            out.append("-o" + ",".join(self.options))
        return out


def _option_items(text: str, where: str) -> list[str]:
    items = text.split(",")
    for item in items:
        low = item.lower()
        if not _OPT_ITEM_RE.match(item):
            raise ParamError(f"mount option {item!r:.60} is not allowed (letters, digits and _.:=+- only)",
                             field=where)
        if low in _FORBIDDEN_ITEMS or low.startswith(_FORBIDDEN_PREFIXES):
            raise ParamError(f"mount option {item!r} is not allowed here", field=where)
    return items


def parse_mount_opts(text: str, where: str = "mount_opts") -> MountOptions:
    """Split ``mount_opts`` into words and accept only known options (see the module docstring)."""
    words = _words(text, where)
    flags: list[str] = []
    options: list[str] = []
    bind = False
    fstype: str | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("--bind", "-B"):
            bind = True
        elif word in _MOUNT_FLAGS:
            flags.append(word)
        elif word in ("-t", "--types", "-o", "--options"):
            if i + 1 >= len(words):
                raise ParamError(f"{word} needs a value", field=where)
            i += 1
            if word in ("-t", "--types"):
                fstype = _fstype(words[i], where)
            else:
                options += _option_items(words[i], where)
        elif word.startswith("-o") and len(word) > 2:
            options += _option_items(word[2:], where)
        elif word.startswith("-t") and len(word) > 2:
            fstype = _fstype(word[2:], where)
        else:
            raise ParamError(f"mount option {word!r:.60} is not allowed", field=where)
        i += 1
    if "bind" in options:  # ``-o bind`` is ``--bind``
        bind = True
        options = [o for o in options if o != "bind"]
    return MountOptions(tuple(flags), bind, fstype, tuple(options))


def _fstype(value: str, where: str) -> str:
    if value not in _FSTYPES:
        raise ParamError(f"filesystem type {value!r:.40} is not allowed (one of {', '.join(sorted(_FSTYPES))})",
                         field=where)
    return value


def parse_umount_opts(text: str, where: str = "umount_opts") -> tuple[str, ...]:
    words = _words(text, where)
    for word in words:
        if word not in _UMOUNT_FLAGS:
            raise ParamError(f"umount option {word!r:.60} is not allowed (one of "
                             f"{', '.join(sorted(_UMOUNT_FLAGS))})", field=where)
    return tuple(words)


def _words(text: str, where: str) -> list[str]:
    if len(text) > 255:  # VARCHAR(255) in the API
        raise ParamError("longer than 255 characters", field=where)
    if any(ord(c) < 32 and c not in " \t" or c in "\"'`$\\;|&<>(){}*?[]~#!" for c in text):
        raise ParamError(f"{text!r:.60} contains a quote, a shell or control character", field=where)
    return text.split()


def check_dst(value: str, where: str = "dst") -> str:
    """``dst``: absolute, the API's characters, no ``.``/``..``/empty component, no trailing slash."""
    if not _DST_RE.match(value):
        raise ParamError(f"{value!r:.80} must be 3 to 500 of the characters A-Z a-z 0-9 _ - / . "
                         "(no quotes, blanks or control characters)", field=where)
    if not value.startswith("/"):
        raise ParamError(f"{value!r:.80} must be an absolute path", field=where)
    parts = value[1:].split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ParamError(f"{value!r:.80} must not contain '..', '.', '//' or end with '/'", field=where)
    return value


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One mount hash (keys as v2.0's API sends them); :meth:`check` validates the values."""

    id: int
    on_start_fail: OnStartFail
    type: MountType
    pool_fs: str
    dataset_name: str
    dst: str
    mount_opts: str
    umount_opts: str
    mode: Mode
    src_node_addr: str | None = None
    snapshot_id: int | None = None
    snapshot: str | None = None
    dataset_tree: str | None = None
    branch: str | None = None

    def check(self, where: str) -> None:
        if self.id <= 0:
            raise ParamError("must be a positive mount id", field=f"{where}.id")
        check_dataset(f"{where}.pool_fs", self.pool_fs)
        check_relative(f"{where}.dataset_name", self.dataset_name)
        check_dataset(f"{where}.dataset_name", f"{self.pool_fs}/{self.dataset_name}")
        check_dst(self.dst, f"{where}.dst")
        parse_mount_opts(self.mount_opts, f"{where}.mount_opts")
        parse_umount_opts(self.umount_opts, f"{where}.umount_opts")
        if self.remote:
            self._check_addr(f"{where}.src_node_addr")
        if self.is_snapshot:
            self._check_snapshot(where)

    def _check_addr(self, where: str) -> None:
        if self.src_node_addr is None:
            raise ParamError(f"required for a {self.type} mount", field=where)
        try:
            ipaddress.ip_address(self.src_node_addr)
        except ValueError:
            raise ParamError(f"{self.src_node_addr!r:.60} is not an IP address", field=where) from None

    def _check_snapshot(self, where: str) -> None:
        if self.snapshot_id is None or self.snapshot_id <= 0:
            raise ParamError(f"a positive snapshot id is required for a {self.type} mount",
                             field=f"{where}.snapshot_id")
        mount_clone_path(self.pool_fs, self.snapshot_id)
        if self.snapshot is not None:
            check_snapshot(f"{where}.snapshot", self.snapshot)
        if self.dataset_tree is not None:
            check_component(f"{where}.dataset_tree", self.dataset_tree)
        if self.branch is not None:
            if self.dataset_tree is None:
                raise ParamError("a branch needs its dataset_tree", field=f"{where}.dataset_tree")
            check_component(f"{where}.branch", self.branch)

    @property
    def remote(self) -> bool:
        return self.type.endswith("_remote")

    @property
    def is_snapshot(self) -> bool:
        return self.type.startswith("snapshot_")

    @property
    def effective_mode(self) -> Mode:
        """Snapshot mounts are always read-only (the API sends ``ro``; a clone must not be written to)."""
        return "ro" if self.is_snapshot else self.mode

    def dataset(self) -> str:
        """The local dataset whose ``<mountpoint>/private`` is the source of a local mount."""
        if self.is_snapshot:
            assert self.snapshot_id is not None  # checked
            return mount_clone_path(self.pool_fs, self.snapshot_id)
        return f"{self.pool_fs}/{self.dataset_name}"

    def remote_source(self) -> str:
        """``<addr>:/<pool_fs>/<ds or clone>/private``: v2.0 assumes the remote mountpoint is ``/<name>``."""
        addr = self.src_node_addr or ""
        host = f"[{addr}]" if ":" in addr else addr
        return f"{host}:/{self.dataset()}/private"

    def is_below(self, other: MountSpec) -> bool:
        """Whether this mount's destination lies inside ``other``'s (a child mount)."""
        return self.dst.startswith(other.dst + "/")

    def as_dict(self) -> dict[str, Any]:
        """The hash as the data file and the delayed-mount registry keep it (unset optional keys left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class MountsParams:
    """``t_param`` of 5301-5303: ``{"mounts": [mount hash, ...]}``."""

    mounts: list[MountSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        ids: set[int] = set()
        dsts: set[str] = set()
        for i, m in enumerate(self.mounts):
            m.check(f"mounts[{i}]")
            if m.id in ids:
                raise ParamError(f"mount id {m.id} appears twice", field=f"mounts[{i}].id")
            if m.dst in dsts:
                raise ParamError(f"destination {m.dst} appears twice", field=f"mounts[{i}].dst")
            ids.add(m.id)
            dsts.add(m.dst)


def parse_mounts(data: Any) -> list[MountSpec]:
    """A list of mount hashes (the data file's, a delayed-mount request's), validated; ParamError names the
    field as ``mounts[i].<key>``."""
    return parse_params(MountsParams, {"mounts": data}).mounts
