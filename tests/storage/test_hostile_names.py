"""Hostile names in ``t_param`` fail the transaction, naming the field, before any zfs command runs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.storage.conftest import output
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import HANDLERS, import_handler_modules
from vpsadmind.handlers.params import parse_params
from vpsadmind.system import record_calls
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain

HOSTILE = ["../x", "-rf", "a b", "x;rm", "a" * 300, "x/../../etc", "a\nb", "x@y", "", "$(reboot)"]

GOOD_SNAP = "2020-01-01T00:00:00"


def _cases(bad: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(type, field expected in the error, params) with ``bad`` in one name field of every storage handler."""
    fs = "tank/vz"
    ds: dict[str, Any] = {"pool_fs": fs, "dataset_name": "101"}
    snap = {"id": 1, "name": GOOD_SNAP, "confirmed": 1}
    clone = {**ds, "snapshot_id": 1, "snapshot": GOOD_SNAP}
    return [
        (5250, "pool_fs", {"pool_fs": bad}),
        (5201, "name", {"pool_fs": fs, "name": bad, "create_private": True}),
        (5201, "pool_fs", {"pool_fs": bad, "name": "101"}),
        (5203, "name", {"pool_fs": fs, "name": bad}),
        (5204, "dataset_name", {**ds, "dataset_name": bad, "snapshot_id": 1}),
        (5215, "snapshots[1].dataset_name", {"snapshots": [{**ds, "snapshot_id": 1},
                                                          {**ds, "dataset_name": bad, "snapshot_id": 2}]}),
        (5208, "snapshot", {**ds, "snapshot": bad}),
        (5209, "dataset_name", {**ds, "dataset_name": bad}),
        (5211, "descendant_datasets[0].full_name",
         {**ds, "descendant_datasets": [{"name": "x", "full_name": "101/" + bad}]}),
        (5212, "snapshot.name", {**ds, "snapshot": {**snap, "name": bad}}),
        (5212, "branch", {**ds, "snapshot": snap, "tree": "tree.0", "branch": bad}),
        (5216, "name", {"pool_fs": fs, "name": bad, "properties": {"atime": [True, False]}}),
        (5219, "pool_fs", {"pool_fs": bad, "name": "101", "properties": {"atime": True}}),
        (5217, "snapshot", {**clone, "snapshot": bad}),
        (5218, "dataset_tree", {**clone, "dataset_tree": bad, "branch": "branch-x.0"}),
        (5206, "from_snapshot", {**ds, "tree": "tree.0", "new_branch_name": "branch-b.0",
                                 "from_branch_name": "branch-a.0", "from_snapshot": bad}),
        (5206, "new_branch_name", {**ds, "tree": "tree.0", "new_branch_name": bad}),
        (5207, "tree", {**ds, "tree": bad, "branch": "branch-a.0"}),
        (5213, "tree", {**ds, "tree": bad}),
        (5214, "dataset_name", {**ds, "dataset_name": bad, "tree": "tree.0"}),
    ]


@pytest.mark.parametrize("bad", HOSTILE, ids=lambda b: repr(b[:12]))
def test_params_reject_hostile_names(bad: str) -> None:
    import_handler_modules()
    for code, field, params in _cases(bad):
        cls = HANDLERS[code]
        with pytest.raises(ParamError) as err:
            parse_params(cls.Params, params)
        assert err.value.field == field or (err.value.field or "").startswith(field), (code, field, str(err.value))


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["../x", "-rf", "a b", "x;rm", "a" * 300])
async def test_hostile_names_fail_chains_without_running_zfs(db: Any, cfg: Config, bad: str) -> None:
    fired = []
    for code, _field, params in _cases(bad):
        fired.append(await ChainBuilder(f"hostile{code}").append(code, server=1, params=params).fire(db))
    with record_calls() as calls:
        async with running_engine(cfg):
            for f in fired:
                await wait_chain(db, f.chain_id)
    assert calls.calls == []
    for f, (code, field, _params) in zip(fired, _cases(bad), strict=True):
        (row,) = await transactions_of(db, f.chain_id)
        out = output(row)
        assert row["t_success"] == 0 or row["t_done"] == 2, (code, out)
        assert out["error"].startswith("Bad param"), (code, out)
        assert out.get("field", "").startswith(field), (code, field, out)
        state = await db_chain_state(db, f.chain_id)
        assert state == ChainState.FAILED, (code, out)


async def db_chain_state(db: Any, chain_id: int) -> int:
    async with db.cursor() as cur:
        await cur.execute("SELECT state FROM transaction_chains WHERE id = %s", (chain_id,))
        (state,) = await cur.fetchone()
    return int(state)


def test_property_names_and_values_are_checked() -> None:
    import_handler_modules()
    cls = HANDLERS[5216]
    for props, field in (({"-o": [1, 2]}, "properties.-o"), ({"atime;x": [1, 2]}, "properties.atime;x"),
                         ({"sharenfs": ["a", "b\nc"]}, "properties.sharenfs"),
                         ({"atime": [True]}, "properties.atime"),
                         ({"mountpoint": ["none", "/etc"]}, "properties.mountpoint")):
        with pytest.raises(ParamError) as err:
            parse_params(cls.Params, {"pool_fs": "tank/vz", "name": "101", "properties": props})
        assert err.value.field == field, str(err.value)


def test_inherit_refuses_mountpoint() -> None:
    import_handler_modules()
    with pytest.raises(ParamError) as err:
        parse_params(HANDLERS[5219].Params, {"pool_fs": "tank/vz", "name": "101", "properties": {"mountpoint": "/x"}})
    assert err.value.field == "properties.mountpoint", str(err.value)
