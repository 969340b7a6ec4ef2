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
import base64
import dataclasses
import hmac
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from .. import __version__
from ..config import (
    DEFAULT_REDACTED_HEADERS,
    Config,
    is_loopback,
    parse_duration,
    split_address,
)
from ..errors import ConfigError, StoreError
from ..store.base import glob_escape
from ..store.retry import RetryingStore
from .metrics import Metrics, mirror_queue_depth

if TYPE_CHECKING:
    from ..control.stages import Control

log = logging.getLogger("shadowproxy.admin")

API = "/api/v1"
VERDICTS = ("match", "diff", "noise", "error")
MAX_LIMIT = 500
READY_CONNECT_TIMEOUT = 1.0
REDACTED = "<redacted>"
UI_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


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


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS,
                                          default=_default),
                        status=status, content_type="application/json", headers=headers)


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError


class ApiError(Exception):
    """A client error: answered 400 (or ``status``) with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _parse_time(value: str, name: str) -> float:
    try:
        t = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(f"{name}: expected unix seconds or an ISO 8601 time, "
                             f"got {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise ApiError(f"{name}: expected a finite time, got {value!r}")
    return t


def parse_window(query: Any, now: float | None = None) -> tuple[float | None, float | None]:
    """``since=1h`` (``all``: no bound) or ``from``/``to`` → (since, until)."""
    since_s, frm, to = query.get("since"), query.get("from"), query.get("to")
    if since_s and frm:
        raise ApiError("give either since or from/to, not both")
    now = time.time() if now is None else now
    since: float | None = None
    until: float | None = None
    if since_s and since_s != "all":
        try:
            since = now - parse_duration(since_s)
        except ValueError:
            raise ApiError(f"since: expected a duration such as 15m, 1h, 24h or 'all', "
                             f"got {since_s!r}") from None
    if frm:
        since = _parse_time(frm, "from")
    if to:
        until = _parse_time(to, "to")
    if since is not None and until is not None and until < since:
        raise ApiError("to is before from")
    return since, until


def _int_param(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise ApiError(f"{name}: expected {lo}..{hi}, got {v}")
    return v


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


# ---------------------------------------------------------------- config redaction

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s?#]*@")
_SECRET_KEYS = frozenset({"token", "password", "passwd", "secret", "api_key", "apikey"})
_SECRET_ENV = re.compile(r"(?i)token|secret|passw|pwd|api_?key|private|credential|auth|_key$")
_SENSITIVE_HEADER = re.compile(r"(?i)auth|token|secret|passw|api[-_]?key|cookie|session")


def redact_config(cfg: Config, env: Any = None) -> dict[str, Any]:
    """The configuration as JSON-able data with secrets replaced by ``<redacted>``:
    ``admin.token`` and any key named like a secret, the values of every ``*_env``
    variable wherever they appear (``${VAR}`` substitution puts them in strings), the
    user info of URLs, and added headers that carry credentials. Values of environment
    variables named like secrets (``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*_KEY``…)
    are redacted wherever they appear, since the loader does not record which
    ``${VAR}`` it substituted."""
    env = os.environ if env is None else env
    doc = dataclasses.asdict(cfg)
    secrets: set[str] = set()
    if cfg.admin.token:
        secrets.add(cfg.admin.token)

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and k.endswith("_env") and isinstance(v, str) and v:
                    val = env.get(v)
                    if val:
                        secrets.add(val)
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(doc)
    # values that ${VAR} substitution may have put anywhere: variables named like secrets
    for name, val in env.items():
        if val and len(val) >= 6 and _SECRET_ENV.search(name):
            secrets.add(val)
    long_secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
    sensitive = {h.lower() for h in DEFAULT_REDACTED_HEADERS} | \
        {h.lower() for h in cfg.redact.headers}

    def scrub(text: str) -> str:
        if text in secrets:
            return REDACTED
        for s in long_secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if isinstance(k, str) and k.lower() in _SECRET_KEYS and v not in (None, ""):
                    out[k] = REDACTED
                else:
                    out[k] = walk(v, k)
            return out
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return scrub(node)
        return node

    out: dict[str, Any] = walk(doc)
    headers = out.get("mirror", {}).get("add_headers") or {}
    for name in list(headers):
        if name.lower() in sensitive or _SENSITIVE_HEADER.search(name):
            headers[name] = REDACTED
    return out


def redact_url(url: str | None) -> str | None:
    return None if url is None else _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@",
                                                      url)


# ---------------------------------------------------------------- store health


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


# ---------------------------------------------------------------- the server


class AdminServer:
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
        self._reader: Any = None
        self._reader_lock = threading.Lock()
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
        if self._reader is not None and self._reader is not self.control.store:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001
                pass
        self._reader = None

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

    # ------------------------------------------------------------ store access

    def _store(self) -> Any:
        with self._reader_lock:
            return self._open_reader()

    def _open_reader(self) -> Any:
        if self._reader is None:
            store = self.control.store
            path = getattr(store, "path", None)
            self._reader = store
            if path:
                try:
                    from ..store import open_store
                    self._reader = open_store(store.url, readonly=True)
                except Exception as exc:  # noqa: BLE001 - fall back to the shared one
                    log.warning("admin: cannot open a read-only store connection (%s); "
                                "reading through the writer's", exc)
        return self._reader

    async def _store_read(self, method: str, *args: Any, **kw: Any) -> Any:
        """``store.<method>(...)`` in a thread; opening the store happens there too."""
        return await self._read(lambda: getattr(self._store(), method)(*args, **kw))

    async def _read(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: fn(*args, **kw))

    # ------------------------------------------------------------ health and metrics

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

    async def metrics_handler(self, request: web.Request) -> web.Response:
        body, ctype = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": ctype})

    # ------------------------------------------------------------ UI

    async def ui_index(self, request: web.Request) -> web.Response:
        return self._ui_response("index.html")

    async def ui_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in UI_FILES or name == "index.html":
            raise web.HTTPNotFound()
        return self._ui_response(name)

    def _ui_response(self, name: str) -> web.Response:
        data = self._ui.get(name)
        if data is None:
            raise web.HTTPNotFound(reason=f"UI file {name} is not installed")
        return web.Response(body=data, content_type=UI_FILES[name], charset="utf-8")

    # ------------------------------------------------------------ API: live state

    def _mirror_state(self) -> dict[str, Any]:
        enabled, sample = self.control.mirror_state
        has_candidate = self.cfg.upstreams.candidate is not None
        return {"enabled": bool(enabled), "sample": float(sample),
                "candidate_configured": has_candidate,
                "effective": bool(enabled) and has_candidate}

    async def status(self, request: web.Request) -> web.Response:
        c = self.control
        writer = c.writer
        ws = writer.stats() if hasattr(writer, "stats") else {}
        ups = self.cfg.upstreams
        body = {
            "version": __version__,
            "started": self.started,
            "uptime_seconds": round(time.time() - self.started, 3),
            "upstreams": {"primary": redact_url(ups.primary),
                          "candidate": redact_url(ups.candidate),
                          "secondary": redact_url(ups.secondary)},
            "mirror": self._mirror_state(),
            "requests": c.stats.final_total(),
            "outcomes": c.stats.by_outcome(),
            "queues": {"mirror": mirror_queue_depth(c),
                       "compare": c.stage.queue.qsize(),
                       "store": int(getattr(writer, "depth", 0))},
            "store": {"url": redact_url(getattr(c.store, "url", None)), **ws},
            "workers": len(c.gauges),
        }
        return _json(body)

    async def outcomes(self, request: web.Request) -> web.Response:
        stats = self.control.stats
        body: dict[str, Any] = {
            "outcomes": stats.by_outcome(), "requests": stats.final_total(),
            "mirrored": stats.total("mirrored"), "stored": self.control.writer.acknowledged}
        if "since" in request.query or "from" in request.query:
            since, until = parse_window(request.query)
            body["window"] = {"since": since, "until": until,
                              "outcomes": await self._store_read("outcome_counts",
                                                               since, until)}
        return _json(body)

    # ------------------------------------------------------------ API: endpoints

    def _live_by_endpoint(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (outcome, reason, endpoint), n in list(self.control.stats.counts.items()):
            if not endpoint:
                continue
            name = f"{outcome}{{{reason}}}" if reason else outcome
            d = out.setdefault(endpoint, {})
            d[name] = d.get(name, 0) + n
        return out

    @staticmethod
    def _endpoint_doc(st: Any) -> dict[str, Any]:
        return {
            "endpoint": st.endpoint, "exchanges": st.exchanges, "matches": st.matches,
            "diffs": st.diffs, "noise": st.noise, "errors": st.errors,
            "diff_rate": st.diff_rate,   # among compared exchanges, as everywhere
            "noise_rate": _ratio(st.noise, st.exchanges),
            "error_rate": _ratio(st.errors, st.exchanges),
            "candidate_5xx": st.candidate_5xx, "primary_5xx": st.primary_5xx,
            "candidate_errors": st.candidate_errors, "primary_errors": st.primary_errors,
            "latency": {
                "samples": st.latency_samples,
                "primary": {"p50": st.primary_p50, "p95": st.primary_p95,
                            "p99": st.primary_p99},
                "candidate": {"p50": st.candidate_p50, "p95": st.candidate_p95,
                              "p99": st.candidate_p99},
            },
        }

    def _empty_endpoint(self, name: str) -> dict[str, Any]:
        none = {"p50": None, "p95": None, "p99": None}
        return {"endpoint": name, "exchanges": 0, "matches": 0, "diffs": 0, "noise": 0,
                "errors": 0, "diff_rate": 0.0, "noise_rate": 0.0, "error_rate": 0.0,
                "candidate_5xx": 0, "primary_5xx": 0, "candidate_errors": 0,
                "primary_errors": 0,
                "latency": {"samples": 0, "primary": dict(none), "candidate": dict(none)}}

    def _endpoints_report(self, live: dict[str, dict[str, int]], since: float | None,
                          until: float | None, glob: str = "*") -> dict[str, Any]:
        """Runs in a thread: ``live`` (the counters) is snapshotted on the loop."""
        store = self._store()
        stats = store.endpoint_stats(since, until, glob)
        fields = store.field_stats(None if glob == "*" else glob, since, until)
        now = time.time()
        lo = since if since is not None else (store.time_range() or (now, now))[0]
        hi = until if until is not None else now
        bucket = max(60, math.ceil(max(hi - lo, 60) / 30 / 60.0) * 60)
        series = store.diff_rate_series(since, until, bucket, glob)
        docs: dict[str, dict[str, Any]] = {st.endpoint: self._endpoint_doc(st) for st in stats}
        if glob == "*":
            for name in live:
                docs.setdefault(name, self._empty_endpoint(name))
        top: dict[str, list[dict[str, Any]]] = {}
        for f in fields:
            if f.endpoint is None or f.noise:
                continue
            lst = top.setdefault(f.endpoint, [])
            if len(lst) < 3:
                lst.append({"field": f.field, "exchanges": f.exchanges, "count": f.count})
        for name, d in docs.items():
            d["top_fields"] = top.get(name, [])
            d["series"] = [[p.time, p.exchanges, p.diffs, p.noise, p.errors]
                           for p in series.get(name, [])]
            d["counters"] = live.get(name, {})
        ordered = sorted(docs.values(), key=lambda d: (-d["diff_rate"], -d["exchanges"],
                                                       d["endpoint"]))
        return {"window": {"since": since, "until": until, "bucket_seconds": bucket},
                "endpoints": ordered}

    async def endpoints(self, request: web.Request) -> web.Response:
        since, until = parse_window(request.query)
        return _json(await self._read(self._endpoints_report, self._live_by_endpoint(),
                                      since, until))

    async def endpoint_dispatch(self, request: web.Request) -> web.Response:
        # match on the raw path: names are percent-encoded and may contain '/'
        raw = request.raw_path.split("?", 1)[0]
        rest = raw[len(f"{API}/endpoints/"):]
        parts = rest.split("/")
        if len(parts) == 1 and parts[0]:
            return await self.endpoint(request, unquote(parts[0]))
        if len(parts) == 2 and parts[0] and parts[1] == "fields":
            return await self.fields(request, unquote(parts[0]))
        raise web.HTTPNotFound(reason="not found (percent-encode the endpoint name, "
                                      "'/' as %2F)")

    async def endpoint(self, request: web.Request, name: str) -> web.Response:
        since, until = parse_window(request.query)
        live = self._live_by_endpoint()
        report = await self._read(self._endpoints_report, live, since, until,
                                  glob_escape(name))
        eps = [e for e in report["endpoints"] if e["endpoint"] == name]
        if not eps:
            if name not in live:
                raise ApiError(f"no data for endpoint {name!r}", status=404)
            doc = self._empty_endpoint(name)
            doc.update(top_fields=[], series=[], counters=live[name])
        else:
            doc = eps[0]
        return _json({"window": report["window"], **doc})

    def _fields_report(self, name: str, since: float | None, until: float | None
                       ) -> dict[str, Any]:
        store = self._store()
        glob = glob_escape(name)
        stats = store.endpoint_stats(since, until, glob)
        total = stats[0].exchanges if stats else 0
        learner = self.control.stage.learner
        live_ev = {(e.endpoint, e.field): e for e in learner.evidence(include_not_noise=True)}
        stored_ev = {(e.endpoint, e.field): e for e in
                     store.noise(glob, include_not_noise=True)}
        out = []
        for f in store.field_stats(glob, since, until):
            if f.endpoint != name:
                continue
            ev = live_ev.get((name, f.field)) or stored_ev.get((name, f.field))
            evidence = None
            if ev is not None:
                evidence = _evidence_doc(ev, "live" if (name, f.field) in live_ev else "store")
            else:
                n, r, s = learner.counts(name, f.field)
                if n:
                    evidence = {"n": n, "r": r, "s": s, "p_value": None, "noise": False,
                                "provisional": n < learner.cfg.min_samples,
                                "decided_at": None, "source": "live"}
            out.append({
                "field": f.field, "count": f.count, "exchanges": f.exchanges,
                "diff_rate": _ratio(f.exchanges, total),
                "noise_count": f.noise_count, "noise_rate": _ratio(f.noise_count, f.count),
                "kinds": f.kinds, "noise": f.noise, "example_id": f.example_id,
                "section": _section(f.field), "evidence": evidence,
            })
        out.sort(key=lambda d: (d["noise"], -d["exchanges"], d["field"]))
        return {"endpoint": name, "window": {"since": since, "until": until},
                "exchanges": total, "fields": out}

    async def fields(self, request: web.Request, name: str) -> web.Response:
        since, until = parse_window(request.query)
        return _json(await self._read(self._fields_report, name, since, until))

    # ------------------------------------------------------------ API: exchanges

    async def exchanges(self, request: web.Request) -> web.Response:
        q = request.query
        since, until = parse_window(q)
        verdict = q.get("verdict") or None
        if verdict is not None and verdict not in VERDICTS:
            raise ApiError(f"verdict: expected one of {', '.join(VERDICTS)}, got {verdict!r}")
        limit = _int_param(q, "limit", 50, 1, MAX_LIMIT)
        offset = _int_param(q, "offset", 0, 0, 10**9)
        endpoint = q.get("endpoint") or None
        field = q.get("field") or None
        rows = await self._store_read("exchanges",
                                glob_escape(endpoint) if endpoint else None, verdict,
                                since, until, limit, field=field, offset=offset)
        return _json({"exchanges": [dataclasses.asdict(r) for r in rows], "limit": limit,
                      "offset": offset, "window": {"since": since, "until": until}})

    async def exchange(self, request: web.Request) -> web.Response:
        xid = request.match_info["id"]
        doc = await self._read(self._exchange_doc, xid)
        if doc is None:
            raise ApiError(f"no exchange {xid!r} (it may have been removed by retention)",
                             status=404)
        return _json(doc)

    def _exchange_doc(self, xid: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self._store().exchange(xid)
        if doc is None:
            return None
        doc["detail"] = None
        doc["secondary_detail"] = None
        if doc.get("sampled") and self.cfg.comparator.samples_detail:
            doc["detail"] = _detail(doc.get("primary"), doc.get("candidate"))
            doc["secondary_detail"] = _detail(doc.get("primary"), doc.get("secondary"))
        return doc

    # ------------------------------------------------------------ API: noise, config

    async def noise(self, request: web.Request) -> web.Response:
        endpoint = request.query.get("endpoint") or None
        everything = request.query.get("all", "") in ("1", "true", "yes")
        glob = glob_escape(endpoint) if endpoint else None
        stored = await self._store_read("noise", glob, include_not_noise=everything)
        rows: dict[tuple[str, str], dict[str, Any]] = {
            (e.endpoint, e.field): _evidence_doc(e, "store") for e in stored}
        for e in self.control.stage.learner.evidence(include_not_noise=everything):
            if endpoint is None or e.endpoint == endpoint:
                rows[(e.endpoint, e.field)] = _evidence_doc(e, "live")
        items = [{"endpoint": k[0], "field": k[1], **v} for k, v in sorted(rows.items())]
        return _json({"noise": items, "min_samples": self.cfg.noise.min_samples,
                      "alpha": self.cfg.noise.alpha})

    async def config(self, request: web.Request) -> web.Response:
        return _json(redact_config(self.cfg))

    # ------------------------------------------------------------ API: mirror switch

    async def get_mirror(self, request: web.Request) -> web.Response:
        return _json(self._mirror_state())

    async def put_mirror(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise ApiError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError('expected a JSON object such as {"enabled": true, "sample": 0.1}')
        unknown = set(body) - {"enabled", "sample"}
        if unknown:
            raise ApiError(f"unknown key(s) {', '.join(sorted(unknown))}; "
                             "expected enabled and/or sample")
        if not body:
            raise ApiError("give enabled and/or sample")
        enabled = body.get("enabled")
        sample = body.get("sample")
        if "enabled" in body and not isinstance(enabled, bool):
            raise ApiError(f"enabled: expected true or false, got {enabled!r}")
        if "sample" in body:
            if isinstance(sample, bool) or not isinstance(sample, (int, float)) or \
                    not math.isfinite(sample) or not 0.0 <= sample <= 1.0:
                raise ApiError(f"sample: expected a number between 0 and 1, got {sample!r}")
            sample = float(sample)
        if enabled and self.cfg.upstreams.candidate is None:
            raise ApiError("cannot enable mirroring: no upstreams.candidate is configured",
                             status=409)
        before = self._mirror_state()
        self.control.set_mirror(enabled, sample)
        after = self._mirror_state()
        log.warning("admin: mirroring switched from enabled=%s sample=%s to enabled=%s "
                    "sample=%s by %s", before["enabled"], before["sample"], after["enabled"],
                    after["sample"], request.remote)
        return _json(after)


# ---------------------------------------------------------------- module helpers


def _section(field: str) -> str:
    if field == "status":
        return "status"
    if field.startswith("header."):
        return "header"
    return "body"


def _evidence_doc(e: Any, source: str) -> dict[str, Any]:
    p = e.p_value
    return {"n": e.n, "r": e.r, "s": e.s,
            "p_value": None if p is None or not math.isfinite(p) else p,
            "noise": bool(e.noise), "provisional": bool(e.provisional),
            "decided_at": e.decided_at or None, "source": source}


def _record(doc: dict[str, Any] | None) -> Any:
    """A stored sample's response as a ResponseRecord (for the detail text)."""
    from ..models import ResponseRecord

    if not doc or doc.get("body") is None:
        return None
    body = doc["body"]
    data = base64.b64decode(body) if doc.get("body_encoding") == "base64" \
        else str(body).encode()
    headers = tuple((str(k), str(v)) for k, v in doc.get("headers") or ()
                    if str(k).lower() != "content-encoding")
    return ResponseRecord(status=int(doc.get("status") or 0), headers=headers, body=data,
                          size=len(data))


def _detail(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    """DeepDiff's human-readable report of two stored bodies (None when unavailable)."""
    try:
        ra, rb = _record(a), _record(b)
        if ra is None or rb is None or (not ra.body and not rb.body):
            return None
        from ..compare.detail import response_detail

        return response_detail(ra, rb) or None
    except Exception:
        log.debug("admin: detail failed", exc_info=True)
        return None


def _load_ui() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    base = resources.files("shadowproxy.admin") / "ui"
    for name in UI_FILES:
        try:
            out[name] = (base / name).read_bytes()
        except (OSError, FileNotFoundError):
            log.warning("admin: UI file %s is missing; the web UI is incomplete", name)
    return out
