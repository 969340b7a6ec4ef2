"""The store as a :class:`~shadowproxy.checks.evaluate.Source` for one time window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..store.base import Store, glob_escape
from ..store.rollup import failed, forgiven
from ..store.sketch import Sketch
from .evaluate import (
    MAX_EXAMPLES,
    Counts,
    ErrorPairs,
    FieldInfo,
    ForbiddenHit,
)

SLOW_SCAN = 500             # recent exchanges searched for a slow example


class StoreSource:
    """Reads one window ``[since, until)`` of a store (``None``: unbounded)."""

    def __init__(self, store: Store, since: float | None, until: float | None) -> None:
        self.store = store
        self.since = since
        self.until = until
        self._stats: dict[str, Any] | None = None
        self._all_fields: dict[str, list[Any]] | None = None
        self._sets: dict[str, dict[str, int]] | None = None
        self._pairs: dict[str, tuple[int, int, int, int]] | None = None
        self._sketches: dict[str, tuple[Sketch, Sketch, Sketch]] | None = None

    def _all_stats(self) -> dict[str, Any]:
        if self._stats is None:
            # counts only: the latency quantiles come from latency_sketches, read once
            self._stats = {s.endpoint: s for s in self.store.endpoint_stats(
                self.since, self.until, "*", quantiles=False)}
        return self._stats

    def endpoints(self) -> list[str]:
        return sorted(self._all_stats())

    def counts(self, endpoint: str) -> Counts:
        """Verdict counts; diff exchanges whose real differences are all on fields the
        noise learner has learned as noise since are forgiven (:func:`effective_diffs`,
        computed from the stored sets of real fields: :func:`shadowproxy.store.rollup.
        forgiven`)."""
        s = self._all_stats().get(endpoint)
        if s is None:
            return Counts(0, 0, 0)
        compared = s.matches + s.diffs + s.noise
        if not s.diffs:
            return Counts(s.exchanges, compared, 0)
        # fields learned as noise now that have differences written as real
        noise_now = {f.field for f in self._field_stats(endpoint)
                     if f.noise and f.count > f.noise_count}
        if not noise_now:
            return Counts(s.exchanges, compared, s.diffs)
        if self._sets is None:
            self._sets = self.store.diff_sets(self.since, self.until, "*")
        n = forgiven(self._sets.get(endpoint, {}), noise_now)
        return Counts(s.exchanges, compared, s.diffs - n, n)

    def error_pairs(self, endpoint: str) -> ErrorPairs:
        """From the aggregates' counts of failures on the same exchanges; examples from
        the minutes that hold one."""
        if self._pairs is None:
            self._pairs = self.store.error_pairs(self.since, self.until, "*")
        n, both, cand, prim = self._pairs.get(endpoint, (0, 0, 0, 0))
        examples = self.store.candidate_failures(endpoint, self.since, self.until,
                                                 MAX_EXAMPLES) if cand else []
        return ErrorPairs(n, both, cand, prim, tuple(examples))

    def _pairs_of(self, endpoints: Sequence[str]) -> int:
        stats = self._all_stats()
        return sum(stats[ep].latency_samples for ep in endpoints if ep in stats)

    def latencies(self, endpoint: str) -> tuple[list[float], list[float]]:
        p, c = self.store.latencies_of([endpoint], self.since, self.until,
                                       pairs=self._pairs_of([endpoint]))
        return list(p), list(c)

    def all_latencies(self, endpoints: Sequence[str]) -> tuple[list[float], list[float]]:
        p, c = self.store.latencies_of(list(endpoints), self.since, self.until,
                                       pairs=self._pairs_of(endpoints))
        return list(p), list(c)

    def use_sketches(self, sketches: dict[str, tuple[Sketch, Sketch, Sketch]]) -> None:
        """The window's latency sketches, already read (by a report over the same
        window and snapshot)."""
        self._sketches = sketches

    def latency_quantiles(self, endpoints: Sequence[str], q: float
                          ) -> tuple[int, float | None, float | None]:
        """From the window's latency sketches (every pair, within 1/128)."""
        if self._sketches is None:
            self._sketches = self.store.latency_sketches(self.since, self.until, "*",
                                                         secondary=False)
        ps, cs = Sketch(), Sketch()
        for ep in endpoints:
            got = self._sketches.get(ep)
            if got is not None:
                ps.merge(got[0])
                cs.merge(got[1])
        return ps.count, ps.quantile(q), cs.quantile(q)

    def _field_stats(self, endpoint: str) -> list[Any]:
        """The endpoint's field stats, from one read of every endpoint's."""
        if self._all_fields is None:
            self._all_fields = {}
            for f in self.store.field_stats(None, self.since, self.until):
                self._all_fields.setdefault(f.endpoint or "", []).append(f)
        return self._all_fields.get(endpoint, [])

    def fields(self, endpoint: str, limit: int) -> list[FieldInfo]:
        out = [FieldInfo(f.endpoint or endpoint, f.field, f.exchanges, dict(f.kinds),
                         f.example_id)
               for f in self._field_stats(endpoint)
               if not f.noise and f.count > f.noise_count]
        out.sort(key=lambda f: (-f.exchanges, f.field))
        return out[:limit]

    def forbidden(self, endpoint: str, kinds: Sequence[str]) -> list[ForbiddenHit]:
        """Fields with a difference of a forbidden kind that is not noise (the aggregates
        count the rows of each kind judged noise when written); fields learned as noise
        since are skipped."""
        hits = []
        for f in self._field_stats(endpoint):
            if f.noise or f.count <= f.noise_count:
                continue
            for kind in kinds:
                real = f.kinds.get(kind, 0) - f.kinds_noise.get(kind, 0)
                if real > 0:
                    ex = self.store.difference_example(f.endpoint or endpoint, f.field, kind,
                                                       self.since, self.until)
                    hits.append(ForbiddenHit(f.endpoint or endpoint, f.field, kind, real,
                                             ex or f.example_id))
        return hits

    def slow_example(self, endpoint: str) -> str | None:
        """Among recent exchanges, the one with the largest candidate/primary latency."""
        rows = self.store.exchanges(glob_escape(endpoint), None, self.since, self.until,
                                    SLOW_SCAN)
        best, best_ratio = None, 0.0
        for r in rows:
            if failed(r.candidate_status, r.candidate_error) or \
                    failed(r.primary_status, r.primary_error) or r.primary_latency <= 0:
                continue
            ratio = r.candidate_latency / r.primary_latency
            if ratio > best_ratio:
                best, best_ratio = r.id, ratio
        return best
