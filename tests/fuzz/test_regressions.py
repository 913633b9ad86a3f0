"""Defects the fuzzing of tests/fuzz found, each pinned by a plain test (the property tests find them too, but
only by chance).
"""

from __future__ import annotations

from typing import Any

import pytest

from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import HANDLERS, import_handler_modules
from vpsadmind.handlers.params import parse_params

import_handler_modules()

SHAPER = {"class_id": 101, "max_tx": 1000000, "max_rx": 2000000}


@pytest.mark.parametrize(("code", "params", "field"), [
    # the nested dataclass's own check named "class_id", a key the params of 2009 do not have
    (2009, {"addr": "192.0.2.10", "version": 4, "shaper": {**SHAPER, "class_id": 0}}, "shaper.class_id"),
    (2009, {"addr": "192.0.2.10", "version": 4, "shaper": SHAPER, "shaper_original": {**SHAPER, "max_rx": -1}},
     "shaper_original.max_rx"),
    (2010, {"addr": "192.0.2.10", "version": 4, "shaper": {**SHAPER, "max_tx": 2**70}}, "shaper.max_tx"),
    (2012, {"max_tx": 10**8, "max_rx": 10**8, "original": {"max_tx": -5, "max_rx": 10**8}}, "original.max_tx"),
])
def test_nested_param_errors_name_the_whole_path(code: int, params: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_params(HANDLERS[code].Params, params)
    assert err.value.field == field and str(err.value).startswith(f"{field}: "), str(err.value)


@pytest.mark.parametrize(("snapshots", "field"), [
    ({"\u00b2": ["(unconfirmed)", 2]}, "snapshots.\u00b2"),  # isdigit() but not int(): ValueError in exec
    ({"\u0661": ["(unconfirmed)", 2]}, "snapshots.\u0661"),
    ({"1" * 5000: ["(unconfirmed)", 2]}, "snapshots." + "1" * 40),  # int() refuses > 4300 digits
    ({"1": ["(unconfirmed)", 10**80]}, "snapshots.1"),  # beyond snapshots.id: MySQL truncated it
    ({"1": ["(unconfirmed)", -3]}, "snapshots.1"),
    ({"4294967296": ["(unconfirmed)", 2]}, "snapshots.4294967296"),
])
def test_clone_snapshot_name_refuses_ids_that_are_no_snapshot_id(snapshots: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_params(HANDLERS[5224].Params, {"snapshots": snapshots})
    assert err.value.field == field, str(err.value)


def test_clone_snapshot_name_still_takes_real_ids() -> None:
    p = parse_params(HANDLERS[5224].Params, {"snapshots": {"1": ["(unconfirmed)", 2], "2147483647": [None, 7]}})
    assert p.snapshots == {"1": ["(unconfirmed)", 2], "2147483647": [None, 7]}
