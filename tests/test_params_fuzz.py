"""Property-based fuzzing of the ``t_param`` parser (issue 2, item 11): no input may crash it.

For every registered handler's ``Params`` and for a few dataclasses that use every supported field type,
``parse_params(cls, parse_json_object(raw))`` either returns an instance whose fields have their declared
types or raises :class:`ParamError` with a message (and, for a field error, the path of the field); never any
other exception. A valid object with one key dropped or corrupted fails naming exactly that key.

Defects this fuzzing found have their regression tests at the end; the property tests keep
out of exactly those inputs so that they guard everything else.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vpsadmind.errors import ParamError
from vpsadmind.handlers.base import HANDLERS, import_handler_modules
from vpsadmind.handlers.params import NoParams, parse_json_object, parse_params
from vpsadmind.testing.handlers import ProbeParams

# Every handler the daemon registers by default, and the probes.
import_handler_modules(("vpsadmind.testing.handlers",))


# ----------------------------------------------------------------------------------------------------------
# Extra params classes: nested dataclasses, lists, dicts, Optional, Literal, Any, frozen/slots variants


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str
    size: int
    ratio: float = 1.0
    state: Literal["active", "deleted"] = "active"


@dataclass
class Target:
    host: str
    port: int
    opts: dict[str, str] = field(default_factory=dict)
    secure: bool = False


@dataclass
class Strict:
    """Only required fields and no float (huge integers are fine everywhere)."""

    id: int
    name: str
    flags: list[bool]
    kind: Literal["a", "b", "c"]
    target: Target


@dataclass(frozen=True)
class Complex:
    pool: str
    snapshots: list[Snapshot]
    target: Target
    labels: dict[str, int]
    backup: Snapshot | None = None
    tags: list[str] = field(default_factory=list)
    matrix: list[list[int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    anything: Any = None
    mode: Literal["full", "incremental"] = "full"
    comment: str | None = None
    size_or_name: int | str = 0
    enabled: bool = True
    limit: float = 0.0


def _registered_params() -> list[type[Any]]:
    out: list[type[Any]] = []
    for cls in HANDLERS.values():
        if cls.Params not in out:
            out.append(cls.Params)
    return out


REGISTERED = _registered_params()
EXTRA: list[type[Any]] = [Snapshot, Target, Strict, Complex]
CLASSES = REGISTERED + [c for c in EXTRA if c not in REGISTERED]


# The class is drawn by hypothesis, so that the run time does not grow with the number of handlers; half
# of the draws go to the classes of this file, which use every supported type.
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def class_strategy(pool: list[type[Any]]) -> st.SearchStrategy[type[Any]]:
    extra = [c for c in pool if c in EXTRA]
    others = [c for c in pool if c not in EXTRA]
    return st.one_of(st.sampled_from(extra), st.sampled_from(others))


classes = class_strategy(CLASSES)


def _validators(cls: type[Any], top: bool = True) -> set[str]:
    """Where ``cls`` checks more than types: "top" (its own ``__post_init__``, run after every field is
    converted) and "nested" (one of its nested dataclasses does)."""
    out = {"top" if top else "nested"} if hasattr(cls, "__post_init__") else set()
    for _f, tp in _dc_fields(cls):
        for sub in _dataclasses_in(tp):
            out |= _validators(sub, top=False)
    return out


def _dataclasses_in(tp: Any) -> list[type[Any]]:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return [tp]
    return [d for a in get_args(tp) if not isinstance(a, str | int | bool) for d in _dataclasses_in(a)]


def test_the_registered_handlers_are_fuzzed() -> None:
    assert NoParams in REGISTERED and ProbeParams in REGISTERED


# ----------------------------------------------------------------------------------------------------------
# Types: does a parsed value have its declared type, would the parser accept a JSON value at top level


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _dc_fields(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def conforms(tp: Any, value: Any) -> bool:
    """``value`` (a parsed field) has exactly the declared type ``tp`` (``True`` is not an ``int``)."""
    if tp is Any:
        return True
    origin = get_origin(tp)
    if _is_union(tp):
        return any(conforms(a, value) for a in get_args(tp))
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp)
        return type(value) is list and all(conforms(item, v) for v in value)
    if origin is dict:
        _k, val = get_args(tp)
        return type(value) is dict and all(type(k) is str and conforms(val, v) for k, v in value.items())
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp) and all(conforms(t, getattr(value, f.name)) for f, t in _dc_fields(tp))
    if tp is type(None):
        return value is None
    if tp in (bool, int, float, str):
        return type(value) is tp
    raise AssertionError(f"conforms() does not know {tp!r}")


def _top_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "list" if isinstance(value, list) else "dict"


def accepted_kinds(tp: Any) -> set[str] | None:
    """JSON kinds the parser accepts at the top of a ``tp`` field; None means "decided by value" (Literal)."""
    if tp is Any:
        return {"null", "bool", "int", "float", "str", "list", "dict"}
    origin = get_origin(tp)
    if origin is Literal:
        return None
    if _is_union(tp):
        kinds: set[str] = set()
        for a in get_args(tp):
            k = accepted_kinds(a)
            if k is None:
                return None
            kinds |= k
        return kinds
    if origin is list:
        return {"list"}
    if origin is dict or dataclasses.is_dataclass(tp):
        return {"dict"}
    return {bool: {"bool"}, int: {"int"}, float: {"int", "float"}, str: {"str"},
            type(None): {"null"}}[tp]


def has_float(tp: Any, seen: frozenset[Any] = frozenset()) -> bool:
    """``tp`` has a float somewhere (where a huge integer would hit the known OverflowError)."""
    if tp is float:
        return True
    if tp is Any:
        return False
    if dataclasses.is_dataclass(tp):
        if tp in seen:
            return False
        return any(has_float(t, seen | {tp}) for _f, t in _dc_fields(tp))
    return any(has_float(a, seen) for a in get_args(tp) if not isinstance(a, str | int | bool))


# ----------------------------------------------------------------------------------------------------------
# Strategies: JSON values, raw t_param text and bytes, values valid for a type

DEEP = 10_000  # levels of nesting; json.loads gives up after about 1,000
SAFE_INT = 10**300  # float(int) overflows from about 1.8e308 up (its own regression test below)
HUGE_INT = 10**4000  # json refuses more than 4300 digits


@functools.cache
def ints(huge: bool) -> st.SearchStrategy[int]:
    bound = HUGE_INT if huge else SAFE_INT
    return st.one_of(st.integers(-(2**63), 2**63), st.integers(-bound, bound),
                     st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 2**53 + 1, 2**64]))


texts = st.one_of(
    st.text(max_size=30),  # every code point but surrogates, control characters included
    st.text(st.characters(max_codepoint=0x1F), max_size=10),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1000, 20_000)),  # long
    st.sampled_from(["", " ", "\x00", "\u2028", "\ufeff", "null", "true", "0", "[]", "{}", "é", "🐧" * 3]),
)
# NaN and Infinity are not JSON: the parser refuses them (they get their own test below)
floats = st.floats(allow_nan=False, allow_infinity=False)


@functools.cache
def json_scalars(huge: bool = True) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), ints(huge), floats, texts)


def nest(value: Any, shape: list[bool]) -> Any:
    """Wrap ``value`` in ``len(shape)`` levels: a list for True, an object for False."""
    for as_list in shape:
        value = [value] if as_list else {"k": value}
    return value


@functools.cache
def json_values(huge: bool = True) -> st.SearchStrategy[Any]:
    base = st.recursive(json_scalars(huge),
                        lambda kids: st.lists(kids, max_size=5) | st.dictionaries(texts, kids, max_size=5),
                        max_leaves=12)
    deep = st.builds(nest, base, st.lists(st.booleans(), min_size=20, max_size=100))
    return st.one_of(base, deep)


@functools.cache
def valid_json(tp: Any, huge: bool) -> st.SearchStrategy[Any]:
    """JSON values the parser must accept for ``tp`` (dataclasses get random unknown keys as well)."""
    if tp is Any:
        return json_values(huge)
    origin = get_origin(tp)
    if _is_union(tp):
        return st.one_of([valid_json(a, huge) for a in get_args(tp)])
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is list:
        return st.lists(valid_json(get_args(tp)[0], huge), max_size=4)
    if origin is dict:
        return st.dictionaries(texts, valid_json(get_args(tp)[1], huge), max_size=4)
    if dataclasses.is_dataclass(tp):
        return valid_object(tp, huge)
    if tp is float:
        return floats | ints(False)  # an integer is a valid number
    return {bool: st.booleans(), int: ints(huge), str: texts, type(None): st.none()}[tp]


@functools.cache
def valid_object(cls: type[Any], huge: bool) -> st.SearchStrategy[dict[str, Any]]:
    fields = _dc_fields(cls)
    names = {f.name for f, _t in fields}
    parts = {f.name: valid_json(t, huge) if _required(f) else st.one_of(st.just(_ABSENT), valid_json(t, huge))
             for f, t in fields}
    extra = st.dictionaries(texts.filter(lambda k: k not in names), json_scalars(huge), max_size=3)
    return st.builds(lambda d, x: {**x, **{k: v for k, v in d.items() if v is not _ABSENT}},
                     st.fixed_dictionaries(parts), extra)


_ABSENT = object()


def json_text(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


def mangle(text: str, cut: int, junk: str) -> str:
    """Break JSON text: cut it and put junk at the cut."""
    cut = cut % (len(text) + 1)
    return text[:cut] + junk + text[cut + 1:]


@functools.cache
def raw_params(cls: type[Any], huge: bool) -> st.SearchStrategy[str | bytes | None]:
    objects = st.one_of(valid_object(cls, huge), st.dictionaries(texts, json_values(huge), max_size=6))
    any_json = st.one_of(objects, json_values(huge))
    as_text = st.builds(json_text, any_json, st.booleans())
    return st.one_of(
        st.none(), st.just(""), st.text(" \t\r\n", max_size=5),
        as_text, as_text,
        st.builds(json_text, objects, st.booleans()).map(str.encode),
        st.builds(lambda v, enc: json.dumps(v).encode(enc), any_json,
                  st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-8-sig"])),
        st.builds(mangle, as_text, st.integers(0, 10**6), st.sampled_from(["", "\x00", "}", "]", ",", '"', "\\"])),
        st.text(max_size=200), st.binary(max_size=200),
        st.deferred(lambda: broken_objects(cls, in_union=False) | broken_objects(cls, in_union=True)).map(
            lambda case: case[0]),
    )


# ----------------------------------------------------------------------------------------------------------
# Checking one parse


def parse(cls: type[Any], raw: str | bytes | None) -> Any:
    """Parse ``raw``; return the instance or the ParamError, after checking every promise of the parser."""
    try:
        obj = parse_params(cls, parse_json_object(raw))
    except ParamError as exc:
        check_param_error(exc)
        return exc
    assert isinstance(obj, cls)
    for f, tp in _dc_fields(cls):
        value = getattr(obj, f.name)
        assert conforms(tp, value), f"{cls.__name__}.{f.name} = {value!r:.200} is not a {tp}"
    return obj


def check_param_error(exc: ParamError) -> None:
    message = str(exc)
    assert isinstance(message, str) and message.strip(), "a ParamError needs a message"
    if exc.field is not None:
        assert isinstance(exc.field, str) and exc.field, f"field {exc.field!r} of {message!r:.200}"
        assert message.startswith(f"{exc.field}: ") and len(message) > len(exc.field) + 2


_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[\]]*)")


def path_tokens(path: str) -> list[str | int]:
    out: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        assert m is not None and m.end() > pos, f"unparsable field path {path!r}"
        out.append(int(m.group(1)) if m.group(1) is not None else m.group(2))
        pos = m.end()
    return out


def simple_keys(value: Any) -> bool:
    """No key would make a field path ambiguous."""
    if isinstance(value, dict):
        return all(k and not set(k) & set(".[]") and simple_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return all(simple_keys(v) for v in value)
    return True


def check_field_points_into(data: dict[str, Any], path: str) -> None:
    """The field path of an error names a place in the input: every step but the last exists."""
    node: Any = data
    tokens = path_tokens(path)
    for tok in tokens[:-1]:
        if isinstance(tok, int):
            assert isinstance(node, list) and tok < len(node), f"{path!r} does not point into the input"
        else:
            assert isinstance(node, dict) and tok in node, f"{path!r} does not point into the input"
        node = node[tok]
    assert isinstance(node, list | dict), f"the parent of {path!r} is not a container"


# ----------------------------------------------------------------------------------------------------------
# Properties


EDGE_CASES: list[str | bytes | None] = [
    None, "", "  ", "{}", "[]", "null", "1e400", "NaN", '{"a": NaN}', "\x00", "{" * 5000, "[" * DEEP + "]" * DEEP,
    b"\xff\xfe{\x00", b"\x80", b"\xef\xbb\xbf{}", '{"a": 1' + "0" * 4301 + "}", "\ufeff{}", '{"\ud800": 1}',
    '"\\ud800"', '{"a": "\\ud800"}', '{"a": 1, "a": [2]}', '{"a":' * 990 + "1" + "}" * 990,
]


@pytest.mark.parametrize("raw", EDGE_CASES, ids=lambda r: repr(r)[:24])
def test_edge_case_t_params(raw: str | bytes | None) -> None:
    for cls in CLASSES:
        parse(cls, raw)


@FUZZ
@given(data=st.data())
def test_any_t_param_gives_an_instance_or_a_param_error(data: st.DataObject) -> None:
    cls = data.draw(classes, label="class")
    raw = data.draw(raw_params(cls, huge=not has_float(cls)), label="t_param")
    result = parse(cls, raw)
    if isinstance(result, ParamError) and result.field is not None:
        value = parse_json_object(raw)
        if simple_keys(value):
            check_field_points_into(value, result.field)


@FUZZ
@given(data=st.data())
def test_valid_objects_parse_to_declared_types(data: st.DataObject) -> None:
    cls = data.draw(classes, label="class")
    obj = data.draw(valid_object(cls, huge=not has_float(cls)), label="object")
    raw = data.draw(st.booleans().map(lambda a: json.dumps(obj, ensure_ascii=a)), label="raw")
    result = parse(cls, raw)
    if not _validators(cls):  # a handler's own checks (names, ranges) may refuse a well-typed object
        assert not isinstance(result, ParamError), f"valid input refused: {result}"


# ---- one key dropped or corrupted: the error names exactly that key


@dataclass(frozen=True)
class Loc:
    path: str
    container: Any  # the dict or list holding the value
    key: str | int
    tp: Any
    droppable: bool  # a required dataclass field
    in_union: bool  # somewhere below a Union/Optional


def locations(tp: Any, value: Any, path: str, in_union: bool = False) -> list[Loc]:
    """Every place in the valid ``value`` of type ``tp`` that can be dropped or corrupted."""
    out: list[Loc] = []
    if _is_union(tp):
        for arg in get_args(tp):
            if accepted_kinds(arg) and _top_kind(value) in (accepted_kinds(arg) or ()):
                return locations(arg, value, path, True)
        return out
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        for f, ftp in _dc_fields(tp):
            if f.name in value:
                sub = f"{path}.{f.name}" if path else f.name
                out.append(Loc(sub, value, f.name, ftp, _required(f), in_union or _is_union(ftp)))
                out += locations(ftp, value[f.name], sub, in_union)
    elif origin is list:
        for i, v in enumerate(value):
            out.append(Loc(f"{path}[{i}]", value, i, get_args(tp)[0], False, in_union))
            out += locations(get_args(tp)[0], v, f"{path}[{i}]", in_union)
    elif origin is dict:
        for k, v in value.items():
            out.append(Loc(f"{path}.{k}", value, k, get_args(tp)[1], False, in_union))
            out += locations(get_args(tp)[1], v, f"{path}.{k}", in_union)
    return out


_KIND_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(), "bool": st.booleans(), "int": st.integers(-(10**20), 10**20),
    "float": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()), "str": texts,
    "list": st.lists(json_scalars(False), max_size=3), "dict": st.dictionaries(texts, json_scalars(False), max_size=3),
}


@functools.cache
def wrong_json(tp: Any) -> st.SearchStrategy[Any]:
    """A JSON value the parser refuses at the top of a ``tp`` field (not somewhere inside it)."""
    kinds = accepted_kinds(tp)
    if kinds is None:  # Literal: anything not among its values, by the parser's ``in``
        args = get_args(tp)
        return st.one_of(list(_KIND_VALUES.values())).filter(lambda v: v not in args)
    return st.one_of([s for k, s in _KIND_VALUES.items() if k not in kinds])


def corruptible(loc: Loc) -> bool:
    return loc.tp is not Any and (accepted_kinds(loc.tp) or set()) != set(_KIND_VALUES)


@st.composite
def broken_objects(draw: st.DrawFn, cls: type[Any], in_union: bool) -> tuple[str, str | None, str]:
    """A valid object of ``cls`` as JSON text with one place dropped or corrupted: (raw, path, action).

    ``in_union`` picks places below an Optional/Union (the known defect) or only places outside them.
    """
    obj = copy.deepcopy(draw(valid_object(cls, huge=not has_float(cls)), label="valid object"))
    locs = [loc for loc in locations(cls, obj, "") if loc.in_union == in_union and (loc.droppable or corruptible(loc))]
    if not locs:
        return json.dumps(obj), None, "nothing"
    loc = draw(st.sampled_from(locs), label="location")
    actions = (["drop"] if loc.droppable else []) + (["corrupt"] if corruptible(loc) else [])
    action = draw(st.sampled_from(actions), label="action")
    if action == "drop":
        del loc.container[loc.key]
    else:
        loc.container[loc.key] = draw(wrong_json(loc.tp), label="wrong value")
    return json.dumps(obj), loc.path, action


def check_named(cls: type[Any], case: tuple[str, str | None, str]) -> None:
    raw, path, action = case
    result = parse(cls, raw)
    if action == "nothing":
        assert not isinstance(result, ParamError), result
        return
    assert isinstance(result, ParamError), f"{action} {path!r} was accepted: {result!r:.300}"
    assert result.field == path, f"{action} {path!r} reported as field {result.field!r}: {str(result)!r:.300}"
    if action == "drop":
        assert "missing" in str(result)


# A nested class's own checks may refuse a sibling first; a top-level __post_init__ runs after all types.
TYPE_FIRST = [c for c in CLASSES if "nested" not in _validators(c)]


@FUZZ
@given(data=st.data())
def test_a_dropped_or_mistyped_key_is_named_exactly(data: st.DataObject) -> None:
    cls = data.draw(class_strategy(TYPE_FIRST), label="class")
    check_named(cls, data.draw(broken_objects(cls, in_union=False), label="case"))


def test_every_class_has_places_to_break() -> None:
    """The key test above is not vacuous: each class but NoParams has keys it can drop or corrupt (or, like
    1001's OnbootParams, only keys typed Any: v2.0 sends them and ignores them, and so do we)."""
    for cls in CLASSES:
        if cls is NoParams or all(t is Any for _f, t in _dc_fields(cls)):
            continue
        obj = {f.name: _example_value(t) for f, t in _dc_fields(cls)}
        assert [loc for loc in locations(cls, obj, "") if loc.droppable or corruptible(loc)], cls


def _example_value(tp: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        return {f.name: _example_value(t) for f, t in _dc_fields(tp)}
    if _is_union(tp):
        return _example_value(get_args(tp)[0])
    if get_origin(tp) is Literal:
        return get_args(tp)[0]
    if get_origin(tp) is list:
        return [_example_value(get_args(tp)[0])]
    if get_origin(tp) is dict:
        return {"k": _example_value(get_args(tp)[1])}
    return {bool: True, int: 1, float: 1.5, str: "s", type(None): None}.get(tp)


# ---- deep nesting



@pytest.mark.parametrize("shape", ["list", "object", "mixed"])
def test_deep_nesting_is_a_param_error_not_recursion(shape: str) -> None:
    opening, closing = {"list": ("[", "]"), "object": ('{"a":', "}"), "mixed": ('[{"a":', "}]")}[shape]
    inner = opening * DEEP + "1" + closing * DEEP
    for cls in CLASSES:
        raws = [inner, '{"x": ' + inner + "}"]
        raws += ['{"' + f.name + '": ' + inner + "}" for f, _t in _dc_fields(cls)]
        for raw in raws:
            result = parse(cls, raw)
            assert isinstance(result, ParamError), f"{cls.__name__}: {raw[:40]}... was accepted"


def test_oversized_t_param_is_refused() -> None:
    raw = '{"x": "' + "a" * (16 * 1024 * 1024) + '"}'
    for cls in CLASSES:
        result = parse(cls, raw)
        assert isinstance(result, ParamError) and "allowed" in str(result), cls


# ----------------------------------------------------------------------------------------------------------
# Regression tests for defects the fuzzing found (fixed in the parser, runner and save)


@dataclass(frozen=True)
class Timing:
    timeout: float = 1.0


@settings(deadline=None, max_examples=20)
@given(value=st.integers(2**1024, 10**4000) | st.integers(-(10**4000), -(2**1024)))
@example(value=2**1024)
def test_huge_integer_for_a_float_field_is_a_param_error(value: int) -> None:
    for cls, key in ((Timing, "timeout"), (ProbeParams, "sleep"), (Snapshot, "ratio")):
        raw = f'{{"name": "n", "size": 1, "{key}": {value}}}'
        parse(cls, raw)


@FUZZ
@given(case=st.sampled_from([ProbeParams, Complex]).flatmap(
    lambda cls: st.tuples(st.just(cls), broken_objects(cls, in_union=True))))
@example(case=(ProbeParams, ('{"effects": 5}', "effects", "corrupt")))
@example(case=(Complex, (json.dumps({"pool": "p", "snapshots": [], "target": {"host": "h", "port": 1}, "labels": {},
                                     "backup": {"name": 5, "size": 1}}), "backup.name", "corrupt")))
def test_a_mistyped_optional_key_is_named_exactly(case: tuple[type[Any], tuple[str, str | None, str]]) -> None:
    check_named(*case)


@dataclass(frozen=True)
class Levels:
    level: Literal[0, 1, 2] = 0


@given(value=st.sampled_from([True, False, 1.0, 0.0, 2.0]))
@example(value=True)
def test_literal_int_refuses_booleans_and_floats(value: Any) -> None:
    parse(Levels, json.dumps({"level": value}))


@dataclass
class Tree:
    name: str = ""
    children: list[Tree] = field(default_factory=list)


def tree(depth: int) -> str:
    return '{"children": [' * depth + "{}" + "]}" * depth


@settings(deadline=None, max_examples=10)
@given(share=st.floats(0.27, 0.47))
@example(share=0.3)
def test_recursive_params_class_never_raises_recursion_error(share: float) -> None:
    # ``share`` of the recursion limit (hypothesis raises the limit while it runs): json.loads takes these
    # depths, the parser does not. In a fresh thread, so that the stack left to the parser is the same as in
    # an engine task, whatever pytest and hypothesis have put on the test's own stack.
    depth = int(sys.getrecursionlimit() * share)
    result = in_fresh_thread(lambda: parse_params(Tree, parse_json_object(tree(depth))))
    if isinstance(result, ParamError):
        check_param_error(result)
    elif isinstance(result, BaseException):
        raise result
    else:
        assert isinstance(result, Tree)


def in_fresh_thread(fn: Any) -> Any:
    """``fn()``'s value or the exception it raised, from a new thread (a new, nearly empty stack)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the test
            box.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box[0]


def test_recursive_params_class_parses_moderate_depth() -> None:
    result = in_fresh_thread(lambda: parse_params(Tree, parse_json_object(tree(100))))
    assert isinstance(result, Tree)


@given(token=st.sampled_from(["NaN", "Infinity", "-Infinity"]))
@example(token="NaN")
def test_non_json_number_tokens_are_refused(token: str) -> None:
    result = parse(ProbeParams, '{"sleep": %s}' % token)  # noqa: UP031
    assert isinstance(result, ParamError), f"{token} accepted: {result!r}"
