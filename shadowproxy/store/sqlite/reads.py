"""The SQLite store's reads: endpoints and their stats, latencies, field stats, one
exchange or a page of them, learned noise, outcome counts, the diff-rate series and
rollup totals, store info and the integrity check.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections import defaultdict
from typing import Any

import orjson

from ..base import (
    EndpointStats,
    ExchangeRow,
    FieldStats,
    NoiseRow,
    SeriesPoint,
    StoreInfo,
    percentile,
)
from ..documents import _json_value
from .connection import SqliteConnection
from .schema import _EX_COLS, _ROLLUP_COLS, _minute

_GLOB_CHARS = set("*?[")
_VERDICTS = ("match", "diff", "noise", "error")


class ReadsMixin(SqliteConnection):
    """:class:`~shadowproxy.store.sqlite.store.SqliteStore`'s reads."""

    def _endpoint_filter(self, glob: str | None, since: float | None, until: float | None
                         ) -> list[str] | None:
        """None: no filter; else the endpoints (maybe none) matching ``glob``."""
        if glob is None or glob == "*":
            return None
        if not (_GLOB_CHARS & set(glob)):
            return [glob]
        names = self.endpoints(since, until)
        return [e for e in names if fnmatch.fnmatchcase(e, glob)]

    @staticmethod
    def _range(since: float | None, until: float | None, col: str = "time"
               ) -> tuple[list[str], list[Any]]:
        clauses, params = [], []
        if since is not None:
            clauses.append(f"{col} >= ?")
            params.append(since)
        if until is not None:
            clauses.append(f"{col} < ?")
            params.append(until)
        return clauses, params

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

    def endpoint_stats(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*") -> list[EndpointStats]:
        w = self._where(since, until, endpoint_glob)
        if w is None:
            return []
        where, params = w
        counts = self._read(
            "SELECT endpoint, count(*), sum(verdict='match'), sum(verdict='diff'), "
            "sum(verdict='noise'), sum(verdict='error'), "
            "sum(candidate_status BETWEEN 500 AND 599), sum(primary_status BETWEEN 500 AND 599), "
            "sum(candidate_error IS NOT NULL), sum(primary_error IS NOT NULL) "
            f"FROM exchanges {where} GROUP BY endpoint ORDER BY endpoint", params)
        lat: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
        for ep, pl, cl in self._read(
                f"SELECT endpoint, primary_latency, candidate_latency FROM exchanges {where}"
                f"{' AND' if where else 'WHERE'} {_PAIR_OK}", params):
            pair = lat[ep]
            pair[0].append(pl)
            pair[1].append(cl)
        out = []
        for ep, n, m, d, nz, e, c5, p5, ce, pe in counts:
            pl, cl = lat.get(ep, ([], []))
            pl.sort()
            cl.sort()
            out.append(EndpointStats(
                ep, n, m or 0, d or 0, nz or 0, e or 0, c5 or 0, p5 or 0, ce or 0, pe or 0,
                len(pl), percentile(pl, 50), percentile(pl, 95), percentile(pl, 99),
                percentile(cl, 50), percentile(cl, 95), percentile(cl, 99)))
        return out

    def latencies(self, endpoint_glob: str = "*", since: float | None = None,
                  until: float | None = None) -> tuple[list[float], list[float]]:
        """Paired (primary, candidate) latencies of the exchanges where both answered,
        in time order."""
        w = self._where(since, until, endpoint_glob)
        if w is None:
            return [], []
        where, params = w
        rows = self._read(
            f"SELECT primary_latency, candidate_latency FROM exchanges {where}"
            f"{' AND' if where else 'WHERE'} {_PAIR_OK} ORDER BY time", params)
        return [r[0] for r in rows], [r[1] for r in rows]

    def field_stats(self, endpoint: str | None = None, since: float | None = None,
                    until: float | None = None, limit: int | None = None) -> list[FieldStats]:
        """Per (endpoint, field): difference counts by kind, most frequent first.
        ``endpoint`` may be a glob; None means all endpoints."""
        w = self._where(since, until, endpoint)
        if w is None:
            return []
        where, params = w
        per_field = self._read(
            "SELECT endpoint, field, count(*), count(DISTINCT exchange_id), sum(noise) "
            f"FROM differences {where} GROUP BY endpoint, field "
            "ORDER BY count(*) DESC, endpoint, field" + (f" LIMIT {int(limit)}" if limit else ""),
            params)
        if not per_field:
            return []
        kinds: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for ep, fld, kind, n in self._read(
                f"SELECT endpoint, field, kind, count(*) FROM differences {where} "
                "GROUP BY endpoint, field, kind", params):
            kinds[(ep, fld)][kind] = n
        learned = {(ep, fld): bool(nz) for ep, fld, nz in self._read(
            "SELECT endpoint, field, noise FROM noise")}
        samples: dict[tuple[str, str], str] = {}
        for ep, fld, xid in self._read(
                "SELECT endpoint, field, min(exchange_id) FROM sample_keys "
                "GROUP BY endpoint, field"):
            samples[(ep, fld)] = xid
        out = []
        for ep, fld, n, nx, nz in per_field:
            example = samples.get((ep, fld))
            if example is None:
                clauses, p2 = self._range(since, until)
                extra = (" AND " + " AND ".join(clauses)) if clauses else ""
                row = self._read(
                    "SELECT exchange_id FROM differences WHERE endpoint=? AND field=?"
                    f"{extra} ORDER BY time DESC LIMIT 1", (ep, fld, *p2))
                example = row[0][0] if row else None
            noise = learned.get((ep, fld), bool(nz) and nz == n)
            out.append(FieldStats(ep, fld, n, nx, kinds.get((ep, fld), {}), nz or 0, noise,
                                  example))
        return out

    def exchange(self, id: str) -> dict[str, Any] | None:
        """One exchange: the whole redacted sample when one was kept, else the summary
        row with its differences (``"sampled": False``, no headers or bodies)."""
        rows = self._read(f"SELECT {','.join(_EX_COLS)} FROM exchanges WHERE id=?", (id,))
        sample = self._read("SELECT data FROM samples WHERE exchange_id=?", (id,))
        if sample:
            doc: dict[str, Any] = orjson.loads(sample[0][0])
            doc["sampled"] = True
            if rows:
                doc["summary"] = _row_dict(rows[0])
            return doc
        if not rows:
            return None
        r = _row_dict(rows[0])
        diffs = self._read(
            "SELECT section, path, field, kind, a, b, noise FROM differences "
            "WHERE exchange_id=? ORDER BY rowid", (id,))
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
            clauses.append("id IN (SELECT exchange_id FROM differences WHERE field = ?)")
            params.append(field)
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
            clauses.append("noise = 1")
        rows = self._read(
            "SELECT endpoint, field, n, r, s, p_value, noise, provisional, decided_at, updated "
            "FROM noise" + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY endpoint, field", params)
        out = [NoiseRow(e, f, n, r, s, p, bool(nz), bool(pv), d, u)
               for e, f, n, r, s, p, nz, pv, d, u in rows]
        if endpoint is not None and endpoint != "*":
            out = [x for x in out if fnmatch.fnmatchcase(x.endpoint, endpoint)]
        return out

    def outcome_counts(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*") -> dict[str, dict[str, int]]:
        """outcome → reason ('' when none) → count, over whole minutes: a minute is in
        the range when its start is in [floor_minute(since), until)."""
        clauses, params = self._range(None if since is None else _minute(since), until,
                                      "minute")
        rows = self._read(
            "SELECT endpoint, outcome, reason, sum(count) FROM outcomes"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " GROUP BY endpoint, outcome, reason", params)
        out: dict[str, dict[str, int]] = {}
        for ep, outcome, reason, n in rows:
            if endpoint_glob not in (None, "*") and not fnmatch.fnmatchcase(ep, endpoint_glob):
                continue
            d = out.setdefault(outcome, {})
            d[reason] = d.get(reason, 0) + n
        return out

    def diff_rate_series(self, since: float | None = None, until: float | None = None,
                         bucket_seconds: int = 60, endpoint_glob: str = "*"
                         ) -> dict[str, list[SeriesPoint]]:
        """endpoint → points (bucket start ascending) from the minute rollups;
        ``bucket_seconds`` is rounded up to whole minutes."""
        bucket = max(60, math.ceil(bucket_seconds / 60.0) * 60)
        w = self._where(None if since is None else _minute(since), until, endpoint_glob,
                        col="minute")
        if w is None:
            return {}
        where, params = w
        rows = self._read(
            f"SELECT (minute / {bucket}) * {bucket} AS b, endpoint, sum(exchanges), sum(diffs), "
            f"sum(noise), sum(errors) FROM rollups {where} GROUP BY b, endpoint "
            "ORDER BY endpoint, b", params)
        out: dict[str, list[SeriesPoint]] = {}
        for b, ep, n, d, nz, e in rows:
            out.setdefault(ep, []).append(SeriesPoint(float(b), n, d, nz, e))
        return out

    def verdict_counts(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*") -> dict[str, int]:
        out = dict.fromkeys(_VERDICTS, 0)
        w = self._where(since, until, endpoint_glob)
        if w is None:
            return out
        where, params = w
        for verdict, n in self._read(
                f"SELECT verdict, count(*) FROM exchanges {where} GROUP BY verdict", params):
            out[verdict] = n
        return out

    def time_range(self) -> tuple[float, float] | None:
        row = self._read("SELECT min(time), max(time) FROM exchanges")[0]
        return None if row[0] is None else (row[0], row[1])

    def rollup_totals(self, since: float | None = None, until: float | None = None,
                      endpoint_glob: str = "*") -> dict[str, dict[str, float]]:
        """endpoint → summed rollup columns over whole minutes in the range."""
        w = self._where(None if since is None else _minute(since), until, endpoint_glob,
                        col="minute")
        if w is None:
            return {}
        where, params = w
        rows = self._read(
            f"SELECT endpoint, {','.join(f'sum({c})' for c in _ROLLUP_COLS)} FROM rollups "
            f"{where} GROUP BY endpoint", params)
        return {r[0]: dict(zip(_ROLLUP_COLS, r[1:], strict=True)) for r in rows}

    def info(self) -> StoreInfo:
        file_bytes = 0
        if self.path:
            for suffix in ("", "-wal"):
                try:
                    file_bytes += os.path.getsize(self.path + suffix)
                except OSError:
                    pass
        n_ex = self._read("SELECT count(*) FROM exchanges")[0][0]
        n_s = self._read("SELECT count(*) FROM samples")[0][0]
        return StoreInfo(self.url, self.schema_version, self.used_bytes(), file_bytes, n_ex, n_s)

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: 'ok' or the problems found."""
        rows = self._read("PRAGMA integrity_check")
        return "\n".join(r[0] for r in rows)


_PAIR_OK = ("primary_error IS NULL AND candidate_error IS NULL AND primary_status > 0 "
            "AND candidate_status > 0")


def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_EX_COLS, row, strict=True))
    d["sampled"] = bool(d["sampled"])
    return d


def _exchange_row(row: tuple[Any, ...]) -> ExchangeRow:
    d = _row_dict(row)
    return ExchangeRow(**d)
