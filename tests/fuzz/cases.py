"""One valid ``t_param`` per registered transaction type, its family, the VPS it runs for, and what an input
of it may change (:func:`scope_of`).

The valid objects fit the sandbox (:mod:`tests.fuzz.sandbox`): they name its pool, datasets, snapshot and
containers, so that mutations that keep an input valid reach the real work and not just a "not found".
"""

from __future__ import annotations

from typing import Any

from tests.fuzz.sandbox import BACKUP_FS, DOOMED_VEID, OTHER_VEID, POOL, POOL_FS, SNAPSHOT, TEMPLATE, VEID, Scope

FEATURES = ("iptables", "tun", "fuse", "nfs", "ppp", "bridge", "kvm")
SNAP_REF = {"id": 1, "name": SNAPSHOT, "confirmed": 1}
DS = {"pool_fs": POOL_FS, "dataset_name": str(VEID)}
CLONE = {**DS, "snapshot_id": 1, "snapshot": SNAPSHOT}
SHAPER = {"class_id": 101, "max_tx": 1000000, "max_rx": 2000000}
PUBLIC = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQfuzz fuzz@node"
MOUNT = {"id": 1, "on_start_fail": "mount_later", "type": "dataset_local", "pool_fs": POOL_FS,
         "dataset_name": f"{VEID}/private", "dst": "/mnt/data", "mount_opts": "--bind", "umount_opts": "-f",
         "mode": "rw"}
STORAGE_POOL = {"integrity_object_id": 1, "filesystem": POOL_FS, "properties": [], "downloads": [],
                "mount_clones": [], "datasets": [{"integrity_object_id": 2, "name": str(VEID), "properties": [
                    {"integrity_object_id": 3, "name": "quota", "value": 0, "inherited": False}],
                    "snapshots": [{"integrity_object_id": 4, "name": SNAPSHOT, "reference_count": 0}],
                    "trees": [], "datasets": []}]}

# code -> (family, params); the family names the test that fuzzes it.
VALID: dict[int, tuple[str, dict[str, Any]]] = {
    10001: ("utils", {}),
    # node
    5: ("node", {}),
    6: ("node", {}),
    7: ("node", {"key_type": "rsa", "public_key": PUBLIC,
                 "private_key": "-----BEGIN KEY-----\nfuzz\n-----END KEY-----\n"}),
    7301: ("node", {"name": "fuzz", "vps_config": "CPUUNITS=\"1000\"\n"}),
    7302: ("node", {"name": "fuzz", "vps_config": "CPUUNITS=\"1000\"\n"}),
    7303: ("node", {"original": {"name": "fuzz", "vps_config": "CPUUNITS=\"1000\"\n"},
                    "new": {"name": "fuzz2", "vps_config": "CPUUNITS=\"2000\"\n"}}),
    # vps
    1001: ("vps", {"onboot": True}),
    1002: ("vps", {}),
    1003: ("vps", {"onboot": True}),
    2002: ("vps", {"user": "root", "password": "s3cret-Pass"}),
    2003: ("vps", {"resources": [{"resource": "cpu", "value": 2, "original": 1},
                                 {"resource": "memory", "value": 1024, "original": 512}]}),
    2004: ("vps", {"hostname": "fuzz.example.org", "original": f"ct{VEID}"}),
    2005: ("vps", {"nameserver": ["192.0.2.53", "2001:db8::53"], "original": ["192.0.2.1"]}),
    2006: ("vps", {"addr": "192.0.2.10", "version": 4, "register": False}),
    2007: ("vps", {"addr": "192.0.2.10", "version": 4, "unregister": False}),
    2008: ("vps", {"configs": ["basic"], "pool_fs": POOL_FS, "dataset_name": str(VEID)}),
    2013: ("vps", {"os_template": TEMPLATE, "original": TEMPLATE}),
    3001: ("vps", {"template": TEMPLATE, "hostname": "ct103", "onboot": True}),
    3002: ("vps", {}),
    4001: ("vps", {"dst_vps": 106, "local": True}),
    4002: ("vps", {}),
    4003: ("vps", {"os_template": TEMPLATE}),
    8001: ("vps", {"features": {n: {"enabled": n == "tun", "original": False} for n in FEATURES}}),
    # storage
    5201: ("storage", {"pool_fs": POOL_FS, "name": f"{VEID}/new", "options": {"quota": 1024, "atime": False},
                       "create_private": True}),
    5203: ("storage", {"pool_fs": POOL_FS, "name": f"{VEID}/old"}),
    5204: ("storage", {**DS, "snapshot_id": 1}),
    5206: ("storage", {"pool_fs": BACKUP_FS, "dataset_name": str(VEID), "tree": "tree.0",
                       "new_branch_name": "branch-x.0"}),
    5207: ("storage", {"pool_fs": BACKUP_FS, "dataset_name": str(VEID), "tree": "tree.0", "branch": "branch-x.0"}),
    5208: ("storage", {**DS, "snapshot": SNAPSHOT}),
    5209: ("storage", dict(DS)),
    5211: ("storage", {**DS, "descendant_datasets": [{"name": "private", "full_name": f"{VEID}/private"}]}),
    5212: ("storage", {**DS, "snapshot": {"id": 9, "name": "2000-01-01T00:00:00", "confirmed": 1}}),
    5213: ("storage", {"pool_fs": BACKUP_FS, "dataset_name": str(VEID), "tree": "tree.1"}),
    5214: ("storage", {"pool_fs": BACKUP_FS, "dataset_name": str(VEID), "tree": "tree.1"}),
    5215: ("storage", {"snapshots": [{**DS, "snapshot_id": 2}, {**DS, "dataset_name": f"{VEID}/private",
                                                               "snapshot_id": 3}]}),
    5216: ("storage", {"pool_fs": POOL_FS, "name": str(VEID), "properties": {"quota": [0, 2048],
                                                                           "compression": [False, True]}}),
    5217: ("storage", dict(CLONE)),
    5218: ("storage", dict(CLONE)),
    5219: ("storage", {"pool_fs": POOL_FS, "name": str(VEID), "properties": {"atime": True}}),
    5224: ("storage", {"snapshots": {"1": ["(unconfirmed)", 2]}}),
    5250: ("storage", {"pool_fs": f"{POOL}/newpool", "options": {"compression": True}}),
    5004: ("storage", {"pool_fs": BACKUP_FS, "dataset_name": str(VEID), "snapshot": SNAPSHOT,
                       "secret_key": "a" * 100, "file_name": f"{VEID}__x.tar.gz", "download_id": 1,
                       "format": "archive"}),
    5005: ("storage", {"pool_fs": BACKUP_FS, "secret_key": "a" * 100, "file_name": f"{VEID}__x.tar.gz",
                       "download_id": 1}),
    # transfers (the port is replaced by a free one of the sandbox)
    5220: ("transfer", {"addr": "127.0.0.1", "port": 0, "dst_pool_fs": BACKUP_FS, "dataset_name": str(VEID),
                        "snapshots": [SNAP_REF]}),
    5221: ("transfer", {"addr": "127.0.0.1", "port": 0, "src_pool_fs": POOL_FS, "dataset_name": str(VEID),
                        "snapshots": [SNAP_REF]}),
    5222: ("transfer", {"dst_pool_fs": BACKUP_FS, "dataset_name": str(VEID), "snapshot": SNAP_REF}),
    5223: ("transfer", {"src_pool_fs": POOL_FS, "dst_pool_fs": BACKUP_FS, "src_dataset_name": str(VEID),
                        "dst_dataset_name": "copy", "snapshots": [SNAP_REF]}),
    # mounts
    5301: ("mounts", {"mounts": [MOUNT]}),
    5302: ("mounts", {"mounts": [MOUNT]}),
    5303: ("mounts", {"mounts": [MOUNT]}),
    # integrity (DB only; the sandbox's pool and containers are what they inspect)
    6001: ("integrity", {"integrity_check_id": 1}),
    6005: ("integrity", {"integrity_check_id": 1, "pools": [STORAGE_POOL]}),
    6006: ("integrity", {"integrity_check_id": 1, "vpses": [{"integrity_object_id": 5, "vps_id": VEID,
                                                              "status": False, "hostname": f"ct{VEID}",
                                                              "ip_addresses": [{"integrity_object_id": 6,
                                                                                "addr": "192.0.2.10"}]}]}),
    # mail
    9001: ("mail", {"from": "vpsAdmin <admin@example.org>", "subject": "Fuzz \u00e9",
                    "to": ["a@example.org", "B <b@example.org>"], "cc": "c@example.org",
                    "bcc": None, "reply_to": "r@example.org", "return_path": "bounce@example.org",
                    "message_id": "<1@example.org>", "in_reply_to": "<0@example.org>",
                    "references": ["<0@example.org>"], "text_plain": "hello\n", "text_html": "<p>hello</p>"}),
    # network (firewall and shaper in a network namespace)
    2009: ("network", {"addr": "192.0.2.10", "version": 4, "shaper": SHAPER,
                       "shaper_original": {**SHAPER, "max_tx": 500000}}),
    2010: ("network", {"addr": "192.0.2.10", "version": 4, "shaper": SHAPER}),
    2011: ("network", {"addr": "192.0.2.10", "version": 4, "shaper": SHAPER}),
    2012: ("network", {"max_tx": 100000000, "max_rx": 100000000, "original": {"max_tx": 50000000,
                                                                              "max_rx": 50000000}}),
    2014: ("network", {"addr": "192.0.2.10", "version": 4}),
    2015: ("network", {"addr": "2001:db8::10", "version": 6}),
}

# The VPS a transaction of each type runs for (``t_vps``); the default is the target container.
VPS_OF: dict[int, int] = {3001: 103, 3002: DOOMED_VEID, 4002: 107, 4003: 107}


def family(name: str) -> list[int]:
    return sorted(code for code, (fam, _) in VALID.items() if fam == name)


def _ds(params: Any, pool_attr: str, name_attr: str, tree: str = "tree", branch: str = "branch") -> set[str]:
    pool, name = getattr(params, pool_attr, None), getattr(params, name_attr, None)
    if not isinstance(pool, str) or not isinstance(name, str):
        return set()
    return {f"{pool}/{name}"}


def scope_of(code: int, params: Any) -> Scope:
    """What an input of ``code`` with these (parsed) params may change; a param it names is its target."""
    veid = VPS_OF.get(code, VEID)
    s = Scope()
    fam = VALID[code][0]
    if fam in ("vps", "mounts"):
        s.vpses.add(veid)
    if code == 4001:
        s.vpses.add(int(params.dst_vps))
    if code in (3001, 3002) or fam == "mounts":
        s.paths.add("mounts")  # delayed-mount bookkeeping of the node
    if fam == "node":
        s.paths |= {"ssh", "fakevz/etc/vz/conf"}  # known_hosts and keys; samples (named by the params)
    for pool_attr, name_attr in (("pool_fs", "name"), ("pool_fs", "dataset_name"), ("dst_pool_fs", "dataset_name"),
                                 ("src_pool_fs", "dataset_name"), ("src_pool_fs", "src_dataset_name"),
                                 ("dst_pool_fs", "dst_dataset_name")):
        s.datasets |= _ds(params, pool_attr, name_attr)
    for item in getattr(params, "snapshots", None) or ():
        if hasattr(item, "pool_fs"):
            s.datasets |= _ds(item, "pool_fs", "dataset_name")
    for d in getattr(params, "descendant_datasets", None) or ():
        s.datasets.add(f"{params.pool_fs}/{d.full_name}")
    if code in (5217, 5218, 5004, 5005, 5250):
        s.datasets.add(f"{params.pool_fs}/vpsadmin")  # mount clones, downloads, the pool's own datasets
    if code == 5250:
        s.datasets.add(params.pool_fs)
    if fam == "mounts":
        for m in params.mounts:
            s.datasets.add(f"{m.pool_fs}/vpsadmin")
    return s


def with_port(params: dict[str, Any], port: int) -> dict[str, Any]:
    return {**params, "port": port} if "port" in params else params


__all__ = ["VALID", "VPS_OF", "family", "scope_of", "with_port", "OTHER_VEID"]
