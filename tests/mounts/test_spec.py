"""Mount hashes are validated before anything runs; every refusal names the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.mounts.conftest import mount_hash
from vpsadmind.errors import ParamError
from vpsadmind.mounts.spec import parse_mount_opts, parse_mounts, parse_umount_opts

NFS = {"type": "dataset_remote", "src_node_addr": "172.16.0.5", "mount_opts": "-n -t nfs -overs=3"}
SNAP = {"type": "snapshot_remote", "src_node_addr": "172.16.0.5", "snapshot_id": 12, "snapshot": "2015-01-01T00:00:00",
        "mount_opts": "-n -t nfs -overs=3", "mode": "ro"}


def refused(mount: dict[str, Any], field: str, message: str = "") -> None:
    with pytest.raises(ParamError) as info:
        parse_mounts([mount_hash(1, "/mnt/a"), mount])
    assert info.value.field == f"mounts[1].{field}", str(info.value)
    assert message in str(info.value)


def test_the_four_types_as_the_api_sends_them() -> None:
    mounts = parse_mounts([
        mount_hash(1, "/mnt/local"),
        mount_hash(2, "/mnt/nfs", **NFS),
        mount_hash(3, "/mnt/snap", **{**SNAP, "type": "snapshot_local", "mount_opts": "-t zfs"}),
        mount_hash(4, "/mnt/snap-nfs", **SNAP, dataset_tree="tree.0", branch="branch-2015-01-01T00:00:00.0"),
    ])
    assert [m.type for m in mounts] == ["dataset_local", "dataset_remote", "snapshot_local", "snapshot_remote"]
    assert mounts[1].remote_source() == "172.16.0.5:/tank/vz/101/data/private"
    assert mounts[3].remote_source() == "172.16.0.5:/tank/vz/vpsadmin/mount/12.snapshot/private"
    assert mounts[2].dataset() == "tank/vz/vpsadmin/mount/12.snapshot"
    assert mounts[2].effective_mode == "ro"
    assert mounts[0].as_dict() == mount_hash(1, "/mnt/local")
    v6 = parse_mounts([mount_hash(5, "/mnt/v6", **{**NFS, "src_node_addr": "2001:db8::5"})])[0]
    assert v6.remote_source() == "[2001:db8::5]:/tank/vz/101/data/private"


@pytest.mark.parametrize("dst", ["/mnt/../etc", "/mnt/x/..", "../etc", "/mnt/./x", "/mnt//x", "/mnt/x/", "mnt/x",
                                 "/mnt/x\n/etc", "/mnt/x'y", '/mnt/"x"', "/mnt/x y", "/mnt/$(id)", "/mnt/`id`",
                                 "/", "/a", "/mnt/x\0"])
def test_hostile_destinations(dst: str) -> None:
    refused(mount_hash(2, dst), "dst")


@pytest.mark.parametrize(("opts", "message"), [
    ("--bind; rm -rf /", "shell or control"), ("--bind\n-a", "shell or control"), ("-o 'ro'", "quote"),
    ("-a", "not allowed"), ("--move", "not allowed"), ("-o remount,ro", "remount"), ("-oX-mount.mkdir", "not allowed"),
    ("-o helper=/tmp/x", "not allowed"), ("-t ext4", "filesystem type"), ("--rbind", "not allowed"),
    ("-o", "needs a value"), ("-T /etc/fstab", "not allowed"), ("--target-prefix /", "not allowed"),
    ("-o rbind", "not allowed"), ("-o make-shared", "not allowed"),
])
def test_hostile_mount_options(opts: str, message: str) -> None:
    refused(mount_hash(2, "/mnt/b", mount_opts=opts), "mount_opts", message)


def test_mount_options_become_argv_words() -> None:
    opts = parse_mount_opts("-n -t nfs -overs=3,nolock -o soft")
    assert opts.argv() == ["-n", "-t", "nfs", "-overs=3,nolock,soft"]
    assert parse_mount_opts("--bind").bind and parse_mount_opts("-o bind,noexec").options == ("noexec",)
    assert parse_umount_opts("-f -l") == ("-f", "-l")


@pytest.mark.parametrize("opts", ["-a", "-R", "-t nfs", "-f; reboot", "--recursive"])
def test_hostile_umount_options(opts: str) -> None:
    refused(mount_hash(2, "/mnt/b", umount_opts=opts), "umount_opts")


@pytest.mark.parametrize(("key", "value", "field"), [
    ("id", "1; rm", "id"), ("id", 0, "id"), ("on_start_fail", "never", "on_start_fail"),
    ("type", "bind", "type"), ("mode", "rwx", "mode"), ("pool_fs", "tank/../etc", "pool_fs"),
    ("pool_fs", "tank/vz\n", "pool_fs"), ("dataset_name", "101/'x'", "dataset_name"),
    ("dataset_name", "/101", "dataset_name"), ("dst", None, "dst"),
])
def test_hostile_values(key: str, value: Any, field: str) -> None:
    refused({**mount_hash(2, "/mnt/b"), key: value}, field)


@pytest.mark.parametrize(("extra", "field"), [
    ({**NFS, "src_node_addr": None}, "src_node_addr"), ({**NFS, "src_node_addr": "host; id"}, "src_node_addr"),
    ({**NFS, "src_node_addr": "evil.example.org"}, "src_node_addr"),
    ({**SNAP, "snapshot_id": None}, "snapshot_id"), ({**SNAP, "snapshot": "x@y"}, "snapshot"),
    ({**SNAP, "branch": "b"}, "dataset_tree"), ({**SNAP, "dataset_tree": "../t", "branch": "b"}, "dataset_tree"),
])
def test_type_specific_fields(extra: dict[str, Any], field: str) -> None:
    refused(mount_hash(2, "/mnt/b", **extra), field)


def test_duplicates_are_refused() -> None:
    refused(mount_hash(1, "/mnt/other"), "id", "twice")
    refused(mount_hash(2, "/mnt/a"), "dst", "twice")


def test_missing_field_is_named() -> None:
    mount = mount_hash(2, "/mnt/b")
    del mount["umount_opts"]
    refused(mount, "umount_opts", "missing")
