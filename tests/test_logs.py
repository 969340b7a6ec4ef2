"""A malformed request is answered 4xx without a traceback per request in the logs."""

from __future__ import annotations

import logging

import pytest

from shadowproxy.logs import MalformedRequestFilter
from tests.rawhttp import RawConn
from tests.support import config, start_proxy


async def test_malformed_requests_are_summarised_not_logged_each(
        caplog: pytest.LogCaptureFixture) -> None:
    server = await start_proxy(config("http://127.0.0.1:9"))
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(5):
                async with await RawConn.open(server.port) as conn:
                    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
                    resp = await conn.read_response()
                    assert 400 <= resp.status < 500
        assert server._server is not None and server._server.bad_requests == 5
        records = [r for r in caplog.records if "malformed" in r.getMessage()]
        assert len(records) == 1 and records[0].levelname == "WARNING"
        assert records[0].exc_info is None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await server.stop()


def test_aiohttp_malformed_request_tracebacks_become_a_summary() -> None:
    """The filter for aiohttp's server (which answers WebSocket upgrades): its
    traceback per malformed request becomes one warning a minute."""
    from aiohttp.http_exceptions import BadStatusLine
    flt = MalformedRequestFilter(interval=3600)
    seen = []
    for _ in range(5):
        try:
            raise BadStatusLine("junk")
        except BadStatusLine:
            import sys
            rec = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                                    "Error handling request", (), sys.exc_info())
        if flt.filter(rec):
            seen.append(rec)
    assert flt.count == 5
    assert len(seen) == 1 and seen[0].levelname == "WARNING" and seen[0].exc_info is None
