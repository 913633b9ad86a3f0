"""Apply ``transaction_confirmations`` when a chain closes (contract 2.3), with parameterized SQL.

v2.0 interpolated values into SQL unescaped (contract 12.11). Here values are always placeholders and table
and column names must match an identifier grammar before they are quoted into a statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from vpsadmind.db import Tx
from vpsadmind.engine.model import ConfirmType, Direction

__all__ = ["ConfirmationError", "Confirmation", "apply_confirmation", "plan", "load_yaml", "quote_ident",
           "load_chain_confirmations", "apply_chain_confirmations"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ConfirmationError(ValueError):
    """A confirmation row that cannot be applied: bad YAML, a bad identifier or a missing table."""


class _RailsLoader(yaml.SafeLoader):
    """SafeLoader that reads Rails' tagged YAML (``!ruby/hash:...``, ``!ruby/object:BigDecimal``) as plain data."""


def _untag(loader: _RailsLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        mapping = loader.construct_mapping(node, deep=True)
        if suffix.endswith("TimeWithZone") and "utc" in mapping:
            return mapping["utc"]  # v2.0 wrote a time as its UTC value
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)  # type: ignore[arg-type]
    if suffix.endswith("BigDecimal") and isinstance(value, str):
        return value.split(":")[-1]
    return value


_RailsLoader.add_multi_constructor("!ruby/", _untag)


def load_yaml(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return yaml.load(text, Loader=_RailsLoader)
    except yaml.YAMLError as exc:
        raise ConfirmationError(f"bad YAML: {exc}") from None


def _unsymbol(name: Any) -> Any:
    """The API serialises Ruby symbols (``:id``); v2.0 interpolated them as their bare names."""
    return name[1:] if isinstance(name, str) and name.startswith(":") else name


def quote_ident(name: Any) -> str:
    name = _unsymbol(name)
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ConfirmationError(f"not a valid SQL identifier: {name!r:.80}")
    return f"`{name}`"


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)  # the API converts booleans to 1/0
    if isinstance(value, dict | list):
        raise ConfirmationError(f"value must be a scalar, got {type(value).__name__}")
    return value


@dataclass(slots=True)
class Confirmation:
    id: int
    transaction_id: int
    table_name: str
    row_pks: Any
    attr_changes: Any
    confirm_type: ConfirmType | int
    success: bool

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Confirmation:
        raw_type = int(row["confirm_type"])
        ctype: ConfirmType | int = ConfirmType(raw_type) if raw_type in ConfirmType._value2member_map_ else raw_type
        return cls(id=int(row["id"]), transaction_id=int(row["transaction_id"]), table_name=row["table_name"],
                   row_pks=row["row_pks"], attr_changes=row["attr_changes"], confirm_type=ctype,
                   success=int(row["t_success"]) > 0)

    @property
    def type_name(self) -> str:
        t = self.confirm_type
        return t.name.lower() if isinstance(t, ConfirmType) else f"unknown type {t}"


def _where(row_pks: Any) -> tuple[str, list[Any]]:
    pks = load_yaml(row_pks) if isinstance(row_pks, str) else row_pks
    if not isinstance(pks, dict) or not pks:
        raise ConfirmationError(f"row_pks must be a non-empty mapping, got {pks!r:.80}")
    return " AND ".join(f"{quote_ident(k)} = %s" for k in pks), [_scalar(v) for v in pks.values()]


def _assignments(attr_changes: Any) -> tuple[str, list[Any]]:
    attrs = load_yaml(attr_changes) if isinstance(attr_changes, str) else attr_changes
    if not isinstance(attrs, dict) or not attrs:
        raise ConfirmationError(f"attr_changes must be a non-empty mapping, got {attrs!r:.80}")
    return ", ".join(f"{quote_ident(k)} = %s" for k in attrs), [_scalar(v) for v in attrs.values()]


def _counter_column(attr_changes: Any) -> str:
    value = load_yaml(attr_changes) if isinstance(attr_changes, str) else attr_changes
    return quote_ident(value)


def plan(c: Confirmation, direction: Direction) -> tuple[str, list[Any]] | None:
    """The statement that confirmation ``c`` needs when its chain closes in ``direction``, or None."""
    if not isinstance(c.confirm_type, ConfirmType):
        raise ConfirmationError(f"unknown confirm_type {c.confirm_type}")
    table = quote_ident(c.table_name)
    executed = c.success and direction is Direction.EXECUTE
    where, wargs = _where(c.row_pks)
    t: ConfirmType = c.confirm_type
    if t is ConfirmType.CREATE:
        if executed:
            return f"UPDATE {table} SET `confirmed` = 1 WHERE {where}", wargs
        return f"DELETE FROM {table} WHERE {where}", wargs
    if t is ConfirmType.JUST_CREATE:
        return None if executed else (f"DELETE FROM {table} WHERE {where}", wargs)
    if t in (ConfirmType.EDIT_BEFORE, ConfirmType.EDIT_AFTER):
        if (t is ConfirmType.EDIT_AFTER) != executed:
            return None
        sets, sargs = _assignments(c.attr_changes)
        return f"UPDATE {table} SET {sets} WHERE {where}", sargs + wargs
    if t is ConfirmType.DESTROY:
        if executed:
            return f"DELETE FROM {table} WHERE {where}", wargs
        return f"UPDATE {table} SET `confirmed` = 1 WHERE {where}", wargs
    if t is ConfirmType.JUST_DESTROY:
        return (f"DELETE FROM {table} WHERE {where}", wargs) if executed else None
    if not executed:
        return None
    col = _counter_column(c.attr_changes)
    op = "-" if t is ConfirmType.DECREMENT else "+"
    return f"UPDATE {table} SET {col} = {col} {op} 1 WHERE {where}", wargs


async def apply_confirmation(tx: Tx, c: Confirmation, direction: Direction) -> None:
    stmt = plan(c, direction)
    if stmt is not None:
        await tx.execute(stmt[0], stmt[1])


async def load_chain_confirmations(tx: Tx, chain_id: int, *, transactions: list[int] | None = None,
                                   include_done: bool = False) -> list[Confirmation]:
    sql = ("SELECT c.id, c.transaction_id, c.table_name, c.row_pks, c.attr_changes, c.confirm_type, "
           "t.t_success FROM transaction_confirmations c "
           "JOIN transactions t ON t.t_id = c.transaction_id WHERE t.transaction_chain_id = %s")
    args: list[Any] = [chain_id]
    if not include_done:
        sql += " AND c.done = 0"
    if transactions:
        sql += " AND c.transaction_id IN (" + ", ".join(["%s"] * len(transactions)) + ")"
        args.extend(transactions)
    rows = await tx.fetchall(sql + " ORDER BY c.id", args)
    return [Confirmation.from_row(r) for r in rows]


async def apply_chain_confirmations(tx: Tx, chain_id: int, direction: Direction,
                                    confirmations: list[Confirmation] | None = None) -> list[str]:
    """Apply and mark done; a confirmation that fails is rolled back alone and reported, never fatal to the save."""
    items = confirmations if confirmations is not None else await load_chain_confirmations(tx, chain_id)
    errors: list[str] = []
    done: list[int] = []
    for c in items:
        await tx.execute("SAVEPOINT confirmation")
        try:
            await apply_confirmation(tx, c, direction)
        except Exception as exc:
            await tx.execute("ROLLBACK TO SAVEPOINT confirmation")
            errors.append(f"confirmation {c.id} ({c.type_name} on {c.table_name!r:.70}): {exc}")
            continue
        done.append(c.id)
    if done:
        marks = ", ".join(["%s"] * len(done))
        await tx.execute(f"UPDATE transaction_confirmations SET done = 1 WHERE id IN ({marks})", done)
    return errors
