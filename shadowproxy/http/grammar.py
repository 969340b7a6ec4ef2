"""The HTTP/1.1 grammar as regular expressions, and the limits of what is parsed.

The pieces of RFC 9110 and RFC 9112's ABNF the parsers match (tokens, field text,
chunk-size and trailer lines, a Transfer-Encoding list), in the spirit of h11's
``_abnf.py``, and the bounds on a head's lines, headers and bytes and on a chunk's
size shared by the response and request parsers (the server's request head has
tighter ones of its own: :mod:`shadowproxy.http.request`).
"""

from __future__ import annotations

import re

MAX_LINE = 64 * 1024          # a status, header, chunk-size or trailer line
MAX_HEADERS = 1024            # headers in one head (trailers: the same)
MAX_HEAD = 1024 * 1024        # bytes in one head, a memory bound per connection

_TOKEN_CHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_NAMES = re.compile(rf"{_TOKEN_CHARS}(?:\n{_TOKEN_CHARS})*")   # header names, one a line
# text without control characters but HTAB (a bare LF or a NUL in a chunk line or a
# trailer is an attempt to desynchronise)
_TEXT = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
# a chunk-size line: hex digits, then optional whitespace and extensions
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;" + _TEXT + rb")?")
# the same with its CRLF, matched in place (the fast path of many chunks)
_CHUNK_AT = re.compile(_CHUNK_LINE.pattern + rb"\r\n")
_TRAILER_LINE = re.compile(_TOKEN_CHARS.encode() + rb":" + _TEXT)
# the largest chunk size: below 2^60, as a Content-Length has at most 18 digits; far
# from the 64-bit overflow 16 hex digits can reach (nginx answers 2^64 - 1 with 400)
MAX_CHUNK = (1 << 60) - 1
# a Transfer-Encoding value (repeats joined with commas): tokens, SP/HTAB around them
# (RFC 9110 §5.6.3); "\xa0chunked" or "chunked\x85" name codings nobody knows
_CODINGS = re.compile(rf"[ \t]*{_TOKEN_CHARS}(?:[ \t]*,[ \t]*{_TOKEN_CHARS})*[ \t]*")
_BARE_LF = re.compile(rb"(?<!\r)\n")
# control characters but HTAB (CR and LF are the line ends, checked apart): never in a
# head (RFC 9110 §5.5, RFC 9112 §4: VCHAR, obs-text, SP and HTAB only)
_HEAD_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
