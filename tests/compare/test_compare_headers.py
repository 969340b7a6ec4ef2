"""Header comparison: ignore list, case, multi-values, Set-Cookie attributes."""

from __future__ import annotations

from shadowproxy.compare.headers import compare_headers, cookie_signature
from shadowproxy.compare.rules import compile_rules
from shadowproxy.config import CompareRules
from shadowproxy.models import Difference

IGNORED = compile_rules().ignored_headers


def hdiff(a, b, ignored=IGNORED):  # type: ignore[no-untyped-def]
    return compare_headers(tuple(a), tuple(b), ignored)


def test_default_ignored_headers() -> None:
    a = [("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("X-Request-Id", "1"), ("Server", "a"),
         ("Content-Length", "10"), ("ETag", '"x"')]
    b = [("date", "Tue, 02 Jan 2024 00:00:00 GMT"), ("x-request-id", "2"), ("Content-Length", "12")]
    assert hdiff(a, b) == []


def test_rules_add_ignored_headers() -> None:
    ignored = compile_rules(CompareRules(ignore_headers=("X-Build",))).ignored_headers
    assert hdiff([("X-Build", "1")], [("x-build", "2")], ignored) == []
    assert hdiff([("X-Build", "1")], [("x-build", "2")]) == [
        Difference("header", "header.x-build", "changed", "1", "2")]


def test_names_are_case_insensitive_and_kinds() -> None:
    a = [("Content-Type", "application/json"), ("X-Old", "1"), ("Cache-Control", "no-cache")]
    b = [("content-type", "application/json"), ("X-New", "2"), ("cache-control", "max-age=60")]
    assert hdiff(a, b) == [
        Difference("header", "header.x-old", "removed", "1", None),
        Difference("header", "header.cache-control", "changed", "no-cache", "max-age=60"),
        Difference("header", "header.x-new", "added", None, "2"),
    ]


def test_multi_values_compare_as_a_list() -> None:
    assert hdiff([("Vary", "Accept"), ("Vary", "Origin")], [("vary", "Accept, Origin")]) == []
    swapped = [("Vary", "Origin"), ("Vary", "Accept")]
    assert hdiff([("Vary", "Accept"), ("Vary", "Origin")], swapped) == [
        Difference("header", "header.vary", "changed", "Accept, Origin", "Origin, Accept")]
    assert hdiff([("Link", "<a>"), ("Link", "<b>")], [("Link", "<a>")]) == [
        Difference("header", "header.link", "changed", "<a>, <b>", "<a>")]


def test_set_cookie_values_are_not_compared() -> None:
    a = [("Set-Cookie", "sid=abc; Path=/; HttpOnly; Secure; Max-Age=3600; SameSite=Lax")]
    b = [("set-cookie", "sid=xyz; path=/; secure; httponly; samesite=lax; max-age=60")]
    assert hdiff(a, b) == []


def test_set_cookie_attributes_are_compared_per_cookie_name() -> None:
    a = [("Set-Cookie", "sid=1; Path=/; HttpOnly"), ("Set-Cookie", "lang=en; Path=/"),
         ("Set-Cookie", "old=1")]
    b = [("Set-Cookie", "sid=2; Path=/"), ("Set-Cookie", "lang=de; Path=/"),
         ("Set-Cookie", "new=1; Expires=Wed, 21 Oct 2025 07:28:00 GMT")]
    assert hdiff(a, b) == [
        Difference("header", "header.set-cookie.sid", "changed", "Path=/; HttpOnly", "Path=/"),
        Difference("header", "header.set-cookie.old", "removed", "", None),
        Difference("header", "header.set-cookie.new", "added", None, "Expires"),
    ]


def test_cookie_signature() -> None:
    assert cookie_signature("a=b=c; Domain=.Example.com; Expires=x; Partitioned; Foo=1") == \
        ("a", "Domain=example.com; Expires; Partitioned")
    assert cookie_signature("x=1; SameSite=None; Secure") == ("x", "Secure; SameSite=none")


def test_same_cookie_name_twice_compares_the_set_of_attribute_signatures() -> None:
    a = [("Set-Cookie", "s=1; Path=/a"), ("Set-Cookie", "s=1; Path=/b")]
    assert hdiff(a, list(reversed(a))) == []
    (d,) = hdiff(a, a[:1])
    assert d.path == "header.set-cookie.s" and d.a == "Path=/a | Path=/b" and d.b == "Path=/a"
