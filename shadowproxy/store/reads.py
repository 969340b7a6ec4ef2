"""The reads every store engine shares: endpoints and their stats, latencies, field
stats, one exchange or a page of them, learned noise, outcome counts, the diff-rate
series and rollup totals.

The SQL is engine-neutral with ``?`` placeholders; an engine provides :meth:`SharedReads._read`
(one statement → its rows), :meth:`SharedReads._reading` (a query callable for several
statements, errors turned into :class:`~shadowproxy.errors.StoreError`), a
:class:`~shadowproxy.store.window.Scope` (a condition every read adds: the PostgreSQL
store's instance filter) and a :class:`~shadowproxy.store.window.Dialect`. Every sum is
converted to int or float (PostgreSQL's ``sum(bigint)`` is numeric).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from .base import (
    EndpointStats,
    ExchangeRow,
    FieldStats,
    NoiseCounts,
    NoiseRow,
    SeriesPoint,
    with_quantiles,
)
from .documents import _json_value
from .rollup import MAX_KEY, NO_SECONDARY, PAIR_WINDOW, Minute, Pairs, pair_key
from .runs import RUN_PREFIX
from .sketch import Sketch
from .window import (
    ALL,
    EX_COLS,
    ROLLUP_COLS,
    SQLITE,
    Dialect,
    Query,
    Scope,
    Window,
    between,
    range_clauses,
)
from .window import read as read_window

_EX_COLS = EX_COLS
_ROLLUP_COLS = ROLLUP_COLS


def _minute(t: float) -> int:
    return int(t // 60) * 60

_GLOB_CHARS = set("*?[")
_VERDICTS = ("match", "diff", "noise", "error")


class SharedReads:
    """The reads of every engine's store (see the module docstring)."""

    scope: Scope = ALL
    dialect: Dialect = SQLITE

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _reading(self) -> AbstractContextManager[Query]:
        """A query callable for several statements in a row (the store's lock held)."""
        raise NotImplementedError

    def _endpoint_filter(self, glob: str | None, since: float | None, until: float | None
                         ) -> list[str] | None:
        """None: no filter; else the endpoints (maybe none) matching ``glob``."""
        if glob is None or glob == "*":
            return None
        if not (_GLOB_CHARS & set(glob)):
            return [glob]
        names = self.endpoints(since, until)
        return [e for e in names if fnmatch.fnmatchcase(e, glob)]

    def _range(self, since: float | None, until: float | None, col: str = "time"
               ) -> tuple[list[str], list[Any]]:
        """Clauses for a time range (and the scope) on a table of results."""
        clauses, params = range_clauses(col, since, until)
        return [*self.scope.clauses, *clauses], [*self.scope.params, *params]

    def _where(self, since: float | None, until: float | None, glob: str | None,
               col: str = "time", ecol: str = "endpoint") -> tuple[str, list[Any]] | None:
        """A WHERE clause for a time range and endpoint glob; None when nothing matches."""
        clauses, params = self._range(since, until, col)
        eps = self._endpoint_filter(glob, since, until)
        if eps is not None:
            if not eps:
                return None
            clauses.append(f"{ecol} IN ({','.join('?' * len(eps))})")
            params.extend(eps)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), params

    def endpoints(self, since: float | None = None, until: float | None = None) -> list[str]:
        """Endpoints with data in the range (from the rollups, minute resolution)."""
        clauses, params = self._range(
            None if since is None else _minute(since), until, "minute")
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        return [r[0] for r in self._read(
            f"SELECT DISTINCT endpoint FROM rollups {where} ORDER BY endpoint", params)]

    def _aggregate(self, since: float | None, until: float | None, glob: str | None,
                   **parts: bool) -> dict[str, Minute]:
        """endpoint → the window's aggregate (:mod:`.rollups`: whole minutes from the
        aggregates, the ragged ends from the rows)."""
        eps = self._endpoint_filter(glob, since, until)
        with self._reading() as q:
            return read_window(q, since, until, eps, scope=self.scope, dialect=self.dialect,
                               **parts)

    def endpoint_stats(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*", *, quantiles: bool = True
                       ) -> list[EndpointStats]:
        """Counts from the aggregates; latency quantiles (None without ``quantiles``)
        from the merged sketches of the exchanges where both answered (within 1/128 of
        the exact values)."""
        out = []
        for ep, m in sorted(self._aggregate(since, until, endpoint_glob,
                                            sketches=quantiles).items()):
            n = m.counts
            if not n[0]:
                continue
            out.append(with_quantiles(EndpointStats(
                ep, n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8], n[9],
                None, None, None, None, None, None), m.primary if quantiles else None,
                m.candidate if quantiles else None))
        return out

    def latency_sketches(self, since: float | None = None, until: float | None = None,
                         endpoint_glob: str = "*", *, secondary: bool = True
                         ) -> dict[str, tuple[Sketch, Sketch, Sketch]]:
        """endpoint → (primary, candidate, secondary) sketches of the window (the
        secondary's empty without ``secondary``)."""
        return {ep: (m.primary, m.candidate, m.secondary) for ep, m in
                self._aggregate(since, until, endpoint_glob, sketches=True,
                                secondary=secondary).items()}

    def latencies(self, endpoint_glob: str = "*", since: float | None = None,
                  until: float | None = None) -> tuple[list[float], list[float]]:
        """Paired (primary, candidate) latencies of the exchanges where both answered: all
        of them up to :data:`~shadowproxy.store.rollup.PAIR_WINDOW` pairs, beyond that a
        uniform sample of that many (the pairs of smallest key, see
        :mod:`shadowproxy.store.rollup`), the same for the same window and store.

        A window of at most :data:`PAIR_ROWS` pairs is read from the rows (its sample is
        exactly the pairs of smallest key); a larger one from the minutes' samples, which
        give the same whenever each minute kept enough of its pairs (a window of more
        than ``PAIR_WINDOW / PAIR_SAMPLE`` busy minutes), and otherwise a smaller uniform
        sample: at least ``PAIR_SAMPLE`` pairs of every minute."""
        return self.latencies_of(self._endpoint_filter(endpoint_glob, since, until),
                                 since, until)

    def latencies_of(self, endpoints: Sequence[str] | None, since: float | None = None,
                     until: float | None = None, *, pairs: int | None = None
                     ) -> tuple[list[float], list[float]]:
        """:meth:`latencies` of the exchanges of ``endpoints`` (exact names; None: all)
        together: one uniform sample of them all, not a sample per endpoint.
        ``pairs``: how many latency pairs the window holds, when the caller knows
        (``EndpointStats.latency_samples``), saving a read of the counters."""
        p, c, _s = self.latency_triples_of(endpoints, since, until, pairs=pairs)
        return p, c

    def latency_triples_of(self, endpoints: Sequence[str] | None, since: float | None = None,
                           until: float | None = None, *, pairs: int | None = None
                           ) -> tuple[list[float], list[float], list[float]]:
        """:meth:`latencies_of` with the secondary's latency of each pair: (primary,
        candidate, secondary), the secondary's NaN where it did not answer or the pair
        was stored before pair samples kept it (``rollup.PAIRS_V2``)."""
        if endpoints is not None and not endpoints:
            return [], [], []
        eps = None if endpoints is None else list(endpoints)
        kw: dict[str, Any] = {"scope": self.scope, "dialect": self.dialect}
        with self._reading() as q:
            if pairs is None:
                pairs = sum(m.counts[9] for m in read_window(q, since, until, eps,
                                                              **kw).values())
            if pairs <= PAIR_ROWS:
                clauses, params = self._range(since, until)
                if eps is not None:
                    clauses.append(f"endpoint IN ({','.join('?' * len(eps))})")
                    params.extend(eps)
                clauses.append(_PAIR_OK)
                rows = Pairs()
                for xid, pl, cl, ss, sl in q(
                        "SELECT id, primary_latency, candidate_latency, secondary_status, "
                        "secondary_latency FROM exchanges WHERE " + " AND ".join(clauses),
                        params):
                    rows.add(pair_key(xid), pl, cl,
                             sl if ss is not None and sl is not None and ss > 0
                             else NO_SECONDARY, PAIR_WINDOW)
                return rows.window(PAIR_WINDOW)
            # The pairs of smallest key: a uniform hash puts about PAIR_WINDOW of the
            # N pairs below PAIR_WINDOW/N of the key range. Decode only those (with a
            # margin); in the rare window where that bound leaves too few, widen it.
            share = 1.5 * PAIR_WINDOW / pairs
            while True:
                bound = MAX_KEY + 1 if share >= 1 else int(share * (MAX_KEY + 1))
                merged = Pairs(bound=bound)
                for m in read_window(q, since, until, eps, pairs=True, pair_bound=bound,
                                     counts=False, **kw).values():
                    merged.merge(m.pairs)
                got = merged.window(PAIR_WINDOW)
                if len(got[0]) >= PAIR_WINDOW or merged.bound < bound or share >= 1:
                    return got
                share *= 4

    def error_pairs(self, since: float | None = None, until: float | None = None,
                    endpoint_glob: str = "*") -> dict[str, tuple[int, int, int, int]]:
        """endpoint → (exchanges, both failed, only the candidate, only the primary)."""
        return {ep: (m.counts[0], m.counts[10], m.counts[11], m.counts[12])
                for ep, m in self._aggregate(since, until, endpoint_glob).items()}

    def candidate_failures(self, endpoint: str, since: float | None = None,
                           until: float | None = None, limit: int = 5) -> list[str]:
        """Ids of recent exchanges of ``endpoint`` where only the candidate failed; looked
        for in the minutes whose aggregates say they hold one."""
        clauses, params = self._range(None if since is None else _minute(since), until,
                                      "minute")
        minutes = [r[0] for r in self._read(
            "SELECT minute FROM rollups WHERE endpoint=? AND candidate_only_failed > 0"
            + "".join(f" AND {c}" for c in clauses) + " ORDER BY minute DESC LIMIT ?",
            (endpoint, *params, limit))]
        out: list[str] = []
        for m in minutes:
            lo = m if since is None else max(m, since)
            hi = m + 60 if until is None else min(m + 60, until)
            out.extend(r[0] for r in self._read(
                "SELECT id FROM exchanges WHERE endpoint=? AND time >= ? AND time < ? AND "
                f"({_CAND_FAILED}) AND NOT ({_PRIM_FAILED}){self.scope.sql()} "
                "ORDER BY time DESC LIMIT ?",
                (endpoint, lo, hi, *self.scope.params, limit - len(out))))
            if len(out) >= limit:
                break
        return out

    def difference_example(self, endpoint: str, field: str, kind: str | None = None,
                           since: float | None = None, until: float | None = None
                           ) -> str | None:
        """The newest exchange of ``endpoint`` in the window with a difference on ``field``
        (of ``kind``) that was not noise (the (endpoint, field, time) index)."""
        clauses, params = self._range(since, until)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        row = self._read(
            "SELECT exchange_id FROM differences WHERE endpoint=? AND field=? AND noise=0"
            + "".join(f" AND {c}" for c in clauses) + " ORDER BY time DESC LIMIT 1",
            (endpoint, field, *params))
        return row[0][0] if row else None

    def diff_sets(self, since: float | None = None, until: float | None = None,
                  endpoint_glob: str = "*") -> dict[str, dict[str, int]]:
        """endpoint → set of real fields (:func:`~shadowproxy.store.rollup.set_key`) →
        diff exchanges with exactly those real fields."""
        return {ep: m.diff_sets for ep, m in
                self._aggregate(since, until, endpoint_glob, sets=True, counts=False).items()}

    def field_stats(self, endpoint: str | None = None, since: float | None = None,
                    until: float | None = None, limit: int | None = None) -> list[FieldStats]:
        """Per (endpoint, field): difference counts by kind, most frequent first, from the
        aggregates. ``endpoint`` may be a glob; None means all endpoints."""
        per: list[tuple[str, str, int, int, int, dict[str, int], dict[str, int]]] = []
        for ep, m in self._aggregate(since, until, endpoint, fields=True,
                                     counts=False).items():
            by_field: dict[str, list[Any]] = {}
            for (fld, kind), (n, nz, nx) in m.fields.items():
                f = by_field.get(fld)
                if f is None:
                    f = by_field[fld] = [0, 0, 0, {}, {}]
                f[0] += n
                f[1] += nz
                f[2] += nx
                f[3][kind] = f[3].get(kind, 0) + n
                if nz:
                    f[4][kind] = f[4].get(kind, 0) + nz
            per.extend((ep, fld, f[0], f[2], f[1], f[3], f[4]) for fld, f in by_field.items())
        per.sort(key=lambda r: (-r[2], r[0], r[1]))
        if limit:
            per = per[:int(limit)]
        if not per:
            return []
        learned = {(ep, fld): bool(nz) for ep, fld, nz in self._read(
            "SELECT endpoint, field, noise FROM noise")}
        samples: dict[tuple[str, str], str] = {}
        for ep, fld, xid in self._read(
                "SELECT endpoint, field, min(exchange_id) FROM sample_keys "
                "GROUP BY endpoint, field"):
            samples[(ep, fld)] = xid
        out = []
        for ep, fld, n, nx, nz, kinds, kinds_noise in per:
            example = samples.get((ep, fld))
            if example is None:
                clauses, p2 = self._range(since, until)
                extra = (" AND " + " AND ".join(clauses)) if clauses else ""
                row = self._read(
                    "SELECT exchange_id FROM differences WHERE endpoint=? AND field=?"
                    f"{extra} ORDER BY time DESC LIMIT 1", (ep, fld, *p2))
                example = row[0][0] if row else None
            noise = learned.get((ep, fld), bool(nz) and nz == n)
            out.append(FieldStats(ep, fld, n, nx, dict(kinds), nz, noise, example,
                                  dict(kinds_noise)))
        return out

    def exchange(self, id: str) -> dict[str, Any] | None:
        """One exchange: the whole redacted sample when one was kept, else the summary
        row with its differences (``"sampled": False``, no headers or bodies); with
        ``"instance"``, whose traffic it was (in a fleet the sidecar that mirrored it),
        where the store keeps one (PostgreSQL)."""
        with_instance = self.dialect.instance
        cols = (*_EX_COLS, "instance") if with_instance else _EX_COLS
        rows = self._read(f"SELECT {','.join(cols)} FROM exchanges WHERE id=?", (id,))
        instance = {"instance": rows[0][-1]} if rows and with_instance else {}
        if with_instance:
            rows = [row[:-1] for row in rows]
        sample = self._read("SELECT data FROM samples WHERE exchange_id=?", (id,))
        if sample:
            doc: dict[str, Any] = orjson.loads(sample[0][0])
            doc["sampled"] = True
            doc.update(instance)
            if rows:
                doc["summary"] = _row_dict(rows[0])
            return doc
        if not rows:
            return None
        r = _row_dict(rows[0])
        diffs = self._read(
            "SELECT section, path, field, kind, a, b, noise FROM differences "
            f"WHERE exchange_id=? ORDER BY {self.dialect.diff_order}", (id,))
        return {
            "id": r["id"], "time": r["time"], "endpoint": r["endpoint"], "route": r["route"],
            "verdict": r["verdict"], "sampled": False,
            "request": {"method": r["method"], "path": r["path"], "query": r["query"]},
            "primary": {"status": r["primary_status"], "latency": r["primary_latency"],
                        "size": r["primary_size"], "error": r["primary_error"]},
            "candidate": {"status": r["candidate_status"], "latency": r["candidate_latency"],
                          "size": r["candidate_size"], "error": r["candidate_error"]},
            "secondary": None if r["secondary_status"] is None else {
                "status": r["secondary_status"], "latency": r["secondary_latency"]},
            "differences": [{"section": s, "path": p, "field": f, "kind": k,
                             "a": _json_value(a), "b": _json_value(b), "noise": bool(nz)}
                            for s, p, f, k, a, b, nz in diffs],
            "noise_fields": sorted({f for _s, _p, f, _k, _a, _b, nz in diffs if nz}),
            "secondary_differences": [],
            "summary": r,
            **instance,
        }

    def exchanges(self, endpoint: str | None = None, verdict: str | None = None,
                  since: float | None = None, until: float | None = None, limit: int = 100,
                  *, field: str | None = None, offset: int = 0) -> list[ExchangeRow]:
        """Exchange rows, newest first. ``endpoint`` may be a glob; ``field`` keeps those
        with a difference on that field."""
        w = self._where(since, until, endpoint)
        if w is None:
            return []
        where, params = w
        clauses = [where[len("WHERE "):]] if where else []
        if verdict is not None:
            clauses.append("verdict = ?")
            params.append(verdict)
        if field is not None:
            # the differences of those endpoints and that time, through the (endpoint,
            # field, time) index: every endpoint named, also when none was asked for
            eps = self._endpoint_filter(endpoint, since, until)
            if eps is None:
                eps = self.endpoints(since, until)
            if not eps:
                return []
            sub, sub_params = self._range(since, until)
            sub.append(f"endpoint IN ({','.join('?' * len(eps))})")
            clauses.append("id IN (SELECT exchange_id FROM differences WHERE field = ? AND "
                           + " AND ".join(sub) + ")")
            params.extend([field, *sub_params, *eps])
        sql = f"SELECT {','.join(_EX_COLS)} FROM exchanges"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY time DESC LIMIT ? OFFSET ?"
        rows = self._read(sql, (*params, int(limit), int(offset)))
        return [_exchange_row(r) for r in rows]

    def noise(self, endpoint: str | None = None, *, include_not_noise: bool = False
              ) -> list[NoiseRow]:
        """Learned noise per (endpoint, field); ``endpoint`` may be a glob."""
        clauses: list[str] = []
        params: list[Any] = []
        if not include_not_noise:
            clauses.append("noise <> 0")
        rows = self._read(
            "SELECT endpoint, field, n, r, s, p_value, noise, provisional, decided_at, updated "
            "FROM noise" + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY endpoint, field", params)
        out = [NoiseRow(e, f, n, r, s, float(p), bool(nz), bool(pv), float(d), float(u))
               for e, f, n, r, s, p, nz, pv, d, u in rows]
        if endpoint is not None and endpoint != "*":
            out = [x for x in out if fnmatch.fnmatchcase(x.endpoint, endpoint)]
        return out

    def noise_counts(self, exclude: str | None = None, *, run: str | None = None
                     ) -> list[NoiseCounts]:
        """Noise learners' counts summed per (endpoint, field), but ``exclude``'s: the
        live traffic's learners, or those of ``run`` (a replay's, whose names start
        with its instance label ``run:NAME/``): a replay against a pull request's build
        never teaches the live comparators, nor they it."""
        clauses, params = [], []
        if run is None:
            clauses.append(f"substr(learner, 1, {len(RUN_PREFIX)}) <> ?")
            params.append(RUN_PREFIX)
        else:
            prefix = f"{RUN_PREFIX}{run}/"
            clauses.append(f"substr(learner, 1, {len(prefix)}) = ?")
            params.append(prefix)
        if exclude is not None:
            clauses.append("learner <> ?")
            params.append(exclude)
        rows = self._read(
            "SELECT endpoint, field, sum(n), sum(r), sum(s) FROM noise_counts WHERE "
            + " AND ".join(clauses) + " GROUP BY endpoint, field", params)
        return [(e, f, int(n), int(r), int(s)) for e, f, n, r, s in rows]

    def _outcome_rows(self, since: float | None, until: float | None
                      ) -> list[tuple[Any, ...]]:
        """(endpoint, outcome, reason, count) over the whole minutes of the window: a
        minute is in it when its start is in [floor_minute(since), until)."""
        clauses, params = self._range(None if since is None else _minute(since), until,
                                      "minute")
        return self._read(
            "SELECT endpoint, outcome, reason, sum(count) FROM outcomes"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " GROUP BY endpoint, outcome, reason", params)

    def outcome_counts(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*") -> dict[str, dict[str, int]]:
        """outcome → reason ('' when none) → count, over whole minutes: a minute is in
        the range when its start is in [floor_minute(since), until)."""
        out: dict[str, dict[str, int]] = {}
        for ep, outcome, reason, n in self._outcome_rows(since, until):
            if endpoint_glob not in (None, "*") and not fnmatch.fnmatchcase(ep, endpoint_glob):
                continue
            d = out.setdefault(outcome, {})
            d[reason] = d.get(reason, 0) + int(n)
        return out

    def secondary_endpoints(self, since: float | None = None, until: float | None = None
                            ) -> set[str]:
        """The endpoints the secondary answered in the window: whole minutes from the
        existence of a secondary sketch (the primary key's index; nothing decoded), the
        ragged ends from their rows."""
        win = Window.of(since, until)
        out: set[str] = set()
        scope, sparams = self.scope.sql(), list(self.scope.params)
        with self._reading() as q:
            if win.whole:
                where, params = between("minute", win.lo, win.hi)
                out.update(r[0] for r in q(
                    "SELECT DISTINCT endpoint FROM rollup_blobs WHERE kind = 'secondary' "
                    f"AND {where}{scope}", params + sparams))
            for t0, t1 in win.edges:
                where, params = between("time", t0, t1)
                out.update(r[0] for r in q(
                    "SELECT DISTINCT endpoint FROM exchanges WHERE secondary_status IS NOT "
                    f"NULL AND secondary_status > 0 AND {where}{scope}", params + sparams))
        return out

    def outcome_counts_by_endpoint(self, since: float | None = None,
                                   until: float | None = None, endpoint_glob: str = "*"
                                   ) -> dict[str, dict[str, int]]:
        """endpoint → ``outcome{reason}`` (or ``outcome``) → count, over the minutes of
        :meth:`outcome_counts` (the window's request accounting, per endpoint)."""
        out: dict[str, dict[str, int]] = {}
        for ep, outcome, reason, n in self._outcome_rows(since, until):
            if not ep or (endpoint_glob not in (None, "*")
                          and not fnmatch.fnmatchcase(ep, endpoint_glob)):
                continue
            name = f"{outcome}{{{reason}}}" if reason else outcome
            d = out.setdefault(ep, {})
            d[name] = d.get(name, 0) + int(n)
        return out

    def _minutes_where(self, since: float | None, until: float | None, glob: str
                       ) -> tuple[str, list[Any]] | None:
        """The WHERE of the minutes a range touches (from the minute ``since`` falls in)."""
        return self._where(None if since is None else _minute(since), until, glob,
                           col="minute")

    def diff_rate_series(self, since: float | None = None, until: float | None = None,
                         bucket_seconds: int = 60, endpoint_glob: str = "*"
                         ) -> dict[str, list[SeriesPoint]]:
        """endpoint → points (bucket start ascending) from the minute rollups;
        ``bucket_seconds`` is rounded up to whole minutes."""
        bucket = max(60, math.ceil(bucket_seconds / 60.0) * 60)
        w = self._minutes_where(since, until, endpoint_glob)
        if w is None:
            return {}
        where, params = w
        rows = self._read(
            f"SELECT (minute / {bucket}) * {bucket} AS b, endpoint, sum(exchanges), sum(diffs), "
            f"sum(noise), sum(errors) FROM rollups {where} GROUP BY b, endpoint "
            "ORDER BY endpoint, b", params)
        out: dict[str, list[SeriesPoint]] = {}
        for b, ep, n, d, nz, e in rows:
            out.setdefault(ep, []).append(SeriesPoint(float(b), int(n), int(d), int(nz),
                                                      int(e)))
        return out

    def verdict_counts(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*") -> dict[str, int]:
        out = dict.fromkeys(_VERDICTS, 0)
        for m in self._aggregate(since, until, endpoint_glob).values():
            for i, verdict in enumerate(_VERDICTS, start=1):
                out[verdict] += m.counts[i]
        return out

    def time_range(self) -> tuple[float, float] | None:
        # two subqueries: each is one step down the time index (min and max together
        # in one SELECT would scan the table)
        clauses, params = self._range(None, None)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        row = self._read(f"SELECT (SELECT min(time) FROM exchanges{where}), "
                         f"(SELECT max(time) FROM exchanges{where})", [*params, *params])[0]
        return None if row[0] is None else (float(row[0]), float(row[1]))

    def rollup_totals(self, since: float | None = None, until: float | None = None,
                      endpoint_glob: str = "*") -> dict[str, dict[str, float]]:
        """endpoint → summed rollup columns over whole minutes in the range."""
        w = self._minutes_where(since, until, endpoint_glob)
        if w is None:
            return {}
        where, params = w
        rows = self._read(
            f"SELECT endpoint, {','.join(f'sum({c})' for c in _ROLLUP_COLS)} FROM rollups "
            f"{where} GROUP BY endpoint", params)
        return {r[0]: {k: (float(v or 0) if k.endswith("_sum") else int(v or 0))
                       for k, v in zip(_ROLLUP_COLS, r[1:], strict=True)} for r in rows}


PAIR_ROWS = 50_000     # latency pairs of a window read from the rows rather than the samples
_PAIR_OK = ("primary_error IS NULL AND candidate_error IS NULL AND primary_status > 0 "
            "AND candidate_status > 0")
_CAND_FAILED = ("candidate_error IS NOT NULL OR candidate_status <= 0 OR "
                "candidate_status BETWEEN 500 AND 599")
_PRIM_FAILED = ("primary_error IS NOT NULL OR primary_status <= 0 OR "
                "primary_status BETWEEN 500 AND 599")


def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_EX_COLS, row, strict=True))
    d["sampled"] = bool(d["sampled"])
    return d


def _exchange_row(row: tuple[Any, ...]) -> ExchangeRow:
    d = _row_dict(row)
    return ExchangeRow(**d)
