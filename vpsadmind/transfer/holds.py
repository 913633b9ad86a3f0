"""User holds that protect the snapshots of a running transfer from rotation (``zfs destroy`` of a held
snapshot fails), with a ledger in the database so that every hold is released: on success, on failure and,
after a crash, by the start-up sweep.

The ledger row is written *before* ``zfs hold``: a crash between the two leaves a ledger entry without a
hold, which a release tolerates, never a hold without an entry.
"""

from __future__ import annotations

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
    """Hold each of ``snapshots`` (in order, duplicates once); returns the ``(tag, snapshot)`` pairs."""
    tag = hold_tag(chain_id)
    taken: list[tuple[str, str]] = []
    for snap in dict.fromkeys(snapshots):
        await store.note_hold(tag, snap, chain_id=chain_id, transaction_id=transaction_id)
        try:
            await zfs.hold(tag, snap)
        except HoldExists:
            pass
        except ZfsError:
            await release(zfs, store, [*taken, (tag, snap)])
            raise
        taken.append((tag, snap))
    return taken


async def release(zfs: Zfs, store: TransferStore, pairs: Iterable[tuple[str, str]]) -> None:
    """Release ``pairs``; a hold or snapshot that is already gone is fine."""
    for tag, snap in pairs:
        await zfs.release(tag, snap, missing_ok=True)
        await store.forget_hold(tag, snap)


async def release_all(zfs: Zfs, store: TransferStore, *, chain_id: int | None = None,
                      transaction_id: int | None = None, finished_chains: bool = False) -> int:
    """Release what the ledger holds for a chain, a transaction, or every chain that is over."""
    pairs = await store.holds_of(chain_id=chain_id, transaction_id=transaction_id,
                                 finished_chains=finished_chains)
    await release(zfs, store, pairs)
    return len(pairs)
