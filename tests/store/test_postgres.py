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
            qs = (0.5, 0.95, 0.99)
            got, want = s.latency_sketches(), ref.latency_sketches()
            assert sorted(got) == sorted(want)
            for ep, sides in want.items():
                for g, w in zip(got[ep], sides, strict=True):
                    assert (g.count, g.quantiles(qs)) == (w.count, w.quantiles(qs))
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
        assert s.info().schema_version == SCHEMA_VERSION == 3
        assert s.info().exchanges == 20
        assert s._read("SELECT max(version) FROM schema_version") == [(3,)]
        s.save_noise_counts("pod-b/1", [("GET /x", "", 10, 0, 0), ("GET /x", "$.a", 10, 3, 2)])
        assert sorted(s.noise_counts()) == [("GET /x", "", 10, 0, 0), ("GET /x", "$.a", 10, 3, 2)]
    finally:
        s.close()
