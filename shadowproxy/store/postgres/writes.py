"""The PostgreSQL store's writes: judged results (exchanges, differences and samples by
binary COPY into their day partitions, the instance's own per-minute aggregates
read-merged-written, all in one transaction per batch), outcome counters and noise
evidence (upserts).

Rows are labelled with the instance whose traffic they describe: an exchange that came
over a fleet's transport carries its sidecar's (:attr:`Exchange.instance
<shadowproxy.models.Exchange.instance>`), any other this store's own ``instance``; so
are outcome counts handed in with an instance (:meth:`WritesMixin.add_outcomes`).

Idempotent: the ids of a batch already stored (a retried batch, one whose commit was
not acknowledged) are looked up first, inside the transaction, and skipped, so nothing is
counted twice. Many writers: each writes only the aggregate rows keyed by its own name
(``writer``, besides the ``instance`` of the traffic), so writers never share a row they
read, merge and write back, even when several (a fleet's comparators) write one
sidecar's traffic; readers sum them.

Every upsert takes its rows in key order: two processes under one instance name (a
comparator pool's, ``shadowproxy compare --processes N``) or any two writers of the
shared ``noise`` rows then lock the rows they share in one order and wait for each
other, where rows in the order they were gathered deadlocked (one transaction aborted,
its batch retried and an error logged).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ...errors import StoreError
from ...models import Result
from .. import hours
from ..base import NoiseCounts, OutcomeRow
from ..documents import _sample_keys, difference_rows, exchange_row, sample_blob
from ..rollup import Minute, rollup
from ..window import EX_COLS, HOUR, ROLLUP_BLOBS, ROLLUP_COLS, added_blobs, hours_of
from . import partitions
from .connection import PgConnection
from .cursor import query_of

_EX_TYPES = ("text", "float8", "text", "text", "text", "text", "text", "text", "int4",
             "int4", "int4", "float8", "float8", "float8", "int8", "int8", "text", "text",
             "int4", "int4", "int2", "text")
_DIFF_COLS = ("exchange_id", "endpoint", "time", "section", "path", "field", "kind", "a",
              "b", "noise", "instance")
_DIFF_TYPES = ("text", "text", "float8", "text", "text", "text", "text", "text", "text",
               "int2", "text")
_RACES = 3     # tries of a batch that met another writer's commit of one of its ids
_SAMPLE_COLS = ("exchange_id", "endpoint", "time", "verdict", "data", "instance")
_SAMPLE_TYPES = ("text", "text", "float8", "text", "bytea", "text")


def _rollups_by_instance(ex_rows: Sequence[tuple[Any, ...]],
                         diffs: Sequence[Sequence[tuple[str, str, bool]] | None]
                         ) -> dict[tuple[int, str, str], Minute]:
    """(minute, endpoint, instance) → the aggregate of a batch's new exchanges rows
    (their last column is the instance whose traffic they are)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(ex_rows):
        groups[row[-1]].append(i)
    out: dict[tuple[int, str, str], Minute] = {}
    for inst, idx in groups.items():
        for (minute, endpoint), m in rollup([ex_rows[i] for i in idx],
                                            [diffs[i] for i in idx]).items():
            out[(minute, endpoint, inst)] = m
    return out


def _copy(cur: Any, table: str, cols: Sequence[str], types: Sequence[str],
          rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        return
    with cur.copy(f"COPY {table} ({','.join(cols)}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(list(types))
        for row in rows:
            cp.write_row(row)


class WritesMixin(PgConnection):
    """:class:`~shadowproxy.store.postgres.store.PostgresStore`'s writes."""

    def write_results(self, results: Sequence[Result]) -> int:
        if not results:
            return 0
        self._partitions_for(r.exchange.started for r in results)
        for attempt in range(_RACES):
            try:
                n: int = self._write("write to", self._write_results, results)
                return n
            except StoreError as exc:
                # another writer committed one of these exchanges between this
                # transaction's look at the stored ids and its COPY (two comparators
                # handed one entry: a claimed one whose owner was only slow). Nothing
                # of the transaction stayed; tried again it sees the exchange stored
                # and skips it, instead of the whole batch being refused.
                if attempt == _RACES - 1 or \
                        not isinstance(exc.__cause__, self._pg.errors.UniqueViolation):
                    raise
        raise AssertionError("unreachable")

    def _partitions_for(self, times: Any) -> None:
        """Create the day partitions the times need (and today's and tomorrow's)."""
        today = partitions.day_of(time.time())
        wanted = {partitions.day_of(t) for t in times} | {today, today + 1}
        if wanted <= self._days:
            return
        self._days |= self._write("create partitions in", partitions.create, wanted)

    def keeps_sample(self, res: Result) -> bool:
        """As :meth:`SqliteStore.keeps_sample
        <shadowproxy.store.sqlite.store.SqliteStore.keeps_sample>`."""
        if self.samples_per_field <= 0:
            return False
        endpoint, full = res.exchange.endpoint, self._full
        return not all((endpoint, key) in full for key in _sample_keys(res))

    def _sample_counts(self, cur: Any, results: Sequence[Result]) -> dict[tuple[str, str], int]:
        """(endpoint, key) → samples kept so far, for the keys of ``results`` not known
        to be full."""
        if self.samples_per_field <= 0:
            return {}
        want = {(r.exchange.endpoint, k) for r in results if not r.summary_only
                for k in _sample_keys(r)} - self._full
        if not want:
            return {}
        eps = sorted({e for e, _k in want})
        keys = sorted({k for _e, k in want})
        cur.execute("SELECT endpoint, field, count(*) FROM sample_keys WHERE endpoint = ANY(%s) "
                    "AND field = ANY(%s) GROUP BY endpoint, field", (eps, keys))
        counts = dict.fromkeys(want, 0)
        for ep, key, n in cur.fetchall():
            if (ep, key) in counts:
                counts[(ep, key)] = int(n)
        return counts

    def _choose_samples(self, res: Result, counts: dict[tuple[str, str], int]) -> list[str]:
        k = self.samples_per_field
        if k <= 0 or res.summary_only:
            return []
        ep = res.exchange.endpoint
        chosen = []
        for key in _sample_keys(res):
            ck = (ep, key)
            if ck in self._full:
                continue
            n = counts.get(ck, 0)
            if n < k:
                chosen.append(key)
                n += 1
                counts[ck] = n
            if n >= k:
                if len(self._full) > 1_000_000:
                    self._full.clear()
                self._full.add(ck)
        return chosen

    def _write_results(self, cur: Any, results: Sequence[Result]) -> int:
        inst = self.instance
        ids = list({r.exchange.id for r in results})
        times = [r.exchange.started for r in results]
        # the batch's ids already stored (inside the transaction: a retried batch)
        cur.execute("SELECT id FROM exchanges WHERE id = ANY(%s) AND time >= %s AND time <= %s",
                    (ids, min(times), max(times)))
        existing = {r[0] for r in cur.fetchall()}
        counts = self._sample_counts(cur, [r for r in results if r.exchange.id not in existing])
        ex_rows: list[tuple[Any, ...]] = []
        diff_rows: list[tuple[Any, ...]] = []
        sample_rows: list[tuple[Any, ...]] = []
        key_rows: list[tuple[Any, ...]] = []
        diffs: list[list[tuple[str, str, bool]] | None] = []   # of each row, for rollups
        for res in results:
            ex = res.exchange
            if ex.id in existing:
                continue
            existing.add(ex.id)
            # whose traffic: the sidecar that mirrored it (a fleet), else this writer's
            who = ex.instance or inst
            chosen = self._choose_samples(res, counts)
            ex_rows.append((*exchange_row(res, bool(chosen)), who))
            if res.differences:
                rows = difference_rows(res)
                diff_rows.extend((*row, who) for row in rows)
                diffs.append([(r[5], r[6], r[9] == 1) for r in rows])
            else:
                diffs.append(None)
            if chosen:
                sample_rows.append((ex.id, ex.endpoint, float(ex.started), res.verdict,
                                    sample_blob(res), who))
                key_rows.extend((ex.endpoint, key, ex.id, float(ex.started)) for key in chosen)
        _copy(cur, "exchanges", (*EX_COLS, "instance"), _EX_TYPES, ex_rows)
        _copy(cur, "differences", _DIFF_COLS, _DIFF_TYPES, diff_rows)
        _copy(cur, "samples", _SAMPLE_COLS, _SAMPLE_TYPES, sample_rows)
        if key_rows:
            key_rows.sort()
            cur.executemany("INSERT INTO sample_keys(endpoint, field, exchange_id, time) "
                            "VALUES (%s,%s,%s,%s) ON CONFLICT DO NOTHING", key_rows)
        self._write_rollups(cur, _rollups_by_instance(ex_rows, diffs))
        return len(ex_rows)

    def _write_rollups(self, cur: Any, minutes: dict[tuple[int, str, str], Minute]) -> None:
        """Merge ``minutes`` (by minute, endpoint and the instance whose traffic they
        are) into this writer's own aggregate rows (``writer``: its instance name)."""
        if not minutes:
            return
        # these hours are read from their minutes until compacted again; the shared
        # lock, held to the commit, orders this write with a compaction of the same
        # hour (:mod:`shadowproxy.store.hours`)
        touched = hours_of(k[0] for k in minutes)
        for h in touched:
            cur.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)",
                        (hours.HOUR_LOCK, h // HOUR))
        hours.reopen(query_of(cur), touched)
        me = self.instance
        # the rows this batch merges into exist before they are locked: FOR UPDATE
        # locks only rows that exist, so two writers under one name (two comparator
        # pools given one config) that both began a minute would each keep only their
        # own sketches. An empty row is made for each (kind, minute, endpoint,
        # instance) the batch has values of (ON CONFLICT DO NOTHING waits for another
        # writer's uncommitted one), in key order; each is filled below, in this
        # transaction.
        sides = ("primary", "candidate", "secondary")
        need = sorted((kind, minute, endpoint, inst)
                      for (minute, endpoint, inst), m in minutes.items()
                      for kind, present in zip(ROLLUP_BLOBS, (
                          *(getattr(m, k).count for k in sides), m.pairs.items),
                          strict=True) if present)
        if need:
            cur.executemany(
                "INSERT INTO rollup_blobs(kind, minute, endpoint, instance, writer, data) "
                "VALUES (%s,%s,%s,%s,%s,'') ON CONFLICT DO NOTHING",
                [(k, mi, e, i, me) for k, mi, e, i in need])
        # this writer's blobs for these minutes: one range of the (kind, minute, ...)
        # key a kind (a batch spans a few minutes), locked
        lo, hi = min(k[0] for k in minutes), max(k[0] for k in minutes)
        cur.execute(
            "SELECT kind, minute, endpoint, instance, data FROM rollup_blobs WHERE "
            "kind = ANY(%s) AND minute BETWEEN %s AND %s AND writer = %s FOR UPDATE",
            (list(ROLLUP_BLOBS), lo, hi, me))
        have = {(kind, int(minute), endpoint, inst): data
                for kind, minute, endpoint, inst, data in cur.fetchall()}
        rows: list[tuple[Any, ...]] = []
        blob_rows: list[tuple[Any, ...]] = []
        for (minute, endpoint, inst), m in minutes.items():
            rows.append((minute, endpoint, inst, me, *m.counts, *m.sums))
            new = added_blobs(m, lambda kind: have.get((kind, minute, endpoint, inst)))  # noqa: B023
            blob_rows.extend((kind, minute, endpoint, inst, me, data)
                             for kind, data in zip(ROLLUP_BLOBS, new, strict=True)
                             if data is not None)
        rows.sort(key=lambda row: (row[0], row[1], row[2]))   # lock order: see the module
        blob_rows.sort(key=lambda row: (row[0], row[1], row[2], row[3]))
        cols = ",".join(ROLLUP_COLS)
        sets = ",".join(f"{k}=rollups.{k}+excluded.{k}" for k in ROLLUP_COLS)
        marks = ",".join(["%s"] * (4 + len(ROLLUP_COLS)))
        cur.executemany(f"INSERT INTO rollups(minute, endpoint, instance, writer, {cols}) "
                        f"VALUES ({marks}) ON CONFLICT (minute, endpoint, instance, writer) "
                        f"DO UPDATE SET {sets}", rows)
        if blob_rows:
            cur.executemany(
                "INSERT INTO rollup_blobs(kind, minute, endpoint, instance, writer, data) "
                "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (kind, minute, endpoint, instance, "
                "writer) DO UPDATE SET data=excluded.data", blob_rows)
        field_rows = [(minute, endpoint, inst, me, fld, kind, *row)
                      for (minute, endpoint, inst), m in minutes.items()
                      for (fld, kind), row in m.fields.items()]
        field_rows.sort(key=lambda row: row[:6])
        if field_rows:
            cur.executemany(
                "INSERT INTO field_rollups(minute, endpoint, instance, writer, field, kind, "
                "rows, noise_rows, exchanges) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (minute, endpoint, instance, writer, field, kind) DO UPDATE SET "
                "rows=field_rollups.rows+excluded.rows, "
                "noise_rows=field_rollups.noise_rows+excluded.noise_rows, "
                "exchanges=field_rollups.exchanges+excluded.exchanges", field_rows)
        set_rows = [(minute, endpoint, inst, me, key, n)
                    for (minute, endpoint, inst), m in minutes.items()
                    for key, n in m.diff_sets.items()]
        set_rows.sort(key=lambda row: row[:5])
        if set_rows:
            cur.executemany(
                "INSERT INTO diff_sets(minute, endpoint, instance, writer, fields, count) "
                "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (minute, endpoint, instance, writer, "
                "fields) DO UPDATE SET count=diff_sets.count+excluded.count", set_rows)

    def add_outcomes(self, rows: Sequence[OutcomeRow], instance: str | None = None) -> None:
        """Counts only ever added to: a sidecar and the comparators that count the
        outcomes of its traffic add to its rows together, each in key order."""
        if not rows:
            return
        merged: dict[tuple[int, str, str, str], int] = defaultdict(int)
        for minute, endpoint, outcome, reason, count in rows:
            merged[(int(minute // 60) * 60, endpoint, outcome, reason or "")] += int(count)
        inst = instance or self.instance

        def run(cur: Any) -> None:
            cur.executemany(
                "INSERT INTO outcomes(minute, endpoint, instance, outcome, reason, count) "
                "VALUES (%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (minute, endpoint, instance, outcome, reason) "
                "DO UPDATE SET count = outcomes.count + excluded.count",
                [(k[0], k[1], inst, k[2], k[3], v) for k, v in sorted(merged.items())])

        self._write("write outcomes to", run)

    def save_noise(self, evidence: Sequence[Any]) -> None:
        if not evidence:
            return
        now = time.time()
        rows = [(e.endpoint, e.field, e.n, e.r, e.s, float(e.p_value), 1 if e.noise else 0,
                 1 if getattr(e, "provisional", False) else 0,
                 float(getattr(e, "decided_at", now) or now), now, self.instance)
                for e in evidence]
        rows.sort(key=lambda row: (row[0], row[1]))     # lock order: see the module

        def run(cur: Any) -> None:
            cur.executemany(
                "INSERT INTO noise(endpoint, field, n, r, s, p_value, noise, provisional, "
                "decided_at, updated, instance) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "ON CONFLICT (endpoint, field) DO UPDATE SET n=excluded.n, r=excluded.r, "
                "s=excluded.s, p_value=excluded.p_value, noise=excluded.noise, "
                "provisional=excluded.provisional, decided_at=excluded.decided_at, "
                "updated=excluded.updated, instance=excluded.instance", rows)

        self._write("write noise to", run)

    def save_noise_counts(self, learner: str, rows: Sequence[NoiseCounts]) -> None:
        if not rows:
            return
        now = time.time()
        data = [(e, f, learner, int(n), int(r), int(s), now) for e, f, n, r, s in rows]

        def run(cur: Any) -> None:
            cur.executemany(
                "INSERT INTO noise_counts(endpoint, field, learner, n, r, s, updated) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (endpoint, field, learner) DO "
                "UPDATE SET n=excluded.n, r=excluded.r, s=excluded.s, updated=excluded.updated",
                data)

        self._write("write noise counts to", run)
