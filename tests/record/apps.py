"""The upstreams of the record/replay tests: an item API whose price a candidate may
get wrong, which answers only a known credential and sets a session cookie."""

from __future__ import annotations

from aiohttp import web

SECRET = "s3cret-Prod-Token-7f2b91c4"           # production's credential, planted
COOKIE = "sess-0d1e2f3a4b5c6d7e8f90"           # production's session cookie
TEST_CRED = "test-cred-for-the-candidate"       # what a replay injects instead


def item_app(price: int, accept: str | None = SECRET) -> web.Application:
    """``/api/items/{id}``: JSON with ``price``; 401 without ``Bearer <accept>`` (when
    ``accept`` is not None)."""
    async def item(request: web.Request) -> web.Response:
        if accept is not None and request.headers.get("Authorization") != f"Bearer {accept}":
            return web.json_response({"error": "unauthorized"}, status=401)
        resp = web.json_response({"id": int(request.match_info["id"]), "price": price,
                                  "q": request.query.get("q", "")})
        resp.headers["Set-Cookie"] = f"session={COOKIE}; Path=/; HttpOnly"
        return resp

    async def create(request: web.Request) -> web.Response:
        return web.json_response({"created": True, "price": price}, status=201)

    app = web.Application()
    app.router.add_get("/api/items/{id}", item)
    app.router.add_post("/api/items", create)
    return app
