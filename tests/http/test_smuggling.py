"""Divergences found by throwing request-smuggling corpora at the proxy, each checked
against what nginx does: whitespace in framing headers, chunk sizes beyond 64 bits,
underscored header names, malformed upstream heads, the WebSocket path, and
X-Forwarded-* from clients.

Real sockets throughout (tests/rawhttp.py): a raw primary and candidate that send
exactly the bytes a test chooses, the proxy in-process.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from shadowproxy.config import loads
from shadowproxy.errors import ConfigError
from shadowproxy.http.headers import end_to_end_text
from shadowproxy.proxy.handler import _trusted
from shadowproxy.proxy.server import ProxyServer
from tests.rawhttp import RawConn, RawServer, canned, read_request, request
from tests.support import Collector, config, start_proxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
WS_HANDSHAKE = [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


@asynccontextmanager
async def proxied(primary=None, candidate=None, **cfg: object
                  ) -> AsyncIterator[tuple[RawServer, RawServer | None, ProxyServer, Collector]]:
    """A raw primary (``canned(OK)`` by default), an optional raw candidate and the
    proxy in front; (primary, candidate, proxy, sink)."""
    up = await RawServer(primary or canned(OK, keep_open=True)).start()
    cand = await RawServer(candidate).start() if candidate is not None else None
    sink = Collector()
    srv = await start_proxy(config(up.url, cand.url if cand else None, **cfg), sink)
    try:
        yield up, cand, srv, sink
    finally:
        await srv.stop()
        if cand is not None:
            await cand.stop()
        await up.stop()


def answer_and_stay(data: bytes):
    """A server answering ``data`` and then keeping the connection open (a client that
    waits for the end of a malformed answer waits until its own timeout)."""
    async def handler(reader, writer, log):
        head, body = await read_request(reader)
        log.append(head + body)
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(30)
    return handler


def names(head: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0] for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]]


def header_values(head: bytes, name: bytes) -> list[bytes]:
    out = []
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.lower() == name.lower():
            out.append(v.strip(b" \t"))
    return out


async def one(port: int, data: bytes, timeout: float = 3.0, method: str = "GET"):
    async with await RawConn.open(port) as c:
        await c.send(data)
        return await c.read_response(method, timeout=timeout)


# ------------------------------------------------------------------ 1: OWS is SP/HTAB

@pytest.mark.parametrize("te", [b"\xa0chunked", b"chunked\x85"])
async def test_request_te_with_other_whitespace_is_an_unknown_coding(te):
    """``str.strip()`` would make ``\\xa0chunked`` chunked; only SP and HTAB are optional
    whitespace (RFC 9110 §5.6.3): an unknown coding, 501 as nginx answers."""
    async with proxied() as (up, _cand, srv, _sink):
        got = await one(srv.port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + te
                        + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        assert got.status == 501
        assert up.log == []


RESPONSES = {
    "te-nbsp": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xa0chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "te-nel": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\x85\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "length-nbsp": b"HTTP/1.1 200 OK\r\nContent-Length: 2,\xa02\r\n\r\nok",
    "chunk-2^64-1": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"FFFFFFFFFFFFFFFF\r\nok\r\n0\r\n\r\n",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "vt-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\nContent-Length: 2\r\n\r\nok",
    "ctl-in-reason": b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
    # answered at once (no body), but its fields would reach the client
    "204-bad-length": b"HTTP/1.1 204 No Content\r\nContent-Length: -1\r\n\r\n",
    "304-te-and-cl": b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip\r\n"
                     b"Content-Length: 2\r\n\r\n",
    "interim-bad-length": b"HTTP/1.1 103 Early Hints\r\nContent-Length: x\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    # read to the close before (a wait for the upstream's timeout when it stays open)
    "gzip-and-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 2\r\n"
                       b"\r\nok",
    "chunked-twice-and-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n"
                                b"Content-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(RESPONSES))
async def test_a_malformed_answer_from_primary_is_a_502_at_once(name):
    """Each answer is refused as it arrives (the upstream keeps the connection open:
    nothing may wait for ``timeouts.primary``), as nginx does."""
    async with proxied(answer_and_stay(RESPONSES[name])) as (_up, _cand, srv, _sink):
        got = await one(srv.port, request("GET", "/"))
        assert got.status == 502
        assert srv.stats.total("primary_error", "protocol") == 1


@pytest.mark.parametrize("name", list(RESPONSES))
async def test_a_malformed_answer_from_the_candidate_is_a_protocol_error(name):
    async with proxied(candidate=answer_and_stay(RESPONSES[name]),
                       mirror={"timeout": "3s"}) as (_up, _cand, srv, sink):
        got = await one(srv.port, request("GET", "/"))
        assert got.status == 200 and got.body == b"ok"
        (ex,) = await sink.wait_for(1)
        assert ex.candidate.error == "protocol", ex.candidate


async def test_a_bad_length_in_an_answer_to_head_is_a_502():
    """No body follows an answer to HEAD, but its Content-Length reaches the client."""
    async with proxied(answer_and_stay(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n")
                       ) as (_up, _cand, srv, _sink):
        got = await one(srv.port, request("HEAD", "/"), method="HEAD")
        assert got.status == 502
        assert srv.stats.total("primary_error", "protocol") == 1


@pytest.mark.parametrize("target", [b"/\xa0", b"/caf\xe9?q=\xff"])
async def test_a_request_target_above_0x7f_is_a_400_and_reaches_no_upstream(target):
    """RFC 9112 §3.2: a request-target is ASCII; h11 and llhttp refuse it, nginx too."""
    async with proxied(candidate=canned(OK, keep_open=True)) as (up, cand, srv, _sink):
        got = await one(srv.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.status == 400
        assert up.log == [] and cand is not None and cand.log == []


# ------------------------------------------------------------------ 2: chunk sizes

@pytest.mark.parametrize("split", [False, True])
async def test_a_chunk_size_beyond_64_bits_is_refused_at_once(split):
    """``FFFFFFFFFFFFFFFF`` (2^64 - 1) would take the end marker for data and wait;
    nginx answers 400 at once, and so does the proxy (whether the size comes with the
    head or after it, while the body streams to primary)."""
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"
    async with proxied() as (up, _cand, srv, _sink):
        async with await RawConn.open(srv.port) as c:
            if split:
                await c.send(head)
                await asyncio.sleep(0.1)
                await c.send(body)
            else:
                await c.send(head + body)
            got = await c.read_response(timeout=3.0)
        assert got.status == 400
        assert up.log == []          # no complete request reached primary


# ------------------------------------------------------------------ 3: underscores

async def test_underscored_request_headers_reach_no_upstream():
    """``Transfer_Encoding`` is ``Transfer-Encoding`` to a CGI/WSGI server: dropped on
    the way to primary and candidate, as nginx does by default."""
    async with proxied(candidate=canned(OK, keep_open=True)) as (up, cand, srv, sink):
        got = await one(srv.port, request("GET", "/u", [
            ("Transfer_Encoding", "chunked"), ("X_Forwarded_For", "10.9.9.9"),
            ("Content_Length", "5"), ("X-Kept", "1")]))
        assert got.status == 200
        await sink.wait_for(1)
        assert cand is not None
        for head in (up.log[0], cand.log[0]):
            sent = names(head)
            assert b"X-Kept" in sent
            assert not [n for n in sent if b"_" in n], head


# ------------------------------------------------------------------ 5: WebSocket

async def test_an_http10_upgrade_is_a_plain_request():
    """RFC 9110 §7.8: an Upgrade in an HTTP/1.0 request is ignored. Primary gets a
    plain request (Upgrade and Connection are hop-by-hop) and its answer is the
    client's."""
    async with proxied() as (up, _cand, srv, _sink):
        got = await one(srv.port, request("GET", "/ws", WS_HANDSHAKE, version="HTTP/1.0"))
        assert got.status_line == b"HTTP/1.0 200 OK" and got.body == b"ok"
        (head,) = up.log
        assert head.startswith(b"GET /ws HTTP/1.1\r\n")
        assert not header_values(head, b"Upgrade")
        assert srv.stats.total("not_eligible", "websocket") == 0


async def test_a_post_upgrade_is_a_plain_request_with_its_body():
    """A WebSocket handshake is a GET (RFC 6455 §4.1): a POST that asks for an upgrade
    reaches primary as the POST it is, body and all, not as a GET without its body."""
    async with proxied() as (up, _cand, srv, _sink):
        got = await one(srv.port, request("POST", "/ws", WS_HANDSHAKE, body=b"hello"))
        assert got.status == 200 and got.body == b"ok"
        (head,) = up.log
        assert head.startswith(b"POST /ws HTTP/1.1\r\n") and head.endswith(b"\r\n\r\nhello")
        assert not header_values(head, b"Upgrade")
        assert srv.stats.total("not_eligible", "websocket") == 0


async def test_a_refused_upgrade_carries_only_primarys_headers():
    """No ``Server: Python/… aiohttp/…``, Date or default Content-Type that primary
    did not send: only the framing and ``Connection: close`` are the proxy's."""
    refusal = b"HTTP/1.1 403 Forbidden\r\nX-Why: no\r\nContent-Length: 4\r\n\r\nnope"
    async with proxied(answer_and_stay(refusal)) as (_up, _cand, srv, _sink):
        got = await one(srv.port, request("GET", "/ws", WS_HANDSHAKE))
        assert got.status_line == b"HTTP/1.1 403 Forbidden" and got.body == b"nope"
        assert got.end_to_end() == [(b"X-Why", b"no"), (b"Content-Length", b"4")]


async def _accept_websocket(reader, writer, log):
    head = await reader.readuntil(b"\r\n\r\n")
    log.append(head)
    (key,) = header_values(head, b"Sec-WebSocket-Key")
    accept = base64.b64encode(hashlib.sha1(
        key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                 b"\r\nX-Primary: 1\r\n\r\n")
    await writer.drain()
    await reader.read()


async def test_an_accepted_upgrade_carries_no_server_header_of_aiohttps():
    async with proxied(_accept_websocket) as (_up, _cand, srv, _sink):
        async with await RawConn.open(srv.port) as c:
            await c.send(request("GET", "/ws", WS_HANDSHAKE))
            status, headers, _ = await c.read_head()
            c.abort()
    assert status.startswith(b"HTTP/1.1 101")
    got = {k.lower() for k, _ in headers}
    assert b"x-primary" in got and b"sec-websocket-accept" in got
    assert b"server" not in got and b"date" not in got


# ------------------------------------------------------------------ 6: X-Forwarded-*

SPOOF = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https"),
         ("X-Forwarded-Host", "evil.example")]


@pytest.mark.parametrize("trust,want", [
    (None, (b"127.0.0.1", b"http", b"shop.example")),
    (["10.0.0.0/8"], (b"127.0.0.1", b"http", b"shop.example")),
    (["127.0.0.1"], (b"203.0.113.7, 127.0.0.1", b"https, http",
                     b"evil.example, shop.example")),
])
@pytest.mark.parametrize("upgrade", [False, True])
async def test_x_forwarded_from_an_untrusted_peer_is_replaced(trust, want, upgrade):
    """The client's X-Forwarded-* are extended only when its address is trusted
    (``forwarded.trust``); otherwise primary gets the proxy's values alone. The same
    on the WebSocket path (primary refuses the handshake here)."""
    cfg = {"forwarded": {"trust": trust}} if trust else {}
    async with proxied(**cfg) as (up, _cand, srv, _sink):
        got = await one(srv.port, request("GET", "/f", SPOOF + (WS_HANDSHAKE if upgrade else []),
                                          host="shop.example"))
        assert got.status == 200
    (head,) = up.log
    assert srv.stats.total("not_eligible", "websocket") == int(upgrade)
    assert (header_values(head, b"X-Forwarded-For"), header_values(head, b"X-Forwarded-Proto"),
            header_values(head, b"X-Forwarded-Host")) == tuple([w] for w in want)


def test_trust_matches_ipv4_mapped_peers_and_nothing_unparsable():
    nets = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    assert _trusted("127.0.0.2", nets)
    assert _trusted("::ffff:127.0.0.1", nets)
    assert _trusted("2001:db8::7", nets)
    assert not _trusted("10.0.0.1", nets)
    assert not _trusted("", nets)


@pytest.mark.parametrize("trust,line,key,words", [
    ("\n    - 10.0.0.0/8\n    - nope\n", 5, "forwarded.trust[1]", "IP network"),
    (" [10.0.0.1/8]\n", 3, "forwarded.trust[0]", "host bits set"),
    (" [10.0.0.0/33]\n", 3, "forwarded.trust[0]", "IP network"),
    (" {a: 1}\n", 3, "forwarded.trust", "expected a list"),
])
def test_a_bad_trusted_network_names_file_line_and_key(trust, line, key, words):
    text = "upstreams: {primary: http://a:1}\nforwarded:\n  trust:" + trust
    with pytest.raises(ConfigError) as info:
        loads(text, file="bad.yaml")
    assert str(info.value).startswith(f"bad.yaml:{line}: {key}: ")
    assert words in str(info.value)


def test_trusted_networks_are_written_the_standard_way():
    cfg = loads("upstreams: {primary: http://a:1}\nforwarded: {trust: [10.0.0.0/8, '::1', "
                "192.0.2.7]}\n")
    assert cfg.forwarded.trust == ("10.0.0.0/8", "::1/128", "192.0.2.7/32")
    assert loads("upstreams: {primary: http://a:1}\n").forwarded.trust == ()


def test_underscored_names_are_left_out_on_request():
    raw = [("X_A", "1"), ("X-B", "2"), ("Connection", "x_c"), ("x_c", "3")]
    assert end_to_end_text(raw, underscores=False) == [("X-B", "2")]
    assert end_to_end_text(raw) == [("X_A", "1"), ("X-B", "2")]
