"""The primary path: a faithful, streaming reverse proxy to ``upstreams.primary``.

What a client gets is primary's answer, byte for byte (minus hop-by-hop
headers): status, reason, headers in order (every Set-Cookie), body chunks as
they arrive, compressed bodies untouched. The destination is only ever the
configured upstream. Mirroring is decided here but runs elsewhere; this path
never awaits it.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
from aiohttp import web
from yarl import URL

from . import http1
from .capture import Capture
from .config import Config
from .headers import end_to_end, end_to_end_text
from .mirror import SKIP_AUTO_HEADERS, UPSTREAM_LIMITS, Mirror, classify_error
from .models import RequestRecord, ResponseRecord
from .routes import Router
from .stats import Stats
from .websocket import proxy_websocket

log = logging.getLogger("shadowproxy.proxy")

_CHUNK = 64 * 1024
_DROP_REQUEST = frozenset({"host", "expect", "x-forwarded-for", "x-forwarded-proto",
                           "x-forwarded-host"})
_ADDED_BY_AIOHTTP = ("Date", "Server", "Content-Type")
_NO_BODY = frozenset({204, 304})


class FaithfulResponse(web.StreamResponse):
    """A StreamResponse that adds no headers primary did not send.

    aiohttp adds Date, Server and a default Content-Type, and drops
    Content-Length from a 304; a proxy must not.
    """

    def __init__(self, *, status: int, reason: str, names: frozenset[str],
                 content_length: str | None) -> None:
        super().__init__(status=status, reason=reason)
        self._upstream_names = names
        self._upstream_length = content_length

    async def _prepare_headers(self) -> None:
        # aiohttp deletes a 304's Content-Length; put it back where primary had it
        keep = list(self._headers.items()) if self.status == 304 and \
            self._upstream_length is not None else None
        await super()._prepare_headers()
        h = self._headers
        for name in _ADDED_BY_AIOHTTP:
            if name.lower() not in self._upstream_names:
                h.popall(name, None)
        if keep is not None:
            names = {k.lower() for k, _ in keep}
            added = [(k, v) for k, v in h.items() if k.lower() not in names]
            h.clear()
            h.extend(keep)
            h.extend(added)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n",
                        headers={"Content-Type": "text/plain; charset=utf-8"})


class Proxy:
    """The request handler and its upstream connection pool."""

    def __init__(self, cfg: Config, stats: Stats, router: Router, mirror: Mirror | None) -> None:
        self.stats = stats
        self.mirror = mirror
        self.session: aiohttp.ClientSession | None = None   # WebSocket upgrades only
        self.pool: http1.Pool | None = None
        self._ids = _ids()
        self.configure(cfg, router)

    def configure(self, cfg: Config, router: Router) -> None:
        self.cfg = cfg
        self.router = router
        if self.pool is not None and cfg.upstreams.primary != self.primary:
            # a reload moved primary: new requests get new connections; the old pool's
            # idle ones close, those in use when their request ends
            asyncio.get_running_loop().create_task(self.pool.close())
            self.pool = None
        self.primary = cfg.upstreams.primary
        if self.pool is None:
            self.pool = http1.Pool(self.primary, None)
        self.preserve_host = cfg.preserve_host
        self.max_body = cfg.mirror.max_body
        self.connect_timeout = cfg.timeouts.connect
        self.read_timeout = cfg.timeouts.primary
        self._timeout = aiohttp.ClientTimeout(total=None, connect=cfg.timeouts.connect,
                                              sock_read=cfg.timeouts.primary)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._timeout,
            skip_auto_headers=SKIP_AUTO_HEADERS, read_bufsize=_CHUNK, **UPSTREAM_LIMITS,
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------------ handler

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        if method == "CONNECT":
            self.stats.add("not_eligible", "method")
            return _text(405, "CONNECT is not supported")
        target = request.raw_path
        if not target.startswith("/"):
            # absolute-form: keep path and query, never the authority
            try:
                url = URL(target, encoded=True)
            except ValueError:
                url = None
            if url is None or not url.is_absolute() or url.scheme not in ("http", "https"):
                self.stats.add("not_eligible", "bad_target")
                return _text(400, "bad request target")
            target = url.raw_path_qs or "/"
        path, _, query = target.partition("?")
        route = self.router.route(method, path)
        endpoint = self.router.endpoint(route, method, path)

        raw = request.raw_headers
        headers = end_to_end(raw, _DROP_REQUEST, same_case=True)
        self._forwarded(request, raw, headers)

        upgrade = request.headers.get("Upgrade", "")
        if upgrade.lower() == "websocket":
            self.stats.add("not_eligible", "websocket", endpoint)
            assert self.session is not None
            return await proxy_websocket(self, request, target, headers)

        # ---- mirroring decision (never awaits the shadow). Sample before reading
        # the body: a request that is not shadowed streams to primary unbuffered.
        mirror = self.mirror
        body: bytes | None = None
        fut: asyncio.Future[ResponseRecord] | None = None
        prefix: bytes | None = None
        if mirror is None:
            reason: str | None = "no_candidate"
        else:
            reason = mirror.eligible(method, route)
            if reason is None:
                length = request.content_length
                if length is not None and length > self.max_body:
                    reason = "body_too_large"
        if reason is not None:
            self.stats.add("not_eligible", reason, endpoint)
        elif not mirror.sampled(route, headers, query):  # type: ignore[union-attr]
            self.stats.add("sampled_out", "", endpoint)
        else:
            body, prefix = await self._read_body(request)
            if body is None:
                self.stats.add("not_eligible", "body_too_large", endpoint)
            else:
                rec = RequestRecord(method, path, query, tuple(headers), body)
                fut = mirror.submit(next(self._ids), endpoint, route,  # type: ignore[union-attr]
                                    rec, target)

        try:
            return await self._forward(request, method, target, headers, body, prefix, fut)
        finally:
            if fut is not None and not fut.done():
                fut.set_result(ResponseRecord(status=0, error="incomplete"))

    def _forwarded(self, request: web.BaseRequest, raw: tuple[tuple[bytes, bytes], ...],
                   headers: list[tuple[str, str]]) -> None:
        """Append X-Forwarded-For/-Proto/-Host; put the client's Host first when
        ``preserve_host`` (``end_to_end`` dropped it; otherwise the upstream's is used)."""
        xff = xfp = xfh = ""
        host = ""
        for k, v in raw:
            lk = k.lower()
            if lk == b"x-forwarded-for":
                xff = f"{xff}, {v.decode('latin-1')}" if xff else v.decode("latin-1")
            elif lk == b"x-forwarded-proto":
                xfp = f"{xfp}, {v.decode('latin-1')}" if xfp else v.decode("latin-1")
            elif lk == b"x-forwarded-host":
                xfh = f"{xfh}, {v.decode('latin-1')}" if xfh else v.decode("latin-1")
            elif lk == b"host" and not host:
                host = v.decode("latin-1")
        peer = request.remote or ""
        scheme = "https" if request.transport is not None and \
            request.transport.get_extra_info("sslcontext") else "http"
        headers.append(("X-Forwarded-For", f"{xff}, {peer}" if xff else peer))
        headers.append(("X-Forwarded-Proto", f"{xfp}, {scheme}" if xfp else scheme))
        if host:
            headers.append(("X-Forwarded-Host", f"{xfh}, {host}" if xfh else host))
            if self.preserve_host:
                headers.insert(0, ("Host", host))
        elif xfh:
            headers.append(("X-Forwarded-Host", xfh))

    async def _continue(self, request: web.BaseRequest) -> None:
        if request.version >= aiohttp.HttpVersion11 and \
                request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _read_body(self, request: web.BaseRequest) -> tuple[bytes | None, bytes | None]:
        """The whole body when it is at most ``max_body``; else (None, prefix read so far)."""
        if not request.body_exists:
            return b"", None
        await self._continue(request)
        parts: list[bytes] = []
        n = 0
        content = request.content
        while chunk := await content.readany():
            parts.append(chunk)
            n += len(chunk)
            if n > self.max_body:
                return None, b"".join(parts)
        return b"".join(parts), None

    async def _body_stream(self, request: web.BaseRequest, prefix: bytes | None
                           ) -> AsyncIterator[bytes]:
        if prefix:
            yield prefix
        else:
            await self._continue(request)
        content = request.content
        while chunk := await content.readany():
            yield chunk

    async def _forward(self, request: web.BaseRequest, method: str, target: str,
                       headers: list[tuple[str, str]], body: bytes | None,
                       prefix: bytes | None,
                       fut: asyncio.Future[ResponseRecord] | None) -> web.StreamResponse:
        pool = self.pool
        assert pool is not None
        t0 = perf_counter()   # uvloop's loop.time() has 1 ms resolution
        stream: AsyncIterator[bytes] | None = None
        chunked = False
        try:
            if body is not None or not request.body_exists:
                block = http1.encode_headers(method, headers, len(body) if body else 0)
            else:
                # streamed as it comes: framed by the client's Content-Length, else chunked
                block = http1.encode_headers(method, headers, None)
                chunked = not any(k.lower() == "content-length" for k, _ in headers)
                stream = self._body_stream(request, prefix)
            up = await pool.open(
                method, target, block, body or b"",
                host=not (headers and headers[0][0] == "Host"), body_stream=stream,
                chunked=chunked, connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a 502 or 504
            kind = classify_error(exc)
            self.stats.add("primary_error", kind)
            if fut is not None and not fut.done():
                fut.set_result(ResponseRecord(status=0, error=kind))
            if kind == "timeout":
                return _text(504, "primary timed out")
            return _text(502, "primary unavailable")
        capture: Capture | None = None
        try:
            head = up.head
            assert head is not None
            out_headers = end_to_end_text(head.headers)
            names = frozenset(k.lower() for k, _ in out_headers)
            length = next((v for k, v in head.headers if k.lower() == "content-length"),
                          None) if "content-length" in names else None
            resp = FaithfulResponse(status=head.status, reason=head.reason, names=names,
                                    content_length=length)
            add = resp.headers.add
            for k, v in out_headers:
                add(k, v)
            if length is None and request.version < aiohttp.HttpVersion11:
                resp.force_close()   # close-delimited body for an HTTP/1.0 client
            capture = Capture(self.mirror.cfg.capture_max, self.mirror.budget) \
                if fut is not None and self.mirror is not None else None
            try:
                await resp.prepare(request)
                write = resp.write
                while True:
                    try:
                        chunk = await up.read()
                    except (TimeoutError, http1.UpstreamError) as exc:
                        # the status is already sent: abort so the client sees a broken
                        # body, never a clean end
                        self.stats.add("primary_error", "mid_body_" + classify_error(exc))
                        if request.transport is not None:
                            request.transport.abort()
                        if fut is not None and not fut.done():
                            fut.set_result(ResponseRecord(status=0, error="incomplete"))
                        return resp
                    if not chunk:
                        await resp.write_eof()
                        break
                    if capture is not None:
                        capture.feed(chunk)
                    if up.complete:
                        await resp.write_eof(chunk)   # the last bytes and the end at once
                        break
                    await write(chunk)
            except ConnectionError:
                # the client went away (not primary's failure); the finally in handle()
                # marks a shadow's primary answer incomplete
                return resp
            if capture is not None and not fut.done():  # type: ignore[union-attr]
                fut.set_result(ResponseRecord(  # type: ignore[union-attr]
                    status=head.status, reason=head.reason, headers=head.headers,
                    body=capture.body, size=capture.size, sha256=capture.sha256,
                    truncated=capture.truncated, latency=perf_counter() - t0))
                capture = None      # its bytes now belong to the shadow job
            return resp
        finally:
            if capture is not None:
                capture.release()
            up.release()


def _ids() -> Iterator[str]:
    """Exchange ids unique across processes and restarts: pid, start time, counter."""
    prefix = f"{int(time.time() * 1000):x}-{os.getpid():x}-"
    return (prefix + format(i, "x") for i in itertools.count(1))

