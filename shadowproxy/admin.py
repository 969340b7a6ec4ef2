"""The admin server: health, Prometheus metrics and the JSON API, on its own listener.

It runs in the control process, so it sees the totals of every worker.
``admin.token`` (or ``admin.token_env``) is a bearer token required on
everything but ``/healthz``; the server refuses to start on a non-loopback
address without one.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .config import Config, split_address
from .errors import ConfigError

if TYPE_CHECKING:
    from .runtime import Control

log = logging.getLogger("shadowproxy.admin")

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def admin_token(cfg: Config) -> str | None:
    if cfg.admin.token:
        return cfg.admin.token
    if cfg.admin.token_env:
        return os.environ.get(cfg.admin.token_env) or None
    return None


class _Collector:
    """Exposes the control process's counters (totals of all workers)."""

    def __init__(self, control: "Control") -> None:
        self.control = control

    def collect(self) -> Any:
        stats = self.control.stats
        req = CounterMetricFamily("shadowproxy_requests", "Requests by final shadow outcome",
                                  labels=["endpoint", "outcome", "reason"])
        mirrored = CounterMetricFamily("shadowproxy_mirrored", "Requests accepted by the mirror",
                                       labels=["endpoint"])
        dropped = CounterMetricFamily("shadowproxy_dropped", "Shadows dropped, by reason",
                                      labels=["reason"])
        perr = CounterMetricFamily("shadowproxy_primary_errors",
                                   "Primary failures answered 502/504", labels=["kind"])
        drops: dict[str, int] = {}
        for (outcome, reason, endpoint), n in list(stats.counts.items()):
            if outcome == "mirrored":
                mirrored.add_metric([endpoint], n)
            elif outcome == "primary_error":
                perr.add_metric([reason], n)
            elif outcome in ("not_eligible", "sampled_out", "dropped", "compared",
                             "candidate_error", "candidate_timeout"):
                req.add_metric([endpoint, outcome, reason], n)
                if outcome == "dropped":
                    drops[reason] = drops.get(reason, 0) + n
        for reason, n in drops.items():
            dropped.add_metric([reason], n)
        yield req
        yield mirrored
        yield dropped
        yield perr
        depth = GaugeMetricFamily("shadowproxy_mirror_queue_depth",
                                  "Shadows waiting in mirror queues (all workers)")
        depth.add_metric([], sum(g.get("mirror_queue_depth", 0)
                                 for g in self.control.gauges.values()))
        yield depth
        cq = GaugeMetricFamily("shadowproxy_compare_queue_depth",
                               "Exchanges waiting for the comparator")
        cq.add_metric([], self.control.stage.queue.qsize())
        yield cq
        lag = GaugeMetricFamily("shadowproxy_store_write_lag_seconds",
                                "Age of the oldest result waiting for the store writer")
        lag.add_metric([], float(getattr(self.control.writer, "lag", 0.0)))
        yield lag


class AdminServer:
    def __init__(self, cfg: Config, control: "Control") -> None:
        self.cfg = cfg
        self.control = control
        host, _port = split_address(cfg.admin.listen)
        self.token = admin_token(cfg)
        if not _is_loopback(host) and not self.token:
            raise ConfigError("admin listens beyond loopback without a token; set admin.token "
                              "or admin.token_env", key="admin.listen", file=cfg.source)
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(control))  # type: ignore[arg-type]
        self.app = web.Application(middlewares=[self._auth])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/api/v1/outcomes", self.outcomes)
        self._runner: web.AppRunner | None = None
        self.address = cfg.admin.listen

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token and request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return web.json_response({"error": "unauthorized"}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def start(self) -> None:
        if not self.cfg.admin.enabled:
            return
        host, port = split_address(self.cfg.admin.listen)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[union-attr]
            h, p = server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
            self.address = f"{h}:{p}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def outcomes(self, request: web.Request) -> web.Response:
        stats = self.control.stats
        body = {"outcomes": stats.by_outcome(), "requests": stats.final_total(),
                "mirrored": stats.total("mirrored"), "stored": self.control.writer.acknowledged}
        return web.Response(body=orjson.dumps(body), content_type="application/json")
