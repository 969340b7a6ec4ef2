"""The response parser: an upstream's answer pushed in pieces, framed by its head.

:class:`ResponseParser` is a push parser: status line, headers (at most
``MAX_LINE`` bytes a line, ``MAX_HEADERS`` headers, ``MAX_HEAD`` bytes a head, like
the primary path's limits), interim 1xx answers skipped (but for the primary path's
``on_interim``: 103 Early Hints reaches the client), bodies framed by
Content-Length, chunked (trailers read and discarded) or the end of the connection,
no body for HEAD, 204 and 304 (their framing fields, and those of a 1xx, are checked
all the same: they reach the client). Body bytes go to a callback as they arrive: nothing
is buffered, so memory does not grow with the body. The server's request parser
(:class:`~shadowproxy.http.request.RequestParser`) is one with a request's head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ..errors import ProtocolError, ResetError
from .framing import response_framing, split_headers
from .grammar import (
    _BARE_LF,
    _CHUNK_AT,
    _CHUNK_LINE,
    _HEAD_CONTROL,
    _TRAILER_LINE,
    MAX_CHUNK,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
)

MAX_INTERIM = 32              # 1xx answers before the final one

BodySink = Callable[[bytes | bytearray], None]   # slices of what was read
InterimSink = Callable[[int, str, list[tuple[str, str]]], None]   # status, reason, headers


class Head(NamedTuple):
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]   # names and values as received, in order


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
