"""Transfer chains as the API builds them (API ``TransactionChains::Dataset::Transfer``, contract 7.3), for
tests, benchmarks and the demo.

:func:`append_transfer` appends one cross-node transfer: a port reserved on the destination node, then Recv
(5220) on the destination, Send (5221) on the source and RecvCheck (5222) on the destination, with v2.0's
params. An initial transfer of several snapshots is two of them, as in the API: a full stream of the oldest
snapshot, then an incremental one from it to the newest (:func:`append_initial`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vpsadmind.testing.chains import ChainBuilder

__all__ = ["Side", "Snap", "SnapshotParam", "append_transfer", "append_initial", "append_local"]


@dataclass(frozen=True, slots=True)
class Side:
    """One end: node, pool and dataset name (``tree``/``branch`` on a backup pool)."""

    node: int
    pool_fs: str
    dataset: str
    tree: str | None = None
    branch: str | None = None

    def params(self, prefix: str = "") -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.branch is not None:
            extra = {f"{prefix}tree": self.tree, f"{prefix}branch": self.branch}
        return extra


@dataclass(frozen=True, slots=True)
class Snap:
    """A ``snapshots`` row: id and name (confirmed names are passed like the API's ``confirmed: 1``)."""

    id: int
    name: str

    def param(self, *, confirmed: bool = True) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "confirmed": 1 if confirmed else "confirmed"}


class SnapshotParam(Protocol):
    """What a transfer step needs of a snapshot: its ``snapshots`` param (a :class:`Snap`, or a snapshot the
    chain itself takes, whose name the daemon looks up by id)."""

    def param(self, *, confirmed: bool = True) -> dict[str, Any]: ...


def append_transfer(builder: ChainBuilder, src: Side, dst: Side, snapshots: Sequence[SnapshotParam], *,
                    confirmed: bool = True) -> ChainBuilder:
    """Recv, Send, RecvCheck of ``snapshots`` (one: a full stream; more: ``-I first last``)."""
    snaps = [s.param(confirmed=confirmed) for s in snapshots]
    builder.reserve_port(dst.node)
    port, addr = builder.port_ref(), builder.addr_ref()
    builder.append(5220, server=dst.node, params={
        "addr": addr, "port": port, "dst_pool_fs": dst.pool_fs, "dataset_name": dst.dataset,
        "snapshots": snaps, **dst.params()})
    builder.append(5221, server=src.node, params={
        "addr": addr, "port": port, "src_pool_fs": src.pool_fs, "dataset_name": src.dataset,
        "snapshots": snaps, **src.params()})
    builder.append(5222, server=dst.node, params={
        "dst_pool_fs": dst.pool_fs, "dataset_name": dst.dataset, "snapshot": snaps[-1], **dst.params()})
    return builder


def append_initial(builder: ChainBuilder, src: Side, dst: Side, snapshots: Sequence[SnapshotParam], *,
                   confirmed: bool = True) -> ChainBuilder:
    """The API's initial transfer: the oldest snapshot in full, then ``-I`` from it to the newest."""
    append_transfer(builder, src, dst, snapshots[:1], confirmed=confirmed)
    if len(snapshots) > 1:
        append_transfer(builder, src, dst, snapshots, confirmed=confirmed)
    return builder


def append_local(builder: ChainBuilder, src: Side, dst: Side, snapshots: Sequence[Snap]) -> ChainBuilder:
    """LocalSend (5223) between two pools of one node."""
    builder.append(5223, server=src.node, params={
        "src_pool_fs": src.pool_fs, "dst_pool_fs": dst.pool_fs, "src_dataset_name": src.dataset,
        "dst_dataset_name": dst.dataset, "snapshots": [s.param() for s in snapshots],
        **src.params("src_"), **dst.params("dst_")})
    return builder
