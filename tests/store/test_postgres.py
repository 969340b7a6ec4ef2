"""The PostgreSQL store beyond the shared suite: many writers into one database, the
instance filter, idempotent retried batches, day partitions and their retention, the
password kept out of messages, schema versions. Against a real PostgreSQL the tests
start themselves (tests/pg_server.py)."""

from __future__ import annotations

import time

import pytest

from shadowproxy.errors import StoreError
from shadowproxy.store import StoreWriter, open_store
from shadowproxy.store.postgres import SCHEMA_VERSION, partitions
from shadowproxy.store.postgres.url import redact_url
from tests.store.test_store import T0, cfg, mixed_results
from tests.store_helpers import diff, response, result

pytestmark = pytest.mark.server


def _same_sketches(got_store, ref_store) -> None:
    """Both stores' latency sketches: the same endpoints, and per side the same count
    and quantiles."""
    qs = (0.5, 0.95, 0.99)
    got, want = got_store.latency_sketches(), ref_store.latency_sketches()
    assert sorted(got) == sorted(want)
    for ep, sides in want.items():
        for g, w in zip(got[ep], sides, strict=True):
            assert (g.count, g.quantiles(qs)) == (w.count, w.quantiles(qs))


def test_two_writers_count_everything_once_and_filter_by_instance(pg_url):
    a_res = mixed_results(240, seed=1)
    b_res = mixed_results(240, seed=2)
    for r in a_res:
        object.__setattr__(r.exchange, "id", "a-" + r.exchange.id)
    for r in b_res:
        object.__setattr__(r.exchange, "id", "b-" + r.exchange.id)
    a = open_store(pg_url, instance="pod-a")
    b = open_store(pg_url, instance="pod-b")
    try:
        # interleaved batches into the same minutes and endpoints
        for i in range(0, 240, 40):
            assert a.write_results(a_res[i:i + 40]) == 40
            assert b.write_results(b_res[i:i + 40]) == 40
        # a retried batch (its commit was not acknowledged) and a batch overlapping it
        assert a.write_results(a_res[40:80]) == 0
        assert b.write_results(b_res[70:90] + b_res[:1]) == 0
        a.add_outcomes([(T0, "GET /e0", "mirrored", "", 3)])
        b.add_outcomes([(T0 + 1, "GET /e0", "mirrored", "", 4)])
    finally:
        a.close()
        b.close()
    ref = open_store("sqlite:///:memory:")
    ref.write_results(a_res + b_res)
    only_a = open_store("sqlite:///:memory:")
    only_a.write_results(a_res)
    s = open_store(pg_url, readonly=True)
    sa = open_store(pg_url, readonly=True, read_instance="pod-a")
    try:
        with s.snapshot():
            assert s.verdict_counts() == ref.verdict_counts()
            assert sum(s.verdict_counts().values()) == 480
            assert s.endpoint_stats() == ref.endpoint_stats()
            assert s.endpoint_stats(T0 + 12.5, T0 + 1801.5) == \
                ref.endpoint_stats(T0 + 12.5, T0 + 1801.5)
            assert s.field_stats() == ref.field_stats() or \
                [(f.endpoint, f.field, f.count, f.exchanges) for f in s.field_stats()] == \
                [(f.endpoint, f.field, f.count, f.exchanges) for f in ref.field_stats()]
            assert s.diff_sets() == ref.diff_sets()
            assert s.latencies("*") == ref.latencies("*")
            # the aggregates' blobs: one row a kind, minute, endpoint and instance,
            # merged across instances by the readers
            assert s._read("SELECT DISTINCT instance FROM rollup_blobs ORDER BY 1") == \
                [("pod-a",), ("pod-b",)]
            _same_sketches(s, ref)
            assert s.info().exchanges == 480
            assert s.info().extra["instances"] == ["pod-a", "pod-b"]
            assert s.outcome_counts() == {"mirrored": {"": 7}}
        assert sa.verdict_counts() == only_a.verdict_counts()
        assert sa.endpoint_stats() == only_a.endpoint_stats()
        assert sa.endpoint_stats(T0 + 12.5, T0 + 1801.5) == \
            only_a.endpoint_stats(T0 + 12.5, T0 + 1801.5)
        assert {r.id[:2] for r in sa.exchanges(limit=1000)} == {"a-"}
        assert sa.outcome_counts() == {"mirrored": {"": 3}}
    finally:
        s.close()
        sa.close()


def test_writer_through_the_url_and_a_retried_batch_via_the_writer(pg_url):
    w = StoreWriter(pg_url, cfg(pg_url))
    rs = [result("diff", diffs=[diff("$.x")], started=T0 + i) for i in range(50)]
    for r in rs:
        assert w.submit(r)
    assert w.flush(20)
    for r in rs[:10]:                      # resubmitted: stored once
        assert w.submit(r)
    assert w.flush(20)
    w.close()
    s = open_store(pg_url, readonly=True)
    assert s.verdict_counts()["diff"] == 50
    assert s.rollup_totals()[rs[0].exchange.endpoint]["exchanges"] == 50
    s.close()


def test_results_go_into_day_partitions_and_retention_drops_whole_days(pg_url):
    now = time.time()
    today = partitions.day_of(now)
    rs = [result("diff", diffs=[diff("$.x")], started=(today - d) * 86400 + 3600 + i,
                 primary=response(200, {"b": "x" * 2000}))
          for d in (9, 8, 2, 1) for i in range(20)]
    store = open_store(pg_url, instance="i1", samples_per_field=100)
    assert store.write_results(rs) == 80
    names = {r[0] for r in store._read("SELECT tablename FROM pg_tables WHERE tablename "
                                       "LIKE 'exchanges_p%'")}
    assert names >= {partitions.name("exchanges", today - d) for d in (9, 8, 2, 1, 0, -1)}
    # by age: the days wholly older than 7 days go, with their sample keys
    assert store.cleanup(now, 7 * 86400, None) == 40
    assert store.verdict_counts(since=(today - 3) * 86400)["diff"] == 40
    assert store._read("SELECT count(*) FROM sample_keys WHERE time < ?",
                       ((today - 7) * 86400,)) == [(0,)]
    for table in ("rollups", "rollup_blobs"):
        assert store._read(f"SELECT count(*) FROM {table} WHERE minute < ?",
                           ((today - 7) * 86400,)) == [(0,)]
    assert store._read("SELECT count(*) FROM rollup_blobs")[0][0] > 0
    # by size: the oldest days go until under the limit; the newest is kept
    used = store.used_bytes()
    dropped = store.cleanup(now, None, used - 1)
    assert dropped >= 20
    assert store.used_bytes() < used
    left = store._read("SELECT min(time) FROM exchanges")[0][0]
    assert left is None or left >= (today - 1) * 86400
    # the aggregates outlive the detail (kept by age only)
    assert store.rollup_totals()[rs[0].exchange.endpoint]["exchanges"] == 40
    store.close()


def test_the_password_never_shows(postgres, tmp_path):
    from tests.pg_server import PgServer

    srv = PgServer(tmp_path, password="p@ss w0rd!").start()
    try:
        u = srv.create_database()
        assert "p%40ss" in u
        s = open_store(u)
        assert "w0rd" not in s.url and "***" in s.url
        assert "w0rd" not in repr(s.info())
        s.close()
        bare = u.replace(":p%40ss%20w0rd%21@", "@")
        s = open_store(bare, password="p@ss w0rd!")     # store.password_env
        s.close()
        wrong = u.replace("w0rd", "nope")
        with pytest.raises(StoreError) as err:
            open_store(wrong)
        assert "nope" not in str(err.value) and "***" in str(err.value)
        assert "password authentication failed" in str(err.value)
    finally:
        srv.stop()
    assert redact_url("postgresql://u:secret@h:5/db?sslmode=require&password=x") == \
        "postgresql://u:***@h:5/db?sslmode=require&password=***"


def test_schema_version_and_readers_of_an_empty_database(pg_url):
    with pytest.raises(StoreError, match="not a shadowproxy store"):
        open_store(pg_url, readonly=True)
    s = open_store(pg_url)
    assert s.info().schema_version == SCHEMA_VERSION
    s.close()
    s = open_store(pg_url)                 # reopened: nothing to migrate
    assert s._read("SELECT count(*) FROM schema_version") == [(1,)]
    s._write("test", lambda cur: cur.execute("INSERT INTO schema_version(version) VALUES (99)"))
    s.close()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        open_store(pg_url, readonly=True)


def test_sqlite_refuses_an_instance_filter(tmp_path):
    with pytest.raises(StoreError, match="instance"):
        open_store(f"sqlite:///{tmp_path}/x.db", read_instance="a")


def test_check_and_report_commands_read_all_instances_or_one(pg_url, tmp_path, capsys):
    import json

    from shadowproxy.cli import main

    for inst, n in (("pod-a", 30), ("pod-b", 50)):
        s = open_store(pg_url, instance=inst)
        s.write_results([result("diff", diffs=[diff("$.price")], started=time.time() - 60 - i)
                         for i in range(n)])
        s.close()
    conf = tmp_path / "c.yaml"
    conf.write_text(f"upstreams: {{primary: http://127.0.0.1:1}}\nstore: {{url: '{pg_url}'}}\n"
                    "checks:\n  - {name: diffs, max_diff_rate: 0.01, min_samples: 10}\n")
    assert main(["check", "-c", str(conf), "--format", "json"]) == 1
    out = capsys.readouterr().out
    assert "$.price" in out
    counts = []
    for extra in ([], ["--instance", "pod-a"]):
        assert main(["report", "-c", str(conf), "--format", "json", "-o",
                     str(tmp_path / "r.json"), *extra]) in (0, 1)
        counts.append(json.loads((tmp_path / "r.json").read_text()))
    text = [json.dumps(c) for c in counts]
    assert '"exchanges": 80' in text[0] and '"exchanges": 30' in text[1]


def test_a_schema_1_store_upgrades_in_place_and_keeps_what_it_holds(pg_url):
    """The previous release's schema (1) is today's without what schema 2 added (the
    noise learners' counts): such a store is refused by a reader with the command that
    upgrades it, and upgraded by a writer without losing a row."""
    import psycopg

    s = open_store(pg_url, instance="pod-a")
    s.write_results([result("diff", diffs=[diff("$.price")], started=time.time() - 60 - i)
                     for i in range(20)])
    s.close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("DROP TABLE noise_counts")
        c.execute("UPDATE schema_version SET version = 1")
    with pytest.raises(StoreError, match="store migrate"):
        open_store(pg_url, readonly=True)
    s = open_store(pg_url, instance="pod-b")           # a writer upgrades it
    try:
        assert s.info().schema_version == SCHEMA_VERSION == 5
        assert s.info().exchanges == 20
        assert s._read("SELECT max(version) FROM schema_version") == [(5,)]
        s.save_noise_counts("pod-b/1", [("GET /x", "", 10, 0, 0), ("GET /x", "$.a", 10, 3, 2)])
        assert sorted(s.noise_counts()) == [("GET /x", "", 10, 0, 0), ("GET /x", "$.a", 10, 3, 2)]
    finally:
        s.close()


def _sidecar_results(name: str, seed: int) -> list:
    """Results of exchanges a fleet's sidecar ``name`` mirrored (Exchange.instance)."""
    res = mixed_results(240, seed=seed)
    for r in res:
        object.__setattr__(r.exchange, "id", f"{name}-{r.exchange.id}")
        object.__setattr__(r.exchange, "instance", name)
    return res


def test_a_fleets_rows_are_the_sidecars_and_each_writer_keeps_its_own_aggregates(pg_url):
    """Two comparators (writers cmp-c0, cmp-c1) each write a share of two sidecars'
    exchanges into the same minutes and endpoints: every row describing traffic is
    labelled with the sidecar that mirrored it, each writer merges only its own
    aggregate rows, and reading one sidecar gives exactly its traffic."""
    cars = {"pod-a": _sidecar_results("pod-a", 1), "pod-b": _sidecar_results("pod-b", 2)}
    mixed = [r for pair in zip(cars["pod-a"], cars["pod-b"], strict=True) for r in pair]
    w0 = StoreWriter(open_store(pg_url, instance="cmp-c0"), cfg(pg_url))
    w1 = StoreWriter(open_store(pg_url, instance="cmp-c1"), cfg(pg_url))
    try:
        for i in range(0, len(mixed), 60):      # interleaved batches, as two consumers'
            for r in mixed[i:i + 30]:
                assert w0.submit(r)
            for r in mixed[i + 30:i + 60]:
                assert w1.submit(r)
        assert w0.flush(30) and w1.flush(30)
        for r in mixed[:40]:                    # redelivered to the other comparator
            assert w1.submit(r)
        # the outcomes each counted of each sidecar's traffic, and one of its own
        w0.add_outcomes([(T0, "GET /e0", "compared", "", 5)], "pod-a")
        w1.add_outcomes([(T0, "GET /e0", "compared", "", 2)], "pod-a")
        w1.add_outcomes([(T0, "GET /e0", "compared", "", 7)], "pod-b")
        w0.add_outcomes([(T0, "", "dropped", "transport_refused", 1)])
        assert w0.flush(30) and w1.flush(30)
    finally:
        w0.close()
        w0.store.close()
        w1.close()
        w1.store.close()
    side = open_store(pg_url, instance="pod-a")       # the sidecar counts its own
    side.add_outcomes([(T0, "GET /e0", "mirrored", "", 9)])
    side.close()
    s = open_store(pg_url, readonly=True)
    try:
        assert s._read("SELECT instance, count(*) FROM exchanges GROUP BY 1 ORDER BY 1") == \
            [("pod-a", 240), ("pod-b", 240)]
        for table in ("differences", "samples"):
            assert {r[0] for r in s._read(f"SELECT DISTINCT instance FROM {table}")} == \
                {"pod-a", "pod-b"}, table
        for table in ("rollups", "rollup_blobs", "field_rollups", "diff_sets"):
            got = s._read(f"SELECT DISTINCT instance, writer FROM {table} ORDER BY 1, 2")
            assert got == [("pod-a", "cmp-c0"), ("pod-a", "cmp-c1"), ("pod-b", "cmp-c0"),
                           ("pod-b", "cmp-c1")], (table, got)
        assert s._read("SELECT sum(exchanges) FROM rollups") == [(480,)]   # none twice
        assert s.info().extra["instances"] == ["pod-a", "pod-b"]
        assert s.outcome_counts() == {"compared": {"": 14}, "mirrored": {"": 9},
                                      "dropped": {"transport_refused": 1}}
    finally:
        s.close()
    for name, res in cars.items():
        ref = open_store("sqlite:///:memory:")
        ref.write_results(res)
        one = open_store(pg_url, readonly=True, read_instance=name)
        try:
            assert one.verdict_counts() == ref.verdict_counts()
            assert one.endpoint_stats() == ref.endpoint_stats()
            assert one.endpoint_stats(T0 + 12.5, T0 + 1801.5) == \
                ref.endpoint_stats(T0 + 12.5, T0 + 1801.5)
            assert one.diff_sets() == ref.diff_sets()
            assert one.latencies("*") == ref.latencies("*")
            _same_sketches(one, ref)
            assert {r.id.split("-")[0] + "-" + r.id.split("-")[1]
                    for r in one.exchanges(limit=1000)} == {name}
            rows = one.exchanges(limit=1000)
            assert len(rows) == 240
            # the document of an exchange says whose (sampled whole, and summary only)
            for sampled in (True, False):
                x = next(r for r in rows if r.sampled is sampled)
                doc = one.exchange(x.id)
                assert doc is not None and doc["sampled"] is sampled
                assert doc["instance"] == name
                assert "instance" not in (ref.exchange(x.id) or {"instance": 1})   # SQLite
            want_out = {"pod-a": {"compared": {"": 7}, "mirrored": {"": 9}},
                        "pod-b": {"compared": {"": 7}}}[name]
            assert one.outcome_counts() == want_out
        finally:
            one.close()
            ref.close()


def test_a_schema_2_store_upgrades_to_writer_keyed_aggregates(pg_url):
    """Schema 2's aggregates were keyed by instance alone: a writer upgrades them in
    place (rows kept, writer ''), and what is written after adds to the same window."""
    import psycopg

    from shadowproxy.store.postgres.schema import WRITER_KEYS

    before = mixed_results(120, seed=3)
    after = mixed_results(240, seed=3)[120:]
    s = open_store(pg_url, instance="pod-a")
    s.write_results(before)
    s.close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        for table, key in WRITER_KEYS.items():
            c.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
            c.execute(f"ALTER TABLE {table} DROP COLUMN writer")
            c.execute(f"ALTER TABLE {table} ADD PRIMARY KEY "
                      f"({key.replace(', writer', '')})")
        c.execute("UPDATE schema_version SET version = 2")
    with pytest.raises(StoreError, match="store migrate"):
        open_store(pg_url, readonly=True)
    s = open_store(pg_url, instance="pod-a")           # a writer upgrades it
    try:
        assert s.info().schema_version == SCHEMA_VERSION == 5
        assert s._read("SELECT DISTINCT writer FROM rollups") == [("",)]
        s.write_results(after)
        assert s._read("SELECT DISTINCT writer FROM rollups ORDER BY 1") == \
            [("",), ("pod-a",)]
    finally:
        s.close()
    ref = open_store("sqlite:///:memory:")
    ref.write_results(before + after)
    s = open_store(pg_url, readonly=True)
    try:
        assert s.endpoint_stats() == ref.endpoint_stats()
        assert s.diff_sets() == ref.diff_sets()
        assert s.latencies("*") == ref.latencies("*")
    finally:
        s.close()
        ref.close()


def test_outcome_counts_of_several_instances_survive_a_failed_write_exactly_once(pg_url):
    """The writer hands each instance's counts to the store in a transaction of their
    own: when one fails, it and those not yet tried are kept for the next try, and
    those already written are not written again."""
    from shadowproxy.errors import StoreUnavailable

    class FailsOnce:
        def __init__(self, inner):
            self.inner = inner
            self.failed = False

        def add_outcomes(self, rows, instance=None):
            if instance == "pod-b" and not self.failed:
                self.failed = True
                raise StoreUnavailable("cannot write to the store: connection refused")
            self.inner.add_outcomes(rows, instance)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    inner = open_store(pg_url, instance="cmp-c0")
    flaky = FailsOnce(inner)
    w = StoreWriter(flaky, cfg(pg_url), retry_min=0.05, retry_max=0.1)
    try:
        w.add_outcomes([(T0, "GET /e0", "compared", "", 3)], "pod-a")
        w.add_outcomes([(T0, "GET /e0", "compared", "", 4)], "pod-b")
        w.add_outcomes([(T0, "", "dropped", "transport_refused", 1)])
        w.add_outcomes([(T0, "GET /e0", "compared", "", 2)], "pod-a")
        assert w.flush(20)
        assert flaky.failed
        deadline = time.monotonic() + 20
        while w._pending_outcomes and time.monotonic() < deadline:
            w.flush(1)
            time.sleep(0.05)
        assert not w._pending_outcomes
    finally:
        w.close()
        inner.close()
    for name, want in (("pod-a", {"compared": {"": 5}}), ("pod-b", {"compared": {"": 4}}),
                       ("cmp-c0", {"dropped": {"transport_refused": 1}})):
        s = open_store(pg_url, readonly=True, read_instance=name)
        try:
            assert s.outcome_counts() == want, name
        finally:
            s.close()


def test_two_writers_storing_one_exchange_at_once_store_it_once_and_lose_nothing(pg_url):
    """Two comparators handed the same entry (a claimed one whose first owner was only
    slow) write it at the same moment: the second's COPY waits on the first's
    uncommitted key, then meets it committed. Its transaction is tried again (it then
    sees the exchange stored and skips it) instead of the whole batch being refused."""
    import threading

    shared = [result("diff", diffs=[diff("$.x")], started=T0 + i) for i in range(3)]
    own = [result("diff", diffs=[diff("$.y")], started=T0 + 10 + i) for i in range(5)]
    a = open_store(pg_url, instance="cmp-a")
    b = open_store(pg_url, instance="cmp-b")
    written, go = threading.Event(), threading.Event()

    def held(cur, results):
        n = a._write_results(cur, results)
        written.set()                       # uncommitted until b's COPY waits on it
        assert go.wait(20)
        return n

    a._partitions_for(r.exchange.started for r in shared)
    t = threading.Thread(target=lambda: a._write("write to", held, shared))
    t.start()
    try:
        assert written.wait(20)
        threading.Timer(1.0, go.set).start()     # a commits while b waits on its keys
        assert b.write_results(own + shared) == len(own)
        t.join(20)
    finally:
        go.set()
        a.close()
        b.close()
    s = open_store(pg_url, readonly=True)
    try:
        assert s.verdict_counts()["diff"] == len(shared) + len(own)
        assert s.rollup_totals()[shared[0].exchange.endpoint]["exchanges"] == \
            len(shared) + len(own)
    finally:
        s.close()
