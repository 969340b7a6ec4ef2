"""The one JSONPath grammar (:mod:`shadowproxy.jsonpath`).

What ``shadowproxy validate`` (the config loader) accepts, the run accepts, and the
comparator's rules and the redactor select the same locations with it; what is
outside the grammar is refused by the loader, naming file, line and key.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowproxy.cli import main as cli_main
from shadowproxy.compare import Comparator, RuleCache, compile_rules
from shadowproxy.compare.paths import render as render_location
from shadowproxy.config import DEFAULT_REDACTED_FIELDS, CompareRules, RedactConfig, loads
from shadowproxy.errors import ConfigError
from shadowproxy.jsonpath import (
    ANY,
    DESC,
    SOME_INDEX,
    JSONPathError,
    Matcher,
    Pattern,
    matches,
    parse,
    render,
)
from shadowproxy.models import Difference, ResponseRecord
from shadowproxy.redact import Redactor, concrete_path

KEY = b"k" * 32
JSON_HEADERS = (("Content-Type", "application/json"),)
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# paths that the comparator's old parser (and so `validate`) accepted and the
# redactor's old parser refused at run start, or that are easy to read two ways
TRICKY = ["$..[2].token", "$..[2].pin", "$..*", "$['a.b']", "$.a[*]..id", "$..['x y']",
          "$..[*]", "$[ 'a' ][ 0 ]", '$["it\'s"]']


# ---------------------------------------------------------------- helpers


def config_text(path: str) -> str:
    """A config with ``path`` as a comparator rule and a redacted field (JSON-quoted:
    a JSON string is a YAML double-quoted scalar)."""
    q = orjson.dumps(path).decode()
    return ("upstreams: {primary: 'http://a:1'}\n"
            "compare:\n"
            f"  ignore: [{q}]\n"
            f"  tolerance: [{{path: {q}, abs: 1}}]\n"
            f"  arrays: [{{path: {q}, mode: unordered}}]\n"
            "routes:\n"
            f"  - {{match: /r, compare: {{ignore: [{q}]}}}}\n"
            "redact:\n"
            f"  fields: [{q}]\n")


def locations(doc: Any, loc: tuple[Any, ...] = ()):
    """Every location of ``doc`` (the root first)."""
    yield loc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from locations(v, loc + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from locations(v, loc + (i,))


def leaves(doc: Any) -> set[tuple[Any, ...]]:
    return {loc for loc in locations(doc) if not isinstance(get(doc, loc), (dict, list))}


def get(doc: Any, loc: tuple[Any, ...]) -> Any:
    for seg in loc:
        doc = doc[seg]
    return doc


def fold(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(s.lower() if isinstance(s, str) else s for s in loc)


def fold_pattern(p: Pattern) -> Pattern:
    return tuple(("key", t[1].lower()) if t[0] == "key" else t for t in p)


def comparator_selects(rules, loc: tuple[Any, ...]) -> bool:
    """Does the comparator ignore exactly this location (what its walker asks)?"""
    nr = rules.node(loc)
    return nr is not None and nr.ignored


def redactor_selects(red: Redactor, loc: tuple[Any, ...]) -> bool:
    """Does the redactor's matcher select exactly this location? (Stepped as its
    document walk steps it: keys lower-cased, array indexes as they are.)"""
    m = red.matcher
    if not loc:
        return m.root_hit
    states, hit = m.initial, False
    for seg in loc:
        states, hit = m.step(states, seg.lower() if isinstance(seg, str) else seg)
    return hit


def bump(doc: Any) -> Any:
    """``doc`` with every leaf changed (and nothing else)."""
    if isinstance(doc, dict):
        return {k: bump(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [bump(v) for v in doc]
    if isinstance(doc, str):
        return doc + "!"
    return doc + 1


def response(doc: Any) -> ResponseRecord:
    return ResponseRecord(status=200, headers=JSON_HEADERS, body=orjson.dumps(doc))


def leaves_kept_by_comparator(ignore: tuple[str, ...], doc: Any) -> set[str]:
    """Leaves of ``doc`` whose change the comparator does not report under ``ignore``."""
    diffs = Comparator(compile_rules(CompareRules(ignore=ignore))).compare(
        response(doc), response(bump(doc)))
    reported = {d.path for d in diffs}
    return {render_location(loc) for loc in leaves(doc)} - reported


def leaves_masked_by_redactor(fields: tuple[str, ...], doc: Any) -> set[str]:
    """Leaves of ``doc`` inside a value the redactor masked under ``fields``."""
    red = Redactor(RedactConfig(fields=fields), KEY)
    out = red.redact_json(doc)
    masked = set()
    for loc in leaves(doc):
        node = out
        for seg in loc:
            if Redactor.is_mask(node):
                break
            node = node[seg]
        if Redactor.is_mask(node):
            masked.add(render_location(loc))
    return masked


# ---------------------------------------------------------------- the grammar


@pytest.mark.parametrize("text, tokens, canonical", [
    ("$", (), "$"),
    ("$..[2].token", (DESC, ("index", 2), ("key", "token")), "$..[2].token"),
    ("$..*", (DESC, ANY), "$..*"),
    ("$..[*]", (DESC, ANY), "$..*"),
    ("$['a.b']", (("key", "a.b"),), "$['a.b']"),
    ("$.a[*]..id", (("key", "a"), ANY, DESC, ("key", "id")), "$.a[*]..id"),
    ("$..['x y']", (DESC, ("key", "x y")), "$..['x y']"),
    ("$[ 'a' ][ 0 ][ * ]", (("key", "a"), ("index", 0), ANY), "$.a[0][*]"),
    ('$["it\'s"]["q\\"d"]', (("key", "it's"), ("key", 'q"d')), "$['it\\'s']['q\"d']"),
    ("$['back\\\\slash']", (("key", "back\\slash"),), "$['back\\\\slash']"),
    ("$.x-request-id.$ref.@at", (("key", "x-request-id"), ("key", "$ref"), ("key", "@at")),
     "$['x-request-id']['$ref']['@at']"),
    ("$.a[007]", (("key", "a"), ("index", 7)), "$.a[7]"),
    ("$['']", (("key", ""),), "$['']"),
])
def test_parse_and_render(text: str, tokens: Pattern, canonical: str) -> None:
    assert parse(text) == tokens
    assert render(tokens) == canonical
    assert parse(canonical) == tokens


@pytest.mark.parametrize("bad, words", [
    ("a.b", "starts with $"),
    ("@.a", "starts with $"),
    ("$.", "ends with '.'"),
    ("$..", "ends with '..'"),
    ("$...a", "'...'"),
    ("$ .a", "blank space"),
    ("$.2fa", "write ['2fa']"),
    ("$.x y", "write ['x y']"),
    ("$..x y", "write ..['x y']"),
    ("$.café", "write ['café']"),
    ("$[", "unclosed"),
    ("$[]", "empty brackets"),
    ("$[-1]", "negative indexes"),
    ("$[1:2]", "slices"),
    ("$[:2]", "slices"),
    ("$[0,1]", "unions"),
    ("$['a','b']", "unions"),
    ("$.a[?(@.x)]", "filters"),
    ("$[(@.length-1)]", "script expressions"),
    ("$['a", "unterminated"),
    ("$['a\\nb']", "unsupported escape"),
    ("$['\\u0041']", "unsupported escape"),
    ("$.a[x]", "expected a quoted name"),
    ("$.a['b'x]", "expected ']'"),
    ("$x", "expected '.'"),
])
def test_refused_paths_say_why(bad: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse(bad)
    assert words in str(info.value), str(info.value)
    if isinstance(info.value, JSONPathError):
        assert 0 < info.value.position <= len(bad)


# ---------------------------------------------------------------- validate = run


@pytest.mark.parametrize("path", TRICKY)
def test_what_validate_accepts_run_accepts(path: str, tmp_path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(config_text(path))
    assert cli_main(["validate", "-c", str(file)]) == 0
    cfg = loads(config_text(path))
    assert cfg.redact.fields == (path,) and cfg.compare.ignore == (path,)
    # what `run` builds from these paths at start
    red = Redactor.from_config(cfg.redact, {})
    assert red.matcher.patterns[-1] == fold_pattern(parse(path))
    cache = RuleCache.from_config(cfg)
    assert cache.rules(None).ignore == (parse(path),)
    assert cache.rules("/r").ignore == (parse(path),)


@pytest.mark.parametrize("bad", ["$.2fa", "$..x y", "$[-1]", "$['a','b']", "$.a[?(@.x)]",
                                 "$['a\\nb']", "$..", "$[1:2]"])
@pytest.mark.parametrize("where, key, line", [
    ("ignore", "compare.ignore[1]", 5),
    ("tolerance", "compare.tolerance[1].path", 5),
    ("arrays", "compare.arrays[1].path", 5),
    ("route", "routes[0].compare.ignore[1]", 6),
    ("redact", "redact.fields[1]", 5),
])
def test_validate_refuses_naming_file_line_and_key(bad: str, where: str, key: str,
                                                   line: int) -> None:
    q = orjson.dumps(bad).decode()
    head = "upstreams: {primary: 'http://a:1'}\n"
    text = {
        "ignore": f"compare:\n  ignore:\n    - $.ok\n    - {q}\n",
        "tolerance": f"compare:\n  tolerance:\n    - {{path: $.ok}}\n    - {{path: {q}}}\n",
        "arrays": f"compare:\n  arrays:\n    - {{path: $.ok}}\n    - {{path: {q}}}\n",
        "route": f"routes:\n  - match: /r\n    compare:\n      ignore: [$.ok,\n        {q}]\n",
        "redact": f"redact:\n  fields:\n    - $..ok\n    - {q}\n",
    }[where]
    with pytest.raises(ConfigError) as info:
        loads(head + text, file="bad.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("bad.yaml", line, key), str(err)
    assert str(err).startswith(f"bad.yaml:{line}: {key}: ")
    assert "JSONPath" in str(err) and repr(bad) in str(err)


def test_validate_cli_prints_the_key(tmp_path, capsys) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("upstreams: {primary: 'http://a:1'}\nredact:\n  fields: ['$..x y']\n")
    assert cli_main(["validate", "-c", str(file)]) == 2
    err = capsys.readouterr().err
    assert f"{file}:3: redact.fields[0]: unsupported JSONPath" in err


# ---------------------------------------------------------------- same meaning, same document

DOC = {
    "a": [{"id": 1, "pin": 10, "token": "t-0"},
          {"id": 2, "pin": 11},
          {"id": 3, "pin": 12, "token": "t-2", "b": {"id": 4, "pin": 13}}],
    "a.b": "dotted",
    "x y": {"id": 5, "x y": 6},
    "deep": [[0, 1, {"pin": 14, "token": "t-deep"}], [7]],
    "it's": 8,
}


@pytest.mark.parametrize("path, selected", [
    ("$..[2].pin", {"$.a[2].pin", "$.deep[0][2].pin"}),
    ("$..*", {"$.a", "$['a.b']", "$['x y']", "$.deep", "$['it\\'s']"}),
    ("$['a.b']", {"$['a.b']"}),
    ("$.a[*]..id", {"$.a[0].id", "$.a[1].id", "$.a[2].id", "$.a[2].b.id"}),
    ("$..['x y']", {"$['x y']"}),
    ("$..[*]", {"$.a", "$['a.b']", "$['x y']", "$.deep", "$['it\\'s']"}),
    ("$[ 'a' ][ 0 ]", {"$.a[0]"}),
    ('$["it\'s"]', {"$['it\\'s']"}),
    ("$..[2]", {"$.a[2]", "$.deep[0][2]"}),
])
def test_redaction_and_comparator_ignore_select_the_same_nodes(path: str, selected) -> None:
    """Over one document: the outermost nodes the comparator skips are the ones the
    redactor masks (``token`` is redacted by default: the comparator gets it as a rule
    too)."""
    doc = DOC
    tokens = {"$.a[0].token", "$.a[2].token", "$.deep[0][2].token"}
    # the selected nodes not beneath another selected one
    found = {loc for loc in locations(doc) if matches(parse(path), loc)}
    outer = {loc for loc in found if not any(loc[:n] in found for n in range(len(loc)))}
    assert {render_location(loc) for loc in outer} == selected
    kept = leaves_kept_by_comparator((*DEFAULT_REDACTED_FIELDS, path), doc)
    masked = leaves_masked_by_redactor((path,), doc)
    assert kept == masked
    under = {render_location(loc) for loc in leaves(doc)
             if any(render_location(loc[:n]) in selected for n in range(len(loc) + 1))}
    assert masked == under | tokens


def test_the_issue_path_selects_the_same_tokens() -> None:
    """``$..[2].token``: the token of every third array element, at any depth; the
    comparator ignores those, the redactor's pattern selects those (and ``$..token``,
    on by default, masks the others as well)."""
    expect = {("a", 2, "token"), ("deep", 0, 2, "token")}
    rules = compile_rules(CompareRules(ignore=("$..[2].token",)))
    assert {loc for loc in locations(DOC) if comparator_selects(rules, loc)} == expect
    red = Redactor(RedactConfig(fields=("$..[2].token",)), KEY)
    only = Matcher([red.matcher.patterns[-1]])
    assert {loc for loc in locations(DOC) if loc and _hit(only, loc)} == expect
    diffs = Comparator(rules).compare(response(DOC), response(bump(DOC)))
    assert {d.path for d in diffs} >= {"$.a[0].token"}
    assert not {d.path for d in diffs} & {"$.a[2].token", "$.deep[0][2].token"}
    out = red.redact_json(DOC)
    assert Redactor.is_mask(out["a"][2]["token"]) and Redactor.is_mask(out["deep"][0][2]["token"])


def _hit(m: Matcher, loc: tuple[Any, ...]) -> bool:
    states, hit = m.initial, False
    for seg in loc:
        states, hit = m.step(states, seg)
    return hit


def test_a_folded_index_is_some_index() -> None:
    """A difference at a keyed or unordered element (``[id=7]``, ``[*]``) may be at any
    index: the redactor treats it as selected by every ``[N]`` (the safe side)."""
    assert concrete_path("$.users[id=7].Pin") == ("users", SOME_INDEX, "pin")
    assert concrete_path("$.tags[*]") == ("tags", SOME_INDEX)
    assert matches(parse("$.users[2].pin"), ("users", SOME_INDEX, "pin"))
    assert not matches(parse("$.users[2].pin"), ("users", None, "pin"))   # comparator's fold
    red = Redactor(RedactConfig(fields=("$.users[2].pin",)), KEY)
    d = red.redact_differences([Difference("body", "$.users[id=7].pin", "changed", "1234", "x")])
    assert d[0].a == red.mask("1234")


# ---------------------------------------------------------------- properties

NAMES = ["a", "c", "id", "x y", "a.b", "it's", "", "zz", "q\"d", "b\\s"]
LOWER_KEYS = ["a", "c", "id", "x y", "a.b", "it's", ""]
MIXED_KEYS = LOWER_KEYS + ["A", "Id", "X Y"]

SELECTOR = st.one_of(
    st.sampled_from(NAMES + ["A", "ID"]).map(lambda n: ("key", n)),
    st.integers(0, 3).map(lambda n: ("index", n)),
    st.just(ANY),
)
PATTERN = st.lists(st.tuples(st.booleans(), SELECTOR), max_size=4).map(
    lambda segs: tuple(t for desc, sel in segs for t in ((DESC, sel) if desc else (sel,))))


@st.composite
def spelled(draw: Any, pattern: Pattern) -> str:
    """One of the ways to write ``pattern`` in the grammar."""
    out = ["$"]
    blank = st.sampled_from(["", " ", "  ", "\t"])
    for tok in pattern:
        kind = tok[0]
        if kind == "desc":
            out.append("..")
            continue
        dot = "" if out[-1] == ".." else "."
        if kind == "any":
            out.append(draw(st.sampled_from([dot + "*", f"[{draw(blank)}*{draw(blank)}]"])))
        elif kind == "index":
            zeros = draw(st.sampled_from(["", "0", "00"]))
            out.append(f"[{draw(blank)}{zeros}{tok[1]}{draw(blank)}]")
        else:
            name = tok[1]
            forms = []
            if name and (name[0].isalpha() or name[0] == "_") and \
                    all(c.isalnum() or c in "_-$@" for c in name) and name.isascii():
                forms.append(dot + name)
            single = "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
            double = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            forms += [f"[{draw(blank)}{single}{draw(blank)}]", f"[{double}]"]
            out.append(draw(st.sampled_from(forms)))
    return "".join(out)


@SETTINGS
@given(st.data())
def test_paths_round_trip(data: Any) -> None:
    pattern = data.draw(PATTERN)
    text = data.draw(spelled(pattern))
    assert parse(text) == pattern, text
    assert parse(render(pattern)) == pattern
    assert render(parse(text)) == render(pattern)


@SETTINGS
@given(st.text(alphabet="$.[]*'\"\\ 0129ab-?:,@(é", max_size=12))
def test_any_text_parses_or_is_refused_cleanly(tail: str) -> None:
    text = "$" + tail
    try:
        p = parse(text)
    except ValueError as exc:
        assert "JSONPath" in str(exc)
        with pytest.raises(ConfigError, match=r"redact\.fields\[0\]"):
            Redactor(RedactConfig(fields=(text,)), KEY)
        return
    assert parse(render(p)) == p
    Redactor(RedactConfig(fields=(text,)), KEY)        # what parses, the redactor takes
    compile_rules(CompareRules(ignore=(text,)))       # and so do the comparator's rules


@SETTINGS
@given(st.data())
def test_config_accepts_every_path_of_the_grammar(data: Any) -> None:
    text = data.draw(spelled(data.draw(PATTERN)))
    cfg = loads(config_text(text))
    Redactor.from_config(cfg.redact, {})
    RuleCache.from_config(cfg)


def json_docs(keys: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.integers(0, 9),
        lambda kids: st.lists(kids, min_size=1, max_size=4)
        | st.dictionaries(st.sampled_from(keys), kids, min_size=1, max_size=4),
        max_leaves=16,
    )


@SETTINGS
@given(PATTERN, json_docs(MIXED_KEYS))
def test_comparator_and_redactor_select_the_same_locations(pattern: Pattern, doc: Any) -> None:
    """For every location of a random document: the comparator ignores it exactly when
    the redactor's matcher selects it, names compared case-insensitively on the
    redactor's side (the comparator, on lower-cased names, agrees; with no upper case
    anywhere they agree as they are)."""
    text = render(pattern)
    red = Redactor(RedactConfig(fields=(text,)), KEY)
    rules = compile_rules(CompareRules(ignore=(text,)))
    folded = compile_rules(CompareRules(ignore=(render(fold_pattern(pattern)),)))
    plain = all(t[0] != "key" or t[1] == t[1].lower() for t in pattern)
    for loc in locations(doc):
        by_redactor = redactor_selects(red, loc)
        assert by_redactor == comparator_selects(folded, fold(loc)), (text, loc)
        assert by_redactor == matches(fold_pattern(pattern), fold(loc))
        if plain and fold(loc) == loc:
            assert by_redactor == comparator_selects(rules, loc) == matches(pattern, loc)


@settings(SETTINGS, max_examples=100)
@given(PATTERN, json_docs(LOWER_KEYS))
def test_redaction_masks_what_the_comparator_ignores(pattern: Pattern, doc: Any) -> None:
    """End to end over a random document with every leaf changed: the leaves whose change
    the comparator does not report (ignore = the redactor's fields, defaults included)
    are the leaves the redactor masks."""
    pattern = fold_pattern(pattern)
    text = render(pattern)
    kept = leaves_kept_by_comparator((*DEFAULT_REDACTED_FIELDS, text), doc)
    assert kept == leaves_masked_by_redactor((text,), doc), text


@SETTINGS
@given(st.lists(st.one_of(st.sampled_from(MIXED_KEYS + NAMES), st.integers(0, 30)),
                max_size=5))
def test_difference_paths_are_in_the_grammar(loc: list[Any]) -> None:
    """The comparator's rendered difference paths parse back to their locations (the
    redactor reads them so, with names lower-cased)."""
    text = render_location(tuple(loc))
    p = parse(text)
    assert all(t[0] in ("key", "index") for t in p)
    assert tuple(t[1] for t in p) == tuple(loc)
    assert concrete_path(text) == fold(tuple(loc))
