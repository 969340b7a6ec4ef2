"""The store as a :class:`~shadowproxy.checks.evaluate.Source` for one time window."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from ..store.base import Store, glob_escape
from .evaluate import (
    MAX_EXAMPLES,
    Counts,
    ErrorPairs,
    FieldInfo,
    ForbiddenHit,
    effective_diffs,
)

PAGE = 5000                 # exchange rows read per query when counting error pairs
FORBIDDEN_SCAN = 100        # exchanges inspected to confirm a forbidden kind is not noise
SLOW_SCAN = 500             # recent exchanges searched for a slow example


def _failed(status: int, error: str | None) -> bool:
    return error is not None or status <= 0 or 500 <= status <= 599


class StoreSource:
    """Reads one window ``[since, until)`` of a store (``None``: unbounded)."""

    def __init__(self, store: Store, since: float | None, until: float | None) -> None:
        self.store = store
        self.since = since
        self.until = until
        self._stats: dict[str, Any] | None = None
        self._fields: dict[str, list[Any]] = {}

    def _all_stats(self) -> dict[str, Any]:
        if self._stats is None:
            self._stats = {s.endpoint: s for s in
                           self.store.endpoint_stats(self.since, self.until, "*")}
        return self._stats

    def endpoints(self) -> list[str]:
        return sorted(self._all_stats())

    def counts(self, endpoint: str) -> Counts:
        """Verdict counts; diff exchanges whose real differences are all on fields the
        noise learner has learned as noise since are forgiven (:func:`effective_diffs`)."""
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
        candidates: set[str] = set()
        for fld in sorted(noise_now):
            candidates.update(r.id for r in self._iter_exchanges(endpoint, "diff", fld))
        real_sets = []
        for xid in sorted(candidates):
            doc = self.store.exchange(xid) or {}
            real_sets.append({d.get("field") for d in doc.get("differences", ())
                              if not d.get("noise")})
        _still, forgiven = effective_diffs(real_sets, noise_now)
        return Counts(s.exchanges, compared, s.diffs - forgiven, forgiven)

    def _iter_exchanges(self, endpoint: str, verdict: str | None = None,
                        field: str | None = None) -> Iterator[Any]:
        """Every exchange row of ``endpoint`` in the window (newest first), read in pages
        of :data:`PAGE` rows, paging by time (rows sharing the oldest time stamp of a page
        are read again and skipped)."""
        g = glob_escape(endpoint)
        until = self.until
        limit = PAGE
        seen: set[str] = set()
        while True:
            rows = self.store.exchanges(g, verdict, self.since, until, limit, field=field)
            for r in rows:
                if r.id not in seen:
                    seen.add(r.id)
                    yield r
            if len(rows) < limit:
                return
            nxt = math.nextafter(rows[-1].time, math.inf)
            if until is not None and nxt >= until:
                limit *= 2          # more than a page of rows share one time stamp
                continue
            until = nxt

    def error_pairs(self, endpoint: str) -> ErrorPairs:
        """Counted from the exchange rows (the stats have the failures of each side but
        not which fell on the same exchanges)."""
        n = both = cand = prim = 0
        examples: list[str] = []
        for r in self._iter_exchanges(endpoint):
            n += 1
            c = _failed(r.candidate_status, r.candidate_error)
            p = _failed(r.primary_status, r.primary_error)
            if c and p:
                both += 1
            elif c:
                cand += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(r.id)
            elif p:
                prim += 1
        return ErrorPairs(n, both, cand, prim, tuple(examples))

    def latencies(self, endpoint: str) -> tuple[list[float], list[float]]:
        p, c = self.store.latencies(glob_escape(endpoint), self.since, self.until)
        return list(p), list(c)

    def _field_stats(self, endpoint: str) -> list[Any]:
        cached = self._fields.get(endpoint)
        if cached is None:
            cached = self._fields[endpoint] = self.store.field_stats(
                glob_escape(endpoint), self.since, self.until)
        return cached

    def fields(self, endpoint: str, limit: int) -> list[FieldInfo]:
        out = [FieldInfo(f.endpoint or endpoint, f.field, f.exchanges, dict(f.kinds),
                         f.example_id)
               for f in self._field_stats(endpoint)
               if not f.noise and f.count > f.noise_count]
        out.sort(key=lambda f: (-f.exchanges, f.field))
        return out[:limit]

    def forbidden(self, endpoint: str, kinds: Sequence[str]) -> list[ForbiddenHit]:
        """Fields with a difference of a forbidden kind that is not noise.

        Fields learned as noise are skipped. A field whose rows of the kind outnumber its
        noise rows certainly has one that is not noise; otherwise recent exchanges with
        the field are inspected to find one."""
        hits = []
        for f in self._field_stats(endpoint):
            if f.noise or f.count <= f.noise_count:
                continue
            for kind in kinds:
                k = f.kinds.get(kind, 0)
                if k == 0:
                    continue
                if k > f.noise_count:
                    hits.append(ForbiddenHit(f.endpoint or endpoint, f.field, kind, k,
                                             self._example(endpoint, f.field, kind)
                                             or f.example_id))
                    continue
                ex = self._example(endpoint, f.field, kind)
                if ex is not None:
                    hits.append(ForbiddenHit(f.endpoint or endpoint, f.field, kind, k, ex))
        return hits

    def _example(self, endpoint: str, field: str, kind: str) -> str | None:
        """An exchange with a difference on ``field`` of ``kind`` that is not noise."""
        rows = self.store.exchanges(glob_escape(endpoint), "diff", self.since, self.until,
                                    FORBIDDEN_SCAN, field=field)
        for r in rows:
            doc = self.store.exchange(r.id) or {}
            for d in doc.get("differences", ()):
                if d.get("field") == field and d.get("kind") == kind and not d.get("noise"):
                    return r.id
        return None

    def slow_example(self, endpoint: str) -> str | None:
        """Among recent exchanges, the one with the largest candidate/primary latency."""
        rows = self.store.exchanges(glob_escape(endpoint), None, self.since, self.until,
                                    SLOW_SCAN)
        best, best_ratio = None, 0.0
        for r in rows:
            if _failed(r.candidate_status, r.candidate_error) or \
                    _failed(r.primary_status, r.primary_error) or r.primary_latency <= 0:
                continue
            ratio = r.candidate_latency / r.primary_latency
            if ratio > best_ratio:
                best, best_ratio = r.id, ratio
        return best
