"""The SQLite result store (the default).

URL: ``sqlite:///PATH`` (``sqlite:///./results.db`` and ``sqlite:///results.db`` are
relative to the working directory, ``sqlite:////var/lib/sp.db`` is absolute, as in
SQLAlchemy), ``sqlite:///file:PATH?mode=ro`` passes an SQLite URI through, and
``sqlite:///:memory:`` is a private in-memory store (one connection; tests).

Durability
    The database runs in WAL mode with ``synchronous=NORMAL``: a transaction is
    durable against a crash of the process (even ``kill -9``) as soon as it has
    committed, because the WAL is written before the commit returns; only a power
    loss or OS crash can lose the last transactions before a checkpoint (the file
    itself stays consistent). This trades a little of the durability of
    ``synchronous=FULL`` for much faster commits, which is right for shadow results.
    Readers never block the writer and the writer never blocks readers.

Concurrency
    One writer (:class:`~shadowproxy.store.writer.StoreWriter`) per process;
    several processes may write the same file (a 5 s busy timeout serialises them).
    A :class:`SqliteStore` object is thread-safe (one lock around its connection);
    readers in other threads or processes should open their own (``readonly=True``).

Schema (version 1; the ``schema_version`` table holds the version)
    ``exchanges``    one row per judged exchange: the endpoint, the redacted query,
                     status/latency/size/error of each upstream, the verdict and the
                     difference counts. No headers, no bodies.
    ``differences``  one row per primary-vs-candidate difference: section, path, field
                     (indexes folded), kind, the redacted values ``a``/``b`` as short
                     JSON text (at most :data:`DIFF_VALUE_MAX` bytes), ``noise``.
    ``samples``      the whole redacted exchange (orjson blob: request, every response
                     with headers and decoded text body (base64 when not UTF-8, at most
                     :data:`SAMPLE_BODY_MAX` bytes each) and ``sha256``, the body's
                     digest keyed with the run's redaction key (HMAC-SHA256, see
                     :meth:`~shadowproxy.redact.redactor.Redactor.body_digest`;
                     never a plain SHA-256), the differences, the secondary
                     differences) for the first ``samples_per_field`` exchanges of every
                     (endpoint, field); also the first K ``match`` and ``error``
                     exchanges of every endpoint (pseudo-fields ``#match``, ``#error``).
                     Never for a ``summary_only`` result (redacted only as far as the
                     summary needs, when :meth:`SqliteStore.keeps_sample` said no).
    ``sample_keys``  which (endpoint, field) each sample was kept for.
    ``rollups``      per minute and endpoint: exchanges, verdict counts, 5xx and error
                     counts, latency sums. Kept by age only (not by the size limit),
                     so the diff-rate series outlives the detail. Latency percentiles
                     are computed from the ``exchanges`` rows (exact, over the pairs
                     where both primary and candidate answered), not from rollups.
    ``outcomes``     per minute, endpoint, outcome and reason: the proxy's request
                     outcome counters (upserted by adding).
    ``noise``        the noise learner's evidence per (endpoint, field).

Retention (:meth:`SqliteStore.cleanup`)
    Deletes the oldest exchanges (with their differences and samples) older than the
    age limit, then while the used size (``(page_count - freelist_count) * page_size``)
    is above the size limit, down to 90 % of it; in transactions of ``chunk`` (500)
    exchanges so the write lock is never held long. Freed pages are reused; the file
    does not shrink (no VACUUM).
"""

from __future__ import annotations

import base64
import fnmatch
import math
import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from ...errors import StoreError
from ...models import Difference, Exchange, RequestRecord, ResponseRecord, Result
from ..base import (
    ERROR_SAMPLE,
    MATCH_SAMPLE,
    EndpointStats,
    ExchangeRow,
    FieldStats,
    NoiseRow,
    OutcomeRow,
    SeriesPoint,
    StoreInfo,
    percentile,
)

_T = TypeVar("_T")

SCHEMA_VERSION = 1
DIFF_VALUE_MAX = 512          # bytes of JSON text kept for a difference's a / b
SAMPLE_BODY_MAX = 256 * 1024  # bytes of each body kept in a sample
BUSY_TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    endpoint TEXT NOT NULL,
    route TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL,
    primary_status INTEGER NOT NULL,
    candidate_status INTEGER NOT NULL,
    secondary_status INTEGER,
    primary_latency REAL NOT NULL,
    candidate_latency REAL NOT NULL,
    secondary_latency REAL,
    primary_size INTEGER NOT NULL,
    candidate_size INTEGER NOT NULL,
    primary_error TEXT,
    candidate_error TEXT,
    diff_count INTEGER NOT NULL,
    noise_count INTEGER NOT NULL,
    sampled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS exchanges_time ON exchanges(time);
CREATE INDEX IF NOT EXISTS exchanges_endpoint_time ON exchanges(endpoint, time);
CREATE INDEX IF NOT EXISTS exchanges_verdict_time ON exchanges(verdict, time);
CREATE TABLE IF NOT EXISTS differences (
    exchange_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    time REAL NOT NULL,
    section TEXT NOT NULL,
    path TEXT NOT NULL,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    a TEXT,
    b TEXT,
    noise INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS differences_endpoint_field_time
    ON differences(endpoint, field, time);
CREATE INDEX IF NOT EXISTS differences_exchange ON differences(exchange_id);
CREATE TABLE IF NOT EXISTS samples (
    exchange_id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    time REAL NOT NULL,
    verdict TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sample_keys (
    endpoint TEXT NOT NULL,
    field TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    PRIMARY KEY (endpoint, field, exchange_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sample_keys_exchange ON sample_keys(exchange_id);
CREATE TABLE IF NOT EXISTS rollups (
    minute INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    exchanges INTEGER NOT NULL DEFAULT 0,
    matches INTEGER NOT NULL DEFAULT 0,
    diffs INTEGER NOT NULL DEFAULT 0,
    noise INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    candidate_5xx INTEGER NOT NULL DEFAULT 0,
    primary_5xx INTEGER NOT NULL DEFAULT 0,
    candidate_errors INTEGER NOT NULL DEFAULT 0,
    primary_errors INTEGER NOT NULL DEFAULT 0,
    latency_pairs INTEGER NOT NULL DEFAULT 0,
    primary_latency_sum REAL NOT NULL DEFAULT 0,
    candidate_latency_sum REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint)
);
CREATE TABLE IF NOT EXISTS outcomes (
    minute INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint, outcome, reason)
);
CREATE TABLE IF NOT EXISTS noise (
    endpoint TEXT NOT NULL,
    field TEXT NOT NULL,
    n INTEGER NOT NULL,
    r INTEGER NOT NULL,
    s INTEGER NOT NULL,
    p_value REAL NOT NULL,
    noise INTEGER NOT NULL,
    provisional INTEGER NOT NULL DEFAULT 0,
    decided_at REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (endpoint, field)
);
"""
_TABLES = {"schema_version", "exchanges", "differences", "samples", "sample_keys", "rollups",
           "outcomes", "noise"}

_EX_COLS = ("id", "time", "endpoint", "route", "method", "path", "query", "verdict",
            "primary_status", "candidate_status", "secondary_status", "primary_latency",
            "candidate_latency", "secondary_latency", "primary_size", "candidate_size",
            "primary_error", "candidate_error", "diff_count", "noise_count", "sampled")
_ROLLUP_COLS = ("exchanges", "matches", "diffs", "noise", "errors", "candidate_5xx",
                "primary_5xx", "candidate_errors", "primary_errors", "latency_pairs",
                "primary_latency_sum", "candidate_latency_sum")
_GLOB_CHARS = set("*?[")
_VERDICTS = ("match", "diff", "noise", "error")


# ------------------------------------------------------------------ URL handling


def parse_url(url: str, readonly: bool = False) -> tuple[str, bool, str | None]:
    """→ (what to pass to sqlite3.connect, uri flag, file path or None for memory)."""
    if url in ("sqlite://", "sqlite:///:memory:", "sqlite://:memory:") or \
            url.startswith("memory:"):
        return ":memory:", False, None
    if not url.startswith("sqlite:///"):
        raise StoreError(f"unsupported store URL {url!r}: expected sqlite:///PATH "
                         "(sqlite:////absolute/path.db for an absolute path)")
    rest = url[len("sqlite:///"):]
    if not rest:
        raise StoreError(f"store URL {url!r} names no file: expected sqlite:///PATH")
    if rest.startswith("file:"):
        path = rest[5:].split("?", 1)[0]
        if readonly and "mode=" not in rest:
            rest += ("&" if "?" in rest else "?") + "mode=ro"
        return rest, True, path
    path = rest
    if readonly:
        return f"file:{quote(os.path.abspath(path))}?mode=ro", True, path
    return path, False, path


def _minute(t: float) -> int:
    return int(t // 60) * 60


def _body_doc(body: bytes) -> dict[str, Any]:
    """A body as stored in a sample: UTF-8 text, else base64; at most SAMPLE_BODY_MAX."""
    cut = len(body) > SAMPLE_BODY_MAX
    data = body[:SAMPLE_BODY_MAX] if cut else body
    if _utf8_prefix_ok(data):
        return {"body": data.decode("utf-8", "ignore"), "body_encoding": "utf-8",
                "body_truncated": cut}
    return {"body": base64.b64encode(data).decode("ascii"), "body_encoding": "base64",
            "body_truncated": cut}


def _utf8_prefix_ok(data: bytes) -> bool:
    """Is ``data`` UTF-8 but for a character cut at its end?"""
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3:
            try:
                data[:exc.start].decode("utf-8")
                return True
            except UnicodeDecodeError:
                return False
        return False


def _json_text(value: Any) -> str | None:
    """A difference's value as short JSON text (None for an absent value)."""
    if value is None:
        return None
    try:
        raw = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        raw = orjson.dumps(repr(value))
    if len(raw) > DIFF_VALUE_MAX:
        text = raw[:DIFF_VALUE_MAX - 16].decode("utf-8", "ignore") + "…"
        raw = orjson.dumps(text)
    return raw.decode()


def _json_value(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _diff_doc(d: Difference, noise: bool) -> dict[str, Any]:
    return {"section": d.section, "path": d.path, "field": d.field, "kind": d.kind,
            "a": d.a, "b": d.b, "noise": noise}


def _request_doc(r: RequestRecord) -> dict[str, Any]:
    return {"method": r.method, "path": r.path, "query": r.query,
            "headers": [list(h) for h in r.headers], **_body_doc(r.body)}


def _response_doc(r: ResponseRecord | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"status": r.status, "reason": r.reason, "headers": [list(h) for h in r.headers],
            "size": r.size, "sha256": r.sha256, "truncated": r.truncated,
            "latency": r.latency, "error": r.error, **_body_doc(r.body)}


def sample_document(result: Result) -> dict[str, Any]:
    """The stored form of a whole (redacted) result, as :meth:`SqliteStore.exchange`
    returns it for sampled exchanges."""
    ex: Exchange = result.exchange
    nf = result.noise_fields
    return {
        "id": ex.id, "time": ex.started, "endpoint": ex.endpoint, "route": ex.route,
        "verdict": result.verdict, "sampled": True,
        "request": _request_doc(ex.request),
        "primary": _response_doc(ex.primary),
        "candidate": _response_doc(ex.candidate),
        "secondary": _response_doc(ex.secondary),
        "differences": [_diff_doc(d, d.field in nf) for d in result.differences],
        "noise_fields": sorted(nf),
        "secondary_differences": [_diff_doc(d, False) for d in result.secondary_differences],
    }


def _sample_keys(res: Result) -> list[str]:
    """What a result may be kept as a sample for (within its endpoint): ``#match`` or
    ``#error`` by verdict, and the field of each difference."""
    keys: list[str] = []
    if res.verdict == "match":
        keys.append(MATCH_SAMPLE)
    elif res.verdict == "error":
        keys.append(ERROR_SAMPLE)
    keys.extend(sorted({d.field for d in res.differences}))
    return keys


def _store_error(exc: BaseException, what: str, where: str) -> StoreError:
    err = StoreError(f"cannot {what} the store {where}: {exc}")
    err.__cause__ = exc
    return err


# ------------------------------------------------------------------ the store


class SqliteStore:
    """A result store in one SQLite file. See the module docstring."""

    def __init__(self, url: str, *, readonly: bool = False,
                 samples_per_field: int = 5) -> None:
        self.url = url
        self.readonly = readonly
        self.samples_per_field = samples_per_field
        target, uri, path = parse_url(url, readonly)
        self.path = path
        self._lock = threading.RLock()
        self._full: set[tuple[str, str]] = set()     # (endpoint, field) with K samples
        where = path or ":memory:"
        if readonly and path is not None and not os.path.exists(path):
            raise StoreError(f"no store at {path} (the file does not exist)")
        if path is not None and not uri:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise StoreError(f"cannot create the store {path}: directory {parent} "
                                 "does not exist")
        try:
            self._conn = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _store_error(exc, "open", where) from None
        try:
            self._setup()
        except StoreError:
            self._conn.close()
            raise
        except sqlite3.Error as exc:
            self._conn.close()
            msg = str(exc)
            if "not a database" in msg:
                raise StoreError(f"{where} is not an SQLite database") from exc
            raise _store_error(exc, "open", where) from exc

    # -- setup

    def _setup(self) -> None:
        c = self._conn
        where = self.path or ":memory:"
        c.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        tables = {r[0] for r in c.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if self.readonly:
            c.execute("PRAGMA query_only=1")
        else:
            try:
                c.execute("PRAGMA journal_mode=WAL").fetchone()
                c.execute("PRAGMA synchronous=NORMAL")
                c.execute("PRAGMA journal_size_limit=67108864")
            except sqlite3.OperationalError:
                pass   # a read-only file (mode=ro URI) already in WAL mode: writes fail later
        c.execute("PRAGMA cache_size=-16000")
        if "schema_version" not in tables:
            if tables - _TABLES:
                raise StoreError(f"{where} is an SQLite database but not a shadowproxy "
                                 f"store (it has tables {', '.join(sorted(tables))})")
            if self.readonly:
                raise StoreError(f"{where} is not a shadowproxy store (empty database)")
            c.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                if c.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                    c.execute("INSERT INTO schema_version(version) VALUES (?)",
                              (SCHEMA_VERSION,))
                c.execute("COMMIT")
            except sqlite3.Error:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        row = c.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] if row else None
        if version is None:
            raise StoreError(f"{where}: the schema_version table is empty")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{where} has store schema version {version}, newer than this "
                             f"shadowproxy supports ({SCHEMA_VERSION}); upgrade shadowproxy")
        self.schema_version = version

    # -- plumbing

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _write(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` in one write transaction; sqlite errors become StoreError."""
        if self.readonly:
            raise StoreError(f"the store {self.path or ':memory:'} was opened read-only")
        with self._lock:
            try:
                self._begin()
                out = fn(*args)
                self._conn.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                self._rollback()
                self._full.clear()
                raise _store_error(exc, what, self.path or ":memory:") from exc
            except BaseException:
                self._rollback()
                self._full.clear()
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _store_error(exc, "read", self.path or ":memory:") from exc

    def limit_pages(self, max_pages: int) -> int:
        """Test hook: ``PRAGMA max_page_count`` on this connection, to simulate a full
        disk (writes then fail with "database or disk is full"). → the limit in force."""
        with self._lock:
            limit: int = self._conn.execute(f"PRAGMA max_page_count={int(max_pages)}").fetchone()[0]
            return limit

    def close(self) -> None:
        with self._lock:
            try:
                if not self.readonly:
                    try:
                        self._conn.execute("PRAGMA optimize")
                    except sqlite3.Error:
                        pass
                self._conn.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

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
        rollup: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0] * len(_ROLLUP_COLS))
        for res in results:
            ex = res.exchange
            if ex.id in existing:
                continue
            existing.add(ex.id)
            p, cand, sec = ex.primary, ex.candidate, ex.secondary
            nf = res.noise_fields
            noise_count = sum(1 for d in res.differences if d.field in nf)
            chosen = self._choose_samples(res)
            ex_rows.append((
                ex.id, ex.started, ex.endpoint, ex.route, ex.request.method, ex.request.path,
                ex.request.query or "", res.verdict, p.status, cand.status,
                sec.status if sec else None, p.latency, cand.latency,
                sec.latency if sec else None, p.size, cand.size, p.error, cand.error,
                len(res.differences), noise_count, 1 if chosen else 0))
            diff_rows.extend((ex.id, ex.endpoint, ex.started, d.section, d.path, d.field,
                              d.kind, _json_text(d.a), _json_text(d.b),
                              1 if d.field in nf else 0) for d in res.differences)
            if chosen:
                sample_rows.append((ex.id, ex.endpoint, ex.started, res.verdict,
                                    orjson.dumps(sample_document(res), default=str,
                                                 option=orjson.OPT_NON_STR_KEYS)))
                for key in chosen:   # rows are inserted below: count them in this batch
                    c.execute("INSERT OR IGNORE INTO sample_keys(endpoint, field, exchange_id) "
                              "VALUES (?, ?, ?)", (ex.endpoint, key, ex.id))
            agg = rollup[(_minute(ex.started), ex.endpoint)]
            agg[0] += 1
            agg[{"match": 1, "diff": 2, "noise": 3, "error": 4}.get(res.verdict, 4)] += 1
            agg[5] += 500 <= cand.status <= 599
            agg[6] += 500 <= p.status <= 599
            agg[7] += cand.error is not None
            agg[8] += p.error is not None
            if _latency_pair_ok(p, cand):
                agg[9] += 1
                agg[10] += p.latency
                agg[11] += cand.latency
        if ex_rows:
            c.executemany(f"INSERT INTO exchanges({','.join(_EX_COLS)}) VALUES "
                          f"({','.join('?' * len(_EX_COLS))})", ex_rows)
        if diff_rows:
            c.executemany("INSERT INTO differences(exchange_id, endpoint, time, section, path, "
                          "field, kind, a, b, noise) VALUES (?,?,?,?,?,?,?,?,?,?)", diff_rows)
        if sample_rows:
            c.executemany("INSERT OR REPLACE INTO samples(exchange_id, endpoint, time, verdict, "
                          "data) VALUES (?,?,?,?,?)", sample_rows)
        if rollup:
            cols = ",".join(_ROLLUP_COLS)
            sets = ",".join(f"{k}={k}+excluded.{k}" for k in _ROLLUP_COLS)
            c.executemany(
                f"INSERT INTO rollups(minute, endpoint, {cols}) VALUES "
                f"(?,?,{','.join('?' * len(_ROLLUP_COLS))}) "
                f"ON CONFLICT(minute, endpoint) DO UPDATE SET {sets}",
                [(m, e, *v) for (m, e), v in rollup.items()])
        return len(ex_rows)

    def add_outcomes(self, rows: Sequence[OutcomeRow]) -> None:
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

    # -- retention

    def used_bytes(self) -> int:
        """Bytes of the pages in use: (page_count - freelist_count) * page_size."""
        with self._lock:
            c = self._conn
            pc: int = c.execute("PRAGMA page_count").fetchone()[0]
            fl: int = c.execute("PRAGMA freelist_count").fetchone()[0]
            ps: int = c.execute("PRAGMA page_size").fetchone()[0]
        return (pc - fl) * ps

    def _delete_exchanges(self, ids: list[str]) -> None:
        c = self._conn
        marks = ",".join("?" * len(ids))
        c.execute(f"DELETE FROM differences WHERE exchange_id IN ({marks})", ids)
        c.execute(f"DELETE FROM sample_keys WHERE exchange_id IN ({marks})", ids)
        c.execute(f"DELETE FROM samples WHERE exchange_id IN ({marks})", ids)
        c.execute(f"DELETE FROM exchanges WHERE id IN ({marks})", ids)

    def _delete_chunk(self, where: str, params: tuple[Any, ...], chunk: int) -> int:
        def run() -> int:
            ids = [r[0] for r in self._conn.execute(
                f"SELECT id FROM exchanges {where} ORDER BY time LIMIT ?", (*params, chunk))]
            if ids:
                self._delete_exchanges(ids)
            return len(ids)

        n = self._write("clean up", run)
        if n:
            self._full.clear()   # samples may have gone: let new ones be kept
        return n

    def cleanup(self, now: float, max_age: float | None, max_bytes: int | None, *,
                chunk: int = 500, max_chunks: int | None = None) -> int:
        """Delete the oldest exchanges beyond ``max_age`` seconds and ``max_bytes``;
        → exchanges deleted. At most ``max_chunks`` transactions (None: until done);
        :attr:`cleanup_pending` tells whether it stopped early."""
        deleted = 0
        chunks = 0
        self.cleanup_pending = False

        def budget() -> bool:
            if max_chunks is not None and chunks >= max_chunks:
                self.cleanup_pending = True
                return False
            return True

        if max_age:
            cutoff = now - max_age
            while budget():
                n = self._delete_chunk("WHERE time < ?", (cutoff,), chunk)
                chunks += 1
                deleted += n
                if n < chunk:
                    break
            if not self.cleanup_pending:
                # a rollup/outcome minute goes when all of it is older than the cutoff
                self._write("clean up", lambda: (
                    self._conn.execute("DELETE FROM rollups WHERE minute + 60 <= ?", (cutoff,)),
                    self._conn.execute("DELETE FROM outcomes WHERE minute + 60 <= ?",
                                       (cutoff,))))
        if max_bytes and not self.cleanup_pending and self.used_bytes() > max_bytes:
            target = int(max_bytes * 0.9)
            count = self._read("SELECT count(*) FROM exchanges")[0][0]
            while budget() and count > 0:
                used = self.used_bytes()
                if used <= target:
                    break
                # about as many rows as the excess is worth, at most one chunk
                want = max(1, min(chunk, math.ceil(count * (used - target) / used)))
                n = self._delete_chunk("", (), want)
                count -= n
                chunks += 1
                deleted += n
                if n == 0:
                    break
        return deleted

    # ------------------------------------------------------------------ reads

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


def _latency_pair_ok(p: ResponseRecord, c: ResponseRecord) -> bool:
    return p.error is None and c.error is None and p.status > 0 and c.status > 0


def _row_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    d = dict(zip(_EX_COLS, row, strict=True))
    d["sampled"] = bool(d["sampled"])
    return d


def _exchange_row(row: tuple[Any, ...]) -> ExchangeRow:
    d = _row_dict(row)
    return ExchangeRow(**d)
