"""Vps::Features (8001, contract 10.5): iptables, tun, fuse, nfs, ppp, bridge and KVM in a container.

The v2.0 mechanism is kept: OpenVZ settings (netfilter, capabilities, features, device permissions) in the
conf, then the device nodes created **inside** the container with ``vzctl exec2``:

=========  ========================================================  ======================================
feature    vzctl when on (off)                                       inside the container after the start
=========  ========================================================  ======================================
iptables   ``--netfilter full`` (``stateless``)                      --
tun        ``--capability net_admin:on``, ``--devices c:10:200:rw``  ``mkdir -p /dev/net``, ``mknod
           (``net_admin:off``, ``c:10:200:none``)                    /dev/net/tun c 10 200``, ``chmod 600``
fuse       ``--devices c:10:229:rw`` (``none``)                      ``mknod /dev/fuse c 10 229``
nfs        ``--features nfsd:on --features nfs:on`` (``off``)        --
ppp        ``--features ppp:on``, ``--devices c:108:0:rw`` (off)     ``mknod /dev/ppp c 108 0``, ``chmod 600``
bridge     ``--features bridge:on`` (``off``)                        --
kvm        ``--devices c:10:232:rw`` (``none``)                      ``mknod /dev/kvm c 10 232``
=========  ========================================================  ======================================

Always ``--numiptent 1000``. A ``mknod`` of a node that exists fails with 1 and is accepted (v2.0 accepted
``vzctl exec``'s 8 for it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from vpsadmind.engine.model import Direction
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Outcome, Recovery, handler, ok
from vpsadmind.handlers.vps_common import VpsHandler
from vpsadmind.vz import OptionValue

__all__ = ["FEATURES", "Features", "feature_options", "device_commands"]

#: The API's feature names (``models/vps_feature.rb`` of v2.0, kvm added 2015-11-24).
FEATURES: Final = ("iptables", "tun", "fuse", "nfs", "ppp", "bridge", "kvm")

#: Seconds between the start and the device nodes (v2.0's ``sleep(3)``: the container's init populates /dev).
START_SETTLE: float = 3.0

# argv run inside the container (exec2 quotes each word); the accepted exit codes besides 0
_NODES: Final[dict[str, tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]]] = {
    "tun": ((("mkdir", "-p", "/dev/net"), ()), (("mknod", "/dev/net/tun", "c", "10", "200"), (1,)),
            (("chmod", "600", "/dev/net/tun"), ())),
    "fuse": ((("mknod", "/dev/fuse", "c", "10", "229"), (1,)),),
    "ppp": ((("mknod", "/dev/ppp", "c", "108", "0"), (1,)), (("chmod", "600", "/dev/ppp"), ())),
    "kvm": ((("mknod", "/dev/kvm", "c", "10", "232"), (1,)),),
}


@dataclass(frozen=True, slots=True)
class FeatureState:
    enabled: bool
    original: bool


@dataclass(frozen=True, slots=True)
class FeaturesParams:
    features: dict[str, FeatureState]

    def __post_init__(self) -> None:
        for name in self.features:
            if name not in FEATURES:
                raise ParamError(f"unknown feature, expected one of {', '.join(FEATURES)}", field=f"features.{name}")
        for name in FEATURES:
            if name not in self.features:
                raise ParamError("missing (v2.0 sends every feature)", field=f"features.{name}")

    def wanted(self, key: str) -> dict[str, bool]:
        """``{feature: on}`` for ``enabled`` or ``original``."""
        return {name: getattr(self.features[name], key) for name in FEATURES}


def _switch(on: bool) -> str:
    return "on" if on else "off"


def feature_options(on: dict[str, bool]) -> dict[str, OptionValue]:
    """The ``vzctl set`` options of v2.0's Features for the wanted states."""
    features = [f"bridge:{_switch(on['bridge'])}", f"nfsd:{_switch(on['nfs'])}", f"nfs:{_switch(on['nfs'])}",
                f"ppp:{_switch(on['ppp'])}"]
    devices = [f"c:10:200:{'rw' if on['tun'] else 'none'}", f"c:10:229:{'rw' if on['fuse'] else 'none'}",
               f"c:108:0:{'rw' if on['ppp'] else 'none'}", f"c:10:232:{'rw' if on['kvm'] else 'none'}"]
    return {"features": features, "capability": [f"net_admin:{_switch(on['tun'])}"],
            "netfilter": "full" if on["iptables"] else "stateless", "numiptent": 1000, "devices": devices}


def device_commands(on: dict[str, bool]) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """The commands that create the device nodes of the enabled features, in v2.0's order."""
    return [cmd for name in ("tun", "fuse", "ppp", "kvm") if on[name] for cmd in _NODES[name]]


@handler(8001)
class Features(VpsHandler[FeaturesParams]):
    """Remembers whether the container runs, stops it (features, capabilities and netfilter need a restart,
    and with ``--setmode`` vzctl would run the mount scripts twice), sets the options of the ``enabled``
    states, starts it, waits :data:`START_SETTLE` seconds, creates the device nodes inside, then brings it back
    to the state it had: a stopped container is stopped again (with a plain ``vzctl stop``, so its onboot
    stays). Rollback does the same with the ``original`` states.

    Crash: not idempotent as such, because the interrupted run may have stopped the container and a re-run
    would take "stopped" for its original state. ``recover`` re-runs, taking ``ONBOOT="yes"`` as "was
    running": start (1001) sets it and stop (1002) clears it, so it is vpsAdmin's own record of the state the
    VPS should be in."""

    Params = FeaturesParams

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._assume_running = False

    async def exec(self) -> Outcome | None:
        return await self._apply(self.params.wanted("enabled"))

    async def rollback(self) -> Outcome | None:
        return await self._apply(self.params.wanted("original"))

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        self._assume_running = self.vz.read_conf(self.veid).get("ONBOOT") == "yes"
        return Recovery.RERUN

    async def _apply(self, on: dict[str, bool]) -> Outcome:
        vz, veid = self.vz, self.veid
        was_running = await vz.is_running(veid) or self._assume_running
        await vz.stop(veid)
        await vz.set(veid, feature_options(on))
        await vz.start(veid)
        await asyncio.sleep(START_SETTLE)
        nodes = []
        for argv, accept in device_commands(on):
            await vz.exec(veid, list(argv), accept=(0, *accept))
            if argv[0] == "mknod":
                nodes.append(argv[1])
        if not was_running:
            await vz.stop(veid)
        return ok(was_running=was_running, device_nodes=nodes)
