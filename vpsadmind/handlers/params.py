"""Parse a transaction's ``t_param`` JSON object into a typed dataclass before any side effect.

Every failure names the field (``snapshots[2].name``) and says what was expected and what came, so that the
transaction fails with a message an operator can act on.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from vpsadmind.errors import ParamError

__all__ = ["parse_params", "parse_json_object", "NoParams"]

P = TypeVar("P")

_MAX_PARAM_BYTES = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class NoParams:
    """For handlers that take no parameters (v2.0 NoOp): any object is accepted."""


def parse_json_object(raw: str | bytes | None) -> dict[str, Any]:
    """``t_param`` as a dict; NULL and empty text mean ``{}`` as in v2.0."""
    if raw is None or (isinstance(raw, str | bytes) and not raw.strip()):
        return {}
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > _MAX_PARAM_BYTES:
        raise ParamError(f"t_param is {size} bytes, more than the {_MAX_PARAM_BYTES} allowed")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ParamError(f"Bad param syntax: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ParamError(f"Bad param syntax: expected a JSON object, got {_kind(value)}")
    return value


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (v2.0's parser refused them); a NaN sleep would never end
    raise ValueError(f"{name} is not a JSON number")


def parse_params(cls: type[P], data: dict[str, Any]) -> P:
    """Build ``cls`` (a dataclass) from ``data``; unknown keys are ignored as v2.0 ignored them."""
    try:
        return typing.cast(P, _dataclass(cls, data, ""))
    except RecursionError:
        raise ParamError("t_param is nested too deeply") from None


def _dataclass(cls: type[Any], data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ParamError(f"expected an object, got {_kind(data)}", field=path or None)
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamError("missing required field", field=sub)
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], sub)
    try:
        obj = cls(**kwargs)
    except ParamError as exc:
        # A nested dataclass's own checks only know its keys (``class_id``); the operator needs the whole path
        # (``shaper.class_id``), or the error names a field the params do not have.
        if not path or exc.field == path or (exc.field or "").startswith((f"{path}.", f"{path}[")):
            raise
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        raise ParamError(message, field=f"{path}.{exc.field}" if exc.field else path) from None
    except (TypeError, ValueError) as exc:
        raise ParamError(str(exc), field=path or None) from None
    return obj


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _union(tp, value, path)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ParamError(f"expected one of {list(get_args(tp))!r}, got {value!r:.80}", field=path)
    if origin is list:
        if not isinstance(value, list):
            raise ParamError(f"expected a list, got {_kind(value)}", field=path)
        (item,) = get_args(tp) or (Any,)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamError(f"expected an object, got {_kind(value)}", field=path)
        _key, val = get_args(tp) or (str, Any)
        return {str(k): _convert(val, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass(tp, value, path)
    return _scalar(tp, value, path)


def _union(tp: Any, value: Any, path: str) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    if value is None:
        if len(args) < len(get_args(tp)):
            return None
        raise ParamError("must not be null", field=path)
    if len(args) == 1:  # Optional[X]: X's own error names the field
        return _convert(args[0], value, path)
    errors: list[str] = []
    for arg in args:
        try:
            return _convert(arg, value, path)
        except ParamError as exc:
            errors.append(str(exc).removeprefix(f"{path}: "))
    raise ParamError("; ".join(errors) or f"unexpected {_kind(value)}", field=path)


def _scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamError(f"expected true or false, got {_kind(value)}", field=path)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ParamError(f"expected an integer, got {_kind(value)}", field=path)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ParamError(f"number too large: {str(value)[:40]}...", field=path) from None
        raise ParamError(f"expected a number, got {_kind(value)}", field=path)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamError(f"expected a string, got {_kind(value)}", field=path)
    if value is None and tp is type(None):
        return None
    raise ParamError(f"unsupported parameter type {tp!r}", field=path)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r:.40}"
    if isinstance(value, str):
        return f"string {value!r:.60}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
