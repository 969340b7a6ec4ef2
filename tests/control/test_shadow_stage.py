"""The shadow stage: mirrored requests leave the proxy workers for processes of their own.

In-process: a worker's :class:`~shadowproxy.proxy.tee.Tee` hands shadows over a real Unix
socket to a shadow process's :class:`~shadowproxy.control.shadow.Intake` and
:class:`~shadowproxy.proxy.mirror.Mirror`. Multi-process: the real ``shadowproxy run`` with a
candidate that floods, and with its shadow process killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from aiohttp import web

from shadowproxy.control.shadow import Intake
from shadowproxy.proxy.mirror import Mirror
from shadowproxy.proxy.server import ProxyServer
from shadowproxy.proxy.tee import Tee
from shadowproxy.stats import Stats
from tests.control.test_process import Running, _named, _write_config
from tests.rawhttp import RawServer, read_request
from tests.support import Collector, Upstream, config, free_port

BODY = b'{"id": 7, "name": "widget"}'


async def _primary_handler(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def _upstream() -> Upstream:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _primary_handler)
    return await Upstream(app).start()


class Stage:
    """A shadow process's intake and mirror, in this process, on a real Unix socket."""

    def __init__(self, cfg, path: str) -> None:
        self.stats = Stats()
        self.sink = Collector()
        self.mirror = Mirror(cfg, self.stats, self.sink)
        self.intake = Intake(self.mirror)
        self.path = path

    async def start(self) -> Stage:
        await self.mirror.start()
        self.server = await asyncio.start_unix_server(self.intake.serve, self.path)
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.mirror.drain(asyncio.get_running_loop().time() + 1.0)


async def _worker(cfg, paths: list[str]) -> tuple[ProxyServer, Stats]:
    stats = Stats()
    tee = Tee(cfg, stats, paths)
    await tee.start(wait=2.0)
    srv = ProxyServer(cfg, stats, None, tee=tee)
    await srv.start()
    return srv, stats


async def test_a_worker_hands_shadows_to_the_shadow_stage_over_its_socket(tmp_path: Path):
    primary, candidate = await _upstream(), await _upstream()
    cfg = config(primary.url, candidate.url, mirror={"methods": ["GET", "POST"]})
    stage = await Stage(cfg, str(tmp_path / "s.sock")).start()
    srv, stats = await _worker(cfg, [stage.path])
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                async with s.post(f"http://127.0.0.1:{srv.port}/items/{i}?q=%20",
                                  data=b"a=%d" % i) as r:
                    assert r.status == 200 and await r.read() == BODY
        items = await stage.sink.wait_for(20)
        by_target = {ex.request.path + "?" + ex.request.query: ex for ex in items}
        assert set(by_target) == {f"/items/{i}?q=%20" for i in range(20)}
        for i in range(20):
            ex = by_target[f"/items/{i}?q=%20"]
            assert ex.request.method == "POST" and ex.request.body == b"a=%d" % i
            assert ex.primary.status == 200 and ex.primary.body == BODY
            assert ex.candidate.status == 200 and ex.candidate.body == BODY
        # the worker counted nothing final for them; the shadow stage counted them mirrored
        assert stats.total("dropped") == 0 and stats.total("mirrored") == 0
        assert stage.stats.total("mirrored") == 20
        assert stage.mirror.budget.used == 0 and srv.mirror.budget.used == 0
    finally:
        await srv.stop()
        await stage.stop()
        await primary.stop()
        await candidate.stop()


async def test_without_a_shadow_process_primary_serves_and_shadows_are_counted(tmp_path):
    primary, candidate = await _upstream(), await _upstream()
    cfg = config(primary.url, candidate.url)
    srv, stats = await _worker(cfg, [str(tmp_path / "nobody.sock")])
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(10):
                async with s.get(f"http://127.0.0.1:{srv.port}/p/{i}") as r:
                    assert r.status == 200 and await r.read() == BODY
        assert stats.total("dropped", "shadow_down") == 10
        assert stats.final_total() == 10
    finally:
        await srv.stop()
        await primary.stop()
        await candidate.stop()


async def test_a_worker_that_goes_away_leaves_its_shadows_counted(tmp_path: Path):
    """Primary hangs, so the worker never tells the shadow stage primary's answer; when
    the worker's link closes, the shadow stage counts them primary_incomplete."""
    release = asyncio.Event()

    async def hanging(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_get("/{tail:.*}", hanging)
    primary, candidate = await Upstream(app).start(), await _upstream()
    cfg = config(primary.url, candidate.url, timeouts={"shutdown": "200ms"})
    stage = await Stage(cfg, str(tmp_path / "s.sock")).start()
    srv, _stats = await _worker(cfg, [stage.path])
    try:
        async with aiohttp.ClientSession() as s:
            tasks = [asyncio.create_task(s.get(f"http://127.0.0.1:{srv.port}/h/{i}"))
                     for i in range(5)]
            for _ in range(100):
                if len(stage.intake.waiting) == 5:
                    break
                await asyncio.sleep(0.02)
            assert len(stage.intake.waiting) == 5
            for link in srv.mirror.links:      # the worker dies: its links close
                assert link.client is not None
                link.closing = True
                link.client._writer.transport.abort()
            for _ in range(100):
                if stage.stats.total("dropped", "primary_incomplete") == 5:
                    break
                await asyncio.sleep(0.02)
            assert stage.stats.total("dropped", "primary_incomplete") == 5
            assert not stage.intake.waiting and stage.sink.items == []
            release.set()
            for t in tasks:
                (await t).release()
    finally:
        release.set()
        await srv.stop()
        await stage.stop()
        await primary.stop()
        await candidate.stop()


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[16])


async def _endless(reader, writer, log):
    """A candidate that answers with a chunked body that never ends."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"4000\r\n" + b"z" * 0x4000 + b"\r\n"
    while True:
        writer.write(block)
        await writer.drain()


async def test_a_flooding_candidate_runs_in_a_lower_priority_process(tmp_path: Path):
    """The real run: a candidate that never stops answering is read by the shadow
    process (nice 10 below the workers), never by a worker; every client request gets
    primary's answer and every shadow ends counted."""
    primary, secondary = await _upstream(), await _upstream()
    cand = await RawServer(_endless).start()
    ups = {"primary": primary, "candidate": cand, "secondary": secondary}
    listen, admin = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, ups, tmp_path / "r.db", listen, admin,
                  extra="shadow: {processes: 2, nice: 7}\n")
    text = cfg.read_text().replace("  timeout: 2s\n",
                                   "  timeout: 2s\n  max_response: 1MiB\n  capture_max: 64KiB\n")
    cfg.write_text(text)
    run = Running(cfg, listen, admin, tmp_path / "log")
    try:
        await run.ready()
        workers = _named(run.proc.pid, "shadowproxy-w")
        shadows = _named(run.proc.pid, "shadowproxy-s")
        assert len(workers) == 2 and len(shadows) == 2
        base = _nice(workers[0])
        assert all(_nice(p) == base for p in workers)
        assert all(_nice(p) == base + 7 for p in shadows)
        assert _nice(run.proc.pid) == base + 7     # the comparator and the store writer
        async with aiohttp.ClientSession() as s:
            for i in range(60):
                async with s.get(f"http://127.0.0.1:{listen}/api/items/{i}") as r:
                    assert r.status == 200 and await r.read() == BODY
        live = await run.wait_total(60)
        o = live["outcomes"]
        assert live["requests"] == 60
        ended = sum(n for k, n in o.items() if k.startswith(("candidate_error", "dropped",
                                                             "compared", "candidate_timeout")))
        assert ended == 60, o
        assert o.get("candidate_error{too_large}", 0) + o.get("candidate_timeout", 0) >= 1, o
        assert "compared" not in o, o
    finally:
        code = run.stop()
        await cand.stop()
        await primary.stop()
        await secondary.stop()
    assert code == 0


async def test_a_killed_shadow_process_is_started_again_and_primary_never_notices(
        tmp_path: Path):
    primary, candidate, secondary = await _upstream(), await _upstream(), await _upstream()
    ups = {"primary": primary, "candidate": candidate, "secondary": secondary}
    listen, admin = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, ups, tmp_path / "r.db", listen, admin)
    run = Running(cfg, listen, admin, tmp_path / "log")
    try:
        await run.ready()
        (shadow,) = _named(run.proc.pid, "shadowproxy-s")
        ok = 0
        async with aiohttp.ClientSession() as s:
            for i in range(150):
                if i == 50:
                    os.kill(shadow, signal.SIGKILL)
                async with s.get(f"http://127.0.0.1:{listen}/api/users/{i}") as r:
                    ok += r.status == 200 and await r.read() == BODY
                await asyncio.sleep(0.01)
            assert ok == 150
            # started again; the workers dial it again and mirroring resumes
            for _ in range(200):
                again = _named(run.proc.pid, "shadowproxy-s")
                if again and again != [shadow]:
                    break
                await asyncio.sleep(0.05)
            assert again and again != [shadow]
            before = (await run.outcomes())["outcomes"].get("compared", 0)
            for _ in range(100):
                for i in range(5):
                    async with s.get(f"http://127.0.0.1:{listen}/api/users/{i}") as r:
                        assert r.status == 200
                o = (await run.outcomes())["outcomes"]
                if o.get("compared", 0) > before:
                    break
                await asyncio.sleep(0.1)
            assert o.get("compared", 0) > before, o
        assert "shadow process 0 exited" in run.log.read_text()
        o = (await run.outcomes())["outcomes"]
        assert o.get("compared", 0) <= (await run.outcomes())["mirrored"]
    finally:
        code = run.stop()
        await primary.stop()
        await candidate.stop()
        await secondary.stop()
    assert code == 0
