"""The configuration loader: v2.0 defaults and symbol keys, merging, queues, legacy keys, errors, samples."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from vpsadmind.config import (
    DEFAULT_BIN,
    DEFAULT_QUEUES,
    Config,
    ConsoleConfig,
    JournalConfig,
    LogConfig,
    MailerConfig,
    MetricsConfig,
    MqttConfig,
    NodeConfig,
    QueueConfig,
    StorageConfig,
    TlsConfig,
    TransferConfig,
    VpsConfig,
    VzConfig,
    config_from_dict,
    deep_merge,
    defaults,
    is_valid_db_host,
    known_keys,
    load_config,
    strip_symbol_keys,
)
from vpsadmind.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "etc" / "vpsadmind.yml"
V20_FIXTURE = ROOT / "tests" / "fixtures" / "vpsadmind-v2.0.yml"
DOCS = ROOT / "docs" / "configuration.md"

MINIMAL = """\
db:
  hosts: [db1]
vpsadmin:
  server_id: 7
"""

# v2.0 IMPLICIT_CONFIG bin section (lib/vpsadmind/config.rb at v2.0.0).
V20_BIN = {
    "cat": "cat", "df": "df", "rm": "rm", "mv": "mv", "cp": "cp", "mkdir": "mkdir", "rmdir": "rmdir",
    "chmod": "chmod", "tar": "tar", "scp": "scp", "rdiff_backup": "rdiff-backup", "rsync": "rsync",
    "iptables": "iptables", "ip6tables": "ip6tables", "git": "git", "zfs": "zfs", "mount": "mount",
    "umount": "umount", "uptime": "uptime", "uname": "uname", "hostname": "hostname",
    "ssh_keygen": "ssh-keygen", "exportfs": "exportfs", "tc": "tc",
}


def write(tmp_path: Path, text: str, name: str = "vpsadmind.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(str(write(tmp_path, text)))


def with_minimal(extra: str) -> str:
    """MINIMAL plus more YAML; ``extra`` may repeat db/vpsadmin, later keys then win via a merge."""
    base = yaml.safe_load(MINIMAL)
    return yaml.safe_dump(deep_merge(base, yaml.safe_load(extra)))


def load_error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    return info.value, path


def all_keys(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in [key, *all_keys(value)]]
    if isinstance(tree, list):
        return [k for item in tree for k in all_keys(item)]
    return []


# ---------------------------------------------------------------------------------------------------------
# Defaults


def test_defaults_are_those_of_v20(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    raw = cfg.raw
    assert raw["db"] == {
        "hosts": ["db1"], "host": None, "user": None, "pass": None, "name": None, "retry_interval": 30,
        "ssl": False, "connect_timeout": 15, "read_timeout": 15, "write_timeout": 15, "pool_size": 8,
    }
    v = raw["vpsadmin"]
    assert (v["server_id"], v["domain"], v["netdev"], v["node_addr"], v["type"]) == (
        7, "vpsfree.cz", "eth0", None, None)
    assert (v["check_interval"], v["status_interval"], v["resources_interval"], v["transfers_interval"]) == (
        1, 30, 300, 10)
    assert (v["update_vps_status"], v["track_transfers"], v["init"]) == (True, True, True)
    assert (v["root"], v["mounts_dir"], v["urgent_threads"], v["fstype"]) == (
        "/opt/vpsadmind", "/var/vpsadmin/mounts", 6, "zfs")
    assert raw["vz"] == {"vzctl": "vzctl", "vzlist": "vzlist", "vzquota": "vzquota", "vzmigrate": "vzmigrate",
                         "vz_root": "/vz", "vz_conf": "/etc/vz", "ve_private": "/vz/private/%{veid}"}
    assert raw["bin"] == {**V20_BIN, "zpool": "zpool", "nc": "nc"}
    assert raw["vps"] == {"zfs": {"root_dataset": "vz/private", "sharenfs": None},
                          "migration": {"dumpfile": "/vz/dump/Dump.%{veid}"}}
    assert raw["node"] == {"pubkey": {"types": ["rsa", "dsa"], "path": "/etc/ssh/ssh_host_%{type}_key.pub"},
                           "known_hosts": "/root/.ssh/known_hosts"}
    assert raw["storage"] == {"update_status": True}
    assert raw["mailer"] == {"smtp_server": "localhost", "smtp_port": 25}
    assert raw["console"] == {"host": "localhost", "port": 8081}
    assert raw["remote"] == {"socket": "/var/run/vpsadmind.sock"}
    assert cfg.warnings == []


def test_defaults_of_new_keys(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    v = cfg.raw["vpsadmin"]
    assert (v["handler_modules"], v["shutdown_timeout"], v["db_version_interval"]) == ([], 300, 10)
    assert cfg.db.pool_size == 8
    assert cfg.mqtt == MqttConfig()
    assert cfg.journal == JournalConfig()
    assert cfg.log == LogConfig(level="info", format="auto")
    assert cfg.transfer == TransferConfig(protocol="vpsadmind", tls=None, stall_timeout=600.0, rate_limit=None)
    assert cfg.metrics == MetricsConfig(enabled=False, listen="127.0.0.1", port=9310)


def test_typed_fields_of_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.path == str(tmp_path / "vpsadmind.yml")
    assert cfg.server_id == 7
    assert cfg.db.hosts == ["db1"] and cfg.db.password is None and cfg.db.ssl is False
    assert isinstance(cfg.check_interval, float) and cfg.check_interval == 1.0
    assert isinstance(cfg.db.retry_interval, float) and cfg.db.retry_interval == 30.0
    assert cfg.remote_socket == "/var/run/vpsadmind.sock"
    assert cfg.bin == DEFAULT_BIN
    assert (cfg.vz, cfg.vps, cfg.node, cfg.storage) == (VzConfig(), VpsConfig(), NodeConfig(), StorageConfig())
    assert (cfg.mailer, cfg.console) == (MailerConfig(), ConsoleConfig())


def test_dataclass_defaults_agree_with_loaded_defaults(tmp_path: Path) -> None:
    """A Config built by hand (engine tests do that) behaves like one loaded from a minimal file."""
    cfg = load_text(tmp_path, MINIMAL)
    skip = {"path", "raw", "db", "server_id", "queues"}
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            expected = f.default
        else:
            assert f.default_factory is not dataclasses.MISSING
            expected = f.default_factory()
        assert getattr(cfg, f.name) == expected, f.name
    db_defaults = {f.name: f.default for f in dataclasses.fields(cfg.db) if f.default is not dataclasses.MISSING}
    assert {name: getattr(cfg.db, name) for name in db_defaults} == db_defaults


def test_defaults_function_returns_a_fresh_copy() -> None:
    first = defaults()
    first["db"]["hosts"].append("x")
    first["vpsadmin"]["queues"]["general"]["threads"] = 99
    assert defaults()["db"]["hosts"] == []
    assert defaults()["vpsadmin"]["queues"]["general"]["threads"] == 6


def test_empty_file_needs_server_id(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, "")
    assert (err.path, err.key) == (str(path), "vpsadmin.server_id")


# ---------------------------------------------------------------------------------------------------------
# Ruby-symbol keys


SYMBOL_FILE = """\
:db:
    :hosts:
      - db1
    :user: vpsadmin
    :pass: password
    :name: vpsadmin
:vpsadmin:
    :server_id: 7
    :type: :storage
    :fstype: :zfs
    :check_interval: 2
    :queues:
        :zfs_send:
            :start_delay: 5400
:node:
    :pubkey:
        :types:
          - rsa
          - ecdsa
"""

PLAIN_FILE = """\
db:
  hosts: [db1]
  user: vpsadmin
  pass: password
  name: vpsadmin
vpsadmin:
  server_id: 7
  type: storage
  fstype: zfs
  check_interval: 2
  queues:
    zfs_send:
      start_delay: 5400
node:
  pubkey:
    types: [rsa, ecdsa]
"""


def test_symbol_keys_load_like_plain_keys(tmp_path: Path) -> None:
    sym = load_config(str(write(tmp_path, SYMBOL_FILE, "sym.yml")))
    plain = load_config(str(write(tmp_path, PLAIN_FILE, "plain.yml")))
    assert sym.raw == plain.raw
    assert not any(isinstance(k, str) and k.startswith(":") for k in all_keys(sym.raw))
    assert sym.server_id == 7 and sym.check_interval == 2.0
    assert sym.node_type == "storage" and sym.fstype == "zfs"  # Ruby symbol values lose their colon
    assert sym.queues["zfs_send"] == QueueConfig(1, 0, 5400.0)
    assert sym.node.pubkey_types == ["rsa", "ecdsa"]
    assert sym.db.user == "vpsadmin" and sym.db.password == "password"


def test_mixed_symbol_and_plain_keys(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "db:\n  :hosts: [db1]\n:vpsadmin:\n  server_id: 3\n")
    assert (cfg.db.hosts, cfg.server_id) == (["db1"], 3)


def test_strip_symbol_keys_only_touches_string_keys() -> None:
    data = {":vpsadmin": {":handlers": {"VPS": {1001: "start"}}, "domain": ":keep-values"}, 5: [{":a": 1}]}
    assert strip_symbol_keys(data) == {
        "vpsadmin": {"handlers": {"VPS": {1001: "start"}}, "domain": ":keep-values"}, 5: [{"a": 1}]}
    assert ":vpsadmin" in data  # the input is not modified


def test_same_key_as_symbol_and_plain_is_an_error(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, MINIMAL + ":db:\n  user: x\n")
    assert (err.path, err.key, err.expected) == (str(path), "db", "each key once")


# ---------------------------------------------------------------------------------------------------------
# Deep merge


def test_deep_merge_keeps_sibling_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("""
vz: {vzctl: /usr/sbin/vzctl}
vps: {zfs: {sharenfs: "rw=@10.0.0.0/8"}}
bin: {zfs: /sbin/zfs}
mqtt: {host: broker.example.org}
"""))
    assert cfg.vz == VzConfig(vzctl="/usr/sbin/vzctl")
    assert cfg.vps == VpsConfig(root_dataset="vz/private", sharenfs="rw=@10.0.0.0/8")
    assert cfg.bin == {**DEFAULT_BIN, "zfs": "/sbin/zfs"}
    assert cfg.mqtt == MqttConfig(host="broker.example.org")


def test_lists_are_replaced_not_concatenated(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("node: {pubkey: {types: [ed25519]}}\ndb: {hosts: [a, b]}"))
    assert cfg.node.pubkey_types == ["ed25519"]
    assert cfg.db.hosts == ["a", "b"]


def test_deep_merge_function() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "handlers": {"x": 1}, "s": {"handlers": {"old": 1}, "k": 1}}
    override = {"a": {"c": {"e": 3}}, "s": {"handlers": {"new": 2}}}
    merged = deep_merge(base, override)
    assert merged == {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "handlers": {"x": 1},
                      "s": {"handlers": {"new": 2}, "k": 1}}  # ``handlers`` replaces, as in v2.0
    assert base["a"] == {"b": 1, "c": {"d": 2}}
    merged["s"]["handlers"]["new"] = 99
    assert override["s"]["handlers"]["new"] == 2


def test_null_section_keeps_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL + "mailer:\nconsole: ~\n")
    assert cfg.mailer == MailerConfig() and cfg.console == ConsoleConfig()


def test_raw_keeps_pass_as_in_the_file(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("db: {pass: s3cr3t, user: 1234}"))
    assert cfg.raw["db"]["pass"] == "s3cr3t" and cfg.db.password == "s3cr3t"
    assert cfg.raw["db"]["user"] == 1234 and cfg.db.user == "1234"  # YAML made it an int


def test_raw_is_not_shared_with_typed_fields(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    cfg.raw["db"]["hosts"].append("other")
    cfg.raw["bin"]["zfs"] = "/x"
    assert cfg.db.hosts == ["db1"] and cfg.bin["zfs"] == "zfs"
    assert load_text(tmp_path, MINIMAL).raw["db"]["hosts"] == ["db1"]


# ---------------------------------------------------------------------------------------------------------
# Queues


def test_default_queues_including_rollback(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.queues == DEFAULT_QUEUES
    assert cfg.queues["rollback"] == QueueConfig(6, 6, 0)
    assert cfg.queues["zfs_send"] == QueueConfig(1, 0, 4 * 60 * 60)
    assert set(cfg.raw["vpsadmin"]["queues"]) == set(DEFAULT_QUEUES)


def test_queue_override_and_added_queue(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("""
vpsadmin:
  queues:
    vps: {threads: 8}
    zfs_send: {start_delay: 5400.5}
    rollback: {urgent: 2}
    outage: {threads: 24}
    backup: {threads: 2, urgent: 1, start_delay: 60}
"""))
    assert cfg.queues["vps"] == QueueConfig(8, 4, 0)
    assert cfg.queues["zfs_send"] == QueueConfig(1, 0, 5400.5)
    assert cfg.queues["rollback"] == QueueConfig(6, 2, 0)
    assert cfg.queues["outage"] == QueueConfig(24, 0, 0.0)
    assert cfg.queues["backup"] == QueueConfig(2, 1, 60.0)
    assert set(DEFAULT_QUEUES) <= set(cfg.queues)
    for name in ("general", "storage", "network", "mail"):
        assert cfg.queues[name] == DEFAULT_QUEUES[name]


def test_new_queue_needs_threads(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, with_minimal("vpsadmin: {queues: {extra: {urgent: 1}}}"))
    assert (err.path, err.key) == (str(path), "vpsadmin.queues.extra.threads")
    assert "missing" in str(err) and err.expected == "an integer >= 1"


@pytest.mark.parametrize(("extra", "key", "expected"), [
    ("vpsadmin: {queues: {vps: {thread: 2}}}", "vpsadmin.queues.vps.thread", "one of: start_delay, threads, urgent"),
    ("vpsadmin: {queues: {vps: {threads: 0}}}", "vpsadmin.queues.vps.threads", "an integer >= 1"),
    ("vpsadmin: {queues: {vps: {urgent: -1}}}", "vpsadmin.queues.vps.urgent", "an integer >= 0"),
    ("vpsadmin: {queues: {vps: {start_delay: soon}}}", "vpsadmin.queues.vps.start_delay", "a number >= 0"),
    ("vpsadmin: {queues: {vps: 4}}", "vpsadmin.queues.vps", "a mapping"),
    ("vpsadmin: {queues: {Bad-Name: {threads: 1}}}", "vpsadmin.queues.Bad-Name",
     "a queue name of lowercase letters, digits and _"),
    ("vpsadmin: {queues: [general]}", "vpsadmin.queues", "a mapping"),
])
def test_queue_errors(tmp_path: Path, extra: str, key: str, expected: str) -> None:
    err, path = load_error(tmp_path, with_minimal(extra))
    assert (err.path, err.key, err.expected) == (str(path), key, expected)


# ---------------------------------------------------------------------------------------------------------
# Legacy v2.0 file and obsolete keys


def test_v20_fixture_loads_unchanged() -> None:
    cfg = load_config(str(V20_FIXTURE))
    assert cfg.server_id == 101
    assert cfg.db.hosts == ["db.example.org"]  # legacy db.host appended to the (empty) hosts list
    assert (cfg.db.user, cfg.db.password, cfg.db.name) == ("vpsadmin", "password", "vpsadmin")
    assert cfg.domain == "example.org" and cfg.status_interval == 300.0
    assert cfg.node_type == "node" and cfg.fstype == "zfs"
    assert cfg.queues["zfs_send"] == QueueConfig(1, 0, 5400.0)
    assert cfg.queues["rollback"] == DEFAULT_QUEUES["rollback"]
    assert cfg.vz.vzctl == "/usr/sbin/vzctl" and cfg.vz.ve_private == "/vz/private/%{veid}"
    assert cfg.bin["cat"] == "/bin/cat" and cfg.bin["zfs"] == "zfs" and cfg.bin["tc"] == "tc"
    assert cfg.console == ConsoleConfig(host="192.0.2.10", port=8081)
    # Obsolete keys stay visible in raw (``get config``) but do nothing.
    assert cfg.raw["vpsadmin"]["handlers"]["VPS"][1001] == "start"
    assert cfg.raw["backuper"]["store"]["max_backups"] == 20
    warned = {w.split(":", 1)[0] for w in cfg.warnings}
    assert warned == {
        "vpsadmin.threads", "vpsadmin.backups_mnt_dir", "vpsadmin.restore_target", "vpsadmin.handlers",
        "vps.migration.rsync", "storage.method", "backuper", "remote.handlers", "db.host",
    }


def test_v20_fixture_uses_symbol_keys() -> None:
    parsed = yaml.safe_load(V20_FIXTURE.read_text(encoding="utf-8"))
    assert all(isinstance(k, str) and k.startswith(":") for k in parsed)
    assert ":server_id" in parsed[":vpsadmin"]


@pytest.mark.parametrize(("extra", "key"), [
    ("vpsadmin: {threads: 6}", "vpsadmin.threads"),
    ("vpsadmin: {urgent_threads: 4}", "vpsadmin.urgent_threads"),
    ("vpsadmin: {handlers: {VPS: {1001: start}}}", "vpsadmin.handlers"),
    ("remote: {handlers: {VpsAdmin: [reload]}}", "remote.handlers"),
    ("mailer: {handlers: [send]}", "mailer.handlers"),
    ("backuper: {method: RdiffBackup, store: {max_age: 14}}", "backuper"),
    ("storage: {method: Zfs}", "storage.method"),
    ("vps: {clone: {rsync: '%{rsync} %{src} %{dst}'}}", "vps.clone"),
    ("vps: {migration: {rsync: '%{rsync} %{src} %{dst}'}}", "vps.migration.rsync"),
    ("vps: {stop_timeout: 300}", "vps.stop_timeout"),
    ("vpsadmin: {backups_mnt_dir: /mnt}", "vpsadmin.backups_mnt_dir"),
    ("vpsadmin: {restore_target: /x}", "vpsadmin.restore_target"),
    ("vpsadmin: {vps_status_interval: 120}", "vpsadmin.vps_status_interval"),
    ("vpsadmin: {storage_status_interval: 3600}", "vpsadmin.storage_status_interval"),
    ("vpsadmin: {status_log_interval: 900}", "vpsadmin.status_log_interval"),
    ("vpsadmin: {vps_status_log_interval: 3600}", "vpsadmin.vps_status_log_interval"),
    ("vpsadmin: {queues_reservation_prune_interval: 60}", "vpsadmin.queues_reservation_prune_interval"),
])
def test_obsolete_key_is_accepted_with_a_warning(tmp_path: Path, extra: str, key: str) -> None:
    cfg = load_text(tmp_path, with_minimal(extra))
    assert len(cfg.warnings) == 1
    assert cfg.warnings[0].startswith(f"{key}: ") and cfg.warnings[0].endswith("ignored")
    node: Any = cfg.raw
    for part in key.split("."):
        node = node[part]  # still in raw
    assert cfg.queues == DEFAULT_QUEUES  # threads/urgent_threads change nothing


def test_urgent_threads_default_alone_gives_no_warning(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.raw["vpsadmin"]["urgent_threads"] == 6 and cfg.warnings == []


def test_legacy_db_host_is_appended(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("db: {hosts: [a, b], host: c}"))
    assert cfg.db.hosts == ["a", "b", "c"]
    assert cfg.raw["db"]["hosts"] == ["a", "b"] and cfg.raw["db"]["host"] == "c"
    assert any(w.startswith("db.host: ") for w in cfg.warnings)
    assert load_text(tmp_path, with_minimal("db: {hosts: [a], host: a}")).db.hosts == ["a"]


def test_legacy_db_host_alone(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "db: {host: 'db:3307'}\nvpsadmin: {server_id: 1}\n")
    assert cfg.db.hosts == ["db:3307"]


# ---------------------------------------------------------------------------------------------------------
# Errors: file, key path and expectation


@pytest.mark.parametrize(("extra", "key", "expected"), [
    ("vpsadmin: {check_interval: x}", "vpsadmin.check_interval", "a number > 0"),
    ("vpsadmin: {check_interval: 0}", "vpsadmin.check_interval", "a number > 0"),
    ("vpsadmin: {check_interval: .inf}", "vpsadmin.check_interval", "a number > 0"),
    ("vpsadmin: {check_interval: true}", "vpsadmin.check_interval", "a number > 0"),
    ("vpsadmin: {check_interval: null}", "vpsadmin.check_interval", "a number > 0"),
    ("vpsadmin: {server_id: true}", "vpsadmin.server_id", "an integer >= 1"),
    ("vpsadmin: {server_id: 1.5}", "vpsadmin.server_id", "an integer >= 1"),
    ("vpsadmin: {server_id: '1'}", "vpsadmin.server_id", "an integer >= 1"),
    ("vpsadmin: {server_id: 0}", "vpsadmin.server_id", "an integer >= 1"),
    ("vpsadmin: {update_vps_status: 1}", "vpsadmin.update_vps_status", "a boolean (true or false)"),
    ("vpsadmin: {type: hypervisor}", "vpsadmin.type", "one of: node, storage, mailer or null"),
    ("vpsadmin: {fstype: btrfs}", "vpsadmin.fstype", "one of: ext4, zfs, zfs_compat or null"),
    ("vpsadmin: {max_tx: -5}", "vpsadmin.max_tx", "an integer >= 0 or null"),
    ("vpsadmin: {root: opt/vpsadmind}", "vpsadmin.root", "an absolute path"),
    ("vpsadmin: {domain: ''}", "vpsadmin.domain", "a non-empty string"),
    ("vpsadmin: {handler_modules: site.handlers}", "vpsadmin.handler_modules", "a list of strings"),
    ("vpsadmin: {handler_modules: [ok.mod, not-a-module]}", "vpsadmin.handler_modules[1]",
     "a dotted Python module name"),
    ("vpsadmin: {shutdown_timeout: -1}", "vpsadmin.shutdown_timeout", "a number >= 0"),
    ("db: {hosts: 5}", "db.hosts", "a list of strings"),
    ("db: {hosts: db1}", "db.hosts", "a list of strings"),
    ("db: {hosts: [db1, 5]}", "db.hosts[1]", "a non-empty string"),
    ("db: {hosts: [db1, 'db2:port']}", "db.hosts[1]",
     "host, host:port, [ipv6]:port or an absolute unix socket path"),
    ("db: {host: 'a b'}", "db.host", "host, host:port, [ipv6]:port or an absolute unix socket path or null"),
    ("db: {hosts: []}", "db.hosts", "at least one entry in db.hosts, or the legacy db.host"),
    ("db: {pool_size: 0}", "db.pool_size", "an integer >= 1"),
    ("db: {ssl: 'yes please'}", "db.ssl", "a boolean (true or false)"),
    ("db: {pass: [a]}", "db.pass", "a string or null"),
    ("bin: {zfs: 5}", "bin.zfs", "a non-empty string"),
    ("vps: {zfs: {sharenfs: 5}}", "vps.zfs.sharenfs", "a string or a boolean or null"),
    ("node: {pubkey: {types: [rsa, 2]}}", "node.pubkey.types[1]", "a non-empty string"),
    ("mailer: {smtp_port: 70000}", "mailer.smtp_port", "an integer from 1 to 65535"),
    ("console: {port: '8081'}", "console.port", "an integer from 1 to 65535"),
    ("remote: {socket: vpsadmind.sock}", "remote.socket", "an absolute path"),
    ("mqtt: {enabled: on-demand}", "mqtt.enabled", "a boolean (true or false)"),
    ("mqtt: {topic_prefix: 'vpsadmin/#'}", "mqtt.topic_prefix",
     "a topic prefix without wildcards or leading/trailing '/'"),
    ("mqtt: {keepalive: 0}", "mqtt.keepalive", "an integer >= 1"),
    ("journal: {path: journal}", "journal.path", "an absolute path"),
    ("transfer: {protocol: ssh}", "transfer.protocol", "one of: nc, vpsadmind"),
    ("transfer: {rate_limit: 1.5}", "transfer.rate_limit", "an integer >= 1 or null"),
    ("transfer: {stall_timeout: 0}", "transfer.stall_timeout", "a number > 0"),
    ("transfer: {tls: yes}", "transfer.tls", "a mapping or null"),
    ("transfer: {protocol: nc, tls: {cert: /c, key: /k}}", "transfer.tls",
     "transfer.protocol: vpsadmind, or transfer.tls: null"),
    ("transfer: {protocol: vpsadmind, tls: {cert: /c}}", "transfer.tls.key", "an absolute path"),
    ("transfer: {protocol: vpsadmind, tls: {cert: /c, key: /k, crl: /x}}", "transfer.tls.crl",
     "one of: ca, cert, key"),
    ("metrics: {port: 0}", "metrics.port", "an integer from 1 to 65535"),
    ("log: {level: verbose}", "log.level", "one of: debug, info, warning, error, critical"),
    ("log: {format: xml}", "log.format", "one of: auto, console, json"),
    ("vz: [vzctl]", "vz", "a mapping"),
    ("vps: {zfs: 5}", "vps.zfs", "a mapping"),
])
def test_invalid_values(tmp_path: Path, extra: str, key: str, expected: str) -> None:
    err, path = load_error(tmp_path, with_minimal(extra))
    assert (err.path, err.key, err.expected) == (str(path), key, expected)
    text = str(err)
    assert text.startswith(f"{path}: {key}: ") and text.endswith(f"(expected {expected})")


def test_missing_server_id(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, "db: {hosts: [db1]}\nvpsadmin: {domain: example.org}\n")
    assert (err.path, err.key, err.expected) == (str(path), "vpsadmin.server_id", "an integer >= 1")
    assert "missing required key" in str(err)


@pytest.mark.parametrize(("extra", "key", "suggestion"), [
    ("vpsadmin: {chek_interval: 2}", "vpsadmin.chek_interval", "check_interval"),
    ("dbb: {hosts: [x]}", "dbb", "db"),
    ("db: {password: x}", "db.password", "pass"),
    ("bin: {zsf: /sbin/zfs}", "bin.zsf", "zfs"),
    ("mqtt: {hots: x}", "mqtt.hots", "host"),
])
def test_unknown_keys(tmp_path: Path, extra: str, key: str, suggestion: str) -> None:
    err, path = load_error(tmp_path, with_minimal(extra))
    assert (err.path, err.key) == (str(path), key)
    assert f"did you mean {suggestion!r}" in str(err)
    assert err.expected is not None and err.expected.startswith("one of: ") and suggestion in err.expected
    assert "handlers" not in err.expected and "threads" not in err.expected.split(", ")


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    err, _ = load_error(tmp_path, with_minimal("vpsadmin: {zzzzzz: 1}"))
    assert err.key == "vpsadmin.zzzzzz" and "did you mean" not in str(err)


def test_non_string_key(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, MINIMAL + "5: x\n")
    assert (err.path, err.key, err.expected) == (str(path), "5", "string keys")


def test_int_is_accepted_where_a_number_is_expected(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("vpsadmin: {check_interval: 2, status_interval: 0.5}"))
    assert cfg.check_interval == 2.0 and isinstance(cfg.check_interval, float)
    assert cfg.status_interval == 0.5


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    err, _ = load_error(tmp_path, with_minimal("mqtt: {password: [hunter2]}"))
    assert err.key == "mqtt.password" and "hunter2" not in str(err)


@pytest.mark.parametrize(("text", "holds"), [("- a\n- b\n", "a list"), ("just text\n", "the string"),
                                             ("42\n", "the integer 42")])
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, holds: str) -> None:
    err, path = load_error(tmp_path, text)
    assert (err.path, err.key) == (str(path), None)
    assert err.expected == "a mapping of sections such as db and vpsadmin"
    assert holds in str(err) and str(path) in str(err)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, "db:\n  hosts: [db1\nvpsadmin:\n  server_id: 1\n")
    assert (err.path, err.key, err.expected) == (str(path), None, "valid YAML")
    assert re.search(r"YAML syntax error at line \d+, column \d+", str(err))
    assert str(err).startswith(str(path))


def test_yaml_duplicate_key(tmp_path: Path) -> None:
    err, path = load_error(tmp_path, MINIMAL + "db:\n  hosts: [db2]\n")
    assert (err.path, err.expected) == (str(path), "valid YAML")
    assert "duplicate key 'db'" in str(err) and "line 5" in str(err)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL + "mqtt: &m {host: a}\nmetrics:\n  <<: {port: 9999}\n  enabled: true\n")
    assert cfg.mqtt.host == "a" and cfg.metrics == MetricsConfig(enabled=True, port=9999)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert (info.value.path, info.value.key) == (str(path), None)
    assert info.value.expected == "a readable YAML file" and str(path) in str(info.value)


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))  # a directory
    assert info.value.path == str(tmp_path) and "cannot read" in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes(MINIMAL.encode() + b"# \xe9\xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.path == str(path)


def test_config_from_dict_without_a_file() -> None:
    cfg = config_from_dict({":db": {":hosts": ["db1"]}, ":vpsadmin": {":server_id": 2}})
    assert cfg.path is None and cfg.server_id == 2
    with pytest.raises(ConfigError) as info:
        config_from_dict({"db": {"hosts": ["db1"]}, "vpsadmin": {"server_id": "2"}})
    assert info.value.path is None and info.value.key == "vpsadmin.server_id"


# ---------------------------------------------------------------------------------------------------------
# db.hosts forms


VALID_HOSTS = ["db", "db1.example.org", "db1.example.org.", "db:3307", "10.0.0.1", "10.0.0.1:3306",
               "[::1]:3306", "[2001:db8::1]", "::1", "2001:db8::5", "/run/mysqld/mysqld.sock", "my_db"]
INVALID_HOSTS = ["", "db:", "db:0", "db:65536", "db:port", "db: 3306", "[::1", "[::1]:", "[::1]x",
                 "[db1]:3306", "[10.0.0.1]:3306", "db name", "-db", "db..example", "relative/mysqld.sock",
                 "/", "db:3306:1", "a" * 64, "db:+33"]


@pytest.mark.parametrize("spec", VALID_HOSTS)
def test_valid_db_host_forms(tmp_path: Path, spec: str) -> None:
    assert is_valid_db_host(spec)
    cfg = load_text(tmp_path, with_minimal(yaml.safe_dump({"db": {"hosts": [spec]}})))
    assert cfg.db.hosts == [spec]


@pytest.mark.parametrize("spec", INVALID_HOSTS)
def test_invalid_db_host_forms(tmp_path: Path, spec: str) -> None:
    assert not is_valid_db_host(spec)
    err, _ = load_error(tmp_path, with_minimal(yaml.safe_dump({"db": {"hosts": ["ok", spec]}})))
    assert err.key == "db.hosts[1]"


def test_valid_hosts_are_understood_by_the_pool() -> None:
    from vpsadmind.db.pool import parse_host

    for spec in VALID_HOSTS:
        parsed = parse_host(spec)
        assert parsed["host"]
        if spec.startswith("/"):
            assert parsed["unix_socket"] == spec
        elif spec.endswith(":3307"):
            assert parsed["port"] == 3307


@given(st.integers(min_value=-10, max_value=70000))
def test_host_port_range(port: int) -> None:
    assert is_valid_db_host(f"db:{port}") == (1 <= port <= 65535)
    assert is_valid_db_host(f"[fe80::1]:{port}") == (1 <= port <= 65535)


# ---------------------------------------------------------------------------------------------------------
# New sections


def test_new_sections_are_mapped(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("""
vpsadmin: {handler_modules: [site.handlers, extra], shutdown_timeout: 60, db_version_interval: 5}
db: {pool_size: 3, pass: 1234}
mqtt: {enabled: false, port: 8883, username: node1, password: 42, topic_prefix: cluster/a}
journal: {path: /srv/journal}
transfer:
  protocol: vpsadmind
  tls: {cert: /etc/vpsadmind/n.crt, key: /etc/vpsadmind/n.key}
  stall_timeout: 120
  rate_limit: 100000000
metrics: {enabled: true, listen: '::', port: 9100}
log: {level: debug, format: json}
"""))
    assert cfg.handler_modules == ["site.handlers", "extra"]
    assert (cfg.shutdown_timeout, cfg.db_version_interval) == (60.0, 5.0)
    assert cfg.db.pool_size == 3 and cfg.db.password == "1234"
    assert cfg.mqtt == MqttConfig(enabled=False, port=8883, username="node1", password="42",
                                  topic_prefix="cluster/a")
    assert cfg.journal == JournalConfig(path="/srv/journal")
    assert cfg.transfer == TransferConfig(
        protocol="vpsadmind", tls=TlsConfig(cert="/etc/vpsadmind/n.crt", key="/etc/vpsadmind/n.key", ca=None),
        stall_timeout=120.0, rate_limit=100_000_000)
    assert cfg.metrics == MetricsConfig(enabled=True, listen="::", port=9100)
    assert cfg.log == LogConfig(level="debug", format="json")


def test_sharenfs_forms(tmp_path: Path) -> None:
    assert load_text(tmp_path, with_minimal("vps: {zfs: {sharenfs: on}}")).vps.sharenfs == "on"
    assert load_text(tmp_path, with_minimal("vps: {zfs: {sharenfs: false}}")).vps.sharenfs is None
    assert load_text(tmp_path, with_minimal("vps: {zfs: {sharenfs: 'rw'}}")).vps.sharenfs == "rw"


def test_vpsadmin_section_fields(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, with_minimal("""
vpsadmin: {domain: example.org, node_addr: 192.0.2.5, netdev: bond0, max_tx: 1000, max_rx: 2000,
           type: mailer, fstype: ext4, update_vps_status: false, track_transfers: false,
           root: /srv/vpsadmind, init: false, mounts_dir: /srv/mounts}
"""))
    assert (cfg.domain, cfg.node_addr, cfg.netdev, cfg.max_tx, cfg.max_rx) == (
        "example.org", "192.0.2.5", "bond0", 1000, 2000)
    assert (cfg.node_type, cfg.fstype, cfg.update_vps_status, cfg.track_transfers) == (
        "mailer", "ext4", False, False)
    assert (cfg.root, cfg.init, cfg.mounts_dir) == ("/srv/vpsadmind", False, "/srv/mounts")


# ---------------------------------------------------------------------------------------------------------
# Shipped sample and documentation


def uncomment_defaults(text: str) -> str:
    """Turn the sample's ``#key: value`` default lines into settings."""
    return re.sub(r"^(\s*)#(?=[a-z_0-9]+:)", r"\1", text, flags=re.MULTILINE)


def test_sample_loads(tmp_path: Path) -> None:
    cfg = load_config(str(SAMPLE))
    assert cfg.warnings == []
    assert cfg.server_id == 1
    assert cfg.db.hosts == ["db1.example.org", "db2.example.org:3306"]
    assert cfg.queues == DEFAULT_QUEUES


def test_sample_commented_values_are_the_defaults(tmp_path: Path) -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    uncommented = uncomment_defaults(text)
    assert uncommented != text
    active = load_config(str(write(tmp_path, uncommented)))
    assert active.warnings == []
    assert active.raw == load_config(str(SAMPLE)).raw


def test_sample_shows_every_key() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    parsed = strip_symbol_keys(yaml.safe_load(uncomment_defaults(text)))
    for key in known_keys():
        node: Any = parsed
        for part in key.split("."):
            if part == "*":
                assert set(node) == set(DEFAULT_QUEUES), key
                node = node["general"]
            elif node is None:  # an optional section that is off (transfer.tls): shown as an example
                assert re.search(rf"^\s*#.*\b{part}: /", text, re.MULTILINE), key
            else:
                assert isinstance(node, dict) and part in node, key
                node = node[part]


def test_docs_describe_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [key for key in known_keys() if f"`{key.replace('*', '<name>')}`" not in text]
    assert missing == []


def test_known_keys() -> None:
    keys = known_keys()
    assert len(keys) == len(set(keys))
    for key in ("db.hosts", "db.pass", "vpsadmin.server_id", "vpsadmin.queues.*.threads", "bin.nc",
                "bin.zpool", "transfer.tls", "transfer.tls.cert", "metrics.listen", "log.format"):
        assert key in keys
    assert "vpsadmin.threads" not in keys and "backuper" not in keys
