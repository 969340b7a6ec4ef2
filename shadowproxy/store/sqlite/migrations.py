"""Forward migrations of the SQLite store's schema, applied when a store is opened for
writing (``shadowproxy run``, ``shadowproxy store migrate``).

Each migration runs in one transaction with the version it brings, so a store is
always at one version or the next, never between; a migration only adds (tables,
columns, aggregates computed from the rows): no upgrade loses a stored result. A store
opened read-only at an older version is refused with the command that upgrades it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from ...errors import StoreError
from .. import hours
from .rollups import backfill
from .schema import _SCHEMA, SCHEMA_VERSION

log = logging.getLogger("shadowproxy.store")

# the columns schema 2 adds to rollups
_ROLLUPS_2 = (("both_failed", "INTEGER NOT NULL DEFAULT 0"),
              ("candidate_only_failed", "INTEGER NOT NULL DEFAULT 0"),
              ("primary_only_failed", "INTEGER NOT NULL DEFAULT 0"))


def _to_2(c: sqlite3.Connection) -> str:
    """Per-minute aggregates for reads that scale: failures on the same exchange in
    ``rollups``; latency sketches and pair samples (``rollup_blobs``), ``field_rollups``,
    ``diff_sets``; all filled from the rows still stored."""
    have = {r[1] for r in c.execute("PRAGMA table_info(rollups)")}
    for name, decl in _ROLLUPS_2:
        if name not in have:
            c.execute(f"ALTER TABLE rollups ADD COLUMN {name} {decl}")
    for stmt in _SCHEMA.split(";"):       # the new tables (CREATE ... IF NOT EXISTS)
        if stmt.strip():
            c.execute(stmt)
    return f"aggregates of {backfill(c):,} stored exchanges computed"


def _to_3(c: sqlite3.Connection) -> str:
    """Noise learners' own counts (``noise_counts``), summed across learners."""
    for stmt in _SCHEMA.split(";"):       # the new table (CREATE ... IF NOT EXISTS)
        if stmt.strip():
            c.execute(stmt)
    return "table noise_counts added"


def _to_4(c: sqlite3.Connection) -> str:
    """Pair samples that carry the secondary's latency (``rollup.PAIRS_V2``): no table
    changes; the version keeps an older shadowproxy, which would misread them, from
    opening the store. Samples stored before read as pairs without a secondary."""
    return "latency pair samples carry the secondary's latency from now on"


def _to_5(c: sqlite3.Connection) -> str:
    """Hour rows of the aggregates (:mod:`shadowproxy.store.hours`): the tables, and
    every hour with minute rows marked open; the writer compacts them (or
    ``shadowproxy store compact``), readers read minutes until then."""
    for stmt in _SCHEMA.split(";"):       # the new tables (CREATE ... IF NOT EXISTS)
        if stmt.strip():
            c.execute(stmt)
    return f"hour aggregates added; {hours.backfill(c.execute):,} hours to compact"


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], str]] = {
    2: _to_2, 3: _to_3, 4: _to_4, 5: _to_5}


def migrate(c: sqlite3.Connection, version: int, where: str, readonly: bool) -> int:
    """Bring the store from ``version`` to :data:`SCHEMA_VERSION`; → the new version."""
    if version >= SCHEMA_VERSION:
        return version
    if readonly:
        raise StoreError(
            f"{where} has store schema version {version}, older than this shadowproxy's "
            f"({SCHEMA_VERSION}): upgrade it with `shadowproxy store migrate -c FILE` (or "
            "by starting `shadowproxy run` once); nothing stored is lost")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        t0 = time.monotonic()
        c.execute("BEGIN IMMEDIATE")
        try:
            what = MIGRATIONS[target](c)
            c.execute("INSERT INTO schema_version(version) VALUES (?)", (target,))
            c.execute("COMMIT")
        except sqlite3.Error:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        log.warning("store %s: schema upgraded from version %d to %d in %.1f s (%s)",
                    where, target - 1, target, time.monotonic() - t0, what)
    return SCHEMA_VERSION
