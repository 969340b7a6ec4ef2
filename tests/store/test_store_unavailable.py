"""A store that cannot be opened never keeps primary from serving.

The real ``shadowproxy run`` with a store in a directory that does not exist yet:
the proxy starts and serves, ``/readyz`` answers 200 with the store degraded and
its reason, and once the directory appears the store is opened and results and
outcome counts are stored (the counts of the time without a store included).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.control.test_process import Running, _write_config
from tests.support import Upstream, free_port

BODY = b'{"ok": true}'


async def _upstream() -> Upstream:
    app = web.Application()
    app.router.add_get("/{tail:.*}", lambda r: web.Response(body=BODY))
    return await Upstream(app).start()


async def test_a_store_that_cannot_be_opened_is_retried_while_primary_serves(tmp_path: Path):
    ups = {k: await _upstream() for k in ("primary", "candidate", "secondary")}
    listen, admin = free_port(), free_port()
    where = tmp_path / "later" / "r.db"
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, ups, where, listen, admin)
    run = Running(cfg, listen, admin, tmp_path / "log")
    try:
        await run.ready()
        async with aiohttp.ClientSession() as s:
            for i in range(20):
                async with s.get(f"http://127.0.0.1:{listen}/api/users/{i}") as r:
                    assert r.status == 200 and await r.read() == BODY
            async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                assert r.status == 200
                body = await r.json()
            assert body["status"] == "degraded" and body["reasons"] == []
            assert body["checks"]["store"]["ok"] is False
            assert any("does not exist" in d for d in body["degraded"]), body
            # reads of the store say why
            async with s.get(f"http://127.0.0.1:{admin}/api/v1/endpoints") as r:
                assert r.status == 503
            where.parent.mkdir()
            for _ in range(150):
                async with s.get(f"http://127.0.0.1:{listen}/api/users/1") as r:
                    assert r.status == 200
                async with s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                    body = await r.json()
                if body["status"] == "ready" and (await run.outcomes())["stored"] > 0:
                    break
                await asyncio.sleep(0.1)
            assert body["status"] == "ready", body
    finally:
        code = run.stop()
        for up in ups.values():
            await up.stop()
    assert code == 0
    assert "cannot create the store" in run.log.read_text()
    con = sqlite3.connect(where)
    try:
        assert con.execute("select count(*) from exchanges").fetchone()[0] > 0
        # the outcome counts of the time without a store were kept and written
        total = con.execute("select sum(count) from outcomes where outcome in ('compared', "
                            "'candidate_error', 'candidate_timeout', 'dropped', 'sampled_out', "
                            "'not_eligible')").fetchone()[0]
        assert total >= 21
    finally:
        con.close()
