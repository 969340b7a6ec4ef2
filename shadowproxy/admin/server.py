"""The admin server: health, Prometheus metrics, the JSON API and the web UI, on its own
listener (``admin.listen``, default ``127.0.0.1:8081``).

It runs in the control process, so it sees the totals of every worker.

Access
    ``admin.token`` (or ``admin.token_env``) is a bearer token
    (``Authorization: Bearer <token>``) required on everything but ``/healthz`` and
    the UI's static shell (``/`` and ``/ui/*``: no data; the page asks for the token
    and sends it on every API call). The server refuses to start on a non-loopback
    address without one. Without a token (loopback only) requests must name a
    loopback host in ``Host``, so a web page cannot reach the API by DNS rebinding.

Routes
    ``GET /healthz``      liveness: 200 while the process serves.
    ``GET /readyz``       200 when the primary accepts a TCP connection, else 503 with
                          the reasons; a failing store (writes failing, or a store
                          that cannot be opened yet) is ``"status": "degraded"``
                          with its reason under ``degraded``, still 200: the shadow's
                          store never takes the proxy out of service.
    ``GET /metrics``      Prometheus metrics (see :mod:`shadowproxy.admin.metrics`).
    ``GET /``             the web UI (``/ui/app.js``, ``/ui/app.css``).
    ``/api/v1/...``       JSON (see :class:`AdminServer` handlers): ``status``,
                          ``outcomes``, ``endpoints``, ``endpoints/{endpoint}``,
                          ``endpoints/{endpoint}/fields``, ``exchanges``,
                          ``exchanges/{id}``, ``noise``, ``config``, ``mirror``
                          (GET/PUT). Endpoint names in paths are percent-encoded
                          (they contain ``/`` and ``{}``).

Time windows (``endpoints``, ``fields``, ``exchanges``): ``?since=15m`` (a duration
back from now; ``all`` for everything) or ``?from=&to=`` (unix seconds or ISO 8601).

Store reads run in a thread (``run_in_executor``) so the comparator's loop never
waits for SQLite; a file store is read through its own read-only connection.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler

from ..config import Config, is_loopback, split_address
from ..errors import ConfigError, StoreError
from .api import ApiHandlers
from .health import HealthHandlers, StoreHealth
from .metrics import Metrics
from .params import API, ApiError, _json
from .ui import UI_CSP, UiHandlers, _load_ui

if TYPE_CHECKING:
    from ..control.stages import Control

log = logging.getLogger("shadowproxy.admin")


# ---------------------------------------------------------------- helpers


def _host_name(host: str) -> str:
    """The host part of a Host header (``[::1]:8081`` → ``::1``)."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def admin_token(cfg: Config) -> str | None:
    if cfg.admin.token:
        return cfg.admin.token
    if cfg.admin.token_env:
        return os.environ.get(cfg.admin.token_env) or None
    return None


# ---------------------------------------------------------------- the server


class AdminServer(ApiHandlers, HealthHandlers, UiHandlers):
    """The admin listener: the aiohttp app with its routes, the auth and error
    middlewares and the security headers; the handlers come from its bases
    (:class:`~shadowproxy.admin.api.ApiHandlers`,
    :class:`~shadowproxy.admin.health.HealthHandlers`,
    :class:`~shadowproxy.admin.ui.UiHandlers`)."""

    def __init__(self, cfg: Config, control: Control) -> None:
        self.cfg = cfg
        self.control = control
        host, _port = split_address(cfg.admin.listen)
        self.token = admin_token(cfg)
        if not is_loopback(host) and not self.token:
            raise ConfigError("admin listens beyond loopback without a token; set admin.token "
                              "or admin.token_env", key="admin.listen", file=cfg.source)
        self.metrics = Metrics(control)
        self.metrics.attach()
        self.health = StoreHealth(control.writer)
        self.started = time.time()
        self._init_reader()
        self._ui = _load_ui()
        self.app = web.Application(middlewares=[self._errors, self._auth],
                                   client_max_size=64 * 1024)
        self.app.on_response_prepare.append(self._security_headers)
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_handler)
        r.add_get("/", self.ui_index)
        r.add_get("/ui/{name}", self.ui_file)
        r.add_get(f"{API}/status", self.status)
        r.add_get(f"{API}/outcomes", self.outcomes)
        r.add_get(f"{API}/endpoints", self.endpoints)
        r.add_get(f"{API}/endpoints/{{rest:.+}}", self.endpoint_dispatch)
        r.add_get(f"{API}/exchanges", self.exchanges)
        r.add_get(f"{API}/exchanges/{{id}}", self.exchange)
        r.add_get(f"{API}/noise", self.noise)
        r.add_get(f"{API}/config", self.config)
        r.add_get(f"{API}/mirror", self.get_mirror)
        r.add_put(f"{API}/mirror", self.put_mirror)
        self._runner: web.AppRunner | None = None
        self.address = cfg.admin.listen

    def reload(self, cfg: Config) -> None:
        """A new config (SIGHUP): the token may change; the listener stays as started."""
        token = admin_token(cfg)
        host, _port = split_address(self.cfg.admin.listen)
        if not token and not is_loopback(host):
            log.error("reload: the new config has no admin token but admin listens on %s; "
                      "keeping the current token", self.cfg.admin.listen)
            token = self.token
        elif token != self.token:
            log.warning("reload: admin token %s", "changed" if token else "removed")
        self.token = token
        self.cfg = cfg

    @property
    def port(self) -> int:
        return split_address(self.address)[1]

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self.cfg.admin.enabled:
            return
        host, port = split_address(self.cfg.admin.listen)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses    # the sockets' names, this one site's
        if addresses:
            h, p = addresses[0][:2]
            self.address = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.metrics.detach()
        self._close_reader()

    # ------------------------------------------------------------ middlewares

    def _public(self, path: str) -> bool:
        return path == "/healthz" or path == "/" or path.startswith("/ui/")

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token:
            if not self._public(request.path):
                given = request.headers.get("Authorization", "")
                want = f"Bearer {self.token}".encode()
                if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), want):
                    return _json({"error": "unauthorized: send Authorization: Bearer <token>"},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})
        elif request.path != "/healthz":
            host = _host_name(request.headers.get("Host", ""))
            if not is_loopback(host):
                return _json({"error": "forbidden: without admin.token the admin server only "
                              "answers requests addressed to a loopback host (localhost, "
                              "127.0.0.1, [::1])"}, status=403)
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _json({"error": str(exc)}, status=exc.status)
        except web.HTTPException as exc:
            if request.path.startswith("/api/") and exc.status >= 400:
                return _json({"error": exc.reason}, status=exc.status,
                             headers={k: v for k, v in exc.headers.items()
                                      if k.lower() == "allow"})
            raise
        except StoreError as exc:
            log.warning("admin: store read failed: %s", exc)
            return _json({"error": f"store unavailable: {exc}"}, status=503)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("admin: %s %s failed", request.method, request.path)
            return _json({"error": "internal error (see the shadowproxy log)"}, status=500)

    async def _security_headers(self, request: web.Request, response: web.StreamResponse
                                ) -> None:
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/api/") or request.path in ("/metrics", "/readyz"):
            h.setdefault("Cache-Control", "no-store")
        if request.path == "/" or request.path.startswith("/ui/"):
            h.setdefault("Content-Security-Policy", UI_CSP)
            h.setdefault("Cache-Control", "no-cache")

    # ------------------------------------------------------------ metrics

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body, ctype = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": ctype})
