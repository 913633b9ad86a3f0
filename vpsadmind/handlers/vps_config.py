"""Container creation and configuration files of v2.0 (contract 5.2): 2008 apply config, 3001 create, 3002
destroy, and 4001-4003 copy configs, create root, create config (migration and clone).

Files are written the way vzctl and v2.0 left them, but atomically: a copy goes to a temporary name and is
renamed into place, so a crash never leaves half a conf file. Each class says how it survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vpsadmind import system
from vpsadmind.engine.model import Direction
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Outcome, Recovery, failed, handler, ok
from vpsadmind.handlers.params import NoParams
from vpsadmind.handlers.vps_common import (
    VpsHandler,
    checked,
    fail,
    mounts_file,
    remove_file,
    rename_destroyed,
    ve_private,
    ve_root,
)
from vpsadmind.vz import ConfFile, Vz, expand_veid
from vpsadmind.vz import validate as v
from vpsadmind.vz.conf import atomic_write

if TYPE_CHECKING:
    from vpsadmind.config import Config

__all__ = ["ApplyConfig", "CopyConfigs", "Create", "CreateConfig", "CreateRoot", "Destroy", "config_files",
           "scp_argv"]

#: The per-container files v2.0 copies and destroys, besides the mounts file (``<veid>.<suffix>`` in the conf dir).
CONF_SUFFIXES: Final = ("mount", "umount", "conf")
#: What 4003 writes into an empty conf; a conf with other keys is not one of ours.
_CREATE_CONFIG_KEYS: Final = frozenset({"VE_ROOT", "VE_PRIVATE", "OSTEMPLATE"})


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


# ------------------------------------------------------------------------------------------------------------
# 2008 ApplyConfig


@dataclass(frozen=True, slots=True)
class ApplyConfigParams:
    configs: list[str]
    pool_fs: str | None = None        # v2.0 sends them; the node does not need them
    dataset_name: str | None = None

    def __post_init__(self) -> None:
        for i, name in enumerate(self.configs):
            checked(lambda x: v.name(x, "config sample"), name, f"configs[{i}]")


@handler(2008)
class ApplyConfig(VpsHandler[ApplyConfigParams]):
    """``cp -p <veid>.conf <veid>.conf.backup``, then ``vzctl set --applyconfig NAME --setmode restart --save``
    for each config in order (``ve-NAME.conf-sample``; a running container is restarted when a value needs
    it). Rollback renames the backup over the conf.

    The backup is tagged with this transaction's id (``<veid>.conf.backup.tid``), which makes it idempotent:
    a re-run after a crash first puts its own backup back (the conf may be half applied) and starts over, and
    a rollback restores only a backup this transaction made, never an older one a failed exec found."""

    Params = ApplyConfigParams
    idempotent = True

    def _marker(self) -> Path:
        conf = self.vz.conf_path(self.veid)
        return conf.with_name(conf.name + ".backup.tid")

    def _ours(self) -> bool:
        return _read_text(self._marker()) == str(self.transaction.t_id)

    async def exec(self) -> Outcome | None:
        vz, veid = self.vz, self.veid
        if self._ours() and vz.restore_conf(veid):
            self.log.info("interrupted apply config: conf restored from its backup", veid=veid)
        vz.backup_conf(veid)
        atomic_write(self._marker(), f"{self.transaction.t_id}\n", mode=0o600)
        for name in self.params.configs:
            await vz.applyconfig(veid, name, setmode="restart")
        return ok(applied=list(self.params.configs))

    async def rollback(self) -> Outcome | None:
        if not self._ours():
            return ok(note="this transaction made no backup, the conf is unchanged")
        restored = self.vz.restore_conf(self.veid)
        remove_file(self._marker())
        return ok(restored=restored)


# ------------------------------------------------------------------------------------------------------------
# 3001 Create, 3002 Destroy


@dataclass(frozen=True, slots=True)
class CreateParams:
    template: str
    hostname: str | None = None
    onboot: Any = None  # sent by v2.0's API, ignored (1001 sets onboot)

    def __post_init__(self) -> None:
        checked(lambda x: v.name(x, "template"), self.template, "template")
        if self.hostname is not None:
            checked(v.hostname, self.hostname, "hostname")


def destroy_files(vz: Vz, config: Config, veid: int) -> list[str]:
    """v2.0's Destroy: ``rmdir`` the root, rename ``<veid>.{mount,umount,conf}`` and the mounts file to
    ``*.destroyed``. The private area (a dataset) is the storage transactions' business. Returns what moved."""
    root = ve_root(config, veid)
    try:
        os.rmdir(root)
    except FileNotFoundError:
        pass
    except OSError as exc:  # mounted (a symlink or a busy mount point) or not empty: never delete data here
        raise fail(f"cannot remove the root {root}: {exc.strerror or exc}", path=root) from None
    return [str(p) for p in config_files(vz, config, veid) if rename_destroyed(p)]


def config_files(vz: Vz, config: Config, veid: int) -> list[Path]:
    """``<conf_dir>/<veid>.{mount,umount,conf}`` and ``<mounts_dir>/<veid>.mounts``."""
    return [vz.conf_dir / f"{v.veid(veid)}.{suffix}" for suffix in CONF_SUFFIXES] + [mounts_file(config, veid)]


@handler(3001)
class Create(VpsHandler[CreateParams]):
    """``vzctl create <veid> --ostemplate T [--hostname H] --private <ve_private>`` (the private area is the
    ``private`` directory of the VPS's dataset, which 5201 created empty), then ``vzctl set --applyconfig
    basic --save``. Rollback is 3002 Destroy (the dataset is destroyed by 5201's rollback); a create that
    failed because the container or its private area existed destroys nothing.

    Crash: not idempotent (vzctl refuses a second create with 44). ``recover`` finds a finished create (conf
    and private area of this template) and only applies ``basic`` again; a private area without conf (vzctl
    died while unpacking) fails, so that the chain rolls back and 5201's rollback destroys the dataset."""

    Params = CreateParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._created: bool | None = None  # None: a chain rollback, exec ran in another object

    async def exec(self) -> Outcome | None:
        p, veid = self.params, self.veid
        private = await ve_private(self.ctx, veid)
        self._created = False
        await self.vz.create(veid, ostemplate=p.template, hostname=p.hostname, private=private)
        self._created = True
        await self.vz.applyconfig(veid, "basic", setmode=None)
        return ok(private=private)

    async def rollback(self) -> Outcome | None:
        if self._created is False:
            return ok(note="no container was created")
        moved = await asyncio.to_thread(destroy_files, self.vz, self.ctx.config, self.veid)
        return ok(destroyed=moved)

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        if direction is Direction.ROLLBACK:
            return Recovery.RERUN
        veid, private = self.veid, await ve_private(self.ctx, self.veid)
        conf_path = self.vz.conf_path(veid)
        if not conf_path.exists():
            if Path(private).is_dir() and any(Path(private).iterdir()):
                return failed(f"interrupted create left {private} without a conf; the chain rolls back")
            return Recovery.RERUN
        conf = self.vz.read_conf(veid)
        same = (conf.get("OSTEMPLATE") == self.params.template
                and expand_veid(conf.get("VE_PRIVATE") or "", veid) == private)
        if not same or not (await self.vz.status(veid)).exists:
            return failed(f"{conf_path} exists and is not this create's")
        self._created = True
        await self.vz.applyconfig(veid, "basic", setmode=None)
        return ok(private=private)


@handler(3002)
class Destroy(VpsHandler[NoParams]):
    """No vzctl (as v2.0): ``rmdir <vz_root>/root/<veid>``, rename ``<veid>.{mount,umount,conf}`` and
    ``<mounts_dir>/<veid>.mounts`` to ``*.destroyed``. The dataset is not touched. Irreversible in the API.

    Crash: idempotent, what is already gone or renamed is skipped. A root that cannot be removed (the
    container is still mounted) fails the transaction before any file is renamed."""

    Params = NoParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        moved = await asyncio.to_thread(destroy_files, self.vz, self.ctx.config, self.veid)
        return ok(destroyed=moved)


# ------------------------------------------------------------------------------------------------------------
# 4001 CopyConfigs, 4002 CreateRoot, 4003 CreateConfig


@dataclass(frozen=True, slots=True)
class CopyConfigsParams:
    dst_vps: int
    local: bool = False
    src_node_addr: str | None = None

    def __post_init__(self) -> None:
        checked(v.veid, self.dst_vps, "dst_vps")
        if not self.local:
            if self.src_node_addr is None:
                raise ParamError("required when local is false", field="src_node_addr")
            node_addr(self.src_node_addr)


def node_addr(value: str) -> str:
    """An IP address or a host name (nothing scp could read as an option or a second operand)."""
    try:
        return v.ip(value, "src_node_addr")
    except ValueError:
        return checked(lambda x: v.hostname(x, "src_node_addr"), value, "src_node_addr")


def scp_argv(scp: str, addr: str, src: Path, dst: Path) -> list[str]:
    """``scp -B -p -q <addr>:<src> <dst>``: batch mode (never a password prompt: the cluster's root key of
    transaction 7 authenticates), modes and times kept like ``cp -p``; an IPv6 address in brackets."""
    host = f"[{addr}]" if ":" in addr else addr
    return [scp, "-B", "-p", "-q", f"{host}:{src}", str(dst)]


def _copy_local(src: Path, dst: Path) -> bool:
    """``cp -p src dst`` through a temporary name; False if ``src`` does not exist."""
    tmp = dst.with_name(f".{dst.name}.copy")
    try:
        shutil.copy2(src, tmp)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if src.exists():
            raise
        return False
    os.replace(tmp, dst)
    return True


@handler(4001)
class CopyConfigs(VpsHandler[CopyConfigsParams]):
    """Copies ``<veid>.{mount,umount,conf}`` and ``<mounts_dir>/<veid>.mounts`` to the ``dst_vps`` names:
    locally (``cp -p``), or from ``src_node_addr`` with scp (exit 1, "no such file", is accepted: a VPS without
    mounts has no scripts). The conf must have arrived; always ``--onboot no``. Rollback renames the copies to
    ``*.destroyed``. Files arrive under a temporary name and are renamed into place. When the conf names other
    paths than this node's (a new id, or a node with another ``servers.ve_private``), they are set.

    Crash: idempotent, the files are copied again over the earlier copies."""

    Params = CopyConfigsParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        p, src_veid = self.params, self.veid
        if p.local and p.dst_vps == src_veid:
            raise fail("Bad param: dst_vps: a local copy needs another VPS id", field="dst_vps")
        cfg = self.ctx.config
        pairs = list(zip(config_files(self.vz, cfg, src_veid), config_files(self.vz, cfg, p.dst_vps), strict=True))
        copied = []
        for src, dst in pairs:
            if await self._copy(src, dst):
                copied.append(dst.name)
        if not self.vz.conf_path(p.dst_vps).is_file():
            raise fail("CT config does not exist", path=str(self.vz.conf_path(p.dst_vps)))
        moved = await self._own_paths(p.dst_vps)
        await self.vz.set_onboot(p.dst_vps, False)
        return ok(copied=copied, paths_set=moved)

    async def _own_paths(self, veid: int) -> bool:
        """``set --root --private`` when the copied conf names other paths than this node's: a new id (v2.0 did
        it for local copies), or a source node whose ``servers.ve_private`` differs (v2.0 copied those as is,
        which only works when every node has the same layout)."""
        conf = self.vz.read_conf(veid)
        root, private = ve_root(self.ctx.config, veid), await ve_private(self.ctx, veid)
        have = [expand_veid(conf.get(key) or "", veid) for key in ("VE_ROOT", "VE_PRIVATE")]
        if have == [root, private]:
            return False
        await self.vz.set(veid, {"root": root, "private": private})
        return True

    async def _copy(self, src: Path, dst: Path) -> bool:
        if self.params.local:
            return await asyncio.to_thread(_copy_local, src, dst)
        addr = node_addr(self.params.src_node_addr or "")
        tmp = dst.with_name(f".{dst.name}.scp")
        argv = scp_argv(self.ctx.config.bin.get("scp", "scp"), addr, src, tmp)
        done = await system.run(argv, valid_rcs=(0, 1), timeout=600)
        if done.exitstatus != 0 or not tmp.exists():
            remove_file(tmp)
            return False
        os.replace(tmp, dst)
        return True

    async def rollback(self) -> Outcome | None:
        cfg = self.ctx.config
        moved = [p.name for p in config_files(self.vz, cfg, self.params.dst_vps) if rename_destroyed(p)]
        return ok(destroyed=moved)


@handler(4002)
class CreateRoot(VpsHandler[NoParams]):
    """``mkdir <vz_root>/root/<veid>`` (the mount point of the container's private area); rollback removes it
    when it is empty and this transaction made it. Crash: idempotent (an existing directory is fine)."""

    Params = NoParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        root = Path(ve_root(self.ctx.config, self.veid))
        try:
            root.mkdir(mode=0o755)
        except FileExistsError:
            if root.is_symlink() or not root.is_dir():
                raise fail(f"{root} exists and is not a directory", path=str(root)) from None
            self.state = {"existed": True}
            return ok(existed=True)
        self.state = {"existed": False}
        return None

    async def rollback(self) -> Outcome | None:
        if self.saved_state().get("existed"):
            return ok(note="the root existed before, kept")
        root = ve_root(self.ctx.config, self.veid)
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise fail(f"cannot remove {root}: {exc.strerror or exc}", path=root) from None
        return None


@dataclass(frozen=True, slots=True)
class CreateConfigParams:
    os_template: str

    def __post_init__(self) -> None:
        checked(lambda x: v.name(x, "os_template"), self.os_template, "os_template")


@handler(4003)
class CreateConfig(VpsHandler[CreateConfigParams]):
    """An empty ``<veid>.conf``, then ``vzctl set --root R --private P --ostemplate T --save`` (clone: the new
    VPS's conf before its datasets arrive). Rollback deletes the conf. A conf that holds anything else is
    another container's: v2.0 truncated it, this fails instead and its rollback keeps it.

    Crash: idempotent, a conf holding only these three keys is this transaction's and is written again."""

    Params = CreateConfigParams
    idempotent = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._foreign = False

    async def exec(self) -> Outcome | None:
        veid, conf_path = self.veid, self.vz.conf_path(self.veid)
        if conf_path.exists():
            keys = set(ConfFile.load(conf_path).keys())
            if keys - _CREATE_CONFIG_KEYS:
                self._foreign = True
                raise fail(f"{conf_path} exists and belongs to another container", path=str(conf_path))
        atomic_write(conf_path, "")
        await self.vz.set(veid, {"root": ve_root(self.ctx.config, veid),
                                 "private": await ve_private(self.ctx, veid),
                                 "ostemplate": self.params.os_template})
        return None

    async def rollback(self) -> Outcome | None:
        if self._foreign:
            return ok(note="the existing conf is not this transaction's; kept")
        removed = remove_file(self.vz.conf_path(self.veid))
        return ok(removed=removed)
