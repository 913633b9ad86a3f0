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

__all__ = ["hold_tag", "take", "release", "release_all"]


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
    """Release ``pairs`` (one ``zfs release`` per tag); a hold or snapshot that is already gone is fine."""
    by_tag: dict[str, list[str]] = {}
    for tag, snap in pairs:
        by_tag.setdefault(tag, []).append(snap)
    for tag, snaps in by_tag.items():
        await zfs.release(tag, *snaps, missing_ok=True)
        await store.forget_holds(tag, snaps)


async def release_all(zfs: Zfs, store: TransferStore, *, chain_id: int | None = None,
                      transaction_id: int | None = None, finished_chains: bool = False) -> int:
    """Release what the ledger holds for a chain, a transaction, or every chain that is over."""
    pairs = await store.holds_of(chain_id=chain_id, transaction_id=transaction_id,
                                 finished_chains=finished_chains)
    await release(zfs, store, pairs)
    return len(pairs)
