"""Three HTTP/1.1 parsers behind one interface, for the differential test
(tests/http/test_http_differential.py): the project's own (``shadowproxy.http.request.
RequestParser`` and ``shadowproxy.http.response.ResponseParser``), h11 (pure Python, strict) and
llhttp (Node's parser; the copy inside httptools, strict: every leniency off).

Each parses a whole byte stream followed by the end of the connection and says, message
by message, what it made of it: a :class:`Msg` (where its head ends, its body bytes,
where it ends, whether the connection may carry another), then how the stream ended: an
:class:`End` (nothing more, or only the empty lines a parser skips between messages) or
a :class:`Rej` (rejected, or cut off at the end of the connection: either way no message).
A message that says the connection closes after it is the last one looked at.

llhttp is driven through ctypes on the library inside httptools' extension module (its
symbols are exported): httptools' Python API has no ``llhttp_finish`` (the end of a
close-delimited response) and no way to say "this answers a HEAD request" (its
``on_headers_complete`` cannot return 1). :func:`llhttp_self_check` checks the struct
layout against the installed copy; ``httptools_requests`` parses requests through
httptools' own API, to check this driver against it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import h11
import httptools
import httptools.parser.parser as _httptools_parser

from shadowproxy.errors import ProtocolError, ResetError
from shadowproxy.http.request import RequestParser
from shadowproxy.http.response import ResponseParser

# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Msg:
    """One message a parser accepted, offsets into the whole stream."""

    head_end: int          # just after the blank line ending the (final) head
    end: int               # just after the message's last byte: the next one starts here
    body: bytes
    keep_alive: bool       # the connection may carry another message after this one
    start: tuple           # (method, target, version) or (status, interim statuses)

    def diff(self, other: Msg) -> set[str]:
        """The fields in which two messages differ."""
        return {f for f in ("head_end", "end", "body", "keep_alive", "start")
                if getattr(self, f) != getattr(other, f)}


@dataclass(frozen=True)
class Rej:
    """No message: the bytes were rejected, or the connection ended inside the message.
    ``head``: its head had been accepted (the body was the problem)."""

    head: bool
    reason: str = field(compare=False, default="")


@dataclass(frozen=True)
class End:
    """Nothing more (or only empty lines, which a parser may skip between messages)."""


State = Msg | Rej | End


def _crlf_only(rest: bytes) -> bool:
    return not rest.strip(b"\r\n")


# ---------------------------------------------------------------- ours


def ours_requests(data: bytes, pieces: list[int] | None = None) -> list[State]:
    """The project's request parser on ``data`` (cut at the offsets ``pieces``, default:
    fed byte by byte, which tells where each head ends), as the client connection uses
    it: a new parser for the bytes after each message, none after one that closes."""
    cuts = sorted(set(pieces)) if pieces is not None else list(range(1, len(data)))
    out: list[State] = []
    pos = 0
    while True:
        if pos >= len(data):
            out.append(End())
            return out
        p = RequestParser(lambda _b: None)
        head_end = None
        done = False
        at = pos
        try:
            for cut in [c for c in cuts if c > pos] + [len(data)]:
                done = p.feed(data[at:cut])
                if head_end is None and p.head is not None:
                    head_end = cut
                at = cut
                if done:
                    break
        except ProtocolError as exc:
            out.append(Rej(p.head is not None, f"ours: {exc}"))
            return out
        if not done:
            if p.head is None and _crlf_only(data[pos:]):
                out.append(End())      # empty lines, then the client closed: no request
            else:
                out.append(Rej(p.head is not None, "ours: the connection ended mid-message"))
            return out
        req = p.head
        end = at - len(p.tail)
        body = b"".join(bytes(c) for c in req._chunks)
        ver = f"{req.version[0]}.{req.version[1]}"
        out.append(Msg(head_end if pieces is None else -1, end, body, p.keep_alive,
                       (req.method, req.target, ver)))
        if not p.keep_alive:
            return out
        pos = end


def ours_response(data: bytes, method: str = "GET",
                  pieces: list[int] | None = None) -> list[State]:
    """The project's response parser (the answer to a ``method`` request) on ``data``,
    then the end of the connection."""
    cuts = sorted(set(pieces)) if pieces is not None else list(range(1, len(data)))
    body: list[bytes] = []
    interim: list[int] = []
    p = ResponseParser(lambda b: body.append(bytes(b)), no_body=method == "HEAD",
                       on_interim=lambda status, _r, _h: interim.append(status))
    head_end = None
    done = False
    at = 0
    try:
        for cut in [c for c in cuts if c > 0] + [len(data)]:
            done = p.feed(data[at:cut])
            if head_end is None and p.head is not None:
                head_end = cut
            at = cut
            if done:
                break
        end = at - len(p.tail)
        if not done:
            p.eof()
            done = p.done
            end = len(data)
    except (ProtocolError, ResetError) as exc:
        return [Rej(p.head is not None, f"ours: {exc}")]
    assert done and p.head is not None
    return [Msg(head_end if pieces is None else -1, end, b"".join(body), p.keep_alive,
                (p.head.status, tuple(interim)))]


# ---------------------------------------------------------------- h11


def _h11_pos(conn: h11.Connection, fed: int) -> int:
    # bytes consumed so far: h11 keeps what it has not parsed yet in its receive buffer
    return fed - len(conn._receive_buffer)


def h11_requests(data: bytes) -> list[State]:
    """h11 as a server: each request answered (an empty 200) before the next is read."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list[State] = []
    cur: dict | None = None
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            out.append(Rej(cur is not None, f"h11: {exc}"))
            return out
        if isinstance(ev, h11.Request):
            cur = {"head_end": _h11_pos(conn, len(data)), "body": [],
                   "start": (ev.method.decode("latin-1"), ev.target.decode("latin-1"),
                             ev.http_version.decode())}
        elif isinstance(ev, h11.Data):
            assert cur is not None
            cur["body"].append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            assert cur is not None
            keep = conn.their_state is h11.DONE
            out.append(Msg(cur["head_end"], _h11_pos(conn, len(data)), b"".join(cur["body"]),
                           keep, cur["start"]))
            cur = None
            if not keep:
                return out
            conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        elif isinstance(ev, h11.ConnectionClosed):
            out.append(End())
            return out
        else:  # NEED_DATA / PAUSED cannot happen once the end of the stream is known
            raise AssertionError(f"h11: unexpected {ev!r}")


def h11_response(data: bytes, method: str = "GET", eof: bool = True) -> list[State]:
    """h11 as a client that sent one ``method`` request. (A response that ends only with
    the connection leaves h11's connection DONE, not MUST_CLOSE: it is told apart by
    parsing it again without the end.)"""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "example")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    interim: list[int] = []
    cur: dict | None = None
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return [Rej(cur is not None, f"h11: {exc}")]
        if isinstance(ev, h11.InformationalResponse):
            if ev.status_code != 100:
                interim.append(ev.status_code)
        elif isinstance(ev, h11.Response):
            cur = {"head_end": _h11_pos(conn, len(data)), "body": [],
                   "start": (ev.status_code, tuple(interim))}
        elif isinstance(ev, h11.Data):
            assert cur is not None
            cur["body"].append(bytes(ev.data))
        elif isinstance(ev, h11.EndOfMessage):
            assert cur is not None
            keep = conn.their_state is h11.DONE
            if keep and eof and not isinstance(h11_response(data, method, False)[0], Msg):
                keep = False        # close-delimited
            return [Msg(cur["head_end"], _h11_pos(conn, len(data)), b"".join(cur["body"]),
                        keep, cur["start"])]
        elif isinstance(ev, h11.ConnectionClosed):
            return [Rej(False, "h11: closed before a response")]
        elif ev is h11.NEED_DATA and not eof:
            return [Rej(cur is not None, "h11: more data needed")]
        else:
            raise AssertionError(f"h11: unexpected {ev!r}")


# ---------------------------------------------------------------- llhttp (ctypes)

_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_DATA_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class _Settings(ctypes.Structure):
    # llhttp.h 9.x, struct llhttp_settings_s, in order
    _fields_ = [
        ("on_message_begin", _CB),
        ("on_protocol", _DATA_CB),
        ("on_url", _DATA_CB),
        ("on_status", _DATA_CB),
        ("on_method", _DATA_CB),
        ("on_version", _DATA_CB),
        ("on_header_field", _DATA_CB),
        ("on_header_value", _DATA_CB),
        ("on_chunk_extension_name", _DATA_CB),
        ("on_chunk_extension_value", _DATA_CB),
        ("on_headers_complete", _CB),
        ("on_body", _DATA_CB),
        ("on_message_complete", _CB),
        ("on_protocol_complete", _CB),
        ("on_url_complete", _CB),
        ("on_status_complete", _CB),
        ("on_method_complete", _CB),
        ("on_version_complete", _CB),
        ("on_header_field_complete", _CB),
        ("on_header_value_complete", _CB),
        ("on_chunk_extension_name_complete", _CB),
        ("on_chunk_extension_value_complete", _CB),
        ("on_chunk_header", _CB),
        ("on_chunk_complete", _CB),
        ("on_reset", _CB),
    ]


_LLHTTP_T_SIZE = 1024          # more than sizeof(llhttp_t) (~100 bytes in 9.x)
HTTP_REQUEST, HTTP_RESPONSE = 1, 2
HPE_OK, HPE_PAUSED_UPGRADE = 0, 22

_lib = ctypes.CDLL(_httptools_parser.__file__)
_P = ctypes.c_void_p
for _name, _res, _args in [
    ("llhttp_init", None, [_P, ctypes.c_int, _P]),
    ("llhttp_settings_init", None, [_P]),
    ("llhttp_execute", ctypes.c_int, [_P, _P, ctypes.c_size_t]),
    ("llhttp_finish", ctypes.c_int, [_P]),
    ("llhttp_get_error_reason", ctypes.c_char_p, [_P]),
    ("llhttp_errno_name", ctypes.c_char_p, [ctypes.c_int]),
    ("llhttp_should_keep_alive", ctypes.c_int, [_P]),
    ("llhttp_get_status_code", ctypes.c_int, [_P]),
]:
    _fn = getattr(_lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args


def llhttp_self_check() -> None:
    """Raise when the installed httptools' llhttp does not have the layout this driver
    assumes (its settings struct is zeroed by ``llhttp_settings_init``: its size shows)."""
    size = ctypes.sizeof(_Settings) + 64
    buf = (ctypes.c_ubyte * size)(*([0xAA] * size))
    _lib.llhttp_settings_init(ctypes.addressof(buf))
    zeroed = next(i for i, b in enumerate(buf) if b != 0)
    if zeroed != ctypes.sizeof(_Settings):
        raise RuntimeError(f"llhttp_settings_t is {zeroed} bytes here, not "
                           f"{ctypes.sizeof(_Settings)}: update tests/http_oracles.py for "
                           f"httptools {httptools.__version__}")
    # the callbacks sit where this driver puts them: a known request, parsed right
    data = (b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\n\r\n")
    want = [Msg(57, 69, b"hi", True, ("POST", "/p", "1.1")), End()]
    if llhttp_requests(data) != want:
        raise RuntimeError(f"the llhttp driver misreads httptools {httptools.__version__}'s "
                           f"llhttp: update tests/http_oracles.py")


class _Llhttp:
    """One llhttp parser fed one byte at a time (each callback then knows its offset)."""

    def __init__(self, kind: int, data: bytes, skip_body: bool = False) -> None:
        self.data = data
        self.skip_body = skip_body
        self.buf = ctypes.create_string_buffer(data, len(data) + 1)
        self.base = ctypes.addressof(self.buf)
        self.parser = ctypes.create_string_buffer(_LLHTTP_T_SIZE)
        self.pos = 0                # offset of the byte being fed
        self.messages: list[dict] = []
        self.cur: dict | None = None
        s = self.settings = _Settings()
        _lib.llhttp_settings_init(ctypes.byref(s))
        self._keep = [
            _CB(self._begin), _DATA_CB(self._span("method")), _DATA_CB(self._span("url")),
            _DATA_CB(self._span("version")), _DATA_CB(self._span("status")),
            _CB(self._headers_complete), _DATA_CB(self._body), _CB(self._complete)]
        (s.on_message_begin, s.on_method, s.on_url, s.on_version, s.on_status,
         s.on_headers_complete, s.on_body, s.on_message_complete) = self._keep
        _lib.llhttp_init(ctypes.addressof(self.parser), kind, ctypes.byref(s))

    def _begin(self, _p: int) -> int:
        self.cur = {"method": b"", "url": b"", "version": b"", "status": b"", "body": [],
                    "head_end": None}
        return 0

    def _span(self, key: str):
        def cb(_p: int, at: int, length: int) -> int:
            assert self.cur is not None
            off = at - self.base
            self.cur[key] += self.data[off:off + length]
            return 0
        return cb

    def _headers_complete(self, p: int) -> int:
        assert self.cur is not None
        self.cur["head_end"] = self.pos + 1
        self.cur["code"] = code = _lib.llhttp_get_status_code(p)
        # no body (as Node's http client tells llhttp): HEAD answered, or an interim 1xx
        return 1 if self.skip_body or 100 <= code < 200 else 0

    def _body(self, _p: int, at: int, length: int) -> int:
        assert self.cur is not None
        off = at - self.base
        self.cur["body"].append(self.data[off:off + length])
        return 0

    def _complete(self, p: int) -> int:
        assert self.cur is not None
        self.cur["end"] = self.pos + 1
        self.cur["keep_alive"] = bool(_lib.llhttp_should_keep_alive(p))
        self.messages.append(self.cur)
        self.cur = None
        return 0

    def run(self, stop=lambda m: False) -> str | None:
        """Feed every byte, then the end; None when all was fine, else the error. Stops
        early (None) once ``stop(message)`` says so for a complete message."""
        p = ctypes.addressof(self.parser)
        n = len(self.messages)
        for i in range(len(self.data)):
            self.pos = i
            err = _lib.llhttp_execute(p, self.base + i, 1)
            if err != HPE_OK:
                return self._error(err)
            if len(self.messages) > n:
                n = len(self.messages)
                if stop(self.messages[-1]):
                    return None
        self.pos = len(self.data) - 1       # a close-delimited message ends at the end
        err = _lib.llhttp_finish(p)
        return None if err == HPE_OK else self._error(err)

    def _error(self, err: int) -> str:
        reason = _lib.llhttp_get_error_reason(ctypes.addressof(self.parser)) or b""
        return f"llhttp: {_lib.llhttp_errno_name(err).decode()}: {reason.decode()}"


def llhttp_requests(data: bytes) -> list[State]:
    ll = _Llhttp(HTTP_REQUEST, data)
    error = ll.run(stop=lambda m: not m["keep_alive"])
    out: list[State] = [
        Msg(m["head_end"], m["end"], b"".join(m["body"]), m["keep_alive"],
            (m["method"].decode("latin-1"), m["url"].decode("latin-1"),
             m["version"].decode("latin-1")))
        for m in ll.messages]
    if out and not out[-1].keep_alive:
        return out
    if error is not None or ll.cur is not None:
        head = ll.cur is not None and ll.cur["head_end"] is not None
        out.append(Rej(head, error or "llhttp: the connection ended mid-message"))
    else:
        out.append(End())
    return out


def llhttp_response(data: bytes, method: str = "GET") -> list[State]:
    ll = _Llhttp(HTTP_RESPONSE, data, skip_body=method == "HEAD")
    def is_final(m: dict) -> bool:
        return not 100 <= m["code"] < 200 or m["code"] == 101

    error = ll.run(stop=is_final)
    final = [m for m in ll.messages if is_final(m)]
    if final:
        m = final[0]
        interim = tuple(x["code"] for x in ll.messages[:-1] if x["code"] != 100)
        return [Msg(m["head_end"], m["end"], b"".join(m["body"]), m["keep_alive"],
                    (m["code"], interim))]
    head = ll.cur is not None and ll.cur["head_end"] is not None
    return [Rej(head, error or "llhttp: the connection ended mid-message")]


# ---------------------------------------------------------------- httptools' own API


def httptools_requests(data: bytes) -> list[State]:
    """llhttp through httptools' Python API, fed byte by byte: the same answers as
    :func:`llhttp_requests` (checks the ctypes driver)."""
    pos = 0
    msgs: list[dict] = []
    cur: dict = {}

    class Proto:
        def on_message_begin(self):
            cur.clear()
            cur.update(url=b"", body=[], head_end=None)

        def on_url(self, url):
            cur["url"] += url

        def on_headers_complete(self):
            cur["head_end"] = pos + 1

        def on_body(self, b):
            cur["body"].append(b)

        def on_message_complete(self):
            msgs.append(dict(cur, end=pos + 1, keep_alive=parser.should_keep_alive(),
                             method=parser.get_method(), version=parser.get_http_version()))
            cur.clear()

    parser = httptools.HttpRequestParser(Proto())
    out: list[State] = []
    error = None
    for pos in range(len(data)):
        try:
            parser.feed_data(data[pos:pos + 1])
        except httptools.HttpParserError as exc:
            error = f"httptools: {exc}"
            break
        if msgs and not msgs[-1]["keep_alive"]:
            break
    out = [Msg(m["head_end"], m["end"], b"".join(m["body"]), m["keep_alive"],
               (m["method"].decode(), m["url"].decode("latin-1"), m["version"]))
           for m in msgs]
    if out and not out[-1].keep_alive:
        return out
    if error is not None or cur:
        out.append(Rej(bool(cur) and cur.get("head_end") is not None, error or "cut"))
    else:
        out.append(End())
    return out


llhttp_self_check()      # at import: a wrong layout must not reach a callback
