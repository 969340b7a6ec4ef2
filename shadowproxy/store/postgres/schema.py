"""The PostgreSQL store's schema: the DDL, its version and the forward migrations.

Tables (every result row and every aggregate row carries the ``instance`` whose traffic
it describes: the writer's own, or in a fleet the sidecar that mirrored the exchange)
    ``exchanges``, ``differences``, ``samples``   partitioned by day on ``time`` (unix
        seconds; declarative RANGE partitioning, :mod:`.partitions`); the exchanges'
        primary key is ``(id, time)`` (a partitioned table's key holds the partition
        key); ``differences.seq`` keeps their insertion order.
    ``sample_keys``  which (endpoint, field) each sample was kept for, with its time.
    ``rollups``, ``field_rollups``, ``diff_sets``   per minute, endpoint, instance and
        ``writer`` (and field/kind, field set): ``writer`` is the writing store's own
        instance name (schema 3; '' in rows written before), so each writer updates
        only its own rows, even where several write one instance's traffic (a fleet's
        comparators write every sidecar's); readers sum across instances and writers.
    ``rollup_blobs``  per kind (a latency sketch per side, the pair sample), minute,
        endpoint, instance and writer: the aggregates' blobs, apart from the counters so
        that reading counts never reads them; readers merge across instances and writers.
    ``outcomes``     per minute, endpoint, instance, outcome and reason: counts only
        ever added to (``count + excluded.count``), so a sidecar and the comparators
        that count the outcomes of its traffic share its rows.
    ``noise``        the noise learners' evidence per (endpoint, field), last writer wins.
    ``noise_counts``  each noise learner's own (N, R, S) per (endpoint, field): a
        learner decides on the sum of everyone's (schema 2).
    ``hours``, ``hour_rollups``, ``hour_rollup_blobs``, ``hour_field_rollups``,
        ``hour_diff_sets``   (schema 5) the aggregates per hour, endpoint and instance
        for the hours that are over, compacted from the minutes of every writer
        (:mod:`shadowproxy.store.hours`); a window's whole hours are read from them.
    Schema 4: the pair samples of ``rollup_blobs`` may carry the secondary's latency
        (``rollup.PAIRS_V2``); no table changes.
    ``schema_version``  the versions applied (the highest is the store's).

Migrations run at open for writing (``shadowproxy run``, ``shadowproxy store migrate``),
one transaction each under an advisory lock, so two instances starting together apply
each once; a migration only adds (a table, a column, a column to a key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import hours
from .cursor import query_of

SCHEMA_VERSION = 5
MIGRATION_LOCK = 0x5348_4144_0001      # pg_advisory_xact_lock key of schema changes
PARTITION_LOCK = 0x5348_4144_0002      # ... of partition creation and dropping

# the partitioned tables (by day on time)
PARTITIONED = ("exchanges", "differences", "samples")
# per-minute tables kept by age, in the order a writer locks their rows (store/postgres/
# writes.py: the blobs, then the counters, the fields, the sets), which retention
# deleting them in one transaction keeps: the other order deadlocks with a writer adding
# to a minute at the cutoff
BY_AGE = ("rollup_blobs", "rollups", "field_rollups", "diff_sets", "outcomes")

_COUNTERS = ("exchanges", "matches", "diffs", "noise", "errors", "candidate_5xx",
             "primary_5xx", "candidate_errors", "primary_errors", "latency_pairs",
             "both_failed", "candidate_only_failed", "primary_only_failed")

HOURS = f"""CREATE TABLE IF NOT EXISTS hours (
    hour BIGINT PRIMARY KEY,
    state SMALLINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS hour_rollups (
    hour BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    {", ".join(f"{c} BIGINT NOT NULL DEFAULT 0" for c in _COUNTERS)},
    primary_latency_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
    candidate_latency_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, endpoint, instance)
);
CREATE TABLE IF NOT EXISTS hour_rollup_blobs (
    kind TEXT NOT NULL,
    hour BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (kind, hour, endpoint, instance)
);
CREATE TABLE IF NOT EXISTS hour_field_rollups (
    hour BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    rows BIGINT NOT NULL DEFAULT 0,
    noise_rows BIGINT NOT NULL DEFAULT 0,
    exchanges BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, endpoint, instance, field, kind)
);
CREATE TABLE IF NOT EXISTS hour_diff_sets (
    hour BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    fields TEXT NOT NULL,
    count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, endpoint, instance, fields)
)"""

NOISE_COUNTS = """CREATE TABLE IF NOT EXISTS noise_counts (
    endpoint TEXT NOT NULL,
    field TEXT NOT NULL,
    learner TEXT NOT NULL,
    n BIGINT NOT NULL,
    r BIGINT NOT NULL,
    s BIGINT NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (endpoint, field, learner)
)"""

DDL = f"""
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    applied DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM now())
);
CREATE TABLE IF NOT EXISTS exchanges (
    id TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    route TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL,
    primary_status INTEGER NOT NULL,
    candidate_status INTEGER NOT NULL,
    secondary_status INTEGER,
    primary_latency DOUBLE PRECISION NOT NULL,
    candidate_latency DOUBLE PRECISION NOT NULL,
    secondary_latency DOUBLE PRECISION,
    primary_size BIGINT NOT NULL,
    candidate_size BIGINT NOT NULL,
    primary_error TEXT,
    candidate_error TEXT,
    diff_count INTEGER NOT NULL,
    noise_count INTEGER NOT NULL,
    sampled SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (id, time)
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS exchanges_time ON exchanges(time);
CREATE INDEX IF NOT EXISTS exchanges_endpoint_time ON exchanges(endpoint, time);
CREATE INDEX IF NOT EXISTS exchanges_verdict_time ON exchanges(verdict, time);
CREATE TABLE IF NOT EXISTS differences (
    seq BIGSERIAL,
    exchange_id TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    section TEXT NOT NULL,
    path TEXT NOT NULL,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    a TEXT,
    b TEXT,
    noise SMALLINT NOT NULL DEFAULT 0
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS differences_endpoint_field_time
    ON differences(endpoint, field, time);
CREATE INDEX IF NOT EXISTS differences_exchange ON differences(exchange_id);
CREATE TABLE IF NOT EXISTS samples (
    exchange_id TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    verdict TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (exchange_id, time)
) PARTITION BY RANGE (time);
CREATE TABLE IF NOT EXISTS sample_keys (
    endpoint TEXT NOT NULL,
    field TEXT NOT NULL,
    exchange_id TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (endpoint, field, exchange_id)
);
CREATE INDEX IF NOT EXISTS sample_keys_exchange ON sample_keys(exchange_id);
CREATE INDEX IF NOT EXISTS sample_keys_time ON sample_keys(time);
CREATE TABLE IF NOT EXISTS rollups (
    minute BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    writer TEXT NOT NULL DEFAULT '',
    {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _COUNTERS)},
    primary_latency_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
    candidate_latency_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint, instance, writer)
);
CREATE TABLE IF NOT EXISTS rollup_blobs (
    kind TEXT NOT NULL,
    minute BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    writer TEXT NOT NULL DEFAULT '',
    data BYTEA NOT NULL,
    PRIMARY KEY (kind, minute, endpoint, instance, writer)
);
CREATE TABLE IF NOT EXISTS field_rollups (
    minute BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    writer TEXT NOT NULL DEFAULT '',
    field TEXT NOT NULL,
    kind TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    noise_rows INTEGER NOT NULL DEFAULT 0,
    exchanges INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint, instance, writer, field, kind)
);
CREATE TABLE IF NOT EXISTS diff_sets (
    minute BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    writer TEXT NOT NULL DEFAULT '',
    fields TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint, instance, writer, fields)
);
CREATE TABLE IF NOT EXISTS outcomes (
    minute BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    instance TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint, instance, outcome, reason)
);
CREATE TABLE IF NOT EXISTS noise (
    endpoint TEXT NOT NULL,
    field TEXT NOT NULL,
    n INTEGER NOT NULL,
    r INTEGER NOT NULL,
    s INTEGER NOT NULL,
    p_value DOUBLE PRECISION NOT NULL,
    noise SMALLINT NOT NULL,
    provisional SMALLINT NOT NULL DEFAULT 0,
    decided_at DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    instance TEXT NOT NULL,
    PRIMARY KEY (endpoint, field)
);
{NOISE_COUNTS};
{HOURS};
"""

TABLES = frozenset({"schema_version", "exchanges", "differences", "samples", "sample_keys",
                    "rollups", "rollup_blobs", "field_rollups", "diff_sets", "outcomes", "noise",
                    "noise_counts", "hours", "hour_rollups", "hour_rollup_blobs",
                    "hour_field_rollups", "hour_diff_sets"})

# version → the migration that brings a store from version - 1 to it (given a cursor,
# inside the migration's transaction; → what it did, for the log)
def _to_2(cur: Any) -> str:
    """Noise learners' own counts (``noise_counts``), summed across learners."""
    cur.execute(NOISE_COUNTS)
    return "table noise_counts added"


# the aggregate tables' keys from schema 3 (schema 2's without ``writer``)
WRITER_KEYS = {"rollups": "minute, endpoint, instance, writer",
               "rollup_blobs": "kind, minute, endpoint, instance, writer",
               "field_rollups": "minute, endpoint, instance, writer, field, kind",
               "diff_sets": "minute, endpoint, instance, writer, fields"}


def _to_3(cur: Any) -> str:
    """The aggregates keyed by writer too: a fleet's comparators write the rows of the
    sidecar whose traffic they judged, each its own. Rows already there keep writer
    ''; readers sum them with the rest. Rebuilds each table's primary key index."""
    for table, key in WRITER_KEYS.items():
        cur.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS writer TEXT NOT NULL "
                    "DEFAULT ''")
        cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {table}_pkey")
        cur.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key})")
    return "column writer added to the aggregates' keys (" + ", ".join(WRITER_KEYS) + ")"


def _to_4(cur: Any) -> str:
    """Pair samples that carry the secondary's latency (``rollup.PAIRS_V2``): no table
    changes; the version keeps an older shadowproxy, which would misread them, from
    opening the store. Samples stored before read as pairs without a secondary."""
    return "latency pair samples carry the secondary's latency from now on"


def _to_5(cur: Any) -> str:
    """Hour rows of the aggregates (:mod:`shadowproxy.store.hours`): the tables, and
    every hour with minute rows marked open; the writers compact them (or
    ``shadowproxy store compact``), readers read minutes until then."""
    for stmt in statements(HOURS):
        cur.execute(stmt)
    return f"hour aggregates added; {hours.backfill(query_of(cur)):,} hours to compact"


MIGRATIONS: dict[int, Callable[[Any], str]] = {2: _to_2, 3: _to_3, 4: _to_4, 5: _to_5}


def statements(ddl: str = DDL) -> list[str]:
    return [s.strip() for s in ddl.split(";") if s.strip()]
