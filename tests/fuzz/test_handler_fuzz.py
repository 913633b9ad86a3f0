"""Hostile ``t_param`` for every registered handler, run for real on a sandbox node (issue 9, item 3).

For each transaction type, hypothesis mutates the valid params of :mod:`tests.fuzz.cases` (hostile strings,
wrong types, huge numbers, dropped and extra keys, see :mod:`tests.fuzz.mutate`) and
:func:`tests.fuzz.harness.run_input` runs exec and rollback on the sandbox (fake-zfs pool, fake-vzctl
containers with links to the host in their private areas, a canary tree): every input is refused with a
ParamError naming the field or ends with one of the project's errors or an Outcome, and nothing outside what the
params name changes. The network family runs in a namespace (test_network_fuzz.py), the engine path in
test_engine_chain_fuzz.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.cases import VALID, VPS_OF, family, scope_of
from tests.fuzz.conftest import free_port, next_t_id
from tests.fuzz.harness import count, fuzz_settings, run_input
from tests.fuzz.mutate import mutated
from tests.fuzz.sandbox import OTHER_VEID, POOL_FS, VEID, Sandbox, Scope, diff
from vpsadmind.handlers.base import DEFAULT_HANDLER_MODULES, HANDLERS, HandlerContext, import_handler_modules

LOCAL_FAMILIES = ("utils", "node", "vps", "storage", "transfer", "integrity", "mounts")
CODES = [c for fam in LOCAL_FAMILIES for c in family(fam)]


def test_every_registered_handler_is_fuzzed() -> None:
    """A new handler without a valid example here fails this test instead of going unfuzzed."""
    import_handler_modules()
    registered = {code for code, cls in HANDLERS.items() if cls.__module__ in DEFAULT_HANDLER_MODULES}
    assert set(VALID) == registered


def params_for(code: int) -> dict[str, Any]:
    params = VALID[code][1]
    return {**params, "port": free_port()} if "port" in params else dict(params)


async def fuzz_one(box: Sandbox, ctx: HandlerContext, code: int, params: Any) -> None:
    verdict = await run_input(box, ctx, code, params, vps=VPS_OF.get(code, VEID), t_id=next_t_id(),
                              scope_of=scope_of)
    count(f"{VALID[code][0]}:{code}")
    count(f"{VALID[code][0]}:{verdict.kind}")


@pytest.mark.parametrize("code", CODES)
async def test_valid_example_is_accepted(box: Sandbox, hctx: HandlerContext, code: int) -> None:
    """The starting point of the mutations passes the params checks (else every mutation is refused for the
    valid part's sake and nothing deeper is fuzzed)."""
    verdict = await run_input(box, hctx, code, params_for(code), vps=VPS_OF.get(code, VEID), t_id=next_t_id(),
                              scope_of=scope_of)
    assert verdict.refused is None, verdict.refused
    print(code, verdict.exec_status, verdict.rollback_status, json.dumps(verdict.notes)[:300])


@pytest.mark.parametrize("code", CODES)
@fuzz_settings(6)
@given(data=st.data())
async def test_hostile_params(box: Sandbox, hctx: HandlerContext, code: int, data: st.DataObject) -> None:
    params, _what = data.draw(mutated(params_for(code)), label="input")  # _what: shown by hypothesis on failure
    await fuzz_one(box, hctx, code, params)


def test_the_fingerprint_sees_changes_outside_the_scope(box: Sandbox) -> None:
    """The check every input relies on: a change outside the scope shows, one inside does not."""
    scope = Scope(datasets={f"{POOL_FS}/{VEID}"}, vpses={VEID})
    before = box.fingerprint(scope)
    (box.mnt / "vz" / str(VEID) / "private" / "file").write_text("changed by the target's own handler\n")
    (box.private(VEID) / "etc" / "fuzz").write_text("inside the target VPS\n")
    assert diff(before, box.fingerprint(scope)) == []
    secret = box.canary / "host" / "passwd"
    old = secret.read_text()
    secret.write_text(old + "evil::0:0::/:/bin/sh\n")
    box.zfs("set", "atime=off", f"{POOL_FS}/{OTHER_VEID}")
    try:
        changed = diff(before, box.fingerprint(scope))
    finally:
        secret.write_text(old)
        box.zfs("inherit", "atime", f"{POOL_FS}/{OTHER_VEID}")
    assert any("canary/host/passwd" in c for c in changed) and any(f"{POOL_FS}/{OTHER_VEID}" in c for c in changed)
