"""User holds that protect the snapshots of a running transfer from rotation (``zfs destroy`` of a held
snapshot fails), with a ledger in the database so that every hold is released: on success, on failure and,
after a crash, by the start-up sweep.

The ledger row is written *before* ``zfs hold``: a crash between the two leaves a ledger entry without a
hold, which a release tolerates, never a hold without an entry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from vpsadmind.transfer.store import TransferStore
from vpsadmind.zfs.driver import Zfs
from vpsadmind.zfs.errors import HoldExists, ZfsError

__all__ = ["hold_tag", "take", "release", "release_all", "SEND_TAG_PREFIX", "note_send", "finish_sends"]

#: zfs-fuse's ``zfs send -I`` holds its whole range with ``.send-<pid>-0`` and keeps the holds for ever when it is
#: killed (by the stall watchdog, a cancelled stream or the daemon's own death). The ledger keeps such a tag with
#: the two ends of the range, so that every release path (failure, crash recovery, the start-up sweep) can
#: release it on the whole range; a send that ends normally released them itself and only leaves the ledger.
SEND_TAG_PREFIX = ".send-"


def hold_tag(chain_id: int) -> str:
    """One tag per chain, so a re-run of a step finds its own hold (``HoldExists`` is fine)."""
    return f"vpsadmind-transfer-{chain_id}"


async def take(zfs: Zfs, store: TransferStore, snapshots: Iterable[str], *, chain_id: int,
               transaction_id: int) -> list[tuple[str, str]]:
    """Hold each of ``snapshots`` (duplicates once; one ``zfs hold``); returns the ``(tag, snapshot)`` pairs."""
    tag = hold_tag(chain_id)
    names = list(dict.fromkeys(snapshots))
    if not names:
        return []
    pairs = [(tag, snap) for snap in names]
    await store.note_holds(pairs, chain_id=chain_id, transaction_id=transaction_id)
    try:
        await zfs.hold(tag, *names)
    except HoldExists:  # a re-run: some are held already, hold the others one by one
        for snap in names:
            with contextlib.suppress(HoldExists):
                await zfs.hold(tag, snap)
    except ZfsError:
        await release(zfs, store, pairs)
        raise
    return pairs


async def release(zfs: Zfs, store: TransferStore, pairs: Iterable[tuple[str, str]]) -> None:
    """Release ``pairs`` (one ``zfs release`` per tag); a hold or snapshot that is already gone is fine. A
    ``.send-<pid>-0`` entry is released on its whole range (:meth:`Zfs.release_send_holds`)."""
    by_tag: dict[str, list[str]] = {}
    for tag, snap in pairs:
        by_tag.setdefault(tag, []).append(snap)
    for tag, snaps in by_tag.items():
        if tag.startswith(SEND_TAG_PREFIX):
            await zfs.release_send_holds([_send_pid(tag)], snaps)
        else:
            await zfs.release(tag, *snaps, missing_ok=True)
        await store.forget_holds(tag, snaps)


def _send_tag(pid: int) -> str:
    return f"{SEND_TAG_PREFIX}{pid}-0"


def _send_pid(tag: str) -> int:
    return int(tag[len(SEND_TAG_PREFIX):].split("-", 1)[0])


async def note_send(zfs: Zfs, store: TransferStore, pid: int, ends: Iterable[str], *, chain_id: int,
                    transaction_id: int) -> list[tuple[str, str]]:
    """On zfs-fuse, the ledger entry of a ``zfs send`` just started (``ends``: its first and last snapshot);
    no zfs command. Returns the pairs (none elsewhere)."""
    if not zfs.caps.fuse:
        return []
    pairs = [(_send_tag(pid), snap) for snap in dict.fromkeys(ends)]
    await store.note_holds(pairs, chain_id=chain_id, transaction_id=transaction_id)
    return pairs


async def finish_sends(zfs: Zfs, store: TransferStore, pairs: Iterable[tuple[str, str]], *, succeeded: bool) -> None:
    """The ledger entries of a transfer's ``zfs send`` runs, in the order they started. After a success the last
    run ended normally and released its holds itself: only its entry goes. Every other run was killed (a failed
    stream, or an attempt that was retried) and its holds are released on their range."""
    by_tag: dict[str, list[str]] = {}
    for tag, snap in pairs:
        by_tag.setdefault(tag, []).append(snap)
    tags = list(by_tag)
    for tag in tags:
        if succeeded and tag == tags[-1]:
            await store.forget_holds(tag, by_tag[tag])
        else:
            await release(zfs, store, [(tag, snap) for snap in by_tag[tag]])


async def release_all(zfs: Zfs, store: TransferStore, *, chain_id: int | None = None,
                      transaction_id: int | None = None, finished_chains: bool = False) -> int:
    """Release what the ledger holds for a chain, a transaction, or every chain that is over."""
    pairs = await store.holds_of(chain_id=chain_id, transaction_id=transaction_id,
                                 finished_chains=finished_chains)
    await release(zfs, store, pairs)
    return len(pairs)
