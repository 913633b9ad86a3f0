"""Transfers of snapshots between pools (contract 5.4, 7.3): 5220 Recv, 5221 Send, 5222 RecvCheck and
5223 LocalSend, with v2.0's params, including the tree/branch variants of backup pools and the ``.rollback``
suffix of a remote rollback.

The moving parts live in :mod:`vpsadmind.transfer`: Recv leaves a :class:`~vpsadmind.transfer.receiver.
Receiver` listening as a chain blocker and records the transfer (its secret, the target's snapshots before)
in ``vpsadmind_transfers``; Send reads the secret from there and streams; RecvCheck, once the receiver ended,
compares the guid of the last snapshot with the one the sender announced. Snapshots in use are held
(``vpsadmind_holds`` ledger) and always released. Rollback of Recv (and of LocalSend) destroys only the
snapshots that the target did not have before this transfer, so never the common base, and rolls the target's
files back to the newest snapshot it keeps.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from vpsadmind.db import Database
from vpsadmind.engine.model import Direction
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import Handler, HandlerContext, Outcome, Recovery, handler, ok, on_start
from vpsadmind.handlers.storage_common import (
    SnapshotRef,
    check_component,
    check_dataset,
    check_relative,
    check_snapshot,
    dataset_path,
    fail,
    json_output,
    zfs_driver,
)
from vpsadmind.transfer import holds
from vpsadmind.transfer.errors import TransferError
from vpsadmind.transfer.receiver import Receiver, ReceiverSpec
from vpsadmind.transfer.sender import SendSpec, local_send, send
from vpsadmind.transfer.store import TransferRow, TransferStore
from vpsadmind.transfer.wire import new_secret
from vpsadmind.zfs.driver import Zfs
from vpsadmind.zfs.errors import DatasetNotFound, ZfsError

__all__ = ["Recv", "Send", "RecvCheck", "LocalSend", "resolve_names"]

log = structlog.get_logger("vpsadmind.transfer")
_RECEIVERS = "transfer.receivers"


# ------------------------------------------------------------------------------------------------------------
# Params


def _check_snapshots(snapshots: list[SnapshotRef], field_name: str = "snapshots") -> None:
    if not snapshots:
        raise ParamError("at least one snapshot is needed", field=field_name)
    for i, s in enumerate(snapshots):
        if s.known_name() is not None:
            check_snapshot(f"{field_name}[{i}].name", s.name)


def _check_branch(tree: str | None, branch: str | None, prefix: str = "") -> None:
    if branch is not None or tree is not None:
        check_component(f"{prefix}tree", tree)
    if branch is not None:
        check_component(f"{prefix}branch", branch)


def _check_endpoint(addr: str, port: int) -> None:
    try:
        ipaddress.ip_address(addr)
    except (ValueError, TypeError):
        raise ParamError(f"not an IP address: {str(addr)[:60]!r}", field="addr") from None
    if not 1 <= port <= 65535:
        raise ParamError(f"not a TCP port: {port}", field="port")


def _check_stream(addr: str, port: int, pool_field: str, pool_fs: str, dataset_name: str, tree: str | None,
                  branch: str | None, snapshots: list[SnapshotRef]) -> None:
    """What Recv and Send params share: the endpoint, the pool, the dataset path and the snapshots."""
    _check_endpoint(addr, port)
    check_dataset(pool_field, pool_fs)
    check_relative("dataset_name", dataset_name)
    _check_branch(tree, branch)
    _check_snapshots(snapshots)
    dataset_path(pool_fs, dataset_name, tree, branch)


@dataclass(frozen=True, slots=True)
class RecvParams:
    addr: str
    port: int
    dst_pool_fs: str
    dataset_name: str
    snapshots: list[SnapshotRef]
    tree: str | None = None
    branch: str | None = None

    def __post_init__(self) -> None:
        _check_stream(self.addr, self.port, "dst_pool_fs", self.dst_pool_fs, self.dataset_name, self.tree,
                      self.branch, self.snapshots)

    def target(self) -> str:
        return dataset_path(self.dst_pool_fs, self.dataset_name, self.tree, self.branch)


@dataclass(frozen=True, slots=True)
class SendParams:
    addr: str
    port: int
    src_pool_fs: str
    dataset_name: str
    snapshots: list[SnapshotRef]
    tree: str | None = None
    branch: str | None = None

    def __post_init__(self) -> None:
        _check_stream(self.addr, self.port, "src_pool_fs", self.src_pool_fs, self.dataset_name, self.tree,
                      self.branch, self.snapshots)

    def source(self) -> str:
        return dataset_path(self.src_pool_fs, self.dataset_name, self.tree, self.branch)


@dataclass(frozen=True, slots=True)
class RecvCheckParams:
    dst_pool_fs: str
    dataset_name: str
    snapshot: SnapshotRef
    tree: str | None = None
    branch: str | None = None

    def __post_init__(self) -> None:
        check_dataset("dst_pool_fs", self.dst_pool_fs)
        check_relative("dataset_name", self.dataset_name)
        _check_branch(self.tree, self.branch)
        _check_snapshots([self.snapshot], "snapshot")
        self.target()

    def target(self) -> str:
        return dataset_path(self.dst_pool_fs, self.dataset_name, self.tree, self.branch)


@dataclass(frozen=True, slots=True)
class LocalSendParams:
    src_pool_fs: str
    dst_pool_fs: str
    src_dataset_name: str
    dst_dataset_name: str
    snapshots: list[SnapshotRef]
    src_tree: str | None = None
    src_branch: str | None = None
    dst_tree: str | None = None
    dst_branch: str | None = None

    def __post_init__(self) -> None:
        check_dataset("src_pool_fs", self.src_pool_fs)
        check_dataset("dst_pool_fs", self.dst_pool_fs)
        check_relative("src_dataset_name", self.src_dataset_name)
        check_relative("dst_dataset_name", self.dst_dataset_name)
        _check_branch(self.src_tree, self.src_branch, "src_")
        _check_branch(self.dst_tree, self.dst_branch, "dst_")
        _check_snapshots(self.snapshots)
        self.source()
        self.target()

    def source(self) -> str:
        return dataset_path(self.src_pool_fs, self.src_dataset_name, self.src_tree, self.src_branch,
                            field_name="src_dataset_name")

    def target(self) -> str:
        return dataset_path(self.dst_pool_fs, self.dst_dataset_name, self.dst_tree, self.dst_branch,
                            field_name="dst_dataset_name")


# ------------------------------------------------------------------------------------------------------------
# Shared pieces


async def resolve_names(db: Database, snapshots: list[SnapshotRef]) -> list[str]:
    """The real snapshot names, in order: from params where confirmed, else from ``snapshots`` (one query)."""
    missing = [s.id for s in snapshots if s.known_name() is None]
    found: dict[int, str] = {}
    if missing:
        marks = ", ".join(["%s"] * len(missing))
        rows = await db.fetchall(f"SELECT id, name FROM snapshots WHERE id IN ({marks})", missing)
        found = {int(r["id"]): str(r["name"]) for r in rows if r["name"]}
    names: list[str] = []
    for i, s in enumerate(snapshots):
        name = s.known_name() or found.get(s.id)
        if name is None:
            raise fail(f"snapshot {s.id} has no name in the database yet", snapshot_id=s.id)
        names.append(check_snapshot(f"snapshots[{i}].name", name))
    return names


def _store(ctx: HandlerContext) -> TransferStore:
    return TransferStore(ctx.db, ctx.server_id)


def _receivers(ctx: HandlerContext) -> dict[int, Receiver]:
    found: dict[int, Receiver] = ctx.services.setdefault(_RECEIVERS, {})
    return found


def _start_receiver(ctx: HandlerContext, zfs: Zfs, row: TransferRow) -> Receiver:
    spec = ReceiverSpec(row.id, row.chain_id, row.transaction_id, row.addr, row.port, row.secret, row.target,
                        row.remount)
    receiver = Receiver(spec, zfs=zfs, store=_store(ctx), config=ctx.config.transfer, progress=ctx.progress)
    receiver.listen()
    running = _receivers(ctx)
    running[row.transaction_id] = receiver

    async def serve() -> None:
        try:
            await receiver.serve()
        finally:
            if running.get(row.transaction_id) is receiver:
                del running[row.transaction_id]

    ctx.block_chain(row.chain_id, serve())
    return receiver


def _snapshot_names(snaps: list[Any]) -> list[str]:
    return [s.short for s in snaps]


# ------------------------------------------------------------------------------------------------------------
# 5220 Dataset::Recv


@handler(5220)
class Recv(Handler[RecvParams]):
    """Listen on ``addr:port`` and receive into ``<dst_pool_fs>/<ds>[/<tree>/<branch>]``; returns at once and
    blocks its chain on this node until the stream has arrived. Idempotent: a re-run keeps the transfer's
    secret and listens again."""

    Params = RecvParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        p, t = self.params, self.transaction
        zfs = await zfs_driver(self.ctx)
        store = _store(self.ctx)
        names = await resolve_names(self.ctx.db, p.snapshots)
        target = p.target()
        if t.t_id in _receivers(self.ctx):
            return ok(addr=p.addr, port=p.port, target=target)
        try:
            before, existed = _snapshot_names(await zfs.snapshots(target)), True
        except DatasetNotFound:
            before, existed = [], False
        old = await store.by_recv(t.t_id)
        secret = old.secret if old is not None else new_secret()
        remount = old.remount if old is not None else False
        if old is not None:  # a re-run: what was there before the first run is what rollback must keep
            before, existed = old.existing, old.target_existed
        elif existed and not before:
            remount = await zfs.prepare_receive(target, snapshots=[])
        await store.register(chain_id=t.chain_id, transaction_id=t.t_id, addr=p.addr, port=p.port, secret=secret,
                             target=target, existing=before, target_existed=existed, remount=remount)
        row = await store.by_recv(t.t_id)
        assert row is not None
        if len(names) > 1 and names[0] in before:
            await holds.take(zfs, store, [f"{target}@{names[0]}"], chain_id=t.chain_id, transaction_id=t.t_id)
        try:
            _start_receiver(self.ctx, zfs, row)
        except TransferError as exc:
            await holds.release_all(zfs, store, transaction_id=t.t_id)
            raise fail(str(exc), addr=p.addr, port=p.port) from exc
        return ok(addr=p.addr, port=p.port, target=target)

    async def rollback(self) -> Outcome | None:
        p, t = self.params, self.transaction
        receiver = _receivers(self.ctx).pop(t.t_id, None)
        if receiver is not None:
            receiver.stop()  # zfs recv killed, port closed
        zfs = await zfs_driver(self.ctx)
        store = _store(self.ctx)
        row = await store.by_recv(t.t_id)
        names = await resolve_names(self.ctx.db, p.snapshots)
        keep = set(row.existing) if row is not None else ({names[0]} if len(names) > 1 else set())
        target = p.target()
        await zfs.abort_resumable(target)
        destroyed = await _undo_receive(zfs, target, names, keep, known_before=row is not None)
        await holds.release_all(zfs, store, transaction_id=t.t_id)
        if row is not None:
            if not row.target_existed and await zfs.exists(target) and not await zfs.snapshots(target):
                await zfs.destroy(target, missing_ok=True)  # the receive made it; nothing of it is left
            await store.delete(row.id)
        return ok(destroyed=destroyed)


async def _undo_receive(zfs: Zfs, target: str, names: list[str], keep: set[str], *,
                        known_before: bool = False) -> list[str]:
    """Destroy, newest first, those of ``names`` that arrived on ``target`` and it did not have (``keep``), then
    roll ``target`` back to the newest snapshot it keeps. A receive leaves the files at the last snapshot it
    received, and destroying that snapshot does not change them: without the rollback the target would hold
    the data of snapshots it no longer has. What it held before the receive is what that snapshot holds:
    ``recv -F`` had rolled it back to its newest snapshot first. Nothing arrived: nothing is rolled back.

    ``known_before``: ``keep`` is every snapshot the target had before (recorded at Recv), so whatever else it
    has now arrived with this stream and goes too, also the intermediate snapshots of a ``-I`` stream that
    ``names`` (the API's list) lacks. The chain's locks keep any other writer away."""
    try:
        present_snaps = await zfs.snapshots(target)
    except DatasetNotFound:
        return []
    present = {s.short for s in present_snaps}
    if known_before:
        names = [s.short for s in present_snaps]
    destroyed = []
    for name in reversed(names):
        if name not in keep and name in present:
            await zfs.destroy(f"{target}@{name}", missing_ok=True)
            destroyed.append(name)
    left = await zfs.snapshots(target) if destroyed else []
    if left:
        await zfs.rollback(left[-1].name)
    return destroyed


# ------------------------------------------------------------------------------------------------------------
# 5221 Dataset::Send


@handler(5221)
class Send(Handler[SendParams]):
    """``zfs send [-I first] last`` to the receiver of the chain on ``addr:port``. A crash in the middle fails
    it as interrupted (its holds are released), so the chain rolls back as when the sender dies; the next
    backup starts over. No rollback (v2.0)."""

    Params = SendParams

    async def exec(self) -> Outcome | None:
        p, t = self.params, self.transaction
        cfg = self.ctx.config.transfer
        zfs = await zfs_driver(self.ctx)
        store = _store(self.ctx)
        names = await resolve_names(self.ctx.db, p.snapshots)
        src = p.source()
        last = f"{src}@{names[-1]}"
        base = f"{src}@{names[0]}" if len(names) > 1 else None
        secret = None
        if cfg.protocol != "nc":
            row = await store.by_endpoint(t.chain_id, p.addr, p.port)
            if row is None:
                raise fail(f"no receiver of chain {t.chain_id} is registered on {p.addr}:{p.port}",
                           addr=p.addr, port=p.port)
            secret = row.secret
        props = await zfs.get([s for s in (base, last) if s], ["guid", "referenced", "used"])
        if last not in props:
            raise fail(f"snapshot {last} does not exist", snapshot=last)
        spec = SendSpec(t.chain_id, t.t_id, p.addr, p.port, secret, last, base, props[last]["guid"].value,
                        _estimate(props, base, last))
        taken = await holds.take(zfs, store, [s for s in (base, last) if s], chain_id=t.chain_id,
                                 transaction_id=t.t_id)
        sends: list[tuple[str, str]] = []  # ledger entries of zfs-fuse's own holds of each zfs send

        async def spawned(pid: int) -> None:
            sends.extend(await holds.note_send(zfs, store, pid, [s for s in (base, last) if s], chain_id=t.chain_id,
                                               transaction_id=t.t_id))
        sent = False
        try:
            result = await send(spec, argv_for=lambda token, since: zfs.send_argv(last, base=since or base,
                                                                                    resume_token=token),
                                config=cfg, board=self.ctx.progress, resumable=zfs.caps.resumable_receive,
                                on_spawn=spawned)
            sent = True
        except TransferError as exc:
            raise fail(str(exc), addr=p.addr, port=p.port, snapshot=last) from exc
        finally:
            try:  # a killed zfs send of zfs-fuse leaves holds on its whole range
                await holds.finish_sends(zfs, store, sends, succeeded=sent)
            finally:
                await holds.release(zfs, store, taken)
        return ok(bytes=result.bytes, seconds=round(result.seconds, 3), rate=round(result.rate),
                  attempts=result.attempts, resumed=result.resumed)

    async def recover(self, direction: Direction) -> Outcome | Recovery:
        zfs = await zfs_driver(self.ctx)
        await holds.release_all(zfs, _store(self.ctx), transaction_id=self.transaction.t_id)
        return Recovery.INTERRUPTED


def _estimate(props: dict[str, Any], base: str | None, last: str) -> int | None:
    """Bytes the stream will carry, roughly: the last snapshot's data for a full stream, the growth plus
    what the last snapshot alone holds for an incremental one (zfs-fuse has no ``send -nP``)."""
    try:
        referenced = int(props[last]["referenced"].value)
        if base is None:
            return referenced
        grown = max(0, referenced - int(props[base]["referenced"].value))
        return grown + int(props[last]["used"].value)
    except (KeyError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------------------
# 5222 Dataset::RecvCheck


@handler(5222)
class RecvCheck(Handler[RecvCheckParams]):
    """Runs once the receiver ended (chain blocker): the last snapshot must be on the target, with the guid
    the sender announced. Releases the receiving side's holds. Idempotent."""

    Params = RecvCheckParams
    idempotent = True

    async def exec(self) -> Outcome | None:
        p, t = self.params, self.transaction
        zfs = await zfs_driver(self.ctx)
        store = _store(self.ctx)
        name = (await resolve_names(self.ctx.db, [p.snapshot]))[0]
        target = p.target()
        row = await store.by_target(t.chain_id, target)
        snapshot = f"{target}@{name}"
        guid = (await zfs.guids([snapshot])).get(snapshot)
        if guid is None:
            why = f" ({row.error})" if row is not None and row.error else ""
            raise fail(f"snapshot {snapshot} did not arrive{why}", snapshot=snapshot)
        if row is not None and row.guid and row.guid != guid:
            raise fail(f"snapshot {snapshot} has guid {guid}, the sender sent {row.guid}", snapshot=snapshot,
                       guid=guid, expected=row.guid)
        if row is not None:
            await holds.release_all(zfs, store, transaction_id=row.transaction_id)
            await store.update(row.id, state="checked")
        return ok(snapshot=name, guid=guid, bytes=row.bytes if row is not None else None)


# ------------------------------------------------------------------------------------------------------------
# 5223 Dataset::LocalSend


@handler(5223)
class LocalSend(Handler[LocalSendParams]):
    """``zfs send [-I first] last | zfs recv -F dst`` on this node. Idempotent: when the last snapshot is
    already on the target with the source's guid, the re-run has nothing to do. Rollback destroys the
    snapshots the target did not have before (``t_output.existing``)."""

    Params = LocalSendParams
    idempotent = True
    _kind: ClassVar[str] = "local"

    async def exec(self) -> Outcome | None:
        p, t = self.params, self.transaction
        zfs = await zfs_driver(self.ctx)
        store = _store(self.ctx)
        # a re-run (after a crash or a lost database): what the interrupted run held goes first, also when
        # its stream arrived and this run has nothing more to do (zfs-fuse's holds of a killed zfs send too)
        await holds.release_all(zfs, store, transaction_id=t.t_id)
        names = await resolve_names(self.ctx.db, p.snapshots)
        src, dst = p.source(), p.target()
        last = f"{src}@{names[-1]}"
        base = f"{src}@{names[0]}" if len(names) > 1 else None
        existed = await zfs.exists(dst)
        before = await zfs.snapshots(dst) if existed else []
        guids = await zfs.guids([last])
        if last not in guids:
            raise fail(f"snapshot {last} does not exist", snapshot=last)
        if any(s.short == names[-1] and str(s.guid) == guids[last] for s in before):
            return ok(existing=_saved_existing(t.t_output), target_existed=True, bytes=0)
        taken = await holds.take(zfs, store, [s for s in (base, last) if s], chain_id=t.chain_id,
                                 transaction_id=t.t_id)
        progress = self.ctx.progress.open("local", chain_id=t.chain_id, transaction_id=t.t_id,
                                          label=f"{last} -> {dst}")
        error, remount, moved = None, False, None
        sends: list[tuple[str, str]] = []  # ledger entries of zfs-fuse's own holds of the zfs send

        async def spawned(pid: int) -> None:
            sends.extend(await holds.note_send(zfs, store, pid, [s for s in (base, last) if s], chain_id=t.chain_id,
                                               transaction_id=t.t_id))
        try:  # from here on the holds are released whatever fails, the unmount for the receive included
            remount = await zfs.prepare_receive(dst)
            moved = await local_send(zfs.send_argv(last, base=base), zfs.recv_argv(dst), progress=progress,
                                     config=self.ctx.config.transfer, on_spawn=spawned)
        except (TransferError, ZfsError) as exc:
            error = str(exc)
            raise fail(error, snapshot=last, target=dst) from exc
        finally:
            self.ctx.progress.close(progress, error=error)
            try:
                if remount:
                    await zfs.mount(dst)
            finally:
                try:  # a killed zfs send of zfs-fuse leaves holds on its whole range
                    await holds.finish_sends(zfs, store, sends, succeeded=moved is not None)
                finally:
                    await holds.release(zfs, store, taken)
        return ok(existing=_snapshot_names(before), target_existed=existed, bytes=moved,
                  seconds=round(progress.seconds, 3))

    async def rollback(self) -> Outcome | None:
        p = self.params
        zfs = await zfs_driver(self.ctx)
        out = json_output(self.transaction.t_output)
        names = await resolve_names(self.ctx.db, p.snapshots)
        saved = out.get("existing")
        keep = set(saved) if isinstance(saved, list) else ({names[0]} if len(names) > 1 else set())
        dst = p.target()
        destroyed = await _undo_receive(zfs, dst, names, keep, known_before=isinstance(saved, list))
        if out.get("target_existed") is False and await zfs.exists(dst) and not await zfs.snapshots(dst):
            await zfs.destroy(dst, missing_ok=True)
        return ok(destroyed=destroyed)


def _saved_existing(raw: str | None) -> list[str]:
    saved = json_output(raw).get("existing")
    return [str(x) for x in saved] if isinstance(saved, list) else []


# ------------------------------------------------------------------------------------------------------------
# At start


@on_start
async def transfers_at_start(ctx: HandlerContext) -> None:
    """Release the holds and drop the rows of chains that are over; listen again for transfers whose chain
    still waits for its stream (this daemon restarted between Recv and Send)."""
    store = _store(ctx)
    rows = await store.open_receivers()
    pending = await store.holds_of(finished_chains=True)
    if not rows and not pending:
        await store.delete_finished()
        return
    zfs = await zfs_driver(ctx)
    released = await holds.release_all(zfs, store, finished_chains=True)
    dropped = await store.delete_finished()
    for row in rows:
        if row.transaction_id in _receivers(ctx):
            continue
        try:
            _start_receiver(ctx, zfs, row)
        except TransferError as exc:
            log.error("transfer_relisten_failed", chain=row.chain_id, port=row.port, error=str(exc))
    log.info("transfers_recovered", listening=len(rows), holds_released=released, rows_dropped=dropped)
