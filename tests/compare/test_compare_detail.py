"""Readable detail for stored samples (DeepDiff / unified diff)."""

from __future__ import annotations

import gzip

from shadowproxy.compare.detail import json_detail, response_detail
from shadowproxy.models import ResponseRecord

JSON = (("Content-Type", "application/json"),)


def test_json_detail() -> None:
    text = json_detail({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 2, 3]})
    assert "root['a']" in text and "root['b'][2]" in text
    assert json_detail({"a": 1, "b": [2.0]}, {"a": 1.0, "b": [2]}) == ""
    assert "root['a']" in json_detail({"a": 1}, {"a": True})


def test_json_detail_is_capped() -> None:
    text = json_detail({str(i): i for i in range(500)}, {str(i): -i - 1 for i in range(500)},
                       max_chars=300)
    assert len(text) <= 302 and text.endswith("…")


def test_response_detail_json_and_gzip() -> None:
    a = ResponseRecord(200, headers=JSON + (("Content-Encoding", "gzip"),),
                       body=gzip.compress(b'{"user": {"name": "ann"}}'))
    b = ResponseRecord(200, headers=JSON, body=b'{"user": {"name": "bob"}}')
    text = response_detail(a, b)
    assert "root['user']['name']" in text and "ann" in text and "bob" in text


def test_response_detail_text() -> None:
    a = ResponseRecord(200, headers=(("Content-Type", "text/plain"),), body=b"one\ntwo\n")
    b = ResponseRecord(200, headers=(("Content-Type", "text/plain"),), body=b"one\nTWO\n")
    text = response_detail(a, b)
    assert "-two" in text and "+TWO" in text and "--- primary" in text
