"""Fidelity against a real production-grade server: Debian's nginx as primary.

nginx does what test servers rarely do: gzip on the fly with chunked framing,
ETag/If-None-Match → 304, Range → 206, HEAD, redirects, several Set-Cookie.
Each case asserts the bytes through the proxy equal the bytes straight from
nginx (minus hop-by-hop headers; Date is nginx's own clock).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.rawhttp import exchange, request
from tests.servers import Nginx
from tests.support import Collector, config, start_proxy

BODY = json.dumps({"items": [{"id": i, "name": f"item {i}", "tags": ["a", "b"]}
                             for i in range(60)]}).encode()

SERVER = """
    gzip on; gzip_types application/json; gzip_min_length 1; gzip_vary on;
    etag on;
    location = /old { return 301 /data.json; }
    location = /cookies {
        add_header Set-Cookie "a=1; Path=/" always;
        add_header Set-Cookie "b=2; HttpOnly" always;
        return 200 "cookies\\n";
    }
    location = /empty { return 204; }
"""


@pytest.fixture
def nginx(tmp_path: Path):
    ng = Nginx(tmp_path / "nginx", SERVER)
    (ng.root / "html" / "data.json").write_bytes(BODY)
    ng.start()
    yield ng
    ng.stop()


def _same(direct, proxied) -> None:
    def strip(resp):
        status, headers, body = resp.fidelity()
        return status, [(k, v) for k, v in headers if k.lower() != b"date"], body
    assert strip(proxied) == strip(direct)


CASES = [
    ("GET", "/data.json", [], 200),
    ("GET", "/data.json", [("Accept-Encoding", "gzip")], 200),     # on-the-fly gzip, chunked
    ("HEAD", "/data.json", [], 200),
    ("GET", "/data.json", [("Range", "bytes=10-99")], 206),
    ("GET", "/old", [], 301),                                       # redirect passed back
    ("GET", "/cookies", [], 200),                                   # two Set-Cookie
    ("GET", "/empty", [], 204),
    ("GET", "/missing.json?x=%2F&y=a+b&y=&z", [], 404),             # raw query
]


@pytest.mark.parametrize("method,target,headers,status", CASES)
async def test_bytes_through_proxy_equal_nginx_direct(nginx, method, target, headers,
                                                      status) -> None:
    sink = Collector()
    server = await start_proxy(config(nginx.url, nginx.url), sink)
    try:
        req = request(method, target, headers, host=f"127.0.0.1:{nginx.port}")
        direct = await exchange(nginx.port, req, method)
        proxied = await exchange(server.port, req, method)
        assert direct.status == status
        _same(direct, proxied)
        if method == "HEAD":
            assert proxied.get("Content-Length") == str(len(BODY)).encode()
        if "gzip" in str(headers):
            assert proxied.get("Content-Encoding") == b"gzip"
        if target == "/cookies":
            assert proxied.getall("Set-Cookie") == [b"a=1; Path=/", b"b=2; HttpOnly"]
    finally:
        await server.stop()


async def test_etag_revalidation_304_passes_through(nginx) -> None:
    server = await start_proxy(config(nginx.url))
    try:
        first = await exchange(nginx.port, request("GET", "/data.json"))
        etag = first.get("ETag")
        assert etag, first.headers
        req = request("GET", "/data.json", [("If-None-Match", etag.decode())])
        direct = await exchange(nginx.port, req)
        proxied = await exchange(server.port, req)
        assert direct.status == proxied.status == 304
        assert proxied.body == b""
        _same(direct, proxied)
    finally:
        await server.stop()


async def test_gzip_body_mirrored_and_compared_as_captured(nginx) -> None:
    """The candidate gets the same Accept-Encoding and the capture holds gzip bytes."""
    sink = Collector()
    server = await start_proxy(config(nginx.url, nginx.url), sink)
    try:
        req = request("GET", "/data.json", [("Accept-Encoding", "gzip")])
        proxied = await exchange(server.port, req)
        assert proxied.get("Content-Encoding") == b"gzip"
        (ex,) = await sink.wait_for(1)
        assert ex.primary.body == proxied.body          # the tee saw the client's bytes
        assert dict(ex.candidate.headers).get("Content-Encoding") == "gzip"
    finally:
        await server.stop()
