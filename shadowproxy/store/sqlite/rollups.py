"""The SQLite store's per-minute aggregates (:mod:`shadowproxy.store.rollup`): written
with each batch of results, read for a window.

A window ``[since, until)`` is read as its whole minutes, from the aggregates, plus its
ragged ends (less than a minute each), aggregated from the exchange and difference rows
by the same code that builds the aggregates: the counts of a window are exactly those
of its rows, whatever its bounds.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..rollup import Minute, rollup
from ..sketch import Sketch
from .schema import _ROLLUP_BLOBS, _ROLLUP_COLS

_COUNT_COLS = _ROLLUP_COLS[:-2]      # the counters (the last two are latency sums)
_EDGE_COLS = ("id", "endpoint", "verdict", "primary_status", "primary_error",
              "primary_latency", "candidate_status", "candidate_error", "candidate_latency",
              "secondary_status", "secondary_latency")


def write(c: sqlite3.Connection, results: Iterable[Any]) -> None:
    """Add ``results`` (already known to be new) to their minutes' aggregates."""
    minutes = rollup(results)
    if not minutes:
        return
    # the blobs these minutes have already: one range of the (kind, minute, endpoint)
    # key a kind (a batch spans a few minutes)
    have: dict[tuple[str, int, str], bytes] = {}
    lo, hi = min(k[0] for k in minutes), max(k[0] for k in minutes)
    for kind in _ROLLUP_BLOBS:
        for minute, endpoint, data in c.execute(
                "SELECT minute, endpoint, data FROM rollup_blobs WHERE kind=? AND "
                "minute BETWEEN ? AND ?", (kind, lo, hi)):
            if (minute, endpoint) in minutes:
                have[(kind, minute, endpoint)] = data
    rows: list[tuple[Any, ...]] = []
    blobs: list[tuple[str, int, str, bytes]] = []
    for (minute, endpoint), m in minutes.items():
        m.primary.merge_bytes(have.get(("primary", minute, endpoint)))
        m.candidate.merge_bytes(have.get(("candidate", minute, endpoint)))
        m.secondary.merge_bytes(have.get(("secondary", minute, endpoint)))
        m.pairs.merge_bytes(have.get(("pairs", minute, endpoint)))
        rows.append((minute, endpoint, *m.counts, *m.sums))
        blobs.extend((kind, minute, endpoint, data)
                     for kind, data in zip(_ROLLUP_BLOBS, _blobs(m), strict=True)
                     if data is not None)
    cols = ",".join(_ROLLUP_COLS)
    sets = ",".join(f"{k}={k}+excluded.{k}" for k in _ROLLUP_COLS)
    c.executemany(f"INSERT INTO rollups(minute, endpoint, {cols}) VALUES "
                  f"(?,?,{','.join('?' * len(_ROLLUP_COLS))}) "
                  f"ON CONFLICT(minute, endpoint) DO UPDATE SET {sets}", rows)
    c.executemany("INSERT INTO rollup_blobs(kind, minute, endpoint, data) VALUES (?,?,?,?) "
                  "ON CONFLICT(kind, minute, endpoint) DO UPDATE SET data=excluded.data",
                  blobs)
    _write_fields(c, minutes)


def _blobs(m: Minute) -> tuple[bytes | None, ...]:
    return (m.primary.to_bytes() if m.primary.count else None,
            m.candidate.to_bytes() if m.candidate.count else None,
            m.secondary.to_bytes() if m.secondary.count else None,
            m.pairs.to_bytes() if m.pairs.items else None)


def _write_fields(c: sqlite3.Connection, minutes: dict[tuple[int, str], Minute]) -> None:
    c.executemany(
        "INSERT INTO field_rollups(minute, endpoint, field, kind, rows, noise_rows, exchanges) "
        "VALUES (?,?,?,?,?,?,?) ON CONFLICT(minute, endpoint, field, kind) DO UPDATE SET "
        "rows=rows+excluded.rows, noise_rows=noise_rows+excluded.noise_rows, "
        "exchanges=exchanges+excluded.exchanges",
        [(minute, endpoint, fld, kind, *row)
         for (minute, endpoint), m in minutes.items() for (fld, kind), row in m.fields.items()])
    c.executemany(
        "INSERT INTO diff_sets(minute, endpoint, fields, count) VALUES (?,?,?,?) "
        "ON CONFLICT(minute, endpoint, fields) DO UPDATE SET count=count+excluded.count",
        [(minute, endpoint, key, n)
         for (minute, endpoint), m in minutes.items() for key, n in m.diff_sets.items()])


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


def _between(col: str, lo: float | None, hi: float | None) -> tuple[str, list[Any]]:
    clauses, params = range_clauses(col, lo, hi)
    return " AND ".join(clauses) or "1", params


def _endpoint_clause(endpoints: Sequence[str] | None, col: str = "endpoint"
                     ) -> tuple[str, list[Any]]:
    if endpoints is None:
        return "1", []
    return f"{col} IN ({','.join('?' * len(endpoints))})", list(endpoints)


def read(c: sqlite3.Connection, since: float | None, until: float | None,
         endpoints: Sequence[str] | None, *, sketches: bool = False, secondary: bool = False,
         pairs: bool = False, fields: bool = False, sets: bool = False,
         pair_bound: int | None = None, counts: bool = True) -> dict[str, Minute]:
    """endpoint → the aggregate of the window (``endpoints``: None for all). Only the
    parts asked for are read (the counts always; ``sketches``: primary's and the
    candidate's, ``secondary``: the secondary's too). ``pair_bound``: only pairs of a
    smaller key are wanted (see :func:`shadowproxy.store.rollup.Pairs`)."""
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
        where, params = _between("minute", win.lo, win.hi)
        ewhere, eparams = _endpoint_clause(endpoints)
        sums = ",".join(f"sum({k})" for k in _ROLLUP_COLS)
        for row in c.execute(f"SELECT endpoint, {sums} FROM rollups WHERE {where} AND "
                             f"{ewhere} GROUP BY endpoint", params + eparams) if counts else ():
            m = minute_for(row[0])
            m.counts = [int(v or 0) for v in row[1:1 + len(_COUNT_COLS)]]
            m.sums = [float(row[-2] or 0.0), float(row[-1] or 0.0)]
        kinds = [k for k, want in zip(_ROLLUP_BLOBS, (sketches, sketches, secondary, pairs),
                                      strict=True) if want]
        bwhere, bparams = _between("minute", win.lo, win.hi)
        for kind in kinds:
            for ep, blob in c.execute(f"SELECT endpoint, data FROM rollup_blobs WHERE "
                                      f"kind=? AND {bwhere} AND {ewhere}",
                                      [kind, *bparams, *eparams]):
                m = minute_for(ep)
                if kind == "pairs":
                    m.pairs.merge_bytes(blob)
                else:
                    getattr(m, kind).merge_bytes(blob)
        if fields:
            for ep, fld, kind, n, nz, nx in c.execute(
                    "SELECT endpoint, field, kind, sum(rows), sum(noise_rows), sum(exchanges) "
                    f"FROM field_rollups WHERE {where} AND {ewhere} "
                    "GROUP BY endpoint, field, kind", params + eparams):
                minute_for(ep).fields[(fld, kind)] = [n, nz, nx]
        if sets:
            for ep, key, n in c.execute(
                    f"SELECT endpoint, fields, sum(count) FROM diff_sets WHERE {where} AND "
                    f"{ewhere} GROUP BY endpoint, fields", params + eparams):
                minute_for(ep).diff_sets[key] = n
    for t0, t1 in win.edges:
        for ep, m in edge(c, t0, t1, endpoints, with_differences=fields or sets).items():
            minute_for(ep).merge(m)
    return out


def edge(c: sqlite3.Connection, t0: float | None, t1: float | None,
         endpoints: Sequence[str] | None, *, with_differences: bool = True
         ) -> dict[str, Minute]:
    """endpoint → the aggregate of the exchange rows in ``[t0, t1)`` (and their
    differences): what the aggregates would hold for that span."""
    where, params = _between("time", t0, t1)
    ewhere, eparams = _endpoint_clause(endpoints)
    diffs: dict[str, list[tuple[str, str, bool]]] = {}
    if with_differences:
        # through the exchange ids (differences are indexed by exchange, not by time)
        for xid, fld, kind, nz in c.execute(
                "SELECT exchange_id, field, kind, noise FROM differences WHERE exchange_id IN "
                f"(SELECT id FROM exchanges WHERE {where} AND {ewhere}) ORDER BY rowid",
                params + eparams):
            diffs.setdefault(xid, []).append((fld, kind, bool(nz)))
    out: dict[str, Minute] = {}
    for (xid, ep, verdict, ps, pe, pl, cs, ce, cl, ss, sl) in c.execute(
            f"SELECT {','.join(_EDGE_COLS)} FROM exchanges WHERE {where} AND {ewhere}",
            params + eparams):
        m = out.get(ep)
        if m is None:
            m = out[ep] = Minute()
        m.add_exchange(exchange_id=xid, verdict=verdict, p_status=ps, p_error=pe,
                       p_latency=pl, c_status=cs, c_error=ce, c_latency=cl, s_status=ss,
                       s_error=None, s_latency=sl)
        if with_differences:
            m.add_differences(verdict, diffs.get(xid, ()))
    return out


def backfill(c: sqlite3.Connection, step: int = 3600) -> int:
    """Schema 1 → 2: the new parts of every minute's aggregate (failures on the same
    exchange, sketches, the pair sample, fields, diff sets) from the rows still stored,
    ``step`` seconds at a time; the counters schema 1 kept are left as they are (they
    outlive rows trimmed by size). → exchanges read."""
    first = c.execute("SELECT min(time), max(time) FROM exchanges").fetchone()
    if first[0] is None:
        return 0
    t = math.floor(first[0] / 60.0) * 60
    end = first[1]
    done = 0
    new_counts = ("both_failed", "candidate_only_failed", "primary_only_failed")
    idx = [_COUNT_COLS.index(k) for k in new_counts]
    while t <= end:
        parts: dict[tuple[int, str], Minute] = {}
        for m0 in range(int(t), int(t + step), 60):
            for ep, m in edge(c, m0, m0 + 60, None).items():
                parts[(m0, ep)] = m
                done += m.counts[0]
        c.executemany(
            f"UPDATE rollups SET {','.join(f'{k}=?' for k in new_counts)} "
            "WHERE minute=? AND endpoint=?",
            [(*(m.counts[i] for i in idx), m0, ep) for (m0, ep), m in parts.items()])
        c.executemany(
            "INSERT OR REPLACE INTO rollup_blobs(kind, minute, endpoint, data) "
            "VALUES (?,?,?,?)",
            [(kind, m0, ep, data) for (m0, ep), m in parts.items()
             for kind, data in zip(_ROLLUP_BLOBS, _blobs(m), strict=True) if data is not None])
        _write_fields(c, parts)
        t += step
    return done


def sketch_or_none(s: Sketch, q: float) -> float | None:
    return s.quantile(q) if s.count else None
