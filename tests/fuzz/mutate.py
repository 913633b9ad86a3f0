"""Hostile values and the mutations of a valid ``t_param`` object that carry them.

:func:`mutated` takes one valid params object and applies one to three mutations, each at a random place of the
object (top level or nested): a string replaced by a hostile string (shell metacharacters, newlines, NUL,
``..``, leading dashes, absolute paths, very long, unicode with RTL marks, combining characters and emoji,
empty) or by the valid string with such a piece glued on; an integer replaced by a huge, negative, boolean,
float or string value; any value replaced by one of another JSON type; a key dropped; an extra key added. It
returns the object and a description of what it did, so that a failure shows the input in words.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

Path = tuple[str | int, ...]

HOSTILE_STRINGS: tuple[str, ...] = (
    "", " ", ";", "a;id", "a; rm -rf /", "$(id)", "${IFS}", "`id`", "a|b", "a&&b", "a&b", "<x>", ">out", "*", "?",
    "'", '"', "a'b\"c", "\\", "\n", "a\nb", "a\r\nb", "\t", "\x00", "a\x00b", "\x1b[31m", "..", ".", "../../etc",
    "../../../../../../etc/passwd", "a/../../b", "./x", "-", "--", "-rf", "--help", "-o", "--output=/etc/x",
    "-oProxyCommand=id", "/etc/passwd", "/", "//", "/etc/", "/root/.ssh/authorized_keys", "~root", "%{veid}",
    "%s%n", "{}", "a" * 256, "a" * 5000, "x/" * 200, "\u202eevil", "e\u0301\u0301\u0301", "\U0001f600",
    "\u0661\u0662", "\u00b2", "\ufeff", "\u2028", "tank/vz/102", "tank/vz/101/../102", "tank", "tank/vz",
    "0", "-1", "1e999", "NaN", "true", "null", "[]", "101", "102",
)
# Pieces glued onto a valid string: almost right is where checks slip.
SUFFIXES: tuple[str, ...] = (";id", "\n", "\x00", "/..", "/../102", " -rf", "$(id)", "@x", "#x", "\u202e", "/",
                             "*", " ", "`id`")
PREFIXES: tuple[str, ...] = ("-", "--", "../", "/", " ", "~", "\u202e", "$(id)")

hostile_text = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from(";|&$()`<>*?'\"\n\x00./-\\ ~#@%{}"), min_size=1, max_size=12),
)
HOSTILE_INTS: tuple[Any, ...] = (0, -1, -(2**31), 2**31, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400, True, False,
                                 1.5, -0.0, 1e308, "1", "0x10", "", None)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), hostile_text)
wrong_typed: st.SearchStrategy[Any] = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(hostile_text, json_scalars, max_size=3),
    st.builds(lambda: [[[[]]]]), st.builds(lambda: {"": {"": {}}}),  # fresh objects: mutations edit in place
)


def leaf_paths(value: Any, path: Path = ()) -> list[Path]:
    """Every place in ``value`` (the root excluded), parents before children."""
    out: list[Path] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*path, k))
            out.extend(leaf_paths(v, (*path, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((*path, i))
            out.extend(leaf_paths(v, (*path, i)))
    return out


def containers(value: Any, path: Path = ()) -> list[Path]:
    """Every dict in ``value``, the root included."""
    out: list[Path] = [path] if isinstance(value, dict) else []
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(containers(v, (*path, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(containers(v, (*path, i)))
    return out


def get(value: Any, path: Path) -> Any:
    for p in path:
        value = value[p]
    return value


def _replacement(draw: st.DrawFn, old: Any) -> Any:
    if isinstance(old, str):
        kind = draw(st.sampled_from(["hostile", "hostile", "suffix", "prefix", "wrong"]), label="string mutation")
        if kind == "hostile":
            return draw(hostile_text, label="hostile string")
        if kind == "suffix":
            return old + draw(st.sampled_from(SUFFIXES), label="suffix")
        if kind == "prefix":
            return draw(st.sampled_from(PREFIXES), label="prefix") + old
        return draw(wrong_typed, label="wrong type")
    if isinstance(old, bool):
        return draw(st.one_of(st.sampled_from([0, 1, "true", "false", None, [], {}]), wrong_typed))
    if isinstance(old, int):
        return draw(st.one_of(st.sampled_from(HOSTILE_INTS), st.integers(), wrong_typed), label="int mutation")
    return draw(wrong_typed, label="wrong type")


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``valid`` with one to three mutations, and what they were."""
    obj = copy.deepcopy(valid)
    what: list[str] = []
    for _ in range(draw(st.integers(1, 3), label="mutations")):
        places = leaf_paths(obj)
        kind = draw(st.sampled_from(["replace", "replace", "replace", "drop", "extra"] if places else ["extra"]),
                    label="mutation")
        if kind == "extra":
            where = draw(st.sampled_from(containers(obj)), label="extra key in")
            key = draw(st.one_of(hostile_text, st.sampled_from(["id", "name", "pool_fs", "__proto__"])))
            get(obj, where)[key] = copy.deepcopy(draw(wrong_typed, label="extra value"))
            what.append(f"extra key {key!r} at {list(where)}")
            continue
        path = draw(st.sampled_from(places), label="place")
        parent = get(obj, path[:-1])
        if kind == "drop":
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
            what.append(f"dropped {list(path)}")
            continue
        new = copy.deepcopy(_replacement(draw, parent[path[-1]]))
        what.append(f"{list(path)}: {parent[path[-1]]!r:.60} -> {new!r:.80}")
        parent[path[-1]] = new
    return obj, what
