"""The replay's sender: recorded requests through the mirror, results into the store.

It is the live pipeline run over a recording instead of a client's requests: a
:class:`~shadowproxy.proxy.mirror.Mirror` sends each request to the candidate (and
the secondary), primary's answer is the recorded one or a live primary's
(:meth:`Receiver.fetch_primary <shadowproxy.proxy.receiver.Receiver.fetch_primary>`), and the
control process's stages (:class:`~shadowproxy.control.stages.Control`: comparator,
masks, store writer, outcome counts) judge and store it. Nothing is dropped for
speed: a request waits for a free slot (``--concurrency``) and for room in the
comparator's queue, so a slow candidate slows the replay instead of losing requests.
Unsafe methods go only where a route opts in (``mirror_unsafe: true``), as live.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field

from ..config import Config
from ..control.stages import Control
from ..http.framing import encode_headers
from ..http.headers import end_to_end_text
from ..models import Exchange, RequestRecord, ResponseRecord, Result
from ..proxy.mirror import Mirror
from ..proxy.receiver import Receiver
from ..proxy.routes import Router
from ..record.goreplay import OMITTED_HEADER
from ..record.recorded import Recorded
from ..redact import Redactor
from ..redact.masks import MASK_PREFIX

log = logging.getLogger("shadowproxy.replay")

_DROP = frozenset({"host", "content-length", "transfer-encoding", "expect"})
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_OMITTED = OMITTED_HEADER.lower()


@dataclass
class Summary:
    total: int = 0
    sent: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    sent_at: list[float] = field(default_factory=list)   # loop time of each send
    done: int = 0                # sent, or counted as not sent (not_eligible)
    interrupted: bool = False    # SIGINT/SIGTERM: the rest was not sent


def inject(headers: Sequence[tuple[str, str]], creds: dict[str, str]
           ) -> list[tuple[str, str]]:
    """``headers`` with the value of each header named in ``creds`` (lower-case names)
    replaced where the recording holds a mask: a test credential where production's
    was masked. Headers the recording has in clear are left as they are."""
    if not creds:
        return list(headers)
    return [(k, creds[k.lower()]) if k.lower() in creds and MASK_PREFIX in v else (k, v)
            for k, v in headers]


class Replayer:
    def __init__(self, cfg: Config, items: Iterable[Recorded], *, live_primary: bool,
                 creds: dict[str, str] | None = None,
                 offsets: Sequence[float] | Callable[[int, float], float] | None = None,
                 on_progress: Callable[[int, int, bool], None] | None = None,
                 total: int | None = None) -> None:
        """``items``: in start order, a sequence or a stream (:class:`~shadowproxy.
        record.source.Recordings`, then ``total`` is their count); ``offsets``: when
        each is due, a sequence (:func:`~.pacing.offsets`) or ``due(i, started)``
        (:func:`~.pacing.pacer`)."""
        self.cfg = cfg
        self.items = items
        self.live_primary = live_primary
        self.creds = creds or {}
        self.offsets = offsets
        self.on_progress = on_progress
        if total is None:
            if not isinstance(items, Sized):
                raise TypeError("a stream of recorded items needs its total")
            total = len(items)
        self.summary = Summary(total=total)
        self.redactor: Redactor | None = None
        self._offer: Callable[[Exchange], bool] | None = None
        self._done = 0
        self._diffs = 0
        self._ids = (f"replay-{int(time.time() * 1000):x}-{i:x}" for i in itertools.count(1))

    def _on_result(self, result: Result) -> None:
        v = self.summary.verdicts
        v[result.verdict] = v.get(result.verdict, 0) + 1
        if result.verdict == "diff":
            self._diffs += 1

    async def run(self) -> Summary:
        cfg = self.cfg
        control = Control(cfg, on_result=self._on_result)
        await control.start()
        await control.open_run()
        stats = control.stats
        stage = control.stage
        self.redactor = control.redactor
        sink = stage.offer if self.live_primary else self._like_recording
        self._offer = stage.offer
        mirror = Mirror(cfg, stats, sink)
        await mirror.start()
        router = Router(cfg.routes, cfg.endpoints.max)
        proxy = Receiver(cfg, stats, router, mirror) if self.live_primary else None
        loop = asyncio.get_running_loop()
        limit = cfg.mirror.concurrency
        room = max(1, cfg.comparator.queue // 2)
        primaries: set[asyncio.Task[None]] = set()
        stop = self._on_signals(loop)
        t0 = loop.time()
        try:
            for i, item in enumerate(self.items):
                if self.offsets is not None:
                    due = self.offsets(i, item.started) if callable(self.offsets) \
                        else self.offsets[i]
                    delay = t0 + due - loop.time()
                    if delay > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                while not stop.is_set() and (
                        mirror.in_flight + mirror.depth + mirror.pending >= limit or
                        stage.queue.qsize() >= room):
                    await asyncio.sleep(0.001)
                if stop.is_set():
                    self.summary.interrupted = True
                    break
                if self._send(item, mirror, router, proxy, primaries):
                    self.summary.sent_at.append(loop.time())
                self._tick(False)
            await mirror.drain(loop.time() + cfg.mirror.timeout * 2 + cfg.timeouts.primary)
            if primaries:
                await asyncio.wait(primaries)
            if proxy is not None:
                await proxy.close()
        finally:
            await control.stop(cfg.timeouts.shutdown or 10.0)
            for sig in _SIGNALS:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        self.summary.elapsed = loop.time() - t0
        self.summary.sent = len(self.summary.sent_at)
        self.summary.outcomes = stats.by_outcome()
        self.summary.done = self._done
        self._tick(True)
        return self.summary

    def _on_signals(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """SIGINT (Ctrl-C) or SIGTERM stop the sending: what was sent is still awaited,
        compared and stored (so ``check --run`` reads all of it) and the summary says
        the replay was interrupted. A second signal stops at once (KeyboardInterrupt)."""
        stop = asyncio.Event()

        def first(sig: signal.Signals) -> None:
            stop.set()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)     # the next one: the default, at once
            log.warning("replay: %s: no more requests are sent; waiting for those in "
                        "flight, then storing their results (a second signal stops at "
                        "once)", sig.name)

        for sig in _SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, first, sig)
        return stop

    def _like_recording(self, ex: Exchange) -> bool:
        """The exchange with the candidate's (and secondary's) answer masked as the
        recording's reference was (bodies decoded, secrets masked with the run's key),
        so that like is compared with like: with the recording's ``redact.key_env``,
        an equal secret gives an equal mask."""
        assert self.redactor is not None and self._offer is not None
        red = self.redactor.redact_exchange(Exchange(
            id=ex.id, started=ex.started, endpoint=ex.endpoint, route=ex.route,
            request=ex.request, primary=ResponseRecord(0), candidate=ex.candidate,
            secondary=ex.secondary))
        return self._offer(Exchange(
            id=ex.id, started=ex.started, endpoint=ex.endpoint, route=ex.route,
            request=ex.request, primary=ex.primary, candidate=red.candidate,
            secondary=red.secondary))

    def _tick(self, final: bool) -> None:
        self._done += 0 if final else 1
        if self.on_progress is not None:
            self.on_progress(self._done, self._diffs, final)

    def _send(self, item: Recorded, mirror: Mirror, router: Router, proxy: Receiver | None,
              primaries: set[asyncio.Task[None]]) -> bool:
        """Send one recorded request; False when it is not sent (counted why)."""
        req = item.request
        route = router.route(req.method, req.path)
        endpoint = router.endpoint(route, req.method, req.path)
        stats = mirror.stats
        reason = mirror.eligible(req.method, route)
        if reason is None and proxy is None and item.response is None:
            reason = "no_reference"     # no live primary and no recorded answer
        if reason is None and any(k.lower() == _OMITTED for k, _ in req.headers):
            reason = "body_not_recorded"    # a binary body the recording left out
        if reason is not None:
            stats.add("not_eligible", reason, endpoint)
            return False
        headers = end_to_end_text(inject(req.headers, self.creds), _DROP)
        rec = RequestRecord(req.method, req.path, req.query, tuple(headers), req.body)
        fut = mirror.submit(next(self._ids), endpoint, route.key if route else None, rec,
                            item.target, started=time.time())
        if fut is None:
            return True         # dropped by the mirror, and counted
        if proxy is None:
            answer = item.response
            assert answer is not None
            # the mirror gives primary's bytes back to its budget once the job is done
            mirror.budget.used += len(answer.body)
            fut.set_result(ResponseRecord(
                status=answer.status, reason=answer.reason, headers=answer.headers,
                body=answer.body, size=answer.size, sha256=answer.sha256,
                truncated=answer.truncated, latency=answer.latency))
            return True
        try:
            block: bytes | None = encode_headers(req.method, headers, len(req.body))
        except ValueError:
            block = None
        task = asyncio.get_running_loop().create_task(
            proxy.fetch_primary(req.method, item.target, headers, req.body, block, fut))
        primaries.add(task)
        task.add_done_callback(primaries.discard)
        return True

