"""Async domain objects over the ``zfs``/``zpool`` CLI.

Every name passes vpsadmind.zfs.names validation before any process starts; every failure is a typed
vpsadmind.zfs.errors.ZfsError parsed from zfs's "cannot <verb> '<name>': <reason>" message. Processes start
only through vpsadmind.system.run (argv lists, call log for command budgets).

The driver uses only what :meth:`Zfs.probe` found (:class:`Capabilities`). On the zfs-fuse dialect:

* exact numbers come from ``zfs get -H -p`` (there is no ``zfs list -p``);
* ``destroy`` retries "dataset is busy" (zfs-fuse always refuses the first destroy of a mounted filesystem:
  the daemon has not released the objset yet) up to :attr:`Zfs.busy_retries` times with a growing delay
  (0.02 s, x1.5, at most 0.3 s: about 4.5 s in all). A busy *snapshot* with user holds is not retried but
  raised as SnapshotIsHeld;
* ``rename`` of a filesystem with mounted datasets unmounts it, renames, and mounts again what was mounted
  (a mounted filesystem cannot be renamed on zfs-fuse); the mounts are restored if the rename fails. The
  rename retries "busy" like destroy: right after the unmount the daemon may still hold the objset;
* ``snapshot`` of several datasets is one command per snapshot (``zfs snapshot a@x b@x`` is "too many
  arguments") and therefore **not atomic**: the snapshots are taken one after the other, and if one fails
  the ones already taken are destroyed again before the error is raised (all or nothing, but not at one
  instant);
* ``set`` is one command per property (zfs-fuse would read a second ``k=v`` as a dataset name);
* ``holds`` counts with the ``userrefs`` property (``zfs holds`` needs a helper zfs-fuse does not ship).

Command budgets (pinned by tests/zfs/test_budget.py): exists, get, children, snapshots, mountpoint, create,
clone, promote, rollback, inherit, hold, release, holds, pools and usage are one command each; snapshot is
one per call with ``multi_snapshot``, else one per name; set is one per call with ``multi_set``, else one
per property; destroy is one plus one per busy retry (plus one ``userrefs`` look-up for a busy snapshot);
rename is one for snapshots and off zfs-fuse, else 2 (nothing mounted) or 3 + the number of mounted
filesystems (when the renamed filesystem itself is mounted; else one unmount per mounted descendant), plus
one per busy retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vpsadmind import system
from vpsadmind.system import CommandFailed, Completed
from vpsadmind.zfs import names as _names
from vpsadmind.zfs.capabilities import Capabilities, probe
from vpsadmind.zfs.errors import (
    AlreadyMounted,
    DatasetBusy,
    DatasetNotFound,
    InvalidName,
    NoSuchHold,
    NotMounted,
    SnapshotIsHeld,
    ZfsError,
    from_failure,
)

__all__ = ["Zfs", "Capabilities", "Prop", "Snapshot", "USAGE_PROPS"]

#: A ``receive_resume_token``: base64-ish, what OpenZFS prints (checked before it reaches argv).
_TOKEN = re.compile(r"[0-9A-Za-z+/=_-]{1,8192}")

#: What :meth:`Zfs.usage` reports per filesystem, in bytes.
USAGE_PROPS = ("used", "referenced", "available")


@dataclass(frozen=True, slots=True)
class Prop:
    value: str       # exact (-p) value; "-" when unset
    source: str      # "local", "default", "inherited from <ds>", "-", "received", "temporary"


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str        # full name pool/ds@snap
    guid: int
    createtxg: int

    @property
    def dataset(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def short(self) -> str:
        return self.name.split("@", 1)[1]


def _rows(stdout: str, fields: int) -> list[list[str]]:
    """Tab-separated rows of ``-H`` output; a value with tabs in it is put back together (it is the
    second-to-last field when ``source`` is the last, the last otherwise)."""
    rows: list[list[str]] = []
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < fields:
            continue
        if len(parts) > fields:
            if fields == 4:
                parts = [parts[0], parts[1], "\t".join(parts[2:-1]), parts[-1]]
            else:
                parts = [*parts[:fields - 1], "\t".join(parts[fields - 1:])]
        rows.append(parts)
    return rows


def _options(properties: Mapping[str, str] | None) -> list[str]:
    """``-o k=v`` arguments, every name and value validated."""
    argv: list[str] = []
    for key, value in (properties or {}).items():
        argv += ["-o", f"{_names.validate_property(key)}={_names.validate_value(value, prop=key)}"]
    return argv


def _retyped(exc: ZfsError, cls: type[ZfsError], note: str) -> ZfsError:
    return cls(f"{exc} ({note})", argv=exc.argv, exitstatus=exc.exitstatus, stderr=exc.stderr,
               stdout=exc.stdout, verb=exc.verb, name=exc.name, reason=exc.reason)


class Zfs:
    def __init__(self, *, zfs: str = "zfs", zpool: str = "zpool", caps: Capabilities | None = None,
                 timeout: float | None = 600.0, busy_retries: int = 20, busy_delay: float = 0.02) -> None:
        self.zfs_bin = zfs
        self.zpool_bin = zpool
        self.caps = caps or Capabilities()
        self.timeout = timeout
        self.busy_retries = busy_retries
        self.busy_delay = busy_delay

    async def probe(self) -> Capabilities:
        """Find what the installed zfs supports (a few ms, no pool needed), remember it in :attr:`caps` and
        return it. Raises DaemonDown when zfs-fuse's daemon does not answer."""
        self.caps = await probe(self.zfs_bin)
        return self.caps

    # -- running ------------------------------------------------------------------------------------------

    async def _run(self, argv: list[str]) -> Completed:
        try:
            return await system.run(argv, timeout=self.timeout)
        except CommandFailed as exc:
            raise from_failure(exc) from exc
        except OSError as exc:
            raise ZfsError(f"cannot run {argv[0]}: {exc}", argv=argv) from exc

    async def _zfs(self, *args: str) -> Completed:
        return await self._run([self.zfs_bin, *args])

    # -- queries ------------------------------------------------------------------------------------------

    async def exists(self, name: str) -> bool:
        """Whether the dataset or snapshot exists (one ``zfs list``)."""
        _names.validate_name(name)
        try:
            await self._zfs("list", "-H", "-o", "name", name)
        except DatasetNotFound:
            return False
        return True

    async def get(self, names: str | Sequence[str], props: Sequence[str], *, recursive: bool = False,
                  depth: int | None = None) -> dict[str, dict[str, Prop]]:
        """Exact (``-p``) values and sources: ``{name: {prop: Prop}}``, one ``zfs get`` for all names.

        With ``recursive``/``depth`` the descendants (snapshots included) are in the result too.
        """
        targets = [names] if isinstance(names, str) else list(names)
        for name in targets:
            _names.validate_name(name)
        for prop in props:
            _names.validate_property(prop)
        if not targets or not props:
            return {}
        argv = ["get", "-H", "-p", "-o", "name,property,value,source"]
        if recursive:
            argv.append("-r")
        if depth is not None:
            argv += ["-d", str(int(depth))]
        done = await self._zfs(*argv, ",".join(props), *targets)
        result: dict[str, dict[str, Prop]] = {}
        for name, prop, value, source in _rows(done.stdout, 4):
            result.setdefault(name, {})[prop] = Prop(value, source)
        return result

    async def children(self, name: str, *, recursive: bool = True) -> list[str]:
        """Filesystems below ``name`` (all descendants, or only the direct children), parents first."""
        _names.validate_dataset(name)
        scope = ["-r"] if recursive else ["-d", "1"]
        done = await self._zfs("list", "-H", "-o", "name", "-t", "filesystem", *scope, name)
        return [line for line in done.stdout.splitlines() if line and line != name]

    async def snapshots(self, dataset: str) -> list[Snapshot]:
        """The snapshots of ``dataset`` (not of its children), oldest first (by ``createtxg``): one ``zfs get``."""
        _names.validate_dataset(dataset)
        types = ["-t", "snapshot"] if self.caps.get_types else []
        done = await self._zfs("get", "-H", "-p", *types, "-o", "name,property,value", "-r", "-d", "1",
                               "guid,createtxg", dataset)
        found: dict[str, dict[str, int]] = {}
        prefix = dataset + "@"
        for name, prop, value in _rows(done.stdout, 3):
            if name.startswith(prefix) and value.isdigit():
                found.setdefault(name, {})[prop] = int(value)
        snaps = [Snapshot(name, v.get("guid", 0), v.get("createtxg", 0)) for name, v in found.items()]
        snaps.sort(key=lambda s: (s.createtxg, s.name))
        return snaps

    async def mountpoint(self, name: str) -> str | None:
        """Where the filesystem is mounted, ``None`` when it is not mounted."""
        _names.validate_dataset(name)
        props = (await self.get(name, ["mounted", "mountpoint"])).get(name, {})
        mounted, where = props.get("mounted"), props.get("mountpoint")
        if mounted is None or mounted.value != "yes" or where is None or not where.value.startswith("/"):
            return None
        return where.value

    # -- mutations ----------------------------------------------------------------------------------------

    async def create(self, name: str, *, properties: Mapping[str, str] | None = None,
                     parents: bool = False) -> None:
        """``zfs create [-p] [-o k=v]... name`` (one command)."""
        _names.validate_dataset(name)
        opts = _options(properties)
        await self._zfs("create", *(["-p"] if parents else []), *opts, name)

    async def destroy(self, name: str, *, recursive: bool = False, missing_ok: bool = False) -> None:
        """``zfs destroy [-r] name``, retrying "busy" on zfs-fuse; ``missing_ok`` ignores DatasetNotFound.

        A busy snapshot with user holds raises SnapshotIsHeld at once.
        """
        _names.validate_name(name)
        argv = ["destroy", *(["-r"] if recursive else []), name]
        try:
            await self._retry_busy(argv, held=name if "@" in name else None, gone_ok=True)
        except DatasetNotFound:
            if not missing_ok:
                raise

    async def _retry_busy(self, args: Sequence[str], *, held: str | None = None, gone_ok: bool = False) -> None:
        """Run ``zfs args``; on zfs-fuse retry "dataset is busy" with a growing delay (see the module docstring).

        ``held``: a snapshot whose user holds turn "busy" into SnapshotIsHeld at once. ``gone_ok``: a
        DatasetNotFound after a busy attempt means that attempt went through after all.
        """
        delay = self.busy_delay
        for attempt in range(self.busy_retries + 1):
            try:
                await self._zfs(*args)
                return
            except DatasetBusy as exc:
                if held is not None:
                    refs = await self._userrefs_or_none(held)
                    if refs:
                        raise _retyped(exc, SnapshotIsHeld, f"{refs} user hold(s)") from exc
                if not self.caps.fuse or attempt == self.busy_retries:
                    raise
            except DatasetNotFound:
                if gone_ok and attempt > 0:
                    return
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.3)

    async def _userrefs_or_none(self, snapshot: str) -> int | None:
        try:
            return await self.holds(snapshot)
        except ZfsError:
            return None

    async def snapshot(self, names: Sequence[str], *, properties: Mapping[str, str] | None = None) -> None:
        """Take snapshots (``pool/ds@snap`` each): one atomic command with ``multi_snapshot``, else one command
        per name, destroying the ones already taken if a later one fails (not atomic on zfs-fuse)."""
        targets = list(names)
        for name in targets:
            _names.validate_snapshot(name)
        if len(set(targets)) != len(targets):
            dupes = sorted({n for n in targets if targets.count(n) > 1})
            raise InvalidName(", ".join(dupes), "the same snapshot is named twice", kind="snapshot list")
        opts = _options(properties)
        if not targets:
            return
        if len(targets) == 1 or self.caps.multi_snapshot:
            await self._zfs("snapshot", *opts, *targets)
            return
        taken: list[str] = []
        for name in targets:
            try:
                await self._zfs("snapshot", *opts, name)
            except ZfsError:
                for done in reversed(taken):
                    # The original error matters more; the caller's rollback destroys any leftover.
                    with contextlib.suppress(ZfsError):
                        await self.destroy(done, missing_ok=True)
                raise
            taken.append(name)

    async def rename(self, old: str, new: str) -> None:
        """Rename a filesystem or a snapshot (``ds@a`` -> ``ds@b``).

        On zfs-fuse a filesystem with mounted datasets is unmounted, renamed and mounted again.
        """
        if "@" in old or "@" in new:
            _names.validate_snapshot(old)
            _names.validate_snapshot(new)
            await self._zfs("rename", old, new)
            return
        _names.validate_dataset(old)
        _names.validate_dataset(new)
        if not self.caps.fuse:
            await self._zfs("rename", old, new)
            return
        await self._rename_unmounted(old, new)

    async def _rename_unmounted(self, old: str, new: str) -> None:
        mounted = await self._mounted_below(old)
        if not mounted:
            await self._retry_busy(["rename", old, new])
            return
        # Unmounting ``old`` unmounts everything below it; when ``old`` itself is not mounted (canmount=noauto
        # with mounted children), the mounted descendants go one by one, deepest first.
        try:
            for name in [old] if old in mounted else reversed(mounted):
                await self._zfs("unmount", name)
            # Like destroy, a rename right after the unmount may find the objset not yet released.
            await self._retry_busy(["rename", old, new])
        except ZfsError:
            await self._mount_all(mounted, best_effort=True)
            raise
        await self._mount_all([new + name[len(old):] for name in mounted], best_effort=False)

    async def _mounted_below(self, name: str) -> list[str]:
        """Filesystems at or below ``name`` that are mounted, parents first."""
        done = await self._zfs("get", "-H", "-o", "name,value", "-r", "mounted", name)
        return [row[0] for row in _rows(done.stdout, 2) if row[1] == "yes" and "@" not in row[0]]

    async def _mount_all(self, names: Sequence[str], *, best_effort: bool) -> None:
        for name in names:
            try:
                await self.mount(name)
            except ZfsError:
                if not best_effort:
                    raise

    async def clone(self, snapshot: str, target: str, *, properties: Mapping[str, str] | None = None) -> None:
        """``zfs clone [-o k=v]... snapshot target`` (one command)."""
        _names.validate_snapshot(snapshot)
        _names.validate_dataset(target)
        opts = _options(properties)
        await self._zfs("clone", *opts, snapshot, target)

    async def promote(self, name: str) -> None:
        _names.validate_dataset(name)
        await self._zfs("promote", name)

    async def rollback(self, snapshot: str, *, recursive: bool = False) -> None:
        """``zfs rollback [-r] snapshot``; without ``recursive`` newer snapshots raise MoreRecentSnapshots."""
        _names.validate_snapshot(snapshot)
        await self._zfs("rollback", *(["-r"] if recursive else []), snapshot)

    async def set(self, name: str, properties: Mapping[str, str]) -> None:
        """``zfs set k=v``: one command with ``multi_set``, else one per property (in mapping order, not
        atomic). Everything is validated before the first command."""
        _names.validate_name(name)
        pairs = [f"{_names.validate_property(k)}={_names.validate_value(v, prop=k)}" for k, v in properties.items()]
        if not pairs:
            return
        if self.caps.multi_set:
            await self._zfs("set", *pairs, name)
            return
        for pair in pairs:
            await self._zfs("set", pair, name)

    async def inherit(self, name: str, prop: str) -> None:
        _names.validate_name(name)
        _names.validate_property(prop)
        await self._zfs("inherit", prop, name)

    async def mount(self, name: str, *, strict: bool = False) -> None:
        """``zfs mount name``; already mounted is fine unless ``strict`` (then AlreadyMounted)."""
        _names.validate_dataset(name)
        try:
            await self._zfs("mount", name)
        except AlreadyMounted:
            if strict:
                raise

    async def unmount(self, name: str, *, strict: bool = False) -> None:
        """``zfs unmount name`` (and everything mounted below it); not mounted is fine unless ``strict``."""
        _names.validate_dataset(name)
        try:
            await self._zfs("unmount", name)
        except NotMounted:
            if strict:
                raise

    async def hold(self, tag: str, snapshot: str, *more: str) -> None:
        """``zfs hold tag snapshot...`` (one command); HoldExists when the tag is already on one of them (the
        others may then be held: the caller releases or retries one by one)."""
        _names.validate_tag(tag)
        for name in (snapshot, *more):
            _names.validate_snapshot(name)
        await self._zfs("hold", tag, snapshot, *more)

    async def release(self, tag: str, snapshot: str, *more: str, missing_ok: bool = True) -> None:
        """``zfs release tag snapshot...``; with ``missing_ok`` a missing tag or snapshot is fine (one
        command, or one per snapshot when several were given and one of them was missing)."""
        _names.validate_tag(tag)
        for name in (snapshot, *more):
            _names.validate_snapshot(name)
        try:
            await self._zfs("release", tag, snapshot, *more)
        except (NoSuchHold, DatasetNotFound):
            if not missing_ok:
                raise
            if more:  # zfs stops at the first missing one: release the rest one by one
                for name in (snapshot, *more):
                    await self.release(tag, name, missing_ok=True)

    async def release_send_holds(self, pids: Sequence[int], ends: Sequence[str]) -> int:
        """Release the temporary holds a killed ``zfs send`` of zfs-fuse leaves; returns how many pids it tried.

        zfs-fuse's ``zfs send -I`` holds every snapshot of its range with the tag ``.send-<pid>-0`` and releases
        them when it ends, unless it is killed (the stall watchdog, a cancelled transfer, the daemon's death):
        then they stay until the zfs-fuse daemon restarts, and every later destroy of those snapshots fails as
        held. ``ends`` are snapshots of one dataset; the range runs from the oldest to the newest of them. OpenZFS
        ties its temporary holds to the process and needs nothing of this. One ``zfs get`` and one release per
        pid (more when some snapshot has no such hold)."""
        if not self.caps.fuse or not pids or not ends:
            return 0
        names = [s.name for s in await self.snapshots(ends[0].split("@", 1)[0])]
        at = sorted(names.index(e) for e in ends if e in names)
        if not at:
            return 0
        for pid in pids:
            await self.release(f".send-{pid}-0", *names[at[0]:at[-1] + 1], missing_ok=True)
        return len(pids)

    async def holds(self, snapshot: str) -> int:
        """The number of user holds on ``snapshot`` (its ``userrefs``; tags cannot be listed on zfs-fuse)."""
        _names.validate_snapshot(snapshot)
        done = await self._zfs("get", "-H", "-p", "-o", "value", "userrefs", snapshot)
        value = done.stdout.strip()
        return int(value) if value.isdigit() else 0

    # -- streams (argv only: the caller wires the processes, see vpsadmind.transfer) ------------------------

    def send_argv(self, snapshot: str, *, base: str | None = None, intermediate: bool = True,
                  resume_token: str | None = None) -> list[str]:
        """``zfs send [-I|-i base] snapshot`` (full without ``base``), or ``zfs send -t token`` to resume."""
        if resume_token is not None:
            if not self.caps.resumable_receive or not _TOKEN.fullmatch(resume_token):
                raise InvalidName(resume_token, "not a receive_resume_token of a zfs with resumable receive",
                                  kind="resume token")
            return [self.zfs_bin, "send", "-t", resume_token]
        _names.validate_snapshot(snapshot)
        if base is None:
            return [self.zfs_bin, "send", snapshot]
        _names.validate_snapshot(base)
        return [self.zfs_bin, "send", "-I" if intermediate else "-i", base, snapshot]

    def recv_argv(self, target: str, *, force: bool = True, resumable: bool = False) -> list[str]:
        """``zfs recv [-F] [-s] target``; ``-s`` (keep a resumable partial state) only where it exists."""
        _names.validate_dataset(target)
        flags = ["-F"] if force else []
        if resumable and self.caps.resumable_receive:
            flags.append("-s")
        return [self.zfs_bin, "recv", *flags, target]

    async def prepare_receive(self, target: str, *, snapshots: Sequence[str] | None = None) -> bool:
        """Before ``zfs recv -F`` into ``target``: on zfs-fuse, a full stream into an existing, mounted
        filesystem fails now and then with "cannot receive new filesystem stream: I/O error" (reproduced
        with the bare CLI: 3 of 6 attempts); unmounted, it never did. So a mounted target without snapshots
        (only a full stream can go there) is unmounted. Returns whether to :meth:`mount` it again after a
        successful receive. Nothing to do elsewhere (on zfs-fuse: mountpoint, snapshots unless the caller
        knows them, and the unmount)."""
        if not self.caps.fuse:
            return False
        _names.validate_dataset(target)
        try:
            if snapshots is None:
                snapshots = [s.name for s in await self.snapshots(target)]
            if snapshots or await self.mountpoint(target) is None:
                return False
        except DatasetNotFound:
            return False
        await self.unmount(target)
        return True

    async def resume_token(self, target: str) -> str | None:
        """The ``receive_resume_token`` of ``target`` after an interrupted ``recv -s``; None where resumable
        receive does not exist, the dataset is missing or nothing is pending (one ``zfs get``)."""
        if not self.caps.resumable_receive:
            return None
        _names.validate_dataset(target)
        try:
            done = await self._zfs("get", "-H", "-o", "value", "receive_resume_token", target)
        except DatasetNotFound:
            return None
        value = done.stdout.strip()
        return value if value and value != "-" and _TOKEN.fullmatch(value) else None

    async def abort_resumable(self, target: str) -> None:
        """``zfs recv -A target``: drop a partial resumable receive (nothing to do without ``-s``)."""
        if not self.caps.resumable_receive:
            return
        _names.validate_dataset(target)
        with contextlib.suppress(ZfsError):
            await self._zfs("recv", "-A", target)

    async def guids(self, snapshots: Sequence[str]) -> dict[str, str]:
        """``{snapshot: guid}`` for those of ``snapshots`` that exist (one ``zfs get -Hp``; missing ones are
        left out)."""
        for name in snapshots:
            _names.validate_snapshot(name)
        if not snapshots:
            return {}
        argv = [self.zfs_bin, "get", "-H", "-p", "-o", "name,value", "guid", *snapshots]
        try:
            done = await system.run(argv, valid_rcs=(0, 1), timeout=self.timeout)
        except CommandFailed as exc:
            raise from_failure(exc) from exc
        if done.exitstatus == 1:
            for line in done.stderr.splitlines():  # "cannot open 'x': dataset does not exist" is fine here
                if line.strip() and "does not exist" not in line:
                    raise from_failure(CommandFailed(argv, 1, done.stdout, done.stderr))
        return {name: value for name, value in _rows(done.stdout, 2) if value.isdigit()}

    # -- pools and usage ----------------------------------------------------------------------------------

    async def pools(self) -> list[str]:
        """Names of the imported pools (``zpool list -H -o name``)."""
        done = await self._run([self.zpool_bin, "list", "-H", "-o", "name"])
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    async def usage(self, pool_fs: str) -> dict[str, dict[str, int]]:
        """``{name: {"used", "referenced", "available"}}`` in bytes for ``pool_fs`` and every filesystem below
        it (snapshots left out): one ``zfs get -Hrp``."""
        _names.validate_dataset(pool_fs)
        types = ["-t", "filesystem"] if self.caps.get_types else []
        done = await self._zfs("get", "-Hrp", *types, "-o", "name,property,value", ",".join(USAGE_PROPS),
                               pool_fs)
        result: dict[str, dict[str, int]] = {}
        for name, prop, value in _rows(done.stdout, 3):
            if "@" in name or prop not in USAGE_PROPS or not value.isdigit():
                continue
            result.setdefault(name, {})[prop] = int(value)
        return result
