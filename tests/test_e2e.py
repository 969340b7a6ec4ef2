"""End to end through the real proxy, comparator, noise learner, redactor and store.

Primary, candidate and secondary are the demo upstreams: the candidate changes
``$.plan`` for some users of ``/api/users/{id}``; every deployment stamps a fresh
``generated_at`` and ``request_id``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from shadowproxy.control.supervisor import InProcess
from shadowproxy.stats import FINAL
from shadowproxy.store import open_store
from tests.support import config

ROUTES = [
    {"name": "user", "match": "/api/users/{id}", "methods": ["GET"]},
    {"name": "products", "match": "/api/products"},
    {"name": "search", "match": "/api/search"},
]


async def _drive(port: int, n: int) -> None:
    sem = asyncio.Semaphore(20)
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> None:
            if i % 3 == 0:
                path = f"/api/products?category=c{i % 4}"
            elif i % 3 == 1:
                path = f"/api/users/{i % 300}"
            else:
                path = f"/api/search?q=q{i % 9}"
            async with sem, s.get(f"http://127.0.0.1:{port}{path}",
                                  headers={"Authorization": "Bearer e2e-planted-secret"}) as r:
                assert r.status == 200
                await r.read()
        await asyncio.gather(*(one(i) for i in range(n)))


async def _settle(app: InProcess, n: int) -> None:
    for _ in range(200):
        if app.stats.final_total() >= n and app.control.stage.queue.empty():
            return
        await asyncio.sleep(0.05)


async def test_regression_found_noise_learned_identical_clean(upstreams, tmp_path: Path) -> None:
    db = tmp_path / "e2e.db"
    cfg = config(upstreams["primary"].url, upstreams["candidate"].url,
                 upstreams["secondary"].url, routes=ROUTES,
                 noise={"min_samples": 30}, store={"url": f"sqlite:///{db}"})
    app = await InProcess(cfg).start()
    n = 900
    try:
        await _drive(app.port, n)
        await _settle(app, n)
    finally:
        await app.stop()

    # accounting: every request ended in exactly one final outcome
    assert app.stats.final_total() == n
    assert app.stats.total("compared") == app.stats.total("mirrored") == n
    assert {o for (o, _r, _e) in app.stats.counts} <= set(FINAL) | {"mirrored"}

    store = open_store(f"sqlite:///{db}", readonly=True)
    try:
        stats = {s.endpoint: s for s in store.endpoint_stats()}
        assert set(stats) == {"user", "products", "search"}
        assert sum(s.exchanges for s in stats.values()) == n
        # the regression: a diff on the right endpoint and field, nowhere else
        assert stats["user"].diffs > 0
        assert stats["products"].diffs == 0 and stats["search"].diffs == 0
        user_fields = {f.field: f for f in store.field_stats("user")}
        real = {f for f, st in user_fields.items() if not st.noise}
        assert real == {"$.plan"}
        plan = user_fields["$.plan"]
        assert plan.kinds == {"changed": plan.count}
        # exactly the users the candidate changes (uid % 25 == 7, unless already "free")
        expected = sum(1 for i in range(n)
                       if i % 3 == 1 and (i % 300) % 25 == 7 and (i % 300) % 4 != 0)
        assert plan.exchanges == expected == stats["user"].diffs
        # noisy fields learned as noise on every endpoint, with evidence
        noise = {(r.endpoint, r.field): r for r in store.noise()}
        for ep in ("user", "products", "search"):
            for field in ("$.meta.generated_at", "$.meta.request_id"):
                row = noise[(ep, field)]
                assert row.noise and row.n >= 30 and row.s > 0
        # identical endpoints: only noise
        assert stats["search"].noise == stats["search"].exchanges
        # the planted credential never reached the store
        raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("e2e.db"))
        assert b"e2e-planted-secret" not in raw
    finally:
        store.close()
