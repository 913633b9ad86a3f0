"""VPS lifecycle and settings transactions of v2.0 (contract 5.2): 1001-1003 start/stop/restart, 2002 passwd,
2003 resources, 2004 hostname, 2005 DNS resolver, 2006/2007 IP add/del and 2013 OS template.

Every value from ``t_param`` is validated while the params are parsed (``__post_init__``), with the rules of
:mod:`vpsadmind.vz.validate`: hostile input fails the transaction with ``Bad param: <field>: ...`` before any
vzctl runs. The vzctl calls are those of docs/vz.md's mapping table. Each class says in its docstring how it
survives a crash; all of them are safe to run again (``idempotent``), because vzctl's ``set --save`` of the same
value, a start of a running or a stop of a stopped container change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from vpsadmind import system
from vpsadmind.errors import ParamError
from vpsadmind.firewall.addresses import check_version, parse_address
from vpsadmind.firewall.services import network_for
from vpsadmind.firewall.shaper import ShapedIp
from vpsadmind.handlers.base import Outcome, handler, ok
from vpsadmind.handlers.params import NoParams
from vpsadmind.handlers.shaper import ShaperSpec
from vpsadmind.handlers.storage_common import json_output
from vpsadmind.handlers.vps_common import VpsHandler, checked, fail, forget_delayed_mounts, scrub_t_param
from vpsadmind.reporters.vps_status import VpsStatus, collect_one, store
from vpsadmind.vz import ContainerNotFound, InvalidValue, OptionValue
from vpsadmind.vz import validate as v

if TYPE_CHECKING:
    from vpsadmind.db import Tx
    from vpsadmind.engine.model import Result

__all__ = [
    "DnsResolver", "Hostname", "IpAdd", "IpDel", "OsTemplate", "Passwd", "Resources", "Restart", "Start", "Stop",
]

#: 2003's resources and what vzctl takes for each (v2.0: cpu N -> --cpus N --cpulimit N*100, MiB otherwise).
RESOURCES: Final = ("cpu", "memory", "swap")
_MAX_CPUS: Final = 4096
_MAX_MIB: Final = 2**40


# ------------------------------------------------------------------------------------------------------------
# 1001 Start, 1002 Stop, 1003 Restart


@dataclass(frozen=True, slots=True)
class OnbootParams:
    onboot: Any = None  # v2.0's API sends it; the daemon always sets onboot (yes on start, no on stop)


class _StatusHandler(VpsHandler[Any]):
    """Collects ``vps_status`` after exec (so that post_save only writes: no command runs inside the save's DB
    transaction) and upserts it in post_save, as v2.0 did for start, stop and restart."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._status: VpsStatus | None = None

    async def _collect(self) -> None:
        self._status = await collect_one(self.vz, self.veid)

    async def post_save(self, tx: Tx, result: Result) -> None:
        if self._status is not None:
            await store(tx, self._status)

    async def _report_rollback(self) -> None:
        """A rollback has no post_save: the status it leaves is stored at once. Best effort, as the reporter:
        a database hiccup must not turn a finished rollback into a fatal chain."""
        try:
            await store(self.ctx.db, await collect_one(self.vz, self.veid))
        except Exception as exc:
            self.log.warning("vps status not stored after rollback", veid=self.veid, error=str(exc))


@handler(1001)
class Start(_StatusHandler):
    """``vzctl start`` (exit 32 = already running is fine), then ``set --onboot yes --save``; the pair is tried
    3 times, 5 s apart. Rollback stops the container again (``--onboot no``), unless it was running before:
    v2.0 stopped it anyway, which turned a start of a running VPS that the chain rolled back into an outage.

    Crash: idempotent, a second start of the running container is accepted by vzctl's exit 32. That re-run
    takes "running" for the state before, so a later rollback leaves the VPS up (the safe side)."""

    Params = OnbootParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        started = await self.vz.start(self.veid, onboot=True)
        self.state = {"was_running": not started}
        await self._collect()
        return ok(**self.state)

    async def rollback(self) -> Outcome | None:
        if self.saved_state().get("was_running"):
            return ok(note="the VPS was running before this start, so it keeps running")
        forget_delayed_mounts(self.ctx, self.veid)
        try:
            await self.vz.stop(self.veid, onboot=False)
        except ContainerNotFound:  # the start failed because there is no container: nothing to stop
            return ok(note="no such container, nothing to stop")
        await self._report_rollback()
        return None


@handler(1002)
class Stop(_StatusHandler):
    """Forgets the VPS's delayed mounts, then ``vzctl stop`` and ``set --onboot no --save`` (3 attempts; a
    stopped container is fine: vzctl exits 0). Rollback starts it again (``--onboot yes``) if it was running.

    Crash: idempotent. A re-run after the stop finds the container stopped, so its rollback would not start
    it: the one case where a rolled-back chain leaves a VPS down that was running."""

    Params = NoParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        forgotten = forget_delayed_mounts(self.ctx, self.veid)
        self.state = {"was_running": await self.vz.is_running(self.veid)}
        await self.vz.stop(self.veid, onboot=False)
        await self._collect()
        return ok(**self.state, delayed_mounts_forgotten=forgotten)

    async def rollback(self) -> Outcome | None:
        if not self.saved_state().get("was_running", True):
            return ok(note="the VPS was not running before this stop")
        await self.vz.start(self.veid, onboot=True)
        await self._report_rollback()
        return None


@handler(1003)
class Restart(_StatusHandler):
    """Forgets the delayed mounts, ``vzctl restart`` (one attempt, starts a stopped container too), then
    ``set --onboot yes --save``. No rollback (as v2.0: a restart cannot be undone).

    Crash: idempotent, the container is restarted once more."""

    Params = OnbootParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        forgotten = forget_delayed_mounts(self.ctx, self.veid)
        await self.vz.restart(self.veid, onboot=True)
        await self._collect()
        return ok(delayed_mounts_forgotten=forgotten)


# ------------------------------------------------------------------------------------------------------------
# 2002 Passwd


@dataclass(frozen=True, slots=True)
class PasswdParams:
    user: str = "root"
    # Optional so that a chain rollback can parse the scrubbed ``{}``; exec requires it. Never in a repr.
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        checked(v.user, self.user, "user")
        if self.password is not None and not isinstance(self.password, str):  # pragma: no cover - parser's job
            raise ParamError("expected a string", field="password")


@handler(2002)
class Passwd(VpsHandler[PasswdParams]):
    """``vzctl set <veid> --userpasswd user:password`` (not saved; vzctl writes it inside the container).

    The password never reaches a log, an error or ``t_output``: the driver shows ``***`` in every error, the
    password is checked here without quoting it, and the command is kept out of the worker's process list
    (``vpsadmindctl status`` shows the running command as a transaction's step). ``t_param`` becomes ``{}``
    in post_save, inside the result's DB transaction, and also when exec failed (in the rollback: v2.0 ran
    post_save even on failure, this engine does not). No rollback otherwise (a password cannot be restored).

    Crash: idempotent, the same password is set again (t_param still holds it, as the save never happened)."""

    Params = PasswdParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        p = self.params
        if p.password is None:
            raise fail("Bad param: password: missing (t_param was already scrubbed)", field="password")
        try:
            v.password(p.password)
        except InvalidValue as exc:
            raise fail(f"Bad param: password: {exc.rule} (value not shown)", field="password") from None
        # a private process group: the worker's group would show ``--userpasswd user:password`` as the step
        token = system.track(system.ProcessGroup())
        try:
            await self.vz.set_password(self.veid, p.user, p.password)
        finally:
            system.untrack(token)
        return ok(user=p.user)

    async def rollback(self) -> Outcome | None:
        await scrub_t_param(self.ctx.db, self.transaction.t_id)
        return ok(note="a password cannot be restored; t_param scrubbed")

    async def post_save(self, tx: Tx, result: Result) -> None:
        await scrub_t_param(tx, self.transaction.t_id)


# ------------------------------------------------------------------------------------------------------------
# 2003 Resources


@dataclass(frozen=True, slots=True)
class ResourceItem:
    resource: str
    value: int
    original: int | None = None


def _check_amount(resource: str, value: int, where: str) -> None:
    low, high = (1, _MAX_CPUS) if resource == "cpu" else (0, _MAX_MIB)
    if not low <= value <= high:
        raise ParamError(f"must be between {low} and {high} for {resource}, got {value}", field=where)


@dataclass(frozen=True, slots=True)
class ResourcesParams:
    resources: list[ResourceItem]

    def __post_init__(self) -> None:
        if not self.resources:
            raise ParamError("at least one resource is needed", field="resources")
        seen: set[str] = set()
        for i, item in enumerate(self.resources):
            if item.resource not in RESOURCES:
                raise ParamError(f"must be one of {', '.join(RESOURCES)}, got {item.resource!r:.40}",
                                 field=f"resources[{i}].resource")
            if item.resource in seen:
                raise ParamError("given twice", field=f"resources[{i}].resource")
            seen.add(item.resource)
            _check_amount(item.resource, item.value, f"resources[{i}].value")
            if item.original is not None:
                _check_amount(item.resource, item.original, f"resources[{i}].original")


def resource_options(items: list[ResourceItem], *, original: bool = False) -> dict[str, OptionValue]:
    """vzctl set options for the items' values (or originals; items without one are left out)."""
    opts: dict[str, OptionValue] = {}
    for item in items:
        value = item.original if original else item.value
        if value is None:
            continue
        if item.resource == "cpu":
            opts["cpus"] = value
            opts["cpulimit"] = value * 100
        elif item.resource == "memory":
            opts["ram"] = f"{value}M"
        else:
            opts["swap"] = f"{value}M"
    return opts


@handler(2003)
class Resources(VpsHandler[ResourcesParams]):
    """One ``vzctl set --cpus N --cpulimit N*100 --ram <M>M --swap <M>M --save`` with the resources given (v2.0
    passed the same options); rollback applies the ``original`` values the same way. A running container gets
    the new limits at once (vzctl applies UBC/CPU settings live). Crash: idempotent."""

    Params = ResourcesParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        await self.vz.set(self.veid, resource_options(self.params.resources))
        return None

    async def rollback(self) -> Outcome | None:
        opts = resource_options(self.params.resources, original=True)
        if not opts:
            return ok(note="no original values to restore")
        await self.vz.set(self.veid, opts)
        return None


# ------------------------------------------------------------------------------------------------------------
# 2004 Hostname, 2005 DnsResolver, 2013 OsTemplate


@dataclass(frozen=True, slots=True)
class HostnameParams:
    hostname: str
    original: str | None = None

    def __post_init__(self) -> None:
        checked(v.hostname, self.hostname, "hostname")
        if self.original is not None:
            checked(v.hostname, self.original, "original")


@handler(2004)
class Hostname(VpsHandler[HostnameParams]):
    """``vzctl set --hostname H --save`` (vzctl also writes it inside a running container); rollback sets
    ``original``. Crash: idempotent."""

    Params = HostnameParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        await self.vz.set(self.veid, {"hostname": self.params.hostname})
        return None

    async def rollback(self) -> Outcome | None:
        if self.params.original is None:
            return ok(note="no original hostname to restore")
        await self.vz.set(self.veid, {"hostname": self.params.original})
        return None


@dataclass(frozen=True, slots=True)
class DnsParams:
    nameserver: list[str]
    original: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.nameserver:
            raise ParamError("at least one address is needed", field="nameserver")
        for i, addr in enumerate(self.nameserver):
            checked(v.nameserver, addr, f"nameserver[{i}]")
        for i, addr in enumerate(self.original or []):
            checked(v.nameserver, addr, f"original[{i}]")


@handler(2005)
class DnsResolver(VpsHandler[DnsParams]):
    """``vzctl set --nameserver a --nameserver b --save``: the list replaces ``NAMESERVER``. Rollback sets
    ``original``; an empty original (a new VPS had none) removes ``NAMESERVER`` from the conf, where v2.0 passed
    an empty ``--nameserver ""``. Crash: idempotent."""

    Params = DnsParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        await self.vz.set(self.veid, {"nameserver": list(self.params.nameserver)})
        return None

    async def rollback(self) -> Outcome | None:
        if self.params.original:
            await self.vz.set(self.veid, {"nameserver": list(self.params.original)})
            return None
        conf = self.vz.read_conf(self.veid)
        if conf.remove("NAMESERVER"):
            self.vz.write_conf(self.veid, conf)
        return ok(note="no original nameservers: NAMESERVER removed")


@dataclass(frozen=True, slots=True)
class OsTemplateParams:
    os_template: str
    original: str | None = None

    def __post_init__(self) -> None:
        checked(lambda x: v.name(x, "os_template"), self.os_template, "os_template")
        if self.original is not None:
            checked(lambda x: v.name(x, "original"), self.original, "original")


@handler(2013)
class OsTemplate(VpsHandler[OsTemplateParams]):
    """``vzctl set --ostemplate T --save`` (the name only: a reinstall is create/destroy); rollback sets
    ``original``. Crash: idempotent."""

    Params = OsTemplateParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        await self.vz.set(self.veid, {"ostemplate": self.params.os_template})
        return None

    async def rollback(self) -> Outcome | None:
        if self.params.original is None:
            return ok(note="no original template to restore")
        await self.vz.set(self.veid, {"ostemplate": self.params.original})
        return None


# ------------------------------------------------------------------------------------------------------------
# 2006 IpAdd, 2007 IpDel


@dataclass(frozen=True, slots=True)
class _IpBase:
    addr: str
    version: int
    shaper: ShaperSpec | None = None

    def _check(self, registering: bool, flag: str) -> None:
        check_version(self.version)
        parse_address(self.addr, self.version)
        checked(lambda x: v.ip(x, "addr"), self.addr, "addr")
        if registering and self.shaper is None:
            raise ParamError(f"required when {flag} is true", field="shaper")

    def shaped(self) -> ShapedIp:
        assert self.shaper is not None
        s = self.shaper
        return ShapedIp(parse_address(self.addr, self.version), s.class_id, s.max_tx, s.max_rx)


@dataclass(frozen=True, slots=True)
class IpAddParams(_IpBase):
    register: bool = False

    def __post_init__(self) -> None:
        self._check(self.register, "register")


@dataclass(frozen=True, slots=True)
class IpDelParams(_IpBase):
    unregister: bool = False

    def __post_init__(self) -> None:
        self._check(self.unregister, "unregister")


async def _ip_add(h: VpsHandler[Any], p: _IpBase, register: bool) -> Outcome:
    """v2.0's IpAdd: shaper class and accounting rules first (when registering), then ``--ipadd``."""
    out: dict[str, Any] = {}
    if register:
        net = network_for(h.ctx)
        await net.shaper.set(p.shaped())
        out["rules_added"] = await net.firewall.register(p.shaped().addr)
    await h.vz.set(h.veid, {"ipadd": v.ip(p.addr, "addr")})
    return ok(**out)


async def _ip_del(h: VpsHandler[Any], p: _IpBase, unregister: bool) -> Outcome:
    """v2.0's IpDel: shaper class and accounting rules away first (when unregistering), then ``--ipdel``. The
    address list as it was goes into t_output (``ip_order``) for the rollback."""
    out: dict[str, Any] = {"ip_order": _ip_list(h)}
    if unregister:
        net = network_for(h.ctx)
        await net.shaper.unset(p.shaped())
        out["rules_deleted"] = await net.firewall.unregister(p.shaped().addr)
    await h.vz.set(h.veid, {"ipdel": v.ip(p.addr, "addr")})
    return ok(**out)


def _ip_list(h: VpsHandler[Any]) -> list[str]:
    return (h.vz.read_conf(h.veid).get("IP_ADDRESS") or "").split()


async def _restore_ip_order(h: VpsHandler[Any], before: object) -> bool:
    """After IpDel's rollback re-added its address (vzctl appends it): the order the list had, which decides
    the container's first address, its source address on venet. Only when the list holds the same addresses,
    in one ``vzctl set --ipdel all --ipadd ...`` (found by the soak of issue 9: a failed migration moved the
    first address)."""
    if not isinstance(before, list) or not all(isinstance(a, str) for a in before):
        return False
    now = _ip_list(h)
    if now == before or sorted(now) != sorted(before):
        return False
    await h.vz.set(h.veid, {"ipdel": "all", "ipadd": [v.ip(a, "ip_order") for a in before]})
    return True


@handler(2006)
class IpAdd(VpsHandler[IpAddParams]):
    """With ``register``: the shaper's class, filters and qdisc (as 2010) and the accounting rules (as 2014),
    then ``vzctl set --ipadd A --save``. Rollback is the IpDel path. Crash: idempotent (the shaper replaces its
    objects, the firewall adds no rule twice, vzctl merges the address list)."""

    Params = IpAddParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        return await _ip_add(self, self.params, self.params.register)

    async def rollback(self) -> Outcome | None:
        return await _ip_del(self, self.params, self.params.register)


@handler(2007)
class IpDel(VpsHandler[IpDelParams]):
    """With ``unregister``: the shaper's objects (as 2011) and the accounting rules (as 2015) away, then
    ``vzctl set --ipdel A --save``. Rollback is the IpAdd path. Crash: idempotent."""

    Params = IpDelParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        return await _ip_del(self, self.params, self.params.unregister)

    async def rollback(self) -> Outcome | None:
        out = await _ip_add(self, self.params, self.params.unregister)
        if await _restore_ip_order(self, json_output(self.transaction.t_output).get("ip_order")):
            out.output["ip_order_restored"] = True
        return out
