"""Typed configuration of the node agent.

INTERFACE CONTRACT (the engine relies on these names):
- ``load_config(path) -> Config`` reads YAML (plain keys or v2.0's Ruby-symbol keys such as ``:db:``),
  deep-merges it over the v2.0 defaults, validates types and raises ``ConfigError`` naming file, key path
  and what was expected.
- ``Config.raw`` is the merged plain dict (what ``vpsadmindctl get config`` shows).

How a file is read (``config_from_dict`` does steps 2-6 for an already parsed mapping):

1. YAML is parsed with a safe loader that rejects duplicate keys.
2. A leading ``:`` is stripped from every string key at every level (``:server_id:`` -> ``server_id``).
3. Keys are checked against the schema: unknown keys fail; known obsolete keys (v1 ``handlers``,
   ``backuper``, ``storage.method``, rsync settings, later 2.x keys) stay in ``raw`` and are reported in
   ``Config.warnings``.
4. The file is deep-merged over ``defaults()`` (v2.0's ``IMPLICIT_CONFIG`` plus the new sections); a key named
   ``handlers`` replaces instead of merging, as in v2.0.
5. Every value of the merged tree is type checked; Ruby symbol values (``:type: :node``) lose their colon.
6. The merged tree is mapped into the dataclasses below.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import yaml

from vpsadmind.errors import ConfigError

__all__ = [
    "QueueConfig", "DbConfig", "MqttConfig", "JournalConfig", "LogConfig", "VzConfig", "VpsConfig",
    "NodeConfig", "StorageConfig", "MailerConfig", "ConsoleConfig", "TlsConfig", "TransferConfig",
    "MetricsConfig", "Config", "DEFAULT_QUEUES", "DEFAULT_BIN", "DEFAULT_CONFIG_PATH", "HOST_FORMS",
    "load_config", "config_from_dict", "defaults", "deep_merge", "strip_symbol_keys", "known_keys",
    "is_valid_db_host",
]

DEFAULT_CONFIG_PATH = "/etc/vpsadmin/vpsadmind.yml"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class QueueConfig:
    threads: int
    urgent: int
    start_delay: float = 0.0


# v2.0 queues (contract 4.1) plus the dedicated rollback queue of 2.9.
DEFAULT_QUEUES: dict[str, QueueConfig] = {
    "general": QueueConfig(6, 6, 0),
    "storage": QueueConfig(2, 2, 0),
    "network": QueueConfig(1, 0, 0),
    "vps": QueueConfig(4, 4, 0),
    "zfs_send": QueueConfig(1, 0, 4 * 60 * 60),
    "mail": QueueConfig(2, 2, 0),
    "rollback": QueueConfig(6, 6, 0),
}

# v2.0 ``bin`` section, plus ``zpool`` and ``nc`` which v2.0 called by bare name.
DEFAULT_BIN: dict[str, str] = {
    "cat": "cat", "df": "df", "rm": "rm", "mv": "mv", "cp": "cp", "mkdir": "mkdir", "rmdir": "rmdir",
    "chmod": "chmod", "tar": "tar", "scp": "scp", "rdiff_backup": "rdiff-backup", "rsync": "rsync",
    "iptables": "iptables", "ip6tables": "ip6tables", "git": "git", "zfs": "zfs", "mount": "mount",
    "umount": "umount", "uptime": "uptime", "uname": "uname", "hostname": "hostname",
    "ssh_keygen": "ssh-keygen", "exportfs": "exportfs", "tc": "tc", "zpool": "zpool", "nc": "nc",
}


@dataclass(frozen=True, slots=True)
class DbConfig:
    hosts: list[str]
    user: str | None
    password: str | None  # v2.0 key ``pass``
    name: str | None
    retry_interval: float = 30.0
    connect_timeout: float = 15.0
    read_timeout: float = 15.0
    write_timeout: float = 15.0
    ssl: bool = False
    pool_size: int = 8


@dataclass(frozen=True, slots=True)
class MqttConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    topic_prefix: str = "vpsadmin"
    keepalive: int = 30
    reconnect_interval: float = 2.0


@dataclass(frozen=True, slots=True)
class JournalConfig:
    path: str = "/var/lib/vpsadmind/journal"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"  # auto | console | json


@dataclass(frozen=True, slots=True)
class VzConfig:
    """v2.0 ``vz`` section; ``ve_private`` is overwritten from the DB (``servers.ve_private``) in v2.0."""

    vzctl: str = "vzctl"
    vzlist: str = "vzlist"
    vzquota: str = "vzquota"
    vzmigrate: str = "vzmigrate"
    vz_root: str = "/vz"
    vz_conf: str = "/etc/vz"
    ve_private: str = "/vz/private/%{veid}"


@dataclass(frozen=True, slots=True)
class VpsConfig:
    """v2.0 ``vps.zfs`` and ``vps.migration``; ``sharenfs: true`` becomes ``"on"``, ``false`` ``None``."""

    root_dataset: str = "vz/private"
    sharenfs: str | None = None
    dumpfile: str = "/vz/dump/Dump.%{veid}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """v2.0 ``node`` section: the host keys published by StorePublicKeys and the known_hosts file."""

    pubkey_types: list[str] = field(default_factory=lambda: ["rsa", "dsa"])
    pubkey_path: str = "/etc/ssh/ssh_host_%{type}_key.pub"
    known_hosts: str = "/root/.ssh/known_hosts"


@dataclass(frozen=True, slots=True)
class StorageConfig:
    update_status: bool = True


@dataclass(frozen=True, slots=True)
class MailerConfig:
    smtp_server: str = "localhost"
    smtp_port: int = 25


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    host: str = "localhost"
    port: int = 8081


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: str
    key: str
    ca: str | None = None


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """Dataset transfers between nodes: ``vpsadmind`` (authenticated, framed, optional TLS, see
    vpsadmind/transfer/wire.py) or ``nc``, v2.0's wire format (a plain stream, works with Ruby nodes)."""

    protocol: str = "vpsadmind"  # vpsadmind | nc (v2.0's plain stream, to talk to Ruby nodes)
    tls: TlsConfig | None = None
    stall_timeout: float = 600.0
    rate_limit: int | None = None  # bytes per second, None = unlimited


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = False
    listen: str = "127.0.0.1"
    port: int = 9310


@dataclass(frozen=True, slots=True)
class Config:
    path: str | None
    raw: dict[str, Any]
    db: DbConfig
    server_id: int
    queues: dict[str, QueueConfig]
    check_interval: float = 1.0
    status_interval: float = 30.0
    resources_interval: float = 300.0
    transfers_interval: float = 10.0
    db_version_interval: float = 10.0
    shutdown_timeout: float = 300.0
    handler_modules: list[str] = field(default_factory=list)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    remote_socket: str = "/var/run/vpsadmind.sock"
    bin: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BIN))
    # Added by the loader; the rest of ``vpsadmin.*`` (v2.0 loads several of these from the DB).
    warnings: list[str] = field(default_factory=list)
    domain: str = "vpsfree.cz"
    node_addr: str | None = None
    netdev: str = "eth0"
    max_tx: int | None = None
    max_rx: int | None = None
    node_type: str | None = None  # vpsadmin.type: node | storage | mailer
    fstype: str | None = "zfs"
    update_vps_status: bool = True
    track_transfers: bool = True
    root: str = "/opt/vpsadmind"
    init: bool = True
    mounts_dir: str = "/var/vpsadmin/mounts"
    vz: VzConfig = field(default_factory=VzConfig)
    vps: VpsConfig = field(default_factory=VpsConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    mailer: MailerConfig = field(default_factory=MailerConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


# ------------------------------------------------------------------------------------------------------------
# Defaults


def defaults() -> dict[str, Any]:
    """The built-in configuration as a plain dict: v2.0's ``IMPLICIT_CONFIG`` plus the new sections."""
    queues = {name: {"threads": q.threads, "urgent": q.urgent, "start_delay": q.start_delay}
              for name, q in DEFAULT_QUEUES.items()}
    return {
        "db": {
            "hosts": [], "host": None, "user": None, "pass": None, "name": None, "retry_interval": 30,
            "ssl": False, "connect_timeout": 15, "read_timeout": 15, "write_timeout": 15, "pool_size": 8,
        },
        "vpsadmin": {
            "server_id": None, "domain": "vpsfree.cz", "node_addr": None, "netdev": "eth0",
            "max_tx": None, "max_rx": None, "queues": queues, "urgent_threads": 6,
            "check_interval": 1, "status_interval": 30, "resources_interval": 300, "transfers_interval": 10,
            "update_vps_status": True, "track_transfers": True, "root": "/opt/vpsadmind", "init": True,
            "fstype": "zfs", "type": None, "mounts_dir": "/var/vpsadmin/mounts",
            "handler_modules": [], "shutdown_timeout": 300, "db_version_interval": 10,
        },
        "vz": asdict(VzConfig()),
        "bin": dict(DEFAULT_BIN),
        "vps": {
            "zfs": {"root_dataset": "vz/private", "sharenfs": None},
            "migration": {"dumpfile": "/vz/dump/Dump.%{veid}"},
        },
        "node": {
            "pubkey": {"types": ["rsa", "dsa"], "path": "/etc/ssh/ssh_host_%{type}_key.pub"},
            "known_hosts": "/root/.ssh/known_hosts",
        },
        "storage": {"update_status": True},
        "mailer": asdict(MailerConfig()),
        "console": asdict(ConsoleConfig()),
        "remote": {"socket": "/var/run/vpsadmind.sock"},
        "mqtt": asdict(MqttConfig()),
        "journal": asdict(JournalConfig()),
        "transfer": {"protocol": "vpsadmind", "tls": None, "stall_timeout": 600, "rate_limit": None},
        "metrics": asdict(MetricsConfig()),
        "log": asdict(LogConfig()),
    }


# ------------------------------------------------------------------------------------------------------------
# Value forms

HOST_FORMS = "host, host:port, [ipv6]:port or an absolute unix socket path"
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                          r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_valid_db_host(spec: str) -> bool:
    """True for ``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 address or ``/abs/socket``."""
    if spec.startswith("/"):
        return len(spec) > 1 and "\0" not in spec
    if spec.startswith("["):
        addr, bracket, rest = spec[1:].partition("]")
        if not bracket or not _is_ipv6(addr):
            return False
        return rest == "" or (rest.startswith(":") and _is_port(rest[1:]))
    if spec.count(":") > 1:
        return _is_ipv6(spec)  # bare IPv6 address, default port
    host, colon, port = spec.partition(":")
    if colon and not _is_port(port):
        return False
    return bool(_HOSTNAME_RE.match(host))


def _is_abs_path(text: str) -> bool:
    return text.startswith("/")


def _is_module(text: str) -> bool:
    return bool(_MODULE_RE.match(text))


def _is_queue_name(text: str) -> bool:
    return bool(_QUEUE_NAME_RE.match(text))


def _is_topic_prefix(text: str) -> bool:
    return not any(c in text for c in "+#\0") and not text.startswith("/") and not text.endswith("/")


# ------------------------------------------------------------------------------------------------------------
# Schema

_KIND_TEXT = {
    "int": "an integer", "float": "a number", "bool": "a boolean (true or false)",
    "str": "a non-empty string", "text": "a string", "symbol": "a string", "str_list": "a list of strings",
    "sharenfs": "a string or a boolean",
}


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("str", "symbol"):
        return isinstance(value, str) and value != ""
    if kind == "text":  # passwords and names: YAML turns ``pass: 1234`` into an int, accept it
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if kind == "sharenfs":
        return isinstance(value, str | bool)
    return isinstance(value, list)  # str_list, items checked one by one


@dataclass(frozen=True, slots=True)
class _Leaf:
    kind: str
    nullable: bool = False
    required: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[str], bool] | None = None  # form of a string value, or of each list item
    check_text: str = ""

    def expected(self) -> str:
        text = _KIND_TEXT[self.kind]
        if self.choices:
            text = "one of: " + ", ".join(self.choices)
        elif self.check is not None and self.kind != "str_list":
            text = self.check_text
        elif self.ge is not None and self.le is not None:
            text += f" from {self.ge:g} to {self.le:g}"
        elif self.ge is not None:
            text += f" >= {self.ge:g}"
        elif self.gt is not None:
            text += f" > {self.gt:g}"
        return text + (" or null" if self.nullable else "")

    def in_range(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))


@dataclass(frozen=True, slots=True)
class _Obsolete:
    note: str


@dataclass(frozen=True, slots=True)
class _Section:
    fields: dict[str, _Spec]


@dataclass(frozen=True, slots=True)
class _OptSection:
    """A mapping that may also be null (null = feature off), e.g. ``transfer.tls``."""

    section: _Section


@dataclass(frozen=True, slots=True)
class _MapOf:
    """A mapping of user-chosen names to sections, e.g. ``vpsadmin.queues``."""

    entry: _Section
    name_check: Callable[[str], bool]
    name_text: str


_Spec = _Leaf | _Obsolete | _Section | _OptSection | _MapOf


def _interval() -> _Leaf:
    return _Leaf("float", gt=0)


def _port() -> _Leaf:
    return _Leaf("int", ge=1, le=65535)


def _path(nullable: bool = False, required: bool = False) -> _Leaf:
    return _Leaf("str", nullable=nullable, required=required, check=_is_abs_path,
                 check_text="an absolute path")


_V1_BACKUP = "v1 backup setting; backups are ZFS snapshot transfers since v2.0"
_LATER_2X = "key of vpsAdmind after 2.0 (2.1-2.9); not used by this daemon"
_HANDLERS = _Obsolete("stale v1 handler list; handlers are built in "
                      "(extra ones go to vpsadmin.handler_modules)")

_QUEUE = _Section({
    "threads": _Leaf("int", required=True, ge=1),
    "urgent": _Leaf("int", ge=0),
    "start_delay": _Leaf("float", ge=0),
})

_SCHEMA = _Section({
    "db": _Section({
        "hosts": _Leaf("str_list", check=is_valid_db_host, check_text=HOST_FORMS),
        "host": _Leaf("str", nullable=True, check=is_valid_db_host, check_text=HOST_FORMS),
        "user": _Leaf("text", nullable=True),
        "pass": _Leaf("text", nullable=True),
        "name": _Leaf("text", nullable=True),
        "retry_interval": _interval(),
        "ssl": _Leaf("bool"),
        "connect_timeout": _interval(),
        "read_timeout": _interval(),
        "write_timeout": _interval(),
        "pool_size": _Leaf("int", ge=1),
    }),
    "vpsadmin": _Section({
        "server_id": _Leaf("int", required=True, ge=1),
        "domain": _Leaf("str"),
        "node_addr": _Leaf("str", nullable=True),
        "netdev": _Leaf("str"),
        "max_tx": _Leaf("int", nullable=True, ge=0),
        "max_rx": _Leaf("int", nullable=True, ge=0),
        "type": _Leaf("symbol", nullable=True, choices=("node", "storage", "mailer")),
        "fstype": _Leaf("symbol", nullable=True, choices=("ext4", "zfs", "zfs_compat")),
        "queues": _MapOf(_QUEUE, _is_queue_name, "a queue name of lowercase letters, digits and _"),
        "threads": _Obsolete("legacy v1 key, unused since v2.0; set vpsadmin.queues.<name>.threads"),
        "urgent_threads": _Obsolete("legacy key, unused in v2.0; set vpsadmin.queues.<name>.urgent"),
        "check_interval": _interval(),
        "status_interval": _interval(),
        "resources_interval": _interval(),
        "transfers_interval": _interval(),
        "update_vps_status": _Leaf("bool"),
        "track_transfers": _Leaf("bool"),
        "root": _path(),
        "init": _Leaf("bool"),
        "mounts_dir": _path(),
        "handler_modules": _Leaf("str_list", check=_is_module, check_text="a dotted Python module name"),
        "shutdown_timeout": _Leaf("float", ge=0),
        "db_version_interval": _interval(),
        "backups_mnt_dir": _Obsolete(_V1_BACKUP),
        "restore_target": _Obsolete(_V1_BACKUP),
        "status_log_interval": _Obsolete(_LATER_2X),
        "vps_status_interval": _Obsolete(_LATER_2X),
        "vps_status_log_interval": _Obsolete(_LATER_2X),
        "storage_status_interval": _Obsolete(_LATER_2X),
        "queues_reservation_prune_interval": _Obsolete(_LATER_2X),
    }),
    "vz": _Section({
        "vzctl": _Leaf("str"), "vzlist": _Leaf("str"), "vzquota": _Leaf("str"), "vzmigrate": _Leaf("str"),
        "vz_root": _path(), "vz_conf": _path(), "ve_private": _Leaf("str"),
    }),
    "bin": _Section({name: _Leaf("str") for name in DEFAULT_BIN}),
    "vps": _Section({
        "zfs": _Section({"root_dataset": _Leaf("str"), "sharenfs": _Leaf("sharenfs", nullable=True)}),
        "migration": _Section({
            "dumpfile": _Leaf("str"),
            "rsync": _Obsolete("v1 rsync migration command; v2.0 migrates by ZFS transfers"),
        }),
        "clone": _Obsolete("v1 rsync clone settings; v2.0 clones by ZFS transfers"),
        "stop_timeout": _Obsolete(_LATER_2X),
    }),
    "node": _Section({
        "pubkey": _Section({"types": _Leaf("str_list"), "path": _path()}),
        "known_hosts": _path(),
    }),
    "storage": _Section({
        "update_status": _Leaf("bool"),
        "method": _Obsolete("v1 storage backend selector; v2.0 storage is always ZFS"),
    }),
    "mailer": _Section({"smtp_server": _Leaf("str"), "smtp_port": _port()}),
    "console": _Section({"host": _Leaf("str"), "port": _port()}),
    "remote": _Section({"socket": _path()}),
    "backuper": _Obsolete("v1 backuper section (rdiff-backup/rsync); backups are ZFS transfers since v2.0"),
    "mqtt": _Section({
        "enabled": _Leaf("bool"),
        "host": _Leaf("str"),
        "port": _port(),
        "username": _Leaf("text", nullable=True),
        "password": _Leaf("text", nullable=True),
        "topic_prefix": _Leaf("str", check=_is_topic_prefix,
                              check_text="a topic prefix without wildcards or leading/trailing '/'"),
        "keepalive": _Leaf("int", ge=1),
        "reconnect_interval": _interval(),
    }),
    "journal": _Section({"path": _path()}),
    "transfer": _Section({
        "protocol": _Leaf("str", choices=("nc", "vpsadmind")),
        "tls": _OptSection(_Section({
            "cert": _path(required=True), "key": _path(required=True), "ca": _path(nullable=True),
        })),
        "stall_timeout": _interval(),
        "rate_limit": _Leaf("int", nullable=True, ge=1),
    }),
    "metrics": _Section({"enabled": _Leaf("bool"), "listen": _Leaf("str"), "port": _port()}),
    "log": _Section({
        "level": _Leaf("str", choices=("debug", "info", "warning", "error", "critical")),
        "format": _Leaf("str", choices=("auto", "console", "json")),
    }),
})


def known_keys() -> list[str]:
    """Every dotted key the loader understands (obsolete ones excluded); ``*`` stands for a queue name."""
    out: list[str] = []

    def walk(section: _Section, prefix: str) -> None:
        for name, spec in section.fields.items():
            key = f"{prefix}{name}"
            if isinstance(spec, _Leaf):
                out.append(key)
            elif isinstance(spec, _Section):
                walk(spec, key + ".")
            elif isinstance(spec, _OptSection):
                out.append(key)
                walk(spec.section, key + ".")
            elif isinstance(spec, _MapOf):
                walk(spec.entry, key + ".*.")

    walk(_SCHEMA, "")
    return out


# ------------------------------------------------------------------------------------------------------------
# Helpers shared by the passes


class _Ctx:
    __slots__ = ("path", "warnings")

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.warnings: list[str] = []

    def error(self, key: str | None, message: str, expected: str | None) -> ConfigError:
        return ConfigError(message, path=self.path, key=key or None, expected=expected)


def _join(prefix: str, name: object) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _describe(value: Any, secret: bool = False) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = {int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)
    if secret:
        return f"a {kind}"
    text = repr(value)
    return f"the {kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _mapping_error(ctx: _Ctx, key: str, value: Any, what: str = "a mapping") -> ConfigError:
    return ctx.error(key, f"got {_describe(value)}", what)


def strip_symbol_keys(data: Any, *, path: str | None = None, _key: str = "") -> Any:
    """Copy ``data`` with one leading ``:`` removed from every string key (v2.0's Ruby-symbol keys).

    Raises ``ConfigError`` when a mapping holds both forms of a key (``db`` and ``:db``).
    """
    if isinstance(data, list):
        return [strip_symbol_keys(item, path=path, _key=f"{_key}[{i}]") for i, item in enumerate(data)]
    if not isinstance(data, dict):
        return data
    out: dict[Any, Any] = {}
    for name, value in data.items():
        plain = name[1:] if isinstance(name, str) and name.startswith(":") else name
        key = _join(_key, plain)
        if plain in out:
            raise ConfigError(f"the key is given twice, as {plain!r} and as ':{plain}'", path=path, key=key,
                              expected="each key once")
        out[plain] = strip_symbol_keys(value, path=path, _key=key)
    return out


def deep_merge(base: Mapping[Any, Any], override: Mapping[Any, Any]) -> dict[Any, Any]:
    """v2.0's ``AppConfig#merge``: nested mappings merge, anything else (and ``handlers``) is replaced.

    Neither argument is modified; the result shares no mutable values with ``override``.
    """
    out: dict[Any, Any] = copy.deepcopy(dict(base))
    for name, value in override.items():
        old = out.get(name)
        if isinstance(old, dict) and isinstance(value, Mapping) and name != "handlers":
            out[name] = deep_merge(old, value)
        else:
            out[name] = copy.deepcopy(value)
    return out


# ------------------------------------------------------------------------------------------------------------
# Pass 1: the keys of the file


def _spec_for(section: _Section, name: Any, key: str, ctx: _Ctx) -> _Spec:
    if not isinstance(name, str):
        raise ctx.error(key, f"the key {name!r} is not a string", "string keys")
    spec = section.fields.get(name)
    if spec is not None:
        return spec
    if name == "handlers":
        return _HANDLERS
    known = sorted(n for n, s in section.fields.items() if not isinstance(s, _Obsolete))
    close = difflib.get_close_matches(name, known, n=1)
    hint = f", did you mean {close[0]!r}?" if close else ""
    raise ctx.error(key, f"unknown key{hint}", "one of: " + ", ".join(known))


def _check_keys(node: dict[str, Any], section: _Section, prefix: str, ctx: _Ctx) -> None:
    """Reject unknown keys, note obsolete ones, turn empty (null) sections into ``{}``. Mutates ``node``."""
    for name, value in list(node.items()):
        key = _join(prefix, name)
        spec = _spec_for(section, name, key, ctx)
        if isinstance(spec, _Obsolete):
            ctx.warnings.append(f"{key}: {spec.note}; ignored")
        elif isinstance(spec, _Section | _MapOf) and value is None:
            node[name] = {}  # a section whose keys are all commented out
        elif isinstance(spec, _OptSection) and value is None:
            continue  # feature off
        elif isinstance(spec, _Section | _MapOf | _OptSection):
            if not isinstance(value, dict):
                optional = isinstance(spec, _OptSection)
                raise _mapping_error(ctx, key, value, "a mapping or null" if optional else "a mapping")
            if isinstance(spec, _MapOf):
                _check_map_keys(value, spec, key, ctx)
            else:
                _check_keys(value, spec if isinstance(spec, _Section) else spec.section, key, ctx)


def _check_map_keys(node: dict[Any, Any], spec: _MapOf, prefix: str, ctx: _Ctx) -> None:
    for name, value in list(node.items()):
        key = _join(prefix, name)
        if not isinstance(name, str) or not spec.name_check(name):
            raise ctx.error(key, f"invalid name {name!r}", spec.name_text)
        if value is None:
            node[name] = {}
        elif not isinstance(value, dict):
            raise _mapping_error(ctx, key, value)
        else:
            _check_keys(value, spec.entry, key, ctx)


# ------------------------------------------------------------------------------------------------------------
# Pass 2: the values of the merged tree


def _check_leaf(node: dict[str, Any], name: str, leaf: _Leaf, key: str, ctx: _Ctx) -> None:
    if name not in node or node[name] is None:
        if leaf.required:
            raise ctx.error(key, "missing required key", leaf.expected().removesuffix(" or null"))
        if name in node and not leaf.nullable:
            raise ctx.error(key, "got null", leaf.expected())
        return
    value = node[name]
    secret = name in ("pass", "password")
    if not _kind_ok(leaf.kind, value):
        raise ctx.error(key, f"got {_describe(value, secret)}", leaf.expected())
    if leaf.kind == "symbol" and value.startswith(":"):
        value = node[name] = value[1:]  # ``:type: :node`` - a Ruby symbol value
    if leaf.kind == "str_list":
        _check_items(value, leaf, key, ctx)
        return
    bad = ((leaf.choices and value not in leaf.choices)
           or (leaf.check is not None and isinstance(value, str) and not leaf.check(value))
           or (leaf.kind in ("int", "float") and not leaf.in_range(value)))
    if bad:
        raise ctx.error(key, f"got {_describe(value)}", leaf.expected())


def _check_items(items: list[Any], leaf: _Leaf, key: str, ctx: _Ctx) -> None:
    for i, item in enumerate(items):
        item_key = f"{key}[{i}]"
        if not isinstance(item, str) or item == "":
            raise ctx.error(item_key, f"got {_describe(item)}", "a non-empty string")
        if leaf.check is not None and not leaf.check(item):
            raise ctx.error(item_key, f"got {_describe(item)}", leaf.check_text)


def _check_values(node: dict[str, Any], section: _Section, prefix: str, ctx: _Ctx) -> None:
    for name, spec in section.fields.items():
        key = _join(prefix, name)
        if isinstance(spec, _Leaf):
            _check_leaf(node, name, spec, key, ctx)
        elif isinstance(spec, _Section):
            _check_values(node[name], spec, key, ctx)
        elif isinstance(spec, _OptSection) and node.get(name) is not None:
            _check_values(node[name], spec.section, key, ctx)
        elif isinstance(spec, _MapOf):
            for entry_name, entry in node[name].items():
                _check_values(entry, spec.entry, _join(key, entry_name), ctx)


def _cross_checks(raw: dict[str, Any], ctx: _Ctx) -> None:
    db = raw["db"]
    if not db["hosts"] and not db["host"]:
        raise ctx.error("db.hosts", "no database host configured",
                        "at least one entry in db.hosts, or the legacy db.host")
    if db["host"]:
        ctx.warnings.append("db.host: legacy key; its host is tried after those of db.hosts")
    transfer = raw["transfer"]
    if transfer["tls"] is not None and transfer["protocol"] == "nc":
        raise ctx.error("transfer.tls", "TLS is not available with transfer.protocol 'nc'",
                        "transfer.protocol: vpsadmind, or transfer.tls: null")


# ------------------------------------------------------------------------------------------------------------
# Mapping into the dataclasses


def _pick(cls: Callable[..., _T], section: dict[str, Any]) -> _T:
    """``cls`` built from the keys of ``section`` that are its fields (obsolete keys may sit beside them)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{name: value for name, value in section.items() if name in names})


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _build_db(db: dict[str, Any]) -> DbConfig:
    hosts = list(db["hosts"])
    if db["host"] and db["host"] not in hosts:
        hosts.append(db["host"])  # v2.0 Db: the legacy single host is appended
    return DbConfig(
        hosts=hosts, user=_opt_str(db["user"]), password=_opt_str(db["pass"]), name=_opt_str(db["name"]),
        retry_interval=float(db["retry_interval"]), connect_timeout=float(db["connect_timeout"]),
        read_timeout=float(db["read_timeout"]), write_timeout=float(db["write_timeout"]),
        ssl=db["ssl"], pool_size=db["pool_size"],
    )


def _build_queues(queues: dict[str, Any]) -> dict[str, QueueConfig]:
    return {name: QueueConfig(q["threads"], q.get("urgent", 0), float(q.get("start_delay", 0)))
            for name, q in queues.items()}


def _build_transfer(t: dict[str, Any]) -> TransferConfig:
    tls = None if t["tls"] is None else TlsConfig(t["tls"]["cert"], t["tls"]["key"], t["tls"].get("ca"))
    return TransferConfig(protocol=t["protocol"], tls=tls, stall_timeout=float(t["stall_timeout"]),
                          rate_limit=t["rate_limit"])


def _build_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """The dataclass-valued fields of ``Config`` built from sections other than db and vpsadmin."""
    zfs, sharenfs = raw["vps"]["zfs"], raw["vps"]["zfs"]["sharenfs"]
    mq = raw["mqtt"]
    return {
        "vz": _pick(VzConfig, raw["vz"]),
        "vps": VpsConfig(root_dataset=zfs["root_dataset"],
                         sharenfs="on" if sharenfs is True else (sharenfs or None),
                         dumpfile=raw["vps"]["migration"]["dumpfile"]),
        "node": NodeConfig(pubkey_types=list(raw["node"]["pubkey"]["types"]),
                           pubkey_path=raw["node"]["pubkey"]["path"], known_hosts=raw["node"]["known_hosts"]),
        "storage": StorageConfig(update_status=raw["storage"]["update_status"]),
        "mailer": _pick(MailerConfig, raw["mailer"]),
        "console": _pick(ConsoleConfig, raw["console"]),
        "mqtt": MqttConfig(enabled=mq["enabled"], host=mq["host"], port=mq["port"],
                           username=_opt_str(mq["username"]), password=_opt_str(mq["password"]),
                           topic_prefix=mq["topic_prefix"], keepalive=mq["keepalive"],
                           reconnect_interval=float(mq["reconnect_interval"])),
        "journal": JournalConfig(path=raw["journal"]["path"]),
        "log": _pick(LogConfig, raw["log"]),
        "transfer": _build_transfer(raw["transfer"]),
        "metrics": _pick(MetricsConfig, raw["metrics"]),
    }


def _build(raw: dict[str, Any], path: str | None, warnings: list[str]) -> Config:
    v = raw["vpsadmin"]
    return Config(
        path=path, raw=raw, db=_build_db(raw["db"]), server_id=v["server_id"],
        queues=_build_queues(v["queues"]),
        check_interval=float(v["check_interval"]), status_interval=float(v["status_interval"]),
        resources_interval=float(v["resources_interval"]), transfers_interval=float(v["transfers_interval"]),
        db_version_interval=float(v["db_version_interval"]), shutdown_timeout=float(v["shutdown_timeout"]),
        handler_modules=list(v["handler_modules"]), remote_socket=raw["remote"]["socket"],
        bin=dict(raw["bin"]), warnings=warnings, domain=v["domain"], node_addr=v["node_addr"],
        netdev=v["netdev"], max_tx=v["max_tx"], max_rx=v["max_rx"], node_type=v["type"], fstype=v["fstype"],
        update_vps_status=v["update_vps_status"], track_transfers=v["track_transfers"], root=v["root"],
        init=v["init"], mounts_dir=v["mounts_dir"], **_build_sections(raw),
    )


# ------------------------------------------------------------------------------------------------------------
# Entry points


def config_from_dict(data: Any, path: str | None = None) -> Config:
    """Validate an already parsed config mapping (plain or symbol keys) and build a ``Config``.

    ``path`` only labels errors. ``None`` (an empty file) counts as an empty mapping.
    """
    ctx = _Ctx(path)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ctx.error(None, f"the file holds {_describe(data)}",
                        "a mapping of sections such as db and vpsadmin")
    user = strip_symbol_keys(dict(data), path=path)
    _check_keys(user, _SCHEMA, "", ctx)
    raw = deep_merge(defaults(), user)
    _check_values(raw, _SCHEMA, "", ctx)
    _cross_checks(raw, ctx)
    return _build(raw, path, ctx.warnings)


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that refuses duplicate keys in a mapping (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                key_node.start_mark)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, path: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid document"
        raise ConfigError(f"YAML syntax error{where}: {problem}", path=path, expected="valid YAML") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path=path, expected="valid YAML") from exc


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, merge over the defaults, validate and type the config file at ``path``."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError as exc:
        raise ConfigError("the file does not exist", path=name, expected="a readable YAML file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read the file: {reason}", path=name,
                          expected="a readable UTF-8 YAML file") from exc
    return config_from_dict(_parse_yaml(text, name), name)
