"""What a message's head says about its framing: header lines split, Content-Length,
Transfer-Encoding and Connection read and checked (RFC 9110, RFC 9112 §6), and the
header block of an outgoing request with the framing it is sent with.

Shared by the response parser (:mod:`shadowproxy.http.response`), the request parser
(:mod:`shadowproxy.http.request`) and the proxy, which passes framing fields on.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ProtocolError
from .grammar import _CODINGS, _NAMES

# aiohttp sends "Content-Length: 0" for a bodiless request of any other method
_NO_LENGTH_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_FRAMING_LENGTHS = frozenset({len("connection"), len("content-length"),
                              len("transfer-encoding"), len("expect"), len("upgrade")})


# ---------------------------------------------------------------- request


def encode_headers(method: str, headers: Sequence[tuple[str, str]],
                   body_len: int | None) -> bytes:
    """The header lines of a request, ending with the blank line; no Host (each pool
    adds its own unless ``headers`` has one). The framing is ``body_len``'s alone, never
    what ``headers`` say: any Content-Length there is replaced by ``body_len``, sent when
    there is a body or the method expects one (as aiohttp does); ``body_len`` None: the
    body is streamed chunked."""
    parts = [f"{k}: {v}\r\n" for k, v in headers if k.lower() != "content-length"]
    if body_len is None:
        parts.append("Transfer-Encoding: chunked\r\n")
    elif body_len or method not in _NO_LENGTH_METHODS:
        parts.append(f"Content-Length: {body_len}\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    # a CR or LF inside a name or value would split the head: refuse it
    if text.count("\n") != len(parts) or text.count("\r") != len(parts):
        raise ValueError("CR or LF in a request header")
    return text.encode("latin-1")


# ---------------------------------------------------------------- message framing


def split_headers(lines: Sequence[str]) -> list[tuple[str, str]]:
    """The ``name: value`` lines of a head (``lines[0]``, the start line, skipped) as
    (name, value) pairs in order, values stripped of spaces and tabs. ValueError for a
    line without a colon or a name that is not a token (all names checked at once)."""
    headers = []
    for hl in lines[1:]:
        name, sep, value = hl.partition(":")
        if not sep:
            raise ValueError("a header line without a colon")
        headers.append((name, value.strip(" \t")))
    if headers and _NAMES.fullmatch("\n".join([h[0] for h in headers])) is None:
        raise ValueError("a header name that is not a token")
    return headers


def body_codings(te: str) -> str | None:
    """The transfer codings a body still has once de-chunked (``gzip, chunked`` →
    ``gzip``), None when there are none: chunked (said once or twice) and identity are
    framing, not codings of the body."""
    codings = [c for c in (c.strip(" \t") for c in te.split(","))
               if c and c != "chunked" and c != "identity"]
    return ", ".join(codings) if codings else None


def framing(headers: Sequence[tuple[str, str]], http10: bool
            ) -> tuple[str | None, str | None, bool, str | None, str | None]:
    """What a message's headers say about its framing and connection: Content-Length
    (ProtocolError when two differ), Transfer-Encoding (lower-cased, repeats joined with
    commas), whether the connection closes after it (``Connection: close``, or HTTP/1.0
    without ``keep-alive``), and the Expect and Upgrade values (an HTTP/1.0 message has
    no Upgrade: RFC 9110 §7.8 has it ignored)."""
    length: str | None = None
    te: str | None = None
    expect = upgrade = None
    close = http10
    for name, value in headers:
        if len(name) not in _FRAMING_LENGTHS:
            continue
        lname = name.lower()
        if lname == "content-length":
            if length is not None and length != value:
                raise ProtocolError("conflicting Content-Length")
            length = value
        elif lname == "transfer-encoding":
            te = value.lower() if te is None else te + "," + value.lower()
        elif lname == "connection":
            tokens = {t.strip(" \t").lower() for t in value.split(",")}
            if "close" in tokens:
                close = True
            elif "keep-alive" in tokens and http10:
                close = False
        elif lname == "expect":
            expect = value
        elif lname == "upgrade" and not http10:
            upgrade = value
    return length, te, close, expect, upgrade


def content_length(length: str) -> int:
    """A Content-Length value as a number: digits, or the same digits repeated in a
    comma list (``5, 5``: RFC 9110 §8.6). ProtocolError for anything else."""
    if not (length.isdigit() and length.isascii()):
        values = {v.strip(" \t") for v in length.split(",")}
        if len(values) != 1 or not (length := values.pop()).isdigit() or \
                not length.isascii():
            raise ProtocolError("bad Content-Length")
    if len(length) > 20:    # beyond 64 bits: no body could have it (h11 stops here too)
        raise ProtocolError("bad Content-Length: too large")
    return int(length)


def response_framing(headers: Sequence[tuple[str, str]], http10: bool
                     ) -> tuple[str | None, int | None, str | None, bool]:
    """:func:`framing` for a response head, checked whether it frames a body or not (a
    204, 304, an answer to HEAD, a 1xx: the proxy passes the fields on): Content-Length
    as sent and as a number, Transfer-Encoding, closing. ProtocolError for an invalid
    Content-Length or Transfer-Encoding, and for both unless the coding is a lone
    chunked beside a valid length (RFC 9112 §6.3 (3): ought to be handled as an error)."""
    length, te, close, _expect, _upgrade = framing(headers, http10)
    size = None if length is None else content_length(length)
    if te is not None:
        if _CODINGS.fullmatch(te) is None:
            raise ProtocolError("bad Transfer-Encoding")
        if length is not None and te.strip(" \t") != "chunked":
            raise ProtocolError("Content-Length with a Transfer-Encoding other than chunked")
    return length, size, te, close
