"""Recording and receiver mode in one process (the ProxyServer without workers): the
recording hook with sampling, a mirrored and recorded request sharing primary's
capture, a body over the limit counted, and a receiver's 202 for an unsafe method
that is not mirrored."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from shadowproxy.record.source import load
from shadowproxy.stats import Stats
from tests.record.apps import SECRET, item_app
from tests.support import Collector, Upstream, config, start_proxy


async def test_in_process_recording(tmp_path: Path) -> None:
    primary = await Upstream(item_app(10)).start()
    candidate = await Upstream(item_app(10)).start()
    stats = Stats()
    sink = Collector()
    cfg = config(primary.url, candidate.url, record={"dir": str(tmp_path), "sample": 1.0},
                 mirror={"max_body": 1024, "sample": 1.0, "methods": ["GET", "POST"]})
    server = await start_proxy(cfg, sink, stats)
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                async with s.get(f"http://127.0.0.1:{server.port}/api/items/{i}",
                                 headers={"Authorization": f"Bearer {SECRET}"}) as r:
                    assert (await r.json())["price"] == 10
            async with s.post(f"http://127.0.0.1:{server.port}/api/items",
                              data=b"x" * 5000) as r:        # over max_body: not recorded
                assert r.status == 201
        await sink.wait_for(5)
    finally:
        await server.stop()
        await primary.stop()
        await candidate.stop()
    assert stats.total("recorded") == 5
    assert stats.total("record_dropped", "body_too_large") == 1
    files = [str(p) for p in tmp_path.iterdir()]
    data = b"".join(Path(f).read_bytes() for f in files)
    assert SECRET.encode() not in data
    items = load(files)
    assert [i.target for i in items] == [f"/api/items/{i}" for i in range(5)]
    assert all(i.response is not None and i.response.status == 200 for i in items)
    assert server.mirror.budget.used == 0        # every capture's bytes were given back


async def test_receiver_answers_202_and_mirrors_only_safe_methods() -> None:
    primary = await Upstream(item_app(10, accept=None)).start()
    candidate = await Upstream(item_app(12, accept=None)).start()
    stats = Stats()
    sink = Collector()
    cfg = config(primary.url, candidate.url, mode="receiver")
    server = await start_proxy(cfg, sink, stats)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{server.port}/api/items/3",
                             headers={"Host": "shop-shadow:8080"}) as r:
                assert r.status == 202 and await r.read() == b""
            async with s.post(f"http://127.0.0.1:{server.port}/api/items",
                              data=b'{"price": 1}') as r:
                assert r.status == 202 and await r.read() == b""
        (ex,) = await sink.wait_for(1)
    finally:
        await server.stop()
        await primary.stop()
        await candidate.stop()
    assert ex.primary.status == 200 and b'"price": 10' in ex.primary.body   # the replica
    assert ex.candidate.status == 200 and b'"price": 12' in ex.candidate.body
    assert ("X-Forwarded-Host", "shop:8080") in ex.request.headers       # -shadow taken off
    assert stats.total("not_eligible", "method") == 1                    # the POST


async def test_receiver_counts_a_recording_it_cannot_make(tmp_path: Path) -> None:
    """A copy whose body is over mirror.max_body is neither mirrored nor recorded, and
    both are counted, as in proxy mode."""
    primary = await Upstream(item_app(10, accept=None)).start()
    candidate = await Upstream(item_app(10, accept=None)).start()
    stats = Stats()
    sink = Collector()
    cfg = config(primary.url, candidate.url, mode="receiver",
                 record={"dir": str(tmp_path), "sample": 1.0},
                 mirror={"max_body": 1024, "sample": 1.0, "methods": ["GET", "POST"]})
    server = await start_proxy(cfg, sink, stats)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{server.port}/api/items",
                              data=b"x" * 5000) as r:
                assert r.status == 202
            async with s.get(f"http://127.0.0.1:{server.port}/api/items/1") as r:
                assert r.status == 202
        await sink.wait_for(1)
    finally:
        await server.stop()
        await primary.stop()
        await candidate.stop()
    assert stats.total("not_eligible", "body_too_large") == 1
    assert stats.total("record_dropped", "body_too_large") == 1
    assert stats.total("recorded") == 1
