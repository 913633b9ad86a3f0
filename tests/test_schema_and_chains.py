"""The v2.0 schema, the test-database helpers, the API type table and the chain builder, against MariaDB."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from vpsadmind.db.node_tables import NODE_TABLES_DDL
from vpsadmind.testing import chains
from vpsadmind.testing.api_types import API_TYPES, KEEP_GOING, QUEUES, api_type
from vpsadmind.testing.chains import (
    ChainBuilder,
    Confirmation,
    NoFreePort,
    ResourceLocked,
    rails_yaml,
    register_node,
)
from vpsadmind.testing.db import (
    DB_VERSION,
    TestDbSettings,
    connect,
    create_database,
    drop_database,
    random_database_name,
    require_mariadb,
    schema_statements,
    truncate_all,
)

TABLES = {
    "transactions", "transaction_chains", "transaction_confirmations", "transaction_chain_concerns",
    "resource_locks", "port_reservations", "servers", "servers_status", "sysconfig", "vps", "vps_status",
    "vps_ip", "vps_features", "vps_has_config", "pools", "datasets", "dataset_in_pools", "dataset_properties",
    "dataset_trees", "branches", "snapshots", "snapshot_in_pools", "snapshot_in_pool_in_branches",
    "snapshot_downloads", "mounts", "integrity_checks", "integrity_objects", "integrity_facts", "transfered",
    "transfered_recent", "node_pubkey", "mail_logs", "members",
}


async def rows(conn: Any, sql: str, args: Any = None) -> list[dict[str, Any]]:
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]


async def scalar(conn: Any, sql: str, args: Any = None) -> Any:
    async with conn.cursor() as cur:
        await cur.execute(sql, args)
        row = await cur.fetchone()
        return None if row is None else row[0]


# ------------------------------------------------------------------------------------------------ no DB


def test_api_types_count_and_flags() -> None:
    assert len(API_TYPES) == 61
    assert {t.code for t in API_TYPES.values() if t.reversible == 0} == {
        3002, 5203, 5207, 5208, 5211, 5212, 5214, 5005,
    }
    assert {t.code for t in API_TYPES.values() if t.reversible == KEEP_GOING} == {2015, 9001}
    assert {t.queue for t in API_TYPES.values()} == set(QUEUES)
    assert {t.code for t in API_TYPES.values() if t.queue == "zfs_send"} == {5221, 5223}
    assert {t.code for t in API_TYPES.values() if t.queue == "mail"} == {9001}
    assert {t.code for t in API_TYPES.values() if t.queue == "network"} == {
        2006, 2007, 2009, 2010, 2011, 2012, 2014, 2015,
    }
    assert api_type(5201).name == "Dataset::Create"
    assert api_type(5201).queue == "storage"
    assert api_type(5301).queue == "general"
    assert api_type(1001).queue == "vps"
    assert all(code == t.code for code, t in API_TYPES.items())
    assert len({t.name for t in API_TYPES.values()}) == 61
    with pytest.raises(KeyError):
        api_type(3003)  # a stale v1 code


def test_schema_file_has_every_table() -> None:
    stmts = schema_statements()
    assert all(s.startswith("CREATE TABLE IF NOT EXISTS") for s in stmts)
    names = {s.split("`")[1] for s in stmts}
    assert names == TABLES
    assert len(stmts) == len(TABLES)


def test_rails_yaml() -> None:
    assert rails_yaml({"id": 5}) == "---\nid: 5\n"
    assert rails_yaml({"snapshot_id": 1, "dataset_in_pool_id": 2}) == "---\nsnapshot_id: 1\ndataset_in_pool_id: 2\n"
    assert rails_yaml(None) is None
    assert yaml.safe_load(rails_yaml("reference_count") or "") == "reference_count"
    assert rails_yaml({":vps_server": 3}) == "---\n:vps_server: 3\n"  # a Ruby symbol key, as Psych writes it
    conf = Confirmation("Vps", "vps", {"vps_id": 7}, {"vps_onboot": True, "x": False, "h": "a: b"}, 3)
    assert conf.row_pks_yaml() == "---\nvps_id: 7\n"
    assert yaml.safe_load(conf.attr_changes_yaml() or "") == {"vps_onboot": 1, "x": 0, "h": "a: b"}
    assert Confirmation.increment("SnapshotInPool", "snapshot_in_pools", {"id": 1}, "reference_count") \
        .attr_changes_yaml() == "--- reference_count\n...\n"


def test_settings_from_env() -> None:
    s = TestDbSettings.from_env({"VPSADMIND_TEST_DB_HOST": "db.example", "VPSADMIND_TEST_DB_PORT": "3307"})
    assert (s.host, s.port, s.user, s.password) == ("db.example", 3307, "vpsadmind", "vpsadmind")
    assert TestDbSettings.from_env({}) == TestDbSettings(host="127.0.0.1", port=3306)


def test_require_mariadb_skips_or_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = TestDbSettings(host="127.0.0.1", port=1)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_mariadb(nowhere)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_mariadb(nowhere)


def test_builder_argument_errors() -> None:
    b = ChainBuilder()
    with pytest.raises(ValueError):
        b.append(10001, server=1, params={}, raw_param="{")
    with pytest.raises(IndexError):
        b.port_ref()


# ------------------------------------------------------------------------------------------------ schema


async def test_schema_loaded(db: Any) -> None:
    tables = {r["TABLE_NAME"] for r in await rows(
        db, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")}
    # the daemon adds its own tables (vpsadmind_*) when an engine has started on this database
    assert {t for t in tables if not t.startswith("vpsadmind_")} == TABLES
    engines = {r["ENGINE"] for r in await rows(
        db, "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")}
    assert engines == {"InnoDB"}
    assert await scalar(db, "SELECT cfg_value FROM sysconfig WHERE cfg_name = 'db_version'") == "15"
    assert json.loads(await scalar(db, "SELECT cfg_value FROM sysconfig")) == DB_VERSION
    extra = await scalar(
        db, "SELECT EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'servers_status' AND COLUMN_NAME = 'server_id'")
    assert "auto_increment" not in extra
    uniques = {(r["TABLE_NAME"], r["INDEX_NAME"]): r["cols"] for r in await rows(
        db, "SELECT TABLE_NAME, INDEX_NAME, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) AS cols "
        "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND NON_UNIQUE = 0 "
        "AND INDEX_NAME <> 'PRIMARY' GROUP BY TABLE_NAME, INDEX_NAME")}
    assert uniques[("resource_locks", "index_resource_locks_on_resource_and_row_id")] == "resource,row_id"
    assert uniques[("port_reservations", "port_reservation_uniqueness")] == "node_id,port"
    cols = await rows(
        db, "SELECT COLUMN_NAME, COLUMN_DEFAULT, IS_NULLABLE, COLUMN_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'transactions' ORDER BY ORDINAL_POSITION")
    assert [c["COLUMN_NAME"] for c in cols] == [
        "t_id", "t_group", "t_m_id", "t_server", "t_vps", "t_type", "t_depends_on", "t_fallback", "t_urgent",
        "t_priority", "t_success", "t_done", "t_param", "t_output", "transaction_chain_id", "reversible",
        "created_at", "started_at", "finished_at", "queue",
    ]
    by_name = {c["COLUMN_NAME"]: c for c in cols}
    assert by_name["queue"]["COLUMN_DEFAULT"] == "'general'"
    assert by_name["t_param"]["COLUMN_TYPE"] == "longtext"
    assert by_name["t_success"]["IS_NULLABLE"] == "NO"
    assert by_name["t_success"]["COLUMN_DEFAULT"] is None


async def test_truncate_all_resets_rows_and_counters(db: Any) -> None:
    await ChainBuilder().append(10001, server=1).fire(db)
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO sysconfig (cfg_name, cfg_value) VALUES ('x', '1')")
        await cur.execute("INSERT INTO node_pubkey (node_id, type, `key`) VALUES (1, 'rsa', 'k')")
        await cur.execute("INSERT INTO vps_features (vps_id, name, enabled) VALUES (1, 'tun', 1)")
        await cur.execute("DELETE FROM vps_features")  # empty again, but its auto-increment moved on
    await truncate_all(db)
    assert await scalar(db, "SELECT COUNT(*) FROM transactions") == 0
    assert await scalar(db, "SELECT COUNT(*) FROM node_pubkey") == 0
    assert await rows(db, "SELECT * FROM sysconfig") == [{"cfg_name": "db_version", "cfg_value": "15"}]
    fired = await ChainBuilder().append(10001, server=1).fire(db)
    assert (fired.chain_id, fired.transaction_ids) == (1, [1])
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vps_features (vps_id, name, enabled) VALUES (1, 'tun', 1)")
        assert cur.lastrowid == 1


async def test_async_create_and_drop_database(db_settings: TestDbSettings, test_database: str) -> None:
    name = random_database_name()
    await create_database(name, db_settings)
    try:
        conn = await connect(db_settings, name)
        try:
            assert await scalar(conn, "SELECT cfg_value FROM sysconfig WHERE cfg_name = 'db_version'") == "15"
            assert await scalar(conn, "SELECT COUNT(*) FROM information_schema.TABLES "
                                      "WHERE TABLE_SCHEMA = DATABASE()") == len(TABLES) + len(NODE_TABLES_DDL)
        finally:
            conn.close()
        await create_database(name, db_settings)  # re-creating an existing database is fine
    finally:
        await drop_database(name, db_settings)
    conn = await connect(db_settings)
    try:
        assert await scalar(conn, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                            (name,)) == 0
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------ nodes


async def test_register_node_creates_10000_ports_fast(db: Any) -> None:
    started = time.perf_counter()
    await register_node(db, 1, name="node1", ip4="192.168.0.1")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"register_node took {elapsed:.3f} s"
    stats = (await rows(db, "SELECT COUNT(*) AS n, MIN(port) AS lo, MAX(port) AS hi, COUNT(addr) AS used, "
                            "COUNT(transaction_chain_id) AS chained FROM port_reservations WHERE node_id = 1"))[0]
    assert stats == {"n": 10000, "lo": 10000, "hi": 19999, "used": 0, "chained": 0}
    server = (await rows(db, "SELECT * FROM servers WHERE server_id = 1"))[0]
    assert (server["server_name"], server["server_type"], server["server_ip4"]) == ("node1", "node", "192.168.0.1")
    assert server["environment_id"] == 1 and server["server_location"] == 1
    assert server["ve_private"] == "/vz/private/%{veid}/private"

    await register_node(db, 2, name="backup1", ip4="192.168.0.2", server_type="storage")
    await register_node(db, 3, name="mailer", ip4="192.168.0.3", server_type="mailer")
    await register_node(db, 4, name="node4", ip4="192.168.0.4", create_ports=False)
    counts = {r["node_id"]: r["n"] for r in await rows(
        db, "SELECT node_id, COUNT(*) AS n FROM port_reservations GROUP BY node_id")}
    assert counts == {1: 10000, 2: 10000}


# ------------------------------------------------------------------------------------------------ chains


async def test_fired_chain_looks_like_the_apis(db: Any) -> None:
    await register_node(db, 1, name="node1", ip4="10.0.0.1")
    await register_node(db, 2, name="backup", ip4="10.0.0.2", server_type="storage")
    b = ChainBuilder("backup", type_="TransactionChains::Dataset::Backup", user_id=42, urgent_rollback=True)
    b.lock("DatasetInPool", 5).lock("DatasetInPool", 6).lock("DatasetInPool", 5)
    b.reserve_port(2).concern("Dataset", 9)
    b.append(5204, server=1, vps=101, params={"pool_fs": "vz/private", "dataset_name": "101", "snapshot_id": 3},
             confirmations=[Confirmation.create("SnapshotInPool", "snapshot_in_pools", {"id": 11}),
                            Confirmation.edit_before("Vps", "vps", {"vps_id": 101}, {"vps_onboot": True})])
    b.append(5220, server=2, params={"addr": b.addr_ref(), "port": b.port_ref(), "dst_pool_fs": "backup",
                                     "dataset_name": "101", "snapshots": [{"id": 3, "name": "ř"}]},
             priority=-10)
    b.append(5221, server=1, params={"addr": b.addr_ref(0), "port": b.port_ref(0)}, urgent=True)
    b.append(4242, server=1, raw_param="{not json")
    b.append(9001, server=1, queue="general", reversible=1)
    fired = await b.fire(db)

    chain = (await rows(db, "SELECT * FROM transaction_chains"))[0]
    assert chain["id"] == fired.chain_id
    assert (chain["name"], chain["type"], chain["state"], chain["size"], chain["progress"]) == (
        "backup", "TransactionChains::Dataset::Backup", 1, 5, 0)
    assert (chain["user_id"], chain["urgent_rollback"], chain["concern_type"]) == (42, 1, 0)
    assert chain["created_at"] is not None

    txs = await rows(db, "SELECT * FROM transactions ORDER BY t_id")
    assert [t["t_id"] for t in txs] == fired.transaction_ids
    assert [t["t_depends_on"] for t in txs] == [None, *fired.transaction_ids[:-1]]
    assert [t["t_type"] for t in txs] == [5204, 5220, 5221, 4242, 9001]
    assert [t["t_server"] for t in txs] == [1, 2, 1, 1, 1]
    assert [t["t_vps"] for t in txs] == [101, None, None, None, None]
    assert [t["queue"] for t in txs] == ["storage", "storage", "zfs_send", "general", "general"]
    assert [t["reversible"] for t in txs] == [1, 1, 1, 1, 1]
    assert [t["t_urgent"] for t in txs] == [0, 0, 1, 0, 0]
    assert [t["t_priority"] for t in txs] == [0, -10, 0, 0, 0]
    assert {(t["t_done"], t["t_success"], t["t_m_id"], t["transaction_chain_id"]) for t in txs} == {
        (0, 0, 42, fired.chain_id)}
    assert all(t["t_fallback"] is None and t["t_output"] is None and t["started_at"] is None for t in txs)

    node, addr, port = fired.ports[0]
    assert (node, addr, port) == (2, "10.0.0.2", 10000)
    assert json.loads(txs[0]["t_param"]) == {"pool_fs": "vz/private", "dataset_name": "101", "snapshot_id": 3}
    assert json.loads(txs[1]["t_param"])["addr"] == "10.0.0.2"
    assert json.loads(txs[1]["t_param"])["port"] == 10000
    assert json.loads(txs[1]["t_param"])["snapshots"] == [{"id": 3, "name": "ř"}]
    assert json.loads(txs[2]["t_param"]) == {"addr": "10.0.0.2", "port": 10000}
    assert txs[3]["t_param"] == "{not json"
    assert txs[4]["t_param"] == "{}"

    reserved = await rows(db, "SELECT node_id, addr, port, transaction_chain_id FROM port_reservations "
                              "WHERE addr IS NOT NULL")
    assert reserved == [{"node_id": 2, "addr": "10.0.0.2", "port": 10000, "transaction_chain_id": fired.chain_id}]

    locks = await rows(db, "SELECT resource, row_id, transaction_chain_id FROM resource_locks ORDER BY id")
    assert locks == [{"resource": "DatasetInPool", "row_id": 5, "transaction_chain_id": fired.chain_id},
                     {"resource": "DatasetInPool", "row_id": 6, "transaction_chain_id": fired.chain_id}]
    assert await rows(db, "SELECT transaction_chain_id, class_name, row_id FROM transaction_chain_concerns") == [
        {"transaction_chain_id": fired.chain_id, "class_name": "Dataset", "row_id": 9}]

    confs = await rows(db, "SELECT * FROM transaction_confirmations ORDER BY id")
    assert [c["id"] for c in confs] == fired.confirmation_ids
    assert [(c["transaction_id"], c["class_name"], c["table_name"], c["confirm_type"], c["done"])
            for c in confs] == [
        (fired.transaction_ids[0], "SnapshotInPool", "snapshot_in_pools", chains.CREATE, 0),
        (fired.transaction_ids[0], "Vps", "vps", chains.EDIT_BEFORE, 0),
    ]
    assert confs[0]["row_pks"] == "---\nid: 11\n"
    assert confs[0]["attr_changes"] is None
    assert confs[1]["row_pks"] == "---\nvps_id: 101\n"
    assert confs[1]["attr_changes"] == "---\nvps_onboot: 1\n"


@pytest.mark.parametrize("code", sorted(API_TYPES))
def test_builder_defaults_follow_api_types(code: int) -> None:
    b = ChainBuilder().append(code, server=1)
    pending = b._txs[0]
    assert (pending.queue, pending.reversible) == (API_TYPES[code].queue, API_TYPES[code].reversible)


async def test_irreversible_and_keep_going_columns(db: Any) -> None:
    b = ChainBuilder()
    for code in (3002, 2015, 5203, 9001, 1001):
        b.append(code, server=1)
    await b.fire(db)
    got = [(r["t_type"], r["queue"], r["reversible"]) for r in await rows(
        db, "SELECT t_type, queue, reversible FROM transactions ORDER BY t_id")]
    assert got == [(3002, "vps", 0), (2015, "network", 2), (5203, "storage", 0), (9001, "mail", 2),
                   (1001, "vps", 1)]


async def test_consecutive_reservations_take_the_lowest_free_ports(db: Any) -> None:
    await register_node(db, 7, name="node7", ip4="10.0.0.7")
    first = await ChainBuilder().reserve_port(7).reserve_port(7).append(10001, server=7).fire(db)
    assert [p for _n, _a, p in first.ports] == [10000, 10001]
    second = await ChainBuilder().reserve_port(7).append(10001, server=7).fire(db)
    assert second.ports == [(7, "10.0.0.7", 10002)]
    async with db.cursor() as cur:  # the daemon releases ports at chain close by NULLing both columns
        await cur.execute("UPDATE port_reservations SET addr = NULL, transaction_chain_id = NULL "
                          "WHERE transaction_chain_id = %s", (first.chain_id,))
    third = await ChainBuilder().reserve_port(7).append(10001, server=7).fire(db)
    assert third.ports == [(7, "10.0.0.7", 10000)]


async def test_duplicate_lock_raises_and_queues_nothing(db: Any) -> None:
    await register_node(db, 1, name="node1", ip4="10.0.0.1")
    holder = await ChainBuilder("first").lock("Vps", 101).append(1002, server=1, vps=101).fire(db)
    before = await rows(db, "SELECT (SELECT COUNT(*) FROM transaction_chains) AS c, "
                            "(SELECT COUNT(*) FROM transactions) AS t, (SELECT COUNT(*) FROM resource_locks) AS l, "
                            "(SELECT COUNT(*) FROM transaction_confirmations) AS f, "
                            "(SELECT COUNT(addr) FROM port_reservations) AS p")
    second = (ChainBuilder("second").lock("Vps", 55).lock("Vps", 101).reserve_port(1)
              .append(1001, server=1, vps=101,
                      confirmations=[Confirmation.edit_after("Vps", "vps", {"vps_id": 101}, {"x": 1})]))
    with pytest.raises(ResourceLocked) as info:
        await second.fire(db)
    assert (info.value.resource, info.value.row_id, info.value.holder) == ("Vps", 101, holder.chain_id)
    after = await rows(db, "SELECT (SELECT COUNT(*) FROM transaction_chains) AS c, "
                           "(SELECT COUNT(*) FROM transactions) AS t, (SELECT COUNT(*) FROM resource_locks) AS l, "
                           "(SELECT COUNT(*) FROM transaction_confirmations) AS f, "
                           "(SELECT COUNT(addr) FROM port_reservations) AS p")
    assert after == before
    assert await scalar(db, "SELECT COUNT(*) FROM resource_locks WHERE resource = 'Vps' AND row_id = 55") == 0
    # the connection is usable afterwards and autocommit is back
    third = await ChainBuilder("third").lock("Vps", 55).append(1001, server=1, vps=55).fire(db)
    assert third.chain_id > holder.chain_id


async def test_no_free_port_rolls_back(db: Any) -> None:
    await register_node(db, 1, name="node1", ip4="10.0.0.1", create_ports=False)
    with pytest.raises(NoFreePort):
        await ChainBuilder().lock("Vps", 1).reserve_port(1).append(10001, server=1).fire(db)
    with pytest.raises(NoFreePort):
        await ChainBuilder().reserve_port(99).append(10001, server=1).fire(db)
    assert await scalar(db, "SELECT COUNT(*) FROM transaction_chains") == 0
    assert await scalar(db, "SELECT COUNT(*) FROM resource_locks") == 0


async def test_empty_chain_is_an_error(db: Any) -> None:
    with pytest.raises(ValueError):
        await ChainBuilder().lock("Vps", 1).fire(db)
    assert await scalar(db, "SELECT COUNT(*) FROM transaction_chains") == 0
