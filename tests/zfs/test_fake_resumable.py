"""fake-zfs's OpenZFS dialect (``FAKE_ZFS_DIALECT=openzfs``): resumable receive, through the CLI and the driver.

Fake only (no zfs-fuse needed). The streams are broken with the ``break_send`` fault, the receiver keeps the
partial state (``recv -s``), and ``send -t <receive_resume_token>`` completes it: the result must equal an
uninterrupted receive (same files, same snapshot guid).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.conftest import Backend, Pool, Result, make_backend
from vpsadmind.testing.fakezfs import faults
from vpsadmind.zfs import Zfs
from vpsadmind.zfs.capabilities import probe

pytestmark = pytest.mark.timeout(120)

TOKEN = re.compile(r"[0-9A-Za-z+/=_-]{1,8192}")
SAVED = re.compile(r"Partially received snapshot is saved\.\n.*\n    zfs send -t (\S+)\n\Z")


@pytest.fixture
def oz(tmp_path: Path) -> Iterator[Backend]:
    """fake-zfs in the OpenZFS dialect."""
    be = make_backend("fake", tmp_path)
    be.env["FAKE_ZFS_DIALECT"] = "openzfs"
    try:
        yield be
    finally:
        be.cleanup()


@pytest.fixture
def fuse(tmp_path: Path) -> Iterator[Backend]:
    """fake-zfs in its default zfs-fuse dialect."""
    be = make_backend("fake", tmp_path)
    try:
        yield be
    finally:
        be.cleanup()


def tree(root: Path) -> dict[str, bytes | str]:
    """Every file (contents), symlink (target) and directory ("dir") under ``root``, by relative path."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_bytes()
    return found


def fill(root: Path, tag: str, count: int = 4, size: int = 120_000) -> None:
    """Random files (incompressible, so byte offsets in the stream are predictable) plus a subdirectory."""
    (root / "sub").mkdir(exist_ok=True)
    for i in range(count):
        (root / f"{tag}{i}.bin").write_bytes(os.urandom(size))
    (root / "sub" / f"{tag}.txt").write_text(f"{tag}\n")
    link = root / "link"
    if not link.is_symlink():
        link.symlink_to("sub")


def saved_token(result: Result) -> str:
    """The token a broken ``recv -s`` prints (and checks it is one)."""
    assert result.rc == 1, result
    found = SAVED.search(result.err)
    assert found is not None, result.err
    assert TOKEN.fullmatch(found.group(1))
    return found.group(1)


def token_of(be: Backend, name: str) -> str:
    return be.ok("get", "-H", "-o", "value", "receive_resume_token", name).out.strip()


def names(be: Backend, root: str) -> list[str]:
    return be.ok("list", "-H", "-r", "-t", "all", "-o", "name", root).lines


def source(be: Backend, pool: Pool, snaps: tuple[str, ...] = ("a",)) -> str:
    """``<pool>/src`` with one snapshot per name, each after new data; returns the filesystem name."""
    fs = f"{pool.name}/src"
    be.ok("create", fs)
    for snap in snaps:
        fill(pool.mnt / "src", snap)
        be.ok("snapshot", f"{fs}@{snap}")
    return fs


# -- the dialect and the probe -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["zfs-fuse", "openzfs"])
async def test_probe_finds_resumable_receive_only_in_openzfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             dialect: str) -> None:
    be = make_backend("fake", tmp_path)
    for key in ("FAKE_ZFS_ROOT", "PYTHONPATH"):
        monkeypatch.setenv(key, be.env[key])
    monkeypatch.setenv("FAKE_ZFS_DIALECT", dialect)
    caps = await probe(str(tmp_path / "bin" / "zfs"), fuse=False)
    openzfs = dialect == "openzfs"
    assert caps.resumable_receive is openzfs
    assert ("-t" in caps.send_flags) is openzfs
    assert ({"-s", "-A"} <= caps.recv_flags) is openzfs
    assert {"-i", "-I", "-R", "-p", "-D"} <= caps.send_flags and {"-F", "-d", "-e", "-n", "-u", "-v"} <= caps.recv_flags
    if not openzfs:       # what zfs-fuse 0.7.0 reports (capabilities.py's docstring)
        assert caps.send_flags == {"-D", "-I", "-R", "-i", "-p"}
        assert caps.recv_flags == {"-F", "-d", "-e", "-n", "-u", "-v"}


def test_openzfs_usage_lines(oz: Backend) -> None:
    usage = oz.zfs().err
    assert ("\tsend [-DnPpRvLecwhb] [-[i|I] snapshot] <snapshot>\n"
            "\tsend [-DnvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>\n"
            "\tsend [-DnvPe] -t <receive_resume_token>\n"
            "\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...\n"
            "\t    <filesystem|volume|snapshot>\n") in usage
    assert "\treceive -A <filesystem|volume>\n" in usage


def test_unknown_dialect_is_refused(oz: Backend) -> None:
    oz.env["FAKE_ZFS_DIALECT"] = "solaris"
    got = oz.zfs("list")
    assert (got.rc, got.err) == (1, "fake-zfs: FAKE_ZFS_DIALECT must be 'zfs-fuse' or 'openzfs', not 'solaris'\n")


def test_zfs_fuse_dialect_has_no_resumable_receive(fuse: Backend) -> None:
    pool = fuse.new_pool()
    fs = source(fuse, pool)
    assert "invalid option 's'" in fuse.zfs("recv", "-s", f"{pool.name}/dst", stdin=b"").err
    assert fuse.zfs("send", "-t", "1-0-0-00").rc == 2
    assert fuse.zfs("get", "receive_resume_token", pool.name).rc == 2
    faults.break_send(fuse.root, after_bytes=100_000)
    sent, got = fuse.send_recv([f"{fs}@a"], [f"{pool.name}/dst"])
    assert (sent.rc, got.rc) == (1, 1)
    assert got.err == "cannot receive new filesystem stream: invalid backup stream\n"
    assert fuse.zfs("list", f"{pool.name}/dst").rc == 1


# -- streams -------------------------------------------------------------------------------------------------------
def test_send_is_deterministic(oz: Backend) -> None:
    pool = oz.new_pool()
    fs = source(oz, pool, ("a", "b", "c"))
    full = oz.send_bytes(f"{fs}@a")
    assert oz.send_bytes(f"{fs}@a") == full
    ranged = oz.send_bytes("-I", f"{fs}@a", f"{fs}@c")
    assert ranged == oz.send_bytes("-i", f"{fs}@a", f"{fs}@b") + oz.send_bytes("-i", f"{fs}@b", f"{fs}@c")


def test_full_stream_broken_twice_resumes(oz: Backend) -> None:
    pool = oz.new_pool()
    fs = source(oz, pool)
    dst = f"{pool.name}/copy"
    faults.break_send(oz.root, after_bytes=150_000)
    sent, got = oz.send_recv([f"{fs}@a"], ["-s", dst])
    assert sent.rc == 1 and "Input/output error" in sent.err
    first = saved_token(got)
    assert got.err.startswith("cannot receive new filesystem stream: checksum mismatch or incomplete stream.\n")
    assert token_of(oz, dst) == first
    assert names(oz, dst) == [dst]                              # a filesystem, no snapshot yet
    assert oz.get(dst, "mounted") == "no"

    faults.break_send(oz.root, after_bytes=150_000)             # the resumed stream breaks as well
    sent, got = oz.send_recv(["-t", first], ["-s", dst])
    assert sent.rc == 255 and sent.err == f"warning: cannot send '{fs}@a': Input/output error\n"
    second = saved_token(got)
    assert got.err.startswith("cannot receive resume stream: checksum mismatch or incomplete stream.\n")
    assert second != first and token_of(oz, dst) == second

    sent, got = oz.send_recv(["-t", second], ["-s", dst])
    assert (sent.rc, got.rc) == (0, 0), (sent, got)
    assert token_of(oz, dst) == "-"
    assert names(oz, dst) == [dst, f"{dst}@a"]
    assert oz.get(f"{dst}@a", "guid") == oz.get(f"{fs}@a", "guid")
    assert oz.get(dst, "mounted") == "yes"
    assert tree(pool.mnt / "copy") == tree(pool.mnt / "src")
    assert not list((oz.root / "pools" / pool.name / "resume").iterdir())
    assert not list((oz.root / "pools" / pool.name / "tmp").iterdir())


@pytest.mark.parametrize("cut", ["first", "second"])
def test_incremental_range_broken_resumes(oz: Backend, cut: str) -> None:
    """``-I a c`` is one record for b, one for c; a break keeps the record it hit, the ones before are done."""
    pool = oz.new_pool()
    fs = source(oz, pool, ("a", "b", "c"))
    dst = f"{pool.name}/copy"
    assert oz.send_recv([f"{fs}@a"], [dst]) == (Result(0, "", ""), Result(0, "", ""))
    record_b = len(oz.send_bytes("-i", f"{fs}@a", f"{fs}@b"))
    faults.break_send(oz.root, after_bytes=record_b // 2 if cut == "first" else record_b + 100_000)
    sent, got = oz.send_recv(["-I", f"{fs}@a", f"{fs}@c"], ["-s", "-F", dst])
    assert sent.rc == 1
    token = saved_token(got)
    assert got.err.startswith("cannot receive incremental stream: checksum mismatch or incomplete stream.\n")
    done = [f"{dst}@a"] if cut == "first" else [f"{dst}@a", f"{dst}@b"]
    assert names(oz, dst) == [dst, *done]

    sent, got = oz.send_recv(["-t", token], ["-s", "-F", dst])
    assert (sent.rc, got.rc) == (0, 0), (sent, got)
    assert token_of(oz, dst) == "-"
    if cut == "first":                     # the resume completed b only: c needs a new send, as in OpenZFS
        assert names(oz, dst) == [dst, f"{dst}@a", f"{dst}@b"]
        assert oz.send_recv(["-I", f"{fs}@b", f"{fs}@c"], ["-s", "-F", dst]) == (Result(0, "", ""),
                                                                                 Result(0, "", ""))
    assert names(oz, dst) == [dst, f"{dst}@a", f"{dst}@b", f"{dst}@c"]
    for snap in "abc":
        assert oz.get(f"{dst}@{snap}", "guid") == oz.get(f"{fs}@{snap}", "guid")
    assert tree(pool.mnt / "copy") == tree(pool.mnt / "src")


# -- partial state -------------------------------------------------------------------------------------------------
def broken_incremental(be: Backend, pool: Pool) -> tuple[str, str, str]:
    """``copy`` has @a; an incremental a->b into it broke with ``-s``: (source fs, target, token)."""
    fs = source(be, pool, ("a", "b"))
    dst = f"{pool.name}/copy"
    be.send_recv([f"{fs}@a"], [dst])
    faults.break_send(be.root, after_bytes=100_000)
    _, got = be.send_recv(["-i", f"{fs}@a", f"{fs}@b"], ["-s", dst])
    return fs, dst, saved_token(got)


def test_abort_leaves_the_target_as_before(oz: Backend) -> None:
    pool = oz.new_pool()
    fs, dst, _ = broken_incremental(oz, pool)
    before = tree(pool.mnt / "copy")
    assert oz.ok("recv", "-A", dst).err == ""
    assert token_of(oz, dst) == "-"
    assert names(oz, dst) == [dst, f"{dst}@a"]
    assert tree(pool.mnt / "copy") == before
    again = oz.zfs("recv", "-A", dst)
    assert (again.rc, again.err) == (1, f"'{dst}' does not have any resumable receive state to abort\n")

    faults.break_send(oz.root, after_bytes=100_000)           # a new filesystem: the abort destroys it
    _, got = oz.send_recv([f"{fs}@a"], ["-s", f"{pool.name}/fresh"])
    saved_token(got)
    oz.ok("recv", "-A", f"{pool.name}/fresh")
    assert oz.zfs("list", f"{pool.name}/fresh").err == f"cannot open '{pool.name}/fresh': dataset does not exist\n"
    missing = oz.zfs("recv", "-A", f"{pool.name}/fresh")
    assert missing.rc == 2 and missing.err.startswith(
        f"cannot open '{pool.name}/fresh': dataset does not exist\nusage:\n\treceive ")


def test_new_stream_onto_partial_state_is_refused(oz: Backend) -> None:
    pool = oz.new_pool()
    fs, dst, token = broken_incremental(oz, pool)
    busy = f'destination {dst} contains partially-complete state from "zfs receive -s".\n'
    for flags in ([], ["-F"], ["-s", "-F"]):
        _, got = oz.send_recv(["-i", f"{fs}@a", f"{fs}@b"], [*flags, dst])
        assert (got.rc, got.err) == (1, "cannot receive incremental stream: " + busy)
    _, got = oz.send_recv([f"{fs}@b"], ["-F", dst])
    assert (got.rc, got.err) == (1, "cannot receive new filesystem stream: destination has snapshots "
                                    f"(eg. {dst}@a)\nmust destroy them to overwrite it\n")
    assert token_of(oz, dst) == token                       # nothing of that touched the partial state
    sent, got = oz.send_recv(["-t", token], [dst])          # resuming works without -s too
    assert (sent.rc, got.rc) == (0, 0), (sent, got)
    assert names(oz, dst) == [dst, f"{dst}@a", f"{dst}@b"]


def test_resume_without_s_drops_state_when_broken_again(oz: Backend) -> None:
    pool = oz.new_pool()
    fs = source(oz, pool)
    dst = f"{pool.name}/copy"
    faults.break_send(oz.root, after_bytes=100_000)
    _, got = oz.send_recv([f"{fs}@a"], ["-s", dst])
    token = saved_token(got)
    faults.break_send(oz.root, after_bytes=100_000)
    _, got = oz.send_recv(["-t", token], [dst])
    assert (got.rc, got.err) == (1, "cannot receive resume stream: incomplete stream\n")
    assert oz.zfs("list", dst).rc == 1                      # the filesystem the first receive created is gone


def test_resume_stream_into_the_wrong_target(oz: Backend) -> None:
    pool = oz.new_pool()
    fs, dst, token = broken_incremental(oz, pool)
    oz.ok("create", f"{pool.name}/other")
    _, got = oz.send_recv(["-t", token], ["-s", f"{pool.name}/other"])
    assert (got.rc, got.err) == (1, "cannot receive resume stream: kernel modules must be upgraded to receive "
                                    "this stream.\n")
    _, got = oz.send_recv(["-t", token], [f"{pool.name}/nothing"])
    assert (got.rc, got.err) == (1, f"cannot receive resume stream: destination '{pool.name}/nothing' does not "
                                    "exist\n")
    assert token_of(oz, dst) == token


# -- tokens --------------------------------------------------------------------------------------------------------
def test_corrupted_tokens_fail_cleanly(oz: Backend) -> None:
    pool = oz.new_pool()
    _, dst, token = broken_incremental(oz, pool)
    version, checksum, length, payload = token.split("-")
    flipped = payload[:-1] + ("0" if payload[-1] != "0" else "1")
    cases = {
        "garbage": "resume token is corrupt (invalid format)",
        f"2-{checksum}-{length}-{payload}": "resume token is corrupt (invalid version 2)",
        f"1-{checksum}-{length}-{payload[:-2]}zz": "resume token is corrupt (payload is not hex-encoded)",
        f"1-{checksum}-{length}-{flipped}": "resume token is corrupt (incorrect checksum)",
    }
    for bad, reason in cases.items():
        got = oz.zfs("send", "-t", bad)
        assert (got.rc, got.out, got.err) == (255, "", f"cannot resume send: {reason}\n"), bad
        _, recv = oz.send_recv(["-t", bad], ["-s", dst])
        assert (recv.rc, recv.err) == (1, "cannot receive: failed to read from stream\n")
    assert token_of(oz, dst) == token
    usage = oz.zfs("send", "-t", token, f"{pool.name}/src@b")
    assert usage.rc == 2 and usage.err.startswith("no additional arguments are permitted with -t\nusage:\n")
    combined = oz.zfs("send", "-p", "-t", token)
    assert combined.rc == 2 and combined.err.startswith("invalid flags combined with -t\n")


def test_token_of_a_vanished_snapshot(oz: Backend) -> None:
    pool = oz.new_pool()
    fs, _, token = broken_incremental(oz, pool)
    oz.ok("rename", f"{fs}@b", f"{fs}@renamed")              # found by guid, like libzfs' guid_to_name()
    assert oz.zfs("send", "-n", "-t", token).rc == 0
    base_guid = int(oz.get(f"{fs}@a", "guid"))
    oz.ok("destroy", f"{fs}@a")
    got = oz.zfs("send", "-t", token)
    assert (got.rc, got.err) == (255, f"cannot resume send: incremental source {base_guid:#x} no longer exists\n")
    oz.ok("destroy", f"{fs}@renamed")
    got = oz.zfs("send", "-t", token)
    assert (got.rc, got.err) == (255, f"cannot resume send: '{fs}@b' used in the initial send no longer exists\n")
    oz.ok("snapshot", f"{fs}@b")
    got = oz.zfs("send", "-t", token)
    assert (got.rc, got.err) == (255, f"cannot resume send: '{fs}@b' is no longer the same snapshot used in the "
                                      "initial send\n")


# -- through the driver --------------------------------------------------------------------------------------------
def pipe(send: list[str], recv: list[str]) -> tuple[int, int, str]:
    """Run ``send | recv`` (argv lists from the driver); (send rc, recv rc, recv stderr)."""
    sender = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert sender.stdout is not None
    receiver = subprocess.run(recv, stdin=sender.stdout, capture_output=True, timeout=60, check=False)
    sender.stdout.close()
    return sender.wait(60), receiver.returncode, receiver.stderr.decode()


async def test_driver_resumes_an_interrupted_transfer(oz: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("FAKE_ZFS_ROOT", "FAKE_ZFS_DIALECT", "PYTHONPATH"):
        monkeypatch.setenv(key, oz.env[key])
    pool = oz.new_pool()
    fs = source(oz, pool, ("a", "b"))
    dst = f"{pool.name}/copy"
    zfs = Zfs(zfs=str(oz.tmp / "bin" / "zfs"), zpool=str(oz.tmp / "bin" / "zpool"))
    caps = await zfs.probe()
    assert caps.resumable_receive
    assert zfs.recv_argv(dst, resumable=True)[1:] == ["recv", "-F", "-s", dst]
    assert await zfs.resume_token(dst) is None                # no such dataset yet

    faults.break_send(oz.root, after_bytes=120_000)
    rcs = pipe(zfs.send_argv(f"{fs}@a"), zfs.recv_argv(dst, resumable=True))
    assert rcs[:2] == (1, 1)
    token = await zfs.resume_token(dst)
    assert token is not None and token in rcs[2]
    assert pipe(zfs.send_argv(f"{fs}@a", resume_token=token), zfs.recv_argv(dst, resumable=True)) == (0, 0, "")
    assert await zfs.resume_token(dst) is None

    faults.break_send(oz.root, after_bytes=120_000)
    rcs = pipe(zfs.send_argv(f"{fs}@b", base=f"{fs}@a"), zfs.recv_argv(dst, resumable=True))
    assert rcs[:2] == (1, 1) and await zfs.resume_token(dst) is not None
    await zfs.abort_resumable(dst)
    assert await zfs.resume_token(dst) is None
    await zfs.abort_resumable(dst)                            # nothing pending: not an error for the driver
    assert pipe(zfs.send_argv(f"{fs}@b", base=f"{fs}@a"), zfs.recv_argv(dst, resumable=True)) == (0, 0, "")
    guids = await zfs.guids([f"{fs}@a", f"{fs}@b", f"{dst}@a", f"{dst}@b"])
    assert guids[f"{dst}@a"] == guids[f"{fs}@a"] and guids[f"{dst}@b"] == guids[f"{fs}@b"]
    assert tree(pool.mnt / "copy") == tree(pool.mnt / "src")
