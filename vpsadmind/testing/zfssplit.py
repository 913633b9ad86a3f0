"""One daemon, real pools and fake pools: ``zfs``/``zpool`` dispatchers that send each command to fake-zfs when
its operands name a fake pool, and to the real binaries otherwise.

A daemon has one ``bin.zfs`` and one ``bin.zpool``. To inject zfs faults (fake-zfs's ``faults.json``) on some
pools of a node while its other pools stay on zfs-fuse, point both at the scripts :meth:`SplitZfs.install`
writes::

    split = SplitZfs.install(tmp / "bin", fake_root=tmp / "fz", fake_pools=["fza1b2", "fzc3d4"])
    create_fake_pool(split.fake_root, "fza1b2")
    write_config(..., bin=split.bin)
    before = fake_state(split.fake_root)
    faults.no_space(split.fake_root, "snapshot", "fza1b2/*")

Routing (:func:`route`), decided per command line from the operands that name datasets or pools:

=====================================  ==========================================================================
command line                           goes to
=====================================  ==========================================================================
only fake-pool operands                fake-zfs, in this process (no second interpreter)
only real operands                     the real binary through ``os.execv``: stdin/stdout stay the caller's, so a
                                       ``send``/``recv`` stream passes untouched and nothing is copied
no operand: ``zfs list``/``get``,      both, output merged (:func:`merge_outputs`): tables realigned under one
``zfs mount``/``holds``, ``zpool       header, ``no pools/datasets available`` only when both are empty, exit
list``/``get``/``status``/``history``  status the first non-zero
no operand, anything else (``zfs``     the real binary: its usage text is what the daemon's capability probe must
alone, ``zpool upgrade``, ...)         see (the fake imitates the same zfs-fuse)
mixed operands, a listing above        split: each side gets its own operands, the options of both, output merged
mixed operands, anything else          refused (rc 1): a stream, rename or clone between a real and a fake pool
                                       cannot exist
``-a`` of mount/unmount/share/upgrade  refused (rc 1): it would act on every pool of the shared zfs-fuse daemon
``zfs send -t <token>``                by the pool of the snapshot the token names (fake-zfs tokens are zlib'ed
                                       JSON; anything else is a real token)
a path operand (``unmount /mnt/x``)    by the fake filesystem mounted at or above it, else real
=====================================  ==========================================================================

Operands are found with per-subcommand option tables (which options take a value, how many leading positionals
are not datasets: the property list of ``get``, the tag of ``hold``; ``k=v`` of ``set``; only the first
positional of ``zpool create``/``add``/...; ``-i``/``-I`` bases of ``send`` when written in full).

Merged output is real's rows, then fake's: ``-s``/``-S`` sort within each side only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:  # the dispatcher imports fake-zfs only when a command goes there (start-up time)
    from vpsadmind.testing.fakezfs.state import PoolState, Store

__all__ = ["SplitZfs", "Route", "Captured", "route", "merge_outputs", "main", "create_fake_pool",
           "destroy_fake_pool", "fake_run", "fake_state", "FAKE_ROOT_ENV"]

FAKE_ROOT_ENV: Final = "FAKE_ZFS_ROOT"
_CONFIG_NAME: Final = "zfssplit.json"
_POOL_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")
_EMPTY: Final = frozenset({"no datasets available", "no pools available"})
_TOKEN: Final = re.compile(r"\d+-[0-9a-fA-F]+-[0-9a-fA-F]+-([0-9a-fA-F]+)")
# Subcommands whose -a means "every pool/filesystem on the machine".
_ALL_VERBS: Final = frozenset({"mount", "unmount", "umount", "share", "unshare", "upgrade"})

Target = Literal["real", "fake", "both", "split", "refuse"]


# -- routing --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Spec:
    """How to find the dataset/pool operands of one subcommand."""

    values: str = ""           # option letters that take a value (getopt "x:")
    skip: int = 0              # leading positionals that are not names (property list, tag)
    listing: bool = False      # read-only: with no operand run on both sides, mixed operands are split
    first_only: bool = False   # zpool: only the first positional is a pool, the rest are devices


ZFS_SPECS: Final[dict[str, Spec]] = {
    "create": Spec("oVb"), "destroy": Spec(), "snapshot": Spec("o"), "snap": Spec("o"), "rollback": Spec(),
    "clone": Spec("o"), "promote": Spec(), "rename": Spec(), "list": Spec("osStd", listing=True),
    "get": Spec("ostd", skip=1, listing=True), "set": Spec(), "inherit": Spec(skip=1),
    "userspace": Spec("osSt"), "groupspace": Spec("osSt"), "mount": Spec("o", listing=True), "unmount": Spec(),
    "umount": Spec(), "share": Spec(), "unshare": Spec(), "send": Spec("iItX"), "receive": Spec("ox"),
    "recv": Spec("ox"), "hold": Spec(skip=1), "release": Spec(skip=1), "holds": Spec(listing=True),
    "upgrade": Spec("V"), "bookmark": Spec(), "diff": Spec(),
}
ZPOOL_SPECS: Final[dict[str, Spec]] = {
    "create": Spec("oOmR", first_only=True), "destroy": Spec(), "list": Spec("oT", listing=True),
    "get": Spec("o", skip=1, listing=True), "set": Spec(), "status": Spec("T", listing=True),
    "history": Spec(listing=True), "upgrade": Spec("V"), "iostat": Spec("T"), "import": Spec("dcoR"),
    "export": Spec(), "scrub": Spec(first_only=True), "clear": Spec(first_only=True),
    "add": Spec(first_only=True), "attach": Spec("o", first_only=True), "detach": Spec(first_only=True),
    "replace": Spec("o", first_only=True), "online": Spec(first_only=True), "offline": Spec(first_only=True),
}


@dataclass(frozen=True, slots=True)
class Route:
    """Where one command line goes; ``real_args``/``fake_args`` are the arguments each side gets."""

    target: Target
    real_args: tuple[str, ...] = ()
    fake_args: tuple[str, ...] = ()
    reason: str = ""


@dataclass(slots=True)
class _Parsed:
    flags: set[str] = field(default_factory=set)
    values: list[tuple[str, str]] = field(default_factory=list)      # (letter, value)
    positionals: list[tuple[int, str]] = field(default_factory=list)  # (index in args, word)


def _parse(args: Sequence[str], spec: Spec) -> _Parsed:
    """getopt with GNU permutation (options may follow operands, as zfs accepts them)."""
    out = _Parsed()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.positionals += [(j, a) for j, a in enumerate(args[i + 1:], i + 1)]
            break
        if arg.startswith("--"):
            out.flags.add(arg)
        elif arg.startswith("-") and len(arg) > 1:
            for j, letter in enumerate(arg[1:], 1):
                if letter in spec.values:
                    value = arg[j + 1:]
                    if not value and i + 1 < len(args):
                        i += 1
                        value = args[i]
                    out.values.append((letter, value))
                    break
                out.flags.add(letter)
        else:
            out.positionals.append((i, arg))
        i += 1
    return out


def pool_of(name: str) -> str:
    """The pool a dataset, snapshot or bookmark name belongs to."""
    return re.split(r"[/@#]", name, maxsplit=1)[0]


def _candidates(program: str, verb: str, spec: Spec, parsed: _Parsed) -> list[tuple[int, str]]:
    """(index, word) of the positionals that name a dataset or pool (index -1: an option's value)."""
    words = parsed.positionals[spec.skip:]
    if spec.first_only:
        words = words[:1]
    found = [(i, w) for i, w in words
             if "=" not in w and not w.startswith(("@", "%")) and not (program == "zpool" and w.isdigit())]
    if program == "zfs" and verb == "send":
        # -i/-I bases: ``pool/fs@snap`` names a dataset; ``@snap`` and ``snap`` are relative to the operand
        found += [(-1, v) for letter, v in parsed.values if letter in "iI" and "@" in v[1:]]
    return found


def _token_pool(token: str) -> str | None:
    """The pool of the snapshot a fake-zfs ``receive_resume_token`` names; None for any other token."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    try:
        fields = json.loads(zlib.decompress(bytes.fromhex(match.group(1))))
    except (ValueError, zlib.error):
        return None
    toname = fields.get("toname") if isinstance(fields, dict) else None
    return pool_of(toname) if isinstance(toname, str) else None


PathResolver = Callable[[str], "str | None"]


def route(program: str, args: Sequence[str], fake_pools: Iterable[str], *,
          resolve_path: PathResolver | None = None) -> Route:
    """Where ``program args`` goes (see the module docstring). ``resolve_path`` maps a path operand to the fake
    dataset mounted at or above it (None: not a fake mount)."""
    args, fakes = tuple(args), frozenset(fake_pools)
    if not args or args[0] in ("-?", "-h", "--help", "help"):
        return Route("real", args, args, "usage")
    verb = args[0]
    spec = (ZFS_SPECS if program == "zfs" else ZPOOL_SPECS).get(verb, Spec(first_only=program == "zpool"))
    parsed = _parse(args[1:], spec)
    if "a" in parsed.flags and verb in _ALL_VERBS:
        return Route("refuse", reason=f"'{program} {verb} -a' would act on every pool of the machine; "
                                      "name the filesystem or pool")
    if program == "zfs" and verb == "send":
        token = next((v for letter, v in parsed.values if letter == "t"), None)
        if token is not None:
            return Route("fake" if _token_pool(token) in fakes else "real", args, args, "resume token")
    fake_idx: list[tuple[int, str]] = []
    real_idx: list[tuple[int, str]] = []
    for index, word in _candidates(program, verb, spec, parsed):
        pool = (resolve_path(word) if resolve_path else None) if word.startswith("/") else pool_of(word)
        (fake_idx if pool is not None and pool in fakes else real_idx).append((index, word))
    if fake_idx and real_idx:
        return _mixed(program, verb, spec, args, fake_idx, real_idx)
    if fake_idx:
        return Route("fake", args, args)
    if real_idx or not spec.listing:
        return Route("real", args, args)
    return Route("both", args, args, "no operand: every pool")


def _mixed(program: str, verb: str, spec: Spec, args: tuple[str, ...], fake_idx: list[tuple[int, str]],
           real_idx: list[tuple[int, str]]) -> Route:
    fakes, reals = [w for _, w in fake_idx], [w for _, w in real_idx]
    if not spec.listing or any(i < 0 for i, _ in fake_idx + real_idx):
        return Route("refuse", reason=f"'{program} {verb}' names fake pools ({', '.join(fakes)}) and real ones "
                                      f"({', '.join(reals)}): no command can span both")
    # +1: _parse saw args[1:]
    drop_for_real = {i + 1 for i, _ in fake_idx}
    drop_for_fake = {i + 1 for i, _ in real_idx}
    return Route("split", tuple(a for i, a in enumerate(args) if i not in drop_for_real),
                 tuple(a for i, a in enumerate(args) if i not in drop_for_fake), "mixed operands of a listing")


# -- merging the output of both sides ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Captured:
    rc: int
    stdout: str
    stderr: str


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() not in _EMPTY]


def _cells(line: str) -> list[tuple[int, int]]:
    """Column spans of a table line: zfs separates columns by at least two spaces."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+(?: \S+)*", line)]


def _right_aligned(header: str, row: str) -> list[bool] | None:
    """Per column, whether ``row`` is right-aligned under ``header`` (zfs right-aligns numbers)."""
    hs, rs = _cells(header), _cells(row)
    if len(hs) != len(rs):
        return None
    return [r[1] == h[1] and r[0] != h[0] for h, r in zip(hs, rs, strict=True)]


def _realign(header: str, sides: list[list[str]]) -> list[str] | None:
    """``header`` and the rows of every side as one table; None when the columns cannot be told apart."""
    align = [False] * len(_cells(header))
    for rows in sides:
        if rows:
            side_align = _right_aligned(rows[0], rows[1]) if len(rows) > 1 else align
            if side_align is None:
                return None
            align = [a or b for a, b in zip(align, side_align, strict=True)]
    table = [[header[s:e] for s, e in _cells(header)]]
    table += [[row[s:e] for s, e in _cells(row)] for rows in sides for row in rows[1:]]
    if any(len(cells) != len(align) for cells in table):
        return None
    widths = [max(len(cells[c]) for cells in table) for c in range(len(align))]
    out = []
    for cells in table:
        parts = [cell.rjust(w) if right else cell.ljust(w) for cell, w, right in zip(cells, widths, align, strict=True)]
        out.append("  ".join(parts).rstrip())
    return out


def _is_table(program: str, verb: str, flags: set[str]) -> bool:
    tables = {"list", "get", "holds"} if program == "zfs" else {"list", "get", "history"}
    return verb in tables and "H" not in flags and not (program == "zpool" and verb == "history")


def merge_outputs(program: str, args: Sequence[str], real: Captured, fake: Captured) -> Captured:
    """The output of one command line run on both sides, as one zfs would print it for all pools."""
    verb = args[0] if args else ""
    spec = (ZFS_SPECS if program == "zfs" else ZPOOL_SPECS).get(verb, Spec())
    flags = _parse(args[1:], spec).flags
    rc = real.rc or fake.rc
    errors = "".join(line + "\n" for line in _lines(real.stderr) + _lines(fake.stderr))
    real_rows, fake_rows = _lines(real.stdout), _lines(fake.stdout)
    table = _is_table(program, verb, flags)
    data = [rows[1:] if table else rows for rows in (real_rows, fake_rows)]
    if not any(data):  # no pool anywhere: say so the way the real zfs does
        return Captured(rc, real.stdout, real.stderr + "".join(line + "\n" for line in _lines(fake.stderr)))
    if table:
        header = (real_rows or fake_rows)[0]
        merged = _realign(header, [rows for rows in (real_rows, fake_rows) if rows])
        if merged is not None:
            return Captured(rc, "".join(line + "\n" for line in merged), errors)
        return Captured(rc, "".join(line + "\n" for line in [header, *data[0], *data[1]]), errors)
    if program == "zpool" and verb == "status":  # one block per pool, blank lines between
        blocks = [text.rstrip("\n") + "\n" for text, rows in ((real.stdout, data[0]), (fake.stdout, data[1])) if rows]
        return Captured(rc, "\n".join(blocks), errors)
    return Captured(rc, "".join(line + "\n" for line in data[0] + data[1]), errors)


# -- the dispatcher process -------------------------------------------------------------------------------------

def _fake_env(cfg: dict[str, Any]) -> dict[str, str]:
    env = {**os.environ, FAKE_ROOT_ENV: str(cfg["fake_root"])}
    if cfg.get("dialect"):
        env["FAKE_ZFS_DIALECT"] = str(cfg["dialect"])
    return env


def _path_resolver(fake_root: str) -> PathResolver:
    def resolve(path: str) -> str | None:
        if not os.path.isdir(os.path.join(fake_root, "pools")):
            return None
        from vpsadmind.testing.fakezfs.state import Store

        where = os.path.realpath(path)
        best: tuple[str, str] | None = None
        for mountpoint, name in Store(Path(fake_root)).mount_table().items():
            inside = where == mountpoint or where.startswith(mountpoint.rstrip("/") + "/")
            if inside and (best is None or len(mountpoint) > len(best[0])):
                best = (mountpoint, name)
        return pool_of(best[1]) if best else None
    return resolve


def _run_fake(cfg: dict[str, Any], program: str, args: Sequence[str]) -> int:
    """fake-zfs in this process: one interpreter start per command instead of two."""
    os.environ[FAKE_ROOT_ENV] = str(cfg["fake_root"])
    if cfg.get("dialect"):
        os.environ["FAKE_ZFS_DIALECT"] = str(cfg["dialect"])
    from vpsadmind.testing.fakezfs.cli import main as fake_main

    return fake_main([program, *args])


def _capture(argv: Sequence[str], env: dict[str, str] | None = None) -> Captured:
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env,
                          check=False)
    return Captured(done.returncode, done.stdout, done.stderr)


def _run_both(cfg: dict[str, Any], program: str, r: Route) -> int:
    real_bin = str(cfg["real"][program])
    real = _capture([real_bin, *r.real_args]) if os.path.exists(real_bin) else Captured(0, "", "")
    fake = _capture([sys.executable, "-m", "vpsadmind.testing.fakezfs.cli", program, *r.fake_args],
                    env=_fake_env(cfg))
    merged = merge_outputs(program, r.real_args, real, fake)
    sys.stdout.write(merged.stdout)
    sys.stderr.write(merged.stderr)
    return merged.rc


def main(program: str, args: Sequence[str], config_path: str) -> int:
    """The dispatcher: route ``program args`` with the configuration at ``config_path`` and run it."""
    cfg: dict[str, Any] = json.loads(Path(config_path).read_text())
    r = route(program, args, cfg["fake_pools"], resolve_path=_path_resolver(str(cfg["fake_root"])))
    if r.target == "refuse":
        sys.stderr.write(f"zfssplit: {r.reason}\n")
        return 1
    real_bin = str(cfg["real"][program])
    if r.target == "fake" or (r.target == "real" and r.reason == "usage" and not os.path.exists(real_bin)):
        return _run_fake(cfg, program, r.fake_args)
    if r.target == "real":
        if not os.path.exists(real_bin):
            sys.stderr.write(f"zfssplit: the real {program} ({real_bin}) does not exist\n")
            return 1
        sys.stdout.flush()
        # exec, not a child: stdin/stdout (a send or recv stream) stay the caller's, nothing is copied, and the
        # exit status and signals are the real command's own
        os.execv(real_bin, [program, *r.real_args])
    return _run_both(cfg, program, r)


# -- installing ---------------------------------------------------------------------------------------------------

_SCRIPT: Final = """#!{python}
# zfssplit dispatcher: fake pools {pools} -> fake-zfs ({root}), everything else -> {real}
import sys
from vpsadmind.testing.zfssplit import main
sys.exit(main({program!r}, sys.argv[1:], {config!r}))
"""


def _find_real(program: str, exclude: Path) -> str:
    """``program`` on PATH (or in /sbin, /usr/sbin), never a dispatcher in ``exclude``."""
    skip = os.path.realpath(exclude)
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and os.path.realpath(d) != skip]
    found = shutil.which(program, path=os.pathsep.join([*dirs, "/usr/sbin", "/sbin"]))
    return found or f"/sbin/{program}"


def _real_pools(zpool: str) -> set[str]:
    """The pools the real zpool knows; empty when it cannot tell (not installed, daemon down)."""
    if not os.path.exists(zpool):
        return set()
    try:
        done = subprocess.run([zpool, "list", "-H", "-o", "name"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in done.stdout.splitlines() if line.strip()} if done.returncode == 0 else set()


@dataclass(frozen=True, slots=True)
class SplitZfs:
    """The installed dispatchers: :attr:`zfs` and :attr:`zpool` (give :attr:`bin` to ``write_config``)."""

    directory: Path
    fake_root: Path
    fake_pools: tuple[str, ...]
    real_zfs: str
    real_zpool: str

    @property
    def zfs(self) -> Path:
        return self.directory / "zfs"

    @property
    def zpool(self) -> Path:
        return self.directory / "zpool"

    @property
    def config(self) -> Path:
        return self.directory / _CONFIG_NAME

    @property
    def bin(self) -> dict[str, str]:
        """The daemon's ``bin`` section entries."""
        return {"zfs": str(self.zfs), "zpool": str(self.zpool)}

    @classmethod
    def install(cls, directory: str | Path, fake_root: str | Path, fake_pools: Iterable[str], *,
                real_zfs: str | None = None, real_zpool: str | None = None, dialect: str | None = None) -> SplitZfs:
        """Write ``zfs``, ``zpool`` and their configuration into ``directory``. ``fake_pools`` (the pools that go to
        fake-zfs under ``fake_root``) must not name a pool the real zpool has: that pool would vanish from the
        daemon's view. The fake pools themselves are made with :func:`create_fake_pool` (before or after)."""
        directory, root = Path(directory).absolute(), Path(fake_root).absolute()
        pools = tuple(fake_pools)
        for pool in pools:
            if not _POOL_NAME.fullmatch(pool):
                raise ValueError(f"not a pool name: {pool!r}")
        directory.mkdir(parents=True, exist_ok=True)
        split = cls(directory, root, pools, real_zfs or _find_real("zfs", directory),
                    real_zpool or _find_real("zpool", directory))
        taken = _real_pools(split.real_zpool) & set(pools)
        if taken:
            raise ValueError(f"fake pool names taken by real pools: {', '.join(sorted(taken))}")
        split.config.write_text(json.dumps({
            "real": {"zfs": split.real_zfs, "zpool": split.real_zpool}, "fake_root": str(root),
            "fake_pools": list(pools), "dialect": dialect}, indent=1))
        for program, real in (("zfs", split.real_zfs), ("zpool", split.real_zpool)):
            path = directory / program
            path.write_text(_SCRIPT.format(python=sys.executable, pools=", ".join(pools), root=root, real=real,
                                           program=program, config=str(split.config)))
            path.chmod(0o755)
        return split


# -- fake pools: making them and fingerprinting them ------------------------------------------------------------

def fake_run(fake_root: str | Path, program: str, *args: str, check: bool = True) -> str:
    """Run one fake-zfs command on ``fake_root`` (not through a dispatcher); its stdout. Raises RuntimeError with
    its stderr when it fails and ``check``."""
    done = subprocess.run([sys.executable, "-m", "vpsadmind.testing.fakezfs.cli", program, *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
                          env={**os.environ, FAKE_ROOT_ENV: str(fake_root)})
    if check and done.returncode != 0:
        raise RuntimeError(f"fake {program} {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def create_fake_pool(fake_root: str | Path, name: str, *, size: int = 256 * 1024 * 1024,
                     mountpoint: str | Path | None = None) -> Path:
    """``zpool create -m <mountpoint> name <sparse file>`` on the fake root; returns the mountpoint (default
    ``<fake_root>/mnt/<name>``). The vdev is ``<fake_root>/vdevs/<name>.img`` (its size is the pool's)."""
    root = Path(fake_root).absolute()
    vdev = root / "vdevs" / f"{name}.img"
    vdev.parent.mkdir(parents=True, exist_ok=True)
    with open(vdev, "wb") as fh:
        fh.truncate(size)
    where = Path(mountpoint) if mountpoint is not None else root / "mnt" / name
    fake_run(root, "zpool", "create", "-m", str(where), name, str(vdev))
    return where


def destroy_fake_pool(fake_root: str | Path, name: str) -> None:
    """``zpool destroy`` of a fake pool and its vdev file; a missing pool is fine."""
    root = Path(fake_root)
    if (root / "pools" / name / "state.json").exists():
        fake_run(root, "zpool", "destroy", name)
    (root / "vdevs" / f"{name}.img").unlink(missing_ok=True)


def _tree_digest(top: Path, skip: frozenset[str]) -> dict[str, str]:
    """``{relative path: mode and sha256 (or link target)}`` below ``top``, leaving out the mountpoints in
    ``skip`` (other filesystems mounted inside this one)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in skip)
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel, st = os.path.relpath(path, top), os.lstat(path)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                out[rel + "/"] = f"{st.st_mode:o}"
            else:
                with open(path, "rb") as fh:
                    out[rel] = f"{st.st_mode:o} {hashlib.sha256(fh.read()).hexdigest()}"
    return out


def _fs_fingerprint(store: Store, ps: PoolState, name: str, contents: bool) -> dict[str, Any]:
    rec = ps.datasets[name]
    snaps = {short: {"guid": s.guid, "createtxg": s.createtxg, "creation": s.creation, "props": dict(s.props),
                     "received": sorted(s.received), "holds": sorted(s.holds), "defer_destroy": s.defer_destroy,
                     "referenced": s.referenced}
             for short, s in rec.ordered_snaps()}
    out: dict[str, Any] = {
        "guid": rec.guid, "createtxg": rec.createtxg, "creation": rec.creation, "props": dict(rec.props),
        "received": sorted(rec.received), "origin": ps.origin_name(rec), "mounted": rec.mounted,
        "resume": rec.resume, "snapshots": snaps, "snapshot_order": list(snaps)}
    if contents:
        live = ps.live_dir(name)
        out["contents"] = _drop_stale_mountpoints(_tree_digest(live, store.nested_mounts(ps, live)), name, ps)
    return out


def _drop_stale_mountpoints(digest: dict[str, str], fsname: str, ps: PoolState) -> dict[str, str]:
    """Leave out empty directories named like a child filesystem that does not exist. zfs-fuse removes the
    mountpoint of a filesystem it destroys (libzfs' remove_mountpoint()); fake-zfs's plain ``destroy`` of a
    mounted filesystem leaves it, so without this every rolled-back ``create`` would look like a change."""
    dirs = {rel[:-1] for rel in digest if rel.endswith("/")}
    nonempty = {rel.rsplit("/", 1)[0] for rel in digest if "/" in rel.rstrip("/")}
    stale = {d for d in dirs - nonempty if f"{fsname}/{d}" not in ps.datasets}
    return {rel: value for rel, value in digest.items() if rel.rstrip("/") not in stale}


def fake_state(fake_root: str | Path, pools: Iterable[str] | None = None, *, contents: bool = True
               ) -> dict[str, Any]:
    """A comparable fingerprint of the fake pools (all, or ``pools``): per pool its guid, size and leftovers
    (staged receives, kept partial streams), per filesystem its guid, createtxg, creation, local and received
    properties, origin, mounted state, pending resumable receive and (``contents``) a digest of its files, per
    snapshot its guid, createtxg, creation, user properties, holds and order. Left out: the txg and id counters
    and the cached "modified since the last snapshot" fingerprint, which a rolled-back chain moves on without
    changing anything zfs shows. A pool that does not exist maps to None. Read under each pool's shared lock."""
    from vpsadmind.testing.fakezfs.state import Store

    store = Store(Path(fake_root))
    out: dict[str, Any] = {}
    for pool in (store.pool_names() if pools is None else list(pools)):
        if not store.exists(pool):
            out[pool] = None
            continue
        with store.open_pool(pool, write=False) as ps:
            leftovers = sorted(f"{sub}/{entry}" for sub in ("tmp", "resume") if (ps.dir / sub).is_dir()
                               for entry in os.listdir(ps.dir / sub))
            out[pool] = {"guid": ps.guid, "size": ps.size, "leftovers": leftovers,
                         "datasets": {n: _fs_fingerprint(store, ps, n, contents) for n in sorted(ps.datasets)}}
    return out
