"""Name, property and value validation (pure: no zfs needed)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpsadmind.errors import AgentError
from vpsadmind.zfs import errors, names
from vpsadmind.zfs.errors import InvalidName, ZfsError

HOSTILE = [
    "-rf",
    "pool/-rf",
    "pool/a/../b",
    "pool/a/./b",
    "pool/a b",
    "pool/a\nb",
    "pool/a\tb",
    "pool/a\x00b",
    "pool/a@b@c",
    "pool/" + "x" * 300,
    "/pool/a",
    "pool/a/",
    "pool//a",
    "",
    "pool/a%b",
    "pool/a;rm",
    "pool/a$(x)",
    "pool/ä",
    "pool/a\x7f",
    "pool/a@",
    "pool/a@-x",
    "pool/a@b/c",
    "pool/a#b@c",
    "1pool/a",
]


@pytest.mark.parametrize("name", ["pool", "pool/a", "vz/private/101", "tank/a_b.c:d-e", "p/tree.0/branch-x.1",
                                  "vz/vpsadmin/mount/12.snapshot", "P/" + "x" * 253])
def test_valid_datasets(name: str) -> None:
    assert names.validate_dataset(name) == name
    assert names.validate_name(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_rejected_everywhere(name: str) -> None:
    for check in (names.validate_dataset, names.validate_snapshot, names.validate_name):
        with pytest.raises(InvalidName):
            check(name)


def test_invalid_name_is_a_zfs_error_and_an_agent_error_naming_value_and_rule() -> None:
    with pytest.raises(InvalidName) as info:
        names.validate_dataset("pool/a b")
    exc = info.value
    assert isinstance(exc, ZfsError)
    assert isinstance(exc, AgentError)
    assert exc.value == "pool/a b"
    assert "whitespace" in exc.rule
    assert "'pool/a b'" in str(exc)
    assert "whitespace" in str(exc)
    assert exc.argv == []
    assert exc.output["zfs_error"] == "InvalidName"


@pytest.mark.parametrize(("name", "rule"), [
    ("pool/a/../b", "'..' component"),
    ("pool/a/./b", "'.' component"),
    ("-rf", "start with '-'"),
    ("pool/-x", "starts with '-'"),
    ("pool//a", "empty component"),
    ("pool/a/", "empty component"),
    ("/pool", "start with '/'"),
    ("pool/a%b", "'%'"),
    ("pool/" + "x" * 300, "at most 255"),
    ("pool/a\nb", "control character"),
    ("pool/a;b", "';' is not allowed"),
    ("9pool/a", "must start with a letter"),
])
def test_rules_are_named(name: str, rule: str) -> None:
    with pytest.raises(InvalidName) as info:
        names.validate_dataset(name)
    assert rule in str(info.value)


def test_length_limit_is_255() -> None:
    assert names.validate_dataset("p/" + "x" * 253)
    with pytest.raises(InvalidName, match="256 characters"):
        names.validate_dataset("p/" + "x" * 254)
    with pytest.raises(InvalidName, match="at most 255"):
        names.validate_snapshot("p/a@" + "x" * 252)


def test_snapshots() -> None:
    assert names.validate_snapshot("pool/ds@2016-01-01T12:00:00") == "pool/ds@2016-01-01T12:00:00"
    assert names.split_snapshot("pool/ds@s") == ("pool/ds", "s")
    for bad in ("pool/ds", "pool/ds@", "@s", "pool/ds@a@b", "pool/ds@a/b", "pool/ds@-x", "pool/ds@a b",
                "pool/ds#b", "pool/ds@."):
        with pytest.raises(InvalidName):
            names.validate_snapshot(bad)
    with pytest.raises(InvalidName, match="not a snapshot"):
        names.validate_dataset("pool/ds@s")
    with pytest.raises(InvalidName, match="must be a dataset"):
        names.validate_name("pool/ds@s", snapshot=False)


def test_bookmarks_only_when_allowed() -> None:
    assert names.validate_bookmark("pool/ds#m") == "pool/ds#m"
    assert names.validate_name("pool/ds#m", bookmark=True) == "pool/ds#m"
    with pytest.raises(InvalidName, match="a dataset or a snapshot"):
        names.validate_name("pool/ds#m")


def test_short_snapshot_names_and_components() -> None:
    assert names.validate_snapshot_name("2016-01-01T12:00:00")
    assert names.validate_component("branch-2016-01-01T12:00:00.0")
    for bad in ("", "a/b", "a@b", "-x", ".", "..", "a b", "a%b", "x" * 256):
        with pytest.raises(InvalidName):
            names.validate_snapshot_name(bad)
        with pytest.raises(InvalidName):
            names.validate_component(bad)


def test_relative_paths() -> None:
    assert names.validate_relative("101/var/www") == "101/var/www"
    for bad in ("/101", "101/", "101//a", "101/../a", "101@s", "-101"):
        with pytest.raises(InvalidName):
            names.validate_relative(bad)


def test_join_validates_each_part() -> None:
    assert names.join("vz/private", "101", "var/www") == "vz/private/101/var/www"
    for parts in (("vz", "../etc"), ("vz", ""), ("vz", "a b"), ("vz", "-rf"), ("vz", "a@b"), ()):
        with pytest.raises(InvalidName):
            names.join(*parts)
    with pytest.raises(InvalidName, match="at most 255"):
        names.join("vz", "a" * 200, "b" * 60)


@pytest.mark.parametrize("prop", ["quota", "refquota", "compression", "userquota@alice", "groupused@1000",
                                  "vpsadmin:foo", "org.vpsadmin:snapshot_id", "a:b:c", "all"])
def test_valid_properties(prop: str) -> None:
    assert names.validate_property(prop) == prop


@pytest.mark.parametrize("prop", ["", "Quota", "vpsadmin:UP", "Vpsadmin:x", ":x", "vpsadmin:", "-o", "a b",
                                  "quota=1", "x\n", "1abc", "vpsadmin:" + "k" * 250, "userquota@-x"])
def test_invalid_properties(prop: str) -> None:
    with pytest.raises(InvalidName) as info:
        names.validate_property(prop)
    assert info.value.kind == "property name"


def test_property_name_limit_is_255() -> None:
    assert names.validate_property("vpsadmin:" + "k" * 246)
    with pytest.raises(InvalidName):
        names.validate_property("vpsadmin:" + "k" * 247)


def test_values() -> None:
    assert names.validate_value("") == ""
    assert names.validate_value("rw=@10.0.0.0/8,no_root_squash") == "rw=@10.0.0.0/8,no_root_squash"
    assert names.validate_value("a b=c") == "a b=c"
    assert names.validate_value("x" * 8191)
    for bad in ("a\nb", "a\x00b", "a\tb", "a\rb", "x" * 8192):
        with pytest.raises(InvalidName) as info:
            names.validate_value(bad, prop="sharenfs")
        assert "value of sharenfs" in str(info.value)


def test_tags() -> None:
    assert names.validate_tag("vpsadmin") == "vpsadmin"
    for bad in ("", "-r", "a b", "a/b", "a@b"):
        with pytest.raises(InvalidName):
            names.validate_tag(bad)


def test_parent_and_relative() -> None:
    assert names.parent("a/b/c") == "a/b"
    assert names.parent("a") is None
    assert names.parent("a/b@s") == "a/b"
    assert names.relative("vz/private/101/a", "vz/private") == "101/a"
    assert names.relative("vz/private", "vz/private") == ""
    assert names.relative("vz/privateX/1", "vz/private") is None


def test_non_strings_are_rejected() -> None:
    with pytest.raises(InvalidName, match="must be a string"):
        names.validate_dataset(101)  # type: ignore[arg-type]


_ACCEPTED = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*(/[A-Za-z0-9_.:][A-Za-z0-9_.:-]*)*(@[A-Za-z0-9_.:][A-Za-z0-9_.:-]*)?")


@given(st.text(alphabet=st.sampled_from(list("ab-_.:/@#% \n\x00Z9é")), max_size=30))
def test_anything_accepted_matches_the_grammar(name: str) -> None:
    try:
        names.validate_name(name)
    except InvalidName:
        return
    assert _ACCEPTED.fullmatch(name), name
    assert all(part not in (".", "..") for part in re.split(r"[/@]", name))


def test_classify_table() -> None:
    cases = {
        "cannot open 'P/missing': dataset does not exist": errors.DatasetNotFound,
        "cannot create 'nopool/a': no such pool 'nopool'": errors.PoolNotFound,
        "cannot create 'P/a': dataset already exists": errors.DatasetExists,
        "cannot destroy 'P/d1': dataset is busy": errors.DatasetBusy,
        "cannot destroy 'P/d1': pool or dataset is busy": errors.DatasetBusy,
        "could not find any snapshots to destroy; check snapshot names.": errors.DatasetNotFound,
        "cannot hold 'P/a@s1': tag already exists on this dataset": errors.HoldExists,
        "cannot release 't2' from 'P/a@s1': no such tag on this dataset": errors.NoSuchHold,
        "cannot rollback to 'P/a@s1': more recent snapshots exist\nuse '-r' to force": errors.MoreRecentSnapshots,
        "cannot receive incremental stream: destination P/dst has been modified\nsince most recent snapshot":
            errors.DestinationModified,
        "cannot receive new filesystem stream: destination has snapshots (eg. P/dst@1)\nmust destroy them":
            errors.DestinationHasSnapshots,
        "cannot receive new filesystem stream: destination 'P/dst' exists\nmust specify -F to overwrite it":
            errors.DestinationExists,
        "cannot create 'P/big': out of space": errors.NoSpace,
        "cannot receive: invalid stream (bad magic number)": errors.InvalidStream,
        "connect: No such file or directory\nPlease make sure that the zfs-fuse daemon is running.":
            errors.DaemonDown,
        "cannot create 'P/nopar/x': parent does not exist": errors.ParentNotFound,
        "invalid option 'p'\nusage:\n\tlist [-rH]": errors.Unsupported,
        "internal error: /usr/lib/zfs/pyzfs.py not found": errors.Unsupported,
        "cannot set property for 'P/a': bad numeric value 'foo'": errors.InvalidProperty,
        "'P/src' is not a snapshot": errors.WrongType,
        "something new": errors.ZfsError,
    }
    for message, cls in cases.items():
        assert errors.classify(message) is cls, message


def test_parse_message() -> None:
    assert errors.parse_message("cannot release 't2' from 'P/a@s1': no such tag on this dataset") == (
        "release", "P/a@s1", "no such tag on this dataset")
    assert errors.parse_message("cannot rollback to 'P/a@s1': more recent snapshots exist\nuse '-r'") == (
        "rollback", "P/a@s1", "more recent snapshots exist")
    assert errors.parse_message("cannot create snapshot 'P/a@s': dataset already exists") == (
        "create snapshot", "P/a@s", "dataset already exists")
    assert errors.parse_message("cannot receive: failed to read from stream") == (
        "receive", None, "failed to read from stream")
