"""Property tests: the walker agrees with DeepDiff on which paths differ, and more.

Normalisation used to compare with DeepDiff (``ignore_order=False``,
``zip_ordered_iterables=True`` so arrays are compared index by index, and
``threshold_to_diff_deeper=0`` so it always descends):

* DeepDiff paths (``root['a'][2]``, taken in list form) are rendered in our
  JSONPath form (``$.a[2]``);
* DeepDiff reports ``1`` vs ``1.0`` as a type change; numbers are one JSON type
  for us, so a ``type_changes`` entry between two non-boolean numbers is kept
  only if the values differ (and then it is our ``changed`` at the same path);
* our ``length_changed`` entries are dropped: DeepDiff reports the same fact as
  ``iterable_item_added``/``removed`` at the extra indexes, which we report too.

What remains must be the same set of paths on both sides.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from deepdiff import DeepDiff
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowproxy.compare import Comparator, compile_rules
from shadowproxy.compare.jsondiff import JsonDiffer
from shadowproxy.compare.paths import render
from shadowproxy.config import ArrayRule, CompareRules
from shadowproxy.models import ResponseRecord

KEYS = st.sampled_from(["a", "b", "c", "id", "x y", "it's", "é", ""]) | st.text(max_size=3)
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, -1, 0.0, 1.0, -0.0, 2, 2.5])
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)

PLAIN = JsonDiffer(compile_rules())
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEWER = settings(SETTINGS, max_examples=150)


def mutate(draw: Any, value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with a few random edits (replace, delete, insert, recurse)."""
    action = draw(st.sampled_from(["keep", "keep", "replace", "recurse", "recurse", "recurse"]))
    if action == "keep" or depth > 6:
        return orjson.loads(orjson.dumps(value))
    if action == "replace" or not isinstance(value, (dict, list)) or not value:
        return draw(JSON)
    if isinstance(value, dict):
        out = {k: mutate(draw, v, depth + 1) for k, v in value.items()}
        edit = draw(st.sampled_from(["none", "delete", "insert"]))
        if edit == "delete":
            out.pop(draw(st.sampled_from(sorted(out))), None)
        elif edit == "insert":
            out[draw(KEYS)] = draw(JSON)
        return out
    out_list = [mutate(draw, v, depth + 1) for v in value]
    edit = draw(st.sampled_from(["none", "delete", "insert", "append"]))
    if edit == "delete":
        out_list.pop(draw(st.integers(0, len(out_list) - 1)))
    elif edit == "insert":
        out_list.insert(draw(st.integers(0, len(out_list))), draw(JSON))
    elif edit == "append":
        out_list.append(draw(JSON))
    return out_list


@st.composite
def pairs(draw: Any) -> tuple[Any, Any]:
    a = draw(JSON)
    if draw(st.integers(0, 3)) == 0:
        return a, draw(JSON)                        # fully random pair
    return a, mutate(draw, a)                       # a value and a mutated copy


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def deepdiff_paths(a: Any, b: Any) -> set[str]:
    tree = DeepDiff(a, b, ignore_order=False, zip_ordered_iterables=True,
                    threshold_to_diff_deeper=0, view="tree")
    out = set()
    for report, levels in tree.items():
        for level in levels:
            if report == "type_changes" and _is_num(level.t1) and _is_num(level.t2) \
                    and level.t1 == level.t2:
                continue
            out.add(render(tuple(level.path(output_format="list"))))
    return out


def walker_paths(a: Any, b: Any) -> set[str]:
    return {d.path for d in PLAIN.diff(a, b) if d.kind != "length_changed"}


@SETTINGS
@given(pairs())
def test_walker_agrees_with_deepdiff_on_which_paths_differ(pair: tuple[Any, Any]) -> None:
    a, b = pair
    assert walker_paths(a, b) == deepdiff_paths(a, b)


@SETTINGS
@given(pairs())
def test_walker_is_symmetric(pair: tuple[Any, Any]) -> None:
    a, b = pair
    swap = {"added": "removed", "removed": "added"}
    forward = {(d.path, swap.get(d.kind, d.kind)) for d in PLAIN.diff(a, b)}
    assert forward == {(d.path, d.kind) for d in PLAIN.diff(b, a)}


@SETTINGS
@given(pairs())
def test_comparator_on_bytes_agrees_with_the_walker(pair: tuple[Any, Any]) -> None:
    """The byte-level shortcuts (identical bytes, no-boolean documents) change nothing."""
    a, b = pair
    ra = ResponseRecord(200, headers=(("Content-Type", "application/json"),), body=orjson.dumps(a))
    rb = ResponseRecord(200, headers=(("Content-Type", "application/json"),), body=orjson.dumps(b))
    assert Comparator().compare(ra, rb) == PLAIN.diff(a, b)


ALL_UNORDERED = compile_rules(CompareRules(arrays=(ArrayRule("$", "unordered"),
                                                   ArrayRule("$..*", "unordered"))))


@SETTINGS
@given(JSON)
def test_compare_x_with_itself_is_empty(x: Any) -> None:
    copy = orjson.loads(orjson.dumps(x))
    assert PLAIN.diff(x, copy) == []
    assert JsonDiffer(ALL_UNORDERED).diff(x, copy) == []
    r = ResponseRecord(200, headers=(("Content-Type", "application/json"),), body=orjson.dumps(x))
    assert Comparator().compare(r, r) == []


def shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, list):
        out = [shuffled(v, rng) for v in value]
        rng.shuffle(out)
        return out
    if isinstance(value, dict):
        return {k: shuffled(v, rng) for k, v in value.items()}
    return value


@FEWER
@given(st.lists(JSON, max_size=8), st.randoms(use_true_random=False))
def test_unordered_is_invariant_under_permutation(x: list[Any], rng: random.Random) -> None:
    differ = JsonDiffer(ALL_UNORDERED)
    assert differ.diff(x, shuffled(x, rng)) == []


@FEWER
@given(pairs(), st.randoms(use_true_random=False))
def test_unordered_result_does_not_depend_on_order(pair: tuple[Any, Any],
                                                  rng: random.Random) -> None:
    a, b = pair
    differ = JsonDiffer(ALL_UNORDERED)

    def num(v: Any) -> Any:   # 0 and 0.0 are the same JSON number; either may be left over
        return int(v) if type(v) is float and v.is_integer() else v

    def key(d: Any) -> tuple[str, str, str]:
        return d.path, d.kind, repr((num(d.a), num(d.b)))

    first = sorted(map(key, differ.diff(a, b)))
    assert first == sorted(map(key, differ.diff(shuffled(a, rng), shuffled(b, rng))))
