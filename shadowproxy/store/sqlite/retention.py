"""The SQLite store's retention: deleting the oldest exchanges (with their differences
and samples) beyond the age and size limits, in short transactions, and the per-minute
aggregates (rollups) and outcome counters beyond the age limit; then giving the freed
pages back to the file system and resetting the WAL.

The size limit
    Counts the pages in use (``(page_count - freelist_count) * page_size``). Once a
    cleanup finds them above ``max_bytes`` it deletes the oldest exchanges down to
    :data:`SIZE_TARGET` (90 %) of it, in transactions of at most ``chunk`` exchanges;
    when its ``max_chunks`` budget stops it early it carries on down to the same target
    at the next call, even though the store is then already under the limit (so a full
    store is trimmed once by a tenth, not a little every minute).

Giving space back
    On a store with ``auto_vacuum=INCREMENTAL`` (every store made since; older ones
    see :mod:`.connection`) a cleanup then runs ``PRAGMA incremental_vacuum`` in steps
    of :data:`VACUUM_STEP` bytes (each its own short write transaction, each counted as
    a chunk of the budget) until at most :data:`FREE_SLACK` of the file's pages are
    free: the file shrinks to about what is in use, and a store in its steady state
    (as much written as deleted) moves no pages, the writes reuse the freed ones. Last,
    the WAL is checkpointed and truncated (``wal_checkpoint(TRUNCATE)``, never waiting
    on a reader). So the file stays within about ``max_bytes`` + 2 % + what is written
    between two cleanups, and the WAL within the bound stated in :mod:`.connection`.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from .. import hours
from .connection import AUTO_VACUUM_INCREMENTAL, SqliteConnection, _store_error

SIZE_TARGET = 0.9                 # the size limit cleans down to this share of it
VACUUM_STEP = 8 * 1024 * 1024     # bytes of free pages given back per transaction
FREE_SLACK = 0.02                 # share of the file's pages left free for the writes

# per-minute tables kept by age only (not by the size limit); those the schema has
_BY_AGE = ("rollups", "rollup_blobs", "field_rollups", "diff_sets", "outcomes")


class RetentionMixin(SqliteConnection):
    """:meth:`~shadowproxy.store.sqlite.store.SqliteStore.cleanup` and its helpers."""

    cleanup_pending = False
    compact_pending = False
    _trimming = False     # the size limit was exceeded: cleaning down to its target

    def _delete_exchanges(self, ids: list[str]) -> None:
        c = self._conn
        marks = ",".join("?" * len(ids))
        c.execute(f"DELETE FROM differences WHERE exchange_id IN ({marks})", ids)
        c.execute(f"DELETE FROM sample_keys WHERE exchange_id IN ({marks})", ids)
        c.execute(f"DELETE FROM samples WHERE exchange_id IN ({marks})", ids)
        c.execute(f"DELETE FROM exchanges WHERE id IN ({marks})", ids)

    def _delete_chunk(self, where: str, params: tuple[Any, ...], chunk: int) -> int:
        def run() -> int:
            ids = [r[0] for r in self._conn.execute(
                f"SELECT id FROM exchanges {where} ORDER BY time LIMIT ?", (*params, chunk))]
            if ids:
                self._delete_exchanges(ids)
            return len(ids)

        n = self._write("clean up", run)
        if n:
            self._full.clear()   # samples may have gone: let new ones be kept
        return n

    def _delete_by_age(self, cutoff: float) -> None:
        """The per-minute rows all of whose minute is older than ``cutoff``."""
        have = {r[0] for r in self._read("SELECT name FROM sqlite_master WHERE type='table'")}

        def run() -> None:
            for table in _BY_AGE:
                if table in have:
                    self._conn.execute(f"DELETE FROM {table} WHERE minute + 60 <= ?",
                                       (cutoff,))
            if "hours" in have:             # the hour rows of hours begun before it
                hours.forget(self._conn.execute, cutoff)
            if "noise_counts" in have:      # a learner not heard of since the cutoff
                self._conn.execute("DELETE FROM noise_counts WHERE updated < ?", (cutoff,))

        self._write("clean up", run)

    def compact(self, now: float, not_before: float | None = None, max_hours: int = 4) -> int:
        """Compact up to ``max_hours`` of the hours due (:mod:`shadowproxy.store.hours`),
        oldest first, each in its own write transaction; → hours compacted.
        :attr:`compact_pending` tells whether more are due (call again)."""
        due = hours.due(self._read, now, not_before, max_hours + 1)
        done = sum(self._write("compact", hours.compact, self._conn.execute, h, ("endpoint",))
                   for h in due[:max_hours])
        self.compact_pending = len(due) > max_hours
        return done

    def free_pages(self) -> int:
        """Pages on the freelist (what an incremental vacuum can give back)."""
        n: int = self._read("PRAGMA freelist_count")[0][0]
        return n

    def _vacuum_step(self) -> int:
        """One ``incremental_vacuum`` transaction of at most :data:`VACUUM_STEP` bytes
        down to the slack; → pages given back."""
        page_size: int = self._read("PRAGMA page_size")[0][0]
        pages: int = self._read("PRAGMA page_count")[0][0]
        excess = self.free_pages() - int(pages * FREE_SLACK)
        if excess <= 0:
            return 0
        n = min(excess, max(1, VACUUM_STEP // page_size))
        with self._lock:
            try:
                # executescript steps the pragma to its end (execute() frees one page)
                self._conn.executescript(f"PRAGMA incremental_vacuum({n})")
            except sqlite3.Error as exc:
                self._rollback()
                raise _store_error(exc, "vacuum", self.path or ":memory:") from exc
        return n

    def cleanup(self, now: float, max_age: float | None, max_bytes: int | None, *,
                chunk: int = 500, max_chunks: int | None = None) -> int:
        """Delete the oldest exchanges beyond ``max_age`` seconds and, once the used size
        is above ``max_bytes``, down to 90 % of it; give the freed pages back and reset
        the WAL; → exchanges deleted. At most ``max_chunks`` transactions (None: until
        done); :attr:`cleanup_pending` tells whether it stopped early (call again)."""
        deleted = 0
        chunks = 0
        self.cleanup_pending = False

        def budget() -> bool:
            if max_chunks is not None and chunks >= max_chunks:
                self.cleanup_pending = True
                return False
            return True

        if max_age:
            cutoff = now - max_age
            while budget():
                n = self._delete_chunk("WHERE time < ?", (cutoff,), chunk)
                chunks += 1
                deleted += n
                if n < chunk:
                    break
            if not self.cleanup_pending:
                # a rollup/outcome minute goes when all of it is older than the cutoff
                self._delete_by_age(cutoff)
        if not max_bytes:
            self._trimming = False
        elif not self.cleanup_pending:
            used = self.used_bytes()
            if used > max_bytes:
                self._trimming = True
            target = int(max_bytes * SIZE_TARGET)
            count = self._read("SELECT count(*) FROM exchanges")[0][0] if self._trimming else 0
            while self._trimming:
                if used <= target or count <= 0:
                    self._trimming = False
                    break
                if not budget():
                    break
                # about as many rows as the excess is worth, at most one chunk
                want = max(1, min(chunk, math.ceil(count * (used - target) / used)))
                n = self._delete_chunk("", (), want)
                count -= n
                chunks += 1
                deleted += n
                if n == 0:
                    self._trimming = False
                    break
                used = self.used_bytes()
        vacuumed = 0
        if not self.cleanup_pending and self.auto_vacuum == AUTO_VACUUM_INCREMENTAL:
            while budget():
                n = self._vacuum_step()
                if n == 0:
                    break
                chunks += 1
                vacuumed += n
        if deleted or vacuumed:
            self.checkpoint()
        return deleted
