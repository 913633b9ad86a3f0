"""Create transaction chains exactly the way the vpsAdmin v2.0 API does (contract 2.4).

:class:`ChainBuilder` collects transactions, resource locks, port reservations, concerns and confirmations,
then :meth:`ChainBuilder.fire` writes them in one DB transaction:

1. ``transaction_chains`` row in state 0 (staged), size 0, progress 0;
2. ``resource_locks`` rows; a duplicate raises :class:`ResourceLocked`, the DB transaction is rolled back and
   nothing is queued;
3. port reservations: the lowest free port (``addr IS NULL``) of the node gets ``addr`` = the node's
   ``servers.server_ip4`` and the chain id;
4. ``transaction_chain_concerns`` rows;
5. the transactions in append order, each depending on the previous one (linear chain): ``t_done`` 0,
   ``t_success`` 0, ``t_m_id`` = the user, ``t_fallback`` NULL, ``created_at`` UTC, ``t_param`` JSON,
   ``queue``/``reversible`` from the API class (:mod:`vpsadmind.testing.api_types`); then their
   ``transaction_confirmations`` (``row_pks``/``attr_changes`` YAML as Rails ``serialize`` writes them);
6. the chain's ``size`` and state 1 (queued); commit.

Reserved ports are not known before :meth:`fire`; put :meth:`ChainBuilder.port_ref` /
:meth:`ChainBuilder.addr_ref` placeholders into ``params`` and they are replaced by the reserved values.

Module-level ``CREATE`` ... ``INCREMENT`` are the ``confirm_type`` codes (contract 2.3); the engine's model
has the same values as an enum, but this package does not import the engine.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiomysql
import yaml

from vpsadmind.errors import AgentError
from vpsadmind.testing.api_types import API_TYPES

__all__ = [
    "CHAIN_QUEUED",
    "CHAIN_STAGED",
    "CREATE",
    "DECREMENT",
    "DESTROY",
    "EDIT_AFTER",
    "EDIT_BEFORE",
    "INCREMENT",
    "JUST_CREATE",
    "JUST_DESTROY",
    "PORT_RANGE",
    "ChainBuilder",
    "Confirmation",
    "FiredChain",
    "NoFreePort",
    "PortRef",
    "ResourceLocked",
    "register_node",
    "rails_yaml",
]

# transaction_confirmations.confirm_type
CREATE: Final = 0
JUST_CREATE: Final = 1
EDIT_BEFORE: Final = 2
EDIT_AFTER: Final = 3
DESTROY: Final = 4
JUST_DESTROY: Final = 5
DECREMENT: Final = 6
INCREMENT: Final = 7

# transaction_chains.state values the API writes
CHAIN_STAGED: Final = 0
CHAIN_QUEUED: Final = 1

#: Ports the API pre-creates for every node of type node or storage.
PORT_RANGE: Final = range(10000, 20000)
_PORT_NODE_TYPES: Final = frozenset({"node", "storage"})

_ER_DUP_ENTRY: Final = 1062


class ResourceLocked(AgentError):
    """``resource_locks`` already holds (``resource``, ``row_id``); ``holder`` is the chain holding it."""

    def __init__(self, resource: str, row_id: int, holder: int | None) -> None:
        self.resource = resource
        self.row_id = row_id
        self.holder = holder
        by = f" by chain {holder}" if holder is not None else ""
        super().__init__(f"resource {resource}#{row_id} is locked{by}")


class NoFreePort(AgentError):
    """Every ``port_reservations`` row of the node is taken (or the node has none)."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        super().__init__(f"no free port left on node {node_id}")


# ----------------------------------------------------------------------------------------------------------
# YAML as Rails ``serialize`` writes it


def _bool_to_int(value: Any) -> Any:
    if value is True:
        return 1
    if value is False:
        return 0
    return value


def rails_yaml(value: Any) -> str | None:
    """``value`` as Rails 4 ``serialize`` stores it: ``None`` stays NULL, anything else is a YAML document
    with a ``---`` header (``{"id": 5}`` -> ``"---\\nid: 5\\n"``, ``"used"`` -> ``"--- used\\n...\\n"``).

    A key written as ``":name"`` comes out as a Ruby symbol key (``:name: 1``), as Psych dumps
    ``{name: 1}`` when the API passed keyword arguments.
    """
    if value is None:
        return None
    return yaml.safe_dump(
        value, explicit_start=True, default_flow_style=False, sort_keys=False, allow_unicode=True
    )


@dataclass(frozen=True, slots=True)
class Confirmation:
    """One ``transaction_confirmations`` row, attached to the transaction it is appended with.

    ``row_pks`` maps primary-key columns to values (composite keys allowed); ``attr_changes`` is a column ->
    value map for the edit types (booleans are stored as 1/0, as the API does), a column name for
    increment/decrement, or ``None``.
    """

    class_name: str
    table_name: str
    row_pks: dict[str, Any]
    attr_changes: dict[str, Any] | str | None
    confirm_type: int

    # Constructors named like the API's Transaction::Confirmable methods.
    @classmethod
    def create(cls, class_name: str, table_name: str, row_pks: dict[str, Any]) -> Confirmation:
        return cls(class_name, table_name, row_pks, None, CREATE)

    @classmethod
    def just_create(cls, class_name: str, table_name: str, row_pks: dict[str, Any]) -> Confirmation:
        return cls(class_name, table_name, row_pks, None, JUST_CREATE)

    @classmethod
    def edit_before(
        cls, class_name: str, table_name: str, row_pks: dict[str, Any], original: dict[str, Any]
    ) -> Confirmation:
        return cls(class_name, table_name, row_pks, original, EDIT_BEFORE)

    @classmethod
    def edit_after(
        cls, class_name: str, table_name: str, row_pks: dict[str, Any], changes: dict[str, Any]
    ) -> Confirmation:
        return cls(class_name, table_name, row_pks, changes, EDIT_AFTER)

    @classmethod
    def destroy(cls, class_name: str, table_name: str, row_pks: dict[str, Any]) -> Confirmation:
        return cls(class_name, table_name, row_pks, None, DESTROY)

    @classmethod
    def just_destroy(cls, class_name: str, table_name: str, row_pks: dict[str, Any]) -> Confirmation:
        return cls(class_name, table_name, row_pks, None, JUST_DESTROY)

    @classmethod
    def decrement(cls, class_name: str, table_name: str, row_pks: dict[str, Any], column: str) -> Confirmation:
        return cls(class_name, table_name, row_pks, column, DECREMENT)

    @classmethod
    def increment(cls, class_name: str, table_name: str, row_pks: dict[str, Any], column: str) -> Confirmation:
        return cls(class_name, table_name, row_pks, column, INCREMENT)

    def row_pks_yaml(self) -> str:
        out = rails_yaml(dict(self.row_pks))
        assert out is not None
        return out

    def attr_changes_yaml(self) -> str | None:
        changes = self.attr_changes
        if isinstance(changes, Mapping):
            return rails_yaml({k: _bool_to_int(v) for k, v in changes.items()})
        return rails_yaml(changes)


# ----------------------------------------------------------------------------------------------------------
# Chain builder


@dataclass(frozen=True, slots=True)
class PortRef:
    """Placeholder for the port (or address) of the ``index``-th :meth:`ChainBuilder.reserve_port` call."""

    index: int
    field: Literal["port", "addr"] = "port"


@dataclass(frozen=True, slots=True)
class FiredChain:
    chain_id: int
    transaction_ids: list[int]
    ports: list[tuple[int, str, int]]  # (node_id, addr, port)
    confirmation_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    t_type: int
    server: int
    vps: int | None
    params: dict[str, Any] | None
    raw_param: str | None
    urgent: bool
    priority: int
    queue: str
    reversible: int
    confirmations: tuple[Confirmation, ...]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _camelize(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\W]+", name) if part)


def _resolve(value: Any, ports: Sequence[tuple[int, str, int]]) -> Any:
    if isinstance(value, PortRef):
        _node, addr, port = ports[value.index]
        return port if value.field == "port" else addr
    if isinstance(value, Mapping):
        return {k: _resolve(v, ports) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_resolve(v, ports) for v in value]
    return value


def _to_json(params: dict[str, Any] | None, ports: Sequence[tuple[int, str, int]]) -> str:
    # Ruby's Hash#to_json: compact, UTF-8 kept as is; the API stores ``{}`` when params returns nil.
    return json.dumps(_resolve(params or {}, ports), separators=(",", ":"), ensure_ascii=False)


class ChainBuilder:
    """Collects one chain and writes it like ``TransactionChain.fire`` (see the module docstring)."""

    def __init__(
        self,
        name: str = "test",
        *,
        type_: str | None = None,
        urgent_rollback: bool = False,
        user_id: int | None = None,
        concern_type: int = 0,
    ) -> None:
        self.name = name
        self.type = type_ if type_ is not None else f"TransactionChains::{_camelize(name) or 'Test'}"
        self.urgent_rollback = urgent_rollback
        self.user_id = user_id
        self.concern_type = concern_type
        self._txs: list[_Pending] = []
        self._locks: list[tuple[str, int]] = []
        self._port_nodes: list[int] = []
        self._concerns: list[tuple[str, int]] = []

    @property
    def size(self) -> int:
        """Number of appended transactions (the chain's ``size`` once fired)."""
        return len(self._txs)

    def append(
        self,
        t_type: int,
        *,
        server: int,
        vps: int | None = None,
        params: dict[str, Any] | None = None,
        urgent: bool = False,
        priority: int = 0,
        queue: str | None = None,
        reversible: int | None = None,
        confirmations: Sequence[Confirmation] = (),
        raw_param: str | None = None,
    ) -> ChainBuilder:
        """Append one transaction. ``queue``/``reversible`` default to the API class of ``t_type`` (or
        ``general``/1 for a code v2.0 does not know); ``raw_param`` stores ``t_param`` verbatim (e.g. invalid
        JSON) instead of ``json(params)``."""
        if params is not None and raw_param is not None:
            raise ValueError("give either params or raw_param, not both")
        known = API_TYPES.get(t_type)
        self._txs.append(
            _Pending(
                t_type=t_type,
                server=server,
                vps=vps,
                params=params,
                raw_param=raw_param,
                urgent=urgent,
                priority=priority,
                queue=queue if queue is not None else (known.queue if known else "general"),
                reversible=reversible if reversible is not None else (known.reversible if known else 1),
                confirmations=tuple(confirmations),
            )
        )
        return self

    def lock(self, resource: str, row_id: int) -> ChainBuilder:
        """Take ``resource_locks`` (``resource``, ``row_id``) for the chain; locking twice is a no-op, as in
        the API."""
        key = (resource, row_id)
        if key not in self._locks:
            self._locks.append(key)
        return self

    def reserve_port(self, node_id: int) -> ChainBuilder:
        """Reserve the lowest free port of ``node_id`` at fire time (see :meth:`port_ref`)."""
        self._port_nodes.append(node_id)
        return self

    def port_ref(self, index: int = -1) -> PortRef:
        """Placeholder for the port of a reservation (default: the latest :meth:`reserve_port`)."""
        return PortRef(self._reservation_index(index), "port")

    def addr_ref(self, index: int = -1) -> PortRef:
        """Placeholder for the address of a reservation (default: the latest :meth:`reserve_port`)."""
        return PortRef(self._reservation_index(index), "addr")

    def concern(self, class_name: str, row_id: int) -> ChainBuilder:
        """Add a ``transaction_chain_concerns`` row (API metadata, the daemon ignores it)."""
        self._concerns.append((class_name, row_id))
        return self

    def _reservation_index(self, index: int) -> int:
        n = len(self._port_nodes)
        absolute = index + n if index < 0 else index
        if not 0 <= absolute < n:
            raise IndexError(f"no port reservation #{index} (reserved so far: {n})")
        return absolute

    async def fire(self, conn: aiomysql.Connection) -> FiredChain:
        """Write the chain in one DB transaction on ``conn`` and commit it as queued."""
        if not self._txs:
            raise ValueError(f"chain {self.name!r} is empty")
        await conn.begin()
        try:
            async with conn.cursor() as cur:
                fired = await self._write(cur)
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        return fired

    async def _write(self, cur: Any) -> FiredChain:
        now = _utcnow()
        await cur.execute(
            "INSERT INTO transaction_chains (name, type, state, size, progress, user_id, user_session_id, "
            "urgent_rollback, concern_type, created_at, updated_at) "
            "VALUES (%s, %s, %s, 0, 0, %s, NULL, %s, %s, %s, %s)",
            (self.name, self.type, CHAIN_STAGED, self.user_id, int(self.urgent_rollback),
             self.concern_type, now, now),
        )
        chain_id = int(cur.lastrowid)
        for resource, row_id in self._locks:
            await _take_lock(cur, chain_id, resource, row_id, now)
        ports = [await _take_port(cur, chain_id, node_id) for node_id in self._port_nodes]
        for class_name, row_id in self._concerns:
            await cur.execute(
                "INSERT INTO transaction_chain_concerns (transaction_chain_id, class_name, row_id) "
                "VALUES (%s, %s, %s)",
                (chain_id, class_name, row_id),
            )
        t_ids: list[int] = []
        conf_ids: list[int] = []
        prev: int | None = None
        for tx in self._txs:
            prev = await _insert_transaction(cur, tx, chain_id, prev, self.user_id, ports, now)
            t_ids.append(prev)
            for conf in tx.confirmations:
                conf_ids.append(await _insert_confirmation(cur, prev, conf, now))
        await cur.execute(
            "UPDATE transaction_chains SET size = %s, state = %s, updated_at = %s WHERE id = %s",
            (len(self._txs), CHAIN_QUEUED, now, chain_id),
        )
        return FiredChain(chain_id=chain_id, transaction_ids=t_ids, ports=ports, confirmation_ids=conf_ids)


async def _take_lock(cur: Any, chain_id: int, resource: str, row_id: int, now: dt.datetime) -> None:
    try:
        await cur.execute(
            "INSERT INTO resource_locks (resource, row_id, transaction_chain_id, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s)",
            (resource, row_id, chain_id, now, now),
        )
    except aiomysql.IntegrityError as exc:
        if not exc.args or exc.args[0] != _ER_DUP_ENTRY:
            raise
        await cur.execute(
            "SELECT transaction_chain_id FROM resource_locks WHERE resource = %s AND row_id = %s",
            (resource, row_id),
        )
        row = await cur.fetchone()
        holder = None if row is None or row[0] is None else int(row[0])
        raise ResourceLocked(resource, row_id, holder) from exc


async def _take_port(cur: Any, chain_id: int, node_id: int) -> tuple[int, str, int]:
    await cur.execute("SELECT server_ip4 FROM servers WHERE server_id = %s", (node_id,))
    node = await cur.fetchone()
    if node is None:
        raise NoFreePort(node_id)
    addr = str(node[0])
    await cur.execute(
        "SELECT id, port FROM port_reservations WHERE node_id = %s AND addr IS NULL "
        "ORDER BY port LIMIT 1 FOR UPDATE",
        (node_id,),
    )
    free = await cur.fetchone()
    if free is None:
        raise NoFreePort(node_id)
    await cur.execute(
        "UPDATE port_reservations SET addr = %s, transaction_chain_id = %s WHERE id = %s",
        (addr, chain_id, free[0]),
    )
    return (node_id, addr, int(free[1]))


async def _insert_transaction(
    cur: Any,
    tx: _Pending,
    chain_id: int,
    depends_on: int | None,
    user_id: int | None,
    ports: Sequence[tuple[int, str, int]],
    now: dt.datetime,
) -> int:
    t_param = tx.raw_param if tx.raw_param is not None else _to_json(tx.params, ports)
    await cur.execute(
        "INSERT INTO transactions (t_group, t_m_id, t_server, t_vps, t_type, t_depends_on, t_fallback, "
        "t_urgent, t_priority, t_success, t_done, t_param, t_output, transaction_chain_id, reversible, "
        "created_at, queue) "
        "VALUES (NULL, %s, %s, %s, %s, %s, NULL, %s, %s, 0, 0, %s, NULL, %s, %s, %s, %s)",
        (user_id, tx.server, tx.vps, tx.t_type, depends_on, int(tx.urgent), tx.priority, t_param,
         chain_id, tx.reversible, now, tx.queue),
    )
    return int(cur.lastrowid)


async def _insert_confirmation(cur: Any, t_id: int, conf: Confirmation, now: dt.datetime) -> int:
    await cur.execute(
        "INSERT INTO transaction_confirmations (transaction_id, class_name, table_name, row_pks, "
        "attr_changes, confirm_type, done, created_at, updated_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, 0, %s, %s)",
        (t_id, conf.class_name, conf.table_name, conf.row_pks_yaml(), conf.attr_changes_yaml(),
         conf.confirm_type, now, now),
    )
    return int(cur.lastrowid)


# ----------------------------------------------------------------------------------------------------------
# Node registration


async def register_node(
    conn: aiomysql.Connection,
    server_id: int,
    *,
    name: str,
    ip4: str,
    server_type: str = "node",
    environment_id: int = 1,
    location: int = 1,
    create_ports: bool = True,
) -> int:
    """Insert a ``servers`` row and, as the API's node registration does for types ``node`` and
    ``storage``, its 10,000 free ``port_reservations`` (ports 10000-19999). Returns ``server_id``."""
    await conn.begin()
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO servers (server_id, server_name, server_type, server_location, server_ip4, "
                "environment_id) VALUES (%s, %s, %s, %s, %s, %s)",
                (server_id, name, server_type, location, ip4, environment_id),
            )
            if create_ports and server_type in _PORT_NODE_TYPES:
                # executemany turns an all-placeholder INSERT ... VALUES into multi-row statements
                # (one round trip); addr and transaction_chain_id stay NULL.
                await cur.executemany(
                    "INSERT INTO port_reservations (node_id, port) VALUES (%s, %s)",
                    [(server_id, port) for port in PORT_RANGE],
                )
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
    return server_id
