"""Accounting: every request ends in exactly one final outcome, under load and faults,
and a stopping server finishes in-flight requests and accounts for every shadow.

The comparator stage is not wired here; the test's sink plays its part and counts
``compared`` / ``candidate_error{kind}`` / ``candidate_timeout`` for each exchange it
accepts (and rejects some, which the mirror counts as ``dropped{compare_full}``).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from shadowproxy.models import Exchange
from shadowproxy.stats import AFTER_MIRROR_DROPS, FINAL, Stats
from tests.rawhttp import RawServer, read_request
from tests.support import Collector, Upstream, config, start_proxy


class ComparatorSink:
    """Counts the final outcome of each exchange it accepts, like the comparator will."""

    def __init__(self, stats: Stats, reject_every: int = 0) -> None:
        self.stats = stats
        self.reject_every = reject_every
        self.offered = 0
        self.accepted = 0
        self.kinds: Counter[str] = Counter()

    def __call__(self, ex: Exchange) -> bool:
        self.offered += 1
        if self.reject_every and self.offered % self.reject_every == 0:
            return False
        self.accepted += 1
        err = ex.candidate.error
        if err is None:
            self.stats.add("compared", "", ex.endpoint)
        elif err == "timeout":
            self.stats.add("candidate_timeout", "", ex.endpoint)
        else:
            self.stats.add("candidate_error", err, ex.endpoint)
        self.kinds[err or "ok"] += 1
        return True


PRIVATE = web.AppKey("private", list)


async def primary_handler(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/abort"):
        resp = web.StreamResponse()
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(b"partial")
        await asyncio.sleep(0.001)
        assert request.transport is not None
        request.transport.abort()
        return resp
    await request.read()
    return web.Response(body=b"primary " + request.raw_path.encode())


def faulty_candidate(seed: int):
    """Random faults, decided per request target so that aiohttp's one retry of an
    idempotent request on a reused connection meets the same fault."""

    async def handler(reader, writer, log):
        while True:
            head, _ = await read_request(reader)
            r = random.Random(head.split(b" ", 2)[1] + str(seed).encode()).random()
            if r < 0.10:
                await asyncio.sleep(3600)                      # hang → timeout
            elif r < 0.20:
                writer.transport.abort()                      # reset
                return
            elif r < 0.25:
                writer.write(b"\x16\x03\x01 not http\r\n\r\n")  # garbage → protocol
                await writer.drain()
                return
            elif r < 0.40:
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n"
                             b"\r\noops")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    return handler


async def test_every_request_ends_in_exactly_one_final_outcome():
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", primary_handler)
    primary = await Upstream(app).start()
    cand = await RawServer(faulty_candidate(42)).start()
    stats = Stats()
    sink = ComparatorSink(stats, reject_every=37)
    cfg = config(primary.url, cand.url,
                 mirror={"sample": 0.9, "queue": 4, "concurrency": 8, "timeout": "200ms",
                         "capture_max": "64KiB", "buffer_limit": 10 * 64 * 1024},
                 routes=[{"match": "/private/**", "mirror": False}],
                 timeouts={"shutdown": "5s"})
    srv = await start_proxy(cfg, sink, stats)
    n = 2000
    rnd = random.Random(3)
    plan = []
    for i in range(n):
        r = rnd.random()
        if r < 0.10:
            plan.append(("POST", f"/orders/{i}"))
        elif r < 0.18:
            plan.append(("GET", f"/private/{i}"))
        elif r < 0.21:
            plan.append(("GET", f"/abort/{i}"))
        else:
            plan.append(("GET", f"/items/{i}?q={i}"))
    client: Counter[str] = Counter()
    it = iter(plan)
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=50)) as session:
            async def worker() -> None:
                for method, path in it:
                    try:
                        async with session.request(method, f"http://127.0.0.1:{srv.port}{path}",
                                                   data=b"body" if method == "POST" else None
                                                   ) as r:
                            body = await r.read()
                            assert r.status == 200
                            assert body == b"primary " + path.encode()
                            client["ok"] += 1
                    except aiohttp.ClientPayloadError:
                        assert path.startswith("/abort")
                        client["aborted"] += 1

            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(50))), 60)
    finally:
        await srv.stop()
        await cand.stop()
        await primary.stop()

    aborts = sum(1 for _m, p in plan if p.startswith("/abort"))
    assert client["ok"] == n - aborts and client["aborted"] == aborts

    # requests sent == sum of final outcomes
    assert stats.final_total() == n, stats.by_outcome()
    # mirrored == handed to the sink + dropped after mirror
    mirrored = stats.total("mirrored")
    assert mirrored == sink.offered - (sink.offered - sink.accepted) + \
        stats.dropped_after_mirror(), stats.by_outcome()
    assert stats.total("dropped", "compare_full") == sink.offered - sink.accepted
    assert mirrored == sink.accepted + stats.dropped_after_mirror()
    # every kind of fault and drop actually happened
    by = stats.by_outcome()
    for key in ("not_eligible{method}", "not_eligible{route}", "sampled_out", "compared",
                "candidate_timeout", "candidate_error{reset}", "candidate_error{protocol}",
                "dropped{queue_full}", "dropped{primary_incomplete}",
                "dropped{compare_full}"):
        assert by.get(key, 0) > 0, (key, by)
    assert stats.total("not_eligible", "method") == sum(1 for m, _ in plan if m == "POST")
    assert stats.total("not_eligible", "route") == \
        sum(1 for _m, p in plan if p.startswith("/private"))
    assert stats.total("primary_error") == aborts          # not a final outcome
    assert not any(o not in FINAL and o not in ("mirrored", "primary_error")
                   for (o, _r, _e) in stats.counts)
    assert all(r in AFTER_MIRROR_DROPS or r in ("queue_full", "memory")
               for (o, r, _e) in stats.counts if o == "dropped")
    assert srv.mirror.budget.used == 0
    assert srv.mirror.in_flight == 0


# ------------------------------------------------------------------ drain on stop


SLOW = web.AppKey("slow", list)


async def slow_primary(request: web.Request) -> web.StreamResponse:
    request.app[SLOW].append(request.path)
    if request.path.startswith("/slow"):
        await asyncio.sleep(0.5)
    if request.path.startswith("/stream"):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(5):
            await resp.write(b"0123456789")
            await asyncio.sleep(0.1)
        await resp.write_eof()
        return resp
    return web.Response(body=b"done " + request.path.encode())


@pytest.fixture
async def slow_app():
    app = web.Application()
    app[SLOW] = []
    app.router.add_route("*", "/{tail:.*}", slow_primary)
    up = await Upstream(app).start()
    yield up
    await up.stop()


async def test_stop_lets_in_flight_requests_finish(slow_app):
    srv = await start_proxy(config(slow_app.url, timeouts={"shutdown": "5s"}))
    port = srv.port
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as s:
        async def get(path: str) -> tuple[int, bytes]:
            async with s.get(f"http://127.0.0.1:{port}{path}") as r:
                return r.status, await r.read()

        tasks = [asyncio.create_task(get(f"/slow/{i}")) for i in range(5)]
        tasks.append(asyncio.create_task(get("/stream")))
        for _ in range(100):
            if len(slow_app.app[SLOW]) == 6:
                break
            await asyncio.sleep(0.01)
        assert len(slow_app.app[SLOW]) == 6
        t0 = loop.time()
        await srv.stop()
        took = loop.time() - t0
        results = await asyncio.gather(*tasks)
    assert [r[0] for r in results] == [200] * 6
    assert [r[1] for r in results[:5]] == [f"done /slow/{i}".encode() for i in range(5)]
    assert results[5][1] == b"0123456789" * 5
    assert took < 4.5          # finished, not cut at the 5 s deadline
    # no longer listening
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def slow_candidate(delay: float):
    async def handler(reader, writer, log):
        while True:
            await read_request(reader)
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    return handler


async def _fire(port: int, n: int) -> None:
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"http://127.0.0.1:{port}/q/{i}") as r:
                assert r.status == 200
                await r.read()


async def test_stop_completes_or_counts_queued_shadows(slow_app):
    cand = await RawServer(slow_candidate(0.5)).start()
    sink = Collector()
    srv = await start_proxy(config(slow_app.url, cand.url, timeouts={"shutdown": "1s"},
                                   mirror={"concurrency": 1, "queue": 10, "timeout": "2s"}),
                            sink)
    try:
        await _fire(srv.port, 8)
        assert srv.stats.total("mirrored") == 8
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await srv.stop()
        took = loop.time() - t0
        done = len(sink.items)
        dropped = srv.stats.total("dropped", "shutdown")
        assert done + dropped == 8
        assert done >= 1 and dropped >= 1
        assert took < 3.0          # the 1 s deadline, not the 4 s the queue needs
        assert all(ex.candidate.error is None for ex in sink.items)
        assert srv.mirror.budget.used == 0
        assert srv.stats.final_total() == 8 - done     # the sink's part is counted later
    finally:
        await cand.stop()


async def test_shadows_that_waited_out_their_timeout_are_dropped_not_sent(slow_app):
    """Behind a slow candidate the queue drains at the candidate's pace; a shadow still
    queued ``mirror.timeout`` after its request is dropped{queue_timeout}, never sent
    late, and the equation holds."""
    async def counting(reader, writer, log):
        while True:
            head, _ = await read_request(reader)
            log.append(head)
            await asyncio.sleep(0.4)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    cand = await RawServer(counting).start()
    sink = Collector()
    srv = await start_proxy(config(slow_app.url, cand.url,
                                   mirror={"concurrency": 1, "queue": 100, "timeout": "1s"}),
                            sink)
    try:
        await asyncio.gather(*(_fire(srv.port, 1) for _ in range(8)))
        assert srv.stats.total("mirrored") == 8
        for _ in range(300):
            if len(sink.items) + srv.stats.total("dropped", "queue_timeout") == 8:
                break
            await asyncio.sleep(0.01)
        sent = len(sink.items)
        stale = srv.stats.total("dropped", "queue_timeout")
        assert sent + stale == 8
        assert 2 <= sent <= 4 and stale >= 4      # ~1 s of 0.4 s answers, one at a time
        assert len(cand.log) == sent               # the stale ones never reached it
        assert all(ex.candidate.error is None for ex in sink.items)
        assert srv.mirror.budget.used == 0
    finally:
        await srv.stop()
        await cand.stop()


async def test_stop_with_full_queue_does_not_wait_for_deadline(slow_app):
    cand = await RawServer(slow_candidate(0.05)).start()
    sink = Collector()
    srv = await start_proxy(config(slow_app.url, cand.url, timeouts={"shutdown": "10s"},
                                   mirror={"concurrency": 1, "queue": 3, "timeout": "2s"}),
                            sink)
    try:
        await _fire(srv.port, 4)
        assert srv.stats.total("mirrored") == 4
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await srv.stop()
        took = loop.time() - t0
        assert len(sink.items) == 4
        assert srv.stats.total("dropped") == 0
        assert took < 5.0, took    # done in ~0.2 s; the deadline is 10 s
    finally:
        await cand.stop()


async def test_shadow_accepted_after_stop_began_is_counted(slow_app):
    """A request already in flight when stop() starts may still submit a shadow; it is
    either completed or counted as dropped{shutdown}, never lost."""
    cand = await RawServer(slow_candidate(0.01)).start()
    sink = Collector()
    srv = await start_proxy(config(slow_app.url, cand.url, timeouts={"shutdown": "3s"}), sink)
    try:
        async with aiohttp.ClientSession() as s:
            async def get() -> int:
                async with s.get(f"http://127.0.0.1:{srv.port}/slow/x") as r:
                    await r.read()
                    return r.status
            t = asyncio.create_task(get())
            for _ in range(100):
                if slow_app.app[SLOW]:
                    break
                await asyncio.sleep(0.01)
            await srv.stop()
            assert await t == 200
        st = srv.stats
        assert st.total("mirrored") + st.total("dropped", "shutdown") >= 1
        assert st.total("mirrored") == len(sink.items) + st.dropped_after_mirror()
        assert srv.mirror.budget.used == 0
    finally:
        await cand.stop()


async def test_primary_failure_drops_the_shadow(slow_app):
    """A shadow whose primary answer never came is dropped{primary_error} (refused,
    timed out) or dropped{primary_incomplete} (client gone), never handed on."""
    from tests.support import free_port
    cand = await RawServer(slow_candidate(0.0)).start()
    sink = Collector()
    stats = Stats()
    refused = await start_proxy(config(f"http://127.0.0.1:{free_port()}", cand.url), sink, stats)
    slow = await start_proxy(config(slow_app.url, cand.url, timeouts={"primary": "200ms"}),
                             sink, stats)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(f"http://127.0.0.1:{refused.port}/x") as r:
                    assert r.status == 502
            async with s.get(f"http://127.0.0.1:{slow.port}/slow/1") as r:
                assert r.status == 504
    finally:
        await refused.stop()
        await slow.stop()
        await cand.stop()
    assert stats.total("mirrored") == 4
    assert stats.total("dropped", "primary_error") == 4
    assert stats.total("primary_error", "connect") == 3
    assert stats.total("primary_error", "timeout") == 1
    assert sink.items == []
    assert stats.final_total() == 4


async def test_shadow_refused_while_draining_keeps_the_equation(slow_app):
    cand = await RawServer(slow_candidate(0.0)).start()
    sink = Collector()
    srv = await start_proxy(config(slow_app.url, cand.url), sink)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{srv.port}/a") as r:
                assert r.status == 200
            await sink.wait_for(1)
            srv.mirror.accepting = False          # as during drain
            async with s.get(f"http://127.0.0.1:{srv.port}/b") as r:
                assert r.status == 200 and await r.read() == b"done /b"
    finally:
        await srv.stop()
        await cand.stop()
    st = srv.stats
    assert st.total("dropped", "shutdown") == 1
    assert st.total("mirrored") == len(sink.items) + st.dropped_after_mirror()
    assert st.final_total() == 2 - len(sink.items)


async def test_memory_budget_drops_big_bodies_and_truncates_captures() -> None:
    """``mirror.buffer_limit`` bounds every byte a worker's shadows hold: a request body
    that does not fit drops the shadow (``dropped{memory}``); responses that do not fit
    are captured by size and digest only (truncated), never dropped; all of it is given
    back when the exchange is handed on."""
    import hashlib

    big = b"x" * 200_000

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.2)      # keep shadows in flight together
        return web.Response(body=big)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    primary = await Upstream(app).start()
    cand = await Upstream(app).start()
    stats = Stats()
    sink = Collector()
    cfg = config(primary.url, cand.url,
                 mirror={"capture_max": "256KiB", "buffer_limit": "512KiB", "concurrency": 8,
                         "max_body": "1MiB"},
                 routes=[{"match": "/upload", "mirror_unsafe": True}])
    srv = await start_proxy(cfg, sink, stats)
    try:
        async with aiohttp.ClientSession() as s:
            async def get(i: int) -> None:
                async with s.get(f"http://127.0.0.1:{srv.port}/r{i}") as r:
                    assert await r.read() == big
            await asyncio.gather(*(get(i) for i in range(6)))
            async with s.post(f"http://127.0.0.1:{srv.port}/upload", data=b"y" * 600_000) as r:
                assert r.status == 200
        items = await sink.wait_for(6)
        assert stats.total("dropped", "memory") == 1           # the body did not fit
        digest = hashlib.sha256(big).hexdigest()
        truncated = 0
        for ex in items:
            for rec in (ex.primary, ex.candidate):
                assert rec.size == len(big) and rec.sha256 == digest
                truncated += rec.truncated
                assert len(rec.body) < len(big) if rec.truncated else rec.body == big
        assert truncated > 0, "six 2×200 KB exchanges cannot all fit in 512 KiB"
        assert srv.mirror.budget.used == 0
    finally:
        await srv.stop()
        await primary.stop()
        await cand.stop()
