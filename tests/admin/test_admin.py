"""The admin server: token rules, health, metrics, the JSON API and the mirror switch.

Everything runs for real on loopback: the demo upstreams (primary, candidate with a
regression on ``/api/users/{id}`` field ``$.plan``, secondary), an in-process
shadowproxy and its admin server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from shadowproxy.admin.config_redaction import redact_config
from shadowproxy.admin.params import parse_window
from shadowproxy.admin.server import AdminServer
from shadowproxy.control.supervisor import InProcess
from shadowproxy.demo.upstreams import make_app
from shadowproxy.errors import ConfigError
from tests.support import Upstream, config

TOKEN = "t0ken-for-the-admin-API"
CLIENT_SECRET = "client-secret-bearer-0451"
ROUTES = [
    {"name": "user", "match": "/api/users/{id}", "methods": ["GET"]},
    {"name": "products", "match": "/api/products"},
    {"name": "search", "match": "/api/search"},
    {"match": "/admin/**", "mirror": False},
]


def demo_plan(n: int, seed: int = 11) -> list[tuple[str, str, bytes | None]]:
    """Mostly user lookups (so the ~4% regression shows), some of everything else."""
    rnd = random.Random(seed)
    out: list[tuple[str, str, bytes | None]] = []
    for i in range(n):
        r = rnd.random()
        if i < 20:                      # the regression for sure: uid % 25 == 7
            out.append(("GET", f"/api/users/{7 + 25 * i}", None))
        elif r < 0.6:
            out.append(("GET", f"/api/users/{rnd.randrange(1, 400)}", None))
        elif r < 0.75:
            out.append(("GET", f"/api/products?category={rnd.choice(['tea', 'books'])}", None))
        elif r < 0.87:
            out.append(("GET", f"/api/search?q={rnd.choice(['tea', 'green+tea'])}", None))
        elif r < 0.93:
            out.append(("GET", "/health", None))
        elif r < 0.97:
            out.append(("POST", "/api/orders", b'{"items": [1, 2]}'))
        else:
            out.append(("GET", "/admin/stats", None))
    return out


class Demo:
    """Demo upstreams + an in-process shadowproxy + its admin server."""

    def __init__(self) -> None:
        self.ups: dict[str, Upstream] = {}
        self.proxy: InProcess | None = None
        self.admin: AdminServer | None = None
        self.sent = 0

    @classmethod
    async def start(cls, *, token: str | None = TOKEN, secondary: bool = True,
                    candidate: bool = True, primary_app: web.Application | None = None,
                    **extra: Any) -> Demo:
        d = cls()
        roles = ["primary"] + (["candidate"] if candidate else []) + \
            (["secondary"] if secondary else [])
        for role in roles:
            app = primary_app if role == "primary" and primary_app is not None else make_app(role)
            d.ups[role] = await Upstream(app).start()
        admin: dict[str, Any] = {"listen": "127.0.0.1:0"}
        if token:
            admin["token"] = token
        kw: dict[str, Any] = {"routes": ROUTES, "noise": {"min_samples": 30},
                              "mirror": {"timeout": "2s"}, "admin": admin}
        kw.update(extra)
        cfg = config(d.ups["primary"].url, d.ups["candidate"].url if candidate else None,
                     d.ups["secondary"].url if secondary else None, **kw)
        return await cls.around(cfg, d.ups)

    @classmethod
    async def around(cls, cfg: Any, ups: dict[str, Upstream]) -> Demo:
        """An in-process shadowproxy of ``cfg`` and its admin server, before the
        upstreams ``ups`` (started already; stopped with the rest)."""
        d = cls()
        d.ups = ups
        d.proxy = await InProcess(cfg).start()
        d.admin = AdminServer(cfg, d.proxy.control)
        await d.admin.start()
        return d

    @property
    def control(self) -> Any:
        assert self.proxy is not None
        return self.proxy.control

    @property
    def url(self) -> str:
        assert self.admin is not None
        return f"http://127.0.0.1:{self.admin.port}"

    @property
    def proxy_url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.port}"

    def headers(self) -> dict[str, str]:
        assert self.admin is not None
        return {"Authorization": f"Bearer {self.admin.token}"} if self.admin.token else {}

    async def send(self, plan: list[tuple[str, str, bytes | None]]) -> None:
        sem = asyncio.Semaphore(16)
        async with aiohttp.ClientSession() as s:
            async def one(method: str, path: str, body: bytes | None) -> None:
                async with sem:
                    headers = {"Authorization": f"Bearer {CLIENT_SECRET}"}
                    if body:
                        headers["Content-Type"] = "application/json"
                    async with s.request(method, self.proxy_url + path, data=body,
                                         headers=headers) as r:
                        await r.read()
            await asyncio.gather(*(one(*p) for p in plan))
        self.sent += len(plan)

    async def settle(self, timeout: float = 20.0) -> None:
        """Wait until every request sent has its final outcome and the store has it all."""
        c = self.control
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while c.stats.final_total() < self.sent or c.stage.queue.qsize() or \
                c.stats.total("mirrored") > c.stats.total("compared") + \
                c.stats.total("candidate_error") + c.stats.total("candidate_timeout") + \
                c.stats.dropped_after_mirror():
            assert loop.time() < deadline, c.stats.by_outcome()
            await asyncio.sleep(0.02)
        await loop.run_in_executor(None, c.writer.flush, 10.0)

    async def get(self, path: str, *, headers: dict[str, str] | None = None,
                  expect: int = 200) -> Any:
        async with aiohttp.ClientSession() as s:
            async with s.get(self.url + path, headers=self.headers() if headers is None
                             else headers) as r:
                text = await r.text()
                assert r.status == expect, (path, r.status, text)
                return json.loads(text) if r.content_type == "application/json" else text

    async def put(self, path: str, body: Any, *, raw: bytes | None = None,
                  expect: int = 200) -> Any:
        async with aiohttp.ClientSession() as s:
            data = raw if raw is not None else json.dumps(body).encode()
            async with s.put(self.url + path, data=data, headers={
                    **self.headers(), "Content-Type": "application/json"}) as r:
                out = await r.json()
                assert r.status == expect, (path, r.status, out)
                return out

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
        if self.proxy is not None:
            await self.proxy.stop()
        for u in self.ups.values():
            await u.stop()


def ep(name: str) -> str:
    """An endpoint name as a path segment."""
    return quote(name, safe="")


# a demo fed with traffic once, shared by the read-only API tests of this module
@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def demo() -> Any:
    d = await Demo.start()
    await d.send(demo_plan(400))
    await d.settle()
    yield d
    await d.stop()


shared = pytest.mark.asyncio(loop_scope="module")


# ---------------------------------------------------------------- access rules


@shared
async def test_token_required_everywhere_but_healthz(demo: Demo) -> None:
    wrong = {"Authorization": "Bearer nope"}
    for path in ("/readyz", "/metrics", "/api/v1/outcomes", "/api/v1/endpoints",
                 "/api/v1/config", "/api/v1/mirror", "/api/v1/no-such-thing"):
        for headers in ({}, wrong, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            body = await demo.get(path, headers=headers, expect=401)
            assert "unauthorized" in body["error"]
    async with aiohttp.ClientSession() as s:
        async with s.get(demo.url + "/metrics") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        async with s.put(demo.url + "/api/v1/mirror", json={"enabled": False}) as r:
            assert r.status == 401
    assert demo.control.mirror_state[0] is True
    assert (await demo.get("/healthz", headers={}))["status"] == "ok"
    for path in ("/readyz", "/metrics", "/api/v1/outcomes"):
        await demo.get(path)
    # the UI shell is static (no data) and loads without the token
    html = await demo.get("/", headers={})
    assert "<title>shadowproxy</title>" in html and TOKEN not in html


def _admin(cfg: Any) -> AdminServer:
    """An AdminServer over a real (never started) control stage."""
    control = InProcess(cfg).control
    try:
        return AdminServer(cfg, control)
    finally:
        control.writer.close(2.0)
        control.store.close()


async def test_refuses_non_loopback_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    for listen in ("0.0.0.0:0", "10.1.2.3:8081", "[::]:8081"):
        # refused when the config is loaded (`shadowproxy validate` says so too) ...
        with pytest.raises(ConfigError) as info:
            config("http://127.0.0.1:9", admin={"listen": listen})
        assert info.value.key == "admin.listen" and "token" in str(info.value)
        # ... and by the admin server, whatever config it is given
        cfg = config("http://127.0.0.1:9")
        cfg = cfg.replace(admin=dataclasses.replace(cfg.admin, listen=listen))
        with pytest.raises(ConfigError) as info:
            _admin(cfg)
        assert info.value.key == "admin.listen"
        assert "admin.listen" in str(info.value) and "token" in str(info.value)
    # with a token, or a token from the environment, it is allowed
    cfg = config("http://127.0.0.1:9", admin={"listen": "0.0.0.0:0", "token": "x" * 16})
    server = _admin(cfg)
    assert server.token == "x" * 16
    # a reload cannot take the token away from a non-loopback listener
    server.reload(cfg.replace(admin=dataclasses.replace(cfg.admin, token=None)))
    assert server.token == "x" * 16
    server.reload(config("http://127.0.0.1:9", admin={"listen": "0.0.0.0:0", "token": "y" * 16}))
    assert server.token == "y" * 16
    monkeypatch.setenv("SP_ADMIN_TOKEN", "from-the-env-123")
    cfg = config("http://127.0.0.1:9", admin={"listen": "0.0.0.0:0",
                                                "token_env": "SP_ADMIN_TOKEN"})
    assert _admin(cfg).token == "from-the-env-123"
    # loopback needs none
    for listen in ("127.0.0.1:0", "localhost:0", "[::1]:0"):
        cfg = config("http://127.0.0.1:9", admin={"listen": listen})
        assert _admin(cfg).token is None


async def test_without_token_only_loopback_hosts_are_answered() -> None:
    d = await Demo.start(token=None)
    try:
        assert (await d.get("/api/v1/mirror"))["enabled"] is True
        for host in ("localhost", f"localhost:{d.admin.port}", "[::1]:8081"):   # type: ignore
            await d.get("/api/v1/mirror", headers={"Host": host})
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1
        body = await d.get("/api/v1/mirror", headers={"Host": "evil.example:8081"}, expect=403)
        assert "loopback" in body["error"]
        await d.get("/healthz", headers={"Host": "evil.example"})
        assert (await d.get("/healthz"))["auth"] is False
    finally:
        await d.stop()


# ---------------------------------------------------------------- health


@shared
async def test_healthz_and_readyz(demo: Demo) -> None:
    assert await demo.get("/healthz", headers={}) == {"status": "ok", "auth": True}
    ready = await demo.get("/readyz")
    assert ready["status"] == "ready" and ready["reasons"] == []
    assert ready["checks"]["primary"]["ok"] is True
    assert ready["checks"]["primary"]["target"] == f"127.0.0.1:{demo.ups['primary'].port}"
    assert ready["checks"]["store"]["acknowledged"] >= 300


async def test_readyz_reports_primary_down_and_store_failing() -> None:
    d = await Demo.start()
    try:
        await d.send(demo_plan(20))
        await d.settle()
        await d.get("/readyz")
        # the store starts failing: cap the in-memory database at its current size
        # (max_page_count cannot go below the current size: this caps it there)
        assert d.control.store.limit_pages(1) > 1
        await d.send(demo_plan(200, seed=3))
        await d.settle()
        assert d.control.writer.failed > 0
        # the shadow's store failing never takes the proxy out of service: degraded
        body = await d.get("/readyz", expect=200)
        assert body["status"] == "degraded" and body["reasons"] == []
        assert any("store writes are failing" in r for r in body["degraded"]), body
        assert body["checks"]["store"]["ok"] is False
        assert body["checks"]["primary"]["ok"] is True
        # the primary goes away
        port = d.ups["primary"].port
        await d.ups["primary"].stop()
        body = await d.get("/readyz", expect=503)
        assert any(f"primary 127.0.0.1:{port}" in r for r in body["reasons"]), body
        assert body["checks"]["primary"]["ok"] is False
        # healthz stays fine: the process serves
        await d.get("/healthz")
    finally:
        d.ups.pop("primary")
        await d.stop()


# ---------------------------------------------------------------- metrics


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(fam: Any, name: str | None = None) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples
            if name is None or s.name == name}


@shared
async def test_metrics_after_traffic(demo: Demo) -> None:
    text = await demo.get("/metrics")
    fams = _families(text)
    c = demo.control
    # the names follow the conventions: counters end in _total, durations in _seconds
    for name in ("shadowproxy_requests", "shadowproxy_mirrored", "shadowproxy_dropped",
                 "shadowproxy_primary_errors", "shadowproxy_verdicts",
                 "shadowproxy_store_results", "shadowproxy_store_retries"):
        assert fams[name].type == "counter", name
        assert f"# TYPE {name}_total counter" in text or f"# TYPE {name} counter" in text
    assert fams["shadowproxy_upstream_latency_seconds"].type == "histogram"
    for g in ("shadowproxy_mirror_queue_depth", "shadowproxy_compare_queue_depth",
              "shadowproxy_store_write_lag_seconds", "shadowproxy_store_queue_depth",
              "shadowproxy_mirror_enabled", "shadowproxy_mirror_sample_ratio",
              "shadowproxy_store_down"):
        assert fams[g].type == "gauge", g
        assert len(fams[g].samples) == 1
    assert fams["shadowproxy_store_down"].samples[0].value == 0     # the store is up

    # requests: one series per (endpoint, outcome, reason); they add up to what was sent
    req = _samples(fams["shadowproxy_requests"], "shadowproxy_requests_total")
    assert sum(req.values()) == demo.sent == 400
    for (outcome, reason, endpoint), n in c.stats.counts.items():
        key = (("endpoint", endpoint), ("outcome", outcome), ("reason", reason))
        if outcome in ("not_eligible", "sampled_out", "dropped", "compared",
                       "candidate_error", "candidate_timeout"):
            assert req[key] == n
    assert req[(("endpoint", "user"), ("outcome", "compared"), ("reason", ""))] > 200
    assert req[(("endpoint", "/api/orders"), ("outcome", "not_eligible"),
                ("reason", "method"))] > 0
    assert req[(("endpoint", "/admin/**"), ("outcome", "not_eligible"),
                ("reason", "route"))] > 0
    # mirrored per endpoint
    mirrored = _samples(fams["shadowproxy_mirrored"], "shadowproxy_mirrored_total")
    assert sum(mirrored.values()) == c.stats.total("mirrored")
    assert mirrored[(("endpoint", "user"),)] == c.stats.total("compared") - sum(
        n for (o, _r, e), n in c.stats.counts.items() if o == "compared" and e != "user")
    # verdicts match what the store recorded
    verdicts = _samples(fams["shadowproxy_verdicts"], "shadowproxy_verdicts_total")
    stored = c.store.verdict_counts()
    for v in ("match", "diff", "noise", "error"):
        assert sum(n for k, n in verdicts.items() if ("verdict", v) in k) == stored[v], v
    assert verdicts[(("endpoint", "user"), ("verdict", "diff"))] >= 20
    # latency: one observation per complete response of each upstream
    lat = fams["shadowproxy_upstream_latency_seconds"]
    counts = _samples(lat, "shadowproxy_upstream_latency_seconds_count")
    compared_user = req[(("endpoint", "user"), ("outcome", "compared"), ("reason", ""))]
    for upstream in ("primary", "candidate", "secondary"):
        assert counts[(("endpoint", "user"), ("upstream", upstream))] == compared_user
    buckets = {dict(s.labels)["le"]: s.value for s in lat.samples
               if s.name.endswith("_bucket") and s.labels["upstream"] == "candidate"
               and s.labels["endpoint"] == "products"}
    assert buckets["+Inf"] == counts[(("endpoint", "products"), ("upstream", "candidate"))]
    assert buckets["0.025"] < buckets["+Inf"]          # the candidate's +15 ms shift
    values = [buckets[k] for k in sorted(buckets, key=lambda k: float(k))]
    assert values == sorted(values)                       # cumulative
    sums = _samples(lat, "shadowproxy_upstream_latency_seconds_sum")
    assert 0 < sums[(("endpoint", "user"), ("upstream", "primary"))] < compared_user
    # gauges after the traffic settled
    one = {n: fams[n].samples[0].value for n in fams if fams[n].type == "gauge"}
    assert one["shadowproxy_mirror_queue_depth"] == 0
    assert one["shadowproxy_compare_queue_depth"] == 0
    assert one["shadowproxy_store_queue_depth"] == 0
    assert one["shadowproxy_store_write_lag_seconds"] == 0
    assert one["shadowproxy_mirror_enabled"] == 1 and one["shadowproxy_mirror_sample_ratio"] == 1
    stored_total = _samples(fams["shadowproxy_store_results"], "shadowproxy_store_results_total")
    assert stored_total[(("status", "written"),)] == c.writer.acknowledged > 300
    assert stored_total[(("status", "failed"),)] == 0
    # OpenMetrics when asked
    async with aiohttp.ClientSession() as s:
        async with s.get(demo.url + "/metrics", headers={
                **demo.headers(), "Accept": "application/openmetrics-text; version=1.0.0"}) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await r.text()).rstrip().endswith("# EOF")


def _failing_primary() -> web.Application:
    async def boom(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()           # connection reset before any response
        return web.Response()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/boom", boom)
    app.router.add_get("/ok", ok)
    return app


async def test_error_metrics() -> None:
    """primary_errors_total{kind} and dropped_total{reason} after a primary failure."""
    d = await Demo.start(primary_app=_failing_primary(), secondary=False)
    try:
        await d.send([("GET", "/boom", None)] * 3 + [("GET", "/ok", None)] * 2)
        await d.settle()
        fams = _families(await d.get("/metrics"))
        perr = _samples(fams["shadowproxy_primary_errors"], "shadowproxy_primary_errors_total")
        assert sum(perr.values()) == 3, perr
        dropped = _samples(fams["shadowproxy_dropped"], "shadowproxy_dropped_total")
        assert dropped == {(("reason", "primary_error"),): 3}
        req = _samples(fams["shadowproxy_requests"], "shadowproxy_requests_total")
        assert req[(("endpoint", "/boom"), ("outcome", "dropped"),
                    ("reason", "primary_error"))] == 3
        assert sum(req.values()) == 5
    finally:
        await d.stop()


# ---------------------------------------------------------------- the JSON API


@shared
async def test_api_endpoints(demo: Demo) -> None:
    body = await demo.get("/api/v1/endpoints?since=1h")
    eps = {e["endpoint"]: e for e in body["endpoints"]}
    assert {"user", "products", "search", "/health"} <= set(eps)
    user = eps["user"]
    assert user["exchanges"] == demo.control.stats.total("compared") - sum(
        n for (o, _r, e), n in demo.control.stats.counts.items() if o == "compared" and e != "user")
    assert user["diffs"] >= 20 and user["diff_rate"] == pytest.approx(
        user["diffs"] / user["exchanges"])
    assert user["noise"] + user["diffs"] + user["matches"] + user["errors"] == user["exchanges"]
    assert [f["field"] for f in user["top_fields"]] == ["$.plan"]
    lat = user["latency"]
    assert lat["samples"] == user["exchanges"]
    assert 0 < lat["primary"]["p50"] <= lat["primary"]["p99"]
    assert 0 < lat["candidate"]["p50"] <= lat["candidate"]["p99"]
    # the secondary's beside it: what the latency checks judge the candidate against
    assert 0.9 * user["exchanges"] <= lat["secondary_samples"] <= user["exchanges"]
    assert 0 < lat["secondary"]["p50"] <= lat["secondary"]["p99"]
    assert lat["baseline"] == "secondary"
    assert sum(p[1] for p in user["series"]) == user["exchanges"]
    assert user["counters"]["mirrored"] == user["exchanges"]
    # the candidate's latency shift on products
    prod = eps["products"]["latency"]
    assert prod["candidate"]["p50"] > prod["primary"]["p50"] + 0.005
    # endpoints with traffic but nothing compared are listed too, with why
    assert eps["/api/orders"]["exchanges"] == 0
    assert eps["/api/orders"]["counters"]["not_eligible{method}"] > 0
    # sorted by diff rate: the regression first
    assert body["endpoints"][0]["endpoint"] == "user"
    # one endpoint, percent-encoded
    one = await demo.get("/api/v1/endpoints/user?since=all")
    assert one["exchanges"] == user["exchanges"] and one["window"]["since"] is None
    health = await demo.get(f"/api/v1/endpoints/{ep('/health')}")
    assert health["endpoint"] == "/health" and health["exchanges"] > 0
    await demo.get(f"/api/v1/endpoints/{ep('/no/such')}", expect=404)
    # windows
    future = time.time() + 3600
    empty = await demo.get(f"/api/v1/endpoints?from={future}")
    assert all(e["exchanges"] == 0 for e in empty["endpoints"])
    iso = await demo.get("/api/v1/endpoints?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z")
    assert {e["endpoint"]: e["exchanges"] for e in iso["endpoints"]}["user"] == user["exchanges"]
    for bad in ("since=soon", "from=yesterday", "since=1h&from=0",
                "from=100&to=50"):
        err = await demo.get(f"/api/v1/endpoints?{bad}", expect=400)
        assert err["error"]


@shared
async def test_api_fields(demo: Demo) -> None:
    body = await demo.get(f"/api/v1/endpoints/{ep('user')}/fields?since=24h")
    assert body["endpoint"] == "user" and body["exchanges"] > 200
    fields = {f["field"]: f for f in body["fields"]}
    plan = fields["$.plan"]
    assert plan["noise"] is False and plan["kinds"] == {"changed": plan["count"]}
    assert plan["exchanges"] >= 20
    assert plan["diff_rate"] == pytest.approx(plan["exchanges"] / body["exchanges"])
    assert plan["noise_rate"] == 0 and plan["section"] == "body"
    ev = plan["evidence"]
    assert ev["n"] == body["exchanges"] and ev["r"] == plan["exchanges"] and ev["s"] == 0
    assert plan["example_id"]
    rid = fields["$.meta.request_id"]
    assert rid["noise"] is True and rid["diff_rate"] == 1.0
    assert rid["evidence"]["s"] == rid["evidence"]["n"] and rid["evidence"]["noise"] is True
    assert rid["evidence"]["provisional"] is False and rid["noise_rate"] > 0.5
    # real differences first
    assert body["fields"][0]["field"] == "$.plan"
    # a name with slashes and braces, percent-encoded; unknown endpoints have no fields
    health = await demo.get(f"/api/v1/endpoints/{ep('/health')}/fields")
    assert health["endpoint"] == "/health"
    none = await demo.get(f"/api/v1/endpoints/{ep('/api/users/{id}')}/fields")
    assert none["fields"] == [] and none["exchanges"] == 0
    await demo.get("/api/v1/endpoints/user/fields/extra", expect=404)


@shared
async def test_api_exchanges(demo: Demo) -> None:
    rows = (await demo.get("/api/v1/exchanges?endpoint=user&verdict=diff&limit=500"))["exchanges"]
    assert len(rows) >= 20
    assert all(r["endpoint"] == "user" and r["verdict"] == "diff" for r in rows)
    ids = {r["id"] for r in rows}
    by_field = (await demo.get(f"/api/v1/exchanges?endpoint=user&field={quote('$.plan')}"
                               "&limit=500"))["exchanges"]
    assert {r["id"] for r in by_field} == ids
    page = (await demo.get("/api/v1/exchanges?limit=5&offset=5"))["exchanges"]
    assert len(page) == 5
    times = [r["time"] for r in (await demo.get("/api/v1/exchanges?limit=50"))["exchanges"]]
    assert times == sorted(times, reverse=True)
    for bad in ("limit=0", "limit=100000", "limit=x", "verdict=weird", "offset=-1"):
        assert (await demo.get(f"/api/v1/exchanges?{bad}", expect=400))["error"]


@shared
async def test_api_exchange_detail_is_redacted(demo: Demo) -> None:
    fields = await demo.get("/api/v1/endpoints/user/fields")
    plan = next(f for f in fields["fields"] if f["field"] == "$.plan")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{demo.url}/api/v1/exchanges/{plan['example_id']}",
                         headers=demo.headers()) as r:
            raw = await r.text()
    assert CLIENT_SECRET not in raw and TOKEN not in raw
    x = json.loads(raw)
    assert x["sampled"] is True and x["endpoint"] == "user" and x["verdict"] == "diff"
    diff = next(d for d in x["differences"] if d["path"] == "$.plan")
    assert diff["b"] == "free" and diff["a"] != "free" and diff["noise"] is False
    primary, candidate = json.loads(x["primary"]["body"]), json.loads(x["candidate"]["body"])
    assert primary["plan"] == diff["a"] and candidate["plan"] == "free"
    assert x["secondary"] is not None and json.loads(x["secondary"]["body"])["plan"] == diff["a"]
    assert {d["path"] for d in x["secondary_differences"]} >= {"$.meta.request_id"}
    # the deepdiff detail names the field and both values
    assert "plan" in x["detail"] and "free" in x["detail"] and diff["a"] in x["detail"]
    auth = [v for k, v in x["request"]["headers"] if k.lower() == "authorization"]
    assert auth and CLIENT_SECRET not in auth[0]
    await demo.get("/api/v1/exchanges/no-such-id", expect=404)


@shared
async def test_api_noise(demo: Demo) -> None:
    body = await demo.get("/api/v1/noise")
    rows = {(n["endpoint"], n["field"]): n for n in body["noise"]}
    for field in ("$.meta.request_id", "$.meta.generated_at"):
        n = rows[("user", field)]
        assert n["noise"] is True and n["s"] > 0 and n["n"] >= 30 and n["provisional"] is False
        assert 0 <= n["p_value"] <= 1
    assert ("user", "$.plan") not in rows         # the secondary never differed on it
    only = await demo.get("/api/v1/noise?endpoint=products")
    assert only["noise"] and {n["endpoint"] for n in only["noise"]} == {"products"}
    assert body["min_samples"] == 30


@shared
async def test_api_outcomes_and_status(demo: Demo) -> None:
    out = await demo.get("/api/v1/outcomes")
    assert out["requests"] == demo.sent and out["stored"] == demo.control.writer.acknowledged
    assert out["outcomes"]["compared"] == demo.control.stats.total("compared")
    windowed = await demo.get("/api/v1/outcomes?since=1h")
    assert windowed["window"]["since"] is not None
    st = await demo.get("/api/v1/status")
    assert st["requests"] == demo.sent and st["mirror"]["effective"] is True
    assert st["upstreams"]["secondary"] == demo.ups["secondary"].url
    assert st["queues"] == {"mirror": 0, "compare": 0, "store": 0}


async def test_config_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_REDACT_KEY", "hmac-key-from-the-env-77")
    monkeypatch.setenv("SP_UPSTREAM_TOKEN", "upstream-token-from-env-88")
    monkeypatch.setenv("SP_ADMIN_TOKEN", "admin-token-from-env-99")
    d = await Demo.start(
        token=None,
        admin={"listen": "127.0.0.1:0", "token_env": "SP_ADMIN_TOKEN"},
        redact={"key_env": "SP_REDACT_KEY"},
        mirror={"add_headers": {"X-Shadow-Request": "1",
                                "Authorization": "Bearer upstream-token-from-env-88",
                                "X-Api-Key": "k-12345678", "X-Note": "upstream-token-from-env-88"}},
    )
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(d.url + "/api/v1/config", headers={
                    "Authorization": "Bearer admin-token-from-env-99"}) as r:
                assert r.status == 200
                raw = await r.text()
        for secret in ("hmac-key-from-the-env-77", "upstream-token-from-env-88",
                       "admin-token-from-env-99", "k-12345678"):
            assert secret not in raw
        cfg = json.loads(raw)
        assert cfg["admin"]["token_env"] == "SP_ADMIN_TOKEN"      # the name is not secret
        assert cfg["redact"]["key_env"] == "SP_REDACT_KEY"
        headers = cfg["mirror"]["add_headers"]
        assert headers == {"X-Shadow-Request": "1", "Authorization": "<redacted>",
                           "X-Api-Key": "<redacted>", "X-Note": "<redacted>"}
        assert cfg["upstreams"]["primary"] == d.ups["primary"].url
        assert cfg["routes"][0] == {**cfg["routes"][0], "name": "user",
                                    "match": "/api/users/{id}"}
    finally:
        await d.stop()
    # the token itself, user info in URLs, secret-named keys
    cfg = config("http://svc:pa55word@127.0.0.1:9", "https://bob@cand.example:8443",
                 admin={"listen": "127.0.0.1:0", "token": "plain-admin-token"},
                 store={"url": "sqlite:///./x.db"})
    doc = redact_config(cfg, env={})
    text = json.dumps(doc)
    assert "plain-admin-token" not in text and "pa55word" not in text and "bob" not in text
    assert doc["admin"]["token"] == "<redacted>"
    assert doc["upstreams"]["primary"] == "http://<redacted>@127.0.0.1:9"
    assert doc["upstreams"]["candidate"] == "https://<redacted>@cand.example:8443"
    assert doc["store"]["url"] == "sqlite:///./x.db"


def test_parse_window() -> None:
    assert parse_window({}, now=1000.0) == (None, None)
    assert parse_window({"since": "all"}, now=1000.0) == (None, None)
    assert parse_window({"since": "15m"}, now=1000.0) == (100.0, None)
    assert parse_window({"from": "10", "to": "20.5"}) == (10.0, 20.5)
    assert parse_window({"from": "1970-01-01T00:01:00Z"}) == (60.0, None)
    assert parse_window({"from": "1970-01-01T00:01:00"}) == (60.0, None)   # UTC when naive


# ---------------------------------------------------------------- the mirror switch


async def test_mirror_switch_takes_effect() -> None:
    d = await Demo.start(secondary=False)
    try:
        assert await d.get("/api/v1/mirror") == {"enabled": True, "sample": 1.0,
                                                  "candidate_configured": True,
                                                  "effective": True}
        await d.send([("GET", "/api/users/1", None)] * 5)
        await d.settle()
        assert d.control.stats.total("compared") == 5
        # off: new requests are not eligible, reason disabled
        got = await d.put("/api/v1/mirror", {"enabled": False})
        assert got["enabled"] is False and got["effective"] is False
        await d.send([("GET", "/api/users/2", None)] * 7)
        await d.settle()
        assert d.control.stats.total("not_eligible", "disabled") == 7
        assert d.control.stats.total("compared") == 5
        fams = _families(await d.get("/metrics"))
        assert fams["shadowproxy_mirror_enabled"].samples[0].value == 0
        req = _samples(fams["shadowproxy_requests"], "shadowproxy_requests_total")
        assert req[(("endpoint", "user"), ("outcome", "not_eligible"), ("reason", "disabled"))] == 7
        # on again with sample 0: eligible but sampled out
        got = await d.put("/api/v1/mirror", {"enabled": True, "sample": 0})
        assert got == {"enabled": True, "sample": 0.0, "candidate_configured": True,
                       "effective": True}
        await d.send([("GET", "/api/users/3", None)] * 4)
        await d.settle()
        assert d.control.stats.total("sampled_out") == 4
        # the sample alone
        assert (await d.put("/api/v1/mirror", {"sample": 1}))["sample"] == 1.0
        await d.send([("GET", "/api/users/4", None)] * 3)
        await d.settle()
        assert d.control.stats.total("compared") == 8
        # invalid input: 400 with a clear message, state unchanged
        for body, words in (({"enabled": "no"}, "enabled: expected true or false"),
                            ({"sample": 1.5}, "sample: expected a number between 0 and 1"),
                            ({"sample": -0.1}, "between 0 and 1"),
                            ({"sample": True}, "between 0 and 1"),
                            ({"sample": "0.5"}, "between 0 and 1"),
                            ({"rate": 0.5}, "unknown key(s) rate"),
                            ({}, "give enabled and/or sample"),
                            ([True], "expected a JSON object")):
            err = await d.put("/api/v1/mirror", body, expect=400)
            assert words in err["error"], (body, err)
        err = await d.put("/api/v1/mirror", None, raw=b"{nope", expect=400)
        assert "not valid JSON" in err["error"]
        assert d.control.mirror_state == (True, 1.0)
        # the method is not allowed on other routes
        async with aiohttp.ClientSession() as s:
            async with s.post(d.url + "/api/v1/mirror", headers=d.headers(), json={}) as r:
                assert r.status == 405 and "error" in await r.json()
    finally:
        await d.stop()


async def test_mirror_cannot_be_enabled_without_candidate() -> None:
    d = await Demo.start(candidate=False, secondary=False)
    try:
        state = await d.get("/api/v1/mirror")
        assert state["candidate_configured"] is False and state["effective"] is False
        err = await d.put("/api/v1/mirror", {"enabled": True}, expect=409)
        assert "no upstreams.candidate" in err["error"]
        assert (await d.put("/api/v1/mirror", {"enabled": False}))["enabled"] is False
    finally:
        await d.stop()


# ---------------------------------------------------------------- the UI files


@shared
async def test_ui_files_are_served_with_a_strict_policy(demo: Demo) -> None:
    async with aiohttp.ClientSession() as s:
        for path, ctype in (("/", "text/html"), ("/ui/app.js", "text/javascript"),
                            ("/ui/app.css", "text/css")):
            async with s.get(demo.url + path) as r:
                assert r.status == 200 and r.content_type == ctype, path
                csp = r.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src 'self'" in csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                # no external resources (the SVG namespace is a name, not a fetch)
                body = (await r.text()).replace('"http://www.w3.org/2000/svg"', "")
                assert "http://" not in body and "https://" not in body, path
                assert "//" + "cdn" not in body and "@import" not in body, path
        for path in ("/ui/index.html", "/ui/../admin.py", "/ui/nope.js"):
            async with s.get(demo.url + path) as r:
                assert r.status in (401, 404), path
        async with s.get(demo.url + "/api/v1/outcomes", headers=demo.headers()) as r:
            assert r.headers["Cache-Control"] == "no-store"


async def test_file_store_is_read_through_its_own_connection(tmp_path: Any) -> None:
    d = await Demo.start(store={"url": f"sqlite:///{tmp_path}/results.db"})
    try:
        await d.send(demo_plan(60))
        await d.settle()
        eps = {e["endpoint"]: e for e in (await d.get("/api/v1/endpoints"))["endpoints"]}
        assert eps["user"]["exchanges"] > 20
        assert d.admin is not None and d.admin._reader is not d.control.store
        assert d.admin._reader.readonly is True
        rows = (await d.get("/api/v1/exchanges?endpoint=user&limit=1"))["exchanges"]
        assert (await d.get(f"/api/v1/exchanges/{rows[0]['id']}"))["endpoint"] == "user"
        assert (await d.get("/readyz"))["checks"]["store"]["failed"] == 0
    finally:
        await d.stop()
