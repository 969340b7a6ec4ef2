"""The SQLite store's per-minute aggregates (:mod:`shadowproxy.store.rollup`): written
with each batch of results, read for a window.

The reading of a window (whole minutes from the aggregates, ragged ends from the rows)
is the engines' shared :mod:`shadowproxy.store.window`.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from typing import Any

from .. import hours, window
from ..rollup import Minute, rollup
from ..window import COUNT_COLS as _COUNT_COLS
from ..window import ROLLUP_BLOBS as _ROLLUP_BLOBS
from ..window import ROLLUP_COLS as _ROLLUP_COLS
from ..window import Window, added_blobs, hours_of, range_clauses
from ..window import blobs as _blobs

__all__ = ["Window", "backfill", "edge", "range_clauses", "read", "write"]


def write(c: sqlite3.Connection, rows: Sequence[Sequence[Any]],
          diffs: Sequence[Sequence[tuple[str, str, bool]] | None]) -> None:
    """Add new exchanges rows (and their differences: :func:`rollup`) to their minutes'
    aggregates."""
    minutes = rollup(rows, diffs)
    if not minutes:
        return
    # readers read these hours from their minutes until they are compacted again
    hours.reopen(c.execute, hours_of(k[0] for k in minutes))
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
    out: list[tuple[Any, ...]] = []
    blobs: list[tuple[str, int, str, bytes]] = []
    for (minute, endpoint), m in minutes.items():
        out.append((minute, endpoint, *m.counts, *m.sums))
        new = added_blobs(m, lambda kind: have.get((kind, minute, endpoint)))  # noqa: B023
        blobs.extend((kind, minute, endpoint, data)
                     for kind, data in zip(_ROLLUP_BLOBS, new, strict=True)
                     if data is not None)
    cols = ",".join(_ROLLUP_COLS)
    sets = ",".join(f"{k}={k}+excluded.{k}" for k in _ROLLUP_COLS)
    c.executemany(f"INSERT INTO rollups(minute, endpoint, {cols}) VALUES "
                  f"(?,?,{','.join('?' * len(_ROLLUP_COLS))}) "
                  f"ON CONFLICT(minute, endpoint) DO UPDATE SET {sets}", out)
    c.executemany("INSERT INTO rollup_blobs(kind, minute, endpoint, data) VALUES (?,?,?,?) "
                  "ON CONFLICT(kind, minute, endpoint) DO UPDATE SET data=excluded.data",
                  blobs)
    _write_fields(c, minutes)


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


def read(c: sqlite3.Connection, since: float | None, until: float | None,
         endpoints: Sequence[str] | None, *, sketches: bool = False, secondary: bool = False,
         pairs: bool = False, fields: bool = False, sets: bool = False,
         pair_bound: int | None = None, counts: bool = True) -> dict[str, Minute]:
    """endpoint → the aggregate of the window (:func:`shadowproxy.store.window.read`)."""
    return window.read(c.execute, since, until, endpoints, sketches=sketches,
                       secondary=secondary, pairs=pairs, fields=fields, sets=sets,
                       pair_bound=pair_bound, counts=counts)


def edge(c: sqlite3.Connection, t0: float | None, t1: float | None,
         endpoints: Sequence[str] | None, *, with_differences: bool = True
         ) -> dict[str, Minute]:
    """endpoint → the aggregate of the rows in ``[t0, t1)``
    (:func:`shadowproxy.store.window.edge`)."""
    return window.edge(c.execute, t0, t1, endpoints, with_differences=with_differences)


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
