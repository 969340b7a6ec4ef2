"""Reads from the per-minute aggregates give what the rows give.

* any window, aligned to minutes or not: counts, failures on the same exchange, field
  counts, forgiven diffs and quantiles (within the sketch's error) equal a computation
  over the results themselves;
* a store written by schema 1 upgrades in place, loses nothing and reads the same;
* ``check`` and ``report`` read one state of the store and agree, while a writer adds
  results and the cleanup deletes rows.
"""

from __future__ import annotations

import math
import random
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from shadowproxy.checks import run as run_checks
from shadowproxy.checks.evaluate import effective_diffs
from shadowproxy.config import load
from shadowproxy.errors import StoreError
from shadowproxy.models import Difference, Exchange, RequestRecord, ResponseRecord, Result, failed
from shadowproxy.report.data import build_report
from shadowproxy.store import open_store
from shadowproxy.store.rollup import forgiven as forgive
from shadowproxy.store.rollup import pair_ok
from shadowproxy.store.sqlite import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1.db"
T0 = 1_790_000_040.0          # a minute boundary


def nearest_rank(values: list[float], q: float) -> float:
    return sorted(values)[max(0, math.ceil(q * len(values)) - 1)]


def results(n: int, seed: int, t0: float = T0, span: float = 900.0) -> list[Result]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ep = f"GET /e{rnd.randrange(3)}"
        pfail, cfail = rnd.random() < 0.05, rnd.random() < 0.1
        p = ResponseRecord(503 if pfail else 200, latency=rnd.lognormvariate(-4, 0.7))
        c = ResponseRecord(0 if cfail else (502 if rnd.random() < 0.05 else 200),
                           latency=rnd.lognormvariate(-3.8, 0.7),
                           error="timeout" if cfail else None)
        diffs, noise = [], set()
        if not cfail and rnd.random() < 0.3:
            for f in rnd.sample(["$.a", "$.b", "$.ts", "$.c[*].x"], rnd.randint(1, 3)):
                diffs.append(Difference("body", f, rnd.choice(["changed", "type", "added"]),
                                        1, 2))
                if f == "$.ts":
                    noise.add(f)
        verdict = ("error" if cfail else "diff" if any(d.field not in noise for d in diffs)
                   else "noise" if diffs else "match")
        ex = Exchange(f"r{seed}-{i:05d}", t0 + rnd.uniform(0, span), ep, None,
                      RequestRecord("GET", ep[4:], "", (), b""), p, c)
        out.append(Result(ex, verdict, diffs, frozenset(noise)))  # type: ignore[arg-type]
    return out


def in_window(rs: list[Result], since: float | None, until: float | None) -> list[Result]:
    return [r for r in rs if (since is None or r.exchange.started >= since)
            and (until is None or r.exchange.started < until)]


def expect(rs: list[Result], endpoint: str) -> dict[str, object]:
    mine = [r for r in rs if r.exchange.endpoint == endpoint]
    pairs = [r for r in mine if pair_ok(r.exchange.primary.status, r.exchange.primary.error,
                                         r.exchange.candidate.status,
                                         r.exchange.candidate.error)]
    fails = [(failed(r.exchange.primary.status, r.exchange.primary.error),
              failed(r.exchange.candidate.status, r.exchange.candidate.error)) for r in mine]
    return {
        "verdicts": {v: sum(r.verdict == v for r in mine)
                     for v in ("match", "diff", "noise", "error")},
        "error_pairs": (len(mine), sum(p and c for p, c in fails),
                        sum(c and not p for p, c in fails), sum(p and not c for p, c in fails)),
        "fields": {f: sum(d.field == f for r in mine for d in r.differences)
                   for f in {d.field for r in mine for d in r.differences}},
        "primary": [r.exchange.primary.latency for r in pairs],
        "real_sets": [{d.field for d in r.differences if d.field not in r.noise_fields}
                      for r in mine if r.verdict == "diff"],
    }


@pytest.mark.parametrize(("since", "until"), [
    (None, None), (T0, T0 + 900), (T0 + 17.5, T0 + 601.25), (T0 + 130.1, T0 + 150.9),
    (None, T0 + 333.3), (T0 + 61.0, None)])
def test_window_reads_equal_the_rows(tmp_path: Path, since: float | None,
                                     until: float | None) -> None:
    rs = results(1500, 3)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    for i in range(0, len(rs), 97):
        store.write_results(rs[i:i + 97])
    win = in_window(rs, since, until)
    stats = {s.endpoint: s for s in store.endpoint_stats(since, until)}
    pairs = store.error_pairs(since, until)
    fields = {}
    for f in store.field_stats(None, since, until):
        fields.setdefault(f.endpoint, {})[f.field] = f.count
    sets = store.diff_sets(since, until)
    for ep in sorted({r.exchange.endpoint for r in win}):
        want = expect(win, ep)
        s = stats[ep]
        assert {"match": s.matches, "diff": s.diffs, "noise": s.noise,
                "error": s.errors} == want["verdicts"]
        assert pairs[ep] == want["error_pairs"]
        assert fields.get(ep, {}) == want["fields"]
        assert s.latency_samples == len(want["primary"])
        for q, got in ((0.5, s.primary_p50), (0.99, s.primary_p99)):
            assert got == pytest.approx(nearest_rank(want["primary"], q), rel=1 / 128)
        for noise_now in (set(), {"$.a"}, {"$.a", "$.b"}, {"$.a", "$.b", "$.c[*].x"}):
            _d, forgiven = effective_diffs(want["real_sets"], noise_now)
            assert forgive(sets.get(ep, {}), noise_now) == forgiven
        p, c = store.latencies(f"{ep}", since, until)
        assert sorted(p) == sorted(want["primary"]) and len(c) == len(p)
    store.close()


def test_a_schema_1_store_upgrades_in_place_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT max(version) FROM schema_version").fetchone() == (1,)
    rows = raw.execute("SELECT id, endpoint, verdict, primary_status, primary_error, "
                       "candidate_status, candidate_error, primary_latency FROM exchanges"
                       ).fetchall()
    diffs = raw.execute("SELECT count(*) FROM differences").fetchone()[0]
    outcomes = raw.execute("SELECT sum(count) FROM outcomes").fetchone()[0]
    raw.close()
    assert len(rows) == 300 and diffs > 0
    url = f"sqlite:///{path}"
    # a reader cannot upgrade it: it is told how
    with pytest.raises(StoreError, match="store migrate"):
        open_store(url, readonly=True)
    store = open_store(url)           # the writer upgrades it
    assert store.info().schema_version == SCHEMA_VERSION == 5
    store.close()
    store = open_store(url, readonly=True)
    try:
        info = store.info()
        assert info.exchanges == 300                     # nothing lost
        stats = {s.endpoint: s for s in store.endpoint_stats()}
        pairs = store.error_pairs()
        for ep in {r[1] for r in rows}:
            mine = [r for r in rows if r[1] == ep]
            assert stats[ep].exchanges == len(mine)
            assert stats[ep].diffs == sum(r[2] == "diff" for r in mine)
            fails = [(failed(r[3], r[4]), failed(r[5], r[6])) for r in mine]
            assert pairs[ep] == (len(mine), sum(p and c for p, c in fails),
                                 sum(c and not p for p, c in fails),
                                 sum(p and not c for p, c in fails))
            ok = [r[7] for r in mine if pair_ok(r[3], r[4], r[5], r[6])]
            assert stats[ep].primary_p99 == pytest.approx(nearest_rank(ok, 0.99), rel=1 / 128)
        assert sum(f.count for f in store.field_stats()) == diffs
        assert sum(sum(r.values()) for r in store.outcome_counts().values()) == outcomes
    finally:
        store.close()
    raw = sqlite3.connect(path)
    assert [v for (v,) in raw.execute("SELECT version FROM schema_version ORDER BY version")] \
        == [1, 2, 3, 4, 5]
    raw.close()


def test_check_and_report_agree_while_the_store_is_written_and_cleaned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    base = results(3000, 11, t0=T0, span=7200)
    writer = open_store(url)
    writer.write_results(base)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(
        "upstreams: {primary: 'http://127.0.0.1:9000', candidate: 'http://127.0.0.1:9001'}\n"
        f"store: {{url: '{url}'}}\n"
        "checks: [{name: diffs, max_diff_rate: 0.5}, {name: errors, "
        "max_error_rate_increase: 0.5}]\n")
    cfg = load(cfg_path)
    since, until = T0, T0 + 7200          # whole minutes: read from the aggregates, and a
    #                                       whole hour, from its hour rows once compacted
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                writer.write_results(results(200, 100 + i, t0=T0 + 20_000 + i * 60, span=60))
                # a size limit far below the store: every pass deletes the oldest rows,
                # those of the window included
                writer.cleanup(T0 + 30_000, None, 1, chunk=200, max_chunks=2)
                # and the hours compact (the window's among them) while it is read
                writer.compact(T0 + 100_000, None, max_hours=1)
        except BaseException as exc:   # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(4):
            report = run_checks(cfg, since=since, until=until)
            reader = open_store(url, readonly=True)
            try:
                with reader.snapshot():
                    rep = build_report(reader, since=since, until=until, cfg=None)
            finally:
                reader.close()
            by_ep = {e["endpoint"]: e for e in rep["endpoints"]}
            diff_check = next(c for c in report.checks if c.name == "diffs")
            for unit in diff_check.subchecks[0].endpoints:
                e = by_ep[unit.endpoint]
                want = expect(base, unit.endpoint)["verdicts"]
                assert e["diffs"] == want["diff"] and e["errors"] == want["error"]
                assert unit.samples == e["exchanges"] - e["errors"]
                assert unit.value == pytest.approx(e["diff_rate"])
    finally:
        stop.set()
        t.join(30)
        writer.close()
    assert not errors
    assert any(h == T0 - T0 % 3600 + 3600 for (h,) in sqlite3.connect(tmp_path / "live.db")
               .execute("SELECT hour FROM hours WHERE state = 1"))


def test_store_migrate_command_upgrades_a_schema_1_store(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstreams: {primary: 'http://127.0.0.1:9000', candidate: "
                   f"'http://127.0.0.1:9001'}}\nstore: {{url: 'sqlite:///{path}'}}\n"
                   "checks: [{name: diffs, max_diff_rate: 0.5}]\n")
    check = subprocess.run([sys.executable, "-m", "shadowproxy", "check", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0 and "store migrate" in check.stderr
    done = subprocess.run([sys.executable, "-m", "shadowproxy", "store", "migrate", "-c",
                           str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "schema version 5" in done.stdout
    assert "upgraded from version 1 to 2" in done.stderr     # logged with what it did
    assert "upgraded from version 2 to 3" in done.stderr
    assert "upgraded from version 3 to 4" in done.stderr
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT count(*) FROM exchanges").fetchone() == (300,)
    assert raw.execute("SELECT count(*) FROM field_rollups").fetchone()[0] > 0
    raw.close()


@pytest.mark.parametrize("per_minute", [40, 400])
def test_a_large_windows_pair_sample_is_its_pairs_of_smallest_key(
        store_url: str, monkeypatch: pytest.MonkeyPatch, per_minute: int) -> None:
    """Beyond PAIR_ROWS pairs a window is sampled from the minutes' samples with a bound
    estimated from its pair count: the sample is still exactly its pairs of smallest key
    (or, where minutes kept only part of theirs, every pair below their bound)."""
    from shadowproxy.store import reads  # the engines' shared reads
    from shadowproxy.store.rollup import PAIR_SAMPLE, pair_key

    monkeypatch.setattr(reads, "PAIR_ROWS", 100)
    monkeypatch.setattr(reads, "PAIR_WINDOW", 64)
    rs = results(per_minute * 20, 21, span=20 * 60)
    store = open_store(store_url)       # on each engine (the shared reads)
    store.write_results(rs)
    ok = sorted((pair_key(r.exchange.id), r.exchange.primary.latency) for r in rs
                if pair_ok(r.exchange.primary.status, r.exchange.primary.error,
                           r.exchange.candidate.status, r.exchange.candidate.error))
    p, _c = store.latencies("*")
    if per_minute <= PAIR_SAMPLE:       # every minute kept all its pairs: exact bottom-64
        assert p == [lat for _k, lat in ok[:64]]
    else:                               # a uniform sample: the pairs below some bound
        assert 0 < len(p) <= 64 and p == [lat for _k, lat in ok[:len(p)]]
    assert store.latencies("GET /e1", T0 + 60, T0 + 1100)[0]       # ragged ends too
    store.close()
