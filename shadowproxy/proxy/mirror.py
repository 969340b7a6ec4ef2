"""Mirroring: which requests are shadowed, and the bounded machinery that sends them.

The proxy asks :meth:`Mirror.eligible` and :meth:`Mirror.sampled` for every request,
then :meth:`Mirror.submit` for the ones that should be shadowed. A job waits in a
bounded queue until fewer than ``mirror.concurrency`` shadows are in flight; it is
sent from callbacks, with no task of its own (:meth:`Pool.start` on the mirror's
keep-alive pools, the lean HTTP/1.1 client of :mod:`shadowproxy.http.pool`), right after
the step that submitted it, so primary's request goes out first and the client path
never awaits any of it. The candidate (and the secondary) get the request at once —
concurrently with primary; each answer is read up to ``capture_max`` (the size and a
digest are kept of the rest), and when the primary's captured answer is also known an
:class:`~shadowproxy.models.Exchange` goes to the sink (the channel to the comparator).

Memory is bounded: the queue by count (``mirror.queue``) and all bytes the worker's
shadows hold (request bodies and the three captures) by ``mirror.buffer_limit``. A
request body that does not fit drops the shadow (``dropped{memory}``); a capture that
does not fit stops keeping bytes and is compared by size and digest.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import aiohttp

from ..config import Config, MirrorConfig
from ..errors import ProtocolError, UpstreamError
from ..http.framing import encode_headers
from ..http.pool import Call, Pool
from ..http.response import Head
from ..models import Exchange, RequestRecord, ResponseRecord
from ..stats import Stats
from .breaker import Breaker
from .capture import Budget, Capture
from .policy import Policy, Sampler  # noqa: F401 - Sampler: re-exported

log = logging.getLogger("shadowproxy.mirror")

SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Response head limits when reading an upstream. aiohttp's client defaults (8190-byte
# fields, 128 headers) would turn a legitimate answer with a big CSP or Set-Cookie
# into a 502 (primary) or a false "protocol" error (candidate).
class _Limits(TypedDict):
    max_line_size: int
    max_field_size: int
    max_headers: int


UPSTREAM_LIMITS: _Limits = {"max_line_size": 64 * 1024, "max_field_size": 64 * 1024,
                            "max_headers": 1024}


@dataclass(slots=True, eq=False)   # hashed by identity: a member of Mirror._running
class MirrorJob:
    id: str
    started: float
    endpoint: str
    route: str | None
    request: RequestRecord
    target: str                   # raw path and query as received (keeps an empty '?')
    primary: asyncio.Future[ResponseRecord]
    cost: int                     # bytes charged to the budget: body and the shadow captures
    expires: float = 0.0          # loop time after which it is too late to send it
    block: bytes | None = None    # primary's header block (see Mirror.submit)
    finished: bool = False
    primary_given: bool = False   # primary's captured bytes given back to the budget
    fetched: bool = False         # candidate (and secondary) answers are in
    candidate: ResponseRecord | None = None
    secondary: ResponseRecord | None = None
    calls: list[tuple[Call, Capture]] | None = None   # the shadow requests in flight
    awaited: int = 0              # answers (candidate, secondary) not yet in


def classify_error(exc: BaseException) -> str:
    """The ``kind`` label of a failed upstream exchange."""
    if isinstance(exc, (UpstreamError, ProtocolError)):
        return exc.kind
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                        aiohttp.ClientOSError, ConnectionError)):
        return "reset"
    if isinstance(exc, aiohttp.ClientError):
        return "client"
    return "other"


def answer_record(result: Head | BaseException, cap: Capture, latency: float
                  ) -> ResponseRecord:
    """The :class:`ResponseRecord` of a shadow's answer (or failure) captured in ``cap``,
    whose kept bytes stay charged to its budget until the caller gives them back."""
    if isinstance(result, BaseException):
        cap.release()
        return ResponseRecord(status=0, latency=latency, error=classify_error(result))
    return ResponseRecord(
        status=result.status, reason=result.reason, headers=result.headers,
        body=cap.body, size=cap.size, sha256=cap.sha256,
        truncated=cap.truncated, latency=latency,
    )


class Mirror(Policy):
    """The bounded queue and the machinery that sends shadows and reads their answers
    (in the shadow stage; in one process for tests and embedding, with the decisions)."""

    def __init__(self, cfg: Config, stats: Stats, sink: Callable[[Exchange], bool]) -> None:
        self.stats = stats
        self.sink = sink
        self._waiting: collections.deque[MirrorJob] = collections.deque()
        self._running: set[MirrorJob] = set()     # sent, answers not all in
        self._pending: dict[asyncio.Future[ResponseRecord], MirrorJob] = {}
        self._idle = asyncio.Event()     # set once draining and nothing is left to send
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pump_at: asyncio.Handle | None = None
        self._pumping = False
        self.budget = Budget(cfg.mirror.buffer_limit)
        self.accepting = True
        # seconds from a request's arrival to its shadow's send, the latest ones
        self.skews: collections.deque[float] = collections.deque(maxlen=4096)
        self.configure(cfg)
        self._pools: list[Pool] = []
        self._pool_by_base: dict[str, Pool] = {}

    # ------------------------------------------------------------ configuration

    def configure(self, cfg: Config) -> None:
        """Apply a (re)loaded config: sampling, methods, headers, timeouts."""
        m: MirrorConfig = cfg.mirror
        self.cfg = m
        if hasattr(self, "budget"):
            self.budget.limit = m.buffer_limit
        for pool in getattr(self, "_pools", ()):
            pool.max_answer = m.max_response
        self.configure_policy(cfg)
        self.secondary = cfg.upstreams.secondary
        # Host is the candidate's own; added headers replace the client's
        self.remove = frozenset(h.lower() for h in (*m.remove_headers, *m.add_headers, "host"))
        self.add = list(m.add_headers.items())
        # with no header to remove, a shadow's block is primary's and the added lines
        self._remove_lens = frozenset(len(h) for h in self.remove)
        self._add_block: bytes | None = None
        text = "".join(f"{k}: {v}\r\n" for k, v in self.add)
        n = len(self.add)
        if not m.remove_headers and text.count("\n") == n and text.count("\r") == n \
                and text.isascii():
            self._add_block = (text + "\r\n").encode("ascii")  # else encode_headers refuses it
        # a probe waits at most `timeout` in the queue and `timeout` for its answer
        self.breaker = Breaker(m.breaker_failures, m.breaker_cooldown,
                               probe_limit=2 * m.timeout + 1.0)

    # ------------------------------------------------------------ submission

    def submit(self, id_: str, endpoint: str, route: str | None, request: RequestRecord,
               target: str | None = None, block: bytes | None = None,
               started: float | None = None) -> asyncio.Future[ResponseRecord] | None:
        """Queue a shadow of ``request``; returns the future the proxy resolves with
        primary's captured answer, or None when dropped (already counted). ``target``:
        the raw path and query as received (default: rebuilt from the record).
        ``block``: the header block (:func:`encode_headers`) of ``request``'s
        headers as primary gets them, the base of the shadows' when none of those
        headers is to be removed. ``started``: when the request arrived (unix time;
        default now), the origin of the send skew."""
        if not self.accepting:
            # counted as accepted-then-abandoned so that mirrored == handed on +
            # dropped after mirror (shutdown is one of those reasons) still holds
            self.stats.add("mirrored", "", endpoint)
            self.stats.add("dropped", "shutdown", endpoint)
            return None
        if not self.breaker.allow():
            self.stats.add("dropped", "candidate_down", endpoint)
            return None
        cost = len(request.body)
        if not self.budget.take_all(cost):
            self.breaker.cancel_probe()
            self.stats.add("dropped", "memory", endpoint)
            return None
        waiting = self._waiting
        if len(waiting) >= self.cfg.queue:
            self.breaker.cancel_probe()
            self.budget.give(cost)
            self.stats.add("dropped", "queue_full", endpoint)
            return None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[ResponseRecord] = loop.create_future()
        if target is None:
            target = request.path + ("?" + request.query if request.query else "")
        job = MirrorJob(id_, started or time.time(), endpoint, route, request,
                        target, fut, cost, loop.time() + self.cfg.timeout,
                        block if self._add_block is not None else None)
        waiting.append(job)
        if self._pump_at is None:
            # sent once the caller's step ends: primary's request goes out first
            self._pump_at = loop.call_soon(self._pump)
        fut.add_done_callback(lambda _f: self._primary_done(job))
        self.stats.add("mirrored", "", endpoint)
        return fut

    @property
    def depth(self) -> int:
        """Shadows waiting for a free slot (``mirror.concurrency`` are in flight)."""
        return len(self._waiting)

    @property
    def pending(self) -> int:
        """Shadows answered, waiting for primary's answer."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # ------------------------------------------------------------ sending

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for base in (self.candidate, self.secondary):
            if base:
                self._pool(base)

    def _pool(self, base: str) -> Pool:
        """The connection pool to ``base`` (a reload may name a new upstream)."""
        pool = self._pool_by_base.get(base)
        if pool is None:
            pool = self._pool_by_base[base] = Pool(base, self.cfg.concurrency,
                                                   self.cfg.max_response, timed=True)
            self._pools.append(pool)
        return pool

    def _headers(self, req: RequestRecord) -> list[tuple[str, str]]:
        remove = self.remove
        out = [(k, v) for k, v in req.headers if k.lower() not in remove]
        out.extend(self.add)
        return out

    def _pump(self) -> None:
        """Send waiting shadows while fewer than ``mirror.concurrency`` are in flight."""
        self._pump_at = None
        if not self._waiting or self._pumping:
            return
        self._pumping = True     # a shadow that ends at once must not pump in a pump
        try:
            self._pump_some()
        finally:
            self._pumping = False
        self._check_idle()

    def _pump_some(self) -> None:
        waiting, running = self._waiting, self._running
        now = self._loop.time()  # type: ignore[union-attr]
        limit = self.cfg.concurrency
        skipped = 0
        while waiting and len(running) < limit:
            job = waiting.popleft()
            if now > job.expires:
                # waited out its whole timeout behind a slow candidate: a shadow sent
                # now would be stale, and skipping it lets the queue catch up
                self._finish(job)
                self.stats.add("dropped", "queue_timeout", job.endpoint)
                skipped += 1
                if skipped == 32 and waiting:   # thousands may expire at once: let requests in
                    self._pump_at = self._loop.call_soon(self._pump)  # type: ignore[union-attr]
                    return
                continue
            try:
                self._send(job)
            except Exception:
                log.exception("mirror failed on %s", job.id)
                self._abandon(job, "internal_error")

    def _send(self, job: MirrorJob) -> None:
        cfg = self.cfg
        req = job.request
        block, add = job.block, self._add_block   # (a reload may have changed the latter)
        if block is not None:
            remove, lens = self.remove, self._remove_lens
            if add is None or any(len(k) in lens and k.lower() in remove
                                  for k, _ in req.headers):
                block = None     # a Host (preserve_host) or a client's copy of an added one
            else:
                block = block[:-2] + add   # primary's lines, the added ones, the blank line
        if block is None:
            try:   # the head is built once, for the candidate and the secondary alike
                block = encode_headers(req.method, self._headers(req), len(req.body))
            except ValueError:   # CR/LF or a character outside latin-1 in a header
                block = None
        assert self.candidate is not None
        self.skews.append(time.time() - job.started)
        self._running.add(job)
        bases = (self.candidate,) if not self.secondary else (self.candidate, self.secondary)
        job.awaited = len(bases)
        if block is None:
            for i in range(len(bases)):
                self._answered(job, i, ResponseRecord(status=0, error="other"))
            return
        job.calls = []
        for i, base in enumerate(bases):
            cap = Capture(cfg.capture_max, self.budget)

            # latency: from the request written to the answer's last bytes arrived, by
            # the kernel's stamp (not when this process, below the workers' priority,
            # got a core to read them): the span primary's is, docs/architecture.md
            def done(result: Head | BaseException, latency: float, i: int = i,
                     cap: Capture = cap) -> None:
                try:
                    self._answered(job, i, answer_record(result, cap, latency))
                except Exception:
                    log.exception("mirror failed on %s", job.id)
                    self._abandon(job, "internal_error")
                    self._slot_freed()

            call = self._pool(base).start(req.method, job.target, block, req.body, cap.feed,
                                          cfg.timeout, done)
            job.calls.append((call, cap))

    def _answered(self, job: MirrorJob, which: int, rec: ResponseRecord) -> None:
        if job.finished:             # abandoned meanwhile (shutdown): give its bytes back
            self.budget.give(len(rec.body))
            return
        if which == 0:
            job.candidate = rec
        else:
            job.secondary = rec
        job.cost += len(rec.body)
        job.awaited -= 1
        if job.awaited:
            return
        cand = job.candidate
        assert cand is not None
        if self.breaker.record(cand.error):
            self._breaker_turned(self.breaker.open)
        job.calls = None
        job.fetched = True
        self._running.discard(job)
        if job.primary.done():
            self._complete(job)
        else:
            # _primary_done completes the exchange when primary's answer is known
            self._pending[job.primary] = job
        self._slot_freed()

    def _breaker_turned(self, opened: bool) -> None:
        b = self.breaker
        if opened:
            log.warning("candidate %s refuses connections (%d connect errors in a row): "
                        "shadows are dropped as dropped{candidate_down}, one probe every "
                        "%gs or more", self.candidate, b.failures, b.cooldown)
        else:
            log.warning("candidate %s answers again: mirroring resumed", self.candidate)

    def _slot_freed(self) -> None:
        """A shadow left the in-flight set: send the next one, or tell a drain it is idle."""
        if self._waiting:
            self._pump()          # a no-op inside a pump, whose loop goes on
        else:
            self._check_idle()

    def _abandon(self, job: MirrorJob, reason: str) -> None:
        """Stop a shadow, sent or not, and count it ``dropped{reason}``."""
        if job.finished:
            return
        for call, cap in job.calls or ():
            if not call.finished:    # an answer already in is charged to job.cost
                call.cancel()
                cap.release()
        job.calls = None
        self._running.discard(job)
        self._finish(job)
        self.stats.add("dropped", reason, job.endpoint)

    def _check_idle(self) -> None:
        if not self.accepting and not self._running and not self._waiting:
            self._idle.set()

    def _primary_done(self, job: MirrorJob) -> None:
        if job.finished:
            self._give_primary(job)
        elif job.fetched:
            self._complete(job)

    def _give_primary(self, job: MirrorJob) -> None:
        """Primary's captured bytes were charged by the proxy; give them back once."""
        fut = job.primary
        if not job.primary_given and fut.done() and not fut.cancelled():
            job.primary_given = True
            self.budget.give(len(fut.result().body))

    def _finish(self, job: MirrorJob) -> None:
        job.finished = True
        self.budget.give(job.cost)
        self._give_primary(job)
        self._pending.pop(job.primary, None)

    def _complete(self, job: MirrorJob) -> None:
        if job.finished:
            return
        fut = job.primary
        primary = None if fut.cancelled() else fut.result()
        cand, sec = job.candidate, job.secondary
        assert cand is not None
        self._finish(job)
        if primary is None:
            self.stats.add("dropped", "primary_incomplete", job.endpoint)
            return
        if primary.error is not None:
            reason = "primary_incomplete" if primary.error == "incomplete" else "primary_error"
            self.stats.add("dropped", reason, job.endpoint)
            return
        ex = Exchange(id=job.id, started=job.started, endpoint=job.endpoint, route=job.route,
                      request=job.request, primary=primary, candidate=cand, secondary=sec)
        try:
            accepted = self.sink(ex)
        except Exception:
            log.exception("sink failed on %s", job.id)
            self.stats.add("dropped", "channel_error", job.endpoint)
            return
        if not accepted:
            self.stats.add("dropped", "compare_full", job.endpoint)

    # ------------------------------------------------------------ shutdown

    async def drain(self, deadline: float) -> None:
        """Stop accepting, let queued jobs finish until ``deadline`` (loop time), then
        drop what is left (counted as ``dropped{shutdown}``)."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        self._check_idle()
        if not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
        # past the deadline: shadows in flight, then those never sent
        for job in list(self._running):
            self._abandon(job, "shutdown")
        while self._waiting:
            self._abandon(self._waiting.popleft(), "shutdown")
        # jobs waiting for a primary answer that never came
        remaining = max(0.0, deadline - loop.time())
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=remaining)
        for _fut, job in list(self._pending.items()):
            self._finish(job)
            self.stats.add("dropped", "shutdown", job.endpoint)
        for p in self._pools:
            await p.close()
