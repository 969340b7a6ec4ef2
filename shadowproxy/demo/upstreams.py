"""The demo's upstreams: primary, secondary (a second copy of production) and a candidate.

All three answer the same API. The candidate has
* a real regression on ``/api/users/{id}``: ``plan`` changes for about 4% of users;
* a latency shift on ``/api/products``: +15 ms;
and every deployment has noisy fields (``generated_at`` timestamps and a random
``request_id``) that differ between any two answers.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import time
import uuid

from aiohttp import web

PLANS = ("free", "pro", "team", "enterprise")


def _user(uid: int) -> dict[str, object]:
    rnd = random.Random(uid)
    return {
        "id": uid,
        "name": f"user{uid}",
        "email": f"user{uid}@example.test",
        "plan": PLANS[uid % len(PLANS)],
        "tags": sorted(rnd.sample(["beta", "admin", "eu", "us", "mobile", "web"], 3)),
        "limits": {"requests": 1000 * (1 + uid % 5), "storage_gb": 10 * (1 + uid % 3)},
    }


def make_app(role: str) -> web.Application:
    """``role``: primary, secondary or candidate."""

    def meta() -> dict[str, object]:
        return {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) +
                f".{random.randrange(1000):03d}Z", "request_id": str(uuid.uuid4())}

    async def user(request: web.Request) -> web.Response:
        uid = int(request.match_info["id"])
        body = _user(uid)
        if role == "candidate" and uid % 25 == 7:       # the regression: ~4% of users
            body["plan"] = "free"
        body["meta"] = meta()
        return web.json_response(body)

    async def products(request: web.Request) -> web.Response:
        cat = request.query.get("category", "all")
        await asyncio.sleep(0.030 if role == "candidate" else 0.015)   # the latency shift
        items = [{"sku": f"{cat}-{i}", "price": round(9.99 + i * 1.5, 2), "stock": (i * 7) % 13}
                 for i in range(20)]
        raw = web.json_response({"category": cat, "items": items, "meta": meta()}).body
        assert isinstance(raw, bytes)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=gzip.compress(raw, mtime=0), content_type="application/json",
                                headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return web.Response(body=raw, content_type="application/json")

    async def search(request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        hits = [{"id": i, "title": f"{q} result {i}"} for i in range(len(q) % 7 + 1)]
        return web.json_response({"query": q, "hits": hits, "meta": meta()})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def orders(request: web.Request) -> web.Response:
        data = await request.json()
        return web.json_response({"order": str(uuid.uuid4()), "items": data.get("items", [])},
                                 status=201)

    async def admin(request: web.Request) -> web.Response:
        return web.json_response({"role": role, "uptime": time.monotonic()})

    app = web.Application()
    app.router.add_get("/api/users/{id:\\d+}", user)
    app.router.add_get("/api/products", products)
    app.router.add_get("/api/search", search)
    app.router.add_get("/health", health)
    app.router.add_post("/api/orders", orders)
    app.router.add_get("/admin/stats", admin)
    return app
