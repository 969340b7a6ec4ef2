"""The one writer of a process: a daemon thread that owns the store connection.

Callers (the comparator, the proxy's counters, the noise learner) never block on the
store and never see its errors:

* :meth:`StoreWriter.submit` puts a result on a bounded queue and returns ``False`` at
  once when it is full (the caller counts a ``store_full`` drop; ``store.queue`` bounds
  what the writer holds: the results waiting and those of the transaction in hand,
  held ones included); it wakes the thread only when the queue gets its first result
  or a whole batch, not for every result (each wake-up is a thread switch and a
  hand-over of the GIL);
* :meth:`StoreWriter.add_outcomes` and :meth:`StoreWriter.save_noise` merge into small
  pending tables (counts are added, evidence replaced per field) that the thread
  writes after each batch, so counters are never lost to a full queue, nor to a
  store that fails for a while (what it refuses is kept for the next try);
* the thread writes a transaction when ``store.batch`` results are waiting, or
  ``store.flush_interval`` after the oldest one arrived, taking everything waiting up
  to ``store.max_batch`` (a backlog is written in fewer, larger transactions: each
  minute and endpoint's aggregates are then updated once for many results, which is
  what keeps the writer ahead of a busy service with many endpoints); after each
  commit it adds the batch to :attr:`acknowledged` and calls ``on_commit(n)``;
* every ``cleanup_interval`` seconds (and right after start) it applies the retention
  limits, a few 500-row (or incremental-vacuum) transactions at a time between
  batches, until done;
* after the retention, in the same slices, it compacts the hours of the aggregates
  that are over (``store.compact``, :mod:`shadowproxy.store.hours`), ``compact_hours``
  a slice, so a window's whole hours are read from hour rows;
* every ``wal_check_interval`` seconds it resets the WAL when it is above the store's
  cap (``store.maintain_wal()``, the SQLite store: a ``wal_checkpoint(TRUNCATE)`` that
  never waits on readers), so the WAL is back under the cap within a second or so of
  the last reader that held it ending;
* when the store is down (:class:`~shadowproxy.errors.StoreUnavailable`: a database
  server stopped, restarting or out of reach) the batch is kept and retried with
  backoff (``retry_min`` doubling up to ``retry_max`` seconds) until the store takes
  it, and the thread resumes by itself; meanwhile :attr:`down` says why, results still
  queue up to ``store.queue`` and :meth:`submit` refuses the rest (the caller counts
  ``store_dropped{store_down}``, :attr:`dropped_down` here). Writes are idempotent by
  exchange id, so a retried batch whose commit did reach the store is not stored twice.
  Closing while the store is down gives up after most of ``close``'s timeout: what is
  still held is counted in :attr:`failed`;
* when the store fails otherwise (disk full, read-only file, locked past the busy
  timeout) the batch is dropped and counted in :attr:`failed`, one clear error line is
  logged per distinct cause at most every ``log_interval`` seconds, and the thread
  goes on; a batch with a result the store cannot take (bad data) is written one
  result at a time, the bad ones dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..config import StoreConfig
from ..errors import StoreError, StoreUnavailable
from ..models import Result
from .base import OutcomeRow, Store
from .open import open_store

log = logging.getLogger("shadowproxy.store")

_HINTS = {
    "database or disk is full": "free disk space or lower store.retention_size",
    "attempt to write a readonly database": "the store file or its directory is not writable",
    "database is locked": "another process held the write lock past the busy timeout",
    "disk i/o error": "the disk holding the store failed an I/O",
    "unable to open database file": "the store file or its directory is gone or unreadable",
}


def _cause(exc: BaseException) -> str:
    root = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc
    return str(root).strip() or type(root).__name__


def _cause_key(exc: BaseException) -> str:
    """What the once-per-cause log groups by: the error's class where the store gives
    one (:attr:`StoreError.cause`), else its text."""
    key = exc.cause if isinstance(exc, StoreError) else None
    return key or _cause(exc)


class StoreWriter:
    """Writes results, outcome counts and noise evidence to a store from one thread."""

    def __init__(self, store: Store | str, cfg: StoreConfig | None = None, *,
                 on_commit: Callable[[int], None] | None = None,
                 cleanup_interval: float = 60.0, cleanup_chunks: int = 10,
                 compact_hours: int = 2,
                 wal_check_interval: float = 1.0,
                 log_interval: float = 60.0, retry_min: float = 0.1, retry_max: float = 5.0,
                 name: str = "shadowproxy-store-writer") -> None:
        self.cfg = cfg if cfg is not None else StoreConfig()
        if isinstance(store, str):
            self.store: Store = open_store(store, samples_per_field=self.cfg.samples_per_field)
            self._owns_store = True
        else:
            self.store = store
            self._owns_store = False
            if hasattr(store, "samples_per_field"):   # the writer's config rules
                store.samples_per_field = self.cfg.samples_per_field
        self.on_commit = on_commit
        # told the results of each committed transaction (from the writer's thread): a
        # fleet's comparator acknowledges their stream entries then
        self.on_committed: Callable[[list[Result]], None] | None = None
        self.cleanup_interval = cleanup_interval
        self.cleanup_chunks = cleanup_chunks
        self.compact_hours = compact_hours
        self.wal_check_interval = wal_check_interval
        self.log_interval = log_interval
        self.retry_min = retry_min
        self.retry_max = max(retry_min, retry_max)
        # (time submitted, result), at most _limit; guarded by _lock
        self._queue: deque[tuple[float, Result]] = deque()
        self._limit = max(1, self.cfg.queue)
        self._taken = 0         # results of the transaction in hand (or held): in _limit
        self._batch = max(1, self.cfg.batch)
        self._max_batch = max(self._batch, self.cfg.max_batch)
        self._lock = threading.Lock()            # the queue, counters and pending side data
        self._cv = threading.Condition(self._lock)      # commits (flush waits on it)
        self._ready = threading.Condition(self._lock)   # results to write (the thread waits)
        self.submitted = 0      # results accepted by submit()
        self.rejected = 0       # submit() returned False (queue full or closed)
        self.acknowledged = 0   # results in committed transactions
        self.failed = 0         # results dropped because the store failed
        self.dropped_down = 0   # submit() refused them: queue full while the store is down
        self.down: str | None = None     # why, while the store is down (batch held)
        self.retries = 0        # held batches retried
        self.cleaned = 0        # exchanges deleted by retention
        self.last_error: str | None = None       # cause of the latest failure
        self.last_error_at: float | None = None  # time.time() of it
        self.last_ok_at: float | None = None     # time.time() of the latest successful write
        # (instance or None for the store's own, minute, endpoint, outcome, reason) → n
        self._pending_outcomes: dict[tuple[str | None, int, str, str, str], int] = {}
        self._pending_noise: dict[tuple[str, str], Any] = {}
        self._pending_counts: tuple[str, list[Any]] | None = None   # a learner's own counts
        self._inflight_since: float | None = None
        self._held: list[tuple[float, Result]] = []   # the batch kept while down
        self._delay = retry_min                         # next backoff
        self._give_up_at = float("inf")                 # closing: stop retrying then
        self._down_since = 0.0                          # monotonic start of the outage
        self._side_failed_at = 0.0     # monotonic time the store last refused side data
        self._logged: dict[str, list[float]] = {}   # cause → [last logged, suppressed]
        self._closed = False
        self._stop = threading.Event()
        self._flush = threading.Event()
        self._next_cleanup = time.monotonic()          # first cleanup right away
        self._next_wal_check = time.monotonic() + wal_check_interval
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers' side

    def submit(self, result: Result) -> bool:
        """Queue one (redacted) result; never blocks. False when the queue is full."""
        with self._lock:
            q = self._queue
            if self._closed or len(q) + self._taken >= self._limit:
                self.rejected += 1
                if self.down is not None and not self._closed:
                    self.dropped_down += 1
                return False
            q.append((time.monotonic(), result))
            self.submitted += 1
            if len(q) == 1 or len(q) == self._batch:   # what the thread may wait for
                self._ready.notify()
        return True

    def keeps_sample(self, result: Result) -> bool:
        """Might the store keep ``result`` as a sample (so that it has to be redacted
        whole)? True unless the store can tell it will not (``store.keeps_sample``)."""
        keeps = getattr(self.store, "keeps_sample", None)
        return True if keeps is None else keeps(result)

    def add_outcomes(self, rows: Sequence[OutcomeRow], instance: str | None = None) -> None:
        """Add outcome counts (minute, endpoint, outcome, reason, count) of
        ``instance``'s traffic (None: the store's own); never blocks for long and never
        drops (they are merged until the thread writes them)."""
        with self._lock:
            p = self._pending_outcomes
            for minute, endpoint, outcome, reason, count in rows:
                key = (instance, int(minute // 60) * 60, endpoint, outcome, reason or "")
                p[key] = p.get(key, 0) + int(count)

    def save_noise(self, evidence: Sequence[Any]) -> None:
        """Record noise evidence (latest per endpoint and field wins)."""
        with self._lock:
            for e in evidence:
                self._pending_noise[(e.endpoint, e.field)] = e

    def save_noise_counts(self, learner: str, rows: Sequence[Any]) -> None:
        """Record a noise learner's own counts (:meth:`NoiseLearner.own_counts`; the
        latest replaces what is still pending)."""
        with self._lock:
            self._pending_counts = (learner, list(rows))

    @property
    def depth(self) -> int:
        """Results not yet committed: in the queue, and those of the transaction in hand
        (held while the store is down)."""
        return len(self._queue) + self._taken

    @property
    def drop_reason(self) -> str:
        """The ``store_dropped`` reason of a result :meth:`submit` refuses now."""
        return "store_down" if self.down is not None else "store_full"

    @property
    def lag(self) -> float:
        """Seconds since the oldest result not yet committed (or failed) was submitted."""
        with self._lock:
            oldest = self._inflight_since
            if self._queue:
                head = self._queue[0][0]
                oldest = head if oldest is None else min(oldest, head)
        return max(0.0, time.monotonic() - oldest) if oldest is not None else 0.0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> dict[str, float]:
        with self._lock:
            out: dict[str, float] = {"submitted": self.submitted, "rejected": self.rejected,
                   "acknowledged": self.acknowledged, "failed": self.failed,
                   "dropped_down": self.dropped_down, "retries": self.retries,
                   "down": 1.0 if self.down is not None else 0.0,
                   "cleaned": self.cleaned}
        out["depth"] = self.depth
        out["lag"] = self.lag
        return out

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed or failed, and pending
        outcomes/noise are written. → False on timeout."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        with self._lock:
            target = self.submitted
            self._flush.set()
            self._ready.notify()
        with self._cv:
            while True:
                side = (not self._pending_outcomes and not self._pending_noise
                        and self._pending_counts is None) or \
                    self._side_failed_at > t0     # kept for later: the store refused them
                done = (self.acknowledged + self.failed >= target and side
                        and self._inflight_since is None)
                if done:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._flush.set()
                self._cv.wait(min(left, 0.05))

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting, write what is queued, stop the thread. → False when the
        thread did not finish within ``timeout`` (it is a daemon; what it still held
        is lost at exit). A store that is down is retried for most of ``timeout``;
        what it still has not taken then is counted in :attr:`failed`."""
        with self._lock:
            self._give_up_at = time.monotonic() + max(0.0, timeout * 0.8 - 0.1)
            self._closed = True
            self._stop.set()
            self._ready.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def cleanup_now(self) -> None:
        """Ask the thread to apply retention at its next turn."""
        self._next_cleanup = 0.0

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        cleanup_more = False
        try:
            while True:
                if self._held:              # the store is down: retry after a backoff
                    if not self._backoff():
                        self._give_up()
                        break
                    with self._lock:
                        batch, self._held = self._held, []
                    self.retries += 1
                else:
                    batch = self._take()
                # the counts handed over so far first: those of a batch's results came
                # with them or just before (a crash between the two commits leaves the
                # counts ahead by at most a batch, never the results ahead by more)
                side_ok = self._write_side()
                if batch:
                    self._write_batch(batch)
                if self._held:
                    continue                # no maintenance while the store is down
                if cleanup_more or time.monotonic() >= self._next_cleanup:
                    cleanup_more = self._cleanup()
                if time.monotonic() >= self._next_wal_check:
                    self._maintain_wal()
                # stopping: done once everything is written, or the store refuses the rest
                if self._stop.is_set() and not self._queue and \
                        (not side_ok or not self._has_side()):
                    break
                if self._flush.is_set() and not self._queue:
                    self._flush.clear()
        finally:
            with self._cv:
                self._cv.notify_all()
            if self._owns_store:
                try:
                    self.store.close()
                except Exception:  # noqa: BLE001
                    pass

    def _has_side(self) -> bool:
        with self._lock:
            return bool(self._pending_outcomes or self._pending_noise
                        or self._pending_counts is not None)

    def _take(self) -> list[tuple[float, Result]]:
        """The next batch: everything waiting, up to ``store.max_batch``, once
        ``store.batch`` results are waiting or ``store.flush_interval`` after the oldest
        one (at once when stopping or flushing); [] when nothing came within the poll
        interval."""
        cfg = self.cfg
        poll = 0.02 if (self._stop.is_set() or self._flush.is_set()) else \
            max(0.01, min(0.5, cfg.flush_interval or 0.5,
                          self._next_cleanup - time.monotonic()))
        q = self._queue
        with self._ready:
            if not q:
                self._ready.wait(poll)
                if not q:
                    return []
            self._inflight_since = q[0][0]
            deadline = q[0][0] + cfg.flush_interval
            while len(q) < self._batch and not (self._stop.is_set() or self._flush.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            batch = [q.popleft() for _ in range(min(len(q), self._max_batch))]
            self._taken = len(batch)
            return batch

    def _backoff(self) -> bool:
        """Wait before retrying the held batch (the delay doubles each time, up to
        ``retry_max``). → False when closing and out of time: give up."""
        delay = self._delay
        self._delay = min(self.retry_max, delay * 2)
        if self._stop.is_set():
            left = self._give_up_at - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
        else:
            self._stop.wait(delay)      # close() cuts it short
        return True

    def _give_up(self) -> None:
        """Closing while the store is still down: count what it never took as failed."""
        with self._cv:
            n = len(self._held) + len(self._queue)
            self._held = []
            self._queue.clear()
            self._taken = 0
            self.failed += n
            self._inflight_since = None
            self._cv.notify_all()
        if n:
            log.error("store %s: still down at shutdown (%s); dropped %d result%s",
                      self._where(), self.down, n, "s" if n != 1 else "")

    def _hold(self, batch: list[tuple[float, Result]], exc: StoreError) -> None:
        """The store is down: keep ``batch`` to retry it after a backoff."""
        with self._cv:
            self._held = batch
            first = self.down is None
            self.down = _cause(exc)
            if first:
                self._delay = self.retry_min
                self._down_since = time.monotonic()
        self._failure(exc, 0, kept=len(batch))

    def _write_batch(self, batch: list[tuple[float, Result]]) -> None:
        results = [r for _t, r in batch]
        ok = 0
        held = 0
        committed = results
        try:
            self.store.write_results(results)
            ok = len(results)
        except StoreUnavailable as exc:    # the server is down: keep it, retry later
            self._hold(batch, exc)
            return
        except StoreError as exc:          # the store refused it (disk full, ...): drop
            self._failure(exc, len(results))
        except Exception:  # noqa: BLE001 - a result the store cannot take: one by one
            committed = []
            for i, r in enumerate(results):
                try:
                    self.store.write_results([r])
                    ok += 1
                    committed.append(r)
                except StoreUnavailable as exc:
                    held = len(results) - i
                    self._hold(batch[i:], exc)
                    break
                except Exception as exc:   # noqa: BLE001
                    self._failure(exc, 1, bad_result=not isinstance(exc, StoreError))
        recovered = None
        with self._cv:
            if ok:
                self.last_ok_at = time.time()
                if self.down is not None and not held:
                    recovered, self.down = self.down, None
                    self._delay = self.retry_min
            self.acknowledged += ok
            self.failed += len(results) - ok - held
            if not held:
                self._inflight_since = None
            self._taken = held
            self._cv.notify_all()
        if recovered is not None:
            log.warning("store %s: writing again; it was down for %.1fs (%s)",
                        self._where(), time.monotonic() - self._down_since, recovered)
        if ok and self.on_commit is not None:
            try:
                self.on_commit(ok)
            except Exception:
                log.exception("store: the on_commit callback failed")
        if ok and self.on_committed is not None:
            try:
                self.on_committed(committed)
            except Exception:
                log.exception("store: the on_committed callback failed")

    def _write_side(self) -> bool:
        """Write the pending outcome counts and noise evidence; False when the store
        failed (they are kept for the next try)."""
        with self._lock:
            outcomes, self._pending_outcomes = self._pending_outcomes, {}
            noise, self._pending_noise = self._pending_noise, {}
            counts, self._pending_counts = self._pending_counts, None
        failed = False
        by_instance: dict[str | None, dict[tuple[str | None, int, str, str, str], int]] = {}
        for k, v in outcomes.items():
            by_instance.setdefault(k[0], {})[k] = v
        for inst, part in by_instance.items():   # a transaction each
            if not failed:     # after a failure the rest wait for the next try too
                rows = [(*k[1:], v) for k, v in part.items()]
                try:
                    if inst is None:
                        self.store.add_outcomes(rows)
                    else:
                        self.store.add_outcomes(rows, inst)
                    continue
                except Exception as exc:  # noqa: BLE001
                    failed = True
                    self._failure(exc, 0, what="outcome counts")
            with self._lock:    # kept for the next try: counts are small and add up
                for k, v in part.items():
                    self._pending_outcomes[k] = self._pending_outcomes.get(k, 0) + v
        if noise:
            try:
                self.store.save_noise(list(noise.values()))
            except Exception as exc:  # noqa: BLE001
                failed = True
                self._failure(exc, 0, what="noise evidence")
                with self._lock:    # kept unless newer evidence came meanwhile
                    for key, evidence in noise.items():
                        self._pending_noise.setdefault(key, evidence)
        if counts is not None:
            try:
                self.store.save_noise_counts(*counts)
            except Exception as exc:  # noqa: BLE001
                failed = True
                self._failure(exc, 0, what="noise counts")
                with self._lock:    # kept unless newer counts came meanwhile
                    if self._pending_counts is None:
                        self._pending_counts = counts
        if outcomes or noise or counts is not None:
            with self._cv:
                if failed:
                    self._side_failed_at = time.monotonic()
                else:
                    self.last_ok_at = time.time()
                self._cv.notify_all()
        return not failed

    def _cleanup(self) -> bool:
        """One slice of retention, then of the hourly compaction of the aggregates
        (:mod:`shadowproxy.store.hours`). → True when more of either is left."""
        self._next_cleanup = time.monotonic() + self.cleanup_interval
        cfg = self.cfg
        more = False
        now = time.time()
        if cfg.retention_age or cfg.retention_size:
            try:
                n = self.store.cleanup(now, cfg.retention_age or None,
                                       cfg.retention_size or None,
                                       max_chunks=self.cleanup_chunks)
            except Exception as exc:  # noqa: BLE001
                self._failure(exc, 0, what="retention cleanup")
                return False
            with self._lock:
                self.cleaned += n
            more = bool(getattr(self.store, "cleanup_pending", False))
            if more:
                return True             # retention first: it decides what is kept
        compact = getattr(self.store, "compact", None)
        if compact is None:
            return False
        try:
            # not the hours the age limit is about to take (their minutes go one by one)
            compact(now, now - cfg.retention_age if cfg.retention_age else None,
                    max_hours=self.compact_hours)
        except Exception as exc:  # noqa: BLE001
            self._failure(exc, 0, what="hourly compaction")
            return False
        return bool(getattr(self.store, "compact_pending", False))

    def _maintain_wal(self) -> None:
        """Reset the store's WAL when it is above its cap (stores that have one)."""
        self._next_wal_check = time.monotonic() + self.wal_check_interval
        if getattr(self.store, "unavailable", None):
            return      # a store not open yet (RetryingStore): its writes report that
        try:
            maintain = getattr(self.store, "maintain_wal", None)
            if maintain is not None:
                maintain()
        except Exception as exc:  # noqa: BLE001 - a failed checkpoint
            self._failure(exc, 0, what="WAL checkpoint")

    def _where(self) -> str:
        return str(getattr(self.store, "path", None) or getattr(self.store, "url", "?"))

    def _failure(self, exc: BaseException, n: int, *, what: str = "results",
                 bad_result: bool = False, kept: int = 0) -> None:
        cause, key = _cause(exc), _cause_key(exc)
        self.last_error = f"{what}: {cause}"
        self.last_error_at = time.time()
        now = time.monotonic()
        entry = self._logged.get(key)
        if entry is not None and now - entry[0] < self.log_interval:
            entry[1] += n
            return
        suppressed = int(entry[1]) if entry else 0
        self._logged[key] = [now, 0]
        if len(self._logged) > 100:
            self._logged = {key: [now, 0]}
        where = self._where()
        hint = next((h for k, h in _HINTS.items() if k in cause.lower()), None)
        if bad_result:
            msg = f"store {where}: could not write a result ({type(exc).__name__}: {cause})"
        else:
            msg = f"store {where}: writing {what} failed: {cause}"
        if n:
            msg += f"; dropped {n} result{'s' if n != 1 else ''}"
        if kept:
            msg += (f"; the store is down: keeping {kept} result{'s' if kept != 1 else ''} "
                    f"and retrying with backoff (up to every {self.retry_max:g}s)")
        if hint:
            msg += f" ({hint})"
        if suppressed:
            msg += f"; {suppressed} more dropped for the same cause since the last message"
        log.error(msg, exc_info=bad_result)
