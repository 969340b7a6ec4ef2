"""Rule paths (the JSONPath subset), compilation, merging of global and route rules."""

from __future__ import annotations

import pytest

from shadowproxy.compare import Comparator, RuleCache, compile_rules
from shadowproxy.compare.paths import (
    STAR,
    KeySel,
    parse_pattern,
    pattern_matches,
    render,
    render_pattern,
)
from shadowproxy.compare.rules import NodeRule
from shadowproxy.config import (
    DEFAULT_IGNORED_HEADERS,
    ArrayRule,
    CompareRules,
    Route,
    Scrubber,
    Tolerance,
)
from shadowproxy.errors import ConfigError
from shadowproxy.models import ResponseRecord


def matches(pattern: str, path: tuple[object, ...]) -> bool:
    return pattern_matches(parse_pattern(pattern), path)


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("text, canonical", [
    ("$", "$"),
    ("$.a.b", "$.a.b"),
    ("$['a']['b c']", "$.a['b c']"),
    ('$["it\'s"]', "$['it\\'s']"),
    ("$.items[*].etag", "$.items[*].etag"),
    ("$.items.*.etag", "$.items[*].etag"),
    ("$.items[3]", "$.items[3]"),
    ("$..request_id", "$..request_id"),
    ("$..*", "$..*"),
    ("$..['x y']", "$..['x y']"),
    ("$..[*].id", "$..*.id"),
])
def test_parse_and_canonical_form(text: str, canonical: str) -> None:
    assert render_pattern(parse_pattern(text)) == canonical
    assert parse_pattern(render_pattern(parse_pattern(text))) == parse_pattern(text)


@pytest.mark.parametrize("bad", ["a.b", "$.", "$[", "$[-1]", "$[1:2]", "$..", "$.a[?(@.x)]",
                                 "$ .a"])
def test_unsupported_paths_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(bad)


def test_matching() -> None:
    assert matches("$", ())
    assert matches("$.a.b", ("a", "b"))
    assert not matches("$.a", ("a", "b"))
    assert matches("$.items[*].etag", ("items", 3, "etag"))
    assert matches("$.items[*].etag", ("items", KeySel("id", 7), "etag"))
    assert matches("$.items[*].etag", ("items", STAR, "etag"))
    assert matches("$.items[*].etag", ("items", None, "etag"))      # folded index
    assert matches("$.items[*].etag", ("items", "x", "etag"))       # [*] is .* (any child)
    assert matches("$.items.*.etag", ("items", "x", "etag"))
    assert matches("$.items[3]", ("items", 3)) and not matches("$.items[3]", ("items", 4))
    assert matches("$..id", ("id",)) and matches("$..id", ("a", 1, "b", "id"))
    assert not matches("$..id", ("a", "id", "b"))
    assert matches("$..*", ("a",)) and matches("$..*", ("a", 1)) and not matches("$..*", ())
    assert matches("$.a..b.c", ("a", "x", "b", "c")) and matches("$.a..b.c", ("a", "b", "c"))
    assert matches("$..b..c", ("b", "x", "y", "c"))


def test_render_paths() -> None:
    assert render(()) == "$"
    assert render(("user", "tags", 2)) == "$.user.tags[2]"
    assert render(("odd key", "x-y", "_ok9")) == "$['odd key']['x-y']._ok9"
    assert render(("users", KeySel("id", 7), "name")) == "$.users[id=7].name"
    assert render(("users", KeySel("id", "u'1"))) == "$.users[id='u\\'1']"
    assert render(("users", KeySel("user id", None))) == "$.users['user id'=null]"
    assert render(("tags", STAR)) == "$.tags[*]"


# ---------------------------------------------------------------- compilation and merging


def test_defaults() -> None:
    rules = compile_rules()
    assert rules.headers
    assert rules.ignored_headers == frozenset(DEFAULT_IGNORED_HEADERS)
    assert not rules.has_path_rules and rules.scrubbers == ()
    assert rules.node(("a", 1)) is None


def test_lists_add_up() -> None:
    g = CompareRules(ignore_headers=("X-Global",), ignore=("$.a",), scrubbers=("uuid",))
    r = CompareRules(ignore_headers=("x-route",), ignore=("$.b", "$['a']"),
                     scrubbers=("uuid", Scrubber(r"v\d+", "v#")))
    rules = compile_rules(g, r)
    assert {"x-global", "x-route", "date"} <= rules.ignored_headers
    assert len(rules.ignore) == 2                     # $['a'] is $.a
    assert rules.node(("a",)) == NodeRule(ignored=True)
    assert rules.node(("b",)) == NodeRule(ignored=True)
    assert len(rules.scrubbers) == 2
    assert rules.scrub("id 3f2b1c9e-1111-4a2b-9c3d-0123456789ab v12") == "id <uuid> v#"
    # the global rules alone are unchanged
    assert compile_rules(g).node(("b",)) is None


def test_route_tolerance_and_array_rules_override_the_same_path() -> None:
    g = CompareRules(tolerance=(Tolerance("$.price", abs=1.0),),
                     arrays=(ArrayRule("$.tags", "unordered"), ArrayRule("$.x", "unordered")))
    r = CompareRules(tolerance=(Tolerance("$['price']", abs=0.0, rel=0.5),),
                     arrays=(ArrayRule("$.tags", "ordered"),))
    rules = compile_rules(g, r)
    assert rules.node(("price",)).tolerance == (0.0, 0.5)
    assert rules.node(("tags",)).array == ("ordered", None)
    assert rules.node(("x",)).array == ("unordered", None)
    assert compile_rules(g).node(("price",)).tolerance == (1.0, 0.0)


def test_route_rules_win_over_other_matching_global_patterns() -> None:
    g = CompareRules(tolerance=(Tolerance("$..price", abs=1.0),))
    r = CompareRules(tolerance=(Tolerance("$.items[*].price", abs=0.1),))
    rules = compile_rules(g, r)
    assert rules.node(("items", 0, "price")).tolerance == (0.1, 0.0)
    assert rules.node(("total", "price")).tolerance == (1.0, 0.0)


def test_headers_flag_either_level_can_disable() -> None:
    assert not compile_rules(CompareRules(headers=False), CompareRules()).headers
    assert not compile_rules(CompareRules(), CompareRules(headers=False)).headers


def test_bad_rules_raise_config_error() -> None:
    with pytest.raises(ConfigError, match=r"compare\.ignore\[0\]"):
        compile_rules(CompareRules(ignore=("$.a[?(@.b)]",)))
    with pytest.raises(ConfigError, match=r"route compare\.arrays\[0\]"):
        compile_rules(None, CompareRules(arrays=(ArrayRule("$.a", "keyed"),)))
    with pytest.raises(ConfigError):
        compile_rules(CompareRules(scrubbers=("nope",)))  # type: ignore[arg-type]


def test_decisions_are_cached_per_folded_path() -> None:
    rules = compile_rules(CompareRules(ignore=("$.items[*].etag",)))
    assert rules.node(("items", 0, "etag")) is rules.node(("items", 99, "etag"))
    assert rules.node(("items", KeySel("id", 1), "etag")).ignored
    assert len(rules._cache) == 1


def test_specific_index_patterns_keep_indexes_in_the_cache_key() -> None:
    rules = compile_rules(CompareRules(ignore=("$.items[0]",)))
    assert rules.node(("items", 0)).ignored
    assert rules.node(("items", 1)) is None
    assert rules.node(("items", STAR)) is None


# ---------------------------------------------------------------- per-route lookup


def test_rule_cache_per_route() -> None:
    routes = (
        Route(match="/a", name="a", compare=CompareRules(ignore=("$.x",))),
        Route(match="/b"),
    )
    cache = RuleCache(CompareRules(ignore=("$.g",)), routes)
    assert cache.rules("a").node(("x",)).ignored and cache.rules("a").node(("g",)).ignored
    assert cache.rules("/b") is cache.rules(None) is cache.rules("unknown")
    assert cache.rules(None).node(("x",)) is None
    a = ResponseRecord(200, headers=(("content-type", "application/json"),), body=b'{"x":1,"g":1}')
    b = ResponseRecord(200, headers=(("content-type", "application/json"),), body=b'{"x":2,"g":2}')
    assert cache.compare("a", a, b) == []
    assert [d.path for d in cache.compare(None, a, b)] == ["$.x"]
    assert isinstance(cache.comparator("a"), Comparator)
