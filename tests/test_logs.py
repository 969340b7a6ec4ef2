"""A malformed request is answered 4xx without a traceback per request in the logs."""

from __future__ import annotations

import logging

import pytest

from shadowproxy.logs import MalformedRequestFilter

from .rawhttp import RawConn
from .support import config, start_proxy


async def test_malformed_requests_are_summarised_not_logged_each(
        caplog: pytest.LogCaptureFixture) -> None:
    flt = MalformedRequestFilter(interval=3600)
    logging.getLogger("aiohttp.server").addFilter(flt)
    server = await start_proxy(config("http://127.0.0.1:9"))
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            for _ in range(5):
                async with await RawConn.open(server.port) as conn:
                    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
                    resp = await conn.read_response()
                    assert 400 <= resp.status < 500
        records = [r for r in caplog.records if r.name == "aiohttp.server"]
        assert flt.count == 5
        assert len(records) == 1 and records[0].levelname == "WARNING"
        assert records[0].exc_info is None
    finally:
        logging.getLogger("aiohttp.server").removeFilter(flt)
        await server.stop()
