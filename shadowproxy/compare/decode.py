"""Body decoding for comparison only: content codings and media types.

* :func:`decode_content` undoes ``Content-Encoding`` (``gzip``/``x-gzip``,
  ``deflate`` as zlib or raw, ``br`` when the ``brotli`` module is installed,
  ``identity``; stacked codings like ``gzip, br`` are undone last-first). The
  output is bounded by ``limit`` bytes so a compression bomb costs nothing; any
  failure (unknown coding, corrupt or incomplete stream, over the limit) returns
  ``None`` and the comparator falls back to comparing bytes.
* :func:`media_kind` maps ``Content-Type`` to ``json`` (``application/json``,
  ``*/*+json``, ``text/json``), ``form`` (``application/x-www-form-urlencoded``),
  ``html``, ``xml`` (``*/xml``, ``*/*+xml``), ``text`` (``text/*``,
  JavaScript) or ``binary``; with no ``Content-Type`` a body that starts like a
  JSON object or array is ``json``, anything else ``binary``.
"""

from __future__ import annotations

import codecs
import zlib
from typing import Literal

__all__ = ["MediaKind", "charset", "content_headers", "decode_content", "header", "media_kind"]

MediaKind = Literal["json", "form", "html", "xml", "text", "binary"]

_TEXTUAL_APPS = frozenset({
    "application/javascript", "application/x-javascript", "application/ecmascript",
    "application/graphql", "application/x-ndjson", "application/csv", "application/yaml",
    "application/x-yaml",
})


def header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    """All values of a header (lower-case ``name``), comma-joined; ``None`` if absent."""
    values = [v for n, v in headers if n.lower() == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else ", ".join(values)


def content_headers(headers: tuple[tuple[str, str], ...]) -> tuple[str | None, str | None]:
    """``(Content-Type, Content-Encoding)`` in one pass (repeated fields comma-joined)."""
    ctype: str | None = None
    coding: str | None = None
    for name, value in headers:
        if len(name) == 12 or len(name) == 16:          # cheap pre-filter before lower()
            low = name.lower()
            if low == "content-type":
                ctype = value if ctype is None else f"{ctype}, {value}"
            elif low == "content-encoding":
                coding = value if coding is None else f"{coding}, {value}"
    return ctype, coding


def media_kind(content_type: str | None, body: bytes = b"") -> MediaKind:
    """What kind of comparison a body gets (see module doc)."""
    if not content_type:
        head = body[:64].lstrip()
        return "json" if head[:1] in (b"{", b"[") else "binary"
    mt = content_type.partition(";")[0].strip().lower()
    if mt == "application/json" or mt.endswith("+json") or mt == "text/json":
        return "json"
    if mt == "application/x-www-form-urlencoded":
        return "form"
    if mt in ("text/html", "application/xhtml+xml"):
        return "html"
    if mt.endswith(("/xml", "+xml")):
        return "xml"
    if mt.startswith("text/") or mt in _TEXTUAL_APPS:
        return "text"
    return "binary"


def charset(content_type: str | None) -> str:
    """The ``charset`` parameter if it names a known codec, else ``utf-8``."""
    if content_type:
        for param in content_type.split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                name = value.strip().strip('"').lower()
                try:
                    return codecs.lookup(name).name
                except LookupError:
                    break
    return "utf-8"


_GZIP = 16 + zlib.MAX_WBITS


def _inflate(data: bytes, wbits: int, limit: int) -> bytes | None:
    out = bytearray()
    while True:
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error:
            return None
        if len(out) > limit or d.unconsumed_tail:
            return None                       # over the limit
        if not d.eof:
            return None                       # incomplete stream
        data = d.unused_data
        if wbits != _GZIP or not data:        # gzip may have several members
            return bytes(out)


def decode_brotli(data: bytes, limit: int) -> bytes | None:
    """Brotli-decode at most ``limit`` bytes; None when larger, corrupt or incomplete."""
    try:
        import brotli  # optional dependency, imported on first use
    except ImportError:
        return None
    d = brotli.Decompressor()
    out: bytes
    try:
        try:
            out = d.process(data, output_buffer_limit=limit + 1)
        except TypeError:                      # brotli < 1.2: feed small chunks
            buf = bytearray()
            for i in range(0, len(data), 256):
                buf += d.process(data[i:i + 256])
                if len(buf) > limit:
                    return None
            out = bytes(buf)
    except brotli.error:
        return None
    if len(out) > limit or not d.is_finished():
        return None
    return out


def decode_content(body: bytes, content_encoding: str | None, limit: int) -> bytes | None:
    """Undo the content codings; ``None`` when that is not possible within ``limit`` bytes."""
    if not content_encoding:
        return body
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if not body:
            return body
        if coding in ("gzip", "x-gzip"):
            decoded = _inflate(body, _GZIP, limit)
        elif coding == "deflate":
            decoded = _inflate(body, zlib.MAX_WBITS, limit)
            if decoded is None:
                decoded = _inflate(body, -zlib.MAX_WBITS, limit)
        elif coding == "br":
            decoded = decode_brotli(body, limit)
        else:
            return None
        if decoded is None:
            return None
        body = decoded
    return body
