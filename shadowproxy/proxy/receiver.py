"""``mode: receiver``: shadowproxy as the target of a mirror that already exists.

Behind an nginx ``mirror``, an Istio VirtualService's ``mirror:`` or Traefik's
mirroring, the client is the mirroring proxy, which throws the answer away. A
:class:`Receiver` is the proxy's handler with the primary path turned around: each copy
is answered with an empty 202 as soon as its body is in, then (eligible and sampled,
as in proxy mode) sent to primary — a replica of production — from a task of the
worker, and to the candidate and secondary through the shadow stage; the captured
answer of the replica resolves the shadow's primary future, and everything after is
the proxy mode's. :meth:`Receiver.fetch_primary` is also how ``shadowproxy replay``
asks a live primary.
"""

from __future__ import annotations

import asyncio
import logging

from ..config import Config
from ..errors import ProtocolError, UpstreamError
from ..http.framing import encode_headers
from ..http.headers import end_to_end_text
from ..http.request import BodyError, Request
from ..models import RequestRecord, ResponseRecord
from ..stats import Stats
from .capture import Capture
from .handler import _DROP_REQUEST, Proxy, origin_form
from .mirror import Mirror, classify_error
from .routes import Router
from .tee import Tee

log = logging.getLogger("shadowproxy.receiver")


class Receiver(Proxy):
    """The handler of ``mode: receiver`` (:meth:`receive`); a reload keeps the mode."""

    def __init__(self, cfg: Config, stats: Stats, router: Router,
                 mirror: Mirror | Tee | None) -> None:
        self._replicas: set[asyncio.Task[None]] = set()   # primary's copies in flight
        super().__init__(cfg, stats, router, mirror)

    def configure(self, cfg: Config, router: Router) -> None:
        super().configure(cfg, router)
        self.replica_limit = cfg.mirror.queue

    async def close(self) -> None:
        for task in list(self._replicas):   # past the drain's deadline
            task.cancel()
        if self._replicas:
            await asyncio.wait(list(self._replicas), timeout=1.0)
        await super().close()

    async def receive(self, request: Request) -> None:
        """``mode: receiver``: the request is a mirror's copy (nginx ``mirror``, an Istio
        VirtualService's ``mirror:``), whose answer the mirroring proxy throws away. Once
        its body is in, it gets an empty 202 at once; then, if it is eligible and
        sampled, it goes to primary (a replica of production) here and to the candidate
        and secondary through the shadow stage, and is compared as any shadow. The
        ``-shadow`` suffix Envoy adds to the Host is taken off. Outcomes are counted as
        for the proxy; primary's answer is read whole (its first ``capture_max`` bytes
        kept) and then dropped: nobody waits for it."""
        method = request.method
        target = origin_form(request.target)
        if target is None or method == "CONNECT":
            self.stats.add("not_eligible", "bad_target" if target is None else "method")
            return request.reply(400, "bad request target")
        path, _, query = target.partition("?")
        route = self.router.route(method, path)
        endpoint = self.router.endpoint(route, method, path)
        raw = [(k, unshadow_host(v)) if k.lower() == "host" else (k, v)
               for k, v in request.headers]
        headers = end_to_end_text(raw, _DROP_REQUEST, underscores=False)
        self._forwarded(request.remote, raw, headers)
        mirror = self.mirror
        shadow = self._shadowed(method, route, endpoint, headers, query,
                                request.content_length)
        try:
            body, _prefix = await self._read_body(request)
            if body is None:
                while await request.read():   # the rest, thrown away
                    pass
        except BodyError as exc:
            self._not_taken("bad_body", endpoint, shadow, False)
            if exc.status is not None:
                request.reply(exc.status, "bad request body")
            return
        except asyncio.CancelledError:
            self._not_taken("bad_body", endpoint, shadow, False)
            raise
        request.respond(202, "Accepted", [("Content-Length", "0")], b"", end=True, length="0")
        record = self.recorder is not None and self.recorder.sampled(route, headers, query)
        if body is None:
            self._not_taken("body_too_large", endpoint, shadow, record)
            return
        if not (shadow or record):
            return
        try:
            block: bytes | None = encode_headers(method, headers, len(body))
        except ValueError:
            block = None
        if len(self._replicas) >= self.replica_limit:
            # primary's copies in flight are bounded like the shadows' queue
            if shadow:
                self.stats.add("dropped", "queue_full", endpoint)
            if record:
                self.stats.add("record_dropped", "queue_full", endpoint)
            return
        fut: asyncio.Future[ResponseRecord] | None = None
        if shadow:
            rec = RequestRecord(method, path, query, tuple(headers), body)
            fut = mirror.submit(next(self._ids), endpoint,  # type: ignore[union-attr]
                                route.key if route is not None else None, rec, target, block)
        if record:
            fut = self._record(fut, method, target, headers, body, endpoint)
        if fut is None:
            return
        # a task of its own: the mirroring proxy may close the connection once it has
        # the 202, which must not cancel primary's copy (the drain waits for it)
        task = asyncio.get_running_loop().create_task(
            self._replica(method, target, headers, body, block, fut))
        self._replicas.add(task)
        task.add_done_callback(self._replicas.discard)

    async def _replica(self, method: str, target: str, headers: list[tuple[str, str]],
                       body: bytes, block: bytes | None,
                       fut: asyncio.Future[ResponseRecord]) -> None:
        try:
            await self.fetch_primary(method, target, headers, body, block, fut)
        except Exception:
            log.exception("receiver: primary's copy failed")
        finally:
            if not fut.done():
                fut.set_result(ResponseRecord(status=0, error="incomplete"))

    async def fetch_primary(self, method: str, target: str, headers: list[tuple[str, str]],
                       body: bytes, block: bytes | None,
                       fut: asyncio.Future[ResponseRecord]) -> None:
        """Send a request to primary and resolve ``fut`` with its captured answer (a
        received mirror copy; a replayed request when the replay has a live primary)."""
        pool = self.pool
        assert pool is not None and self.mirror is not None
        try:
            if block is None:
                raise ProtocolError("a header the request line cannot carry")
            up = await pool.open(method, target, block, body,
                                 host=not (headers and headers[0][0] == "Host"),
                                 connect_timeout=self.connect_timeout,
                                 read_timeout=self.read_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is counted by its kind
            kind = classify_error(exc)
            self.stats.add("primary_error", kind)
            fut.set_result(ResponseRecord(status=0, error=kind))
            return
        capture: Capture | None = Capture(self.mirror.cfg.capture_max, self.mirror.budget)
        try:
            head = up.head
            assert head is not None and capture is not None
            chunk = await up.read() if up.ready else b""
            capture.feed(chunk)
            done = up.complete
            while not done:
                chunk = await up.read()
                capture.feed(chunk)
                done = up.complete or not chunk
            fut.set_result(ResponseRecord(
                status=head.status, reason=head.reason, headers=head.headers,
                body=capture.body, size=capture.size, sha256=capture.sha256,
                truncated=capture.truncated, latency=up.elapsed))
            capture = None      # its bytes now belong to the shadow job
        except (TimeoutError, UpstreamError, ProtocolError) as exc:
            self.stats.add("primary_error", "mid_body_" + classify_error(exc))
            fut.set_result(ResponseRecord(status=0, error="incomplete"))
        finally:
            if capture is not None:
                capture.release()
            up.release()


def unshadow_host(host: str) -> str:
    """The Host a mirror copied, without the ``-shadow`` suffix Envoy (Istio) adds to its
    name (``reviews-shadow:9080`` → ``reviews:9080``; ``reviews:9080-shadow`` too)."""
    if host[-7:].lower() == "-shadow":
        return host[:-7]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and name[-7:].lower() == "-shadow":
        return f"{name[:-7]}:{port}"
    return host
