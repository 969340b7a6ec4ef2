"""The SQLite store's retention: deleting the oldest exchanges (with their differences
and samples) beyond the age and size limits, in short transactions, and the rollups and
outcome counters beyond the age limit.
"""

from __future__ import annotations

import math
from typing import Any

from .connection import SqliteConnection


class RetentionMixin(SqliteConnection):
    """:meth:`~shadowproxy.store.sqlite.store.SqliteStore.cleanup` and its helpers."""

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

    def cleanup(self, now: float, max_age: float | None, max_bytes: int | None, *,
                chunk: int = 500, max_chunks: int | None = None) -> int:
        """Delete the oldest exchanges beyond ``max_age`` seconds and ``max_bytes``;
        → exchanges deleted. At most ``max_chunks`` transactions (None: until done);
        :attr:`cleanup_pending` tells whether it stopped early."""
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
                self._write("clean up", lambda: (
                    self._conn.execute("DELETE FROM rollups WHERE minute + 60 <= ?", (cutoff,)),
                    self._conn.execute("DELETE FROM outcomes WHERE minute + 60 <= ?",
                                       (cutoff,))))
        if max_bytes and not self.cleanup_pending and self.used_bytes() > max_bytes:
            target = int(max_bytes * 0.9)
            count = self._read("SELECT count(*) FROM exchanges")[0][0]
            while budget() and count > 0:
                used = self.used_bytes()
                if used <= target:
                    break
                # about as many rows as the excess is worth, at most one chunk
                want = max(1, min(chunk, math.ceil(count * (used - target) / used)))
                n = self._delete_chunk("", (), want)
                count -= n
                chunks += 1
                deleted += n
                if n == 0:
                    break
        return deleted
