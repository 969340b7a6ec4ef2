"""Fidelity of the primary path: what a client gets through the proxy is what it
gets from primary directly (minus hop-by-hop headers), byte for byte.

Every test runs real loopback servers and a real proxy and reads responses over
raw sockets (tests/rawhttp.py), so status line, header order and casing, and
body bytes are all visible. Upstream handlers send fixed Date/Server headers so
direct and proxied answers can be compared whole.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import brotli
import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.rawhttp import (
    Incomplete,
    RawConn,
    RawResponse,
    RawServer,
    canned,
    exchange,
    read_request,
    request,
)
from tests.support import Collector, Upstream, config, free_port, start_proxy

FIXED = (("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Server", "primary/1.0"))
PAYLOAD = b'{"items": [' + b", ".join(b'{"id": %d, "name": "item"}' % i for i in range(200)) + b"]}"
GZ = gzip.compress(PAYLOAD, mtime=0)
BR = brotli.compress(PAYLOAD)
HOP_NAMES = ("connection", "keep-alive", "proxy-connection", "te", "transfer-encoding",
             "upgrade", "trailer", "proxy-authenticate", "proxy-authorization")


@asynccontextmanager
async def raw_primary(handler, **cfg):
    """A raw-socket primary (``handler`` as for RawServer) and a proxy in front of it
    (``cfg``: config sections); both stopped at the end."""
    up = await RawServer(handler).start()
    srv = await start_proxy(config(up.url, **cfg))
    try:
        yield up, srv
    finally:
        await srv.stop()
        await up.stop()


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class State:
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    received: int = 0              # request body bytes read so far by /upload
    ws_close_code: int | None = None
    ws_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def last(self) -> Seen:
        return self.seen[-1]


def fixed(*extra: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict([*FIXED, *extra])


def primary_app(st: State) -> web.Application:
    async def record(request: web.Request, body: bytes = b"") -> None:
        st.seen.append(Seen(request.method, request.raw_path,
                            [(k.decode("latin-1"), v.decode("latin-1"))
                             for k, v in request.raw_headers], body))

    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/upload":
            h = hashlib.sha256()
            st.received = 0
            st.started.set()
            while chunk := await request.content.readany():
                h.update(chunk)
                st.received += len(chunk)
            await record(request)
            return web.Response(text=f"{st.received} {h.hexdigest()}", headers=fixed())
        if path == "/echo-body":
            body = await request.read()
            await record(request, body)
            return web.Response(body=body, headers=fixed(("X-Len", str(len(body)))))
        await record(request)
        if path == "/cookies":
            return web.Response(body=b"cookies", headers=fixed(
                ("Set-Cookie", "a=1; Path=/"), ("X-Mid", "m"),
                ("Set-Cookie", "b=2; HttpOnly"), ("Set-Cookie", "c=3; Secure")))
        if path == "/setcookie":
            return web.Response(body=b"set", headers=fixed(("Set-Cookie", "sid=client-a")))
        if path in ("/gzip", "/br"):
            body, enc = (GZ, "gzip") if path == "/gzip" else (BR, "br")
            return web.Response(body=body, headers=fixed(
                ("Content-Type", "application/json"), ("Content-Encoding", enc),
                ("Vary", "Accept-Encoding")))
        if path in ("/stream", "/stream-cl"):
            resp = web.StreamResponse(headers=fixed(("Content-Type", "text/plain")))
            if path == "/stream-cl":
                resp.content_length = 12
            await resp.prepare(request)
            await resp.write(b"first-")
            try:
                await asyncio.wait_for(st.release.wait(), 5.0)
            except TimeoutError:
                pass
            st.finished = True
            await resp.write(b"second")
            await resp.write_eof()
            return resp
        if path == "/chunked":
            resp = web.StreamResponse(headers=fixed(("Content-Type", "text/plain")))
            await resp.prepare(request)
            for part in (b"one ", b"two ", b"three"):
                await resp.write(part)
            await resp.write_eof()
            return resp
        if path == "/redirect":
            return web.Response(status=302, headers=fixed(
                ("Location", request.query["to"]), ("Content-Type", "text/plain")),
                body=b"moved")
        if path == "/hang":
            st.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                st.cancelled.set()
                raise
            return web.Response(body=b"late", headers=fixed())
        if path == "/drip":
            resp = web.StreamResponse(headers=fixed())
            await resp.prepare(request)
            st.started.set()
            try:
                for _ in range(600):
                    await resp.write(b"x" * 1024)
                    await asyncio.sleep(0.05)
            except (asyncio.CancelledError, ConnectionError):
                st.cancelled.set()
                raise
            return resp
        if path == "/ws-close":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str("bye soon")
            await ws.close(code=4002, message=b"primary done")
            st.ws_close_code = ws.close_code
            st.ws_closed.set()
            return ws
        if path == "/ws":
            ws = web.WebSocketResponse(protocols=("chat",))
            ws.headers["Set-Cookie"] = "ws=1"
            await ws.prepare(request)
            await ws.send_str("hello from primary")
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str("echo:" + msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            st.ws_close_code = ws.close_code
            st.ws_closed.set()
            return ws
        return web.Response(body=b"echo " + request.raw_path.encode("latin-1"),
                            headers=fixed(("X-Method", request.method)))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


class Env:
    def __init__(self) -> None:
        self.st = State()
        self.cand = State()
        self.primary: Upstream | None = None
        self.candidate: Upstream | None = None
        self._stop: list[object] = []
        self.sink = Collector()

    async def start(self) -> Env:
        self.primary = await Upstream(primary_app(self.st), handler_cancellation=True,
                                auto_decompress=False, max_headers=1024).start()
        self._stop.append(self.primary)
        return self

    async def with_candidate(self) -> Upstream:
        self.candidate = await Upstream(primary_app(self.cand), handler_cancellation=True,
                                        auto_decompress=False).start()
        self._stop.append(self.candidate)
        return self.candidate

    async def proxy(self, primary: str | None = None, candidate: str | None = None,
                    **extra: object):
        assert self.primary is not None
        srv = await start_proxy(config(primary or self.primary.url, candidate, **extra),
                                self.sink)
        self._stop.insert(0, srv)
        return srv

    async def raw(self, port: int, data: bytes, method: str = "GET") -> RawResponse:
        return await exchange(port, data, method)

    async def close(self) -> None:
        for s in self._stop:
            await s.stop()  # type: ignore[attr-defined]


@pytest.fixture
async def env():
    e = await Env().start()
    yield e
    await e.close()


async def both(env: Env, port: int, data: bytes, method: str = "GET",
               direct_port: int | None = None) -> tuple[RawResponse, RawResponse]:
    assert env.primary is not None
    direct = await exchange(direct_port or env.primary.port, data, method)
    via = await exchange(port, data, method)
    return direct, via


def assert_same(direct: RawResponse, via: RawResponse) -> None:
    assert via.fidelity() == direct.fidelity()
    if not any(k.lower().decode() in HOP_NAMES for k, _ in direct.headers + via.headers):
        # nothing hop-by-hop on either side: the whole answer is byte-identical
        assert via.raw == direct.raw


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("path", ["/stream", "/stream-cl"])
async def test_first_bytes_arrive_before_upstream_finishes(env, path):
    srv = await env.proxy()
    loop = asyncio.get_running_loop()
    async with await RawConn.open(srv.port) as c:
        t0 = loop.time()
        await c.send(request("GET", path))
        status, headers, _ = await c.read_head(timeout=3)
        chunked = any(k.lower() == b"transfer-encoding" for k, _ in headers)
        if chunked:
            size = int((await asyncio.wait_for(c.reader.readuntil(b"\r\n"), 3)), 16)
            first = await asyncio.wait_for(c.reader.readexactly(size), 3)
        else:
            first = await asyncio.wait_for(c.reader.readexactly(6), 3)
        t_first = loop.time() - t0
        # the upstream is still waiting (up to 5 s) for this test to let it finish
        assert not env.st.finished
        assert first == b"first-"
        assert t_first < 3
        env.st.release.set()
        rest = await asyncio.wait_for(c.reader.readuntil(b"second"), 2)
        assert rest.endswith(b"second")
    assert status == b"HTTP/1.1 200 OK"
    assert chunked == (path == "/stream")


async def test_chunked_response_identical(env):
    srv = await env.proxy()
    direct, via = await both(env, srv.port, request("GET", "/chunked"))
    assert via.body == b"one two three"
    assert_same(direct, via)
    assert via.get("Transfer-Encoding") == b"chunked"


# ------------------------------------------------------------------ compression


@pytest.mark.parametrize("path,encoded,enc", [("/gzip", GZ, b"gzip"), ("/br", BR, b"br")])
async def test_compressed_bodies_untouched(env, path, encoded, enc):
    srv = await env.proxy()
    req = request("GET", path, [("Accept-Encoding", "gzip, br")])
    direct, via = await both(env, srv.port, req)
    assert_same(direct, via)
    assert via.body == encoded
    assert via.get("Content-Encoding") == enc
    assert via.get("Content-Length") == str(len(encoded)).encode()
    # the proxy did not rewrite what the client accepts
    assert env.st.last().getall("Accept-Encoding") == ["gzip, br"]


async def test_no_accept_encoding_added(env):
    srv = await env.proxy()
    await exchange(srv.port, request("GET", "/plain"))
    seen = env.st.last()
    assert seen.get("Accept-Encoding") is None
    assert seen.get("User-Agent") is None


async def test_compressed_bodies_untouched_when_mirrored(env):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url,
                          routes=[{"match": "/echo-body", "mirror_unsafe": True}])
    for path, encoded in (("/gzip", GZ), ("/br", BR)):
        direct, via = await both(env, srv.port,
                                 request("GET", path, [("Accept-Encoding", "gzip, br")]))
        assert_same(direct, via)
        assert via.body == encoded
    # a compressed request body reaches primary and candidate as sent
    req_body = gzip.compress(b"hello " * 1000, mtime=0)
    via = await exchange(srv.port, request("POST", "/echo-body", [
        ("Content-Encoding", "gzip"), ("Content-Type", "application/json")], req_body))
    assert via.body == req_body
    items = await env.sink.wait_for(3)
    by_path = {ex.request.path: ex for ex in items}
    for path, encoded in (("/gzip", GZ), ("/br", BR), ("/echo-body", req_body)):
        ex = by_path[path]
        assert ex.primary.body == encoded
        # whole, as sent (a digest is kept only for a cut body)
        assert not ex.primary.truncated and ex.primary.sha256 == ""
        assert ex.candidate.body == encoded
        assert ex.candidate.error is None
    assert env.st.last().body == req_body
    assert env.cand.last().body == req_body
    assert env.cand.last().get("Content-Encoding") == "gzip"


# ------------------------------------------------------------------ request targets


TARGETS = [
    "/q?a=%2F&b=c+d&a=2&empty=&flag&sp=%20x&u=%E2%82%AC%C3%A9&pct=%25&plus=%2B",
    "/q?x=1&x=2&x=&x",
    "/q?semi=a;b&eq==&amp=%26&hash=%23",
    "/q?",
    "/a%2Fb/c%2f",
    "/a/../b",
    "/a/./b/../../c",
    "/a/%2E%2E/b",
    "//double//slash/",
    "/%7Euser/caf%C3%A9/%E2%82%AC",
    "/trailing/",
]


@pytest.mark.parametrize("target", TARGETS)
async def test_targets_reach_primary_exactly(env, target):
    srv = await env.proxy()
    via = await exchange(srv.port, request("GET", target))
    assert via.status == 200
    assert env.st.last().raw_path == target
    assert via.body == b"echo " + target.encode()


async def test_targets_reach_candidate_exactly(env):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url)
    targets = [t for t in TARGETS if isinstance(t, str)]
    for target in targets:
        await exchange(srv.port, request("GET", target))
    await env.sink.wait_for(len(targets))
    assert sorted(s.raw_path for s in env.cand.seen) == sorted(targets)
    assert sorted(s.raw_path for s in env.st.seen) == sorted(targets)


# ------------------------------------------------------------------ headers & status


async def test_multiple_set_cookie_in_order(env):
    srv = await env.proxy()
    direct, via = await both(env, srv.port, request("GET", "/cookies"))
    assert_same(direct, via)
    assert via.getall("Set-Cookie") == [b"a=1; Path=/", b"b=2; HttpOnly", b"c=3; Secure"]
    names = [k for k, _ in via.headers]
    assert names.index(b"X-Mid") == names.index(b"Set-Cookie") + 1


async def test_head_keeps_content_length(env):
    srv = await env.proxy()
    direct, via = await both(env, srv.port, request("HEAD", "/x"), "HEAD")
    assert_same(direct, via)
    assert via.get("Content-Length") == b"7"
    assert via.body == b""


async def test_head_content_length_without_body_raw_upstream():
    head = (b"HTTP/1.1 200 OK\r\nETag: \"h\"\r\nContent-Length: 12345\r\n"
            b"Content-Type: text/html\r\n\r\n")
    async with raw_primary(canned(head, keep_open=True)) as (up, srv):
        direct = await exchange(up.port, request("HEAD", "/big"), "HEAD")
        async with await RawConn.open(srv.port) as c:
            await c.send(request("HEAD", "/big"))
            via = await c.read_response("HEAD")
            # the connection is still usable: no body bytes were expected or sent
            await c.send(request("HEAD", "/big"))
            again = await c.read_response("HEAD")
        assert via.raw == direct.raw
        assert again.raw == direct.raw
        assert via.get("Content-Length") == b"12345"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nCache-Control: no-store\r\n\r\n",
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 10\r\n"
     b"Cache-Control: max-age=60\r\nX-After: 1\r\n\r\n"),
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nVary: Accept\r\n\r\n",
])
async def test_204_304_no_body_headers_kept(answer):
    async with raw_primary(canned(answer, keep_open=True)) as (up, srv):
        direct = await exchange(up.port, request("GET", "/r", [("If-None-Match", '"v1"')]))
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/r", [("If-None-Match", '"v1"')]))
            via = await c.read_response()
            await c.send(request("GET", "/r"))
            again = await c.read_response()   # nothing stray on the connection
        assert via.raw == direct.raw == answer
        assert again.raw == answer
        assert via.body == b""


async def test_status_reason_and_header_case_kept():
    answer = (b"HTTP/1.1 299 Quite Fine\r\nx-lower: a\r\nX-UPPER: B\r\nX-Dup: 1\r\n"
              b"x-dup: 2\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc")
    async with raw_primary(canned(answer)) as (_up, srv):
        via = await exchange(srv.port, request("GET", "/"))
        assert via.raw == answer


@pytest.mark.parametrize("route_opts", [[], [{"match": "/echo-body", "mirror_unsafe": True}]])
async def test_expect_100_continue(env, route_opts):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url, routes=route_opts)
    body = b"hello world"
    async with await RawConn.open(srv.port) as c:
        await c.send(request("POST", "/echo-body", [("Expect", "100-continue"),
                                                    ("Content-Length", str(len(body)))]))
        status, headers, _raw = await c.read_head(timeout=2)
        assert status == b"HTTP/1.1 100 Continue"
        assert headers == []
        assert env.st.seen == []          # nothing sent before the body
        await c.send(body)
        via = await c.read_response()
    assert via.status == 200
    assert via.body == body
    assert env.st.last().body == body
    assert env.st.last().get("Expect") is None


async def test_http10_client(env):
    srv = await env.proxy()
    for path in ("/x", "/cookies", "/chunked"):
        direct, via = await both(env, srv.port, request("GET", path, version="HTTP/1.0"))
        assert via.version == b"HTTP/1.0"
        assert via.fidelity() == direct.fidelity()
    # a chunked upstream answer reaches an HTTP/1.0 client close-delimited
    assert via.get("Transfer-Encoding") is None
    assert via.body == b"one two three"


@pytest.mark.parametrize("answer", [
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Up: 1\r\n\r\nuntil close, no length",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello there",
])
@pytest.mark.parametrize("client_version", ["HTTP/1.0", "HTTP/1.1"])
async def test_http10_upstream_with_and_without_length(answer, client_version):
    async with raw_primary(canned(answer)) as (up, srv):
        direct = await exchange(up.port, request("GET", "/", version="HTTP/1.0"))
        via = await exchange(srv.port, request("GET", "/", version=client_version))
        assert via.status_line == f"{client_version} 200 OK".encode()
        assert via.end_to_end() == direct.end_to_end()
        assert via.body == direct.body
        assert via.body in (b"until close, no length", b"hello there")


async def test_redirect_returned_not_followed(env):
    elsewhere = await RawServer().start()
    try:
        srv = await env.proxy()
        to = f"http://127.0.0.1:{elsewhere.port}/target?x=1"
        direct, via = await both(env, srv.port, request("GET", "/redirect?to=" + to))
        assert_same(direct, via)
        assert via.status == 302
        assert via.get("Location") == to.encode()
        assert via.body == b"moved"
        await asyncio.sleep(0.05)
        assert elsewhere.connections == 0
    finally:
        await elsewhere.stop()


async def test_no_cookie_jar_shared_between_clients(env):
    srv = await env.proxy()
    async with await RawConn.open(srv.port) as a:
        await a.send(request("GET", "/setcookie"))
        resp = await a.read_response()
        assert resp.get("Set-Cookie") == b"sid=client-a"
        await a.send(request("GET", "/again"))
        await a.read_response()
    assert env.st.last().get("Cookie") is None
    await exchange(srv.port, request("GET", "/client-b"))
    assert env.st.last().raw_path == "/client-b"
    assert env.st.last().get("Cookie") is None


# ------------------------------------------------------------------ hop-by-hop & forwarding


async def test_hop_by_hop_request_headers_removed(env):
    srv = await env.proxy()
    await exchange(srv.port, request("GET", "/hop", [
        ("Connection", "keep-alive, Upgrade, X-Foo"),
        ("X-Foo", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive, X-Bar"),
        ("X-Bar", "also-secret"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Authenticate", "Basic"),
        ("X-Keep", "yes"),
        ("Authorization", "Bearer end-to-end"),
    ]))
    seen = env.st.last()
    names = {k.lower() for k, _ in seen.headers}
    for gone in HOP_NAMES[1:] + ("x-foo", "x-bar"):
        assert gone not in names, gone
    # Connection may only be the proxy's own; never the client's tokens
    assert all("x-foo" not in v.lower() for v in seen.getall("Connection"))
    assert seen.get("X-Keep") == "yes"
    assert seen.get("Authorization") == "Bearer end-to-end"


async def test_hop_by_hop_response_headers_removed():
    answer = (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret-Hop\r\nX-Secret-Hop: 1\r\n"
              b"Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n"
              b"Proxy-Authenticate: Basic realm=\"x\"\r\nTrailer: X-Checksum\r\n"
              b"Upgrade: h2c\r\nX-End: 1\r\nContent-Type: text/plain\r\n"
              b"Content-Length: 2\r\n\r\nok")
    async with raw_primary(canned(answer, keep_open=True)) as (up, srv):
        direct = await exchange(up.port, request("GET", "/"))
        via = await exchange(srv.port, request("GET", "/"))
        assert via.fidelity() == direct.fidelity()
        assert via.end_to_end() == [(b"X-End", b"1"), (b"Content-Type", b"text/plain"),
                                    (b"Content-Length", b"2")]
        names = {k.lower() for k, _ in via.headers}
        for gone in (b"x-secret-hop", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                     b"trailer", b"upgrade"):
            assert gone not in names
        assert b"x-secret-hop" not in (via.get("Connection") or b"").lower()


async def test_x_forwarded_added(env):
    srv = await env.proxy()
    await exchange(srv.port, request("GET", "/fwd", host="shop.example:8443"))
    seen = env.st.last()
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.getall("X-Forwarded-Proto") == ["http"]
    assert seen.getall("X-Forwarded-Host") == ["shop.example:8443"]


async def test_x_forwarded_extended_for_a_trusted_peer(env):
    srv = await env.proxy(forwarded={"trust": ["127.0.0.0/8"]})
    await exchange(srv.port, request("GET", "/fwd", [
        ("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.1"),
        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "orig.example")],
        host="lb.example"))
    seen = env.st.last()
    assert seen.getall("X-Forwarded-For") == ["203.0.113.7, 198.51.100.1, 127.0.0.1"]
    assert seen.getall("X-Forwarded-Proto") == ["https, http"]
    assert seen.getall("X-Forwarded-Host") == ["orig.example, lb.example"]


@pytest.mark.parametrize("trust", [None, ["10.0.0.0/8", "::1"]])
async def test_x_forwarded_replaced_for_an_untrusted_peer(env, trust):
    """By default no peer is trusted: what a client says in X-Forwarded-* is replaced
    by the proxy's own values, so nothing behind it can be told another address."""
    srv = await env.proxy(**({"forwarded": {"trust": trust}} if trust else {}))
    await exchange(srv.port, request("GET", "/fwd", [
        ("X-Forwarded-For", "203.0.113.7"), ("x-forwarded-for", "198.51.100.1"),
        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "orig.example")],
        host="lb.example"))
    seen = env.st.last()
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.getall("X-Forwarded-Proto") == ["http"]
    assert seen.getall("X-Forwarded-Host") == ["lb.example"]


async def test_host_rewritten_by_default(env):
    srv = await env.proxy()
    await exchange(srv.port, request("GET", "/host", host="public.example"))
    assert env.st.last().getall("Host") == [f"127.0.0.1:{env.primary.port}"]


async def test_host_preserved_when_configured(env):
    srv = await env.proxy(preserve_host=True)
    await exchange(srv.port, request("GET", "/host", host="public.example"))
    assert env.st.last().getall("Host") == ["public.example"]


# ------------------------------------------------------------------ websocket


async def test_websocket_passthrough_never_mirrored(env):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url)
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{srv.port}/ws", protocols=("chat",),
                                autoping=False) as ws:
            assert ws.protocol == "chat"
            assert ws._response.headers.get("Set-Cookie") == "ws=1"
            first = await ws.receive(timeout=2)
            assert first.type == aiohttp.WSMsgType.TEXT and first.data == "hello from primary"
            await ws.send_str("ping ü")
            msg = await ws.receive(timeout=2)
            assert msg.data == "echo:ping ü"
            blob = bytes(range(256)) * 300
            await ws.send_bytes(blob)
            msg = await ws.receive(timeout=2)
            assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == blob[::-1]
            await ws.ping(b"p1")
            msg = await ws.receive(timeout=2)
            assert msg.type == aiohttp.WSMsgType.PONG and msg.data == b"p1"
            await ws.close(code=4001, message=b"bye")
        assert ws.close_code == 4001          # primary's echo of the client's close
    await asyncio.wait_for(env.st.ws_closed.wait(), 2)
    assert env.st.ws_close_code == 4001
    assert srv.stats.total("not_eligible", "websocket") == 1
    assert srv.stats.total("mirrored") == 0
    assert env.cand.seen == []
    assert [s.raw_path for s in env.st.seen] == ["/ws"]
    seen = env.st.last()
    assert seen.get("X-Forwarded-For") == "127.0.0.1"
    assert seen.get("Sec-WebSocket-Protocol") == "chat"


async def test_websocket_upgrade_takes_the_same_header_limits(env):
    """200 headers are within the proxy's limits (1,024) for an upgrade as for any
    request (aiohttp's own default would refuse more than 128)."""
    srv = await env.proxy()
    extra = {f"X-H{i}": str(i) for i in range(200)}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{srv.port}/ws", headers=extra,
                                autoping=False) as ws:
            first = await ws.receive(timeout=2)
            assert first.data == "hello from primary"
    assert srv.stats.total("not_eligible", "websocket") == 1


async def test_websocket_close_from_primary_relayed(env):
    srv = await env.proxy()
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(f"http://127.0.0.1:{srv.port}/ws-close") as ws:
        msg = await ws.receive(timeout=2)
        assert msg.data == "bye soon"
        msg = await ws.receive(timeout=2)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 4002 and msg.extra == "primary done"
    await asyncio.wait_for(env.st.ws_closed.wait(), 2)
    assert env.st.ws_close_code == 4002


async def test_websocket_client_vanishing_closes_primary_side(env):
    srv = await env.proxy()
    c = await RawConn.open(srv.port)
    await c.send(request("GET", "/ws", [
        ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]))
    status, headers, _ = await c.read_head()
    assert status.startswith(b"HTTP/1.1 101")
    assert (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in headers
    c.abort()
    await asyncio.wait_for(env.st.ws_closed.wait(), 2)
    # 1006 is never sent on the wire; the proxy says "going away"
    assert env.st.ws_close_code == 1001


# ------------------------------------------------------------------ request bodies


async def test_large_body_streamed_to_primary(env):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url)
    body = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    async with await RawConn.open(srv.port) as c:
        await c.send(request("POST", "/upload", [("Content-Length", str(len(body)))]))
        await c.send(body[:1024 * 1024])
        # primary sees the first bytes while the client is still sending
        for _ in range(200):
            if env.st.received >= 256 * 1024:
                break
            await asyncio.sleep(0.01)
        assert env.st.received >= 256 * 1024
        await c.send(body[1024 * 1024:])
        via = await c.read_response(timeout=10)
    assert via.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    assert srv.stats.total("not_eligible", "method") == 1
    assert env.cand.seen == []


async def test_sampled_out_body_streams_unbuffered(env):
    """On an opt-in route a request that is sampled out is not buffered for the
    shadow: primary gets the first bytes while the client is still sending."""
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url, mirror={"max_body": "8MiB"},
                          routes=[{"match": "/upload", "mirror_unsafe": True, "sample": 0.0}])
    body = b"s" * (3 * 1024 * 1024)
    async with await RawConn.open(srv.port) as c:
        await c.send(request("POST", "/upload", [("Content-Length", str(len(body)))]))
        await c.send(body[:1024 * 1024])
        for _ in range(200):
            if env.st.received >= 256 * 1024:
                break
            await asyncio.sleep(0.01)
        assert env.st.received >= 256 * 1024
        await c.send(body[1024 * 1024:])
        via = await c.read_response(timeout=10)
    assert via.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    assert srv.stats.total("sampled_out") == 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_large_body_on_unsafe_route_not_mirrored(env, chunked):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url, mirror={"max_body": "1MiB"},
                          routes=[{"match": "/upload", "mirror_unsafe": True}])
    body = b"0123456789abcdef" * (5 * 1024 * 1024 // 16)
    async with await RawConn.open(srv.port) as c:
        if chunked:
            await c.send(request("POST", "/upload", [("Transfer-Encoding", "chunked")]))
            step = 256 * 1024
            for i in range(0, len(body), step):
                part = body[i:i + step]
                await c.send(b"%x\r\n" % len(part) + part + b"\r\n")
            await c.send(b"0\r\n\r\n")
        else:
            await c.send(request("POST", "/upload", body=body))
        via = await c.read_response(timeout=10)
    assert via.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
    assert srv.stats.total("not_eligible", "body_too_large") == 1
    assert srv.stats.total("mirrored") == 0
    await asyncio.sleep(0.05)
    assert env.cand.seen == []


@pytest.mark.parametrize("mirror_unsafe", [False, True])
async def test_chunked_request_body(env, mirror_unsafe):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url,
                          routes=[{"match": "/echo-body", "mirror_unsafe": mirror_unsafe}])
    parts = [b"alpha-", b"beta-" * 100, b"gamma"]
    async with await RawConn.open(srv.port) as c:
        await c.send(request("POST", "/echo-body", [("Transfer-Encoding", "chunked")]))
        for p in parts:
            await c.send(b"%x\r\n%s\r\n" % (len(p), p))
            await asyncio.sleep(0.01)
        await c.send(b"0\r\n\r\n")
        via = await c.read_response()
    body = b"".join(parts)
    assert via.body == body
    assert env.st.last().body == body
    if mirror_unsafe:
        (ex,) = await env.sink.wait_for(1)
        assert ex.request.body == body
        assert env.cand.last().body == body
        assert env.cand.last().get("Content-Length") == str(len(body))
    else:
        assert srv.stats.total("not_eligible", "method") == 1
        assert env.cand.seen == []


# ------------------------------------------------------------------ failures


async def test_primary_refused_502(env):
    srv = await env.proxy(primary=f"http://127.0.0.1:{free_port()}")
    via = await exchange(srv.port, request("GET", "/x"))
    assert via.status == 502
    assert 0 < len(via.body) < 200
    assert srv.stats.total("primary_error", "connect") == 1
    # and the proxy goes on
    via = await exchange(srv.port, request("GET", "/y"))
    assert via.status == 502


async def test_primary_timeout_504(env):
    srv = await env.proxy(timeouts={"primary": "300ms"})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    via = await exchange(srv.port, request("GET", "/hang"))
    assert via.status == 504
    assert loop.time() - t0 < 3.0
    assert 0 < len(via.body) < 200
    assert srv.stats.total("primary_error", "timeout") == 1


async def _reset_after(reader, writer, head: bytes, body: bytes) -> None:
    await read_request(reader)
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(0.05)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()   # RST


@pytest.mark.parametrize("head,body", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x" * 5000),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1000\r\n" + b"y" * 4096
     + b"\r\n"),
    # close-delimited: only the reset tells a cut body from a complete one
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"z" * 5000),
], ids=["content-length", "chunked", "close-delimited"])
async def test_primary_reset_mid_body_aborts_client(head, body):
    async with raw_primary(lambda r, w, _log: _reset_after(r, w, head, body)) as (up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/"))
            with pytest.raises(Incomplete):
                await c.read_response(timeout=3)
        assert srv.stats.total("primary_error") == 1
        assert next(k for (o, k, _e) in srv.stats.counts if o == "primary_error") \
            .startswith("mid_body_")
        # the proxy still serves
        up.handler = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert (await exchange(srv.port, request("GET", "/"))).body == b"ok"


async def test_slow_client_slows_primary_not_memory():
    """A client that stops reading makes the proxy stop reading primary: what primary
    manages to send is bounded by socket buffers, not by the body's size; then the
    whole body arrives intact."""
    size = 64 * 1024 * 1024
    block = bytes(range(256)) * 4096                      # 1 MiB
    sent = 0

    async def big(reader, writer, _log):
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while sent < size:
            writer.write(block)
            await writer.drain()
            sent += len(block)
        await reader.read()

    async with raw_primary(big) as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/big"))
            await c.read_head()
            await asyncio.sleep(1.0)            # the client reads nothing meanwhile
            stalled = sent
            await asyncio.sleep(0.5)
            assert sent == stalled              # primary is held back...
            assert stalled < size // 4          # ...long before the end of the body
            got = 0
            digest = hashlib.sha256()
            while got < size:
                chunk = await asyncio.wait_for(c.reader.read(1 << 20), 10)
                assert chunk
                digest.update(chunk)
                got += len(chunk)
        assert got == size
        assert digest.digest() == hashlib.sha256(block * (size // len(block))).digest()
        assert srv.stats.total("primary_error") == 0


@pytest.mark.parametrize("path", ["/hang", "/drip"])
async def test_client_disconnect_cancels_upstream(env, path):
    srv = await env.proxy()
    c = await RawConn.open(srv.port)
    await c.send(request("GET", path))
    await asyncio.wait_for(env.st.started.wait(), 2)
    if path == "/drip":
        await c.read_head()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    c.abort()
    await asyncio.wait_for(env.st.cancelled.wait(), 3)
    assert loop.time() - t0 < 1.5
    # a client going away is not a primary failure
    assert srv.stats.total("primary_error") == 0


async def test_client_abort_mid_upload_never_completes_primary_request(env):
    """A client vanishing mid-body must not become a complete (truncated) request."""
    srv = await env.proxy()
    for headers, first in (([("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n"),
                           ([("Content-Length", "100")], b"hello")):
        env.st.started.clear()
        c = await RawConn.open(srv.port)
        await c.send(request("POST", "/upload", headers))
        await c.send(first)
        await asyncio.wait_for(env.st.started.wait(), 2)
        c.abort()
        await asyncio.sleep(0.2)
    # /upload records only a body it read to the end
    assert env.st.seen == []


async def test_pipelined_requests_answered_in_order(env):
    srv = await env.proxy()
    async with await RawConn.open(srv.port) as c:
        await c.send(request("GET", "/one") + request("GET", "/two") + request("HEAD", "/3"))
        a = await c.read_response()
        b = await c.read_response()
        h = await c.read_response("HEAD")
    assert (a.body, b.body, h.body) == (b"echo /one", b"echo /two", b"")
    assert h.get("Content-Length") == b"7"


@pytest.mark.parametrize("bad", [
    b"GARBAGE\r\n\r\n",
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\n\r\n"),
    b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
    b"GET /" + b"p" * 40000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET /s HTTP/1.1\nHost: x\n\n",                      # bare LF line ends
    b"GET /s HTTP/1.1\r\nHost: x\n\r\n",
])
async def test_malformed_requests_get_4xx(env, bad):
    srv = await env.proxy()
    resp = await exchange(srv.port, bad, timeout=3)
    assert 400 <= resp.status < 500
    assert env.st.seen == []
    # counted like every request, as one the proxy answered itself
    assert srv.stats.total("not_eligible", "malformed") == 1
    ok = await exchange(srv.port, request("GET", "/after"))
    assert ok.status == 200
    assert [s.raw_path for s in env.st.seen] == ["/after"]


async def test_reload_applies_to_next_request(env):
    srv = await env.proxy()
    async with await RawConn.open(srv.port) as c:
        await c.send(request("GET", "/before"))
        assert (await c.read_response()).status == 200
        srv.reload(config(env.primary.url, timeouts={"primary": "200ms"}, preserve_host=True))
        # same connection, new config: primary timeout and Host handling
        await c.send(request("GET", "/host", host="kept.example"))
        await c.read_response()
        assert env.st.last().get("Host") == "kept.example"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await c.send(request("GET", "/hang"))
        resp = await c.read_response()
    assert resp.status == 504
    assert loop.time() - t0 < 3.0


@pytest.mark.parametrize("answer", [
    # a 12 KB header (big CSP / Set-Cookie) and 200 headers: both fine for browsers
    b"HTTP/1.1 200 OK\r\nContent-Security-Policy: " + b"a" * 12000 + b"\r\n"
    b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(200))
    + b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: big=" + b"c" * 10000 + b"\r\nContent-Length: 2\r\n\r\nok",
])
async def test_big_response_headers_pass(answer):
    async with raw_primary(canned(answer)) as (_up, srv):
        via = await exchange(srv.port, request("GET", "/"))
        assert via.raw == answer


async def test_request_headers_order_case_and_duplicates_kept(env):
    srv = await env.proxy()
    sent = [("x-lower", "a"), ("X-UPPER", "B"), ("X-Dup", "1"), ("Accept", "*/*"),
            ("x-dup", "2"), ("Cookie", "a=1"), ("Cookie", "b=2"), ("X-Empty", "")]
    await exchange(srv.port, request("GET", "/order", sent))
    seen = [(k, v) for k, v in env.st.last().headers
            if k.lower() not in ("host", "x-forwarded-for", "x-forwarded-proto",
                                 "x-forwarded-host")]
    # every header arrives, in order, spelled as sent
    assert seen == sent


# ------------------------------------------------------------------ desync and timing
# (found in review of the hand-written server and client; each failed before its fix)


async def test_connection_header_cannot_change_upstream_framing():
    """``Connection: content-length`` strips Content-Length from what is forwarded; the
    body must still be framed as parsed, so primary sees one request, never a second
    one smuggled inside the body."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with raw_primary(canned(ok, keep_open=True)) as (up, srv):
        smuggled = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        data = (b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n"
                b"Content-Length: %d\r\n\r\n" % len(smuggled)) + smuggled
        via = await exchange(srv.port, data)
        assert via.status == 200
        await asyncio.sleep(0.2)
        assert len(up.log) == 1
        head, _, body = up.log[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /x ") and body == smuggled
        assert b"/smuggled" not in b"".join(x.split(b"\r\n", 1)[0] for x in up.log)


async def test_primary_length_beside_chunked_never_reaches_the_client():
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"2c\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON\r\n0\r\n\r\n")
    async with raw_primary(canned(answer)) as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/"))
            via = await c.read_response()
            assert via.get("Content-Length") is None
            assert via.body == b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
            await c.send(request("GET", "/again"))          # nothing stray in between
            again = await c.read_response()
            assert again.status == 200 and again.body == via.body


async def test_content_length_named_in_connection_still_frames_the_answer():
    """Primary names its Content-Length in Connection (so it is hop-by-hop and not
    forwarded): the client's answer is still framed (chunked), and the connection
    carries the next answer cleanly."""
    answer = b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"
    async with raw_primary(canned(answer, keep_open=True)) as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            for path in ("/", "/again"):
                await c.send(request("GET", path))
                via = await c.read_response()
                assert via.status == 200 and via.body == b"hello"
                assert via.get("Content-Length") is None
                assert via.get("Transfer-Encoding") == b"chunked"


async def test_connection_left_paused_is_never_reused():
    """A client that stops reading a big answer and resets: the upstream connection was
    paused; the next client must not get it (it would wait for a timeout)."""
    size = 8 * 1024 * 1024
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size
    async with raw_primary(canned(big, keep_open=True),
                           timeouts={"primary": "3s"}) as (_up, srv):
        c = await RawConn.open(srv.port)
        await c.send(request("GET", "/big"))
        await c.read_head()
        await asyncio.sleep(0.5)            # the proxy pauses primary; all of it arrives
        c.abort()
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with await RawConn.open(srv.port) as c2:
            await c2.send(request("GET", "/next"))
            status, _, _ = await c2.read_head(timeout=2.5)
        assert status.startswith(b"HTTP/1.1 200") and loop.time() - t0 < 2.0


async def test_head_reaches_the_client_before_the_first_body_byte():
    async def late_body(reader, writer, _log):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1.5)
        writer.write(b"5\r\nevent\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with raw_primary(late_body, timeouts={"primary": "1s"}) as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/events"))
            status, _, _ = await c.read_head(timeout=0.7)   # long before the body
            assert status.startswith(b"HTTP/1.1 200")


async def test_primary_timeout_does_not_count_a_slow_upload():
    """``timeouts.primary`` waits for primary's answer; a steady upload that takes longer
    than it is not a primary timeout."""
    async def echo_len(reader, writer, _log):
        _head, body = await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d"
                     % (len(str(len(body))), len(body)))
        await writer.drain()

    async with raw_primary(echo_len, timeouts={"primary": "500ms"}) as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("POST", "/up", [("Content-Length", "30")]))
            for _ in range(10):                   # 30 bytes over ~1.5 s
                await c.send(b"abc")
                await asyncio.sleep(0.15)
            via = await c.read_response(timeout=3)
        assert via.status == 200 and via.body == b"30"
        assert srv.stats.total("primary_error") == 0


async def test_malformed_mirrored_body_is_a_400_and_counted(env):
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url,
                          routes=[{"match": "/echo-body", "mirror_unsafe": True}])
    async with await RawConn.open(srv.port) as c:
        await c.send(request("POST", "/echo-body", [("Transfer-Encoding", "chunked")]))
        await asyncio.sleep(0.1)
        await c.send(b"3\r\nabc\r\nzz\r\n")          # not a chunk size
        via = await c.read_response()
    assert via.status == 400
    assert srv.stats.total("not_eligible", "bad_body") == 1
    assert env.st.seen == [] and env.cand.seen == []


async def test_a_client_that_leaves_in_a_mirrored_body_is_counted(env):
    """The client sends part of a mirrored request's body and goes: the request reaches
    no upstream and still ends in one counted outcome."""
    cand = await env.with_candidate()
    srv = await env.proxy(candidate=cand.url,
                          routes=[{"match": "/echo-body", "mirror_unsafe": True}])
    async with await RawConn.open(srv.port) as c:
        await c.send(request("POST", "/echo-body", [("Content-Length", "100")]) + b"0123456789")
        await asyncio.sleep(0.1)
    for _ in range(100):
        if srv.stats.total("not_eligible", "bad_body"):
            break
        await asyncio.sleep(0.01)
    assert srv.stats.total("not_eligible", "bad_body") == 1
    assert srv.stats.total("mirrored") == 0 and srv.stats.total("sampled_out") == 0
    assert env.st.seen == [] and env.cand.seen == []


async def test_refused_websocket_closes_the_connection(env):
    """After a refused upgrade the connection belongs to aiohttp's WebSocket path: a
    request pipelined behind it must not be answered there (as another handshake)."""
    srv = await env.proxy()
    async with await RawConn.open(srv.port) as c:
        await c.send(request("GET", "/not-ws", [
            ("Connection", "Upgrade"), ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
            + request("GET", "/after"))
        refused = await c.read_response()
        # primary answered the handshake with a plain page: that page is the answer
        assert refused.status == 200 and refused.body == b"echo /not-ws"
        assert await c.at_eof()     # closed: /after is never taken for a handshake
    assert srv.stats.total("not_eligible", "websocket") == 1
    assert srv.stats.total("primary_error") == 0


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_early_hints_reach_an_http11_client(version):
    """Primary's 103 Early Hints goes to the client before the final answer (hop-by-hop
    headers left out); primary's own 100 Continue does not, and an HTTP/1.0 client
    gets no interim answer at all."""
    async def hints(reader, writer, _log):
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n"
                     b"Connection: x-hop\r\nX-Hop: 1\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_primary(hints) as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/page", version=version))
            first = await c.read_head()
            if version == "HTTP/1.1":
                status, headers, _ = first
                assert status == b"HTTP/1.1 103 Early Hints"
                assert headers == [(b"Link", b"</app.css>; rel=preload")]
                first = await c.read_head()
            status, _headers, _ = first
            assert status.endswith(b"200 OK")
            assert await c.reader.readexactly(2) == b"ok"


async def test_options_asterisk_reaches_primary_and_candidate():
    """``OPTIONS *`` (the server as a whole) goes to primary as it is, and is mirrored."""
    lines: list[bytes] = []

    async def answer(reader, writer, _log):
        head, _body = await read_request(reader)
        lines.append(head.split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 204 No Content\r\nAllow: GET, HEAD, OPTIONS\r\n\r\n")
        await writer.drain()

    cand = await RawServer(answer).start()
    try:   # a path prefix on the candidate does not make it "OPTIONS /v2*"
        async with raw_primary(answer, upstreams={"candidate": cand.url + "/v2"}) as (_up, srv):
            got = await exchange(srv.port, request("OPTIONS", "*"))
            for _ in range(100):
                if len(lines) == 2:
                    break
                await asyncio.sleep(0.01)
            assert srv.stats.total("not_eligible", "bad_target") == 0
            assert srv.stats.total("mirrored") == 1
    finally:
        await cand.stop()
    assert got.status == 204 and got.get("Allow") == b"GET, HEAD, OPTIONS"
    assert lines == [b"OPTIONS * HTTP/1.1"] * 2


@pytest.mark.parametrize("te,want", [
    (b"Transfer-Encoding: gzip, chunked", [b"gzip", b"chunked"]),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", [b"chunked"]),
    (b"Transfer-Encoding: identity, chunked", [b"chunked"]),
])
async def test_transfer_codings_besides_chunked_reach_the_client(te, want):
    """``Transfer-Encoding: gzip, chunked``: once de-chunked the body is still gzip; the
    client is told so, and its bytes unzip to primary's. Chunked said twice, or
    identity, are framing: the client gets one chunked. An HTTP/1.0 client, which takes
    no transfer coding, gets a 502 (counted) for a coded body."""
    import gzip as _gzip

    plain = b"hello, coded world"
    body = _gzip.compress(plain) if b"gzip" in te else plain

    async def answer(reader, writer, _log):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + te + b"\r\n\r\n"
                     + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        await writer.drain()

    cand = await RawServer(answer).start()
    try:
        async with raw_primary(answer, upstreams={"candidate": cand.url}) as (_up, srv):
            got = await exchange(srv.port, request("GET", "/gz"))
            old = await exchange(srv.port, request("GET", "/gz", version="HTTP/1.0"))
            errors = srv.stats.total("primary_error", "transfer_coding")
            # the shadow of the 502 ends as any shadow of a failed primary does
            for _ in range(100):
                if srv.stats.total("compared") + srv.stats.total("dropped") == 2:
                    break
                await asyncio.sleep(0.01)
            dropped = srv.stats.total("dropped", "primary_error")
            incomplete = srv.stats.total("dropped", "primary_incomplete")
    finally:
        await cand.stop()
    assert incomplete == 0
    codings = [c.strip() for k, v in got.headers if k.lower() == b"transfer-encoding"
               for c in v.split(b",")]
    assert codings == want
    assert (_gzip.decompress(got.body) if b"gzip" in te else got.body) == plain
    if b"gzip" in te:
        assert old.status == 502 and errors == 1 and dropped == 1
    else:
        assert old.status == 200 and old.body == plain and errors == 0 and dropped == 0


WS_HANDSHAKE = [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


@pytest.mark.parametrize("answer,status", [
    (b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"x\"\r\n"
     b"Content-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"error\":\"login\"}", 401),
    (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3000\r\n\r\n" + b"x" * 100
     + b"<pause>" + b"y" * 2900, 403),
    (b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n", 302),
])
async def test_a_refused_websocket_handshake_gets_primarys_answer(answer, status):
    """Primary declines the upgrade: the client gets primary's status, headers and body,
    not a refusal of the proxy's own."""
    async def refuse(reader, writer, _log):
        await read_request(reader)
        for part in answer.split(b"<pause>"):       # a body in two segments
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)

    async with raw_primary(refuse) as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/ws", WS_HANDSHAKE))
            got = await c.read_response()
    want_body = answer.split(b"\r\n\r\n", 1)[1].replace(b"<pause>", b"")
    assert got.status == status and got.body == want_body
    if status == 401:
        assert got.get("WWW-Authenticate") == b'Bearer realm="x"'
        assert got.get("Content-Type") == b"application/json"
        assert [k for k, _ in got.headers if k.lower() == b"content-type"] == [b"Content-Type"]
    elif status == 302:
        assert got.get("Location") == b"/login"
    assert srv.stats.total("primary_error") == 0


async def test_primary_reset_mid_body_is_a_reset_for_an_http10_client():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with raw_primary(lambda r, w, _log: _reset_after(r, w, head, b"5\r\nhello\r\n")) \
            as (_up, srv):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/", version="HTTP/1.0"))
            await c.read_head()
            with pytest.raises(ConnectionResetError):   # never a clean, short end
                while await asyncio.wait_for(c.reader.read(65536), 3):
                    pass


async def test_a_malformed_body_sampled_only_for_recording_is_counted(env, tmp_path):
    """A request recording sampled (and not mirrored: no candidate) whose body is
    malformed is answered 400 and counted record_dropped{bad_body}, not lost."""
    srv = await env.proxy(record={"dir": str(tmp_path), "sample": 1.0})
    async with await RawConn.open(srv.port) as c:
        await c.send(request("POST", "/echo-body", [("Transfer-Encoding", "chunked")]))
        await asyncio.sleep(0.1)
        await c.send(b"3\r\nabc\r\nzz\r\n")          # not a chunk size
        via = await c.read_response()
    assert via.status == 400
    assert srv.stats.total("record_dropped", "bad_body") == 1
    assert srv.stats.total("recorded") == 0
