"""Hostile chains through a real engine on the sandbox node: the engine keeps serving (issue 9, item 3).

Each example fires a few chains of two to three transactions of real types (sampled from every family that runs
on the sandbox) with mutated params, runs an engine on them, and checks that every chain ends (done, failed or
fatal), that every failure says why in ``t_output`` without an exception of Python's or the database's own
(which would mean a handler let one through), that nothing outside the inputs' scopes changed, and that a NoOp
chain fired afterwards still completes on the same engine.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

import pymysql
import structlog
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.cases import VALID, VPS_OF, scope_of
from tests.fuzz.harness import count, fuzz_settings
from tests.fuzz.mutate import mutated
from tests.fuzz.sandbox import VEID, Sandbox, Scope, diff
from vpsadmind.config import Config
from vpsadmind.engine.model import ChainState
from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import HANDLERS, import_handler_modules
from vpsadmind.handlers.params import parse_json_object, parse_params
from vpsadmind.handlers.vps_common import install_vz
from vpsadmind.testing.chains import ChainBuilder
from vpsadmind.testing.db import truncate_all
from vpsadmind.testing.engine import running_engine, transactions_of, wait_chain
from vpsadmind.vz import RetryPolicy, Vz

NOOP = 10001
# Engine events that mean a transaction escaped the runner's error handling.
CRASH_EVENTS = {"transaction_worker_crashed", "poll_failed", "result_save_failed"}
# What the runner writes when a handler let a non-project exception through: "<its class name>: ...".
FOREIGN = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
           and issubclass(getattr(builtins, n), BaseException)} | set(pymysql.err.__all__ if hasattr(
               pymysql.err, "__all__") else ("OperationalError", "ProgrammingError", "DataError", "IntegrityError",
                                             "InternalError", "NotSupportedError", "Warning"))
# Types run through the engine: everything that runs on the sandbox without a server of its own.
ENGINE_CODES = sorted(c for c, (fam, _) in VALID.items() if fam in ("utils", "node", "vps", "storage", "mounts",
                                                                     "integrity") and c != 3002)

step = st.sampled_from(ENGINE_CODES).flatmap(
    lambda code: mutated(VALID[code][1]).map(lambda pw: (code, pw[0])))
chains = st.lists(st.lists(step, min_size=1, max_size=3), min_size=1, max_size=3)


def input_scope(code: int, params: Any) -> Scope:
    try:
        parsed = parse_params(HANDLERS[code].Params, parse_json_object(json.dumps(params)))
    except ParamError:
        return Scope()
    return scope_of(code, parsed)


def merge(scopes: list[Scope]) -> Scope:
    out = Scope()
    for s in scopes:
        out.datasets |= s.datasets
        out.paths |= s.paths
        out.vpses |= s.vpses
    return out


def why(row: dict[str, Any]) -> str:
    out = json.loads(row["t_output"] or "{}")
    assert isinstance(out, dict), row
    text = out.get("error") or out.get("note")
    assert isinstance(text, str) and text.strip(), f"failure without a reason: {row}"
    name = text.removeprefix("Bad param: ").split(":", 1)[0]
    assert name not in FOREIGN, f"a handler let {name} through: {text[:400]}"
    return text


async def fire(db: Any, steps: list[tuple[int, Any]]) -> int:
    b = ChainBuilder("fuzz")
    for code, params in steps:
        b.append(code, server=1, vps=VPS_OF.get(code, VEID), raw_param=json.dumps(params), reversible=1)
    return (await b.fire(db)).chain_id


@fuzz_settings(4)
@given(batch=chains)
async def test_hostile_chains_leave_the_engine_serving(box: Sandbox, fuzz_cfg: Config, db: Any,
                                                       batch: list[list[tuple[int, Any]]]) -> None:
    await truncate_all(db)
    import_handler_modules()
    scope = merge([input_scope(code, p) for steps in batch for code, p in steps])
    before = box.fingerprint(scope)
    config = Config(**{**{f: getattr(fuzz_cfg, f) for f in fuzz_cfg.__dataclass_fields__},
                       "handler_modules": []})
    with structlog.testing.capture_logs() as logs:
        async with running_engine(config) as engine:
            install_vz(engine.ctx, Vz.from_config(config.vz, retry=RetryPolicy(2, 0.01), timeout=30))
            ids = [await fire(db, steps) for steps in batch]
            for chain_id in ids:
                state = await wait_chain(db, chain_id, timeout=60)
                assert state["state"] in (ChainState.DONE, ChainState.FAILED, ChainState.FATAL), state
                for row in await transactions_of(db, chain_id):
                    assert row["t_done"] in (1, 2), row
                    if row["t_success"] == 0:
                        why(row)
                    count("engine:transactions")
            last = await fire(db, [(NOOP, {})])
            assert (await wait_chain(db, last, timeout=30))["state"] == ChainState.DONE
    count("engine:chains", len(batch))
    crashes = [e for e in logs if e.get("event") in CRASH_EVENTS]
    assert crashes == [], crashes
    changed = diff(before, box.fingerprint(scope))
    assert not changed, f"changed outside {scope}:\n" + "\n".join(changed[:20])
