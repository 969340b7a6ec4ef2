"""Decoding bodies to redact: Content-Encoding undone, text told from binary.

A body is redacted as the text it decodes to: :func:`_decode_body` undoes its
``Content-Encoding`` (gzip, deflate, and br when the ``brotli`` module is installed),
keeping at most :data:`MAX_DECODED` bytes; :func:`_to_text` gives its UTF-8 text, or
None for a binary body (which is then dropped), as :data:`_BINARY_TYPES` content types
are without looking.
"""

from __future__ import annotations

import re
import zlib

from ..compare.decode import decode_brotli
from ..models import Headers

try:  # optional: only needed to decode Content-Encoding: br
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

MAX_DECODED = 8 * 1024 * 1024      # bytes of a decoded body kept at most

_BINARY_TYPES = re.compile(
    r"^(image|audio|video|font)/|octet-stream|zip|gzip|pdf|protobuf|grpc|msgpack|"
    r"x-tar|wasm|avro|parquet|cbor|bson", re.I)
# control characters that make a body binary, as bytes: in UTF-8 they never occur
# inside a multi-byte character (deleting them is much faster than a regex search)
_CONTROL_BYTES = bytes((*range(0x09), 0x0b, *range(0x0e, 0x20)))


def _header(headers: Headers, name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _decode_body(body: bytes, encoding: str | None, limit: int) -> tuple[bytes | None, bool]:
    """Undo Content-Encoding. → (decoded or None when impossible, cut at limit)."""
    if not encoding:
        return body, False
    data = body
    cut = False
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        try:
            if coding in ("gzip", "x-gzip"):
                d = zlib.decompressobj(wbits=47)          # gzip or zlib, auto-detected
                out = d.decompress(data, limit + 1)
            elif coding == "deflate":
                try:
                    d = zlib.decompressobj()
                    out = d.decompress(data, limit + 1)
                except zlib.error:
                    d = zlib.decompressobj(wbits=-15)     # raw deflate, as some servers send
                    out = d.decompress(data, limit + 1)
            elif coding == "br" and _brotli is not None:
                br = decode_brotli(data, limit)   # bounded: never inflates past limit
                if br is None:
                    return None, False
                out = br
            else:
                return None, False
        except Exception:  # noqa: BLE001 - corrupt or truncated beyond use
            return None, False
        if len(out) > limit:
            out = out[:limit]
            cut = True
        data = out
    return data, cut


def _to_text(data: bytes, truncated: bool) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a capture cut in the middle of a character is still text
        if truncated and exc.start >= len(data) - 3 and exc.reason != "invalid start byte":
            data = data[:exc.start]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return None
        else:
            return None
    if len(data.translate(None, _CONTROL_BYTES)) != len(data):
        return None
    return text
