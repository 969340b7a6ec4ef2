from __future__ import annotations

import dataclasses
import random
import sqlite3
import threading
import time

import pytest

from shadowproxy.compare.noise import NoiseEvidence
from shadowproxy.config import StoreConfig
from shadowproxy.errors import StoreError
from shadowproxy.store import (
    SqliteStore,
    StoreWriter,
    open_store,
)
from shadowproxy.store.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from shadowproxy.store.rollup import pair_key
from shadowproxy.store.sqlite import SCHEMA_VERSION
from tests.store_helpers import diff, response, result

NOW = time.time()
T0 = (NOW // 3600) * 3600 - 3 * 3600     # three hours ago, on an hour boundary


def nearest_rank(values: list[float], q: float) -> float:
    """The smallest value with at least ``q`` of the values at or below it."""
    import math

    return sorted(values)[max(0, math.ceil(q * len(values)) - 1)]


def url(tmp_path, name="results.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def cfg(u: str, **kw) -> StoreConfig:
    base = {"url": u, "batch": 50, "flush_interval": 0.01, "queue": 10000,
            "samples_per_field": 3, "retention_age": 0.0, "retention_size": 0}
    base.update(kw)
    return StoreConfig(**base)


def orphans(path) -> dict[str, int]:
    c = sqlite3.connect(path)
    try:
        return {t: c.execute(f"SELECT count(*) FROM {t} WHERE {col} NOT IN "
                             "(SELECT id FROM exchanges)").fetchone()[0]
                for t, col in (("differences", "exchange_id"), ("samples", "exchange_id"),
                               ("sample_keys", "exchange_id"))}
    finally:
        c.close()


def integrity(path) -> str:
    c = sqlite3.connect(path)
    try:
        return c.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        c.close()


def mixed_results(n: int = 240, seed: int = 5):
    """Results over 4 endpoints and 40 minutes with known verdicts and latencies."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ep = f"GET /e{i % 4}"
        t = T0 + i * 10
        pl = round(rnd.uniform(0.005, 0.1), 4)
        cl = round(pl * rnd.uniform(0.8, 1.5), 4)
        kind = i % 6
        sec = response(200, {"id": 1}, latency=pl) if i % 2 else None
        if kind == 0:
            out.append(result("diff", diffs=[diff("$.items[3].price", 1, 2),
                                             diff("header.x-version", "a", "b")],
                              started=t, endpoint=ep, secondary=sec,
                              primary=response(200, {"id": 1}, latency=pl),
                              candidate=response(200, {"id": 2}, latency=cl)))
        elif kind == 1:
            out.append(result("noise", diffs=[diff("$.ts", "t1", "t2")], noise=frozenset({"$.ts"}),
                              sdiffs=[diff("$.ts", "t1", "t3")], started=t, endpoint=ep,
                              secondary=sec, primary=response(200, {"id": 1}, latency=pl),
                              candidate=response(200, {"id": 1}, latency=cl)))
        elif kind == 2:
            out.append(result("error", started=t, endpoint=ep,
                              primary=response(200, {"id": 1}, latency=pl),
                              candidate=response(0, None, latency=5.0, error="timeout")))
        elif kind == 3:
            out.append(result("diff", diffs=[diff("status", 200, 503, section="status")],
                              started=t, endpoint=ep,
                              primary=response(200, {"id": 1}, latency=pl),
                              candidate=response(503, {"e": 1}, latency=cl)))
        else:
            out.append(result("match", started=t, endpoint=ep, secondary=sec,
                              primary=response(200, {"id": 1}, latency=pl),
                              candidate=response(200, {"id": 1}, latency=cl)))
    return out


def write_all(u: str, results, **kw) -> StoreWriter:
    w = StoreWriter(u, cfg(u, **kw))
    for r in results:
        assert w.submit(r)
    assert w.flush(20)
    assert w.close(20)
    assert w.acknowledged == len(results) and w.failed == 0
    return w


def test_round_trip_and_reads(store_url):
    u = store_url
    results = mixed_results()
    commits = []
    w = StoreWriter(u, cfg(u), on_commit=commits.append)
    for r in results:
        assert w.submit(r)
    w.add_outcomes([(T0, "GET /e0", "mirrored", "", 5), (T0 + 5, "GET /e0", "mirrored", "", 2),
                    (T0, "GET /e1", "dropped", "queue_full", 3),
                    (T0 + 60, "GET /e1", "not_eligible", "method", 4)])
    w.save_noise([NoiseEvidence("GET /e1", "$.ts", 100, 90, 88, 0.6, True, False, T0)])
    assert w.flush(20)
    assert sum(commits) == len(results) == w.acknowledged
    assert w.depth == 0 and w.lag == 0.0
    w.close()

    s = open_store(u, readonly=True)
    try:
        assert s.time_range() == (T0, T0 + (len(results) - 1) * 10)
        assert s.verdict_counts() == {"diff": 80, "noise": 40, "error": 40, "match": 80}
        assert s.verdict_counts(endpoint_glob="GET /e[01]")["match"] == 40
        stats = {e.endpoint: e for e in s.endpoint_stats()}
        assert set(stats) == {f"GET /e{i}" for i in range(4)}
        e0 = stats["GET /e0"]
        mine = [r for r in results if r.exchange.endpoint == "GET /e0"]
        assert e0.exchanges == len(mine) == 60
        assert e0.diffs == sum(r.verdict == "diff" for r in mine)
        assert e0.errors == e0.candidate_errors == sum(r.verdict == "error" for r in mine)
        assert e0.candidate_5xx == sum(r.exchange.candidate.status == 503 for r in mine)
        assert e0.primary_5xx == 0
        ok = [r for r in mine if r.exchange.candidate.error is None]
        pl = sorted(r.exchange.primary.latency for r in ok)
        cl = sorted(r.exchange.candidate.latency for r in ok)
        assert e0.latency_samples == len(ok)
        # quantiles from the sketches: within 1/128 of the nearest-rank value
        assert e0.primary_p50 == pytest.approx(nearest_rank(pl, 0.50), rel=1 / 128)
        assert e0.primary_p99 == pytest.approx(nearest_rank(pl, 0.99), rel=1 / 128)
        assert e0.candidate_p95 == pytest.approx(nearest_rank(cl, 0.95), rel=1 / 128)
        assert e0.diff_rate == pytest.approx(e0.diffs / (60 - e0.errors))   # among compared
        # latencies are paired: all of them, in the order of their keys
        p, c = s.latencies("GET /e0")
        assert sorted(zip(p, c, strict=True)) == sorted(
            (r.exchange.primary.latency, r.exchange.candidate.latency) for r in ok)
        assert p == [r.exchange.primary.latency
                     for r in sorted(ok, key=lambda r: pair_key(r.exchange.id))]
        assert len(s.latencies("*")[0]) == sum(r.exchange.candidate.error is None for r in results)
        assert s.latencies("nothing*") == ([], [])
        # a time window
        win = s.endpoint_stats(T0, T0 + 600)
        assert sum(e.exchanges for e in win) == 60
        # fields
        fs = {(f.endpoint, f.field): f for f in s.field_stats("GET /e0")}
        price = fs[("GET /e0", "$.items[*].price")]
        assert price.count == price.exchanges == 20
        assert price.kinds == {"changed": 20} and not price.noise
        assert s.exchange(price.example_id)["sampled"] is True
        ts = {f.endpoint: f for f in s.field_stats("GET /e*") if f.field == "$.ts"}
        assert ts["GET /e1"].noise and ts["GET /e1"].noise_count == 20
        assert ts["GET /e3"].noise             # every row was noise when written
        assert len(s.field_stats(limit=2)) == 2
        # listing
        rows = s.exchanges(endpoint="GET /e0", limit=5)
        assert [r.time for r in rows] == sorted((r.time for r in rows), reverse=True)
        assert len(rows) == 5 and rows[0].time == max(r.exchange.started for r in mine)
        errs = s.exchanges(verdict="error", limit=1000)
        assert len(errs) == 40 and all(r.candidate_error == "timeout" for r in errs)
        with_price = s.exchanges(field="$.items[*].price", limit=1000)
        assert len(with_price) == 40
        assert len(s.exchanges(since=T0, until=T0 + 100, limit=1000)) == 10
        assert len(s.exchanges(limit=10, offset=235)) == 5
        # one exchange: sampled and not
        first = results[0]
        doc = s.exchange(first.exchange.id)
        assert doc["sampled"] and doc["request"]["method"] == "GET"
        assert doc["primary"]["body"] == '{"id":1}' and doc["primary"]["body_encoding"] == "utf-8"
        assert doc["differences"][0]["path"] == "$.items[3].price"
        assert doc["differences"][0]["field"] == "$.items[*].price"
        late = [r for r in results if r.verdict == "diff" and r.exchange.endpoint == "GET /e0"][-1]
        doc = s.exchange(late.exchange.id)
        assert doc["sampled"] is False
        assert {d["path"] for d in doc["differences"]} == {d.path for d in late.differences}
        assert doc["differences"][0]["a"] in (1, 200, "a")
        assert "headers" not in doc["request"]
        assert s.exchange("no-such-id") is None
        # outcomes, noise
        assert s.outcome_counts() == {"mirrored": {"": 7}, "dropped": {"queue_full": 3},
                                      "not_eligible": {"method": 4}}
        assert s.outcome_counts(T0 + 60, T0 + 120) == {"not_eligible": {"method": 4}}
        assert s.outcome_counts(endpoint_glob="GET /e0") == {"mirrored": {"": 7}}
        nz = s.noise()
        assert len(nz) == 1 and (nz[0].endpoint, nz[0].field, nz[0].n) == ("GET /e1", "$.ts", 100)
        assert s.noise("GET /e0") == []
        # series from rollups
        series = s.diff_rate_series(bucket_seconds=600)
        e0s = series["GET /e0"]
        assert [p.time for p in e0s] == sorted(p.time for p in e0s)
        assert sum(p.exchanges for p in e0s) == 60 and sum(p.diffs for p in e0s) == e0.diffs
        assert all(p.time % 600 == 0 for p in e0s)
        assert s.endpoints() == [f"GET /e{i}" for i in range(4)]
        info = s.info()
        assert info.exchanges == 240 and info.schema_version == (
            SCHEMA_VERSION if u.startswith("sqlite") else PG_SCHEMA_VERSION)
    finally:
        s.close()


def test_samples_first_k_only(store_url):
    u = store_url
    rs = []
    for i in range(10):
        rs.append(result("diff", diffs=[diff(f"$.a[{i}]")], started=T0 + i))
        rs.append(result("diff", diffs=[diff("$.b"), diff("$.a[0]")], started=T0 + i + 0.5))
        rs.append(result("match", started=T0 + i + 0.2))
        rs.append(result("match", started=T0 + i + 0.3, endpoint="GET /other"))
        rs.append(result("error", started=T0 + i + 0.4,
                         candidate=response(0, None, error="connect")))
    write_all(u, rs, samples_per_field=3)
    s = open_store(u, readonly=True)
    rows = s._read("SELECT endpoint, field, count(*) FROM sample_keys GROUP BY endpoint, field")
    got = {(e, f): n for e, f, n in rows}
    ep = rs[0].exchange.endpoint
    assert got == {(ep, "$.a[*]"): 3, (ep, "$.b"): 3, (ep, "#match"): 3,
                   ("GET /other", "#match"): 3, (ep, "#error"): 3}
    # the first ones were kept
    kept = {r[0] for r in s._read("SELECT exchange_id FROM sample_keys WHERE field='$.a[*]'")}
    assert kept == {rs[0].exchange.id, rs[1].exchange.id, rs[5].exchange.id}
    sampled = {r.id for r in s.exchanges(limit=1000) if r.sampled}
    assert sampled == {r[0] for r in s._read("SELECT exchange_id FROM samples")}
    s.close()
    # a reopened store keeps counting from what is there
    write_all(u, [result("diff", diffs=[diff("$.b")], started=T0 + 100)], samples_per_field=3)
    s = open_store(u, readonly=True)
    assert s._read("SELECT count(*) FROM sample_keys WHERE field='$.b'")[0][0] == 3
    s.close()


def test_rollups_agree_with_exchanges(store_url):
    u = store_url
    write_all(u, mixed_results(300, seed=9))
    s = open_store(u, readonly=True)
    try:
        totals = s.rollup_totals()
        for ep, row in totals.items():
            n, m, d, nz, e, c5, p5, ce, pe, pairs, psum, csum = s._read(
                "SELECT count(*), " + ", ".join(f"sum(CASE WHEN {c} THEN 1 ELSE 0 END)" for c in (
                    "verdict='match'", "verdict='diff'", "verdict='noise'", "verdict='error'",
                    "candidate_status BETWEEN 500 AND 599", "primary_status >= 500",
                    "candidate_error IS NOT NULL", "primary_error IS NOT NULL",
                    "candidate_error IS NULL")) + ", "
                "sum(CASE WHEN candidate_error IS NULL THEN primary_latency END), "
                "sum(CASE WHEN candidate_error IS NULL THEN candidate_latency END) "
                "FROM exchanges WHERE endpoint=?", (ep,))[0]
            assert (row["exchanges"], row["matches"], row["diffs"], row["noise"], row["errors"],
                    row["candidate_5xx"], row["primary_5xx"], row["candidate_errors"],
                    row["primary_errors"], row["latency_pairs"]) == \
                (n, m, d, nz, e, c5, p5, ce, pe, pairs)
            assert row["primary_latency_sum"] == pytest.approx(psum)
            assert row["candidate_latency_sum"] == pytest.approx(csum)
        # per minute too
        per_minute = s._read("SELECT minute, endpoint, exchanges FROM rollups")
        for minute, ep, n in per_minute:
            assert n == s._read("SELECT count(*) FROM exchanges WHERE endpoint=? AND time>=? "
                                "AND time<?", (ep, minute, minute + 60))[0][0]
    finally:
        s.close()


def test_duplicate_ids_are_written_once(store_url):
    u = store_url
    r = result("diff", diffs=[diff("$.x")], id="same-id", started=T0)
    store = open_store(u)
    assert store.write_results([r, r]) == 1
    assert store.write_results([r]) == 0
    assert store._read("SELECT count(*) FROM differences")[0][0] == 1
    assert store.rollup_totals()[r.exchange.endpoint]["exchanges"] == 1
    store.close()


def test_retention_by_age(store_url):
    u = store_url
    old = [result("diff", diffs=[diff("$.x")], started=NOW - 10 * 86400 + i) for i in range(30)]
    new = [result("diff", diffs=[diff("$.x")], started=NOW - 3600 + i) for i in range(30)]
    write_all(u, old + new)
    store = open_store(u)
    deleted = store.cleanup(NOW, 7 * 86400, None, chunk=7)
    assert deleted == 30
    tr = store.time_range()
    assert tr[0] >= NOW - 3600
    if store.path:
        assert orphans(store.path) == {"differences": 0, "samples": 0, "sample_keys": 0}
    assert store._read("SELECT count(*) FROM rollups WHERE minute < ?", (NOW - 7 * 86400,)) == \
        [(0,)]
    assert store._read("SELECT count(*) FROM sample_keys WHERE exchange_id NOT IN "
                       "(SELECT id FROM exchanges)") == [(0,)]
    assert sum(p.exchanges for pts in store.diff_rate_series().values() for p in pts) == 30
    assert store.cleanup(NOW, 7 * 86400, None) == 0
    path = store.path
    store.close()
    if path:
        assert integrity(path) == "ok"


def test_retention_by_size_deletes_oldest(tmp_path):
    u = url(tmp_path)
    big = "x" * 3000
    rs = [result("diff", diffs=[diff(f"$.f{i % 40}", big, big + "y")], started=T0 + i,
                 primary=response(200, {"blob": big, "i": i}))
          for i in range(600)]
    write_all(u, rs, samples_per_field=100)
    store = open_store(u)
    before = store.used_bytes()
    limit = before // 3
    deleted = store.cleanup(NOW, None, limit, chunk=50)
    assert deleted > 0
    assert store.used_bytes() <= limit
    remaining = store._read("SELECT min(time), count(*) FROM exchanges")[0]
    assert remaining[0] == T0 + deleted and remaining[1] == 600 - deleted
    assert orphans(store.path) == {"differences": 0, "samples": 0, "sample_keys": 0}
    # rollups are kept (the series outlives the detail)
    assert store.rollup_totals()["GET /api/users/{id}"]["exchanges"] == 600
    # bounded work per call
    store.close()
    write_all(u, [result("match", started=T0 + 1000 + i, primary=response(200, {"b": big}))
                  for i in range(300)], samples_per_field=1000)
    store = open_store(u)
    store.cleanup(NOW, None, limit, chunk=10, max_chunks=2)
    assert store.cleanup_pending
    store.close()
    assert integrity(tmp_path / "results.db") == "ok"


def test_cleanup_while_writes_continue(tmp_path):
    u = url(tmp_path)
    # small transactions: the size limit is kept between them, and a 400 KB limit is
    # smaller than one of the default max_batch's transactions of these results
    c = cfg(u, batch=20, max_batch=40, samples_per_field=50, retention_size=400_000)
    w = StoreWriter(u, c, cleanup_interval=0.02, cleanup_chunks=2)
    stop = threading.Event()
    read_errors = []

    def reader():
        s = open_store(u, readonly=True)
        try:
            while not stop.is_set():
                s.endpoint_stats()
                s.field_stats()
                s.exchanges(limit=20)
        except Exception as exc:  # noqa: BLE001
            read_errors.append(exc)
        finally:
            s.close()

    th = threading.Thread(target=reader)
    th.start()
    big = "z" * 2000
    i = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        i += 1
        r = result("diff", diffs=[diff(f"$.k{i % 30}", big, big + "!")],
                   started=NOW - 100 + i * 1e-3, primary=response(200, {"b": big}))
        while not w.submit(r):
            time.sleep(0.001)
        if i % 100 == 0:
            time.sleep(0.005)
    assert w.flush(20)
    stop.set()
    th.join()
    w.cleanup_now()
    time.sleep(0.3)
    assert w.close(20)
    assert not read_errors
    assert w.failed == 0 and w.acknowledged == i
    assert w.cleaned > 0
    path = tmp_path / "results.db"
    assert integrity(path) == "ok"
    assert orphans(path) == {"differences": 0, "samples": 0, "sample_keys": 0}
    s = open_store(u, readonly=True)
    assert s.used_bytes() <= 400_000 * 1.5
    n_left = s._read("SELECT count(*) FROM exchanges")[0][0]
    # the newest survived
    newest = s._read("SELECT max(time) FROM exchanges")[0][0]
    assert newest == pytest.approx(NOW - 100 + i * 1e-3)
    assert 0 < n_left < i
    s.close()


def test_submit_never_blocks_when_the_store_is_stuck(tmp_path):
    u = url(tmp_path)
    open_store(u).close()
    blocker = sqlite3.connect(tmp_path / "results.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")          # the writer's transactions now wait
    try:
        w = StoreWriter(u, cfg(u, queue=5, batch=2))
        t = time.monotonic()
        accepted = [w.submit(result("match")) for _ in range(20)]
        assert time.monotonic() - t < 0.5
        assert accepted.count(False) >= 20 - 5 - 2 and accepted[0]
        assert w.rejected == accepted.count(False)
        time.sleep(0.2)
        assert w.lag >= 0.15 and w.depth >= 3
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert w.flush(15)
    assert w.acknowledged == accepted.count(True)
    w.close()


def test_readers_see_commits_while_writer_runs(store_url):
    u = store_url
    w = StoreWriter(u, cfg(u))
    reader = open_store(u, readonly=True)
    for i in range(10):
        w.submit(result("match", started=T0 + i))
    assert w.flush(10)
    assert reader.verdict_counts()["match"] == 10
    for i in range(5):
        w.submit(result("match", started=T0 + 100 + i))
    assert w.flush(10)
    assert reader.verdict_counts()["match"] == 15
    reader.close()
    w.close()


def test_memory_store_and_shared_store_object():
    store = open_store("sqlite:///:memory:")
    w = StoreWriter(store, cfg("sqlite:///:memory:"))
    w.submit(result("diff", diffs=[diff("$.a")]))
    assert w.flush(10)
    assert store.verdict_counts()["diff"] == 1
    w.close()
    assert store.verdict_counts()["diff"] == 1    # not closed by the writer: not its own
    store.close()


@pytest.mark.parametrize("bad, message", [
    ("mysql://x/y", "unsupported store URL"),
    ("sqlite:///", "names no file"),
    ("", "no store URL"),
])
def test_open_errors_bad_url(bad, message):
    with pytest.raises(StoreError, match=message):
        open_store(bad)


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing-dir/x.db")
    with pytest.raises(StoreError, match="no store at"):
        open_store(url(tmp_path, "absent.db"), readonly=True)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        open_store(f"sqlite:///{junk}")
    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE t(x)")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="not a shadowproxy store"):
        open_store(f"sqlite:///{other}")
    newer = tmp_path / "newer.db"
    open_store(f"sqlite:///{newer}").close()
    c = sqlite3.connect(newer)
    c.execute("UPDATE schema_version SET version = 99")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="schema version 99, newer"):
        open_store(f"sqlite:///{newer}", readonly=True)


def test_readonly_store_refuses_writes(tmp_path):
    u = url(tmp_path)
    open_store(u).close()
    s = open_store(u, readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        s.write_results([result("match")])
    s.close()


def test_relative_url_and_wal_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = open_store("sqlite:///./rel.db")
    assert isinstance(s, SqliteStore)
    assert s._read("PRAGMA journal_mode")[0][0] == "wal"
    assert s._read("PRAGMA synchronous")[0][0] == 1      # NORMAL
    s.close()
    assert (tmp_path / "rel.db").exists()


def test_indexes_used_by_reads(tmp_path):
    s = open_store(url(tmp_path))
    plan = " ".join(str(r) for r in s._read(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM exchanges WHERE endpoint=? AND time>=? "
        "AND time<?", ("a", 0, 1)))
    assert "exchanges_endpoint_time" in plan
    plan = " ".join(str(r) for r in s._read(
        "EXPLAIN QUERY PLAN SELECT field, count(*) FROM differences WHERE endpoint IN (?) "
        "AND time >= ? GROUP BY endpoint, field", ("a", 0)))
    assert "differences_endpoint_field_time" in plan
    s.close()


def test_noise_evidence_upserts_and_flips(store_url):
    from shadowproxy.compare.noise import NoiseLearner
    from shadowproxy.config import NoiseConfig

    store = open_store(store_url)
    lr = NoiseLearner(NoiseConfig(min_samples=10))
    for _ in range(20):
        lr.observe("GET /a", {"$.t"}, {"$.t"})
    store.save_noise(lr.evidence())
    assert [(r.field, r.noise, r.n) for r in store.noise()] == [("$.t", True, 20)]
    for _ in range(200):
        lr.observe("GET /a", {"$.t"}, set())      # the candidate now differs far more
    store.save_noise(lr.evidence())
    assert store.noise() == []
    rows = store.noise("GET /*", include_not_noise=True)
    assert len(rows) == 1 and not rows[0].noise and rows[0].n == 220 and rows[0].s == 20
    assert rows[0].p_value < 0.05 and rows[0].updated >= rows[0].decided_at
    store.close()


def test_writer_applies_samples_per_field_to_a_given_store(store_url):
    store = open_store(store_url)
    w = StoreWriter(store, cfg(store_url, samples_per_field=1))
    for i in range(5):
        w.submit(result("diff", diffs=[diff("$.x")], started=T0 + i))
    assert w.flush(10)
    w.close()
    assert store._read("SELECT count(*) FROM samples")[0][0] == 1
    store.close()


def test_keeps_sample_says_no_only_for_full_keys_and_summary_results_are_never_kept(tmp_path):
    store = open_store(url(tmp_path), samples_per_field=2)
    ep = result("match").exchange.endpoint
    for i in range(2):
        assert store.keeps_sample(result("match", started=T0 + i))
        store.write_results([result("match", started=T0 + i)])
    assert not store.keeps_sample(result("match"))              # #match has its 2
    assert store.keeps_sample(result("error"))                  # #error has none
    both = result("diff", diffs=[diff("$.a")], started=T0 + 10)
    store.write_results([both, result("diff", diffs=[diff("$.a")], started=T0 + 11)])
    assert not store.keeps_sample(result("diff", diffs=[diff("$.a")]))
    assert store.keeps_sample(result("diff", diffs=[diff("$.a"), diff("$.b")]))  # $.b has none
    # a summary-only result is never kept, even for a key with room
    summary = dataclasses.replace(result("diff", diffs=[diff("$.b")], started=T0 + 12),
                                  summary_only=True)
    store.write_results([summary])
    assert not store.exchange(summary.exchange.id)["sampled"]
    assert store._read("SELECT count(*) FROM sample_keys WHERE field='$.b'") == [(0,)]
    # retention may delete samples: keys are no longer known to be full
    assert store.cleanup(NOW, 3600, None) > 0
    assert store.keeps_sample(result("match"))
    assert (ep, "#match") not in store._full
    # samples off: nothing is kept
    store.samples_per_field = 0
    assert not store.keeps_sample(result("error"))
    store.close()


def test_a_whole_batch_is_written_without_waiting_for_the_flush_interval(store_url):
    u = store_url
    w = StoreWriter(u, cfg(u, batch=20, flush_interval=30.0))
    try:
        for i in range(20):
            assert w.submit(result("match", started=T0 + i))
        deadline = time.monotonic() + 5
        while w.acknowledged < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.acknowledged == 20
        assert w.submit(result("match", started=T0 + 30))    # one: waits for more...
        time.sleep(0.2)
        assert w.acknowledged == 20 and w.depth == 1 and w.lag >= 0.2
        assert w.flush(5)                                   # ...unless flushed
        assert w.acknowledged == 21
    finally:
        w.close()


def test_a_backlog_is_written_in_larger_transactions_up_to_max_batch(store_url):
    """While the writer writes one transaction, results keep coming: the next one takes
    everything waiting, up to ``max_batch`` (each minute's aggregates are then updated
    once for many results), never more, and loses none."""
    u = store_url
    sizes: list[int] = []
    w = StoreWriter(u, cfg(u, batch=10, max_batch=100, flush_interval=30.0),
                    on_commit=sizes.append)
    try:
        for i in range(1000):
            assert w.submit(result("match", started=T0 + i * 0.01))
        assert w.flush(30)
        assert sum(sizes) == w.acknowledged == 1000
        assert max(sizes) > 10            # a backlog went in one transaction...
        assert max(sizes) <= 100          # ...of at most max_batch
    finally:
        w.close()
    s = open_store(u, readonly=True)
    try:
        assert sum(e.exchanges for e in s.endpoint_stats()) == 1000
    finally:
        s.close()
