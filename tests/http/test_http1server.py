"""The client-facing HTTP/1.1 server (shadowproxy.http.server) on its own: small
handlers, real loopback sockets, exact bytes on the wire."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from shadowproxy.http.request import BodyError, Request
from shadowproxy.http.server import Server
from shadowproxy.proxy.server import bind
from tests.rawhttp import Incomplete, RawConn, exchange, request

Handler = Callable[[Request], Awaitable[None]]


# ------------------------------------------------------------------ helpers


@dataclass
class Live:
    """A running server, and the requests its handler was called with."""

    server: Server
    port: int
    calls: list[Request] = field(default_factory=list)

    async def conn(self) -> RawConn:
        return await RawConn.open(self.port)


@pytest.fixture
async def serve():
    """``await serve(handler, **server_kw)``: a Server on an ephemeral loopback port.
    Teardown shuts it down and cancels any handler still running."""
    lives: list[Live] = []
    tasks: set[asyncio.Task] = set()

    async def start(handler: Handler, **kw) -> Live:
        async def wrapped(req: Request) -> None:
            tasks.add(asyncio.current_task())  # type: ignore[arg-type]
            live.calls.append(req)
            await handler(req)

        sock = bind("127.0.0.1:0")
        live = Live(Server(wrapped, **kw), sock.getsockname()[1])
        await live.server.start(sock)
        lives.append(live)
        return live

    yield start
    for live in lives:
        if not live.server.stopping:
            await live.server.shutdown(1.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def read_all(req: Request) -> bytes:
    parts = []
    while data := await req.read():
        parts.append(data)
    return b"".join(parts)


def answer(req: Request, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
    """A complete answer with a Content-Length."""
    n = str(len(body))
    req.respond(200, "OK", [*(headers or []), ("Content-Length", n)], body, end=True,
                length=n)


async def echo(req: Request) -> None:
    """The request body back, with the method and target in headers."""
    body = await read_all(req)
    answer(req, body, [("X-Method", req.method), ("X-Target", req.target)])


async def hello(req: Request) -> None:
    answer(req, b"hello")


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def send_raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection while reading; everything received until the
    server closes (EOF or reset). TimeoutError if it does not close within ``timeout``.
    The server may close before reading all of ``data``: sending errors are ignored."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    received = bytearray()

    async def send() -> None:
        try:
            await loop.sock_sendall(sock, data)
        except OSError:
            pass

    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        piece = await loop.sock_recv(sock, 65536)
                    except ConnectionResetError:
                        break
                    if not piece:
                        break
                    received += piece
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    finally:
        sock.close()
    return bytes(received)


def one_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of exactly one Content-Length response in ``data``."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data[:200]
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    assert len(body) == int(headers["content-length"]), data[:300]
    return int(lines[0].split(" ", 2)[1]), headers, body


async def closed(conn: RawConn, timeout: float) -> bool:
    """True when the server closed (or reset) the connection within ``timeout``; False
    when it is still open then."""
    try:
        data = await asyncio.wait_for(conn.reader.read(1), timeout)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    assert data == b"", f"unexpected bytes {data!r}"
    return True


async def wait_for_event(event: asyncio.Event, timeout: float = 5.0) -> None:
    await asyncio.wait_for(event.wait(), timeout)


# ------------------------------------------------------------------ parsing


async def test_pipelined_requests_are_answered_in_order_one_at_a_time(serve):
    active = peak = 0

    async def handler(req: Request) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.02)   # room for an overlap, were there one
            await echo(req)
        finally:
            active -= 1

    live = await serve(handler)
    data = (request("POST", "/one", body=b"first body")
            + request("POST", "/two", [("Transfer-Encoding", "chunked")])
            + chunked(b"second", b" body")
            + request("GET", "/three"))
    async with await live.conn() as conn:
        await conn.send(data)
        responses = [await conn.read_response() for _ in range(3)]
        assert not await closed(conn, 0.2)       # still open for more
    assert [(r.status, r.get("X-Method"), r.get("X-Target"), r.body) for r in responses] == [
        (200, b"POST", b"/one", b"first body"),
        (200, b"POST", b"/two", b"second body"),
        (200, b"GET", b"/three", b""),
    ]
    assert peak == 1
    assert live.server.requests == 3


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_head_and_body_one_byte_at_a_time(serve, framing):
    live = await serve(echo)
    headers = [("Host", "example.test"), ("x-lower", "a b"), ("X-Tab", "\tc\t")]
    if framing == "length":
        headers.append(("Content-Length", "11"))
        body = b"hello world"
    else:
        headers.append(("Transfer-Encoding", "chunked"))
        body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    data = request("PUT", "/p?q=1", headers) + body
    async with await live.conn() as conn:
        conn.writer.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            await conn.send(data[i:i + 1])
            await asyncio.sleep(0.001)
        resp = await conn.read_response()
        assert resp.status == 200 and resp.body == b"hello world"
        # and the connection is ready for the next request
        await conn.send(request("GET", "/next"))
        assert (await conn.read_response()).get("X-Target") == b"/next"
    req = live.calls[0]
    assert (req.method, req.target, req.version) == ("PUT", "/p?q=1", (1, 1))
    assert req.headers == [("Host", "example.test"), ("x-lower", "a b"), ("X-Tab", "c"),
                           headers[-1]]


async def test_request_body_flow_control(serve):
    """A handler that does not read holds the client back: the server stops reading
    (bounded memory) and the client's writes stall, until the handler reads."""
    size = 16 * 1024 * 1024
    body = os.urandom(size)
    sent = 0
    seen: dict[str, int] = {}

    async def handler(req: Request) -> None:
        await asyncio.sleep(0.5)
        seen["sent"] = sent
        first = await req.read()
        seen["first"] = len(first)
        rest = await read_all(req)
        digest = hashlib.sha256(first + rest).hexdigest()
        answer(req, digest.encode(), [("X-Length", str(len(first) + len(rest)))])

    live = await serve(handler)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", live.port))

    reader, writer = await asyncio.open_connection(sock=sock)
    conn = RawConn(reader, writer)

    async def pump() -> None:
        nonlocal sent
        await conn.send(request("POST", "/upload", [("Content-Length", str(size))]))
        step = 64 * 1024
        for i in range(0, size, step):
            await conn.send(body[i:i + step])    # drained: the kernel took (most of) it
            sent += step

    sender = asyncio.create_task(pump())
    try:
        resp = await conn.read_response(timeout=30)
        await asyncio.wait_for(sender, 5)
    finally:
        sender.cancel()
        conn.close()
    assert resp.status == 200
    assert resp.get("X-Length") == str(size).encode()
    assert resp.body == hashlib.sha256(body).hexdigest().encode()
    assert seen["sent"] < 4 * 1024 * 1024, seen      # the client stalled
    assert seen["first"] <= 1024 * 1024, seen        # the server queued little


# ------------------------------------------------------------------ response framing


async def framed(req: Request) -> None:
    """/length: Content-Length; /stream: no length; /204, /304: a body given anyway.
    The body goes out in three pieces: respond, write, finish."""
    body = await read_all(req)
    assert body == b""
    if req.target == "/length":
        req.respond(200, "OK", [("X-A", "1"), ("Content-Length", "6")], b"hel", length="6")
        await req.write(b"lo")
        req.finish(b"!")
    elif req.target == "/stream":
        req.respond(200, "OK", [("X-A", "1")], b"hel")
        await req.write(b"lo")
        req.finish(b"!")
    elif req.target == "/204":
        req.respond(204, "No Content", [("X-A", "1")], b"oops", end=True)
    elif req.target == "/304":
        req.respond(304, "Not Modified", [("ETag", '"x"')], b"oops", end=True)
    else:
        req.reply(404, "no such thing")


@pytest.mark.parametrize("path,framing,ending", [
    ("/length", (b"Content-Length", b"6"), b"\r\n\r\nhello!"),           # identity
    ("/stream", (b"Transfer-Encoding", b"chunked"), b"\r\n0\r\n\r\n"),  # no length: chunked
])
async def test_http11_response_framing(serve, path, framing, ending):
    live = await serve(framed)
    async with await live.conn() as conn:
        await conn.send(request("GET", path))
        resp = await conn.read_response()
        assert resp.status_line == b"HTTP/1.1 200 OK"
        assert resp.headers == [(b"X-A", b"1"), framing]
        assert resp.body == b"hello!"
        assert resp.raw.endswith(ending)
        await conn.send(request("GET", path))     # reusable
        assert (await conn.read_response()).body == b"hello!"


async def test_response_without_length_to_http10_is_close_delimited(serve):
    live = await serve(framed)
    async with await live.conn() as conn:
        await conn.send(request("GET", "/stream", [("Connection", "keep-alive")],
                                version="HTTP/1.0"))
        resp = await conn.read_response()   # no length, no chunks: reads up to the close
        assert resp.status_line == b"HTTP/1.0 200 OK"
        assert resp.headers == [(b"X-A", b"1")]
        assert resp.body == b"hello!"
        assert await closed(conn, 0.5)


async def test_head_answer_has_no_body_and_keeps_the_connection(serve):
    live = await serve(framed)
    async with await live.conn() as conn:
        await conn.send(request("HEAD", "/length"))
        resp = await conn.read_response("HEAD")
        assert resp.status == 200 and resp.get("Content-Length") == b"6"
        assert resp.get("Connection") is None
        # were any body bytes sent, they would be read as the next status line
        await conn.send(request("GET", "/length"))
        resp = await conn.read_response()
        assert resp.status_line == b"HTTP/1.1 200 OK" and resp.body == b"hello!"


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_have_no_body(serve, status):
    live = await serve(framed)
    async with await live.conn() as conn:
        await conn.send(request("GET", f"/{status}"))
        resp = await conn.read_response()
        assert resp.status == status
        assert [k for k, _ in resp.headers] == [b"ETag" if status == 304 else b"X-A"]
        await conn.send(request("GET", "/length"))
        resp = await conn.read_response()
        assert resp.status_line == b"HTTP/1.1 200 OK" and resp.body == b"hello!"


async def test_http10_keep_alive_with_length_stays_open(serve):
    live = await serve(framed)
    async with await live.conn() as conn:
        for _ in range(2):
            await conn.send(request("GET", "/length", [("Connection", "keep-alive")],
                                    version="HTTP/1.0"))
            resp = await conn.read_response()
            assert resp.status_line == b"HTTP/1.0 200 OK" and resp.body == b"hello!"
            assert resp.get("Connection") == b"keep-alive"
        assert not await closed(conn, 0.3)


async def test_http10_without_keep_alive_closes(serve):
    live = await serve(framed)
    async with await live.conn() as conn:
        await conn.send(request("GET", "/length", version="HTTP/1.0"))
        resp = await conn.read_response()
        assert resp.body == b"hello!" and resp.get("Connection") is None
        assert await closed(conn, 2.0)


async def test_connection_close_from_http11_client(serve):
    live = await serve(framed)
    async with await live.conn() as conn:
        await conn.send(request("GET", "/length", [("Connection", "close")]))
        resp = await conn.read_response()
        assert resp.body == b"hello!"
        assert resp.get("Connection") == b"close"
        assert await closed(conn, 2.0)


# ------------------------------------------------------------------ malformed requests


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


MALFORMED = {
    "te-and-length": (_head("POST / HTTP/1.1", "Host: x", "Transfer-Encoding: chunked",
                            "Content-Length: 5") + b"5\r\nhello\r\n0\r\n\r\n", 400),
    "length-not-a-number": (_head("POST / HTTP/1.1", "Host: x", "Content-Length: abc"), 400),
    "two-lengths": (_head("POST / HTTP/1.1", "Host: x", "Content-Length: 5",
                          "Content-Length: 6") + b"hello!", 400),
    "te-not-chunked-last": (_head("POST / HTTP/1.1", "Host: x", "Transfer-Encoding: gzip")
                            + b"hello", 400),
    "te-chunked-then-gzip": (_head("POST / HTTP/1.1", "Host: x",
                                   "Transfer-Encoding: chunked, gzip") + b"hello", 400),
    "obs-fold": (_head("GET / HTTP/1.1", "Host: x", "X-A: 1", "  folded"), 400),
    "obs-fold-with-colon": (_head("GET / HTTP/1.1", "Host: x", "X-A: 1", " X-B: 2"), 400),
    "bare-lf": (b"GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n", 400),
    "space-before-colon": (_head("GET / HTTP/1.1", "Host: x", "X-A : 1"), 400),
    "control-char-in-value": (_head("GET / HTTP/1.1", "Host: x", "X-A: a\x01b"), 400),
    "nul-in-value": (_head("GET / HTTP/1.1", "Host: x", "X-A: a\x00b"), 400),
    "three-spaces": (_head("GET /a b HTTP/1.1", "Host: x"), 400),
    "double-space": (_head("GET  / HTTP/1.1", "Host: x"), 400),
    "tab-in-target": (_head("GET /a\tb HTTP/1.1", "Host: x"), 400),
    "no-version": (_head("GET /", "Host: x"), 400),
    "http-2.0": (_head("GET / HTTP/2.0", "Host: x"), 505),
    "long-target": (_head("GET /" + "a" * 20_000 + " HTTP/1.1", "Host: x"), 414),
    "long-header": (_head("GET / HTTP/1.1", "Host: x", "X-Big: " + "v" * 20_000), 431),
    "te-in-http-1.0": (_head("POST / HTTP/1.0", "Host: x", "Connection: keep-alive",
                             "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n", 400),
    "te-gzip-chunked": (_head("POST / HTTP/1.1", "Host: x",
                              "Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n", 501),
    "two-hosts": (_head("GET / HTTP/1.1", "Host: x", "Host: y"), 400),
    "no-host-http-1.1": (_head("GET / HTTP/1.1", "X-A: 1"), 400),
    # 300 KB: thousands of headers (beyond the header count too)
    "huge-head-of-tiny-headers": (_head("GET / HTTP/1.1", "Host: x",
                                        *[f"X-H{i:05}: {i:012}" for i in range(12_000)]),
                                  431),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_request_is_answered_and_closed(serve, name):
    data, status = MALFORMED[name]
    live = await serve(echo)
    received = await send_raw(live.port, data)    # TimeoutError unless the server closes
    got, headers, _ = one_response(received)
    assert got == status
    assert headers.get("connection") == "close"
    assert live.calls == []
    assert live.server.bad_requests == 1


async def test_head_beyond_max_head_within_the_header_count_is_refused(serve):
    """A 280 KB head: 900 headers (under MAX_HEADERS), each well under MAX_LINE. Sent
    as 250 KB, a pause, then the last 30 KB (one piece for the server)."""
    data = _head("GET / HTTP/1.1", "Host: x",
                 *[f"X-H{i:04}: {'v' * 300}" for i in range(900)])
    assert len(data) > 270_000
    live = await serve(echo)
    async with await live.conn() as conn:
        await conn.send(data[:250_000])
        await asyncio.sleep(0.2)
        await conn.send(data[250_000:])
        resp = await conn.read_response()
    assert (resp.status, len(live.calls)) == (431, 0)


async def test_malformed_request_after_a_good_one(serve):
    """A bad head pipelined behind a good request: the good one is answered, then the
    400, then the close."""
    live = await serve(echo)
    received = await send_raw(live.port, request("GET", "/good")
                              + _head("GET / HTTP/1.1", "Host: x", "X-A : 1"))
    end = received.index(b"\r\n\r\n") + 4      # the echo's body is empty
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nX-Target: /good\r\nContent-Length: 0\r\n\r\n" in received[:end]
    assert one_response(received[end:])[0] == 400
    assert [r.target for r in live.calls] == ["/good"]
    assert live.server.bad_requests == 1


async def test_bad_requests_are_counted(serve):
    live = await serve(echo)
    for name in ("bare-lf", "two-lengths", "http-2.0"):
        await send_raw(live.port, MALFORMED[name][0])
    assert (live.server.bad_requests, live.server.requests, live.calls) == (3, 0, [])
    assert (await exchange(live.port, request("GET", "/fine"))).status == 200
    assert (live.server.bad_requests, live.server.requests) == (3, 1)


# ------------------------------------------------------------------ 100-continue


async def test_100_continue_is_sent_when_the_handler_reads(serve):
    reading = asyncio.Event()

    async def handler(req: Request) -> None:
        await asyncio.sleep(0.3)
        reading.set()
        await echo(req)

    live = await serve(handler)
    async with await live.conn() as conn:
        await conn.send(request("POST", "/up", [("Expect", "100-continue"),
                                                ("Content-Length", "5")]))
        status_line, headers, _ = await conn.read_head(timeout=5)
        assert reading.is_set()        # not before the handler asked for the body
        assert status_line == b"HTTP/1.1 100 Continue" and headers == []
        await conn.send(b"hello")
        resp = await conn.read_response()
        assert resp.status == 200 and resp.body == b"hello" and resp.interim == []
        assert resp.get("Connection") is None


async def test_no_100_continue_when_the_handler_answers_without_reading(serve):
    live = await serve(hello)
    async with await live.conn() as conn:
        await conn.send(request("POST", "/up", [("Expect", "100-continue"),
                                                ("Content-Length", "5")]))
        resp = await conn.read_response(skip_interim=False)
        assert resp.status == 200 and resp.body == b"hello"
        assert resp.get("Connection") == b"close"    # the body is still to come
        assert await closed(conn, 2.0)


# ------------------------------------------------------------------ client goes away


def hanging(started: asyncio.Event, cancelled: asyncio.Event) -> Handler:
    """Answers /fast at once; any other request waits (30 s) and records cancellation."""
    async def handler(req: Request) -> None:
        if req.target == "/fast":
            answer(req, b"fast")
            return
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        answer(req, b"late")
    return handler


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_gone_cancels_the_handler(serve, how):
    started, cancelled = asyncio.Event(), asyncio.Event()
    live = await serve(hanging(started, cancelled))
    conn = await live.conn()
    await conn.send(request("GET", "/slow"))
    await wait_for_event(started)
    conn.close() if how == "close" else conn.abort()
    await wait_for_event(cancelled)
    assert not live.server.connections


async def test_client_gone_cancels_a_pipelined_handler(serve):
    started, cancelled = asyncio.Event(), asyncio.Event()
    live = await serve(hanging(started, cancelled))
    conn = await live.conn()
    await conn.send(request("GET", "/fast") + request("GET", "/slow"))
    assert (await conn.read_response()).body == b"fast"
    await wait_for_event(started)
    conn.close()
    await wait_for_event(cancelled, 3.0)


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("where", ["handler", "own-task"])
async def test_client_gone_mid_body_is_never_a_complete_body(serve, framing, how, where):
    """The body is read by the handler (which may be cancelled instead) or by a task of
    its own, as when streamed upstream: the handler's cancellation does not reach that
    one, so read() itself must tell."""
    got_some = asyncio.Event()
    outcome: list[str] = []

    async def consume(req: Request) -> None:
        try:
            while await req.read():
                got_some.set()
            outcome.append("complete")
        except BodyError as exc:
            assert exc.status is None          # the client went away: nobody to answer
            outcome.append("reset")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async def handler(req: Request) -> None:
        if where == "handler":
            await consume(req)
        else:
            task = asyncio.create_task(consume(req))
            await asyncio.wait({task})
        answer(req, b"done")

    live = await serve(handler)
    conn = await live.conn()
    if framing == "length":
        await conn.send(request("POST", "/up", [("Content-Length", "100000")]) + b"x" * 1000)
    else:
        await conn.send(request("POST", "/up", [("Transfer-Encoding", "chunked")])
                        + b"3e8\r\n" + b"x" * 1000 + b"\r\n")
    await wait_for_event(got_some)
    conn.close() if how == "close" else conn.abort()
    for _ in range(500):
        if outcome:
            break
        await asyncio.sleep(0.01)
    assert outcome in ((["reset"], ["cancelled"]) if where == "handler" else (["reset"],))


# ------------------------------------------------------------------ handler errors


async def test_handler_exception_is_a_500_and_the_server_goes_on(serve):
    async def handler(req: Request) -> None:
        if req.target == "/boom":
            raise RuntimeError("boom")
        answer(req, b"fine")

    live = await serve(handler)
    async with await live.conn() as conn:
        await conn.send(request("GET", "/boom"))
        resp = await conn.read_response()
        assert resp.status == 500
        assert resp.get("Connection") == b"close"
        assert await closed(conn, 2.0)
    for _ in range(2):
        resp = await exchange(live.port, request("GET", "/ok"))
        assert resp.status == 200 and resp.body == b"fine"


# ------------------------------------------------------------------ keep-alive timeout


async def test_idle_keep_alive_connection_is_closed(serve):
    live = await serve(hello, keepalive_timeout=0.2)
    async with await live.conn() as conn:
        await conn.send(request("GET", "/"))
        assert (await conn.read_response()).body == b"hello"
        t0 = time.monotonic()
        assert await closed(conn, 3.0)
        assert 0.1 < time.monotonic() - t0 < 2.0
    async with await live.conn() as conn:            # never sent anything
        assert await closed(conn, 3.0)


async def test_busy_connection_is_not_cut_by_the_keep_alive_timeout(serve):
    async def handler(req: Request) -> None:
        await asyncio.sleep(0.5)
        answer(req, b"slow")

    live = await serve(handler, keepalive_timeout=0.2)
    async with await live.conn() as conn:
        await conn.send(request("GET", "/"))
        resp = await conn.read_response(timeout=5)
        assert resp.status == 200 and resp.body == b"slow"


# ------------------------------------------------------------------ shutdown


async def test_graceful_shutdown(serve):
    started = asyncio.Event()
    finished = asyncio.Event()

    async def handler(req: Request) -> None:
        started.set()
        await asyncio.sleep(0.3)
        answer(req, b"x" * 100_000)
        finished.set()

    live = await serve(handler)
    idle = await live.conn()
    busy = await live.conn()
    await busy.send(request("GET", "/slow"))
    await wait_for_event(started)
    t0 = time.monotonic()
    stopping = asyncio.create_task(live.server.shutdown(2.0))
    try:
        assert await closed(idle, 2.0)
        assert not finished.is_set()                 # at once, not after the busy one
        with pytest.raises(OSError):                 # no new connections
            await RawConn.open(live.port)
        resp = await busy.read_response(timeout=5)
        assert resp.status == 200 and resp.body == b"x" * 100_000
        assert await closed(busy, 2.0)
        await asyncio.wait_for(stopping, 5)
        assert time.monotonic() - t0 < 1.5
        assert not live.server.connections
    finally:
        idle.close()
        busy.close()


async def test_shutdown_aborts_what_is_left_at_the_deadline(serve):
    started, cancelled = asyncio.Event(), asyncio.Event()
    live = await serve(hanging(started, cancelled))
    async with await live.conn() as conn:
        await conn.send(request("GET", "/slow"))
        await wait_for_event(started)
        t0 = time.monotonic()
        await asyncio.wait_for(live.server.shutdown(0.2), 5)
        assert 0.15 < time.monotonic() - t0 < 1.0
        with pytest.raises((Incomplete, ConnectionResetError)):   # cut, with RST
            await conn.read_response(timeout=2)
    await wait_for_event(cancelled, 2.0)


async def test_shutdown_closes_a_connection_with_a_partial_head(serve):
    live = await serve(hello)
    async with await live.conn() as conn:
        await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await asyncio.wait_for(live.server.shutdown(0.2), 5)
        elapsed = time.monotonic() - t0
        try:
            await conn.send(b"\r\n")             # the end of the head
            after = await asyncio.wait_for(conn.reader.read(65536), 1.0)
        except ConnectionError:
            after = b""
    assert (elapsed < 1.0, after, len(live.calls)) == (True, b"", 0)


async def _answer_body_errors(req: Request) -> None:
    try:
        body = await read_all(req)
    except BodyError as exc:
        req.reply(exc.status or 400, f"body error {exc.status}")
        return
    answer(req, body)


@pytest.mark.parametrize("body", [
    b" 3\r\nabc\r\n0\r\n\r\n",                  # whitespace before the size
    b"3;\nxx\r\nabc\r\n0\r\n\r\n",             # bare LF in an extension
    b"3;a=\x00\r\nabc\r\n0\r\n\r\n",           # NUL in an extension
    b"3\r\nabc\r\n0\r\nnot a header\r\n\r\n",    # a trailer line that is no header
    b"-3\r\nabc\r\n0\r\n\r\n",
    b"3\r\nabcX\r\n0\r\n\r\n",                  # chunk longer than its size
], ids=["space-size", "lf-ext", "nul-ext", "bad-trailer", "negative", "overlong"])
async def test_malformed_chunked_body_is_a_400_never_a_body(serve, body):
    live = await serve(_answer_body_errors)
    data = _head("POST / HTTP/1.1", "Host: x", "Transfer-Encoding: chunked") + body
    received = await send_raw(live.port, data)
    got, headers, _ = one_response(received)
    # answered by the server itself when the bad line comes with the head, else by the
    # handler's read(): a 400 and a closed connection either way, never a body
    assert got == 400
    assert headers.get("connection") == "close"
    # the body after the head has reached the handler: its read() fails with 400
    async with await live.conn() as conn:
        await conn.send(data[:len(data) - len(body)])
        await asyncio.sleep(0.1)
        await conn.send(body)
        resp = await conn.read_response()
        assert resp.status == 400 and resp.body.startswith(b"body error 400")
        assert await closed(conn, 2.0)


async def test_websocket_hand_over_is_not_cut_by_the_idle_timer(serve):
    """After an upgrade is handed over, the server's keep-alive timer must not close
    what is now somebody else's connection."""
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    live = await serve(hello, on_upgrade=Echo, keepalive_timeout=0.3)
    async with await live.conn() as conn:
        await conn.send(_head("GET /ws HTTP/1.1", "Host: x", "Upgrade: websocket",
                              "Connection: Upgrade"))
        await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 2)   # echoed head
        for i in range(4):                       # 1.2 s in all: four idle timeouts
            await asyncio.sleep(0.3)
            await conn.send(b"ping %d" % i)
            assert await asyncio.wait_for(conn.reader.readexactly(6), 2) == b"ping %d" % i


async def test_partial_pipelined_head_is_closed_by_the_idle_timer(serve):
    live = await serve(hello, keepalive_timeout=0.3)
    async with await live.conn() as conn:
        await conn.send(_head("GET / HTTP/1.1", "Host: x") + b"G")
        await conn.read_response()
        assert await closed(conn, 2.0)


def test_abort_twice_is_quiet():
    """A shutdown's deadline aborts connections that a handler may abort again: the
    second abort finds the socket closed and must not raise (uvloop, the loop a worker
    runs, says ValueError: negative file descriptor)."""
    import uvloop

    async def main() -> None:
        started = asyncio.Event()

        async def hold(req: Request) -> None:
            started.set()
            await asyncio.sleep(30)

        sock = bind("127.0.0.1:0")
        server = Server(hold)
        await server.start(sock)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(started.wait(), 5)
        (conn,) = server.connections
        conn.abort()
        await asyncio.sleep(0.05)
        conn.abort()                         # no exception
        with pytest.raises(ConnectionResetError):
            await reader.read()              # RST: cut, never a clean end
        writer.close()
        await server.shutdown(0.1)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
