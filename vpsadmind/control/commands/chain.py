"""``chain <id> confirmations|confirm|release``: an administrator's hands on a chain's confirmations, resource
locks and port reservations (contract 2.3, 6.2), typically to clean up after a fatal chain.

* ``confirmations``: list the chain's ``transaction_confirmations`` (all, or of the given transactions) per
  transaction: ``{"transactions": {"<t_id>": [{id, class_name, row_pks, attr_changes, type, done}]}}``;
* ``confirm``: apply the confirmations of the given transactions (default: every transaction of the chain) in
  ``direction`` (``execute`` or ``rollback``) as if the transaction had succeeded (``success`` true) or
  failed (false; null takes each transaction's own ``t_success``), whether already done or not, then mark
  them done; the reply lists what was applied, ``done`` as it was before. All or nothing: one confirmation
  that cannot be applied rolls the whole command back and the reply is failed, naming it;
* ``release``: delete the chain's ``resource_locks`` and/or free its ``port_reservations`` (chain and
  ``addr`` back to NULL), returning what was released: ``{"locks": [...], "ports": [...]}``.

Each runs in one database transaction that first locks the chain's row (``FOR UPDATE``), so it never
interleaves with the save of one of the chain's transactions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

import structlog

from vpsadmind.control.commands.base import CommandFailed, DaemonLike, command, engine_of, flag, int_param
from vpsadmind.db import Tx
from vpsadmind.db.pool import is_retryable
from vpsadmind.engine.confirmations import Confirmation, ConfirmationError, apply_confirmation, load_yaml
from vpsadmind.engine.model import Direction

__all__ = ["cmd_chain", "RELEASABLE"]

log = structlog.get_logger("vpsadmind.control")

RELEASABLE: Final = ("locks", "ports")

_SELECT = ("SELECT c.id, c.transaction_id, c.class_name, c.table_name, c.row_pks, c.attr_changes, "
           "c.confirm_type, c.done, t.t_success FROM transaction_confirmations c "
           "JOIN transactions t ON t.t_id = c.transaction_id WHERE t.transaction_chain_id = %s")


def _transactions(params: Mapping[str, Any]) -> list[int] | None:
    value = params.get("transactions")
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise CommandFailed(f"transactions must be a list of transaction ids or null, got {value!r:.60}")
    return list(dict.fromkeys(int_param(v, "a transaction id") for v in value))


def _direction(params: Mapping[str, Any]) -> Direction:
    value = params.get("direction") or "execute"
    if value not in ("execute", "rollback"):
        raise CommandFailed(f"direction must be execute or rollback, got {value!r:.40}")
    return Direction.EXECUTE if value == "execute" else Direction.ROLLBACK


def _release(params: Mapping[str, Any]) -> list[str]:
    value = params.get("release")
    if value is None:
        return list(RELEASABLE)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or any(v not in RELEASABLE for v in value):
        raise CommandFailed(f"release must be a list of locks and/or ports, got {value!r:.60}")
    return list(dict.fromkeys(value))


def _plain(value: Any) -> Any:
    """Loaded Rails YAML for the reply: Ruby symbol keys (``:id``) without their colon, as Ruby's to_json."""
    if isinstance(value, dict):
        return {(k[1:] if isinstance(k, str) and k.startswith(":") else k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _yaml(text: str | None) -> Any:
    try:
        return _plain(load_yaml(text))
    except ConfirmationError:
        return text  # shown as stored, so the operator sees what is wrong with it


def _entry(row: Mapping[str, Any], c: Confirmation) -> dict[str, Any]:
    return {"id": c.id, "class_name": row["class_name"], "row_pks": _yaml(row["row_pks"]),
            "attr_changes": _yaml(row["attr_changes"]), "type": c.type_name, "done": bool(row["done"])}


async def _rows(tx: Tx, chain_id: int, transactions: list[int] | None) -> list[dict[str, Any]]:
    sql, args = _SELECT, [chain_id]
    if transactions:
        sql += " AND c.transaction_id IN (" + ", ".join(["%s"] * len(transactions)) + ")"
        args += transactions
    return await tx.fetchall(sql + " ORDER BY c.transaction_id, c.id", args)


def _grouped(entries: list[tuple[int, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t_id, entry in entries:
        out.setdefault(str(t_id), []).append(entry)
    return out


async def _lock_chain(tx: Tx, chain_id: int) -> None:
    if await tx.fetchone("SELECT id FROM transaction_chains WHERE id = %s FOR UPDATE", (chain_id,)) is None:
        raise CommandFailed(f"No such chain {chain_id}")


async def _list(tx: Tx, chain_id: int, transactions: list[int] | None) -> dict[str, Any]:
    await _lock_chain(tx, chain_id)
    rows = await _rows(tx, chain_id, transactions)
    return {"transactions": _grouped([(int(r["transaction_id"]), _entry(r, Confirmation.from_row(r)))
                                      for r in rows])}


async def _confirm(tx: Tx, chain_id: int, transactions: list[int] | None, direction: Direction,
                   success: bool | None) -> dict[str, Any]:
    await _lock_chain(tx, chain_id)
    entries: list[tuple[int, dict[str, Any]]] = []
    for row in await _rows(tx, chain_id, transactions):
        c = Confirmation.from_row(row)
        if success is not None:
            c = dataclasses.replace(c, success=success)
        try:
            await apply_confirmation(tx, c, direction)
        except Exception as exc:  # the DB transaction rolls back: nothing of this command is applied
            if is_retryable(exc):
                raise  # a deadlock: Database.run runs the whole command again
            raise CommandFailed(f"confirmation {c.id} of transaction {c.transaction_id} ({c.type_name} on "
                                f"{c.table_name!r:.70}) failed, nothing was applied: {exc}") from exc
        entries.append((c.transaction_id, _entry(row, c)))
    ids = [e["id"] for _t, e in entries]
    if ids:
        await tx.execute("UPDATE transaction_confirmations SET done = 1 WHERE id IN (" +
                         ", ".join(["%s"] * len(ids)) + ")", ids)
    return {"transactions": _grouped(entries)}


async def _release_locks(tx: Tx, chain_id: int) -> list[dict[str, Any]]:
    rows = await tx.fetchall("SELECT resource, row_id, created_at FROM resource_locks "
                             "WHERE transaction_chain_id = %s ORDER BY id", (chain_id,))
    await tx.execute("DELETE FROM resource_locks WHERE transaction_chain_id = %s", (chain_id,))
    return [{"resource": r["resource"], "row_id": r["row_id"], "created_at": r["created_at"]} for r in rows]


async def _release_ports(tx: Tx, chain_id: int) -> list[dict[str, Any]]:
    rows = await tx.fetchall(
        "SELECT r.node_id, r.addr, r.port, s.server_name FROM port_reservations r "
        "LEFT JOIN servers s ON s.server_id = r.node_id WHERE r.transaction_chain_id = %s "
        "ORDER BY r.node_id, r.port", (chain_id,))
    await tx.execute("UPDATE port_reservations SET transaction_chain_id = NULL, addr = NULL "
                     "WHERE transaction_chain_id = %s", (chain_id,))
    return [{"node_id": r["node_id"], "node_name": r["server_name"], "addr": r["addr"], "port": r["port"]}
            for r in rows]


async def _release_chain(tx: Tx, chain_id: int, what: list[str]) -> dict[str, Any]:
    await _lock_chain(tx, chain_id)
    out: dict[str, Any] = {}
    if "locks" in what:
        out["locks"] = await _release_locks(tx, chain_id)
    if "ports" in what:
        out["ports"] = await _release_ports(tx, chain_id)
    return out


@command("chain")
async def cmd_chain(daemon: DaemonLike, params: dict[str, Any]) -> dict[str, Any]:
    db = engine_of(daemon).db
    chain_id = int_param(params.get("chain"), "chain")
    sub = params.get("command")
    transactions = _transactions(params)
    if sub == "confirmations":
        return await db.run(lambda tx: _list(tx, chain_id, transactions))
    if sub == "confirm":
        direction = _direction(params)
        success = None if params.get("success") is None else flag(params, "success")
        out = await db.run(lambda tx: _confirm(tx, chain_id, transactions, direction, success))
        log.warning("control_chain_confirmed", chain=chain_id, transactions=transactions,
                    direction=direction.label, success=success,
                    confirmations=sum(len(v) for v in out["transactions"].values()))
        return out
    if sub == "release":
        what = _release(params)
        out = await db.run(lambda tx: _release_chain(tx, chain_id, what))
        log.warning("control_chain_released", chain=chain_id, locks=len(out.get("locks", ())),
                    ports=len(out.get("ports", ())))
        return out
    raise CommandFailed(f"Unknown chain command {sub}: expected confirmations, confirm or release")
