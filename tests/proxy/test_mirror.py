"""The mirror's queue and pump, driven directly: shadows that end at once, reloads while
shadows wait, and a callback that fails. Each shadow ends in exactly one counted
outcome and the byte budget returns to zero."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shadowproxy.http.framing import encode_headers
from shadowproxy.models import Exchange, RequestRecord, ResponseRecord
from shadowproxy.proxy.mirror import Mirror
from shadowproxy.stats import Stats
from tests.rawhttp import RawServer, read_request
from tests.support import config


def answering(log: list[bytes]):
    async def handler(reader, writer, _log):
        while True:
            try:
                head, _body = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            log.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    return handler


async def test_shadows_that_fail_at_once_do_not_recurse():
    """A shadow whose head cannot be encoded ends inside the pump that sends it; two
    thousand of them queued in one step are each handed on, once, without recursion."""
    got: list[Exchange] = []
    stats = Stats()
    m = Mirror(config("http://127.0.0.1:9", "http://127.0.0.1:9",
                      mirror={"concurrency": 4, "queue": 5000}), stats,
               lambda ex: got.append(ex) or True)
    await m.start()
    n = 2000
    for i in range(n):
        req = RequestRecord("GET", "/p", "", (("X-Bad", "\u20ac"),), b"body")  # not latin-1
        fut = m.submit(str(i), "GET /p", None, req, "/p")
        assert fut is not None
        fut.set_result(ResponseRecord(status=200))
    for _ in range(100):
        if len(got) == n:
            break
        await asyncio.sleep(0.01)
    assert len(got) == n and all(ex.candidate.error == "other" for ex in got)
    assert stats.total("mirrored") == n and stats.total("dropped") == 0
    assert m.budget.used == 0 and m.in_flight == 0 and m.depth == 0


async def test_reload_that_removes_headers_while_shadows_wait():
    """Shadows queued with primary's header block before a reload that adds
    ``remove_headers`` are sent under the new config (encoded anew), not dropped."""
    heads: list[bytes] = []
    cand = await RawServer(answering(heads)).start()
    got: list[Exchange] = []
    stats = Stats()
    m = Mirror(config("http://127.0.0.1:9", cand.url), stats,
               lambda ex: got.append(ex) or True)
    await m.start()
    try:
        headers = [("X-Keep", "1")]       # none of them is removed: primary's block would do
        req = RequestRecord("GET", "/p", "", tuple(headers), b"")
        fut = m.submit("1", "GET /p", None, req, "/p", encode_headers("GET", headers, 0))
        assert fut is not None
        # the same step: the shadow has not been sent yet
        m.configure(config("http://127.0.0.1:9", cand.url,
                           mirror={"remove_headers": ["Authorization"]}))
        fut.set_result(ResponseRecord(status=200))
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        assert len(got) == 1 and got[0].candidate.status == 200
        assert stats.total("dropped") == 0
        (head,) = heads
        assert head.endswith(b"X-Keep: 1\r\nX-Shadow-Request: 1\r\n\r\n")
        assert b"X-Shadow-Request: 1\r\n" in head
    finally:
        await m.drain(asyncio.get_running_loop().time() + 1)
        await cand.stop()
    assert m.budget.used == 0


async def test_a_failing_callback_frees_its_slot(caplog: pytest.LogCaptureFixture):
    """An internal error while a shadow's answer is taken in drops that shadow, counted
    ``dropped{internal_error}``, and the shadows waiting behind it are sent at once (not
    at the next submit or answer)."""
    heads: list[bytes] = []
    cand = await RawServer(answering(heads)).start()
    got: list[Exchange] = []
    stats = Stats()
    m = Mirror(config("http://127.0.0.1:9", cand.url, mirror={"concurrency": 1}), stats,
               lambda ex: got.append(ex) or True)
    await m.start()
    record = m.breaker.record
    failed = []

    def record_fails_once(error: str | None) -> None:   # a fault injected in the mirror
        if not failed:
            failed.append(error)
            raise RuntimeError("injected")
        record(error)

    class Breaker:                      # the mirror's breaker, with the fault injected
        def __init__(self, real) -> None:
            self.real = real

        def __getattr__(self, name: str):
            return getattr(self.real, name)

        record = staticmethod(record_fails_once)

    m.breaker = Breaker(m.breaker)  # type: ignore[assignment]
    try:
        for i in range(3):
            req = RequestRecord("GET", f"/p{i}", "", (), b"")
            fut = m.submit(str(i), "GET /p", None, req, f"/p{i}")
            assert fut is not None
            fut.set_result(ResponseRecord(status=200))
        with caplog.at_level(logging.ERROR, "shadowproxy.mirror"):
            for _ in range(200):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.01)
        assert len(got) == 2 and len(heads) == 3
        assert stats.total("dropped", "internal_error") == 1
        assert "injected" in caplog.text
    finally:
        await m.drain(asyncio.get_running_loop().time() + 1)
        await cand.stop()
    assert m.budget.used == 0 and stats.total("mirrored") == 3


async def test_the_breaker_says_when_the_candidate_goes_and_comes_back(caplog):
    """A candidate that refuses connections is a warning in the log (once, when the
    breaker opens), and so is its return (when a probe gets an answer)."""
    from tests.support import free_port

    port = free_port()
    got: list[Exchange] = []
    stats = Stats()
    m = Mirror(config("http://127.0.0.1:9", f"http://127.0.0.1:{port}",
                      mirror={"breaker_failures": 3, "breaker_cooldown": "50ms"}), stats,
               lambda ex: got.append(ex) or True)
    await m.start()
    server = None

    async def shadow(i: int) -> None:
        req = RequestRecord("GET", "/p", "", (), b"")
        fut = m.submit(str(i), "GET /p", None, req, "/p")
        if fut is not None:
            fut.set_result(ResponseRecord(status=200))

    try:
        with caplog.at_level(logging.WARNING, "shadowproxy.mirror"):
            for i in range(20):
                await shadow(i)
                await asyncio.sleep(0.005)
            for _ in range(100):
                if m.in_flight == 0 and m.depth == 0:
                    break
                await asyncio.sleep(0.01)
            gone = [r for r in caplog.records if "refuses connections" in r.getMessage()]
            assert len(gone) == 1 and f"127.0.0.1:{port}" in gone[0].getMessage()
            assert stats.total("dropped", "candidate_down") > 0
            # the candidate comes back on its port: the next probe closes the breaker
            handler = answering([])
            server = await asyncio.start_server(lambda r, w: handler(r, w, []), "127.0.0.1",
                                                port)
            for i in range(20, 200):
                await shadow(i)
                await asyncio.sleep(0.01)
                if any("answers again" in r.getMessage() for r in caplog.records):
                    break
            assert any("answers again" in r.getMessage() for r in caplog.records)
            assert not m.breaker.open
    finally:
        await m.drain(asyncio.get_running_loop().time() + 1)
        if server is not None:
            server.close()
