"""VPS migration between two nodes (contract 5.6), each with its own engine, zfs-fuse pool and fake-vzctl tree,
one MariaDB: 4001 (configs with scp from the source) and 4002 on the destination, a snapshot and transfer while
the VPS runs, the stop, a second (incremental) snapshot and transfer, the IP moved, the start on the destination,
``vps.vps_server`` moved by a confirmation, then the source cleaned up (3002, the snapshots, the dataset).

The failing variant stops before the irreversible clean-up: the chain rolls back and the VPS runs on the source
again, the destination keeps nothing but ``*.destroyed`` files.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from tests.engine_helpers import fetch
from tests.transfer.conftest import NODE_IPS, Node, nodes, pools, tree_digest  # noqa: F401  (fixtures)
from tests.vps.conftest import TEMPLATE, FakeVz, conf, errors, make_scp, make_vz
from tests.vps.test_compositions import SAMPLE, create_steps, steps
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.handlers.vps_common import install_vz
from vpsadmind.testing.chains import ChainBuilder, Confirmation
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain
from vpsadmind.testing.fakevz.layout import ALLOW_ENV, ROOT_ENV, Layout
from vpsadmind.testing.fakevz.templates import make_template
from vpsadmind.testing.transfers import Side, append_transfer
from vpsadmind.vz import Vz

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

IP = "192.0.2.77"


@dataclasses.dataclass
class VzNode:
    node: Node
    cfg: Config
    root: Path
    vz: Vz

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc/vz/conf"


def vz_node(node: Node, vcfg: Config, root: Path, tmp_path: Path) -> VzNode:
    """Node ``node`` with its own fake tree ``root`` (its driver passes FAKE_VZ_ROOT/ALLOW to every command)."""
    base = node.cfg
    vz = dataclasses.replace(vcfg.vz, vz_conf=str(root / "etc/vz"), vz_root=str(root / "vz"),
                             ve_private=f"{node.pool.mountpoint}/%{{veid}}/private")
    mounts = tmp_path / f"mounts{node.server_id}"
    mounts.mkdir(exist_ok=True)
    cfg = dataclasses.replace(base, vz=vz, mounts_dir=str(mounts), handler_modules=vcfg.handler_modules,
                              bin=vcfg.bin)
    driver = make_vz(cfg)
    driver.env.update({ROOT_ENV: str(root), ALLOW_ENV: str(node.pool.mountpoint)})
    return VzNode(node, cfg, root, driver)


@pytest.fixture
async def two(db: aiomysql.Connection, nodes: tuple[Node, Node], vcfg: Config, fakevz: FakeVz,  # noqa: F811
              tmp_path: Path) -> tuple[VzNode, VzNode]:
    root2 = tmp_path / "fakevz-node2"
    make_template(root2, TEMPLATE)
    src = vz_node(nodes[0], vcfg, fakevz.root, tmp_path)
    dst = vz_node(nodes[1], vcfg, root2, tmp_path)
    # 4001 runs on the destination and reads the source's files at the destination's own paths (same layout
    # on every node in v2.0); the fake scp maps them to the source's tree
    scp = make_scp(tmp_path / "scp", [(str(dst.conf_dir), str(src.conf_dir)),
                                      (dst.cfg.mounts_dir, src.cfg.mounts_dir)])
    dst.cfg = dataclasses.replace(dst.cfg, bin={**dst.cfg.bin, "scp": str(scp.path)})
    for n in (src, dst):  # servers.ve_private: the node's private areas are in its pool
        async with db.cursor() as cur:
            await cur.execute("UPDATE servers SET ve_private = %s WHERE server_id = %s",
                              (n.cfg.vz.ve_private, n.node.server_id))
    return src, dst


async def run_on(db: aiomysql.Connection, builder: ChainBuilder, *members: VzNode,
                 timeout: float = 180.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    async with contextlib.AsyncExitStack() as stack:
        for m in members:
            engine = await stack.enter_async_context(running_engine(m.cfg))
            install_vz(engine.ctx, m.vz)
        fired = await builder.fire(db)
        chain = await wait_chain(db, fired.chain_id, timeout=timeout)
    return chain, await transactions_of(db, fired.chain_id)


async def snapshot_row(db: aiomysql.Connection) -> int:
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO snapshots (name, dataset_id, confirmed) VALUES ('(unconfirmed)', 1, 0)")
        return int(cur.lastrowid)


def snap(sid: int) -> dict[str, Any]:
    return {"id": sid, "name": "(unconfirmed)", "confirmed": "confirmed"}   # as the API sends it


class _Snap:
    """What append_transfer wants: ``param()`` of a snapshot the chain itself takes (its name is in the DB)."""

    def __init__(self, sid: int) -> None:
        self.id = sid

    def param(self, *, confirmed: bool = True) -> dict[str, Any]:
        return snap(self.id)


async def migration(db: aiomysql.Connection, src: VzNode, dst: VzNode, *, fail: bool) -> ChainBuilder:
    s1, s2 = await snapshot_row(db), await snapshot_row(db)
    a, b = Side(1, src.node.pool.name, "101"), Side(2, dst.node.pool.name, "101")
    ch = ChainBuilder("migrate", urgent_rollback=True)
    ch.append(4001, server=2, vps=101, params={"src_node_addr": NODE_IPS[1], "local": False, "dst_vps": 101})
    ch.append(4002, server=2, vps=101, params={})
    ch.append(5204, server=1, vps=101, params={"pool_fs": a.pool_fs, "dataset_name": "101", "snapshot_id": s1})
    append_transfer(ch, a, b, [_Snap(s1)])
    ch.append(1002, server=1, vps=101, params={})
    ch.append(5204, server=1, vps=101, params={"pool_fs": a.pool_fs, "dataset_name": "101", "snapshot_id": s2})
    append_transfer(ch, a, b, [_Snap(s1), _Snap(s2)])
    ch.append(2007, server=1, vps=101, params={"addr": IP, "version": 4, "unregister": False})
    ch.append(2006, server=2, vps=101, params={"addr": IP, "version": 4, "register": False})
    ch.append(1001, server=2, vps=101, params={})
    ch.append(10001, server=2, vps=101, params={}, confirmations=[
        Confirmation.edit_after("Vps", "vps", {"vps_id": 101}, {"vps_server": 2})])
    if fail:
        return ch.append(90001, server=2, params={"fail": True})
    ch.append(3002, server=1, vps=101, params={})
    for sid in (s2, s1):
        ch.append(5212, server=1, vps=101, params={"pool_fs": a.pool_fs, "dataset_name": "101",
                                                   "snapshot": snap(sid)})
    return ch.append(5203, server=1, vps=101, params={"pool_fs": a.pool_fs, "name": "101"})


async def test_migrate_between_two_nodes(db: aiomysql.Connection, two: tuple[VzNode, VzNode]) -> None:
    src, dst = two
    (src.conf_dir / "ve-vswap-512m.conf-sample").write_text(SAMPLE)
    create = [*create_steps(src.node.pool), (2006, {"addr": IP, "version": 4, "register": False})]
    state, rows = await run_on(db, steps(ChainBuilder("create"), 101, *create), src)
    assert state["state"] == ChainState.DONE, errors(rows)
    async with db.cursor() as cur:
        await cur.execute("INSERT INTO vps (vps_id, m_id, vps_server, vps_config, object_state) "
                          "VALUES (101, 1, 1, '', 0)")
    private1 = src.node.pool.mounted_path(f"{src.node.pool.name}/101") / "private"
    (private1 / "home.txt").write_text("user data\n")
    src_conf = (src.conf_dir / "101.conf").read_text()

    state, rows = await run_on(db, await migration(db, src, dst, fail=True), src, dst)
    assert state["state"] == ChainState.FAILED, errors(rows)
    assert src.layout.ct(101).running and (src.conf_dir / "101.conf").read_text() == src_conf
    assert not dst.layout.ct(101).running and not dst.node.pool.exists(f"{dst.node.pool.name}/101")
    assert sorted(p.name for p in dst.conf_dir.glob("101.*")) == ["101.conf.destroyed"]
    assert src.node.pool.snapshots(f"{src.node.pool.name}/101") == []
    assert (await fetch(db, "SELECT vps_server FROM vps"))[0]["vps_server"] == 1

    state, rows = await run_on(db, await migration(db, src, dst, fail=False), src, dst)
    assert state["state"] == ChainState.DONE, errors(rows)
    private2 = dst.node.pool.mounted_path(f"{dst.node.pool.name}/101") / "private"
    assert (private2 / "home.txt").read_text() == "user data\n"
    assert dst.layout.ct(101).running and not src.layout.ct(101).running
    c = conf(FakeVz(dst.root, Path(), Path()), 101)
    assert c["VE_PRIVATE"] == str(private2), "4001 set this node's servers.ve_private"
    assert c["VE_ROOT"] == f"{dst.root}/vz/root/101"
    assert (c["IP_ADDRESS"], c["ONBOOT"], c["HOSTNAME"]) == (IP, "yes", "ct101")
    assert not src.node.pool.exists(f"{src.node.pool.name}/101")
    assert sorted(p.name for p in src.conf_dir.glob("101.*"))[-1] == "101.conf.destroyed"
    assert (await fetch(db, "SELECT vps_server FROM vps"))[0]["vps_server"] == 2
    assert tree_digest(private2)["home.txt"] == tree_digest(dst.root / "vz/root/101")["home.txt"]
