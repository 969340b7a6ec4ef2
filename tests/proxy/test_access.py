"""The access log: one line per request when ``log.access`` is on, with sensitive query
values masked and no headers; nothing when it is off; a reload turns it on or off."""

from __future__ import annotations

import logging
import os

import aiohttp
from aiohttp import web

from tests.rawhttp import exchange
from tests.support import config, start_proxy


async def _primary(aiohttp_server):
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="fine")

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no")

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_route("*", "/gone", gone)
    return await aiohttp_server(app)


async def test_one_line_per_request_with_secrets_masked(aiohttp_server, caplog):
    primary = await _primary(aiohttp_server)
    url = str(primary.make_url("")).rstrip("/")
    server = await start_proxy(config(url, log={"access": True}))
    base = f"http://127.0.0.1:{server.port}"
    try:
        with caplog.at_level(logging.INFO, "shadowproxy.access"):
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/ok?page=2&token=S3CRET-QUERY&refreshToken=RT-9",
                                 headers={"Authorization": "Bearer S3CRET-HEADER"}) as r:
                    assert r.status == 200
                async with s.post(f"{base}/gone", data=b'{"password": "S3CRET-BODY"}') as r:
                    assert r.status == 404
        lines = [r.getMessage() for r in caplog.records if r.name == "shadowproxy.access"]
        assert len(lines) == 2, lines
        assert lines[0].startswith('127.0.0.1 "GET /ok?page=2&token=[redacted:')
        assert "&refreshToken=[redacted:" in lines[0]
        assert '" 200 ' in lines[0] and lines[0].endswith("ms")
        assert lines[1].startswith('127.0.0.1 "POST /gone HTTP/1.1" 404 ')
        assert "S3CRET" not in caplog.text
        # an absolute-form target (its user information never logged), and a header's
        # secret echoed in the query (masked as the store masks it)
        caplog.clear()
        with caplog.at_level(logging.INFO, "shadowproxy.access"):
            raw = (b"GET http://admin:hunter2@example.com/ok?state=ECHOED-TOKEN-1 HTTP/1.1\r\n"
                   b"Host: example.com\r\nAuthorization: Bearer ECHOED-TOKEN-1\r\n\r\n")
            got = await exchange(server.port, raw)
            assert got.status == 200
        (line,) = [r.getMessage() for r in caplog.records if r.name == "shadowproxy.access"]
        assert line.startswith('127.0.0.1 "GET /ok?state=[redacted:')
        assert "hunter2" not in line and "ECHOED-TOKEN-1" not in line
        # a reload turns it off (and the requests go on)
        caplog.clear()
        server.reload(config(url))
        with caplog.at_level(logging.INFO, "shadowproxy.access"):
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/ok") as r:
                    assert r.status == 200
        assert not [r for r in caplog.records if r.name == "shadowproxy.access"]
    finally:
        await server.stop()


async def test_off_by_default_the_handler_is_not_wrapped(aiohttp_server):
    primary = await _primary(aiohttp_server)
    server = await start_proxy(config(str(primary.make_url("")).rstrip("/")))
    try:
        assert server._server is not None
        assert server._server.handler == server.proxy.handle
    finally:
        await server.stop()


async def test_the_access_log_masks_with_the_runs_key(aiohttp_server):
    """Workers get the control process's key: the access log's masks are the store's."""
    from shadowproxy.control.supervisor import InProcess

    primary = await _primary(aiohttp_server)
    run = await InProcess(config(str(primary.make_url("")).rstrip("/"),
                                 log={"access": True})).start()
    try:
        handler = run.server._server.handler
        assert handler.redactor.key == run.control.redactor.key
        assert handler.redactor.mask("x") == run.control.redactor.mask("x")
        # a reload (new rules, even a key_env) keeps the run's key on both sides, and
        # both follow the new rules
        os.environ["SP_TEST_REDACT_KEY"] = "another key"
        try:
            new = config(str(primary.make_url("")).rstrip("/"), log={"access": True},
                         redact={"key_env": "SP_TEST_REDACT_KEY", "query": ["sig"]})
            run.server.reload(new)
            run.control.reload(new)
        finally:
            del os.environ["SP_TEST_REDACT_KEY"]
        handler = run.server._server.handler
        assert handler.redactor.key == run.control.redactor.key
        assert handler.redactor.redact_query("sig=1&token=2") == \
            run.control.redactor.redact_query("sig=1&token=2") == \
            f"sig={run.control.redactor.mask('1')}&token=2"
    finally:
        await run.stop()
