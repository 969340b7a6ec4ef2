"""The SQLite store's schema: URL parsing, the DDL and its version, the
columns the reads and writes share, and the setup of a new connection (pragmas, creating
or checking the schema). See :mod:`shadowproxy.store.sqlite.store` for what the tables
hold.
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from ...errors import StoreError
from ..window import EX_COLS, ROLLUP_BLOBS, ROLLUP_COLS

SCHEMA_VERSION = 5
BUSY_TIMEOUT = 5.0

def _aggregates(prefix: str, time: str) -> str:
    """The DDL of the aggregate tables: per minute (``rollups`` ..., time column
    ``minute``) or per hour (``hour_rollups`` ..., ``hour``: :mod:`..hours`)."""
    return f"""
CREATE TABLE IF NOT EXISTS {prefix}rollups (
    {time} INTEGER NOT NULL,
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
    both_failed INTEGER NOT NULL DEFAULT 0,
    candidate_only_failed INTEGER NOT NULL DEFAULT 0,
    primary_only_failed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ({time}, endpoint)
);
CREATE TABLE IF NOT EXISTS {prefix}rollup_blobs (
    kind TEXT NOT NULL,
    {time} INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, {time}, endpoint)
);
CREATE TABLE IF NOT EXISTS {prefix}field_rollups (
    {time} INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    noise_rows INTEGER NOT NULL DEFAULT 0,
    exchanges INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ({time}, endpoint, field, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {prefix}diff_sets (
    {time} INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    fields TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY ({time}, endpoint, fields)
) WITHOUT ROWID;
"""


_SCHEMA = f"""
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
{_aggregates("", "minute")}CREATE TABLE IF NOT EXISTS hours (
    hour INTEGER PRIMARY KEY,
    state INTEGER NOT NULL DEFAULT 0
);
{_aggregates("hour_", "hour")}CREATE TABLE IF NOT EXISTS outcomes (
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
CREATE TABLE IF NOT EXISTS noise_counts (
    endpoint TEXT NOT NULL,
    field TEXT NOT NULL,
    learner TEXT NOT NULL,
    n INTEGER NOT NULL,
    r INTEGER NOT NULL,
    s INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (endpoint, field, learner)
) WITHOUT ROWID;
"""
_TABLES = {"schema_version", "exchanges", "differences", "samples", "sample_keys", "rollups",
           "rollup_blobs", "field_rollups", "diff_sets", "outcomes", "noise", "noise_counts",
           "hours", "hour_rollups", "hour_rollup_blobs", "hour_field_rollups", "hour_diff_sets"}

_EX_COLS = EX_COLS
# the rollups' counters and sums, and the kinds of rollup_blobs (shared by the engines)
_ROLLUP_COLS = ROLLUP_COLS
_ROLLUP_BLOBS = ROLLUP_BLOBS


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


def setup_connection(c: sqlite3.Connection, where: str, readonly: bool) -> int:
    """Set up a new connection: pragmas, and the schema created (when writable and the
    database is empty) or checked. ``where`` names the store in messages.
    → the schema version of the store."""
    c.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    tables = {r[0] for r in c.execute(
        "SELECT name FROM sqlite_master WHERE type='table'")}
    if readonly:
        c.execute("PRAGMA query_only=1")
    else:
        try:
            # before journal_mode=WAL, which writes the header of a new file: a new store
            # gives freed pages back (retention's incremental vacuum); on an existing
            # store with auto_vacuum=NONE it only takes effect at the next VACUUM
            # (connection.SqliteConnection._vacuum_on_open)
            c.execute("PRAGMA auto_vacuum=INCREMENTAL")
            c.execute("PRAGMA journal_mode=WAL").fetchone()
            c.execute("PRAGMA synchronous=NORMAL")
            # the WAL left on disk after a reset: connection.WAL_CAP
            c.execute("PRAGMA journal_size_limit=67108864")
        except sqlite3.OperationalError:
            pass   # a read-only file (mode=ro URI) already in WAL mode: writes fail later
    c.execute("PRAGMA cache_size=-16000")
    if "schema_version" not in tables:
        if tables - _TABLES:
            raise StoreError(f"{where} is an SQLite database but not a shadowproxy "
                             f"store (it has tables {', '.join(sorted(tables))})")
        if readonly:
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
    version: int | None = row[0] if row else None
    if version is None:
        raise StoreError(f"{where}: the schema_version table is empty")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{where} has store schema version {version}, newer than this "
                         f"shadowproxy supports ({SCHEMA_VERSION}); upgrade shadowproxy")
    return version
