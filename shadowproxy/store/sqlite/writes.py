"""The SQLite store's writes: judged results (exchanges, differences, samples and
minute rollups, in one transaction per batch), the proxy's outcome counters, and the
noise learner's evidence.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ...models import Result
from ..base import NoiseCounts, OutcomeRow
from ..documents import _sample_keys, difference_rows, exchange_row, sample_blob
from . import rollups
from .connection import SqliteConnection
from .schema import _EX_COLS, _minute


class WritesMixin(SqliteConnection):
    """:class:`~shadowproxy.store.sqlite.store.SqliteStore`'s writes."""

    def write_results(self, results: Sequence[Result]) -> int:
        if not results:
            return 0
        return self._write("write to", self._write_results, results)

    def keeps_sample(self, res: Result) -> bool:
        """Might :meth:`write_results` keep ``res`` as a sample? False only when samples are
        off or each of its keys already has ``samples_per_field`` samples as far as this
        store knows. Safe from any thread without the lock: it only reads the set of full
        keys, which a key enters once it has K samples and which is cleared whenever
        samples may have gone (a cleanup, a failed transaction). Reading it as it changes
        can only make summary-only a result that could have been kept (a later one is
        kept instead); a summary-only result is never kept, whatever this said."""
        if self.samples_per_field <= 0:
            return False
        endpoint, full = res.exchange.endpoint, self._full
        return not all((endpoint, key) in full for key in _sample_keys(res))

    def _choose_samples(self, res: Result) -> list[str]:
        k = self.samples_per_field
        if k <= 0 or res.summary_only:
            return []
        ex = res.exchange
        keys = _sample_keys(res)
        chosen = []
        c = self._conn
        for key in keys:
            ck = (ex.endpoint, key)
            if ck in self._full:
                continue
            n = c.execute("SELECT count(*) FROM sample_keys WHERE endpoint=? AND field=?",
                          ck).fetchone()[0]
            if n < k:
                chosen.append(key)
                n += 1
            if n >= k:
                if len(self._full) > 1_000_000:
                    self._full.clear()
                self._full.add(ck)
        return chosen

    def _write_results(self, results: Sequence[Result]) -> int:
        c = self._conn
        # duplicates (a retried batch, or the same id twice in one batch) are skipped
        ids = [r.exchange.id for r in results]
        existing: set[str] = set()
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            existing.update(r[0] for r in c.execute(
                f"SELECT id FROM exchanges WHERE id IN ({','.join('?' * len(part))})", part))
        ex_rows, sample_rows = [], []
        diff_rows: list[tuple[Any, ...]] = []
        diffs: list[list[tuple[str, str, bool]] | None] = []   # of each row, for rollups
        for res in results:
            ex = res.exchange
            if ex.id in existing:
                continue
            existing.add(ex.id)
            chosen = self._choose_samples(res)
            ex_rows.append(exchange_row(res, bool(chosen)))
            if res.differences:
                rows = difference_rows(res)
                diff_rows.extend(rows)
                diffs.append([(r[5], r[6], r[9] == 1) for r in rows])
            else:
                diffs.append(None)
            if chosen:
                sample_rows.append((ex.id, ex.endpoint, ex.started, res.verdict,
                                    sample_blob(res)))
                for key in chosen:   # rows are inserted below: count them in this batch
                    c.execute("INSERT OR IGNORE INTO sample_keys(endpoint, field, exchange_id) "
                              "VALUES (?, ?, ?)", (ex.endpoint, key, ex.id))
        if ex_rows:
            c.executemany(f"INSERT INTO exchanges({','.join(_EX_COLS)}) VALUES "
                          f"({','.join('?' * len(_EX_COLS))})", ex_rows)
        if diff_rows:
            c.executemany("INSERT INTO differences(exchange_id, endpoint, time, section, path, "
                          "field, kind, a, b, noise) VALUES (?,?,?,?,?,?,?,?,?,?)", diff_rows)
        if sample_rows:
            c.executemany("INSERT OR REPLACE INTO samples(exchange_id, endpoint, time, verdict, "
                          "data) VALUES (?,?,?,?,?)", sample_rows)
        rollups.write(c, ex_rows, diffs)
        return len(ex_rows)

    def add_outcomes(self, rows: Sequence[OutcomeRow], instance: str | None = None) -> None:
        """The counts of every instance go together (an SQLite store has no instance
        column, as its exchanges have none)."""
        if not rows:
            return
        merged: dict[tuple[int, str, str, str], int] = defaultdict(int)
        for minute, endpoint, outcome, reason, count in rows:
            merged[(_minute(minute), endpoint, outcome, reason or "")] += int(count)

        def run() -> None:
            self._conn.executemany(
                "INSERT INTO outcomes(minute, endpoint, outcome, reason, count) "
                "VALUES (?,?,?,?,?) ON CONFLICT(minute, endpoint, outcome, reason) "
                "DO UPDATE SET count = count + excluded.count",
                [(*k, v) for k, v in merged.items()])

        self._write("write outcomes to", run)

    def save_noise(self, evidence: Sequence[Any]) -> None:
        if not evidence:
            return
        now = time.time()
        rows = [(e.endpoint, e.field, e.n, e.r, e.s, float(e.p_value), 1 if e.noise else 0,
                 1 if getattr(e, "provisional", False) else 0,
                 float(getattr(e, "decided_at", now) or now), now) for e in evidence]

        def run() -> None:
            self._conn.executemany(
                "INSERT INTO noise(endpoint, field, n, r, s, p_value, noise, provisional, "
                "decided_at, updated) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(endpoint, field) DO UPDATE SET n=excluded.n, r=excluded.r, "
                "s=excluded.s, p_value=excluded.p_value, noise=excluded.noise, "
                "provisional=excluded.provisional, decided_at=excluded.decided_at, "
                "updated=excluded.updated", rows)

        self._write("write noise to", run)

    def save_noise_counts(self, learner: str, rows: Sequence[NoiseCounts]) -> None:
        now = time.time()

        def run() -> None:
            self._conn.executemany(
                "INSERT INTO noise_counts(endpoint, field, learner, n, r, s, updated) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(endpoint, field, learner) DO UPDATE SET "
                "n=excluded.n, r=excluded.r, s=excluded.s, updated=excluded.updated",
                [(e, f, learner, int(n), int(r), int(s), now) for e, f, n, r, s in rows])

        if rows:
            self._write("write noise counts to", run)
