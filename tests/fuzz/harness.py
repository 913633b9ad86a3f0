"""Running one fuzzed input the way the engine would, and the checks every input must pass.

:func:`run_input` parses the params as the runner does, then runs ``exec`` and ``rollback`` (the self-rollback of
a failed reversible transaction, or the chain rollback of a successful one: both must stay within the input's
scope) with the sandbox's fingerprint taken before and after. An input passes when

* the params are refused with a :class:`ParamError` that names a field of the params, or
* ``exec``/``rollback`` end with an Outcome or one of the project's errors (:class:`AgentError`) with a
  message, within a time bound, and
* the fingerprint of everything outside the input's :class:`~tests.fuzz.sandbox.Scope` did not change.

Anything else (a ``TypeError``, ``KeyError``, ``UnicodeError``, ``OSError`` from a handler, a hang, a change
outside the scope) is a defect. Every input run is counted per family for the campaign report
(``VPSADMIND_FUZZ_REPORT`` names a JSON file the counts are added to).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hypothesis import HealthCheck, settings

from tests.fuzz.cases import VALID
from tests.fuzz.sandbox import Sandbox, Scope, diff
from vpsadmind.engine.model import Transaction, TSuccess
from vpsadmind.engine.runner import make_handler
from vpsadmind.errors import AgentError, ParamError
from vpsadmind.handlers.base import HANDLERS, Handler, HandlerContext, Outcome

# How long exec or rollback of one input may take before it counts as a hang.
STEP_TIMEOUT = 30.0

# ----------------------------------------------------------------------------------------------- budget


def examples(ci: int) -> int:
    """``ci`` examples per test in CI; ``VPSADMIND_FUZZ_EXAMPLES=<factor>`` multiplies it for a long run."""
    factor = float(os.environ.get("VPSADMIND_FUZZ_EXAMPLES", "1") or 1)
    return max(1, int(ci * factor))


def fuzz_settings(ci: int) -> settings:
    return settings(max_examples=examples(ci), deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------------------------ report

COUNTS: Counter[str] = Counter()


def count(kind: str, n: int = 1) -> None:
    COUNTS[kind] += n


def _write_report() -> None:
    path = os.environ.get("VPSADMIND_FUZZ_REPORT")
    if not path or not COUNTS:
        return
    try:
        with open(path, encoding="utf-8") as fh:
            old: dict[str, int] = json.load(fh)
    except (OSError, ValueError):
        old = {}
    for k, v in COUNTS.items():
        old[k] = old.get(k, 0) + v
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(dict(sorted(old.items())), fh, indent=1)
    COUNTS.clear()


atexit.register(_write_report)

# ------------------------------------------------------------------------------------------------ inputs


def transaction(code: int, raw: str, *, vps: int, t_id: int, t_output: str | None = None) -> Transaction:
    return Transaction(t_id=t_id, chain_id=t_id, t_type=code, t_server=1, t_vps=vps, t_depends_on=None,
                       t_urgent=False, t_priority=0, t_success=0, t_done=0, t_param=raw, reversible=1,
                       queue="general", chain_state=1, chain_progress=0, chain_size=1, urgent_rollback=False,
                       t_output=t_output)


def field_names(cls: type[Any]) -> set[str]:
    # a key that is a Python keyword (``from``) is a field with a trailing underscore
    return {f.name.rstrip("_") for f in fields(cls)} if is_dataclass(cls) else set()


_ROOT_KEY = re.compile(r"^([^.\[]+)")


@dataclass
class Verdict:
    """What happened to one input: ``refused`` (ParamError), or the statuses of exec and rollback."""

    refused: str | None = None
    exec_status: str | None = None
    rollback_status: str | None = None
    notes: list[str] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "refused" if self.refused is not None else f"exec {self.exec_status}"


async def _step(name: str, call: Callable[[], Any], verdict: Verdict) -> str:
    """Await one handler method; returns ok/warning/failed and keeps its output in ``verdict.output``; raises
    AssertionError for what a defect looks like."""
    verdict.output = {}
    try:
        value = await asyncio.wait_for(call(), STEP_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"{name} did not end within {STEP_TIMEOUT} s") from None
    except AgentError as exc:
        assert str(exc).strip(), f"{name} raised {type(exc).__name__} without a message"
        verdict.notes.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
        verdict.output = {"error": str(exc)}
        return "failed"
    except Exception as exc:
        raise AssertionError(f"{name} raised {type(exc).__name__}: {exc!r:.500}") from exc
    if value is None:
        return "ok"
    assert isinstance(value, Outcome), f"{name} returned {value!r:.200}"
    verdict.output = value.output
    if value.status == TSuccess.FAILED:
        error = value.output.get("error")
        assert isinstance(error, str) and error.strip(), f"{name} failed without an error: {value.output}"
        verdict.notes.append(f"{name}: {error[:200]}")
        return "failed"
    return value.status.name.lower()


def check_param_error(cls: type[Any], exc: ParamError, params: Any, code: int) -> None:
    """A refused input's error names a field of the params (the key the mutation touched, or one it
    invalidated), at the start of the message. Keys the handler reads beside its dataclass (9001's ``from``)
    count when the valid example has them."""
    assert exc.field, f"ParamError without a field: {exc}"
    assert str(exc).startswith(f"{exc.field}: "), str(exc)
    root = _ROOT_KEY.match(exc.field)
    assert root is not None, exc.field
    known = field_names(cls) | (set(params) if isinstance(params, dict) else set()) | set(VALID[code][1])
    assert root.group(1) in known, f"the error names {exc.field!r}, not a field of {cls.__name__}: {exc}"


async def run_input(box: Sandbox, ctx: HandlerContext, code: int, params: Any, *, vps: int, t_id: int,
                    scope_of: Callable[[int, Any], Scope]) -> Verdict:
    """Run one input of ``code`` (params as JSON) and check it; see the module docstring."""
    cls = HANDLERS[code]
    raw = json.dumps(params)
    t = transaction(code, raw, vps=vps, t_id=t_id)
    verdict = Verdict()
    try:
        h = make_handler(t, ctx)  # what the runner does: params parsed, then the handler built (may check more)
    except ParamError as exc:
        check_param_error(cls.Params, exc, params, code)
        verdict.refused = str(exc)
        return verdict
    except Exception as exc:
        raise AssertionError(f"parsing the params raised {type(exc).__name__}: {exc!r:.300}") from exc
    parsed = h.params
    scope = scope_of(code, parsed)
    before = box.fingerprint(scope)
    verdict.exec_status = await _step("exec", h.exec, verdict)
    t_output = json.dumps(verdict.output, default=str) if verdict.output else None
    # The chain rollback builds a new handler from the saved row (t_output included), as after a crash.
    rb: Handler[Any] = cls(ctx, parsed, transaction(code, raw, vps=vps, t_id=t_id, t_output=t_output))
    verdict.rollback_status = await _step("rollback", (h if verdict.exec_status == "failed" else rb).rollback,
                                          verdict)
    changed = diff(before, box.fingerprint(scope))
    assert not changed, f"changed outside {scope}:\n" + "\n".join(changed[:20])
    return verdict
