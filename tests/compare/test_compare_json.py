"""JSON walker: kinds, path rendering, rules (ignore, tolerance, arrays, scrubbers)."""

from __future__ import annotations

from typing import Any

import pytest

from shadowproxy.compare.jsondiff import JsonDiffer, json_equal, short
from shadowproxy.compare.rules import compile_rules
from shadowproxy.config import ArrayRule, CompareRules, Tolerance
from shadowproxy.models import Difference


def diff(a: Any, b: Any, **rules: Any) -> list[Difference]:
    return JsonDiffer(compile_rules(CompareRules(**rules))).diff(a, b)


def triples(diffs: list[Difference]) -> set[tuple[str, str]]:
    return {(d.path, d.kind) for d in diffs}


# ---------------------------------------------------------------- kinds


def test_equal_values_have_no_differences() -> None:
    doc = {"a": [1, {"b": None, "c": "x"}], "d": True, "e": 1.5}
    assert diff(doc, {"d": True, "e": 1.5, "a": [1, {"c": "x", "b": None}]}) == []


def test_changed() -> None:
    assert diff({"user": {"name": "ann"}}, {"user": {"name": "bob"}}) == [
        Difference("body", "$.user.name", "changed", "ann", "bob")]


def test_numbers_compare_numerically() -> None:
    assert diff({"n": 1}, {"n": 1.0}) == []
    assert diff({"n": 1}, {"n": 1.5}) == [Difference("body", "$.n", "changed", 1, 1.5)]


@pytest.mark.parametrize("a, b", [
    (True, 1), (False, 0), (1.0, True), ("1", 1), (None, 0), ({}, []), ([1], {"0": 1}),
    ("x", None),
])
def test_type_changed(a: Any, b: Any) -> None:
    assert triples(diff({"v": a}, {"v": b})) == {("$.v", "type_changed")}


def test_bool_swap_hidden_inside_equal_containers_is_found() -> None:
    # Python says [1, {"x": True}] == [True, {"x": 1}]; JSON does not.
    a = {"items": [{"flag": True, "n": 1}, {"flag": False}], "z": [1, 0]}
    b = {"items": [{"flag": 1, "n": 1}, {"flag": False}], "z": [True, 0]}
    assert triples(diff(a, b)) == {("$.items[0].flag", "type_changed"), ("$.z[0]", "type_changed")}
    # the same when key order differs too (the orjson fast check fails, the type walk decides)
    b2 = {"z": [True, 0], "items": [{"n": 1, "flag": 1}, {"flag": False}]}
    assert triples(diff(a, b2)) == {("$.items[0].flag", "type_changed"), ("$.z[0]", "type_changed")}


def test_added_and_removed() -> None:
    out = diff({"a": 1, "gone": {"x": 1}}, {"a": 1, "new": [1, 2]})
    assert out == [
        Difference("body", "$.gone", "removed", "{…1 key}", None),
        Difference("body", "$.new", "added", None, "[…2 items]"),
    ]


def test_length_changed_reports_prefix_and_extras() -> None:
    out = diff({"t": [1, 2, 3]}, {"t": [1, 5]})
    assert out == [
        Difference("body", "$.t", "length_changed", 3, 2),
        Difference("body", "$.t[1]", "changed", 2, 5),
        Difference("body", "$.t[2]", "removed", 3, None),
    ]
    assert triples(diff([1], [1, {"a": 1}])) == {("$", "length_changed"), ("$[1]", "added")}


def test_root_scalars_and_root_type_change() -> None:
    assert diff(1, 2) == [Difference("body", "$", "changed", 1, 2)]
    assert triples(diff({"a": 1}, [1])) == {("$", "type_changed")}


# ---------------------------------------------------------------- paths and display values


def test_odd_keys_use_bracket_notation() -> None:
    out = diff({"odd key": {"it's": 1, "ok_1": {"é": 1}}},
               {"odd key": {"it's": 2, "ok_1": {"é": 2}}})
    assert {d.path for d in out} == {"$['odd key']['it\\'s']", "$['odd key'].ok_1['é']"}


def test_field_folds_indexes() -> None:
    (d,) = diff({"items": [{"p": 1}, {"p": 2}]}, {"items": [{"p": 1}, {"p": 3}]})
    assert d.path == "$.items[1].p" and d.field == "$.items[*].p"


def test_display_values_are_short() -> None:
    long = "x" * 500
    (d,) = diff({"s": long}, {"s": long + "y"})
    assert len(d.a) == 201 and d.a.endswith("…")
    assert short({"a": 1, "b": 2, "c": 3}) == "{…3 keys}"
    assert short([1]) == "[…1 item]"
    assert short(None) is None and short(2.5) == 2.5


def test_difference_limit() -> None:
    a = {str(i): i for i in range(100)}
    b = {str(i): -i - 1 for i in range(100)}
    assert len(JsonDiffer(compile_rules(), limit=10).diff(a, b)) == 10


def test_json_equal() -> None:
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not json_equal([True], [1])
    assert not json_equal(True, 1)
    assert json_equal(None, None)


# ---------------------------------------------------------------- ignore


def test_ignore_exact_path() -> None:
    a = {"meta": {"generated_at": "2024-01-01", "v": 1}, "x": 1}
    b = {"meta": {"generated_at": "2024-02-02", "v": 1}, "x": 1}
    assert diff(a, b, ignore=("$.meta.generated_at",)) == []
    assert diff(a, b) != []


def test_ignore_recursive_descent() -> None:
    a = {"request_id": 1, "inner": {"request_id": 2, "deep": [{"request_id": 3, "k": 1}]}}
    b = {"request_id": 9, "inner": {"request_id": 8, "deep": [{"request_id": 7, "k": 2}]}}
    assert triples(diff(a, b, ignore=("$..request_id",))) == {("$.inner.deep[0].k", "changed")}


def test_ignore_wildcard_in_arrays() -> None:
    a = {"items": [{"etag": "a", "id": 1}, {"etag": "b", "id": 2}]}
    b = {"items": [{"etag": "c", "id": 1}, {"etag": "d", "id": 3}]}
    assert triples(diff(a, b, ignore=("$.items[*].etag",))) == {("$.items[1].id", "changed")}


def test_ignore_applies_to_added_and_removed_members() -> None:
    assert diff({"a": 1, "debug": 1}, {"a": 1, "trace": 2}, ignore=("$.debug", "$['trace']")) == []


def test_ignore_specific_index_and_root() -> None:
    assert diff([1, 2, 3], [9, 2, 4], ignore=("$[0]",)) == [
        Difference("body", "$[2]", "changed", 3, 4)]
    assert diff({"a": 1}, {"a": 2}, ignore=("$",)) == []


def test_ignore_star_member() -> None:
    assert diff({"m": {"a": 1, "b": 2}}, {"m": {"a": 3, "c": 4}}, ignore=("$.m.*",)) == []


# ---------------------------------------------------------------- tolerance


def test_tolerance_absolute() -> None:
    rules = {"tolerance": (Tolerance("$.price", abs=0.01),)}
    assert diff({"price": 10.0}, {"price": 10.005}, **rules) == []
    assert triples(diff({"price": 10.0}, {"price": 10.02}, **rules)) == {("$.price", "changed")}


def test_tolerance_relative_and_inherited_by_descendants() -> None:
    rules = {"tolerance": (Tolerance("$.totals", rel=0.01),)}
    assert diff({"totals": {"net": 1000, "gross": [200]}},
                {"totals": {"net": 1009, "gross": [201]}}, **rules) == []
    assert triples(diff({"totals": {"net": 1000}}, {"totals": {"net": 1011}}, **rules)) == {
        ("$.totals.net", "changed")}


def test_tolerance_does_not_excuse_type_changes() -> None:
    rules = {"tolerance": (Tolerance("$..n", abs=5),)}
    assert triples(diff({"n": 1}, {"n": True}, **rules)) == {("$.n", "type_changed")}
    assert triples(diff({"n": 1}, {"n": "1"}, **rules)) == {("$.n", "type_changed")}


# ---------------------------------------------------------------- arrays


def test_ordered_is_default() -> None:
    assert triples(diff({"t": [1, 2]}, {"t": [2, 1]})) == {
        ("$.t[0]", "changed"), ("$.t[1]", "changed")}


def test_unordered() -> None:
    rules = {"arrays": (ArrayRule("$.tags", "unordered"),)}
    assert diff({"tags": ["a", "b", "c"]}, {"tags": ["c", "a", "b"]}, **rules) == []
    out = diff({"tags": ["a", "b", "b"]}, {"tags": ["b", "a", "d", "e"]}, **rules)
    assert sorted((d.kind, d.a, d.b) for d in out) == [
        ("added", None, "d"), ("added", None, "e"), ("removed", "b", None)]
    assert {d.path for d in out} == {"$.tags[*]"}


def test_unordered_objects_with_ignores_and_tolerance_inside() -> None:
    rules = {"arrays": (ArrayRule("$.items", "unordered"),), "ignore": ("$.items[*].etag",),
             "tolerance": (Tolerance("$.items[*].price", abs=0.5),)}
    a = {"items": [{"id": 1, "etag": "x", "price": 1.0}, {"id": 2, "etag": "y", "price": 5}]}
    b = {"items": [{"id": 2, "etag": "q", "price": 5.2}, {"id": 1, "etag": "r", "price": 1}]}
    assert diff(a, b, **rules) == []
    b["items"][0]["price"] = 9
    out = diff(a, b, **rules)
    assert [(d.path, d.kind) for d in out] == [("$.items[*]", "removed"), ("$.items[*]", "added")]


def test_unordered_distinguishes_bool_from_number() -> None:
    rules = {"arrays": (ArrayRule("$", "unordered"),)}
    assert triples(diff([1, True], [True, True], **rules)) == {
        ("$[*]", "removed"), ("$[*]", "added")}
    assert diff([1, 2.0], [2, 1.0], **rules) == []


def test_nested_unordered_inside_unordered() -> None:
    rules = {"arrays": (ArrayRule("$[*]", "unordered"), ArrayRule("$", "unordered"))}
    assert diff([[1, 2], [3, 4]], [[4, 3], [2, 1]], **rules) == []


def test_keyed() -> None:
    rules = {"arrays": (ArrayRule("$.users", "keyed", "id"),)}
    a = {"users": [{"id": 7, "name": "ann"}, {"id": 8, "name": "bo"}, {"id": "x9", "n": 1}]}
    b = {"users": [{"id": 8, "name": "bo"}, {"id": 7, "name": "anne"}, {"id": 10}]}
    out = diff(a, b, **rules)
    assert out == [
        Difference("body", "$.users[id=7].name", "changed", "ann", "anne"),
        Difference("body", "$.users[id='x9']", "removed", "{…2 keys}", None),
        Difference("body", "$.users[id=10]", "added", None, "{…1 key}"),
    ]
    assert diff({"users": a["users"][::-1]}, a, **rules) == []


def test_keyed_wildcard_rules_apply_inside_elements() -> None:
    rules = {"arrays": (ArrayRule("$.users", "keyed", "id"),), "ignore": ("$.users[*].seen",)}
    assert diff({"users": [{"id": 1, "seen": 1}]}, {"users": [{"id": 1, "seen": 2}]}, **rules) == []


def test_keyed_falls_back_to_unordered_when_not_keyable() -> None:
    rules = {"arrays": (ArrayRule("$.u", "keyed", "id"),)}
    # duplicate key: compared as a multiset
    assert diff({"u": [{"id": 1}, {"id": 1, "x": 2}]}, {"u": [{"id": 1, "x": 2}, {"id": 1}]},
                **rules) == []
    out = diff({"u": [1, 2]}, {"u": [2, 3]}, **rules)
    assert triples(out) == {("$.u[*]", "removed"), ("$.u[*]", "added")}


def test_scrubbers_apply_to_json_strings() -> None:
    a = {"msg": "created at 2024-01-01T10:00:00Z by 3f2b1c9e-1111-4a2b-9c3d-0123456789ab"}
    b = {"msg": "created at 2024-03-05T11:22:33.5+02:00 by 00000000-2222-4a2b-9c3d-ba9876543210"}
    assert diff(a, b, scrubbers=("timestamp", "uuid")) == []
    assert triples(diff(a, b, scrubbers=("timestamp",))) == {("$.msg", "changed")}
