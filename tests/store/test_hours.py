"""Hourly compaction of the aggregates (shadowproxy.store.hours), on both engines: a
compacted store reads exactly what the same store reads from its minutes, through late
results into compacted hours, retention by age, a schema upgrade, and (PostgreSQL) a
writer of an hour holding its transaction open while the hour is compacted."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import threading
from pathlib import Path

import pytest

from shadowproxy.store import open_store
from shadowproxy.store.window import COMPACTED, HOUR, OPEN
from tests.store.test_reads_scale import results

T0 = 1_790_000_040.0          # a minute boundary 14 minutes into an hour
H0 = T0 - T0 % HOUR           # that hour
SPAN = 5 * HOUR               # the results: T0 .. T0 + 5 h, six hours (H0 .. H0 + 5 h)
LATER = T0 + 10 * HOUR        # "now" for the compaction: every hour is over
WINDOWS = [(None, None), (T0, T0 + SPAN), (T0 + 17.5, T0 + 4 * HOUR + 601.25),
           (H0 + HOUR, H0 + 4 * HOUR), (None, T0 + 3333.3), (T0 + 3661.0, None),
           (H0 + 2 * HOUR + 130.1, H0 + 2 * HOUR + 150.9), (H0 + HOUR - 60, H0 + 3 * HOUR + 60)]


@pytest.fixture
def twin_url(store_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Another new store on the same engine (the reference, never compacted)."""
    if store_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'reference.db'}"
    return str(request.getfixturevalue("postgres").create_database())


def _nan_free(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


def reads(store, since, until) -> dict[str, object]:
    """Everything the readers take from the aggregates for a window."""
    triples = store.latency_triples_of(None, since, until)
    return {
        "stats": [dataclasses.astuple(s) for s in store.endpoint_stats(since, until)],
        "error_pairs": store.error_pairs(since, until),
        "fields": sorted(dataclasses.astuple(f) for f in store.field_stats(None, since, until)),
        "sets": store.diff_sets(since, until),
        "sketches": {ep: [s.cumulative() for s in sides]
                     for ep, sides in store.latency_sketches(since, until).items()},
        "triples": [_nan_free(list(t)) for t in triples],
    }


def _write(store, rs, batch: int = 97) -> None:
    for i in range(0, len(rs), batch):
        store.write_results(rs[i:i + batch])


def _compact_all(store, now: float = LATER, not_before: float | None = None) -> int:
    n = 0
    while True:
        n += store.compact(now, not_before, max_hours=3)
        if not store.compact_pending:
            return n


def _states(store) -> dict[int, int]:
    return {int(h): int(s) for h, s in store._read("SELECT hour, state FROM hours")}


@pytest.fixture
def samples_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency pairs from the minutes' (and hours') samples even for a small window,
    as a window of more than PAIR_ROWS pairs reads them."""
    monkeypatch.setattr("shadowproxy.store.reads.PAIR_ROWS", 0)


@pytest.mark.usefixtures("samples_path")
def test_compacted_hours_read_exactly_what_their_minutes_read(store_url: str) -> None:
    rs = results(3000, 5, T0, SPAN)
    store = open_store(store_url)
    try:
        _write(store, rs)
        assert set(_states(store)) == {H0 + i * HOUR for i in range(6)}
        assert set(_states(store).values()) == {OPEN}
        before = {w: reads(store, *w) for w in WINDOWS}
        # nothing is due before an hour has been over for a while
        assert store.compact(H0 + HOUR + 60) == 0
        assert _compact_all(store) == 6
        assert set(_states(store).values()) == {COMPACTED}
        assert store._read("SELECT count(*) FROM hour_rollups")[0][0] == 6 * 3
        for w in WINDOWS:
            assert reads(store, *w) == before[w], w
        # the whole hours really come from the hour rows: without the minute rows of
        # the hours 1..3 a window of exactly those hours reads the same
        for table in ("rollups", "rollup_blobs", "field_rollups", "diff_sets"):
            _sql(store, f"DELETE FROM {table} WHERE minute >= ? AND minute < ?",
                 (H0 + HOUR, H0 + 4 * HOUR))
        assert reads(store, H0 + HOUR, H0 + 4 * HOUR) == before[(H0 + HOUR, H0 + 4 * HOUR)]
    finally:
        store.close()


def _sql(store, sql: str, params: tuple) -> None:
    """One statement in a write transaction of the store's own connection."""
    if isinstance(getattr(store, "_conn", None), sqlite3.Connection):
        store._write("test", lambda: store._conn.execute(sql, params))
    else:           # PostgreSQL's _write hands a cursor
        store._write("test", lambda cur: cur.execute(sql.replace("?", "%s"), params))


@pytest.mark.usefixtures("samples_path")
def test_late_results_reopen_their_hour_and_retention_forgets_hours(store_url: str,
                                                                    twin_url: str) -> None:
    rs = results(2400, 7, T0, SPAN)
    late = results(300, 8, H0 + HOUR, 2 * HOUR)      # into hours 1 and 2, compacted
    store, ref = open_store(store_url), open_store(twin_url)
    try:
        _write(store, rs)
        _write(ref, rs)
        _compact_all(store)
        _write(store, late)
        _write(ref, late)
        states = _states(store)
        assert (states[H0 + HOUR], states[H0 + 2 * HOUR]) == (OPEN, OPEN)
        assert states[H0 + 3 * HOUR] == COMPACTED
        for w in WINDOWS:
            assert reads(store, *w) == reads(ref, *w), w
        assert _compact_all(store) == 2
        for w in WINDOWS:
            assert reads(store, *w) == reads(ref, *w), w
        # retention by age, its cutoff inside hour 2: that hour's minutes go one by one,
        # so it is read from what is left of them; the hours after stay compacted
        cutoff = H0 + 2 * HOUR + 1500
        max_age = 30 * 86400.0
        for s in (store, ref):
            while True:
                s.cleanup(cutoff + max_age, max_age, None)
                if not s.cleanup_pending:
                    break
        states = _states(store)
        assert min(states) == H0 + 3 * HOUR
        assert set(states.values()) == {COMPACTED}
        assert store._read("SELECT min(hour) FROM hour_rollups")[0][0] == H0 + 3 * HOUR
        for w in WINDOWS:
            assert reads(store, *w) == reads(ref, *w), w
        # hours the age limit is about to take are not compacted again
        _write(store, results(50, 9, H0 + 2 * HOUR + 1600, 600))
        _write(ref, results(50, 9, H0 + 2 * HOUR + 1600, 600))
        assert _compact_all(store, cutoff + max_age + 60, not_before=cutoff + 60) == 0
        for w in WINDOWS:
            assert reads(store, *w) == reads(ref, *w), w
    finally:
        store.close()
        ref.close()


def test_a_schema_4_sqlite_store_upgrades_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = open_store(f"sqlite:///{path}")
    _write(store, results(1500, 11, T0, SPAN))
    want = {w: reads(store, *w) for w in WINDOWS}
    store.close()
    c = sqlite3.connect(path)         # what a schema 4 store is: no hour tables
    for table in ("hours", "hour_rollups", "hour_rollup_blobs", "hour_field_rollups",
                  "hour_diff_sets"):
        c.execute(f"DROP TABLE {table}")
    c.execute("UPDATE schema_version SET version = 4 WHERE version = 5")
    c.commit()
    c.close()
    with pytest.raises(Exception, match="store migrate"):
        open_store(f"sqlite:///{path}", readonly=True)
    store = open_store(f"sqlite:///{path}")
    try:
        assert store.info().schema_version == 5
        assert set(_states(store).values()) == {OPEN} and len(_states(store)) == 6
        assert _compact_all(store) == 6
        for w in WINDOWS:
            assert reads(store, *w) == want[w], w
    finally:
        store.close()


@pytest.mark.server
def test_postgres_compaction_waits_for_a_writer_of_the_hour(pg_url: str) -> None:
    """A writer's transaction that adds to an hour holds the hour's shared lock: the
    compaction leaves the hour for later instead of missing what that writer adds; once
    the writer has committed the hour compacts with everything in it."""
    rs = results(1200, 13, T0, SPAN)
    extra = results(200, 14, H0 + HOUR + 60, 1200)      # into hour 1
    store = open_store(pg_url, instance="a")
    other = open_store(pg_url, instance="b")
    ref = open_store("sqlite:///:memory:")
    try:
        _write(store, rs)
        _write(ref, rs + extra)
        held, release = threading.Event(), threading.Event()
        real = other._write_rollups

        def slow(cur, minutes):
            real(cur, minutes)
            held.set()
            release.wait(30)

        other._write_rollups = slow
        writer = threading.Thread(target=other.write_results, args=(extra,))
        writer.start()
        assert held.wait(30)
        compacted = _compact_all(store)
        states = _states(store)
        assert compacted == 5 and states[H0 + HOUR] == OPEN
        release.set()
        writer.join(30)
        assert _compact_all(store) == 1
        assert set(_states(store).values()) == {COMPACTED}
        for w in WINDOWS:
            got, want = reads(store, *w), reads(ref, *w)
            assert got["stats"] == want["stats"], w
            assert got["error_pairs"] == want["error_pairs"], w
            assert got["sets"] == want["sets"], w
            assert got["sketches"] == want["sketches"], w
    finally:
        store.close()
        other.close()
        ref.close()


def test_store_compact_command_compacts_and_check_says_the_same(tmp_path: Path) -> None:
    import subprocess
    import sys

    import orjson

    path = tmp_path / "s.db"
    store = open_store(f"sqlite:///{path}")
    _write(store, results(1500, 17, T0, SPAN))
    store.close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstreams: {primary: 'http://127.0.0.1:9000', candidate: "
                   f"'http://127.0.0.1:9001'}}\nstore: {{url: 'sqlite:///{path}', "
                   "retention_age: 3650d}\n"
                   "checks: [{name: diffs, max_diff_rate: 0.5}, {name: errors, "
                   "max_error_rate_increase: 0.01}, {name: speed, max_p99_ratio: 1.5}]\n")

    def check() -> object:
        out = subprocess.run([sys.executable, "-m", "shadowproxy", "check", "-c", str(cfg),
                              "--from", str(T0 + 100.5), "--to", str(T0 + SPAN - 99.5),
                              "--format", "json"], capture_output=True, timeout=60)
        assert out.returncode in (0, 1, 3), out.stderr
        return orjson.loads(out.stdout)["checks"]

    before = check()
    for want in ("6 hours compacted", "0 hours compacted"):
        done = subprocess.run([sys.executable, "-m", "shadowproxy", "store", "compact", "-c",
                               str(cfg)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert want in done.stdout
    assert check() == before


@pytest.mark.server
def test_postgres_hours_hold_under_a_server_default_of_repeatable_read(pg_url: str) -> None:
    """The hour locks order writers and the compaction only if each statement after a
    lock sees what committed before it (READ COMMITTED). A database whose default
    isolation is REPEATABLE READ (a server or role setting) must not let a writer whose
    snapshot predates a compaction add to the compacted hour without reopening it."""
    rs = results(800, 31, T0, SPAN)
    extra = results(150, 32, H0 + HOUR + 60, 1200)      # into hour 1
    setup = open_store(pg_url)
    setup._write("test", lambda cur: cur.execute(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation "
        "= ''repeatable read''', current_database()); END $$"))
    setup.close()
    writer, compactor = open_store(pg_url, instance="a"), open_store(pg_url, instance="c")
    ref = open_store("sqlite:///:memory:")
    try:
        _write(writer, rs)
        _write(ref, rs + extra)
        real = writer._write_rollups

        def compact_first(cur, minutes):
            # the writer's transaction has read already (its snapshot is taken); the
            # hour is compacted and committed before the writer locks it
            assert _compact_all(compactor) == 6
            real(cur, minutes)

        writer._write_rollups = compact_first
        writer.write_results(extra)
        writer._write_rollups = real
        assert _states(writer)[H0 + HOUR] == OPEN
        for w in WINDOWS:
            assert reads(writer, *w)["stats"] == reads(ref, *w)["stats"], w
    finally:
        writer.close()
        compactor.close()
        ref.close()


def test_compact_counts_only_the_hours_it_compacted(store_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two compactors of one store (``shadowproxy store compact`` beside the writer of
    ``shadowproxy run``): an hour the other compacted between this one's look at what is
    due and its transaction is not counted (nor compacted again)."""
    from shadowproxy.store import hours
    store, other = open_store(store_url), open_store(store_url)
    try:
        _write(store, results(600, 33, T0, SPAN))
        real = hours.due

        def due_then_other(*args, **kw):
            got = real(*args, **kw)
            monkeypatch.setattr(hours, "due", real)
            assert _compact_all(other) == 6
            return got

        monkeypatch.setattr(hours, "due", due_then_other)
        assert store.compact(LATER, None, max_hours=3) == 0
        assert set(_states(store).values()) == {COMPACTED}
    finally:
        store.close()
        other.close()


@pytest.mark.server
@pytest.mark.usefixtures("samples_path")
def test_postgres_hour_rows_keep_each_instance_apart(pg_url: str) -> None:
    """``--instance`` (a reader scoped to one instance) reads the same from the hour rows
    as from the minutes: the hour rows are kept per endpoint and instance."""
    a, b = open_store(pg_url, instance="a"), open_store(pg_url, instance="b")
    ra = open_store(pg_url, instance="r", read_instance="a")
    rb = open_store(pg_url, instance="r", read_instance="b")
    try:
        _write(a, results(900, 21, T0, SPAN))
        _write(b, results(700, 22, T0 + 100, SPAN))
        before = {w: (reads(ra, *w), reads(rb, *w), reads(a, *w)) for w in WINDOWS}
        assert before[(None, None)][0] != before[(None, None)][1]
        assert _compact_all(a) == 6
        assert a._read("SELECT count(DISTINCT instance) FROM hour_rollups")[0][0] == 2
        for w in WINDOWS:
            assert (reads(ra, *w), reads(rb, *w), reads(a, *w)) == before[w], w
    finally:
        for s in (a, b, ra, rb):
            s.close()


@pytest.mark.server
@pytest.mark.usefixtures("samples_path")
def test_a_schema_4_postgres_store_upgrades_and_compacts(pg_url: str) -> None:
    store = open_store(pg_url, instance="a")
    _write(store, results(900, 23, T0, SPAN))
    want = {w: reads(store, *w) for w in WINDOWS}

    def to_4(cur) -> None:            # what a schema 4 store is: no hour tables
        for table in ("hours", "hour_rollups", "hour_rollup_blobs", "hour_field_rollups",
                      "hour_diff_sets"):
            cur.execute(f"DROP TABLE {table}")
        cur.execute("UPDATE schema_version SET version = 4 WHERE version = 5")

    store._write("test", to_4)
    store.close()
    with pytest.raises(Exception, match="store migrate"):
        open_store(pg_url, readonly=True)
    store = open_store(pg_url, instance="a")
    try:
        assert store.info().schema_version == 5
        assert set(_states(store).values()) == {OPEN} and len(_states(store)) == 6
        for w in WINDOWS:
            assert reads(store, *w) == want[w], w
        assert _compact_all(store) == 6
        for w in WINDOWS:
            assert reads(store, *w) == want[w], w
    finally:
        store.close()


_KILLED_COMPACTOR = """
import sys, time
from shadowproxy.store import hours, open_store
real = hours.compact
def slow(q, h, keys):
    done = real(q, h, keys)
    print("compacted, not committed", flush=True)
    time.sleep(60)
    return done
hours.compact = slow
open_store(sys.argv[1]).compact(float(sys.argv[2]), None, max_hours=1)
"""


@pytest.mark.usefixtures("samples_path")
def test_a_compaction_killed_before_its_commit_leaves_the_hour_open(store_url: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    store = open_store(store_url)
    _write(store, results(900, 24, T0, SPAN))
    want = {w: reads(store, *w) for w in WINDOWS}
    assert _compact_all(store, not_before=H0 + HOUR) == 5        # all but hour 0
    store.close()
    p = subprocess.Popen([sys.executable, "-c", _KILLED_COMPACTOR, store_url, str(LATER)],
                         stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    try:
        assert p.stdout is not None
        assert p.stdout.readline().startswith("compacted, not committed")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
    store = open_store(store_url)
    try:
        states = _states(store)
        assert states.pop(H0) == OPEN and set(states.values()) == {COMPACTED}
        assert store._read("SELECT count(*) FROM hour_rollups WHERE hour = ?", (H0,)) \
            == [(0,)]
        for w in WINDOWS:
            assert reads(store, *w) == want[w], w
        assert _compact_all(store) == 1
        for w in WINDOWS:
            assert reads(store, *w) == want[w], w
    finally:
        store.close()
