"""Reading a window ``[since, until)`` from the per-minute aggregates
(:mod:`shadowproxy.store.rollup`), for every engine.

A window is read as its whole minutes, from the aggregate tables (``rollups``,
``rollup_blobs``, ``field_rollups``, ``diff_sets``), plus its ragged ends (less than a minute each),
aggregated from the exchange and difference rows by the same code that builds the
aggregates: the counts of a window are exactly those of its rows, whatever its bounds.

The SQL here is engine-neutral: it runs through a :data:`Query` callable taking ``?``
placeholders (SQLite's; the PostgreSQL store translates them to ``%s``), and a
:class:`Scope` adds a condition on every table read (PostgreSQL: ``instance = ?``, so
readers sum across the writing instances or keep one). Aggregate tables may hold several
rows per (minute, endpoint) (one per writing instance): every read sums or merges them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .rollup import PAIR_SAMPLE, Minute, aggregate

# run one statement (``?`` placeholders) and give its rows
Query = Callable[[str, Sequence[Any]], Iterable[Sequence[Any]]]

# the rollups' counters, in :data:`shadowproxy.store.rollup.COUNTS`' order, and the sums
ROLLUP_COLS = ("exchanges", "matches", "diffs", "noise", "errors", "candidate_5xx",
               "primary_5xx", "candidate_errors", "primary_errors", "latency_pairs",
               "both_failed", "candidate_only_failed", "primary_only_failed",
               "primary_latency_sum", "candidate_latency_sum")
# the kinds of rollup_blobs: a latency sketch per side and the pair sample (apart from the
# counters, so that reading counts never reads the blobs' pages)
ROLLUP_BLOBS = ("primary", "candidate", "secondary", "pairs")
# the exchanges table's columns, the same in both engines (PostgreSQL adds an instance)
EX_COLS = ("id", "time", "endpoint", "route", "method", "path", "query", "verdict",
           "primary_status", "candidate_status", "secondary_status", "primary_latency",
           "candidate_latency", "secondary_latency", "primary_size", "candidate_size",
           "primary_error", "candidate_error", "diff_count", "noise_count", "sampled")
COUNT_COLS = ROLLUP_COLS[:-2]      # the counters (the last two are latency sums)
EDGE_COLS = ("id", "endpoint", "verdict", "primary_status", "primary_error",
             "primary_latency", "candidate_status", "candidate_error", "candidate_latency",
             "secondary_status", "secondary_latency")


HOUR = 3600
OPEN, COMPACTED = 0, 1        # the states of an hour in ``hours`` (:mod:`.hours`)


def hour_of(t: float) -> int:
    """The start of the hour ``t`` falls in."""
    return int(t // HOUR) * HOUR


def hours_of(minutes: Iterable[int]) -> list[int]:
    """The distinct hours of some minutes, ascending."""
    return sorted({hour_of(m) for m in minutes})


def compacted(q: Query, lo: float | None, hi: float | None) -> list[int]:
    """The compacted hours wholly inside ``[lo, hi)`` (either open when None), ascending."""
    clauses: list[str] = ["state = ?"]
    params: list[Any] = [COMPACTED]
    if lo is not None:
        clauses.append("hour >= ?")
        params.append(lo)
    if hi is not None:
        clauses.append("hour <= ?")
        params.append(hi - HOUR)
    return [int(r[0]) for r in q(f"SELECT hour FROM hours WHERE {' AND '.join(clauses)} "
                                 "ORDER BY hour", params)]


Span = tuple[float | None, float | None]


def split(lo: float | None, hi: float | None, hours: Sequence[int]
          ) -> tuple[list[tuple[int, int]], list[Span]]:
    """Whole minutes ``[lo, hi)`` (either open when None) → (runs of the compacted
    ``hours`` (ascending, inside the window) as ``[start, end)``, the spans between them
    to read from the minutes)."""
    runs: list[tuple[int, int]] = []
    for h in hours:
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + HOUR)
        else:
            runs.append((h, h + HOUR))
    rest: list[Span] = []
    at: float | None = lo
    for a, b in runs:
        if at is None or at < a:
            rest.append((at, a))
        at = b
    if at is None or hi is None or at < hi:
        rest.append((at, hi))
    return runs, rest


@dataclass(frozen=True, slots=True)
class Scope:
    """A condition every read adds for every table (``?`` placeholders), e.g. the
    PostgreSQL store's ``instance = ?``; :data:`ALL` for none."""

    clauses: tuple[str, ...] = ()
    params: tuple[Any, ...] = ()

    def sql(self) -> str:
        """`` AND ...`` to append to a WHERE clause ('' for none)."""
        return "".join(f" AND {c}" for c in self.clauses)


ALL = Scope()


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the engines in the shared reads."""

    diff_order: str = "rowid"     # the differences' column in insertion order
    diff_time: bool = False       # bound the differences by time too (partition pruning)
    instance: bool = False        # exchanges have an instance column (whose traffic)


SQLITE = Dialect()


def blobs(m: Minute, pairs_k: int = PAIR_SAMPLE) -> tuple[bytes | None, ...]:
    """A minute's sketches and pair sample as stored (None for empty ones), the sample
    of ``pairs_k`` pairs (an hour's, :mod:`.hours`: ``PAIR_WINDOW``)."""
    return (m.primary.to_bytes() if m.primary.count else None,
            m.candidate.to_bytes() if m.candidate.count else None,
            m.secondary.to_bytes() if m.secondary.count else None,
            m.pairs.to_bytes(pairs_k) if m.pairs.items else None)


def added_blobs(m: Minute, stored: Callable[[str], bytes | memoryview | None]
                ) -> tuple[bytes | None, ...]:
    """What a writer stores for a minute after adding ``m`` (a batch's part of it) to
    what is stored (``stored(kind)``, one of :data:`ROLLUP_BLOBS`): per kind the new
    bytes, or None where nothing changes (``m`` has nothing of that kind)."""
    sides = (m.primary, m.candidate, m.secondary)
    out: list[bytes | None] = [s.fold_into(stored(kind)) if s.count else None
                               for kind, s in zip(ROLLUP_BLOBS, sides, strict=False)]
    if m.pairs.items:
        m.pairs.merge_bytes(stored("pairs"))
        out.append(m.pairs.to_bytes())
    else:
        out.append(None)
    return tuple(out)


def merge_blob(m: Minute, kind: str, blob: bytes | memoryview | None) -> None:
    """Merge one stored blob of ``kind`` (one of :data:`ROLLUP_BLOBS`) into ``m``."""
    if blob is None:
        return
    if kind == "pairs":
        m.pairs.merge_bytes(bytes(blob))
    else:
        getattr(m, kind).merge_bytes(bytes(blob))


@dataclass(frozen=True, slots=True)
class Window:
    """How a window ``[since, until)`` splits: whole minutes ``[lo, hi)`` (None: open)
    read from the aggregates, and the ragged ends read from the rows."""

    lo: float | None
    hi: float | None
    edges: tuple[tuple[float | None, float | None], ...]
    whole: bool          # any whole minutes at all

    @classmethod
    def of(cls, since: float | None, until: float | None) -> Window:
        lo = None if since is None else math.ceil(since / 60.0) * 60
        hi = None if until is None else math.floor(until / 60.0) * 60
        if lo is not None and hi is not None and lo >= hi:
            return cls(None, None, ((since, until),), False)
        edges: list[tuple[float | None, float | None]] = []
        if since is not None and lo is not None and since < lo:
            edges.append((since, lo))
        if until is not None and hi is not None and hi < until:
            edges.append((hi, until))
        return cls(lo, hi, tuple(edges), True)


def range_clauses(col: str, lo: float | None, hi: float | None
                  ) -> tuple[list[str], list[Any]]:
    """``lo <= col < hi`` (either bound None: open) as clauses and their parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    if lo is not None:
        clauses.append(f"{col} >= ?")
        params.append(lo)
    if hi is not None:
        clauses.append(f"{col} < ?")
        params.append(hi)
    return clauses, params


def between(col: str, lo: float | None, hi: float | None) -> tuple[str, list[Any]]:
    """``col`` in ``[lo, hi)`` (either open when None)."""
    clauses, params = range_clauses(col, lo, hi)
    return " AND ".join(clauses) or "1=1", params


def endpoint_clause(endpoints: Sequence[str] | None, col: str = "endpoint"
                    ) -> tuple[str, list[Any]]:
    if endpoints is None:
        return "1=1", []
    return f"{col} IN ({','.join('?' * len(endpoints))})", list(endpoints)


def read(q: Query, since: float | None, until: float | None,
         endpoints: Sequence[str] | None, *, scope: Scope = ALL, dialect: Dialect = SQLITE,
         sketches: bool = False, secondary: bool = False, pairs: bool = False,
         fields: bool = False, sets: bool = False, pair_bound: int | None = None,
         counts: bool = True) -> dict[str, Minute]:
    """endpoint → the aggregate of the window (``endpoints``: None for all). Only the
    parts asked for are read (the counts unless ``counts`` is False; ``sketches``:
    the primary's and the candidate's, ``secondary``: the secondary's too).
    ``pair_bound``: only pairs of a smaller key are wanted (see
    :class:`shadowproxy.store.rollup.Pairs`)."""
    if endpoints is not None and not endpoints:
        return {}
    win = Window.of(since, until)
    out: dict[str, Minute] = {}

    def minute_for(ep: str) -> Minute:
        m = out.get(ep)
        if m is None:
            m = out[ep] = Minute()
            if pair_bound is not None:
                m.pairs.bound = pair_bound
        return m

    if win.whole:
        # the window's compacted hours from the hour rows, its other minutes from the
        # minute rows (:mod:`.hours`)
        runs, rest = split(win.lo, win.hi, compacted(q, win.lo, win.hi))
        for prefix, col, spans in (("", "minute", rest), ("hour_", "hour", runs)):
            for lo, hi in spans:
                _whole(q, prefix, col, lo, hi, endpoints, scope, minute_for,
                       counts=counts, sketches=sketches, secondary=secondary, pairs=pairs,
                       fields=fields, sets=sets)
    for t0, t1 in win.edges:
        for ep, m in edge(q, t0, t1, endpoints, scope=scope, dialect=dialect,
                          with_differences=fields or sets).items():
            minute_for(ep).merge(m)
    return out


def _whole(q: Query, prefix: str, col: str, lo: float | None, hi: float | None,
           endpoints: Sequence[str] | None, scope: Scope, minute_for: Callable[[str], Minute],
           *, counts: bool, sketches: bool, secondary: bool, pairs: bool, fields: bool,
           sets: bool) -> None:
    """Add the aggregate rows of ``[lo, hi)`` (the minute tables, or with ``prefix``
    ``hour_`` the hour tables; ``col`` their time column) to ``minute_for(endpoint)``."""
    where, params = between(col, lo, hi)
    ewhere, eparams = endpoint_clause(endpoints)
    where = f"{where} AND {ewhere}{scope.sql()}"
    params = params + eparams + list(scope.params)
    if counts:
        sums = ",".join(f"sum({k})" for k in ROLLUP_COLS)
        for row in q(f"SELECT endpoint, {sums} FROM {prefix}rollups WHERE {where} "
                     "GROUP BY endpoint", params):
            m = minute_for(row[0])
            n = m.counts
            for i, v in enumerate(row[1:1 + len(COUNT_COLS)]):
                n[i] += int(v or 0)
            m.sums[0] += float(row[-2] or 0.0)
            m.sums[1] += float(row[-1] or 0.0)
    kinds = [k for k, want in zip(ROLLUP_BLOBS, (sketches, sketches, secondary, pairs),
                                  strict=True) if want]
    for kind in kinds:
        for ep, blob in q(f"SELECT endpoint, data FROM {prefix}rollup_blobs WHERE kind=? AND "
                          f"{where}", [kind, *params]):
            merge_blob(minute_for(ep), kind, blob)
    if fields:
        for ep, fld, kind, n, nz, nx in q(
                "SELECT endpoint, field, kind, sum(rows), sum(noise_rows), sum(exchanges) "
                f"FROM {prefix}field_rollups WHERE {where} GROUP BY endpoint, field, kind",
                params):
            have = minute_for(ep).fields
            mine = have.get((fld, kind))
            if mine is None:
                have[(fld, kind)] = [int(n), int(nz), int(nx)]
            else:
                mine[0] += int(n)
                mine[1] += int(nz)
                mine[2] += int(nx)
    if sets:
        for ep, key, n in q(f"SELECT endpoint, fields, sum(count) FROM {prefix}diff_sets "
                            f"WHERE {where} GROUP BY endpoint, fields", params):
            ds = minute_for(ep).diff_sets
            ds[key] = ds.get(key, 0) + int(n)


def edge(q: Query, t0: float | None, t1: float | None, endpoints: Sequence[str] | None, *,
         scope: Scope = ALL, dialect: Dialect = SQLITE, with_differences: bool = True
         ) -> dict[str, Minute]:
    """endpoint → the aggregate of the exchange rows in ``[t0, t1)`` (and their
    differences): what the aggregates would hold for that span."""
    where, params = between("time", t0, t1)
    ewhere, eparams = endpoint_clause(endpoints)
    where = f"{where} AND {ewhere}{scope.sql()}"
    params = params + eparams + list(scope.params)
    diffs: dict[str, list[tuple[str, str, bool]]] = {}
    if with_differences:
        # through the exchange ids (differences are indexed by exchange, not by time)
        dwhere, dparams = between("time", t0, t1) if dialect.diff_time else ("1=1", [])
        for xid, fld, kind, nz in q(
                "SELECT exchange_id, field, kind, noise FROM differences WHERE "
                f"{dwhere} AND exchange_id IN (SELECT id FROM exchanges WHERE {where}) "
                f"ORDER BY {dialect.diff_order}", dparams + params):
            diffs.setdefault(xid, []).append((fld, kind, bool(nz)))
    rows = list(q(f"SELECT {','.join(EDGE_COLS)} FROM exchanges WHERE {where}", params))
    out: dict[str, Minute] = {}
    if not rows:
        return out
    (xid, ep, verdict, ps, pe, pl, cs, ce, cl, ss, sl) = zip(*rows, strict=True)
    aggregate(out, ep, xid, verdict, ps, pe, pl, cs, ce, cl, ss, sl)
    if with_differences:
        for x, e, v in zip(xid, ep, verdict, strict=True):
            d = diffs.get(x)
            if d:
                out[e].add_differences(v, d)
    return out
