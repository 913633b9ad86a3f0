"""The upgrade's pure parts: name policies, share options, exact mountpoint matching, no-clobber renames,
output escaping, exit-code precedence, the state file. No zfs or database needed."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpsadmind.testing.db import TestDbSettings
from vpsadmind.testing.engine import make_config
from vpsadmind.upgrade import Options, nasfs, run_upgrade
from vpsadmind.upgrade.context import StateFile
from vpsadmind.upgrade.nas import mounted_paths
from vpsadmind.upgrade.register import utc_from_local
from vpsadmind.upgrade.report import ExitCode, Row, Status, StepReport, display, exit_code, render
from vpsadmind.upgrade.reserved import _like_prefix
from vpsadmind.upgrade.sharenfs import allows, wanted_value, with_clients
from vpsadmind.upgrade.zfsstate import Snap, local_timestamp, plan_renames, v2_name

# -- snapshot names ---------------------------------------------------------------------------------------------


def snap(name: str, creation: int = 0, txg: int = 1) -> Snap:
    return Snap(name, txg, creation, "1")


def test_v2_names_of_v1_snapshots() -> None:
    assert v2_name(snap("backup-2015-07-01T01:00:03")) == "2015-07-01T01:00:03"
    assert v2_name(snap("2015-07-01T01:00:03")) == "2015-07-01T01:00:03"
    created = int(dt.datetime(2015, 8, 1, 12, 30, 5).timestamp())
    assert v2_name(snap("restore-2015-07-01T01:00:03.2", created)) == local_timestamp(created) == \
        "2015-08-01T12:30:05"
    for odd in ("emergency-migration-p1", "backup-2015-07-01", "backup-2015-07-01T01:00:03x", "restore-x.1",
                "2015-07-01T01:00:03.1"):
        assert v2_name(snap(odd)) is None, odd


def test_only_the_prefix_of_the_snapshot_part_is_renamed() -> None:
    renames, problems = plan_renames([snap("backup-2015-07-01T01:00:03"), snap("2015-07-02T01:00:00")])
    assert renames == {"backup-2015-07-01T01:00:03": "2015-07-01T01:00:03"} and problems == []


def test_collisions_and_foreign_names_are_problems() -> None:
    renames, problems = plan_renames([snap("2015-07-01T01:00:03"), snap("backup-2015-07-01T01:00:03"),
                                      snap("clone")])
    assert renames == {}
    assert problems == ["@backup-2015-07-01T01:00:03 and @2015-07-01T01:00:03 would both be @2015-07-01T01:00:03",
                        "@clone is not a v1.22 backup name"]


@pytest.fixture
def prague() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Prague"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_snapshot_times_are_local_names_stored_in_utc(prague: None) -> None:
    assert utc_from_local("2015-07-01T01:00:03") == dt.datetime(2015, 6, 30, 23, 0, 3)   # CEST, UTC+2
    assert utc_from_local("2015-12-01T01:00:03") == dt.datetime(2015, 12, 1, 0, 0, 3)    # CET, UTC+1


# -- sharenfs ---------------------------------------------------------------------------------------------------

A, B = ipaddress.IPv4Address("10.1.0.1"), ipaddress.IPv4Address("10.1.0.2")


@pytest.mark.parametrize(("value", "a", "b"), [
    ("on", True, True),
    ("off", False, False),
    ("", False, False),
    ("rw,no_root_squash", True, True),                 # no host list: everybody
    ("rw=@10.1.0.1/32,no_root_squash", True, False),
    ("rw=@10.1.0.0/31", True, False),                 # 10.1.0.0-10.1.0.1
    ("rw=@10.1.0.0/24", True, True),
    ("rw=10.1.0.2:@10.9.0.0/16", False, True),
    ("rw=*", True, True),
    ("ro=@10.1.0.0/24", False, False),                # read-only is not enough
    ("rw=node1.example.org", False, False),          # names are not resolved
])
def test_which_nodes_a_share_lets_in(value: str, a: bool, b: bool) -> None:
    assert (allows(value, A), allows(value, B)) == (a, b)


def test_missing_nodes_are_added_to_the_rw_list() -> None:
    assert with_clients("rw=@10.1.0.1/32,no_root_squash", [B]) == "rw=@10.1.0.1/32:@10.1.0.2/32,no_root_squash"
    assert with_clients("no_root_squash,ro=@10.0.0.0/8", [A, B]) == \
        "rw=@10.1.0.1/32:@10.1.0.2/32,no_root_squash,ro=@10.0.0.0/8"
    fixed = with_clients("rw=@10.1.0.1/32", [B])
    assert allows(fixed, A) and allows(fixed, B)


def test_wanted_share_values() -> None:
    assert wanted_value("rw=@10.1.0.0/24", [A, B], None) is None          # nothing missing
    assert wanted_value("rw=@10.1.0.1/32", [A, B], None) == "rw=@10.1.0.1/32:@10.1.0.2/32"
    assert wanted_value("off", [A, B], None) is None                      # not shared: the admin's choice
    assert wanted_value("off", [A, B], "no_root_squash") == "rw=@10.1.0.1/32:@10.1.0.2/32,no_root_squash"
    assert wanted_value("-", [A], "") == "rw=@10.1.0.1/32"


# -- NAS file operations ------------------------------------------------------------------------------------------


def test_child_mountpoints_match_by_exact_path_only() -> None:
    mnt = b"/p/nas/1000"
    exact, blocked = nasfs.child_entries(mnt, [b"/p/nas/1000/www.data", b"/p/nas/1000/www.data/deep",
                                               b"/p/nas/1000/a b/c", b"/p/nas/10000", b"/elsewhere/x"])
    assert exact == {b"www.data"}            # not wwwXdata or www.data.old: no patterns involved
    assert blocked == {b"a b"}               # a plain directory with a mountpoint inside


def test_move_noreplace_never_clobbers(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    src, dst = os.path.join(root, b"odd \xff\n[x]*"), os.path.join(root, b"target")
    with open(src, "wb") as fh:
        fh.write(b"data")
    os.mkdir(dst)  # an empty directory: rename(2) would replace it
    with pytest.raises(FileExistsError):
        nasfs.move_noreplace(src, dst)
    os.rmdir(dst)
    with open(dst, "wb") as fh:
        fh.write(b"other")
    with pytest.raises(FileExistsError):
        nasfs.move_noreplace(src, dst)
    os.unlink(dst)
    nasfs.move_noreplace(src, dst)
    with open(dst, "rb") as fh:
        assert fh.read() == b"data"
    assert not os.path.lexists(src)


def test_staging_directory_takes_the_roots_owner_and_mode(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.chown(root, 1234, 2345)
    os.chmod(root, 0o751)
    staging = nasfs.new_staging(root)
    assert staging.startswith(nasfs.STAGING_PREFIX)
    nasfs.make_staging(root, staging)
    nasfs.make_staging(root, staging)  # again: a resumed run
    st = os.lstat(os.path.join(root, staging))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 2345, 0o751)


def test_v2_root_is_only_a_private_directory(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.mkdir(os.path.join(root, b"www"))
    assert not nasfs.is_v2_root(root, set())
    os.mkdir(os.path.join(root, b"private"))
    assert nasfs.is_v2_root(root, {b"www"})
    with open(os.path.join(root, b".hidden"), "wb"):
        pass
    assert not nasfs.is_v2_root(root, {b"www"})
    assert nasfs.root_entries(root, {b"www"}) == [b".hidden", b"private"]


def test_mounted_paths_unescape_proc_mounts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_bytes(b"host:/nas /vz/root/101/mnt/my\\040nas nfs rw 0 0\n"
                       b"/dev/x /vz/root/102/a\\134b ext4 rw 0 0\n")
    assert mounted_paths(str(mounts)) == {"/vz/root/101/mnt/my nas", "/vz/root/102/a\\b"}


# -- output, exit codes, state ------------------------------------------------------------------------------------


def test_names_are_printed_on_one_line() -> None:
    assert display(b"a b\n\xff") == "a b\\n\\xff"
    assert display("back\\slash\t") == "back\\\\slash\\t"


def _report(*statuses: Status) -> StepReport:
    return StepReport("s", "t", [Row("x", "y", status=s) for s in statuses])


@pytest.mark.parametrize(("statuses", "check", "code"), [
    ((Status.OK, Status.NOTE), False, ExitCode.NOTHING),
    ((Status.OK, Status.DONE), False, ExitCode.DONE),
    ((Status.DONE, Status.PENDING), False, ExitCode.PENDING),
    ((Status.TODO,), True, ExitCode.PENDING),
    ((Status.DONE, Status.PENDING, Status.HUMAN), False, ExitCode.HUMAN),
    ((Status.HUMAN, Status.FAILED), False, ExitCode.FAILED),
])
def test_exit_code_precedence(statuses: tuple[Status, ...], check: bool, code: ExitCode) -> None:
    assert exit_code([_report(*statuses)], check=check) == code


def test_tables_say_would_do_in_check_and_not_done_in_apply() -> None:
    report = _report(Status.TODO)
    assert "would do" in render(report, check=True).splitlines()[-1]
    assert "not done" in render(report, check=False).splitlines()[-1]
    assert "skipped: because" in render(StepReport("s", "t", skipped="because"), check=False)


def test_state_file_updates_atomically(tmp_path: Path) -> None:
    state = StateFile(str(tmp_path / "sub" / "state.json"))
    assert state.load() == {}
    state.update(a=1)
    state.update(b={"c": 2})
    assert state.load() == {"a": 1, "b": {"c": 2}}
    assert os.listdir(tmp_path / "sub") == ["state.json"]  # no temporary file left


def test_like_patterns_escape_wildcards() -> None:
    assert _like_prefix("10_0/a%b\\c") == "10\\_0/a\\%b\\\\c/%"


async def test_only_one_apply_at_a_time(tmp_path: Path) -> None:
    cfg = make_config(TestDbSettings(), "unused", journal=str(tmp_path / "journal"))
    state = str(tmp_path / "state.json")
    with open(state + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = io.StringIO()
        result = await run_upgrade(cfg, apply=True, options=Options(state_file=state), out=out)
    assert result.code == ExitCode.FAILED
    assert "another 'vpsadmind upgrade apply' runs on this node" in out.getvalue()
