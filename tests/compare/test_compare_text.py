"""Text line diff, scrubbers and form bodies."""

from __future__ import annotations

import pytest

from shadowproxy.compare.form import form_diff
from shadowproxy.compare.rules import compile_scrubbers
from shadowproxy.compare.text import excerpt, text_diff
from shadowproxy.config import Scrubber
from shadowproxy.models import Difference


def scrubber(*names: str | Scrubber):  # type: ignore[no-untyped-def]
    compiled = compile_scrubbers(names)

    def scrub(text: str) -> str:
        for regex, replace in compiled:
            text = regex.sub(replace, text)
        return text

    return scrub


def test_equal_text() -> None:
    assert text_diff("a\nb\n", "a\nb\n") == []


def test_changed_added_removed_lines() -> None:
    a = "head\none\ntwo\nthree\ntail\n"
    b = "head\nONE\nthree\nnew\ntail\n"
    assert text_diff(a, b) == [
        Difference("body", "body.line[2]", "changed", "one", "ONE"),
        Difference("body", "body.line[3]", "removed", "two", None),
        Difference("body", "body.line[4]", "added", None, "new"),
    ]


def test_line_numbers_of_added_lines_are_in_the_second_text() -> None:
    out = text_diff("a\nb", "x\ny\na\nb")
    assert [(d.path, d.kind, d.b) for d in out] == [
        ("body.line[1]", "added", "x"), ("body.line[2]", "added", "y")]


def test_long_lines_show_a_window_around_the_change() -> None:
    a = "x" * 1000 + "A" + "y" * 1000
    b = "x" * 1000 + "B" + "y" * 1000
    (d,) = text_diff(a, b)
    assert d.path == "body.line[1]" and "A" in d.a and "B" in d.b
    assert d.a.startswith("…") and d.a.endswith("…") and len(d.a) == 202
    assert excerpt("short") == "short"


def test_huge_middles_fall_back_to_positional_pairing() -> None:
    a = "\n".join(f"line {i}" for i in range(5000))
    b = "\n".join(f"LINE {i}" for i in range(5000)) + "\nextra"
    out = text_diff(a, b, limit=100000)
    assert len(out) == 5001 and out[-1].kind == "added" and out[0].kind == "changed"
    assert len(text_diff(a, b, limit=10)) == 10


@pytest.mark.parametrize("a, b", [
    ("at 2024-01-01T10:00:00Z ok", "at 2025-12-31T23:59:59.123456+05:30 ok"),
    ("at 2024-01-01 10:00:00 ok", "at 2024-01-02 11:00 ok"),
    ("Date: Tue, 02 Jan 2024 10:00:00 GMT", "Date: Wed, 31 Dec 2025 01:02:03 GMT"),
    ("ts=1700000000 x", "ts=1712345678 x"),
    ("ts=1700000000123 x", "ts=1712345678999 x"),
])
def test_timestamp_scrubber(a: str, b: str) -> None:
    assert text_diff(a, b) != []
    assert text_diff(a, b, scrubber("timestamp")) == []


def test_timestamp_scrubber_leaves_plain_dates_and_other_numbers() -> None:
    scrub = scrubber("timestamp")
    assert scrub("born 1990-05-01, phone 555123456, big 99999999999") == \
        "born 1990-05-01, phone 555123456, big 99999999999"


def test_uuid_hex_number_scrubbers() -> None:
    a = "id=3f2b1c9e-1111-4a2b-9c3d-0123456789ab etag=0123456789abcdef0123 n=12.5"
    b = "id=00000000-2222-4a2b-9c3d-ba9876543210 etag=fedcba9876543210ffff n=-3"
    assert text_diff(a, b, scrubber("uuid", "hex")) != []
    assert text_diff(a, b, scrubber("uuid", "hex", "number")) == []
    assert scrubber("hex")("short abcdef012345 long abcdef0123456789") == \
        "short abcdef012345 long <hex>"


def test_custom_scrubber() -> None:
    scrub = scrubber(Scrubber(r"nonce=\w+", "nonce=?"))
    assert text_diff("<p nonce=abc>hi</p>", "<p nonce=xyz>hi</p>", scrub) == []


def test_scrubbed_lines_are_displayed_in_original_form() -> None:
    (d,) = text_diff("t=1700000000 a", "t=1700000001 b", scrubber("timestamp"))
    assert (d.a, d.b) == ("t=1700000000 a", "t=1700000001 b")


# ---------------------------------------------------------------- forms


def test_form_diff() -> None:
    a = "a=1&b=x&b=y&gone=&same=s"
    b = "a=2&b=x&b=z&same=s&new=v%20w"
    assert form_diff(a, b) == [
        Difference("body", "body.form.a", "changed", "1", "2"),
        Difference("body", "body.form.b", "changed", ["x", "y"], ["x", "z"]),
        Difference("body", "body.form.gone", "removed", "", None),
        Difference("body", "body.form.new", "added", None, "v w"),
    ]
    assert form_diff("b=1&a=2", "a=2&b=1") == []


def test_form_values_are_scrubbed() -> None:
    assert form_diff("ts=1700000000&x=1", "ts=1712345678&x=1", scrubber("timestamp")) == []
