"""What the VPS and node handlers share: the vz driver of a context, the container's paths, param checks that turn
the driver's :class:`~vpsadmind.vz.InvalidValue` into a :class:`~vpsadmind.errors.ParamError` naming the field,
and the few DB writes several of them make.

Paths as v2.0 computed them (contract 5): ``ve_root`` = ``<vz.vz_root>/root/<veid>``, ``ve_private`` =
``servers.ve_private`` of this node (``vz.ve_private`` when the row has none) with ``%{veid}`` replaced; configs
are ``<vz.vz_conf>/conf/<veid>.{conf,mount,umount}`` and the mounts file ``<vpsadmin.mounts_dir>/<veid>.mounts``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Handler
from vpsadmind.handlers.storage_common import fail, json_output
from vpsadmind.vz import InvalidValue, Vz
from vpsadmind.vz import validate as v

if TYPE_CHECKING:
    from vpsadmind.config import Config, VzConfig
    from vpsadmind.db import Tx
    from vpsadmind.handlers.base import HandlerContext

__all__ = [
    "VZ_SERVICE", "VpsHandler", "checked", "fail", "forget_delayed_mounts", "install_vz", "mounts_file",
    "remove_file", "rename_destroyed", "scrub_t_param", "ve_private", "ve_root", "vz_for",
]

P = TypeVar("P")
T = TypeVar("T")

#: ``HandlerContext.services`` key of the context's vz driver.
VZ_SERVICE: Final = "vpsadmind.handlers.vps:vz"


def install_vz(ctx: HandlerContext, vz: Vz) -> None:
    """Make ``vz`` the driver of every VPS handler run with ``ctx`` (tests: the fake binaries, short retries)."""
    ctx.services[VZ_SERVICE] = (None, vz)


def vz_for(ctx: HandlerContext) -> Vz:
    """The context's driver: an installed one, else one built from ``ctx.config.vz`` (rebuilt when a reload
    brought a different ``vz`` section)."""
    entry: tuple[VzConfig | None, Vz] | None = ctx.services.get(VZ_SERVICE)
    if entry is not None and (entry[0] is None or entry[0] is ctx.config.vz):
        return entry[1]
    vz = Vz.from_config(ctx.config.vz)
    ctx.services[VZ_SERVICE] = (ctx.config.vz, vz)
    return vz


def checked(check: Callable[[Any], T], value: Any, field: str) -> T:
    """``check(value)`` (a :mod:`vpsadmind.vz.validate` function); its InvalidValue becomes a ParamError that
    names ``field``, so hostile input fails the transaction before any command runs."""
    try:
        return check(value)
    except InvalidValue as exc:
        shown = repr(value)
        raise ParamError(f"{exc.rule} (got {shown[:77] + '...' if len(shown) > 80 else shown})",
                         field=field) from None


def ve_root(config: Config, veid: int) -> str:
    """v2.0's ``ve_root``: ``<vz_root>/root/<veid>``."""
    return v.path(os.path.join(config.vz.vz_root, "root", str(v.veid(veid))), "ve_root")


async def ve_private(ctx: HandlerContext, veid: int) -> str:
    """v2.0's ``ve_private``: this node's ``servers.ve_private`` (the config's ``vz.ve_private`` without one),
    ``%{veid}`` replaced. v2.0 copied the row into its config at start; it is read here when needed."""
    row = await ctx.db.fetchone("SELECT ve_private FROM servers WHERE server_id = %s", (ctx.server_id,))
    template = str(row["ve_private"]) if row is not None and row.get("ve_private") else ctx.config.vz.ve_private
    return v.path(template.replace("%{veid}", str(v.veid(veid))), "ve_private")


def mounts_file(config: Config, veid: int) -> Path:
    """``<mounts_dir>/<veid>.mounts``, the data file of the mount action scripts (issue 5, mounts)."""
    return Path(config.mounts_dir) / f"{v.veid(veid)}.mounts"


def rename_destroyed(path: Path) -> bool:
    """``mv <path> <path>.destroyed`` (v2.0's Destroy and CopyConfigs' rollback); False if there was none."""
    try:
        os.replace(path, path.with_name(path.name + ".destroyed"))
    except FileNotFoundError:
        return False
    return True


def forget_delayed_mounts(ctx: HandlerContext, vps_id: int) -> int:
    """Stop and Restart unregister the VPS from the delayed mounter (contract 10.1): a mount waiting for a
    retry must not be mounted into a container that is going down. Returns how many were registered."""
    from vpsadmind.mount_registry import mounts_for

    return len(mounts_for(ctx).delayed.forget_vps(vps_id))


async def scrub_t_param(db: Tx | Any, t_id: int, value: str = "{}") -> None:
    """Overwrite the transaction's ``t_param`` (a password or a private key must not stay in the database)."""
    await db.execute("UPDATE transactions SET t_param = %s WHERE t_id = %s", (value, t_id))


class VpsHandler(Handler[P]):
    """A handler of one container: ``veid`` is the transaction's ``t_vps`` (v2.0's ``vps_id``), ``vz`` the
    context's driver. ``state`` carries what exec learnt to its rollback: in the same object after a failed
    exec (the self-rollback), else from the saved ``t_output`` (a chain rollback builds a new handler)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state: dict[str, Any] | None = None
        # Raised while the engine builds the handler, like a params error: the transaction fails as
        # "Bad param: vps_id" and neither exec nor rollback runs.
        if self.vps_id is None:
            raise ParamError("the transaction names no VPS (t_vps is NULL)", field="vps_id")
        self.veid: int = checked(v.veid, self.vps_id, "vps_id")

    @property
    def vz(self) -> Vz:
        return vz_for(self.ctx)

    def saved_state(self) -> dict[str, Any]:
        """What exec recorded: its live state, else its saved output (``{}`` when there is none)."""
        if self.state is not None:
            return self.state
        return json_output(self.transaction.t_output)


def remove_file(path: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return False
