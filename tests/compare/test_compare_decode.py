"""Content-Encoding decoding (bounded) and media type detection."""

from __future__ import annotations

import gzip
import zlib

import pytest

from shadowproxy.compare.decode import charset, decode_content, header, media_kind

DATA = b'{"hello": "world", "n": [1, 2, 3]}' * 20
LIMIT = 1 << 20


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def test_identity_and_none() -> None:
    assert decode_content(DATA, None, LIMIT) is DATA
    assert decode_content(DATA, "identity", LIMIT) == DATA
    assert decode_content(b"", "gzip", LIMIT) == b""


def test_gzip_deflate() -> None:
    assert decode_content(gzip.compress(DATA), "gzip", LIMIT) == DATA
    assert decode_content(gzip.compress(DATA), "X-GZIP", LIMIT) == DATA
    assert decode_content(zlib.compress(DATA), "deflate", LIMIT) == DATA
    assert decode_content(raw_deflate(DATA), "deflate", LIMIT) == DATA


def test_gzip_with_several_members() -> None:
    assert decode_content(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", LIMIT) == b"abcd"


def test_brotli() -> None:
    brotli = pytest.importorskip("brotli")
    assert decode_content(brotli.compress(DATA), "br", LIMIT) == DATA


def test_stacked_encodings_are_undone_last_first() -> None:
    brotli = pytest.importorskip("brotli")
    body = brotli.compress(gzip.compress(DATA))     # gzip applied first, then br
    assert decode_content(body, "gzip, br", LIMIT) == DATA
    assert decode_content(body, "br, gzip", LIMIT) is None


def test_failures_return_none() -> None:
    assert decode_content(b"not gzip", "gzip", LIMIT) is None
    assert decode_content(b"not deflate", "deflate", LIMIT) is None
    assert decode_content(gzip.compress(DATA)[:-12], "gzip", LIMIT) is None    # incomplete
    assert decode_content(DATA, "zstd", LIMIT) is None
    assert decode_content(b"\x00\x01garbage", "br", LIMIT) is None


def test_output_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * (10 * LIMIT))
    assert len(bomb) < 20_000
    assert decode_content(bomb, "gzip", LIMIT) is None
    assert decode_content(zlib.compress(b"\0" * (2 * LIMIT)), "deflate", LIMIT) is None
    assert decode_content(gzip.compress(DATA), "gzip", len(DATA)) == DATA
    assert decode_content(gzip.compress(DATA), "gzip", len(DATA) - 1) is None


def test_brotli_output_is_bounded() -> None:
    brotli = pytest.importorskip("brotli")
    assert decode_content(brotli.compress(b"\0" * (10 * LIMIT)), "br", LIMIT) is None


@pytest.mark.parametrize("content_type, kind", [
    ("application/json", "json"),
    ("application/json; charset=utf-8", "json"),
    ("application/problem+json", "json"),
    ("application/vnd.api+json", "json"),
    ("text/plain", "text"),
    ("text/csv", "text"),
    ("application/javascript", "text"),
    ("text/html; charset=iso-8859-1", "html"),
    ("application/xhtml+xml", "html"),
    ("application/xml", "xml"),
    ("text/xml", "xml"),
    ("application/atom+xml", "xml"),
    ("application/x-www-form-urlencoded", "form"),
    ("application/octet-stream", "binary"),
    ("image/png", "binary"),
    ("APPLICATION/JSON", "json"),
])
def test_media_kind(content_type: str, kind: str) -> None:
    assert media_kind(content_type) == kind


def test_media_kind_without_content_type_sniffs_json() -> None:
    assert media_kind(None, b'  {"a": 1}') == "json"
    assert media_kind(None, b"[1]") == "json"
    assert media_kind("", b"\x89PNG") == "binary"


def test_charset_and_header_lookup() -> None:
    assert charset("text/html; charset=ISO-8859-1") == "iso8859-1"
    assert charset('text/plain; charset="utf-8"') == "utf-8"
    assert charset("text/plain; charset=bogus") == "utf-8"
    assert charset(None) == "utf-8"
    h = (("Content-Encoding", "gzip"), ("X-A", "1"), ("x-a", "2"))
    assert header(h, "content-encoding") == "gzip"
    assert header(h, "x-a") == "1, 2"
    assert header(h, "missing") is None


def test_brotli_missing_means_cannot_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "brotli", None)      # import brotli → ImportError
    assert decode_content(b"\x1b\x00", "br", LIMIT) is None


def test_old_brotli_without_output_limit_is_fed_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    brotli = pytest.importorskip("brotli")
    real = brotli.Decompressor

    class OldDecompressor:
        def __init__(self) -> None:
            self._d = real()

        def process(self, data: bytes) -> bytes:
            return self._d.process(data)

        def is_finished(self) -> bool:
            return self._d.is_finished()

    monkeypatch.setattr(brotli, "Decompressor", OldDecompressor)
    assert decode_content(brotli.compress(DATA), "br", LIMIT) == DATA
    assert decode_content(brotli.compress(b"\0" * (10 * LIMIT)), "br", LIMIT) is None


def test_content_headers() -> None:
    from shadowproxy.compare.decode import content_headers
    h = (("Content-Type", "text/html"), ("X-Content-Type", "no"), ("content-encoding", "gzip"),
         ("Content-Encoding", "br"))
    assert content_headers(h) == ("text/html", "gzip, br")
    assert content_headers(()) == (None, None)
