"""The comparison stage: exchanges in, judged and redacted results out to the store.

It runs off the request path, fed by a bounded queue (in multi-process mode the
control process fills it from the channel). For each exchange it:

1. counts the request's final outcome: ``compared``, ``candidate_error{kind}``
   or ``candidate_timeout``;
2. diffs candidate against primary (and secondary against primary) with the
   route's compiled rules;
3. feeds the noise learner and splits the differences into real ones and noise
   (telling it when an answer failed: a 5xx or no complete answer, as
   :func:`shadowproxy.models.failed` counts failures; see :mod:`.noise`);
4. redacts the result and submits it to the store writer (dropped and counted
   as ``store_full`` when the writer's queue is full, ``store_down`` when it is full
   because the store is down and the writer is retrying): whole when the store may
   keep it as a sample, else only what the summary rows store (see
   :meth:`Redactor.redact_result <shadowproxy.redact.redactor.Redactor.redact_result>`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..config import Config
from ..models import Difference, Exchange, ResponseRecord, Result, Verdict, failed
from ..stats import Stats
from .comparator import RuleCache
from .noise import NoiseLearner

log = logging.getLogger("shadowproxy.compare")


def _failed(r: ResponseRecord) -> bool:
    return failed(r.status, r.error)


class CompareStage:
    def __init__(self, cfg: Config, stats: Stats, *, writer: object | None = None,
                 redactor: object | None = None,
                 on_result: Callable[[Result], None] | None = None) -> None:
        self.stats = stats
        self.writer = writer
        self.redactor = redactor
        # callables told of every judged result (unredacted: in-memory consumers
        # such as metrics only; nothing a listener keeps may reach disk or logs)
        self.listeners: list[Callable[[Result], None]] = [on_result] if on_result else []
        self.queue: asyncio.Queue[Exchange | None] = asyncio.Queue(cfg.comparator.queue)
        # bytes of the queued exchanges, bounded by comparator.buffer_limit
        self.bytes = 0
        self._freed = asyncio.Event()
        self.learner = NoiseLearner(cfg.noise)
        self._task: asyncio.Task[None] | None = None
        self.after_burst: Callable[[], None] | None = None
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rules = RuleCache.from_config(cfg)

    # ------------------------------------------------------------ input

    @staticmethod
    def size(ex: Exchange) -> int:
        n = len(ex.request.body) + len(ex.primary.body) + len(ex.candidate.body)
        return n + (len(ex.secondary.body) if ex.secondary is not None else 0)

    def offer(self, ex: Exchange) -> bool:
        """Non-blocking hand-off from a proxy in the same process."""
        size = self.size(ex)
        if self.bytes and self.bytes + size > self.cfg.comparator.buffer_limit:
            return False
        try:
            self.queue.put_nowait(ex)
        except asyncio.QueueFull:
            return False
        self.bytes += size
        return True

    async def put(self, ex: Exchange) -> None:
        """Blocking hand-off from the channel: back pressure reaches the senders."""
        size = self.size(ex)
        while self.bytes and self.bytes + size > self.cfg.comparator.buffer_limit:
            self._freed.clear()
            await self._freed.wait()
        self.bytes += size
        await self.queue.put(ex)

    # ------------------------------------------------------------ work

    def judge(self, ex: Exchange, stats: Stats | None = None) -> Result:
        """``ex``'s result, its outcome counted in ``stats`` (default :attr:`stats`; a
        fleet's comparator counts each sidecar's traffic apart)."""
        st = self.stats if stats is None else stats
        cand = ex.candidate
        if cand.error is not None:
            if cand.error == "timeout":
                st.add("candidate_timeout", "", ex.endpoint)
            else:
                st.add("candidate_error", cand.error, ex.endpoint)
            return Result(ex, "error")
        st.add("compared", "", ex.endpoint)
        comparator = self.rules.comparator(ex.route)
        diffs: list[Difference] = comparator.compare(ex.primary, cand)
        sec_diffs: list[Difference] = []
        sec_fields: set[str] | None = None
        if ex.secondary is not None and ex.secondary.error is None:
            sec_diffs = comparator.compare(ex.primary, ex.secondary)
            sec_fields = {d.field for d in sec_diffs}
        fields = {d.field for d in diffs}
        one_failed = _failed(ex.primary) or _failed(cand)
        self.learner.observe(ex.endpoint, fields, sec_fields, failed=one_failed or (
            ex.secondary is not None and _failed(ex.secondary)))
        if not diffs:
            return Result(ex, "match", [], frozenset(), sec_diffs)
        noise = self.learner.noise_fields(ex.endpoint, fields, failed=one_failed)
        verdict: Verdict = "noise" if noise >= fields else "diff"
        return Result(ex, verdict, diffs, noise, sec_diffs)

    def process(self, ex: Exchange, stats: Stats | None = None) -> Result:
        """Judge ``ex`` and hand its result to the writer (counts in ``stats``, as
        :meth:`judge`)."""
        st = self.stats if stats is None else stats
        result = self.judge(ex, st)
        for listener in self.listeners:
            listener(result)
        if self.writer is not None:
            stored = result
            if self.redactor is not None:   # whole only when the store may keep a sample
                whole = self.writer.keeps_sample(result)  # type: ignore[attr-defined]
                stored = self.redactor.redact_result(  # type: ignore[attr-defined]
                    result, whole=whole)
            if not self.writer.submit(stored):  # type: ignore[attr-defined]
                reason = getattr(self.writer, "drop_reason", "store_full")
                st.add("store_dropped", reason, ex.endpoint)
        return result

    async def run(self) -> None:
        done = 0
        queue = self.queue
        while True:
            if queue.qsize():
                ex = queue.get_nowait()
            else:
                self._burst_done()
                ex = await queue.get()
            if ex is None:
                return
            try:
                self.process(ex)
            except Exception:  # one bad exchange must not stop the stage
                log.exception("comparison failed for exchange %s", ex.id)
                self.stats.add("compare_failed", "", ex.endpoint)
            finally:
                self.bytes -= self.size(ex)
                self._freed.set()
            # get() on a non-empty queue never yields: let the loop (the channel, the
            # admin server) run every 16 comparisons
            done += 1
            if done % 16 == 0:
                self._burst_done()
                await asyncio.sleep(0)

    def _burst_done(self) -> None:
        """Tell ``after_burst`` (the control process hands its counts to the store writer
        there, so the counts of what was judged never lag its results by more than a
        burst of 16, however starved of CPU the process is)."""
        if self.after_burst is not None:
            self.after_burst()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="compare-stage")

    async def stop(self, timeout: float = 10.0) -> None:
        """Compare what is queued (up to ``timeout``), then stop."""
        if self._task is None:
            return
        await self.queue.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            while not self.queue.empty():
                ex = self.queue.get_nowait()
                if ex is not None:
                    self.bytes -= self.size(ex)
                    self.stats.add("dropped", "shutdown", ex.endpoint)
