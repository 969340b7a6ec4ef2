"""A client's request on the server: its parser and the :class:`Request` a handler gets.

:class:`RequestParser` is the framing rules of
:class:`~shadowproxy.http.response.ResponseParser` with a request's head: a bad request
line or header name, control characters, a size beyond the limits, conflicting or
unparsable Content-Length, Transfer-Encoding with Content-Length or without
``chunked`` last raise :class:`BadRequest` (with the 400, 414, 431, 501 or 505 the
server answers). :class:`Request` is the head as received, its body pulled as it
arrives (:meth:`Request.read`), and the way to answer it (:meth:`Request.reply`,
:meth:`Request.respond`), written on the client connection
(:class:`~shadowproxy.http.server.Connection`) it came on.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Protocol

from ..errors import ProtocolError
from .framing import framing, split_headers
from .grammar import _CODINGS, _TOKEN_CHARS, MAX_HEADERS
from .headers import end_to_end_text
from .response import _CHUNK_SIZE, _DONE, _LENGTH, ResponseParser
from .stream import Pulled

MAX_LINE = 16 * 1024          # the request line (the target), and each header line
MAX_HEAD = 256 * 1024         # a whole request head
BODY_TIMEOUT = 60.0           # seconds a handler waits for more of a request body

_METHOD = re.compile(_TOKEN_CHARS)
# control characters never allowed in a request line or header value (HTAB is)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# nor any whitespace in a request target (an upstream may split the line on a tab),
# nor bytes above 0x7f: a target is a URI, ASCII (RFC 9112 §3.2; h11 and llhttp: 400)
_TARGET_BAD = re.compile(r"[\x00-\x20\x7f-\xff]")


class ServerView(Protocol):
    """What a :class:`Request` reads of the server (:class:`~shadowproxy.http.server.Server`)."""

    @property
    def stopping(self) -> bool: ...


class ConnectionView(Protocol):
    """The client connection a :class:`Request` answers on, as the request sees it
    (:class:`~shadowproxy.http.server.Connection`, which sets ``Request._conn``)."""

    peer: str
    keep_alive: bool
    closing: bool
    _pending: bytearray

    @property
    def server(self) -> ServerView: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class BadRequest(ProtocolError):
    """A request the server answers itself (``status``) and then closes."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BodyError(Exception):
    """The request body could not be read: ``status`` 400 (malformed chunked coding),
    408 (the client stopped sending), or None (the client went away)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class RequestParser(ResponseParser):
    """One request: head (``head`` becomes a :class:`Request`), then its body framed by
    Content-Length or chunked coding (none when neither is given)."""

    __slots__ = ()

    def _check_partial_head(self, buf: bytes | bytearray, pos: int) -> None:
        size = len(buf) - pos
        if size > MAX_HEAD:
            raise BadRequest("request head too large", 431)
        first = buf.find(b"\r\n", pos)
        if first < 0 and size > MAX_LINE:
            raise BadRequest("request line too long", 414)
        last = buf.rfind(b"\n", pos)
        if size - (last + 1 - pos if last >= 0 else 0) > MAX_LINE:
            raise BadRequest("request header too long", 431)
        if last >= 0 and buf.count(b"\n", pos) != buf.count(b"\r\n", pos):
            # a head with bare LF line ends never finds its CRLF CRLF end: say so now
            # rather than wait for the keep-alive timer
            raise BadRequest("bare LF in the request head")

    def _on_head(self, raw: bytes) -> None:
        text = raw.decode("latin-1")
        lines = text.split("\r\n")
        while lines and not lines[0]:
            lines.pop(0)        # empty lines before a request line are ignored (RFC 9112)
        if not lines:
            raise BadRequest("empty request")
        n = len(lines)
        if text.count("\n") != text.count("\r\n") or text.count("\r") != text.count("\r\n"):
            raise BadRequest("bare CR or LF in the request head")
        if n - 1 > MAX_HEADERS or len(raw) > MAX_HEAD:
            raise BadRequest("request head too large", 431)
        line = lines[0]
        if len(line) > MAX_LINE:
            raise BadRequest("request line too long", 414)
        method, sp1, rest = line.partition(" ")
        target, sp2, version = rest.partition(" ")
        if not sp1 or not sp2 or _METHOD.fullmatch(method) is None or not target or \
                _TARGET_BAD.search(target) is not None:
            raise BadRequest("bad request line")
        if version == "HTTP/1.1":
            ver = (1, 1)
        elif version == "HTTP/1.0":
            ver = (1, 0)
        elif version.startswith("HTTP/") and len(version) == 8 and version[5] in "23":
            raise BadRequest("HTTP version not supported", 505)
        else:
            raise BadRequest("bad request line")
        try:
            headers = split_headers(lines)
        except ValueError as exc:
            raise BadRequest(f"bad request header: {exc}") from None
        if headers:
            if _CONTROL.search("".join([h[1] for h in headers])) is not None:
                raise BadRequest("control character in a request header")
            if len(raw) > MAX_LINE and max(map(len, lines)) > MAX_LINE:
                raise BadRequest("request header too long", 431)
        length, te, close, expect_v, upgrade_v = framing(headers, ver == (1, 0))
        expect = expect_v is not None and expect_v.lower() == "100-continue"
        # a WebSocket handshake is a GET (RFC 6455 §4.1)
        upgrade = upgrade_v is not None and upgrade_v.lower() == "websocket" and \
            method == "GET"
        size: int | None = None
        host_count = sum(1 for name, _ in headers if len(name) == 4 and name.lower() == "host")
        if host_count > 1 or (host_count == 0 and ver == (1, 1)):
            raise BadRequest("a request needs exactly one Host header")
        if te is not None:
            if length is not None:
                raise BadRequest("both Transfer-Encoding and Content-Length")
            if ver == (1, 0):
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
            if _CODINGS.fullmatch(te) is None:
                # not a list of tokens ("\xa0chunked"): codings nobody knows (nginx: 501)
                raise BadRequest("unknown transfer coding", 501)
            if te.rsplit(",", 1)[-1].strip(" \t") != "chunked":
                raise BadRequest("Transfer-Encoding without chunked last")
            if te.strip(" \t") != "chunked":
                # other codings would be lost when the body is chunked anew upstream
                raise BadRequest("transfer codings other than chunked", 501)
            self._state = _CHUNK_SIZE
        elif length is not None:
            if not (length.isdigit() and length.isascii()) or len(length) > 18:
                raise BadRequest("bad Content-Length")
            size = self._remaining = int(length)
            self._state = _LENGTH if size else _DONE
        else:
            self._state = _DONE
        self.keep_alive = not close
        req = Request(method, target, ver, headers, size, te is not None,
                      expect and ver == (1, 1), upgrade)
        self.head = req  # type: ignore[assignment]
        self.on_body = req.feed      # body bytes in the same piece as the head go there


class Request(Pulled):
    """One request as received, its body pulled with :meth:`read`, and the way to
    answer it."""

    __slots__ = ("_chunked_out", "_conn", "_continued", "_no_body", "chunked",
                 "content_length", "expect_continue", "headers", "method", "responded",
                 "status", "target", "upgrade", "version")

    def __init__(self, method: str, target: str, version: tuple[int, int],
                 headers: list[tuple[str, str]], content_length: int | None, chunked: bool,
                 expect_continue: bool, upgrade: bool) -> None:
        super().__init__()
        self.method = method
        self.target = target                    # raw, exactly as received
        self.version = version
        self.headers = headers                  # (name, value) as received, in order
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade                  # Upgrade: websocket
        self.responded = False
        self.status = 0                         # of the answer, once sent
        self.done = not chunked and not content_length      # no body: all of it is here
        self._conn: ConnectionView | None = None
        self._continued = False
        self._chunked_out = False               # the answer's body goes chunked
        self._no_body = False                   # the answer has no body (HEAD, 204, 304)

    # ------------------------------------------------------------ about it

    @property
    def body_exists(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def remote(self) -> str:
        return self._conn.peer if self._conn is not None else ""

    # ------------------------------------------------------------ body

    def _pause(self) -> None:
        if self._conn is not None:
            self._conn.pause()

    def _resume(self) -> None:
        if self._conn is not None:
            self._conn.resume()

    def send_continue(self) -> None:
        """``100 Continue`` once, when the client asked for it and nothing was sent."""
        if self.expect_continue and not self._continued and not self.responded and \
                self._conn is not None:
            self._continued = True
            self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def read(self, timeout: float | None = BODY_TIMEOUT) -> bytes:
        """The body bytes received since the last call (waiting for some, which sends
        a ``100 Continue`` the client asked for); b"" at the end. Raises
        :class:`BodyError` when the body is malformed, stops coming for ``timeout``
        seconds, or the client went away mid-body."""
        if not self.ready:
            self.send_continue()
        try:
            return await super().read(timeout)
        except TimeoutError:      # (an OSError: first) nothing came for ``timeout`` seconds
            raise BodyError("the request body stopped coming", 408) from None
        except ProtocolError as exc:
            raise BodyError(str(exc), 400) from None
        except Exception as exc:  # noqa: BLE001 - the connection was lost
            raise BodyError(str(exc) or "the client went away", None) from None

    # ------------------------------------------------------------ answer

    def reply(self, status: int, message: str) -> None:
        """A short text answer of the proxy's own."""
        body = (message + "\n").encode("utf-8")
        self.respond(status, HTTPStatus(status).phrase,
                     [("Content-Type", "text/plain; charset=utf-8"),
                      ("Content-Length", str(len(body)))], body, end=True,
                     length=str(len(body)))

    def respond(self, status: int, reason: str, headers: list[tuple[str, str]],
                body: bytes = b"", *, end: bool = False, length: str | None = None,
                codings: str | None = None) -> None:
        """Send the head (and ``body``; ``end``: that is all). ``length``: the value of
        the Content-Length among ``headers``, if any; without one the body is chunked
        for an HTTP/1.1 client, close-delimited for HTTP/1.0. ``codings``: transfer
        codings the body already has (``gzip``), declared before ours. Bodies of HEAD
        answers and of 1xx/204/304 are never sent, whatever the headers say."""
        conn = self._conn
        assert conn is not None and not self.responded
        self.responded = True
        self.status = status
        if not self.done or (conn.server.stopping and not conn._pending):
            # the connection closes after this answer (stopping: unless requests read
            # behind this one wait for theirs)
            conn.keep_alive = False
        no_body = self.method == "HEAD" or status in (204, 304) or status < 200
        if length is None and not no_body:
            if self.version == (1, 1):
                self._chunked_out = True
            else:
                conn.keep_alive = False      # the end of the body is the end of the connection
        version = "HTTP/1.1" if self.version == (1, 1) else "HTTP/1.0"
        parts = [f"{version} {status} {reason}\r\n"]
        parts += [f"{k}: {v}\r\n" for k, v in headers]
        if self._chunked_out:
            parts.append(f"Transfer-Encoding: {codings}, chunked\r\n" if codings
                         else "Transfer-Encoding: chunked\r\n")
        if not conn.keep_alive:
            if self.version == (1, 1):
                parts.append("Connection: close\r\n")
        elif self.version == (1, 0):
            parts.append("Connection: keep-alive\r\n")
        parts.append("\r\n")
        head = "".join(parts).encode("latin-1")
        self._no_body = no_body
        if no_body:
            body = b""
        if end:
            conn.write(head + self._frame(body, True))
            conn.finish()
        else:
            conn.write(head + self._frame(body, False) if body else head)

    def interim(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """An upstream's interim answer (103 Early Hints) before the final one, its
        hop-by-hop headers left out, for an HTTP/1.1 client (an HTTP/1.0 one takes
        none: RFC 9110 §15.2)."""
        conn = self._conn
        if conn is None or conn.closing or self.responded or self.version != (1, 1):
            return
        parts = [f"HTTP/1.1 {status} {reason}\r\n"]
        parts += [f"{k}: {v}\r\n" for k, v in end_to_end_text(headers)]
        parts.append("\r\n")
        conn.write("".join(parts).encode("latin-1"))

    def _frame(self, data: bytes, last: bool) -> bytes:
        if self._chunked_out:
            out = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            return out + b"0\r\n\r\n" if last else out
        return data

    async def write(self, data: bytes) -> None:
        """More of the body; waits while the client's socket is full. Raises
        ConnectionResetError when the client went away."""
        conn = self._conn
        assert conn is not None
        if conn.closing:
            raise ConnectionResetError("the client went away")
        if data and not self._no_body:
            conn.write(self._frame(data, False))
        await conn.drain()

    def finish(self, data: bytes = b"") -> None:
        """The last bytes of the body, and its end."""
        conn = self._conn
        assert conn is not None
        if conn.closing:
            raise ConnectionResetError("the client went away")
        if self._no_body:
            data = b""
        framed = self._frame(data, True)
        if framed:
            conn.write(framed)
        conn.finish()

    def abort(self) -> None:
        """Cut the connection: the client sees a broken body, never a clean end."""
        if self._conn is not None:
            self._conn.abort()
