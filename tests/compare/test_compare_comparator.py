"""The Comparator on ResponseRecords: status, headers, body dispatch, fast paths."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from typing import Any

import orjson
import pytest

from shadowproxy.compare import Comparator, CompiledRules, compare_responses, compile_rules
from shadowproxy.config import CompareRules
from shadowproxy.models import Difference, ResponseRecord

JSON = ("Content-Type", "application/json")


def rec(body: bytes | Any = b"", *headers: tuple[str, str], status: int = 200,
        **kw: Any) -> ResponseRecord:
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
        headers = headers or (JSON,)
    return ResponseRecord(status, "OK", tuple(headers), body, kw.pop("size", len(body)),
                          kw.pop("sha256", hashlib.sha256(body).hexdigest()), **kw)


def cmp(a: ResponseRecord, b: ResponseRecord, **rules: Any) -> list[Difference]:
    return Comparator(compile_rules(CompareRules(**rules))).compare(a, b)


def test_identical() -> None:
    assert cmp(rec({"a": 1}), rec({"a": 1})) == []


def test_status() -> None:
    assert cmp(rec({"a": 1}, status=200), rec({"a": 1}, status=503)) == [
        Difference("status", "status", "changed", 200, 503)]


def test_reason_phrase_is_not_compared() -> None:
    a, b = rec(b"x"), rec(b"x")
    b.reason = "Fine"
    assert cmp(a, b) == []


def test_order_status_headers_body() -> None:
    a = rec({"a": 1}, JSON, ("X-V", "1"), status=200)
    b = rec({"a": 2}, JSON, ("X-V", "2"), status=201)
    assert [d.section for d in cmp(a, b)] == ["status", "header", "body"]


def test_headers_can_be_switched_off() -> None:
    a, b = rec(b"x", ("X-V", "1")), rec(b"x", ("X-V", "2"))
    assert cmp(a, b) == [Difference("header", "header.x-v", "changed", "1", "2")]
    assert cmp(a, b, headers=False) == []


def test_date_header_is_ignored_by_default() -> None:
    a = rec(b"x", ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"))
    b = rec(b"x", ("Date", "Tue, 02 Jan 2024 00:00:00 GMT"))
    assert cmp(a, b) == []


def test_identical_bytes_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: Any) -> Any:
        raise AssertionError("parsed")

    monkeypatch.setattr(orjson, "loads", boom)
    body = b'{"big": [' + b"1," * 1000 + b"1]}"
    assert cmp(rec(body, JSON), rec(body, JSON)) == []


def test_json_body_differences() -> None:
    a = rec({"user": {"tags": ["a", "b", "c"], "n": 1, "on": True}})
    b = rec({"user": {"tags": ["a", "b", "x"], "n": 1.0, "on": 1, "new": None}})
    assert cmp(a, b) == [
        Difference("body", "$.user.tags[2]", "changed", "c", "x"),
        Difference("body", "$.user.on", "type_changed", True, 1),
        Difference("body", "$.user.new", "added", None, None),
    ]


def test_json_formatting_and_key_order_do_not_matter() -> None:
    a = rec(b'{"a": 1, "b": [1, 2]}', JSON)
    b = rec(b'{\n  "b": [1.0, 2],\n  "a": 1\n}', JSON)
    assert cmp(a, b) == []


def test_json_rules_are_applied() -> None:
    a = rec({"meta": {"generated_at": "t1", "request_id": "r1"},
             "items": [{"etag": "1", "p": 1.0}]})
    b = rec({"meta": {"generated_at": "t2", "request_id": "r2"},
             "items": [{"etag": "2", "p": 1.004}]})
    assert len(cmp(a, b)) == 4
    from shadowproxy.config import Tolerance
    assert cmp(a, b, ignore=("$.meta.generated_at", "$..request_id", "$.items[*].etag"),
               tolerance=(Tolerance("$..p", abs=0.01),)) == []


def test_invalid_json_falls_back_to_text() -> None:
    a = rec(b'{"a": 1,\n oops', JSON)
    b = rec(b'{"a": 1,\n OOPS', JSON)
    assert cmp(a, b) == [Difference("body", "body.line[2]", "changed", " oops", " OOPS")]


def test_json_against_html_error_page_falls_back_to_text() -> None:
    a = rec({"a": 1})
    b = rec(b"<html>\n<body>502</body>\n</html>", ("Content-Type", "text/html"))
    out = cmp(a, b)
    assert out[0] == Difference("header", "header.content-type", "changed",
                                "application/json", "text/html")
    assert {d.path for d in out[1:]} == {"body.line[1]", "body.line[2]", "body.line[3]"}


def test_json_integers_beyond_64_bits_compare_as_doubles() -> None:
    # orjson parses them as floats: documented, like a JavaScript client would see them
    a = rec(b'{"n": 123456789012345678901234567890}', JSON)
    assert cmp(a, rec(b'{"n": 123456789012345678901234567891}', JSON)) == []
    (d,) = cmp(a, rec(b'{"n": 923456789012345678901234567890}', JSON))
    assert d.path == "$.n" and d.kind == "changed"
    u64 = rec(b'{"n": 18446744073709551615}', JSON)
    assert cmp(u64, rec(b'{"n": 18446744073709551614}', JSON))[0].kind == "changed"


def test_very_deep_json_falls_back_to_text() -> None:
    depth = 900
    a = rec(b'{"a":' * depth + b"1" + b"}" * depth, JSON)
    b = rec(b'{"a":' * depth + b"2" + b"}" * depth, JSON)
    out = cmp(a, b)
    assert len(out) == 1 and out[0].path in ("body.line[1]", "$" + ".a" * depth)


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
])
def test_compressed_bodies_are_decoded(encoding: str, encode: Any) -> None:
    a = rec(encode(b'{"a": 1, "b": 2}'), JSON, ("Content-Encoding", encoding))
    b = rec(b'{"a": 1, "b": 3}', JSON)
    out = cmp(a, b)
    assert out[-1] == Difference("body", "$.b", "changed", 2, 3)
    assert out[0].path == "header.content-encoding" and out[0].kind == "removed"
    same = rec(b'{"b": 2, "a": 1}', JSON)
    assert [d.section for d in cmp(a, same)] == ["header"]


def test_brotli_body_is_decoded() -> None:
    brotli = pytest.importorskip("brotli")
    a = rec(brotli.compress(b'{"a": [1, 2]}'), JSON, ("Content-Encoding", "br"))
    b = rec(brotli.compress(b'{"a": [1, 3]}'), JSON, ("Content-Encoding", "br"))
    assert cmp(a, b) == [Difference("body", "$.a[1]", "changed", 2, 3)]


def test_undecodable_body_falls_back_to_bytes() -> None:
    a = rec(b"garbage-1", JSON, ("Content-Encoding", "gzip"))
    b = rec(b"garbage-2", JSON, ("Content-Encoding", "gzip"))
    (d,) = cmp(a, b)
    assert d.path == "body.bytes" and d.kind == "changed"
    assert d.a == {"size": 9, "sha256": a.sha256, "truncated": False}


def test_decoded_size_is_bounded() -> None:
    bomb = gzip.compress(b"[" + b"1," * 100_000 + b"1]")
    a = rec(bomb, JSON, ("Content-Encoding", "gzip"))
    b = rec(gzip.compress(b"[" + b"2," * 100_000 + b"2]"), JSON, ("Content-Encoding", "gzip"))
    (d,) = Comparator(compile_rules(), max_decoded=1000).compare(a, b)
    assert d.path == "body.bytes"


def test_text_bodies_with_scrubbers() -> None:
    a = rec(b"<p>Generated 2024-01-01T10:00:00Z</p>\n"
            b"<p>id 3f2b1c9e-1111-4a2b-9c3d-0123456789ab</p>",
            ("Content-Type", "text/html"))
    b = rec(b"<p>Generated 2024-05-05T11:11:11Z</p>\n"
            b"<p>id 00000000-2222-4a2b-9c3d-ba9876543210</p>",
            ("Content-Type", "text/html"))
    assert [d.path for d in cmp(a, b)] == ["body.line[1]", "body.line[2]"]
    assert cmp(a, b, scrubbers=("timestamp", "uuid")) == []


def test_xml_and_plain_text_use_line_diff() -> None:
    a = rec(b"<a>\n<b>1</b>\n</a>", ("Content-Type", "application/xml"))
    b = rec(b"<a>\n<b>2</b>\n</a>", ("Content-Type", "application/xml"))
    assert cmp(a, b) == [Difference("body", "body.line[2]", "changed", "<b>1</b>", "<b>2</b>")]
    a = rec(b"x\ny", ("Content-Type", "text/plain"))
    b = rec(b"x", ("Content-Type", "text/plain"))
    assert cmp(a, b) == [Difference("body", "body.line[2]", "removed", "y", None)]


def test_text_charset() -> None:
    ct = ("Content-Type", "text/plain; charset=iso-8859-1")
    a, b = rec("café".encode("latin-1"), ct), rec("cafe".encode("latin-1"), ct)
    assert cmp(a, b) == [Difference("body", "body.line[1]", "changed", "café", "cafe")]


def test_form_bodies() -> None:
    ct = ("Content-Type", "application/x-www-form-urlencoded")
    assert cmp(rec(b"a=1&b=2", ct), rec(b"b=2&a=1", ct)) == []
    assert cmp(rec(b"a=1&b=2", ct), rec(b"a=1&b=3&c=", ct)) == [
        Difference("body", "body.form.b", "changed", "2", "3"),
        Difference("body", "body.form.c", "added", None, ""),
    ]


def test_binary_bodies() -> None:
    ct = ("Content-Type", "image/png")
    a, b = rec(b"\x89PNG1", ct), rec(b"\x89PNG22", ct)
    assert cmp(a, b) == [Difference(
        "body", "body.bytes", "changed",
        {"size": 5, "sha256": hashlib.sha256(b"\x89PNG1").hexdigest(), "truncated": False},
        {"size": 6, "sha256": hashlib.sha256(b"\x89PNG22").hexdigest(), "truncated": False})]


def test_binary_sha_is_computed_when_missing() -> None:
    ct = ("Content-Type", "application/octet-stream")
    (d,) = cmp(rec(b"1", ct, sha256=""), rec(b"2", ct, sha256=""))
    assert d.a["sha256"] == hashlib.sha256(b"1").hexdigest()


def test_truncated_bodies_compare_size_and_sha_only() -> None:
    full = b'{"a": "' + b"x" * 100 + b'"}'
    digest = hashlib.sha256(full).hexdigest()
    a = rec(full[:10], JSON, size=len(full), sha256=digest, truncated=True)
    b = rec(full[:10], JSON, size=len(full), sha256=digest, truncated=True)
    assert cmp(a, b) == []
    other = hashlib.sha256(full + b" ").hexdigest()
    c = rec(full[:10], JSON, size=len(full) + 1, sha256=other, truncated=True)
    assert cmp(a, c) == [Difference(
        "body", "body.bytes", "changed",
        {"size": len(full), "sha256": digest, "truncated": True},
        {"size": len(full) + 1, "sha256": other, "truncated": True})]
    # one side truncated, the other complete but equal in size and digest: the same body
    d = rec(full, JSON)
    assert cmp(a, d) == []


def test_errors_are_handled_robustly() -> None:
    a = ResponseRecord(0, error="timeout")
    assert cmp(a, ResponseRecord(0, error="timeout")) == []
    assert cmp(a, rec(b"x")) == [Difference("status", "status", "changed", "error: timeout", 200)]
    assert cmp(rec(b"x"), ResponseRecord(0, error="reset")) == [
        Difference("status", "status", "changed", 200, "error: reset")]


def test_difference_limit() -> None:
    a = rec({str(i): i for i in range(50)}, JSON, ("X-A", "1"))
    b = rec({str(i): -i for i in range(1, 51)}, JSON, ("X-A", "2"))
    assert len(Comparator(compile_rules(), limit=5).compare(a, b)) == 5


def test_compare_responses_convenience() -> None:
    a, b = rec({"a": 1, "t": "x"}), rec({"a": 1, "t": "y"})
    assert len(compare_responses(a, b)) == 1
    assert compare_responses(a, b, CompareRules(ignore=("$.t",))) == []
    rules = compile_rules(CompareRules(ignore=("$.t",)))
    assert isinstance(rules, CompiledRules) and compare_responses(a, b, rules) == []


def test_comparator_default_rules() -> None:
    assert Comparator().compare(rec({"a": 1}), rec({"a": 2}))[0].path == "$.a"
