"""The PostgreSQL store's retention: whole day partitions dropped, never rows deleted.

By age
    The days whose partitions lie wholly before ``now - max_age`` are dropped (with the
    sample keys of those days): a day's results go when all of it has aged out, so up to
    a day more than ``retention_age`` is kept. The per-minute aggregates and outcome
    counters whose minute is older than the cutoff are deleted by minute, at most
    :data:`AGG_CHUNK` rows per transaction.
Size
    Once the store's tables (every partition, with indexes and TOAST) are larger than
    ``max_bytes``, the oldest days are dropped, one per transaction, down to
    :data:`SIZE_TARGET` of it; the newest day (today's) is never dropped. The aggregates
    are kept by age only, so the diff-rate series outlives the detail.

Dropping a partition takes a short exclusive lock on the partitioned table (readers and
writers wait for the drop, milliseconds) and frees its files at once: no vacuum debt.
"""

from __future__ import annotations

from typing import Any

from .. import hours
from ..window import HOUR
from . import partitions
from .connection import PgConnection
from .cursor import query_of
from .schema import BY_AGE

SIZE_TARGET = 0.9
AGG_CHUNK = 5000


class RetentionMixin(PgConnection):
    """:meth:`~shadowproxy.store.postgres.store.PostgresStore.cleanup`."""

    cleanup_pending = False
    compact_pending = False

    def _stored_days(self) -> list[int]:
        """The days with partitions, oldest first."""
        with self._lock:
            try:
                conn = self._ensure()
                with conn.cursor() as cur:
                    return partitions.days(partitions.existing(cur))
            except self._pg.Error as exc:
                raise self._error(exc, "clean up") from exc

    def _drop_day(self, day: int) -> int:
        n: int = self._write("clean up", partitions.drop, day)
        self._days.discard(day)
        self._full.clear()      # samples may have gone: let new ones be kept
        return n

    def _delete_aggregates(self, cutoff: float) -> bool:
        """One bounded delete per table of the minutes all older than ``cutoff``;
        → True when nothing is left to delete."""
        def run(cur: Any) -> bool:
            done = True
            # the hours first: a writer locks an hour's mark before its aggregate rows
            hours.forget(query_of(cur), cutoff)     # the hours begun before it
            for table in BY_AGE:
                cur.execute(f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} "
                            "WHERE minute <= %s LIMIT %s)", (cutoff - 60, AGG_CHUNK))
                if cur.rowcount >= AGG_CHUNK:
                    done = False
            # a noise learner not heard of since the cutoff
            cur.execute("DELETE FROM noise_counts WHERE updated < %s", (cutoff,))
            return done

        done: bool = self._write("clean up", run)
        return done

    def compact(self, now: float, not_before: float | None = None, max_hours: int = 4) -> int:
        """Compact up to ``max_hours`` of the hours due (:mod:`shadowproxy.store.hours`),
        oldest first, each in its own transaction under the hour's exclusive advisory
        lock (an hour a writer holds, or another compactor, is left for the next call);
        → hours compacted. :attr:`compact_pending` tells whether more are due."""
        due = hours.due(self._read, now, not_before, max_hours + 1)

        def run(cur: Any, h: int) -> bool | None:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (hours.HOUR_LOCK, h // HOUR))
            row = cur.fetchone()
            if not row or not row[0]:
                return None             # being written: left for later
            return hours.compact(query_of(cur), h, ("endpoint", "instance"))

        got = [self._write("compact", run, h) for h in due[:max_hours]]
        # more are due, and this call got on (hours being written are left for later;
        # those another compactor did are done)
        self.compact_pending = len(due) > max_hours and any(g is not None for g in got)
        return sum(g is True for g in got)

    def cleanup(self, now: float, max_age: float | None, max_bytes: int | None, *,
                chunk: int = 500, max_chunks: int | None = None) -> int:
        """Drop the day partitions beyond ``max_age`` and, while the store is larger than
        ``max_bytes``, the oldest ones down to 90 % of it; → exchanges dropped. At most
        ``max_chunks`` transactions (None: until done); :attr:`cleanup_pending` tells
        whether it stopped early. ``chunk`` is unused (a partition is one step)."""
        del chunk
        deleted = 0
        steps = 0
        self.cleanup_pending = False

        def budget() -> bool:
            if max_chunks is not None and steps >= max_chunks:
                self.cleanup_pending = True
                return False
            return True

        days = self._stored_days()
        if max_age:
            cutoff = now - max_age
            for day in list(days):
                if (day + 1) * partitions.DAY > cutoff or not budget():
                    break
                deleted += self._drop_day(day)
                days.remove(day)
                steps += 1
            while budget():
                steps += 1
                if self._delete_aggregates(cutoff):
                    break
        if max_bytes and not self.cleanup_pending:
            used = self.used_bytes()
            if used > max_bytes:
                target = int(max_bytes * SIZE_TARGET)
                while len(days) > 1 and used > target and budget():
                    deleted += self._drop_day(days.pop(0))
                    steps += 1
                    used = self.used_bytes()
        return deleted
