"""A lean HTTP/1.1 client for shadow requests: keep-alive pools of asyncio Protocols.

The mirror sends each shadow to one configured upstream and only needs the answer's
status, reason, headers (raw, in wire order) and body bytes fed to a
:class:`~shadowproxy.proxy.capture.Capture`. aiohttp's ``ClientSession.request`` does far
more per request (URL and header objects, cookie and redirect machinery, a stream
reader per response); this module does only that:

* :func:`encode_headers` builds the header block once per shadow (the candidate and
  the secondary share it); :meth:`Pool.start` (from callbacks, no task: the mirror)
  and :meth:`Pool.request` (its coroutine form) prepend the request line with the raw
  path and query exactly as received and the upstream's ``Host``. :meth:`Pool.open`
  is the primary path's: the answer streams.
* :class:`ResponseParser` is a push parser: status line, headers (at most
  ``MAX_LINE`` bytes a line, ``MAX_HEADERS`` headers, ``MAX_HEAD`` bytes a head, like
  the primary path's limits), interim 1xx answers skipped (but for the primary path's
  ``on_interim``: 103 Early Hints reaches the client), bodies framed by
  Content-Length, chunked (trailers read and discarded) or the end of the connection,
  no body for HEAD, 204 and 304 (their framing fields, and those of a 1xx, are checked
  all the same: they reach the client). Body bytes go to a callback as they arrive: nothing
  is buffered, so memory does not grow with the body.
* :class:`Pool` keeps idle connections (LIFO, at most ``limit``, expired after
  ``IDLE_EXPIRY`` seconds) and reuses one only when its last answer allowed keep-alive
  and was read to the end. An idempotent request on a reused connection that closes
  before any response byte arrives (the server's keep-alive timeout won the race) is
  sent once more on a new connection.

Failures raise an :class:`UpstreamError` whose ``kind`` is the label the mirror
counts: ``connect``, ``reset`` or ``protocol``; a request's timeout raises
``TimeoutError``, and a cancelled request aborts its connection.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ..errors import (
    ConnectError,
    ProtocolError,
    ResetError,
    TooLargeError,
    UpstreamError,
)

MAX_LINE = 64 * 1024          # a status, header, chunk-size or trailer line
MAX_HEADERS = 1024            # headers in one head (trailers: the same)
MAX_HEAD = 1024 * 1024        # bytes in one head, a memory bound per connection
MAX_INTERIM = 32              # 1xx answers before the final one
IDLE_EXPIRY = 15.0            # seconds an idle connection is kept (aiohttp's default)
IDLE_LIMIT = 1024            # idle connections kept by a pool without a limit
STREAM_HIGH = 256 * 1024      # queued body bytes of a Stream before reading pauses
PIECE_OVERHEAD = 64           # bytes counted for each queued piece besides its data

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# aiohttp sends "Content-Length: 0" for a bodiless request of any other method
_NO_LENGTH_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})

_TOKEN_CHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_NAMES = re.compile(rf"{_TOKEN_CHARS}(?:\n{_TOKEN_CHARS})*")   # header names, one a line
_FRAMING_LENGTHS = frozenset({len("connection"), len("content-length"),
                              len("transfer-encoding"), len("expect"), len("upgrade")})
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

BodySink = Callable[[bytes | bytearray], None]   # slices of what was read
InterimSink = Callable[[int, str, list[tuple[str, str]]], None]   # status, reason, headers

SHADOW_CHUNKS = 1024       # chunks of a shadow parsed in one turn of the loop (~2 ms)
YIELD_READ = 64 * 1024     # a shadow's read this big waits a loop turn before the next


class Head(NamedTuple):
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]   # names and values as received, in order


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


# ---------------------------------------------------------------- response parser

_HEAD_S, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_EOF, _DONE = range(8)


class ResponseParser:
    """Parses one response pushed in pieces with :meth:`feed`; ``head`` once known.

    Body bytes are handed to ``on_body`` (the slices of the pushed pieces). After the
    response is complete, ``keep_alive`` tells whether the connection may carry another
    request and ``extra`` whether bytes followed the response (it then may not).
    """

    __slots__ = (
        "_buf",
        "_interim",
        "_remaining",
        "_scan",
        "_state",
        "_trailers",
        "backlog",
        "chunk_limit",
        "extra",
        "on_interim",
        "head",
        "keep_alive",
        "length",
        "no_body",
        "on_body",
        "received",
        "tail",
        "te",
    )

    def __init__(self, on_body: BodySink, *, no_body: bool = False,
                 chunk_limit: int | None = None,
                 on_interim: InterimSink | None = None) -> None:
        self.on_body = on_body
        # told of each interim answer but 100 Continue (103 Early Hints...)
        self.on_interim = on_interim
        self.no_body = no_body          # a HEAD request: no body whatever the head says
        # chunks one feed parses (None: all): a shadow's bound on the work of a read;
        # the rest waits in the buffer (``backlog``) for :meth:`feed_backlog`
        self.chunk_limit = chunk_limit
        self.backlog = False
        self.head: Head | None = None
        self.length: str | None = None  # the head's Content-Length, as sent
        self.te: str | None = None      # its Transfer-Encoding (lower-cased, joined)
        self.keep_alive = False
        self.extra = False
        self.received = 0               # bytes pushed so far
        self.tail = b""                 # bytes pushed after the end of the message
        self._state = _HEAD_S
        self._buf = bytearray()         # an incomplete line or head
        self._scan = 0                  # where in _buf to resume looking for its end
        self._remaining = 0             # body or chunk bytes still expected
        self._interim = 0
        self._trailers = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> bool:
        """Consume ``data``; True once the response is complete. Raises ProtocolError."""
        if not data:
            return self._state == _DONE
        self.received += len(data)
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            buf = self._buf
            self._buf = bytearray()
        return self._run(buf)

    def feed_backlog(self) -> bool:
        """Go on with what a feed left for later (``backlog``); True once complete."""
        buf, self._buf = self._buf, bytearray()
        return self._run(buf)

    def _run(self, buf: bytes | bytearray) -> bool:
        self.backlog = False
        chunks: list[bytes | bytearray] = []    # chunk data of this feed: one on_body call
        try:
            return self._feed(buf, 0, len(buf), chunks)
        finally:
            if chunks:
                self.on_body(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _feed(self, buf: bytes | bytearray, pos: int, n: int,
              chunks: list[bytes | bytearray]) -> bool:
        limit = self.chunk_limit
        while pos < n:
            st = self._state
            if st == _LENGTH or st == _CHUNK_DATA:  # noqa: SIM109 - no tuple per chunk
                take = min(self._remaining, n - pos)
                piece = buf if take == n else buf[pos:pos + take]
                pos += take
                self._remaining -= take
                if st == _LENGTH:
                    self.on_body(piece)
                    if not self._remaining:
                        self._state = _DONE
                else:
                    chunks.append(piece)
                    if not self._remaining:
                        self._state = _CHUNK_END
            elif st == _UNTIL_EOF:
                self.on_body(buf if pos == 0 else buf[pos:])
                pos = n
            elif st == _HEAD_S:
                end = buf.find(b"\r\n\r\n", pos + self._scan)
                if end < 0:
                    self._check_partial_head(buf, pos)
                    break
                self._scan = 0
                self._on_head(bytes(buf[pos:end]))
                pos = end + 4
            elif st == _CHUNK_SIZE and (m := _CHUNK_AT.match(buf, pos)) is not None:
                # a whole size line: take the chunk at once when all of it is here
                self._scan = 0
                if limit is not None and len(chunks) >= limit:
                    self.backlog = True     # enough for one turn: the rest later
                    break
                size = int(m.group(1), 16)
                if size > MAX_CHUNK:
                    raise ProtocolError("chunk size too large")
                pos = m.end()
                end = pos + size
                if not size:
                    self._state = _TRAILER
                elif end + 2 <= n:
                    if buf[end] != 13 or buf[end + 1] != 10:
                        raise ProtocolError("chunk not followed by CRLF")
                    chunks.append(buf[pos:end])
                    pos = end + 2
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif st == _CHUNK_SIZE or st == _TRAILER:  # noqa: SIM109 - no tuple per chunk
                eol = buf.find(b"\r\n", pos + self._scan)
                if eol < 0:
                    if n - pos > MAX_LINE:
                        raise ProtocolError("chunk line too long")
                    break
                self._scan = 0
                line = bytes(buf[pos:eol])
                pos = eol + 2
                if st == _CHUNK_SIZE:
                    self._on_chunk_size(line)
                elif not line:
                    self._state = _DONE
                else:
                    self._trailers += 1
                    if self._trailers > MAX_HEADERS or len(line) > MAX_LINE:
                        raise ProtocolError("trailers exceed the limits")
                    if _TRAILER_LINE.fullmatch(line) is None:
                        raise ProtocolError("bad trailer line")
            elif st == _CHUNK_END:
                if n - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                pos += 2
                self._state = _CHUNK_SIZE
            else:   # _DONE: anything more was not asked for (or is the next message)
                self.extra = True
                self.tail = bytes(buf[pos:])
                return True
        if pos < n and self._state != _DONE:
            rest = buf if pos == 0 else buf[pos:]
            # resume the search for a line or head end where this one stopped (a
            # backlog starts at a whole size line)
            self._scan = 0 if self.backlog else \
                max(0, len(rest) - (3 if self._state == _HEAD_S else 1))
            self._buf = rest if isinstance(rest, bytearray) else bytearray(rest)
        return self._state == _DONE

    def eof(self, exc: BaseException | None = None) -> None:
        """The connection ended (``exc`` when it was lost with an error). Completes a
        close-delimited body; raises ResetError when the response is incomplete."""
        if self._state == _DONE:
            return
        if self._state == _UNTIL_EOF and exc is None:
            self._state = _DONE
            self.keep_alive = False
            return
        raise ResetError("connection closed before the response was complete"
                         if exc is None else f"connection lost: {exc}",
                         before_response=self.received == 0)

    # ------------------------------------------------------------ pieces

    def _check_partial_head(self, buf: bytes | bytearray, pos: int) -> None:
        size = len(buf) - pos
        start = bytes(buf[pos:pos + 5])
        if not b"HTTP/".startswith(start[:5]):
            raise ProtocolError("not an HTTP response")
        if size > MAX_HEAD:
            raise ProtocolError("response head too large")
        last = buf.rfind(b"\n", pos)
        if size - (last + 1 - pos if last >= 0 else 0) > MAX_LINE:
            raise ProtocolError("response head line too long")
        # a head with bare LF line ends never finds its CRLF CRLF end: say so now rather
        # than wait for the read timeout (from where the last look stopped)
        if last >= 0 and _BARE_LF.search(buf, max(pos, pos + self._scan - 1)) is not None:
            raise ProtocolError("bare LF in the response head")

    def _on_head(self, raw: bytes) -> None:
        text = raw.decode("latin-1")
        lines = text.split("\r\n")
        n_lines = len(lines)
        if text.count("\r") != n_lines - 1 or text.count("\n") != n_lines - 1:
            raise ProtocolError("bare CR or LF in the response head")
        if _HEAD_CONTROL.search(text) is not None:   # never passed on (nginx: 502)
            raise ProtocolError("NUL in the response head" if "\0" in text
                                else "control character in the response head")
        if n_lines - 1 > MAX_HEADERS or len(raw) > MAX_HEAD:
            raise ProtocolError("response head exceeds the limits")
        line = lines[0]
        version = line[:8]
        if version not in ("HTTP/1.1", "HTTP/1.0") or line[8:9] != " " or \
                not line[9:12].isdigit() or not line[9:12].isascii() or \
                (len(line) > 12 and line[12:13] != " "):
            raise ProtocolError("bad status line")
        status = int(line[9:12])
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols")
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise ProtocolError("too many interim responses")
            try:
                interim = split_headers(lines)
            except ValueError as exc:
                raise ProtocolError(f"bad interim response header: {exc}") from None
            response_framing(interim, version == "HTTP/1.0")   # frames nothing: checked
            if self.on_interim is not None and status != 100:
                self.on_interim(status, line[13:], interim)
            return   # the final answer follows
        if status < 100:
            raise ProtocolError("bad status code")
        try:
            headers = split_headers(lines)
        except ValueError as exc:
            raise ProtocolError(f"bad response header: {exc}") from None
        if len(raw) > MAX_LINE and max(map(len, lines)) > MAX_LINE:
            raise ProtocolError("response header too long")
        # checked even when they frame nothing (204, 304, HEAD): they are passed on
        length, size, te, close = response_framing(headers, version == "HTTP/1.0")
        self.head = Head(status, line[13:], tuple(headers))
        self.length, self.te = length, te
        self.keep_alive = not close
        if self.no_body or status == 204 or status == 304:
            self._state = _DONE
        elif te is not None:
            if length is not None:
                self.keep_alive = False   # chunked beside a length: never reuse
            if te.rsplit(",", 1)[-1].strip(" \t") == "chunked":
                self._state = _CHUNK_SIZE
            else:
                self._state, self.keep_alive = _UNTIL_EOF, False
        elif size is not None:
            self._remaining = size
            self._state = _LENGTH if size else _DONE
        else:
            self._state, self.keep_alive = _UNTIL_EOF, False

    def _on_chunk_size(self, line: bytes) -> None:
        m = _CHUNK_LINE.fullmatch(line)
        if m is None:
            raise ProtocolError("bad chunk size line")
        self._remaining = int(m.group(1), 16)
        if self._remaining > MAX_CHUNK:
            raise ProtocolError("chunk size too large")
        self._state = _CHUNK_DATA if self._remaining else _TRAILER


# ---------------------------------------------------------------- connections


class _Conn(asyncio.Protocol):
    """One upstream connection carrying one request at a time.

    ``send`` returns a future of the head: resolved at the end of the response when
    its body goes to a callback (shadows), or as soon as the head is parsed when it
    goes to a :class:`Stream` (the primary path), which is then told of the rest.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.aborted = False
        self.idle_since = 0.0
        self._parser: ResponseParser | None = None
        self._fut: asyncio.Future[Head] | None = None
        self._stream: Stream | None = None
        self._drained: asyncio.Future[None] | None = None   # set while writes are paused
        self._loop: asyncio.AbstractEventLoop     # set by connection_made: asyncio calls it first
        self._max_bytes: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def send(self, data: bytes, body: bytes, no_body: bool, on_body: BodySink,
             stream: Stream | None = None, max_bytes: int | None = None,
             on_interim: InterimSink | None = None) -> asyncio.Future[Head]:
        """``max_bytes`` (shadows): the answer may be this long, head included, else it
        fails with :class:`TooLargeError`; its reads are then also bounded in work
        (:data:`SHADOW_CHUNKS` chunks each) and take turns with the other connections."""
        assert self.transport is not None
        self._max_bytes = max_bytes
        self._parser = ResponseParser(on_body, no_body=no_body,
                                      chunk_limit=SHADOW_CHUNKS if max_bytes else None,
                                      on_interim=on_interim)
        self._stream = stream
        self._fut = fut = self._loop.create_future()
        if self.lost or self.transport.is_closing():
            fut.set_exception(ResetError("connection closed", before_response=True))
            return fut
        if body and len(body) > 16 * 1024:
            self.transport.write(data)
            self.transport.write(body)
        else:
            self.transport.write(data + body if body else data)
        return fut

    @property
    def reusable(self) -> bool:
        """The last response allowed keep-alive, was read to its end and nothing more
        came; the request was written out entirely."""
        p = self._parser
        return p is not None and p.done and p.keep_alive and not p.extra and \
            not self.lost and self.transport is not None and \
            not self.transport.is_closing() and self.transport.is_reading() and \
            self.transport.get_write_buffer_size() == 0

    def data_received(self, data: bytes) -> None:
        p, fut, stream = self._parser, self._fut, self._stream
        if p is None or fut is None or p.done or (stream is None and fut.done()):
            # bytes nobody asked for (on an idle connection, or after the response)
            if p is not None:
                p.extra = True
            self.abort()
            return
        try:
            done = p.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            self.abort()
            return
        if stream is not None:
            if not fut.done() and p.head is not None:
                fut.set_result(p.head)
            if done:
                stream.end()
        elif self._max_bytes is None:
            if done and not fut.done():
                assert p.head is not None
                fut.set_result(p.head)
        else:
            self._shadow_read(p, fut, done, len(data) >= YIELD_READ)

    def _shadow_read(self, p: ResponseParser, fut: asyncio.Future[Head], done: bool,
                     big: bool) -> None:
        """After a shadow's read: the answer, its size cap, and its turn. A big read
        or a backlog of chunks waits for the loop's next turn before more is parsed
        or read, so a flood from the candidate takes turns with clients and primary."""
        t = self.transport
        assert t is not None and self._max_bytes is not None
        if p.received > self._max_bytes:
            self._fail(TooLargeError(f"the answer exceeds {self._max_bytes} bytes"))
            self.abort()
        elif done:
            if not t.is_reading():
                t.resume_reading()      # reusable again
            if not fut.done():
                assert p.head is not None
                fut.set_result(p.head)
        elif p.backlog or big:
            if t.is_reading():
                t.pause_reading()
            self._loop.call_soon(self._next_turn)
        elif not t.is_reading():
            t.resume_reading()

    def _next_turn(self) -> None:
        p, fut, t = self._parser, self._fut, self.transport
        if p is None or fut is None or fut.done() or t is None or self.lost or \
                t.is_closing():
            return
        if not p.backlog:
            t.resume_reading()
            return
        try:
            done = p.feed_backlog()
        except ProtocolError as exc:
            self._fail(exc)
            self.abort()
            return
        self._shadow_read(p, fut, done, False)

    def _fail(self, exc: BaseException) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        elif self._stream is not None:
            self._stream.end(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self.aborted:
            exc = ConnectionAbortedError("aborted")   # our doing: never a clean end
        self.lost = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        p, fut = self._parser, self._fut
        if p is None or fut is None or p.done:
            return
        try:
            p.eof(exc)
        except (UpstreamError, ProtocolError) as err:
            self._fail(err)
            return
        if self._stream is not None:
            self._stream.end()
        elif not fut.done():
            assert p.head is not None
            fut.set_result(p.head)

    def pause_writing(self) -> None:
        self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def write(self, data: bytes, timeout: float | None = None) -> None:
        """Write part of a streamed request body, waiting (at most ``timeout``) while
        the transport's buffer is above its high-water mark."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ResetError("connection closed while sending the request body")
        self.transport.write(data)
        if self._drained is not None:
            await _within(self._drained, timeout)

    def abort(self) -> None:
        self.lost = self.aborted = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


class Pulled:
    """A message body that arrives on its own and is pulled with :meth:`read`.

    Pieces are queued as they arrive (:meth:`feed`, each counted with
    ``PIECE_OVERHEAD``); above ``STREAM_HIGH`` queued bytes :meth:`_pause` is called,
    and :meth:`_resume` once :meth:`read` has taken them, so the sender is held back
    and memory stays bounded. :meth:`end` marks the end, or a failure that
    :meth:`read` raises once the bytes before it are taken. The base of the upstream
    :class:`Stream` and the server's request (:class:`shadowproxy.http.server.Request`).
    """

    __slots__ = ("_chunks", "_queued", "_waiter", "done", "error", "paused")

    def __init__(self) -> None:
        self._chunks: list[bytes | bytearray] = []
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.done = False                       # every byte has arrived
        self.error: BaseException | None = None

    def _pause(self) -> None:
        raise NotImplementedError

    def _resume(self) -> None:
        raise NotImplementedError

    def feed(self, data: bytes | bytearray) -> None:
        self._chunks.append(data)
        self._queued += len(data) + PIECE_OVERHEAD
        if self._queued > STREAM_HIGH and not self.paused:
            self.paused = True
            self._pause()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def end(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self.done = True
        elif not self.done and self.error is None:
            self.error = exc
        self._wake()

    def unpause(self) -> None:
        if self.paused:
            self.paused = False
            self._resume()

    @property
    def complete(self) -> bool:
        """Every byte has arrived and been read."""
        return self.done and not self._chunks

    @property
    def ready(self) -> bool:
        """:meth:`read` would not wait."""
        return bool(self._chunks) or self.done or self.error is not None

    async def read(self, timeout: float | None = None) -> bytes:
        """The bytes that arrived since the last call (waiting at most ``timeout`` for
        some: TimeoutError); b"" at the end; the failure given to :meth:`end`."""
        while True:
            if self._chunks:
                chunks, self._chunks, self._queued = self._chunks, [], 0
                self.unpause()
                return chunks[0] if len(chunks) == 1 and type(chunks[0]) is bytes \
                    else b"".join(chunks)
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await _within(waiter, timeout)
            finally:
                self._waiter = None


class Stream(Pulled):
    """A response being read: its head, and its body pulled with :meth:`read` (an
    :class:`UpstreamError`, or ``TimeoutError`` after ``timeout`` seconds without a
    byte). :meth:`release` must be called once: it gives the connection back to its
    pool when the response was read to its end, else closes it.
    """

    __slots__ = ("_conn", "_pool", "_sender", "head", "timeout")

    def __init__(self, conn: _Conn, pool: Pool, timeout: float | None) -> None:
        super().__init__()
        self._conn = conn
        self._pool = pool
        self.timeout = timeout          # seconds without a byte before read() times out
        self.head: Head | None = None
        self._sender: asyncio.Task[BaseException | None] | None = None   # a streamed body

    def _pause(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.pause_reading()

    def _resume(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.resume_reading()

    async def read(self, timeout: float | None = None) -> bytes:
        return await super().read(self.timeout if timeout is None else timeout)

    @property
    def framing(self) -> tuple[str | None, str | None]:
        """The head's Content-Length and Transfer-Encoding (see :class:`ResponseParser`)."""
        p = self._conn._parser
        return (p.length, p.te) if p is not None else (None, None)

    def release(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            sender.cancel()
            self._conn.abort()
        elif self.done and self.error is None:
            self.unpause()                   # the answer is all here
            self._pool._give(self._conn)
        else:
            self._conn.abort()


class Call:
    """One request sent by :meth:`Pool.start`: callbacks only, no task (unless it has to
    connect)."""

    __slots__ = ("pool", "method", "data", "body", "on_body", "done", "timer", "conn",
                 "reused", "retried", "task", "finished")

    def __init__(self, pool: Pool, method: str, data: bytes, body: bytes, on_body: BodySink,
                 done: Callable[[Head | BaseException], None]) -> None:
        self.pool = pool
        self.method = method
        self.data = data
        self.body = body
        self.on_body = on_body
        self.done = done
        self.timer: asyncio.TimerHandle | None = None
        self.conn: _Conn | None = None
        self.reused = False
        self.retried = False
        self.task: asyncio.Task[None] | None = None
        self.finished = False

    def send(self, conn: _Conn, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        fut = conn.send(self.data, self.body, self.method == "HEAD", self.on_body,
                        max_bytes=self.pool.max_answer)
        fut.add_done_callback(self._answered)

    def connect(self) -> None:
        self.task = self.pool._loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.pool._connect()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the caller gets every failure
            self._end(exc)
            return
        self.task = None
        if self.finished:        # timed out or cancelled while connecting
            conn.close()
            return
        self.send(conn, False)

    def _answered(self, fut: asyncio.Future[Head]) -> None:
        conn = self.conn
        assert conn is not None
        exc = ResetError("cancelled") if fut.cancelled() else fut.exception()
        if self.finished:
            if exc is None:
                self.pool._give(conn)
            return
        if exc is None:
            self.pool._give(conn)
            self._end(fut.result())
            return
        conn.abort()
        if isinstance(exc, ResetError) and exc.before_response and self.reused and \
                not self.retried and self.method in IDEMPOTENT:
            self.retried = True          # stale keep-alive: once more on a new connection
            self.connect()
            return
        self._end(exc)

    def expire(self) -> None:
        self.timer = None
        if not self.finished:
            self._abandon()
            self._end(TimeoutError())

    def cancel(self) -> None:
        """Abandon the request (its connection is aborted); ``done`` is not called."""
        if not self.finished:
            self._abandon()
            self.finished = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _abandon(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.conn is not None:
            self.conn.abort()

    def _end(self, result: Head | BaseException) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.done(result)


class Pool:
    """Keep-alive connections to one upstream (``http://host[:port][/prefix]``).

    :meth:`request` (shadows): at most ``limit`` requests in flight. :meth:`open` (the
    primary path): not limited. At most ``limit`` connections are kept idle (``None``:
    ``IDLE_LIMIT``).
    """

    def __init__(self, base: str, limit: int | None, max_answer: int | None = None) -> None:
        """``max_answer``: the bytes an answer to :meth:`start` may have (shadows)."""
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s):// URL, got {base!r}")
        tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if tls else 80)
        self.prefix = parts.path.rstrip("/")   # see _line
        self.max_answer = max_answer
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if tls else 80
        self.host_header = name if parts.port in (None, default) else f"{name}:{parts.port}"
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.limit = limit if limit is not None else IDLE_LIMIT
        self._sem = asyncio.Semaphore(self.limit)
        self._idle: list[_Conn] = []
        self._closed = False
        self._loop_: asyncio.AbstractEventLoop | None = None

    def start(self, method: str, target: str, header_block: bytes, body: bytes,
              on_body: BodySink, timeout: float | None,
              done: Callable[[Head | BaseException], None]) -> Call:
        """Send one request from a callback, with no task of its own (the mirror's
        shadows): ``done`` gets the :class:`Head` once the answer is read to its end
        (body bytes to ``on_body``), or the failure (an :class:`UpstreamError`,
        ``TimeoutError`` after ``timeout`` seconds, connecting included). Not limited
        to ``limit`` requests in flight: the caller bounds them. :meth:`Call.cancel`
        abandons it without calling ``done``."""
        data = (self._line(method, target) + f"Host: {self.host_header}\r\n") \
            .encode("latin-1") + header_block
        call = Call(self, method, data, body, on_body, done)
        if timeout is not None:
            call.timer = self._loop().call_later(timeout, call.expire)
        conn = self._take()
        if conn is None:
            call.connect()
        else:
            call.send(conn, True)
        return call

    async def request(self, method: str, target: str, header_block: bytes, body: bytes,
                      on_body: BodySink, timeout: float | None = None) -> Head:
        """:meth:`start` as a coroutine, at most ``limit`` at a time."""
        async with self._sem:
            fut: asyncio.Future[Head] = self._loop().create_future()

            def done(result: Head | BaseException) -> None:
                if not fut.done():
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)

            call = self.start(method, target, header_block, body, on_body, timeout, done)
            try:
                return await fut
            except asyncio.CancelledError:
                call.cancel()
                raise

    def _line(self, method: str, target: str) -> str:
        """The request line: the upstream's path prefix before every target but ``*``
        (``OPTIONS *``, the server as a whole)."""
        return f"{method} {self.prefix if target != '*' else ''}{target} HTTP/1.1\r\n"

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_
        if loop is None:
            loop = self._loop_ = asyncio.get_running_loop()
        return loop

    async def open(self, method: str, target: str, header_block: bytes, body: bytes, *,
                   host: bool = True, body_stream: AsyncIterator[bytes] | None = None,
                   chunked: bool = False, connect_timeout: float | None = None,
                   read_timeout: float | None = None,
                   on_interim: InterimSink | None = None) -> Stream:
        """Send one request and return its answer as a :class:`Stream` once the head
        has arrived. ``host``: add the upstream's ``Host`` (else ``header_block`` has
        one). ``body_stream``: the body, sent as it comes (chunked when ``chunked``,
        else as framed by the Content-Length in ``header_block``), from a task of its
        own so an early answer is read while it is still being sent. Raises an
        :class:`UpstreamError` or ``TimeoutError`` (connecting, or waiting
        ``read_timeout`` for a byte of the head); the caller must
        :meth:`Stream.release` what it gets. ``on_interim``: told of interim answers
        before the head (not 100 Continue)."""
        line = self._line(method, target)
        if host:
            line += f"Host: {self.host_header}\r\n"
        data = line.encode("latin-1") + header_block
        no_body = method == "HEAD"
        conn = self._take()
        reused = conn is not None
        for attempt in (1, 2):
            if conn is None:
                async with asyncio.timeout(connect_timeout):
                    conn = await self._connect()
            stream = Stream(conn, self, read_timeout)
            try:
                fut = conn.send(data, body, no_body, stream.feed, stream,
                                on_interim=on_interim)
                if body_stream is None:
                    # the timer inline, not _within(): one coroutine less per request
                    timer = None if read_timeout is None or fut.done() else \
                        self._loop().call_later(read_timeout, _expire, fut)
                    try:
                        stream.head = await fut
                    finally:
                        if timer is not None:
                            timer.cancel()
                else:
                    sender = stream._sender = asyncio.create_task(
                        _send_body(conn, body_stream, chunked, read_timeout))
                    # the wait for the answer starts when the upload has ended
                    stream.head = await _after(sender, fut, read_timeout)
                return stream
            except ResetError as exc:
                pending = stream._sender
                failure = pending.result() if pending is not None and pending.done() and \
                    not pending.cancelled() else None
                if failure is not None:
                    stream.release()
                    raise ClientBodyError(failure) from exc
                stream.release()
                if attempt == 2 or not (reused and exc.before_response and
                                        method in IDEMPOTENT and body_stream is None):
                    raise
                conn = None   # stale keep-alive: once more on a new connection
            except BaseException:
                stream.release()
                raise
        raise AssertionError("unreachable")

    def _take(self) -> _Conn | None:
        idle = self._idle
        if not idle:
            return None
        now = self._loop().time()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < IDLE_EXPIRY:
                return conn
            conn.close()
        return None

    def _give(self, conn: _Conn) -> None:
        if self._closed or not conn.reusable or len(self._idle) >= self.limit:
            conn.close()
            return
        conn.idle_since = self._loop().time()
        self._idle.append(conn)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Conn, self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None)
        except OSError as exc:   # refused, unreachable, DNS, TLS handshake
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close_idle(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def close(self) -> None:
        self.close_idle()


async def _send_body(conn: _Conn, chunks: AsyncIterator[bytes], chunked: bool,
                     timeout: float | None) -> BaseException | None:
    """Write a streamed request body (waiting at most ``timeout`` for the upstream to
    take each part). Any failure aborts the connection, so the upstream never sees a
    complete, truncated request; the failure of the body's source (the client) is
    returned, not raised: :meth:`Pool.open` tells it from the upstream's."""
    try:
        async for chunk in chunks:
            if chunk:
                await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk,
                                 timeout)
        if chunked:
            await conn.write(b"0\r\n\r\n", timeout)
    except asyncio.CancelledError:
        conn.abort()
        raise
    except (UpstreamError, ProtocolError, TimeoutError):   # the upstream's side: open() reports it
        conn.abort()
    except Exception as exc:  # noqa: BLE001 - the client's side failed: cut the request
        conn.abort()
        return exc
    return None


class ClientBodyError(Exception):
    """The client's request body failed while it was being sent upstream."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _after(sender: asyncio.Task[BaseException | None], fut: asyncio.Future[Any],
                 timeout: float | None) -> Any:
    """``await fut``, failed with TimeoutError ``timeout`` seconds after ``sender`` ends."""
    if timeout is None:
        return await fut
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def arm(_task: object) -> None:
        nonlocal timer
        if not fut.done():
            timer = loop.call_later(timeout, _expire, fut)

    sender.add_done_callback(arm)
    try:
        return await fut
    finally:
        sender.remove_done_callback(arm)
        if timer is not None:
            timer.cancel()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _within(fut: asyncio.Future[Any], timeout: float | None) -> Any:
    """``await fut``, failed with TimeoutError after ``timeout`` seconds (a timer
    handle: cheaper than ``asyncio.timeout`` when the answer is usually there)."""
    if timeout is None or fut.done():
        return await fut
    timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
    try:
        return await fut
    finally:
        timer.cancel()
