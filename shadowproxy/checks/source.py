"""The store as a :class:`~shadowproxy.checks.evaluate.Source` for one time window."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ..models import failed
from ..store.base import Store, glob_escape
from ..store.rollup import forgiven
from ..store.sketch import Sketch
from . import sequential
from .evaluate import (
    MAX_EXAMPLES,
    PRIMARY,
    SECONDARY,
    Counts,
    ErrorPairs,
    FieldInfo,
    ForbiddenHit,
)

SLOW_SCAN = 500             # recent exchanges searched for a slow example
FIELD_ALPHA = 0.01          # a field counts against the candidate at this level


def beyond_secondary(window_real: int, learned: tuple[int, int] | None) -> bool:
    """A field's differences count against the candidate only when it differs from
    the primary on the field more often than the secondary does, shown by the
    sequential sign test (:func:`.sequential.more_than_secondary`) at
    :data:`FIELD_ALPHA`: on the learner's (R, S) when the secondary has shown the
    field, else on the window's exchanges with a real difference on it against S = 0
    (one stray difference never counts; about eight with none from the secondary
    do)."""
    r, s = learned if learned is not None and learned[1] > 0 else (window_real, 0)
    return sequential.more_than_secondary(r, s, FIELD_ALPHA)


def against_candidate(store: Store, stats: Sequence[Any], since: float | None,
                      until: float | None) -> list[Any]:
    """``stats`` (:class:`~shadowproxy.store.base.EndpointStats` of the window) with
    ``diffs`` counted as ``check`` counts them: the exchanges whose real differences
    count against the candidate (:meth:`StoreSource.counts`); the others move to
    ``noise``, so every count still adds up. ``report``, the admin API and the UI show
    these, so the same store and window give one diff rate everywhere."""
    src = StoreSource(store, since, until)
    out = []
    for st in stats:
        c = src.counts(st.endpoint) if st.diffs else None
        if c is None or c.diffs == st.diffs:
            out.append(st)
        else:
            out.append(dataclasses.replace(st, diffs=c.diffs,
                                           noise=st.noise + st.diffs - c.diffs))
    return out


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
        self._noise: dict[tuple[str, str], tuple[int, int]] | None = None
        self._secondary: set[str] | None = None
        self._sketches: dict[str, tuple[Sketch, Sketch, Sketch]] | None = None
        self._pair_cache: dict[tuple[str, ...], tuple[list[float], list[float],
                                                      list[float]]] = {}

    def _all_stats(self) -> dict[str, Any]:
        if self._stats is None:
            # counts only: the latency quantiles come from latency_sketches, read once
            self._stats = {s.endpoint: s for s in self.store.endpoint_stats(
                self.since, self.until, "*", quantiles=False)}
        return self._stats

    def endpoints(self) -> list[str]:
        return sorted(self._all_stats())

    def counts(self, endpoint: str) -> Counts:
        """Verdict counts; diff exchanges whose real differences are all on fields that
        do not count against the candidate (learned as noise since, or not shown to
        differ more often than with the secondary: :meth:`_counts_against`) are
        forgiven (:func:`effective_diffs`, computed from the stored sets of real fields:
        :func:`shadowproxy.store.rollup.forgiven`); those of them not on learned noise
        are ``uncertain``: they cannot fail the candidate, and keep it from passing."""
        s = self._all_stats().get(endpoint)
        if s is None:
            return Counts(0, 0, 0)
        compared = s.matches + s.diffs + s.noise
        if not s.diffs:
            return Counts(s.exchanges, compared, 0)
        # fields with differences written as real that do not count against the
        # candidate now: learned as noise since, or not (yet) beyond the secondary's
        fields = self._field_stats(endpoint)
        learned = {f.field for f in fields if f.noise and f.count > f.noise_count}
        not_counted = {f.field for f in fields
                       if f.count > f.noise_count and not self._counts_against(endpoint, f)}
        if not not_counted:
            return Counts(s.exchanges, compared, s.diffs)
        if self._sets is None:
            self._sets = self.store.diff_sets(self.since, self.until, "*")
        sets = self._sets.get(endpoint, {})
        n = forgiven(sets, not_counted)
        n_learned = forgiven(sets, learned) if learned else 0
        return Counts(s.exchanges, compared, s.diffs - n, n, n - n_learned)

    def error_pairs(self, endpoint: str) -> ErrorPairs:
        """From the aggregates' counts of failures on the same exchanges; examples from
        the minutes that hold one."""
        if self._pairs is None:
            self._pairs = self.store.error_pairs(self.since, self.until, "*")
        n, both, cand, prim = self._pairs.get(endpoint, (0, 0, 0, 0))
        examples = self.store.candidate_failures(endpoint, self.since, self.until,
                                                 MAX_EXAMPLES) if cand else []
        return ErrorPairs(n, both, cand, prim, tuple(examples))

    def use_sketches(self, sketches: dict[str, tuple[Sketch, Sketch, Sketch]]) -> None:
        """The window's latency sketches, already read (by a report over the same
        window and snapshot)."""
        self._sketches = sketches

    def _all_sketches(self) -> dict[str, tuple[Sketch, Sketch, Sketch]]:
        if self._sketches is None:
            self._sketches = self.store.latency_sketches(self.since, self.until, "*",
                                                         secondary=True)
        return self._sketches

    def latency_cumulative(self, endpoints: Sequence[str], baseline: str = PRIMARY
                           ) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        """From the window's latency sketches (every latency, at the sketches' bucket
        edges): the baseline's (primary's, or the secondary's) and the candidate's."""
        side = 2 if baseline == SECONDARY else 0
        bs, cs = Sketch(), Sketch()
        for ep in endpoints:
            got = self._all_sketches().get(ep)
            if got is not None:
                bs.merge(got[side])
                cs.merge(got[1])
        return bs.cumulative(), cs.cumulative()

    def _triples(self, endpoints: Sequence[str]
                 ) -> tuple[list[float], list[float], list[float]]:
        """The window's latency pairs of ``endpoints`` with their secondary latency
        (``Store.latency_triples_of``: every pair up to ``PAIR_WINDOW``, beyond that a
        uniform sample of that many); the count of pairs is the sketches' (every pair),
        which saves the store a read."""
        key = tuple(endpoints)
        got = self._pair_cache.get(key)
        if got is None:
            n = 0
            for ep in endpoints:
                sk = self._all_sketches().get(ep)
                if sk is not None:
                    n += sk[0].count
            got = self.store.latency_triples_of(list(endpoints), self.since, self.until,
                                                pairs=n) if n else ([], [], [])
            self._pair_cache[key] = got
        return got

    def latency_pairs(self, endpoints: Sequence[str], baseline: str = PRIMARY
                      ) -> tuple[list[float], list[float]]:
        """(baseline, candidate) latency of each pair of :meth:`_triples`; with the
        secondary as the baseline, of the pairs the secondary answered."""
        p, c, s = self._triples(endpoints)
        if baseline == SECONDARY:
            keep = [i for i, x in enumerate(s) if not math.isnan(x)]
            return [s[i] for i in keep], [c[i] for i in keep]
        return p, c

    def secondary_latencies(self, endpoint: str) -> tuple[int, int]:
        """(latency pairs, the secondary's latencies) of ``endpoint`` in the window, from
        the sketches."""
        got = self._all_sketches().get(endpoint)
        return (0, 0) if got is None else (got[0].count, got[2].count)

    def has_secondary(self, endpoint: str) -> bool:
        """The secondary answered exchanges of ``endpoint`` in the window."""
        if self._secondary is None:
            self._secondary = self.store.secondary_endpoints(self.since, self.until)
        return endpoint in self._secondary

    def _learned(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(endpoint, field) → the noise learner's (R, S) (fields the secondary has
        shown; a field it never showed has no row: S = 0)."""
        if self._noise is None:
            self._noise = {(r.endpoint, r.field): (r.r, r.s)
                           for r in self.store.noise(include_not_noise=True)}
        return self._noise

    def _counts_against(self, endpoint: str, f: Any) -> bool:
        """Whether the real differences on field ``f`` count against the candidate:
        not learned as noise, and — where there is a secondary — shown to differ more
        often with the candidate than with the secondary (:func:`beyond_secondary`)."""
        if f.noise or f.count <= f.noise_count:
            return False
        if not self.has_secondary(endpoint):
            return True
        real = f.exchanges if not f.noise_count else min(f.exchanges, f.count - f.noise_count)
        return beyond_secondary(real, self._learned().get((endpoint, f.field)))

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
               for f in self._field_stats(endpoint) if self._counts_against(endpoint, f)]
        out.sort(key=lambda f: (-f.exchanges, f.field))
        return out[:limit]

    def forbidden(self, endpoint: str, kinds: Sequence[str]) -> list[ForbiddenHit]:
        """Fields with a difference of a forbidden kind that is not noise (the aggregates
        count the rows of each kind judged noise when written); fields learned as noise
        since are skipped."""
        hits = []
        for f in self._field_stats(endpoint):
            if not self._counts_against(endpoint, f):
                continue
            for kind in kinds:
                real = f.kinds.get(kind, 0) - f.kinds_noise.get(kind, 0)
                if real > 0:
                    ex = self.store.difference_example(f.endpoint or endpoint, f.field, kind,
                                                       self.since, self.until)
                    hits.append(ForbiddenHit(f.endpoint or endpoint, f.field, kind, real,
                                             ex or f.example_id))
        return hits

    def slow_example(self, endpoint: str, baseline: str = PRIMARY) -> str | None:
        """Among recent exchanges, the one with the largest candidate / baseline latency
        (primary's, or the secondary's where it answered)."""
        rows = self.store.exchanges(glob_escape(endpoint), None, self.since, self.until,
                                    SLOW_SCAN)
        best, best_ratio = None, 0.0
        for r in rows:
            if failed(r.candidate_status, r.candidate_error) or \
                    failed(r.primary_status, r.primary_error) or r.primary_latency <= 0:
                continue
            ref = r.primary_latency
            if baseline == SECONDARY:
                if not r.secondary_status or r.secondary_status <= 0 or \
                        not r.secondary_latency or r.secondary_latency <= 0:
                    continue
                ref = r.secondary_latency
            ratio = r.candidate_latency / ref
            if ratio > best_ratio:
                best, best_ratio = r.id, ratio
        return best
