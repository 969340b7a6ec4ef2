"""The primary path: a faithful, streaming reverse proxy to ``upstreams.primary``.

What a client gets is primary's answer, byte for byte (minus hop-by-hop
headers): status, reason, headers in order (every Set-Cookie), body chunks as
they arrive, compressed bodies untouched. The destination is only ever the
configured upstream. Mirroring is decided here but runs elsewhere; this path
never awaits it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
from aiohttp import web
from yarl import URL

from ..config import Config, Route
from ..errors import ProtocolError, UpstreamError
from ..http.framing import body_codings, encode_headers
from ..http.headers import end_to_end_text
from ..http.pool import ClientBodyError, Pool
from ..http.request import BodyError, Request
from ..models import RequestRecord, ResponseRecord
from ..record.hook import Recorder
from ..stats import Stats
from .capture import Capture
from .mirror import SKIP_AUTO_HEADERS, UPSTREAM_LIMITS, Mirror, classify_error
from .routes import Router
from .tee import Tee
from .websocket import keep_refusal, proxy_websocket

log = logging.getLogger("shadowproxy.proxy")

_CHUNK = 64 * 1024
_DROP_REQUEST = frozenset({"host", "expect", "x-forwarded-for", "x-forwarded-proto",
                           "x-forwarded-host"})
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Proxy:
    """The request handler and its upstream connection pool."""

    def __init__(self, cfg: Config, stats: Stats, router: Router, mirror: Mirror | Tee | None
                 ) -> None:
        self.stats = stats
        self.mirror = mirror
        self.recorder: Recorder | None = None     # set when `record:` is configured
        self.session: aiohttp.ClientSession | None = None   # WebSocket upgrades only
        self.pool: Pool | None = None
        self._ids = _ids()
        self.configure(cfg, router)

    def configure(self, cfg: Config, router: Router) -> None:
        self.cfg = cfg
        self.router = router
        if self.pool is not None and cfg.upstreams.primary != self.primary:
            # a reload moved primary: new requests get new connections; the old pool's
            # idle ones close, those in use when their request ends
            self.pool.close_idle()
            self.pool = None
        self.primary: str = cfg.upstreams.primary
        if self.pool is None:
            # timed as the shadows are: from the request written to the answer's last
            # bytes arrived, by the kernel's stamp (http/timed.py)
            self.pool = Pool(self.primary, None, timed=True)
        self.preserve_host = cfg.preserve_host
        self.trust: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n)
                                                for n in cfg.forwarded.trust)
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
            middlewares=(keep_refusal,),
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------------ handler

    async def handle(self, request: Request) -> None:
        method = request.method
        if method == "CONNECT":
            self.stats.add("not_eligible", "method")
            return request.reply(405, "CONNECT is not supported")
        target = origin_form(request.target)
        if target is None:
            if method != "OPTIONS" or request.target != "*":
                self.stats.add("not_eligible", "bad_target")
                return request.reply(400, "bad request target")
            target = "*"     # OPTIONS * (the server as a whole): passed on as it is
        path, _, query = target.partition("?")
        route = self.router.route(method, path)
        endpoint = self.router.endpoint(route, method, path)
        headers = end_to_end_text(request.headers, _DROP_REQUEST, underscores=False)
        self._forwarded(request.remote, request.headers, headers)

        # ---- mirroring decision (never awaits the shadow). Sample before reading
        # the body: a request that is not shadowed streams to primary unbuffered.
        mirror = self.mirror
        body: bytes | None = None
        fut: asyncio.Future[ResponseRecord] | None = None
        prefix: bytes | None = None
        block: bytes | None = None
        shadow = self._shadowed(method, route, endpoint, headers, query,
                                request.content_length)
        recorder = self.recorder     # None unless `record:` is configured
        record = recorder is not None and recorder.sampled(route, headers, query)
        if shadow or record:
            try:
                body, prefix = await self._read_body(request)
            except BodyError as exc:
                # malformed, stalled or abandoned by the client: it reaches no upstream
                self._not_taken("bad_body", endpoint, shadow, record)
                if exc.status is not None:
                    request.reply(exc.status, "bad request body")
                return
            except asyncio.CancelledError:
                # the client's connection was lost (or the drain's deadline came) before
                # the body was all here: no upstream saw it, and it is counted as such
                self._not_taken("bad_body", endpoint, shadow, record)
                raise
            if body is None:
                self._not_taken("body_too_large", endpoint, shadow, record)
            else:
                try:   # primary's header block; the shadows reuse it when theirs are alike
                    block = encode_headers(method, headers, len(body))
                except ValueError:
                    block = None
                if shadow:
                    rec = RequestRecord(method, path, query, tuple(headers), body)
                    fut = mirror.submit(next(self._ids), endpoint,  # type: ignore[union-attr]
                                        route.key if route is not None else None, rec,
                                        target, block)
                if record:
                    fut = self._record(fut, method, target, headers, body, endpoint)

        try:
            await self._forward(request, method, target, headers, body, prefix, fut, block)
        finally:
            if fut is not None and not fut.done():
                fut.set_result(ResponseRecord(status=0, error="incomplete"))

    def _shadowed(self, method: str, route: Route | None, endpoint: str,
                  headers: list[tuple[str, str]], query: str, length: int | None) -> bool:
        """The mirroring decision, before the body is read (a request that is not
        shadowed streams to primary unbuffered): eligible and sampled, else counted
        ``not_eligible{reason}`` or ``sampled_out``."""
        mirror = self.mirror
        if mirror is None:
            reason: str | None = "no_candidate"
        else:
            reason = mirror.eligible(method, route)
            if reason is None and length is not None and length > self.max_body:
                reason = "body_too_large"
        if reason is not None:
            self.stats.add("not_eligible", reason, endpoint)
            return False
        if not mirror.sampled(route, headers, query):  # type: ignore[union-attr]
            self.stats.add("sampled_out", "", endpoint)
            return False
        return True

    def _not_taken(self, reason: str, endpoint: str, shadow: bool, record: bool) -> None:
        """A request whose body could not be taken: counted once for the shadow
        (``not_eligible{reason}``) and once for the recording (``record_dropped``)."""
        if shadow:
            self.stats.add("not_eligible", reason, endpoint)
        if record:
            self.stats.add("record_dropped", reason, endpoint)

    def _record(self, fut: asyncio.Future[ResponseRecord] | None, method: str, target: str,
                headers: list[tuple[str, str]], body: bytes, endpoint: str
                ) -> asyncio.Future[ResponseRecord]:
        """The future primary's captured answer resolves (the shadow's, else a new one);
        when it does, the recorder hands the exchange over."""
        recorder = self.recorder
        assert recorder is not None and self.mirror is not None
        own = fut is None     # no shadow job owns the capture: give its bytes back
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(functools.partial(
            recorder.done, started=time.time(), method=method, target=target,
            headers=list(headers), body=body, endpoint=endpoint,
            budget=self.mirror.budget if own else None))
        return fut

    async def handle_upgrade(self, request: web.BaseRequest) -> web.StreamResponse:
        """A WebSocket upgrade, which the server hands to aiohttp: passed through to
        primary, never mirrored."""
        target = origin_form(request.raw_path)
        if target is None:
            self.stats.add("not_eligible", "bad_target")
            return web.Response(status=400, text="bad request target\n")
        path = target.partition("?")[0]
        endpoint = self.router.endpoint(self.router.route(request.method, path),
                                        request.method, path)
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        # aiohttp's client keeps one spelling of a repeated name: give it one
        headers = end_to_end_text(raw, _DROP_REQUEST, same_case=True, underscores=False)
        self._forwarded(request.remote or "", raw, headers)
        self.stats.add("not_eligible", "websocket", endpoint)
        assert self.session is not None
        resp = await proxy_websocket(self.session, self.primary, self.stats, request, target,
                                     headers)
        if not isinstance(resp, web.WebSocketResponse):
            resp.force_close()   # refused: the connection must not carry other requests
        return resp

    def _forwarded(self, peer: str, raw: list[tuple[str, str]],
                   headers: list[tuple[str, str]]) -> None:
        """Add X-Forwarded-For/-Proto/-Host: the client's extended when ``peer`` is in
        ``forwarded.trust`` (a proxy of ours in front), else the proxy's own alone (no
        client passes for another address, scheme or host). Put the client's Host first
        when ``preserve_host`` (``end_to_end`` dropped it; otherwise the upstream's is
        used)."""
        xff = xfp = xfh = ""
        host = ""
        trusted = bool(self.trust) and _trusted(peer, self.trust)
        for k, v in raw:
            if len(k) < 4 or (k[0] not in "xXhH"):
                continue
            lk = k.lower()
            if lk == "host":
                host = host or v
            elif not trusted:
                continue
            elif lk == "x-forwarded-for":
                xff = f"{xff}, {v}" if xff else v
            elif lk == "x-forwarded-proto":
                xfp = f"{xfp}, {v}" if xfp else v
            elif lk == "x-forwarded-host":
                xfh = f"{xfh}, {v}" if xfh else v
        scheme = "http"     # the listener speaks plain HTTP (TLS ends in front of it)
        headers.append(("X-Forwarded-For", f"{xff}, {peer}" if xff else peer))
        headers.append(("X-Forwarded-Proto", f"{xfp}, {scheme}" if xfp else scheme))
        if host:
            headers.append(("X-Forwarded-Host", f"{xfh}, {host}" if xfh else host))
            if self.preserve_host:
                headers.insert(0, ("Host", host))
        elif xfh:
            headers.append(("X-Forwarded-Host", xfh))

    async def _read_body(self, request: Request) -> tuple[bytes | None, bytes | None]:
        """The whole body when it is at most ``max_body``; else (None, prefix read so far)."""
        if not request.body_exists:
            return b"", None
        parts: list[bytes] = []
        n = 0
        while chunk := await request.read():
            parts.append(chunk)
            n += len(chunk)
            if n > self.max_body:
                return None, b"".join(parts)
        return b"".join(parts), None

    async def _body_stream(self, request: Request, prefix: bytes | None
                           ) -> AsyncIterator[bytes]:
        if prefix:
            yield prefix
        while chunk := await request.read():
            yield chunk

    async def _forward(self, request: Request, method: str, target: str,
                       headers: list[tuple[str, str]], body: bytes | None,
                       prefix: bytes | None,
                       fut: asyncio.Future[ResponseRecord] | None,
                       block: bytes | None = None) -> None:
        pool = self.pool
        assert pool is not None
        stream: AsyncIterator[bytes] | None = None
        chunked = False
        try:
            # a mirrored request's block comes from handle(): the shadows share it
            if block is None and (body is not None or not request.body_exists):
                block = encode_headers(method, headers, len(body) if body else 0)
            elif block is None:
                # streamed as it comes, framed as the request was parsed (its
                # Content-Length, else chunked), whatever the forwarded headers say
                block = encode_headers(method, headers, request.content_length)
                chunked = request.content_length is None
                stream = self._body_stream(request, prefix)
            up = await pool.open(
                method, target, block, body or b"",
                host=not (headers and headers[0][0] == "Host"), body_stream=stream,
                chunked=chunked, connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout, on_interim=request.interim)
        except asyncio.CancelledError:
            raise
        except ClientBodyError as exc:
            # the client's body failed on the way (not primary's failure)
            status = exc.cause.status if isinstance(exc.cause, BodyError) else 400
            if status is not None:
                request.reply(status, "bad request body")
            return
        except Exception as exc:  # noqa: BLE001 - every failure is a 502 or 504
            kind = classify_error(exc)
            self.stats.add("primary_error", kind)
            if fut is not None and not fut.done():
                fut.set_result(ResponseRecord(status=0, error=kind))
            if kind == "timeout":
                return request.reply(504, "primary timed out")
            return request.reply(502, "primary unavailable")
        capture: Capture | None = None
        try:
            head = up.head
            assert head is not None
            out_headers = end_to_end_text(head.headers)
            length, te = up.framing
            coded: str | None = None
            if length is not None:
                # the value forwarded, if any: a Content-Length that primary's
                # Connection header names is hop-by-hop, gone from out_headers
                length = next((v for k, v in out_headers
                               if len(k) == 14 and k.lower() == "content-length"), None)
            if te is not None:
                if length is not None:
                    # framed by Transfer-Encoding (RFC 9112 §6.3): a Content-Length
                    # beside it is a lie that would split the client's stream
                    out_headers = [(k, v) for k, v in out_headers
                                   if not (len(k) == 14 and k.lower() == "content-length")]
                    length = None
                # a body still coded once de-chunked (gzip, chunked): the client is
                # told so, before our chunked
                coded = body_codings(te) if te != "chunked" else None
            if coded is not None and request.version != (1, 1) and method != "HEAD" and \
                    head.status not in (204, 304):
                # an HTTP/1.0 client takes no Transfer-Encoding (RFC 9112 §6.1): it
                # could not undo the coding
                self.stats.add("primary_error", "transfer_coding")
                if fut is not None and not fut.done():
                    fut.set_result(ResponseRecord(status=0, error="transfer_coding"))
                return request.reply(502, "primary's answer has a transfer coding an "
                                     "HTTP/1.0 client cannot take")
            capture = Capture(self.mirror.cfg.capture_max, self.mirror.budget) \
                if fut is not None and self.mirror is not None else None
            try:
                # body bytes that came with the head go out with it (ending it when
                # complete); otherwise the head goes at once (a long poll, a stream)
                chunk = await up.read() if up.ready else b""
                if capture is not None and chunk:
                    capture.feed(chunk)
                done = up.complete
                request.respond(head.status, head.reason, out_headers, chunk, end=done,
                                length=length, codings=coded)
                while not done:
                    chunk = await up.read()          # b"" at a close-delimited end
                    if capture is not None and chunk:
                        capture.feed(chunk)
                    done = up.complete or not chunk
                    if done:
                        request.finish(chunk)
                    else:
                        await request.write(chunk)   # waits while the client's socket is full
            except (TimeoutError, UpstreamError, ProtocolError) as exc:
                # the status is already sent: abort so the client sees a broken
                # body, never a clean end
                self.stats.add("primary_error", "mid_body_" + classify_error(exc))
                request.abort()
                if fut is not None and not fut.done():
                    fut.set_result(ResponseRecord(status=0, error="incomplete"))
                return
            except ConnectionError:
                # the client went away (not primary's failure); the finally in handle()
                # marks a shadow's primary answer incomplete
                return
            if capture is not None and not fut.done():  # type: ignore[union-attr]
                fut.set_result(ResponseRecord(  # type: ignore[union-attr]
                    status=head.status, reason=head.reason, headers=head.headers,
                    body=capture.body, size=capture.size, sha256=capture.sha256,
                    truncated=capture.truncated, latency=up.elapsed))
                capture = None      # its bytes now belong to the shadow job
        finally:
            if capture is not None:
                capture.release()
            up.release()


def origin_form(target: str) -> str | None:
    """The origin-form target: path and query, never an absolute form's authority (nor
    its user information); None when it is neither."""
    if target.startswith("/"):
        return target
    try:
        url = URL(target, encoded=True)
    except ValueError:
        return None
    if not url.is_absolute() or url.scheme not in ("http", "https"):
        return None
    return url.raw_path_qs or "/"


@functools.lru_cache(maxsize=4096)
def _trusted(peer: str, trust: tuple[IPNetwork, ...]) -> bool:
    """Is ``peer`` (an address as the socket gives it) in one of the ``trust`` networks?"""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped       # a dual-stack listener's IPv4 client
    return any(ip in net for net in trust)


def _ids() -> Iterator[str]:
    """Exchange ids unique across processes and restarts: pid, start time, counter."""
    prefix = f"{int(time.time() * 1000):x}-{os.getpid():x}-"
    return (prefix + format(i, "x") for i in itertools.count(1))

