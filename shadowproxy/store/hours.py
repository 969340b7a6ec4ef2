"""Hourly compaction of the per-minute aggregates (:mod:`shadowproxy.store.rollup`), for
every engine.

A day's window read from minutes merges 1,440 rows an endpoint and table, and the
latency sketches of each (three sides) and pair samples: at 10M exchanges a day most
of ``check``'s time and all of the UI's. So the hours that are over are also kept as
hour rows: ``hour_rollups``, ``hour_rollup_blobs``, ``hour_field_rollups`` and
``hour_diff_sets``, the same columns as the minute tables with ``hour`` (its start,
unix seconds) for ``minute``, each the sum or merge of the hour's minute rows. The
minute rows stay (a window's ragged hours, the diff-rate series, the examples); a
window's whole hours are read from the hour rows, the rest from the minutes
(:func:`shadowproxy.store.window.read`). Everything in the aggregates merges by
addition, and the pair sample by key, so the hour rows give exactly what their minutes
give (the pair sample keeps :data:`~shadowproxy.store.rollup.PAIR_WINDOW` pairs of
smallest key: all a reader ever takes from any window).

The ``hours`` table says which hours' rows hold exactly their minutes
(``state`` = :data:`COMPACTED`). Every write of results sets the hours it adds to
back to :data:`OPEN` in its own transaction (a late result, a comparator draining a
lag, a replay of old traffic), so readers go back to that hour's minutes until the
next compaction; an hour no row marks compacted is read from its minutes. Retention
drops the marks (and hour rows) of every hour that begins before its age cutoff, so an
hour part of whose minutes are gone is read from the minutes that are left.

Concurrency
    SQLite: the compaction of an hour is one write transaction, serialized with every
    writer of the file. PostgreSQL: a writer takes a shared advisory lock on each hour
    it writes (:data:`HOUR_LOCK`, the hour's number) before it reads that hour's
    state, held to its commit; the compaction of an hour takes the exclusive lock
    (``pg_try_advisory_xact_lock``: an hour being written is left for the next pass)
    and reads the minutes after it has it, so it sees every writer that wrote the hour
    before it, and every writer after it sees the hour compacted and opens it again.
    That takes READ COMMITTED (each statement sees what committed before it): the
    store's connections set it, whatever the server's default.

The store's writer compacts (:meth:`Store.compact`, with the retention cleanup): the
hours that ended :data:`GRACE` ago or more, oldest first, a few a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .rollup import PAIR_WINDOW, Minute
from .window import COMPACTED, HOUR, OPEN, ROLLUP_BLOBS, ROLLUP_COLS, Query, blobs, merge_blob

GRACE = 300                   # an hour is compacted once it ended this long ago
HOUR_LOCK = 0x5348_4F55       # PostgreSQL: the advisory lock class of an hour (then its number)
# each minute table → its hour table
HOUR_TABLES = {"rollups": "hour_rollups", "rollup_blobs": "hour_rollup_blobs",
               "field_rollups": "hour_field_rollups", "diff_sets": "hour_diff_sets"}


def due(q: Query, now: float, not_before: float | None = None, limit: int = 4) -> list[int]:
    """Open hours that ended :data:`GRACE` ago or more (and begin at ``not_before`` or
    later: retention is about to take the older ones), oldest first."""
    clauses, params = ["state = ?", "hour + ? <= ?"], [OPEN, HOUR, now - GRACE]
    if not_before is not None:
        clauses.append("hour >= ?")
        params.append(not_before)
    return [int(r[0]) for r in q(f"SELECT hour FROM hours WHERE {' AND '.join(clauses)} "
                                 "ORDER BY hour LIMIT ?", [*params, limit])]


def compact(q: Query, hour: int, keys: Sequence[str]) -> bool:
    """Write ``hour``'s hour rows from its minute rows and mark it compacted, in the
    caller's transaction (see the module for the locking). ``keys``: the columns the
    rows are kept apart by besides the time (``endpoint``, and PostgreSQL's
    ``instance``). → whether it compacted the hour (not when it is no longer open)."""
    state = [r[0] for r in q("SELECT state FROM hours WHERE hour = ?", [hour])]
    if state != [OPEN]:              # compacted meanwhile (another process), or forgotten
        return False
    k = ", ".join(keys)
    span = [hour, hour + HOUR]
    for table in HOUR_TABLES.values():
        q(f"DELETE FROM {table} WHERE hour = ?", [hour])
    cols = ", ".join(ROLLUP_COLS)
    sums = ", ".join(f"sum({c})" for c in ROLLUP_COLS)
    q(f"INSERT INTO hour_rollups(hour, {k}, {cols}) SELECT ?, {k}, {sums} FROM rollups "
      f"WHERE minute >= ? AND minute < ? GROUP BY {k}", [hour, *span])
    q(f"INSERT INTO hour_field_rollups(hour, {k}, field, kind, rows, noise_rows, exchanges) "
      f"SELECT ?, {k}, field, kind, sum(rows), sum(noise_rows), sum(exchanges) FROM "
      f"field_rollups WHERE minute >= ? AND minute < ? GROUP BY {k}, field, kind",
      [hour, *span])
    q(f"INSERT INTO hour_diff_sets(hour, {k}, fields, count) SELECT ?, {k}, fields, "
      f"sum(count) FROM diff_sets WHERE minute >= ? AND minute < ? GROUP BY {k}, fields",
      [hour, *span])
    # the sketches and pair samples, merged per key as a reader merges a window's
    merged: dict[tuple[Any, ...], Minute] = {}
    for row in q(f"SELECT kind, {k}, data FROM rollup_blobs WHERE minute >= ? AND "
                 "minute < ?", span):
        key = tuple(row[1:-1])
        m = merged.get(key)
        if m is None:
            m = merged[key] = Minute()
        merge_blob(m, row[0], row[-1])
    marks = ", ".join("?" * len(keys))
    for key, m in merged.items():
        for kind, data in zip(ROLLUP_BLOBS, blobs(m, PAIR_WINDOW), strict=True):
            if data is not None:
                q(f"INSERT INTO hour_rollup_blobs(kind, hour, {k}, data) VALUES "
                  f"(?, ?, {marks}, ?)", [kind, hour, *key, data])
    q("UPDATE hours SET state = ? WHERE hour = ?", [COMPACTED, hour])
    return True


def reopen(q: Query, hours: Sequence[int]) -> None:
    """Mark ``hours`` (a batch of results adds to them) open, in the writer's
    transaction: a row for a new hour, state :data:`OPEN` for a compacted one."""
    if not hours:
        return
    # read first, written only where it changes: every batch of every writer touches
    # the current hour, and an upsert would lock its row until each one commits
    marks = ",".join("?" * len(hours))
    have = {int(h): int(s) for h, s in q(
        f"SELECT hour, state FROM hours WHERE hour IN ({marks})", list(hours))}
    for h in hours:
        state = have.get(h)
        if state is None:
            q("INSERT INTO hours(hour, state) VALUES (?, ?) ON CONFLICT (hour) DO UPDATE SET "
              "state = excluded.state", [h, OPEN])
        elif state != OPEN:
            q("UPDATE hours SET state = ? WHERE hour = ?", [OPEN, h])


def forget(q: Query, cutoff: float) -> None:
    """Retention by age: the hour rows and marks of every hour that begins before
    ``cutoff`` (the minutes of an hour across it are read as they are left)."""
    for table in HOUR_TABLES.values():
        q(f"DELETE FROM {table} WHERE hour < ?", [cutoff])
    q("DELETE FROM hours WHERE hour < ?", [cutoff])


def backfill(q: Query) -> int:
    """A store made before hours: every hour with minute rows, open (the writer's
    compaction then compacts them). → hours."""
    q("INSERT INTO hours(hour, state) SELECT DISTINCT minute - minute % 3600, ? FROM rollups "
      "WHERE true ON CONFLICT (hour) DO NOTHING", [OPEN])
    return int(next(iter(q("SELECT count(*) FROM hours", [])))[0])
