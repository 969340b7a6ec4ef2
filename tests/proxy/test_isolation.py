"""Isolation: whatever the candidate does, clients get primary's answer, unchanged and
on time, and the candidate's failure is counted in the exchange handed on.

Each faulty candidate is a real loopback server (raw asyncio TCP where HTTP
servers would not misbehave the way we need). A proxy without a candidate is the
baseline for both the bytes and the latency.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import tracemalloc

import aiohttp
import pytest
from aiohttp import web

from tests.rawhttp import RawServer, exchange, read_request, request
from tests.support import Collector, Upstream, config, free_port, start_proxy

BODY = b'{"id": 42, "name": "widget", "tags": ["a", "b"]}'
FIXED = {"Date": "Mon, 01 Jan 2024 00:00:00 GMT", "Server": "primary/1.0",
         "Content-Type": "application/json", "X-Version": "1"}
BIG = 50 * 1024 * 1024
BLOCK = bytes(range(256)) * 4096          # 1 MiB
BIG_SHA = hashlib.sha256(BLOCK * (BIG // len(BLOCK))).hexdigest()
CAPTURE = 256 * 1024
N = 30
HITS = web.AppKey("hits", list)


async def primary_handler(request: web.Request) -> web.Response:
    request.app[HITS].append(request.raw_path)
    return web.Response(body=BODY, headers=FIXED)


@pytest.fixture
async def primary():
    app = web.Application()
    app[HITS] = []
    app.router.add_route("*", "/{tail:.*}", primary_handler)
    up = await Upstream(app).start()
    yield up
    await up.stop()


# ------------------------------------------------------------------ faulty candidates


async def _hang(reader, writer, log):
    await read_request(reader)
    await asyncio.sleep(3600)


async def _slow10(reader, writer, log):
    await read_request(reader)
    await asyncio.sleep(10)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
    await writer.drain()


async def _reset_mid_body(reader, writer, log):
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
    await writer.drain()
    await asyncio.sleep(0.01)
    writer.transport.abort()


async def _reset_at_once(reader, writer, log):
    await read_request(reader)
    writer.transport.abort()


async def _garbage(reader, writer, log):
    await read_request(reader)
    writer.write(b"\x00\x17\x03garbage, not HTTP at all\r\n\r\n\xff\xfe")
    await writer.drain()
    await asyncio.sleep(0.01)


async def _error500(reader, writer, log):
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 4\r\n\r\noops")
        await writer.drain()


async def _big(reader, writer, log):
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % BIG)
        for _ in range(BIG // len(BLOCK)):
            writer.write(BLOCK)
            await writer.drain()


async def _endless(reader, writer, log):
    """An answer that claims a terabyte and keeps sending."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
    while True:
        writer.write(BLOCK)
        await writer.drain()


async def _tiny_chunks(reader, writer, log):
    """Chunked, one byte a chunk, without end: the parser's worst work per byte."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"1\r\nz\r\n" * 20_000
    while True:
        writer.write(block)
        await writer.drain()


# name: (handler or None for "refused", mirror config, expected check)
FAULTS = {
    "refused": (None, {"timeout": "1s"}),
    "hang": (_hang, {"timeout": "1s"}),
    "answers_after_10s": (_slow10, {"timeout": "2s"}),
    "reset_mid_body": (_reset_mid_body, {"timeout": "1s"}),
    "reset_before_answer": (_reset_at_once, {"timeout": "1s"}),
    "garbage": (_garbage, {"timeout": "1s"}),
    "500": (_error500, {"timeout": "1s"}),
    "50MB": (_big, {"timeout": "10s", "capture_max": CAPTURE, "concurrency": 2, "queue": 2,
                    "max_response": "64MiB"}),
    "endless": (_endless, {"timeout": "5s", "capture_max": CAPTURE, "max_response": "2MiB",
                           "concurrency": 2, "queue": 2}),
    "tiny_chunks": (_tiny_chunks, {"timeout": "5s", "concurrency": 2, "queue": 2,
                                   "max_response": "2MiB"}),
}
EXPECTED_ERROR = {
    "refused": "connect", "hang": "timeout", "answers_after_10s": "timeout",
    "reset_mid_body": "reset", "reset_before_answer": "reset", "garbage": "protocol",
    "500": None, "50MB": None, "endless": "too_large", "tiny_chunks": "too_large",
}


async def _latencies(*ports: int, n: int = N) -> list[list[float]]:
    """``n`` sequential requests to each port, interleaved so that noise from the
    machine hits every port alike; the latencies per port."""
    loop = asyncio.get_running_loop()
    out: list[list[float]] = [[] for _ in ports]
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for i in range(n):
            for j, port in enumerate(ports):
                t0 = loop.time()
                async with s.get(f"http://127.0.0.1:{port}/item/{i}?q=1") as r:
                    body = await r.read()
                out[j].append(loop.time() - t0)
                assert r.status == 200 and body == BODY
    return out


def _check_exchange(name: str, ex) -> None:
    cand = ex.candidate
    assert ex.primary.status == 200 and ex.primary.body == BODY
    want = EXPECTED_ERROR[name]
    assert cand.error == want, (name, cand)
    if name == "500":
        assert cand.status == 500 and cand.body == b"oops"
    elif name == "50MB":
        assert cand.status == 200
        assert cand.size == BIG
        assert cand.sha256 == BIG_SHA
        assert cand.truncated is True
        assert len(cand.body) == CAPTURE
        assert cand.body == BLOCK[:CAPTURE]
    else:
        assert cand.status == 0
    if name in ("hang", "answers_after_10s"):
        timeout = 2.0 if name == "answers_after_10s" else 1.0
        assert timeout - 0.05 <= cand.latency < timeout + 3.0


@pytest.mark.parametrize("name", list(FAULTS))
async def test_faulty_candidate_is_invisible(primary, name):
    handler, mirror_cfg = FAULTS[name]
    cand_srv = None
    if handler is None:
        cand_url = f"http://127.0.0.1:{free_port()}"
    else:
        cand_srv = await RawServer(handler).start()
        cand_url = cand_srv.url
    base = await start_proxy(config(primary.url))
    sink = Collector()
    faulty = await start_proxy(config(primary.url, cand_url, mirror=mirror_cfg), sink)
    try:
        # the bytes: identical to the no-candidate proxy
        req = request("GET", "/item/1?x=%2F", [("Accept-Encoding", "gzip")])
        want = await exchange(base.port, req)
        got = await exchange(faulty.port, req)
        assert got.raw == want.raw
        assert got.body == BODY
        sent = 1

        # the latency: a guard, not a benchmark. The test machine may be shared and
        # stall now and then, so a failed round is measured again; a primary path that
        # waits on the candidate (>= mirror.timeout) fails every round.
        rounds = []
        for _ in range(3):
            base_lat, lat = await _latencies(base.port, faulty.port)
            sent += N
            rounds.append((statistics.median(base_lat), statistics.median(lat), max(lat)))
            if statistics.median(lat) <= statistics.median(base_lat) + 0.020 and \
                    max(lat) < 0.200:
                break
        else:
            pytest.fail(f"primary path slowed by the candidate: (base median, median, max) "
                        f"per round: {rounds}")

        # the outcome: every shadow ends in the sink with the candidate's failure kind
        mirrored = faulty.stats.total("mirrored")
        dropped = faulty.stats.total("dropped")
        assert mirrored + dropped == sent
        if name == "refused":
            # the circuit breaker opens after mirror.breaker_failures connect errors:
            # the rest are dropped at once, counted, and cost the workers nothing
            assert mirrored >= 5
            assert dropped == faulty.stats.total("dropped", "candidate_down") > 0
        elif name not in ("50MB", "endless", "tiny_chunks"):
            assert mirrored == sent
        else:   # concurrency 2, queue 2: the rest are dropped as queue_full
            assert dropped == faulty.stats.total("dropped", "queue_full")
        timeout = 2.0 if name == "answers_after_10s" else 12.0
        items = await sink.wait_for(mirrored, timeout=timeout + 5)
        assert len(items) == mirrored
        for ex in items:
            _check_exchange(name, ex)
        assert len(primary.app[HITS]) == 2 * sent   # no retries, nothing extra
    finally:
        await faulty.stop()
        await base.stop()
        if cand_srv is not None:
            await cand_srv.stop()


async def test_big_candidate_answer_memory_is_bounded(primary):
    cand = await RawServer(_big).start()
    sink = Collector()
    srv = await start_proxy(config(primary.url, cand.url,
                                   mirror={"capture_max": CAPTURE, "timeout": "10s",
                                           "max_response": "64MiB"}), sink)
    try:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            got = await exchange(srv.port, request("GET", "/item/big"))
            assert got.body == BODY
            (ex,) = await sink.wait_for(1, timeout=20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        _check_exchange("50MB", ex)
        # 50 MB went through; what was held at any time is a small multiple of capture_max
        # and the read buffers, far from the body size
        assert peak - before < 8 * 1024 * 1024, peak - before
    finally:
        await srv.stop()
        await cand.stop()


async def test_candidate_faults_do_not_touch_primary_connection_pool(primary):
    """A hanging candidate saturating every mirror worker still leaves the primary path
    free, and the excess shadows are dropped (counted), not queued without bound."""
    cand = await RawServer(_hang).start()
    sink = Collector()
    srv = await start_proxy(config(primary.url, cand.url, timeouts={"shutdown": "300ms"},
                                   mirror={"timeout": "5s", "concurrency": 2, "queue": 3}), sink)
    try:
        (lat,) = await _latencies(srv.port, n=40)
        assert max(lat) < 1.0      # waiting on the candidate would take 5 s
        st = srv.stats
        assert st.total("mirrored") == 5       # 2 in flight + 3 queued
        assert st.total("dropped", "queue_full") == 35
        assert srv.mirror.depth == 3
        assert srv.mirror.in_flight == 2
    finally:
        await srv.stop()
        await cand.stop()
    # stopping does not wait for the hanging candidate; the shadows are accounted for
    assert sink.items == []
    assert st.total("dropped", "shutdown") == 5


@pytest.mark.parametrize("client_headers,preserve_host", [
    ([("X-Keep", "1")], False),                         # primary's head reused
    ([("X-Keep", "1"), ("X-Shadow-Request", "0")], False),   # the client's copy goes
    ([("X-Keep", "1")], True),                          # primary gets the client's Host
])
async def test_shadow_head_is_primary_head_with_own_host_and_added_header(
        client_headers, preserve_host):
    """Byte for byte, a shadow's head is primary's with the candidate's Host and the
    added ``X-Shadow-Request: 1`` (never a client's copy of it), and ends where
    primary's does: the body follows the blank line."""
    got: dict[str, list[tuple[bytes, bytes]]] = {"primary": [], "candidate": []}

    def answering(who: str):
        async def handler(reader, writer, log):
            while True:
                try:
                    got[who].append(await read_request(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        return handler

    prim = await RawServer(answering("primary")).start()
    cand = await RawServer(answering("candidate")).start()
    sink = Collector()
    srv = await start_proxy(config(prim.url, cand.url, preserve_host=preserve_host,
                                   mirror={"methods": ["GET", "POST"]}), sink)
    try:
        for method, body in (("GET", b""), ("POST", b"a=1&b=2")):
            r = await exchange(srv.port, request(method, "/p?q=1", client_headers, body=body))
            assert r.status == 200
        await sink.wait_for(2)
        for (ph, pb), (ch, cb) in zip(got["primary"], got["candidate"], strict=True):
            assert ph.endswith(b"\r\n\r\n") and ch.endswith(b"\r\n\r\n") and pb == cb
            plines, clines = ph.split(b"\r\n")[:-2], ch.split(b"\r\n")[:-2]
            assert plines[0] == clines[0]                    # the request line
            want = [ln for ln in plines[1:] if not ln.lower().startswith(b"host:")
                    and not ln.lower().startswith(b"x-shadow-request:")]
            assert sorted(clines[1:]) == sorted(
                want + [b"Host: " + cand.url.split("//")[1].encode(), b"X-Shadow-Request: 1"])
            assert (b"Host: example.test" in plines) == preserve_host
    finally:
        await srv.stop()
        await prim.stop()
        await cand.stop()
