"""Safety: what is shadowed, where requests may go, and what the candidate gets.

Unsafe methods are never replayed unless a route opts in; requests never reach
anything but the configured upstreams whatever their target or Host says;
sampling is what it claims; shadow-only headers reach only the shadows.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import pytest
from aiohttp import web

from shadowproxy.proxy.mirror import Sampler
from tests.rawhttp import RawServer, exchange, request
from tests.support import Collector, Upstream, config, start_proxy

SAFE = ("GET", "HEAD", "OPTIONS")
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Hit:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def getall(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        vals = self.getall(name)
        return vals[0] if vals else None


HITS = web.AppKey("hits", list)


def recording_app(name: str) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        request.app[HITS].append(Hit(request.method, request.raw_path,
                                     [(k.decode("latin-1"), v.decode("latin-1"))
                                      for k, v in request.raw_headers], body))
        if request.path == "/setcookie":
            return web.Response(text=name, headers={"Set-Cookie": f"from={name}"})
        if request.path == "/redirect":
            return web.Response(status=302, headers={"Location": request.query["to"]})
        return web.Response(text=f"{name} {request.method} {request.raw_path}")

    app = web.Application()
    app[HITS] = []
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


class Env:
    def __init__(self) -> None:
        self.sink = Collector()
        self._stop: list[object] = []

    async def start(self) -> Env:
        self.primary = await Upstream(recording_app("primary")).start()
        self.candidate = await Upstream(recording_app("candidate")).start()
        self.secondary = await Upstream(recording_app("secondary")).start()
        self.elsewhere = await RawServer().start()
        self._stop += [self.primary, self.candidate, self.secondary, self.elsewhere]
        return self

    def hits(self, who: str) -> list[Hit]:
        return getattr(self, who).app[HITS]

    async def proxy(self, secondary: bool = False, **extra: object):
        srv = await start_proxy(config(self.primary.url, self.candidate.url,
                                       self.secondary.url if secondary else None, **extra),
                                self.sink)
        self._stop.insert(0, srv)
        return srv

    async def close(self) -> None:
        for s in self._stop:
            await s.stop()  # type: ignore[attr-defined]


@pytest.fixture
async def env():
    e = await Env().start()
    yield e
    await e.close()


async def settle(srv, sink: Collector) -> None:
    """Wait until every accepted shadow has reached the sink."""
    await sink.wait_for(srv.stats.total("mirrored") - srv.stats.dropped_after_mirror(), 5)


# ------------------------------------------------------------------ methods & routes


async def test_unsafe_methods_not_mirrored_by_default(env):
    srv = await env.proxy()
    for m in UNSAFE:
        r = await exchange(srv.port, request(m, f"/orders/{m.lower()}", body=b'{"n": 1}'))
        assert r.status == 200
    for m in SAFE:
        await exchange(srv.port, request(m, f"/orders/{m.lower()}"), m)
    await settle(srv, env.sink)
    assert srv.stats.total("not_eligible", "method") == len(UNSAFE)
    assert srv.stats.total("mirrored") == len(SAFE)
    assert sorted(h.method for h in env.hits("candidate")) == sorted(SAFE)
    assert sorted(h.method for h in env.hits("primary")) == sorted(SAFE + UNSAFE)
    assert {h.body for h in env.hits("primary") if h.method in UNSAFE} == {b'{"n": 1}'}


async def test_unsafe_mirrored_only_on_opt_in_route(env):
    srv = await env.proxy(routes=[{"match": "/api/orders/**", "mirror_unsafe": True}])
    for m in UNSAFE:
        await exchange(srv.port, request(m, "/api/orders/7", body=m.encode()))
        await exchange(srv.port, request(m, "/api/users/7", body=m.encode()))
    await settle(srv, env.sink)
    cand = env.hits("candidate")
    assert sorted((h.method, h.raw_path, h.body) for h in cand) == \
        sorted((m, "/api/orders/7", m.encode()) for m in UNSAFE)
    assert srv.stats.total("mirrored") == len(UNSAFE)
    assert srv.stats.total("not_eligible", "method") == len(UNSAFE)


async def test_route_mirror_false_never_mirrored(env):
    srv = await env.proxy(routes=[
        {"match": "/private/**", "mirror": False, "mirror_unsafe": True},
        {"match": "/never", "mirror": False, "sample": 1.0},
    ])
    for path in ("/private/a", "/private/b/c", "/never", "/public"):
        assert (await exchange(srv.port, request("GET", path))).status == 200
    await exchange(srv.port, request("POST", "/private/a", body=b"x"))
    await settle(srv, env.sink)
    assert [h.raw_path for h in env.hits("candidate")] == ["/public"]
    assert srv.stats.total("not_eligible", "route") == 4
    assert len(env.hits("primary")) == 5


async def test_mirror_disabled_never_mirrored(env):
    srv = await env.proxy(mirror={"enabled": False})
    await exchange(srv.port, request("GET", "/x"))
    assert srv.stats.total("not_eligible", "disabled") == 1
    await asyncio.sleep(0.05)
    assert env.hits("candidate") == []


# ------------------------------------------------------------------ destinations


async def test_absolute_form_and_foreign_host_reach_only_configured_upstreams(env):
    srv = await env.proxy()
    other = f"127.0.0.1:{env.elsewhere.port}"
    cases = [
        request("GET", f"http://{other}/x", host=other),
        request("GET", f"http://{other}/x"),
        request("GET", f"https://{other}/x", host=other),
        request("GET", "http://elsewhere.invalid/x", host="elsewhere.invalid"),
        request("GET", "/x", host="evil.example"),
        request("GET", "/x", host=other),
        request("GET", "/x", [("X-Forwarded-Host", other), ("Forwarded", f"host={other}")],
                host=other),
    ]
    for raw in cases:
        r = await exchange(srv.port, raw)
        assert r.status == 200
        assert r.body == b"primary GET /x"
    await settle(srv, env.sink)
    await asyncio.sleep(0.05)
    assert env.elsewhere.connections == 0
    assert [h.raw_path for h in env.hits("primary")] == ["/x"] * len(cases)
    assert [h.raw_path for h in env.hits("candidate")] == ["/x"] * len(cases)
    # Host is the upstream's own, never the foreign one
    assert {h.get("Host") for h in env.hits("primary")} == {f"127.0.0.1:{env.primary.port}"}
    assert {h.get("Host") for h in env.hits("candidate")} == \
        {f"127.0.0.1:{env.candidate.port}"}


async def test_foreign_host_with_preserve_host_still_goes_to_primary(env):
    srv = await env.proxy(preserve_host=True)
    other = f"127.0.0.1:{env.elsewhere.port}"
    for raw in (request("GET", "/x", host=other),
                request("GET", f"http://{other}/x", host=other)):
        r = await exchange(srv.port, raw)
        assert r.body == b"primary GET /x"
    await settle(srv, env.sink)
    await asyncio.sleep(0.05)
    assert env.elsewhere.connections == 0
    assert [h.get("Host") for h in env.hits("primary")] == [other, other]
    assert len(env.hits("candidate")) == 2


async def test_connect_refused(env):
    srv = await env.proxy()
    other = f"127.0.0.1:{env.elsewhere.port}"
    r = await exchange(srv.port, f"CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n\r\n".encode())
    assert r.status == 405
    assert srv.stats.total("not_eligible", "method") == 1
    await asyncio.sleep(0.05)
    assert env.elsewhere.connections == 0
    assert env.hits("primary") == [] and env.hits("candidate") == []
    # the proxy goes on
    assert (await exchange(srv.port, request("GET", "/after"))).status == 200


async def test_redirects_not_followed_by_mirror(env):
    srv = await env.proxy()
    to = f"http://127.0.0.1:{env.elsewhere.port}/stolen"
    r = await exchange(srv.port, request("GET", "/redirect?to=" + to))
    assert r.status == 302
    (ex,) = await env.sink.wait_for(1)
    assert ex.candidate.status == 302 and ex.primary.status == 302
    await asyncio.sleep(0.05)
    assert env.elsewhere.connections == 0


async def test_no_cookie_jar_on_the_mirror(env):
    srv = await env.proxy()
    await exchange(srv.port, request("GET", "/setcookie"))
    await exchange(srv.port, request("GET", "/next"))
    await env.sink.wait_for(2)
    assert [h.get("Cookie") for h in env.hits("candidate")] == [None, None]
    assert [h.get("Cookie") for h in env.hits("primary")] == [None, None]


# ------------------------------------------------------------------ sampling


def test_sampler_rate_unit():
    s = Sampler(None)
    s._rand = random.Random(1234).random
    n = 100_000
    k = sum(s.sampled(0.3, [], "") for _ in range(n))
    sd = (n * 0.3 * 0.7) ** 0.5
    assert abs(k - 0.3 * n) < 5 * sd


async def test_sample_rate_roughly_honoured(env):
    srv = await env.proxy(mirror={"sample": 0.3})
    n = 600
    sem = asyncio.Semaphore(30)

    async def one(i: int) -> None:
        async with sem:
            r = await exchange(srv.port, request("GET", f"/s/{i}"))
            assert r.status == 200

    await asyncio.gather(*(one(i) for i in range(n)))
    await settle(srv, env.sink)
    k = srv.stats.total("mirrored")
    # binomial(600, 0.3): mean 180, sd 11.2; 6 sd either side
    assert 113 <= k <= 247, k
    assert k + srv.stats.total("sampled_out") == n
    assert len(env.hits("candidate")) == k
    assert len(env.hits("primary")) == n


async def test_route_sample_overrides_global(env):
    srv = await env.proxy(mirror={"sample": 0.0},
                          routes=[{"match": "/always/**", "sample": 1.0},
                                  {"match": "/never/**", "sample": 0.0}])
    for i in range(20):
        await exchange(srv.port, request("GET", f"/always/{i}"))
        await exchange(srv.port, request("GET", f"/never/{i}"))
        await exchange(srv.port, request("GET", f"/global/{i}"))
    await settle(srv, env.sink)
    assert sorted(h.raw_path for h in env.hits("candidate")) == \
        sorted(f"/always/{i}" for i in range(20))
    assert srv.stats.total("sampled_out") == 40


@pytest.mark.parametrize("sample_by", ["header:X-User-Id", "cookie:uid", "query:user"])
async def test_sample_by_is_consistent(env, sample_by):
    srv = await env.proxy(mirror={"sample": 0.5, "sample_by": sample_by})
    users = [f"user-{i}" for i in range(40)]
    order = [u for u in users for _ in range(6)]
    random.Random(7).shuffle(order)
    for i, u in enumerate(order):
        if sample_by.startswith("header"):
            raw = request("GET", f"/p/{i}", [("X-User-Id", u)])
        elif sample_by.startswith("cookie"):
            raw = request("GET", f"/p/{i}", [("Cookie", f"a=b; uid={u}; c=d")])
        else:
            raw = request("GET", f"/p/{i}?x=1&user={u}")
        await exchange(srv.port, raw)
    await settle(srv, env.sink)
    sent = {int(h.raw_path.split("/")[2].split("?")[0]) for h in env.hits("candidate")}
    per_user = Counter(order[i] for i in sent)
    # each user is always in or always out
    assert set(per_user.values()) <= {6}
    in_users = len(per_user)
    assert 5 <= in_users <= 35          # both groups exist (rate 0.5 over 40 users)
    assert srv.stats.total("mirrored") == 6 * in_users
    assert srv.stats.total("sampled_out") == 6 * (40 - in_users)
    # the same decision again, from a fresh sampler
    s = Sampler(sample_by)
    for u in users:
        hdrs = [("X-User-Id", u), ("Cookie", f"uid={u}")]
        assert s.sampled(0.5, hdrs, f"user={u}") == (u in per_user)


# ------------------------------------------------------------------ shadow headers


async def test_default_shadow_header_reaches_candidate_only(env):
    srv = await env.proxy()
    await exchange(srv.port, request("GET", "/h"))
    await exchange(srv.port, request("GET", "/h2", [("X-Shadow-Request", "0")]))
    await env.sink.wait_for(2)
    cand = env.hits("candidate")
    prim = env.hits("primary")
    assert [h.getall("X-Shadow-Request") for h in cand] == [["1"], ["1"]]
    assert [h.getall("X-Shadow-Request") for h in prim] == [[], ["0"]]


async def test_add_and_remove_headers_reach_candidate_only(env):
    srv = await env.proxy(secondary=True, mirror={
        "add_headers": {"X-Shadow-Request": "1", "X-Env": "shadow"},
        "remove_headers": ["Authorization", "Cookie", "x-api-key"]})
    await exchange(srv.port, request("GET", "/h", [
        ("Authorization", "Bearer real"), ("Cookie", "session=s"), ("X-Api-Key", "k"),
        ("X-Keep", "kept"), ("X-Dup", "1"), ("x-dup", "2")]))
    await env.sink.wait_for(1)
    (p,) = env.hits("primary")
    for who in ("candidate", "secondary"):
        (c,) = env.hits(who)
        assert c.get("X-Shadow-Request") == "1"
        assert c.get("X-Env") == "shadow"
        assert c.get("Authorization") is None and c.get("Cookie") is None
        assert c.get("X-Api-Key") is None
        assert c.get("X-Keep") == "kept"
        assert c.getall("X-Dup") == ["1", "2"]
    assert p.get("X-Env") is None and p.get("X-Shadow-Request") is None
    assert p.get("Authorization") == "Bearer real"
    assert p.get("Cookie") == "session=s"
    assert p.get("X-Api-Key") == "k"


async def test_secondary_gets_the_same_request(env):
    srv = await env.proxy(secondary=True, routes=[{"match": "/w/**", "mirror_unsafe": True}])
    await exchange(srv.port, request("GET", "/r?a=%2F&b=+", [("X-Trace", "t1")]))
    await exchange(srv.port, request("PUT", "/w/1", [("Content-Type", "application/json")],
                                     body=b'{"v": 2}'))
    items = await env.sink.wait_for(2)
    cand = env.hits("candidate")
    sec = env.hits("secondary")
    assert len(cand) == len(sec) == 2

    def strip(h: Hit) -> tuple:
        return (h.method, h.raw_path, h.body,
                [(k, v) for k, v in h.headers if k.lower() != "host"])

    assert sorted(map(strip, cand)) == sorted(map(strip, sec))
    assert {h.raw_path for h in sec} == {"/r?a=%2F&b=+", "/w/1"}
    for ex in items:
        assert ex.secondary is not None and ex.secondary.status == 200
        assert ex.secondary.body.startswith(b"secondary ")
        assert ex.candidate.body.startswith(b"candidate ")
