"""5, 6, 7 (node SSH keys) and 7301-7303 (config samples) through a real engine and MariaDB, with every path of
the ``node`` config section in the test's temp dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from tests.engine_helpers import fetch
from tests.vps.conftest import FakeVz, chain, errors, make_handler, run
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.handlers.base import HandlerContext

pytestmark = pytest.mark.timeout(120)

FAIL = (90001, {"fail": True})
PRIVATE = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-secret-material\n"
           "-----END OPENSSH PRIVATE KEY-----\n")
PUBLIC = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 root@cluster"


def node_chain(*steps: tuple[int, dict[str, Any]]) -> Any:
    return chain(*steps, vps=None, name="node")


async def add_server(db: Any, server_id: int, ip: str) -> None:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO servers (server_id, server_name, server_type, server_location, server_ip4, "
                          "environment_id) VALUES (%s, %s, 'node', 1, %s, 1)", (server_id, f"node{server_id}", ip))


async def add_pubkey(db: Any, node_id: int, key_type: str, key: str) -> None:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO node_pubkey (node_id, type, `key`) VALUES (%s, %s, %s)",
                          (node_id, key_type, key))


# ------------------------------------------------------------------------------------------------------------
# 5 GenerateKnownHosts


async def test_generate_known_hosts(db: Any, vcfg: Config) -> None:
    path = Path(vcfg.node.known_hosts)
    path.parent.mkdir()
    path.write_text("old-host ssh-rsa OLD\n")
    await add_server(db, 1, "192.0.2.1")
    await add_server(db, 2, "192.0.2.2")
    await add_pubkey(db, 2, "rsa", "ssh-rsa BBBB root@node2")
    await add_pubkey(db, 1, "rsa", "ssh-rsa AAAA root@node1")
    await add_pubkey(db, 1, "dsa", "ssh-dss CCCC\nevil-host ssh-rsa INJECTED")

    state, rows = await run(db, vcfg, node_chain((5, {}), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert path.read_text() == "old-host ssh-rsa OLD\n"

    state, rows = await run(db, vcfg, node_chain((5, {})))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert path.read_text() == "192.0.2.1 ssh-rsa AAAA root@node1\n192.0.2.2 ssh-rsa BBBB root@node2\n"
    assert json.loads(rows[0]["t_output"])["skipped"][0]["addr"] == "192.0.2.1"   # the two-line key
    assert path.with_name("known_hosts.backup").read_text() == "old-host ssh-rsa OLD\n"


async def test_generate_known_hosts_rollback_deletes_a_new_file(db: Any, vcfg: Config) -> None:
    await add_server(db, 1, "192.0.2.1")
    await add_pubkey(db, 1, "rsa", "ssh-rsa AAAA")
    Path(vcfg.node.known_hosts).parent.mkdir()
    state, rows = await run(db, vcfg, node_chain((5, {}), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert not Path(vcfg.node.known_hosts).exists()


async def test_generate_known_hosts_rerun_keeps_the_first_backup(hctx: HandlerContext, db: Any) -> None:
    path = Path(hctx.config.node.known_hosts)
    path.parent.mkdir()
    path.write_text("original\n")
    path.with_name("known_hosts.backup").write_text("stale backup of an older run\n")
    await add_server(db, 1, "192.0.2.1")
    await add_pubkey(db, 1, "rsa", "ssh-rsa AAAA")
    await make_handler(hctx, 5, {}, vps=None).exec()        # the run a crash interrupted before its save
    await make_handler(hctx, 5, {}, vps=None).exec()        # the re-run after the restart
    assert path.with_name("known_hosts.backup").read_text() == "original\n"
    assert path.read_text() == "192.0.2.1 ssh-rsa AAAA\n"
    for _ in range(2):                                       # a repeated rollback changes nothing more
        await make_handler(hctx, 5, {}, vps=None).rollback()
        assert path.read_text() == "original\n"
    assert not path.with_name("known_hosts.backup.tid").exists()
    await make_handler(hctx, 5, {}, vps=None, t_id=1001).rollback()   # another transaction: nothing of its own
    assert path.read_text() == "original\n"


# ------------------------------------------------------------------------------------------------------------
# 6 StorePublicKeys


async def test_store_public_keys(db: Any, vcfg: Config) -> None:
    keys = Path(vcfg.node.pubkey_path).parent
    keys.mkdir()
    (keys / "ssh_host_rsa_key.pub").write_text("ssh-rsa NEWRSA root@node1\n")
    (keys / "ssh_host_dsa_key.pub").write_text("ssh-dss NEWDSA root@node1\n")
    await add_pubkey(db, 1, "rsa", "ssh-rsa OLDRSA")
    await add_pubkey(db, 2, "rsa", "ssh-rsa OTHER")

    state, rows = await run(db, vcfg, node_chain((6, {}), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert await fetch(db, "SELECT node_id, type, `key` FROM node_pubkey ORDER BY node_id, type") == [
        {"node_id": 1, "type": "rsa", "key": "ssh-rsa OLDRSA"}, {"node_id": 2, "type": "rsa", "key": "ssh-rsa OTHER"}]

    for _ in range(2):  # a second run replaces, never appends
        state, rows = await run(db, vcfg, node_chain((6, {})))
        assert state["state"] == ChainState.DONE, errors(rows)
    assert await fetch(db, "SELECT node_id, type, `key` FROM node_pubkey ORDER BY node_id, type") == [
        {"node_id": 1, "type": "dsa", "key": "ssh-dss NEWDSA root@node1"},
        {"node_id": 1, "type": "rsa", "key": "ssh-rsa NEWRSA root@node1"},
        {"node_id": 2, "type": "rsa", "key": "ssh-rsa OTHER"}]


async def test_store_public_keys_missing_file_fails(db: Any, vcfg: Config) -> None:
    state, rows = await run(db, vcfg, node_chain((6, {})))
    assert state["state"] == ChainState.FAILED
    assert "cannot read the rsa host key" in errors(rows)[0][1]["error"]
    assert await fetch(db, "SELECT * FROM node_pubkey") == []


# ------------------------------------------------------------------------------------------------------------
# 7 DeploySshKey


async def test_deploy_ssh_key(db: Any, vcfg: Config) -> None:
    ssh = Path(vcfg.node.known_hosts).parent
    ssh.mkdir()
    (ssh / "authorized_keys").write_text("ssh-ed25519 ADMIN admin@laptop\n")
    (ssh / "id_rsa").write_text("OLD PRIVATE\n")
    params = {"public_key": PUBLIC, "private_key": PRIVATE, "key_type": "rsa"}
    with structlog.testing.capture_logs() as logs:
        state, rows = await run(db, vcfg, node_chain((7, params), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert (ssh / "id_rsa").read_text() == "OLD PRIVATE\n" and not (ssh / "id_rsa.pub").exists()
    assert (ssh / "authorized_keys").read_text() == "ssh-ed25519 ADMIN admin@laptop\n"

    with structlog.testing.capture_logs() as more:
        state, rows = await run(db, vcfg, node_chain((7, params)))
    assert state["state"] == ChainState.DONE, errors(rows)
    assert (ssh / "id_rsa").read_text() == PRIVATE and (ssh / "id_rsa").stat().st_mode & 0o777 == 0o600
    assert (ssh / "id_rsa.pub").read_text() == PUBLIC + "\n"
    assert (ssh / "authorized_keys").read_text() == f"ssh-ed25519 ADMIN admin@laptop\n{PUBLIC}\n"
    rows = await fetch(db, "SELECT t_param, t_output FROM transactions ORDER BY t_id")
    assert [r["t_param"] for r in rows if "key_type" in r["t_param"]] == ['{"key_type": "rsa"}'] * 2
    assert "secret-material" not in repr(rows) + repr(logs) + repr(more)

    state, rows = await run(db, vcfg, node_chain((7, params)))   # deployed again: authorized once
    assert (ssh / "authorized_keys").read_text().count(PUBLIC) == 1


async def test_deploy_ssh_key_refuses_a_second_line(db: Any, vcfg: Config) -> None:
    params = {"public_key": PUBLIC + "\nssh-rsa EVIL attacker", "private_key": PRIVATE, "key_type": "rsa"}
    state, rows = await run(db, vcfg, node_chain((7, params)))
    assert state["state"] == ChainState.FAILED
    assert errors(rows)[0][1]["field"] == "public_key"
    assert not Path(vcfg.node.known_hosts).parent.exists()
    params = {"public_key": PUBLIC, "private_key": PRIVATE, "key_type": "../../etc/x"}
    state, rows = await run(db, vcfg, node_chain((7, params)))
    assert errors(rows)[0][1]["field"] == "key_type" and "secret" not in rows[0]["t_output"]


# ------------------------------------------------------------------------------------------------------------
# 7301-7303


async def test_config_samples(db: Any, vcfg: Config, fakevz: FakeVz) -> None:
    sample = fakevz.conf_dir / "ve-vswap-2g.conf-sample"
    text = '# 2 GiB\nPHYSPAGES="0:2G"\nSWAPPAGES="0:1G"\n'
    create = {"name": "vswap-2g", "vps_config": text}
    state, rows = await run(db, vcfg, node_chain((7301, create), FAIL))
    assert state["state"] == ChainState.FAILED and not sample.exists()
    state, rows = await run(db, vcfg, node_chain((7301, create)))
    assert state["state"] == ChainState.DONE and sample.read_text() == text

    renamed = {"name": "vswap-2048m", "vps_config": text + 'CPUS="2"\n'}
    update = {"original": create, "new": renamed}
    state, rows = await run(db, vcfg, node_chain((7303, update), FAIL))
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert sample.read_text() == text and not (fakevz.conf_dir / "ve-vswap-2048m.conf-sample").exists()
    state, rows = await run(db, vcfg, node_chain((7303, update)))
    assert state["state"] == ChainState.DONE and not sample.exists()
    assert (fakevz.conf_dir / "ve-vswap-2048m.conf-sample").read_text().endswith('CPUS="2"\n')

    state, rows = await run(db, vcfg, node_chain((7302, renamed), FAIL))
    assert state["state"] == ChainState.FAILED and (fakevz.conf_dir / "ve-vswap-2048m.conf-sample").exists()
    state, rows = await run(db, vcfg, node_chain((7302, renamed)))
    assert state["state"] == ChainState.DONE and not (fakevz.conf_dir / "ve-vswap-2048m.conf-sample").exists()


@pytest.mark.parametrize(("params", "field"), [
    ({"name": "../../../etc/vz/vz", "vps_config": ""}, "name"),
    ({"name": "evil", "vps_config": 'VE_ROOT="/"\nCPUS="1$(reboot)"\n'}, "vps_config"),
    ({"name": "evil", "vps_config": 'rm -rf /\n'}, "vps_config"),
])
async def test_hostile_samples_are_refused(db: Any, vcfg: Config, fakevz: FakeVz, params: dict[str, Any],
                                           field: str) -> None:
    state, rows = await run(db, vcfg, node_chain((7301, params)))
    assert state["state"] == ChainState.FAILED
    assert errors(rows)[0][1]["field"] == field
    assert not list(fakevz.conf_dir.glob("ve-evil*"))
