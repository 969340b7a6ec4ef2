"""Liveness and readiness: ``/healthz``, and ``/readyz`` from a TCP connection to the
primary and the store writer's health (:class:`StoreHealth`)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..config import Config
from ..store.retry import RetryingStore
from .params import _json

READY_CONNECT_TIMEOUT = 1.0


class StoreHealth:
    """Is the store writer failing? Its latest error is newer than its latest success."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def check(self) -> tuple[bool, dict[str, Any]]:
        w = self.writer
        info: dict[str, Any] = {
            "acknowledged": int(getattr(w, "acknowledged", 0)),
            "failed": int(getattr(w, "failed", 0)),
            "queue_depth": int(getattr(w, "depth", 0)),
            "lag_seconds": round(float(getattr(w, "lag", 0.0)), 3),
        }
        if getattr(w, "alive", True) is False:
            return False, {**info, "error": "the store writer thread is not running"}
        store = getattr(w, "store", None)
        if isinstance(store, RetryingStore) and store.unavailable:
            return False, {**info, "error": f"the store cannot be opened (retried every "
                           f"{store.interval:g}s): {store.unavailable}"}
        err_at, ok_at = w.last_error_at, w.last_ok_at
        if err_at is not None and (ok_at is None or err_at > ok_at):
            return False, {**info, "error": f"store writes are failing: {w.last_error}"}
        path = getattr(getattr(w, "store", None), "path", None)
        if path and os.path.exists(path) and not os.access(path, os.W_OK):
            return False, {**info, "error": f"the store file {path} is not writable"}
        return True, info


class HealthHandlers:
    """The health routes of :class:`~shadowproxy.admin.server.AdminServer` (a mixin:
    the server sets ``cfg``, ``token`` and ``health``)."""

    cfg: Config
    token: str | None
    health: StoreHealth

    async def healthz(self, request: web.Request) -> web.Response:
        # "auth" tells the UI whether to ask for a token before calling the API
        return _json({"status": "ok", "auth": bool(self.token)})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, Any] = {}
        reasons: list[str] = []
        ok, info = await self._check_primary()
        checks["primary"] = info
        if not ok:
            reasons.append(info["error"])
        # the store is the shadow's: when it fails the proxy still serves primary, so it
        # is degraded, never "not ready" (which would take the proxy out of service)
        degraded: list[str] = []
        ok, info = self.health.check()
        checks["store"] = {"ok": ok, **info}
        if not ok:
            degraded.append(info["error"])
        status = "not ready" if reasons else "degraded" if degraded else "ready"
        body = {"status": status, "checks": checks, "reasons": reasons, "degraded": degraded}
        return _json(body, status=200 if not reasons else 503)

    async def _check_primary(self) -> tuple[bool, dict[str, Any]]:
        url = self.cfg.upstreams.primary
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = f"{host}:{port}"
        timeout = min(READY_CONNECT_TIMEOUT, self.cfg.timeouts.connect or READY_CONNECT_TIMEOUT)
        t0 = time.monotonic()
        try:
            _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except TimeoutError:
            return False, {"ok": False, "target": target,
                           "error": f"primary {target}: no TCP connection within {timeout:g}s"}
        except OSError as exc:
            return False, {"ok": False, "target": target,
                           "error": f"primary {target}: {exc.strerror or exc}"}
        took = time.monotonic() - t0
        w.close()
        try:
            await asyncio.wait_for(w.wait_closed(), 0.5)
        except (TimeoutError, OSError):
            pass
        return True, {"ok": True, "target": target, "connect_seconds": round(took, 4)}
