"""The anytime-valid tests of ``checks/sequential.py``: seeded simulations with a look
after every few exchanges, and the decisions they give in a store with a secondary."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from shadowproxy.checks import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    ErrorPairs,
    MemorySource,
    evaluate,
    run,
    sequential,
    stats,
)
from shadowproxy.cli import main as cli_main
from shadowproxy.config import CheckConfig, load
from shadowproxy.models import Exchange, RequestRecord, Result
from tests.checks.test_checks import NOW, USERS, changed, config, res, resp, write

RUNS = 300


def _looks(p: float, t: float, n_max: int, every: int, seed: int,
           decide: str) -> int | None:
    """Bernoulli(p) stream, a look every ``every``: the first look at which ``decide``
    ('fail': rate above t, 'pass': below, 'cp': the fixed-sample Clopper-Pearson lower
    bound above t) holds; None when none by ``n_max``."""
    rnd = random.Random(seed)
    k = 0
    for n in range(1, n_max + 1):
        k += rnd.random() < p
        if n % every:
            continue
        if decide == "fail" and sequential.shows_above(k, n, t, 0.025):
            return n
        if decide == "pass" and sequential.shows_below(k, n, t, 0.025):
            return n
        if decide == "cp" and stats.clopper_pearson(k, n, 0.95)[0] > t:
            return n
    return None


def test_a_rate_exactly_at_the_threshold_is_failed_at_most_alpha_over_all_looks():
    """The hardest null (true rate = threshold), a look every 20 exchanges up to 5,000
    (250 looks): the always-valid test fails at most 2.5 % of the runs; the fixed-sample
    Clopper-Pearson bound, looked at as often, fails far more (its 2.5 % holds for one
    look only)."""
    seq = sum(_looks(0.01, 0.01, 5000, 20, s, "fail") is not None for s in range(RUNS))
    cp = sum(_looks(0.01, 0.01, 5000, 20, s, "cp") is not None for s in range(RUNS))
    assert seq <= 0.025 * RUNS, seq
    assert cp > 2 * max(seq, 0.025 * RUNS), (cp, seq)


def test_a_rate_at_the_threshold_is_never_passed_more_than_alpha():
    passed = sum(_looks(0.01, 0.01, 5000, 20, s, "pass") is not None for s in range(RUNS))
    assert passed <= 0.025 * RUNS, passed


def test_an_identical_candidate_passes_within_a_stated_number_of_exchanges():
    """No diff at all: a 1 % threshold passes at 416 compared exchanges, 0.5 pp of error
    increase at 915 (samples_to_decide, stated in docs/checks.md)."""
    assert sequential.samples_to_decide("max_diff_rate", 0.01, 0.95) == 416
    assert sequential.shows_below(0, 416, 0.01, 0.025)
    assert not sequential.shows_below(0, 415, 0.01, 0.025)
    assert sequential.samples_to_decide("max_error_rate_increase", 0.005, 0.95) == 915
    assert sequential.difference_bounds(0, 0, 915, 0.95)[1] < 0.005
    assert sequential.difference_bounds(0, 0, 914, 0.95)[1] >= 0.005


def test_a_regression_is_failed_early():
    """3 % against a 1 % threshold, a look every 20: failed in every run, at a median of
    at most 800 exchanges (measured: 400)."""
    at = [_looks(0.03, 0.01, 5000, 20, s, "fail") for s in range(RUNS)]
    assert all(n is not None for n in at)
    median = sorted(at)[RUNS // 2]  # type: ignore[type-var]
    assert median <= 800, median


def test_bounds_agree_with_the_tests_and_are_monotone():
    for k, n in ((0, 100), (3, 1000), (40, 1000), (999, 1000)):
        lo, hi = sequential.rate_bounds(k, n, 0.95)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
        if lo > 0:
            assert sequential.shows_above(k, n, lo * 0.999, 0.025)
            assert not sequential.shows_above(k, n, lo * 1.001 + 1e-12, 0.025)
        if hi < 1:
            assert sequential.shows_below(k, n, hi * 1.001, 0.025)
    # wider than one fixed-sample interval (the price of looking any number of times)
    cp = stats.clopper_pearson(30, 1000, 0.95)
    lo, hi = sequential.rate_bounds(30, 1000, 0.95)
    assert lo < cp[0] and hi > cp[1] and hi - lo < 3 * (cp[1] - cp[0])


def test_quantile_bounds_cover_the_true_quantile_over_all_looks():
    """Log-normal latencies, p50 and p99 bounded at every 100th value up to 3,000: the
    true quantile leaves the bounds in at most alpha (2.5 % per side) of the runs."""
    runs, misses = 100, {0.5: 0, 0.99: 0}
    for seed in range(runs):
        rnd = random.Random(seed)
        xs: list[float] = []
        missed = {0.5: False, 0.99: False}
        for i in range(1, 3001):
            xs.append(rnd.lognormvariate(0.0, 0.5))
            if i % 100:
                continue
            cum = sequential.sorted_cumulative(xs)
            for q in missed:
                true = math.exp(0.5 * {0.5: 0.0, 0.99: 2.3263478740408408}[q])
                lo, hi = sequential.quantile_bounds(cum, q, 0.025)
                if (lo is not None and lo >= true) or (hi is not None and hi < true):
                    missed[q] = True
        for q, m in missed.items():
            misses[q] += m
    assert misses[0.5] <= 0.05 * runs and misses[0.99] <= 0.05 * runs, misses


def _paired(rnd: random.Random, n: int, factor: float) -> tuple[list[float], list[float]]:
    """Paired latencies: a request's cost (log-normal) shared by both sides, times
    independent jitter per side (log-normal, sigma 0.1); the candidate times ``factor``,
    so the per-exchange ratio's median is exactly ``factor``."""
    prim, cand = [], []
    for _ in range(n):
        base = rnd.lognormvariate(math.log(0.03), 0.35)
        prim.append(base * rnd.lognormvariate(0.0, 0.1))
        cand.append(factor * base * rnd.lognormvariate(0.0, 0.1))
    return prim, cand


def test_paired_ratio_at_the_threshold_is_failed_at_most_alpha_over_all_looks():
    """The hardest null of the paired test: the per-exchange ratios' median exactly at
    the threshold (1.1), a look every 50 pairs up to 1,500: the lower bound ever above
    the threshold in at most 2.5 % of the runs (its level); and it does not fail a
    median of 1.0 either."""
    runs, failed, failed_aa = 200, 0, 0
    for seed in range(runs):
        prim, cand = _paired(random.Random(seed), 1500, 1.1)
        aa = _paired(random.Random(10_000 + seed), 1500, 1.0)
        hit = hit_aa = False
        for n in range(50, 1501, 50):
            hit = hit or sequential.paired_ratio_bounds(
                prim[:n], cand[:n], 0.5, 0.025, 0.025)[0] > 1.1
            hit_aa = hit_aa or sequential.paired_ratio_bounds(
                aa[0][:n], aa[1][:n], 0.5, 0.025, 0.025)[0] > 1.1
        failed += hit
        failed_aa += hit_aa
    assert failed <= 0.025 * runs, failed
    assert failed_aa == 0, failed_aa


def test_paired_ratio_finds_a_slowdown_the_separate_quantiles_do_not():
    """15 % slower against a 1.10 threshold on 1,250 pairs (one endpoint of four at
    5,000 exchanges): the paired lower bound clears 1.10; the ratio of the two sides'
    separately bounded medians does not (the request's own cost, shared by both sides,
    spreads each side far more than the jitter between them)."""
    paired = separate = 0
    for seed in range(20):
        prim, cand = _paired(random.Random(20_000 + seed), 1250, 1.15)
        paired += sequential.paired_ratio_bounds(prim, cand, 0.5, 0.0125, 0.025)[0] > 1.1
        separate += sequential.ratio_bounds(
            sequential.sorted_cumulative(prim), sequential.sorted_cumulative(cand), 0.5,
            0.95)[0] > 1.1
    assert paired >= 19 and separate == 0, (paired, separate)


def test_pair_ratio_of_zero_latencies():
    assert sequential.pair_ratio(0.0, 0.0) == 1.0
    assert sequential.pair_ratio(0.0, 0.01) == math.inf
    assert sequential.pair_ratio(0.02, 0.01) == 0.5
    assert sequential.paired_ratio_bounds([], [], 0.5, 0.025, 0.025) == (0.0, math.inf)


def test_a_store_fails_the_slower_endpoint_on_its_latency_pairs(tmp_path):
    """Four endpoints of 1,000 exchanges, one of them 15 % slower, through the store:
    the p50 check fails that endpoint by the median of its per-exchange ratios (read
    from the store's latency pairs), and not the others."""
    eps = [USERS, "GET /api/items", "GET /api/orders", "GET /api/search"]
    rnd = random.Random(7)
    results = []
    for i in range(4000):
        ep = eps[i % 4]
        prim, cand = _paired(rnd, 1, 1.15 if ep == USERS else 1.0)
        results.append(res(ep, ago=600 - i * 0.1, primary=resp(latency=prim[0]),
                           candidate=resp(latency=cand[0])))
    url = write(tmp_path / "r.db", results)
    cfg = load(config(tmp_path, url, [{"name": "speed", "max_p50_ratio": 1.10}]))
    report = run(cfg, since=None, until=NOW + 1)
    (check,) = report.checks
    (sub,) = check.subchecks
    assert sub.verdict == FAIL
    by_ep = {u.endpoint: u for u in sub.endpoints}
    slow = by_ep[USERS]
    assert slow.verdict == FAIL and slow.lo > 1.1, slow.reason
    assert slow.details["paired_samples"] == 1000
    assert slow.details["paired_ratio"] == pytest.approx(1.15, rel=0.03)
    assert slow.details["paired_interval"]["lo"] > 1.1
    assert "per-exchange ratios" in slow.reason
    assert not any(by_ep[e].verdict == FAIL for e in eps[1:]), [by_ep[e].reason for e in eps]


def test_one_candidate_failure_does_not_hold_an_identical_endpoint_forever():
    """An endpoint of 1,249 exchanges whose one discordant failure was the candidate's
    cannot show 0.5 pp yet, and an identical candidate could have had the same data:
    it is judged within the aggregate (low traffic), which passes; with the failures
    split evenly rounding down it was judged alone and held the check inconclusive."""
    src = MemorySource(pairs_by_endpoint={"A": ErrorPairs(1249, 0, 1, 0),
                                          "B": ErrorPairs(3000, 0, 1, 1)})
    check = CheckConfig(name="errors", max_error_rate_increase=0.005)
    assert sequential.difference_bounds(1, 0, 1249, 0.95)[1] > 0.005
    (res_,) = evaluate([check], src).checks
    (sub,) = res_.subchecks
    units = {u.endpoint: u for u in sub.endpoints}
    assert units["A"].details.get("low_traffic") and units["A"].verdict == INCONCLUSIVE
    assert units["B"].verdict == PASS and sub.aggregate.verdict == PASS
    assert sub.verdict == PASS, sub.summary


def test_the_sign_test_against_the_secondary():
    """One difference the secondary happened not to show is never significant; eight
    with none from the secondary are; equal counts never are."""
    assert not sequential.more_than_secondary(1, 0, 0.01)
    assert not sequential.more_than_secondary(3, 0, 0.01)
    assert sequential.more_than_secondary(9, 0, 0.01)
    assert not sequential.more_than_secondary(500, 500, 0.01)
    assert sequential.more_than_secondary(150, 80, 0.01)


# ------------------------------------------------------------------ against the secondary


def _result(i: int, *, field: str | None = None, ago: float = 60.0) -> Result:
    """An exchange with a secondary answer; a real difference on ``field`` if given."""
    ex = Exchange(id=f"s{i:07d}", started=NOW - ago + i * 0.001, endpoint=USERS,
                  route=None, request=RequestRecord("GET", "/api/users/1", "", (), b""),
                  primary=resp(), candidate=resp(), secondary=resp())
    if field is None:
        return Result(ex, "match", [], frozenset(), [])
    return Result(ex, "diff", [changed(field)], frozenset(), [])


@pytest.mark.parametrize("rare", [1, 3])
def test_a_rarely_differing_field_does_not_fail_an_aa_run(tmp_path, rare):
    """A field (a one-second timestamp, a cache flag) the candidate differed on a few
    times and the secondary happened never to: S = 0, so the learner never calls it
    noise. The check does not count it against the candidate (the sequential sign test
    against the secondary is not significant): never a failure, critical or not. It
    is not forgiven for a pass either (it may be the start of a regression): with 500
    exchanges the check waits; with 1,500 it passes."""
    results = [_result(i, field="$.ts" if i < rare else None) for i in range(1500)]
    url = write(tmp_path / "r.db", results[:500])
    checks = [{"name": "c", "max_diff_rate": 0.01, "critical": True}]
    sub = run(load(config(tmp_path, url, checks)), since=None,
              until=NOW + 1).checks[0].subchecks[0]
    assert sub.verdict == INCONCLUSIVE, sub.summary
    agg = sub.aggregate.details
    assert agg["diffs"] == 0 and agg["forgiven"] == agg["uncertain"] == rare
    assert "not shown to differ more often than with the secondary" in sub.aggregate.reason
    url = write(tmp_path / "r2.db", results)
    sub = run(load(config(tmp_path, url, checks)), since=None,
              until=NOW + 1).checks[0].subchecks[0]
    assert sub.verdict == PASS, sub.summary


def test_a_field_beyond_the_secondary_fails(tmp_path):
    """25 of 500 (5 %) with none from the secondary: significant, counted, failed; the
    same without a secondary is judged on the absolute threshold and fails too."""
    results = [_result(i, field="$.price" if i % 20 == 0 else None) for i in range(500)]
    url = write(tmp_path / "r.db", results)
    cfg = load(config(tmp_path, url, [{"name": "c", "max_diff_rate": 0.01}]))
    report = run(cfg, since=None, until=NOW + 1)
    sub = report.checks[0].subchecks[0]
    assert sub.verdict == FAIL and sub.aggregate.details["diffs"] == 25
    assert "$.price" in sub.endpoints[0].reason


# ------------------------------------------------------------------ --watch on a real store


def _cli(tmp_path: Path, url: str, checks: list, *args: str, capsys) -> tuple[int, str]:
    code = cli_main(["check", "-c", str(config(tmp_path, url, checks)), *args])
    out, err = capsys.readouterr()
    return code, out + err


WATCH = ("--watch", "--interval", "0.2s", "--timeout", "1s")


def test_watch_exit_codes_on_a_real_store(tmp_path, capsys):
    """Stores written through the real StoreWriter: decided at the first look (0 and
    1), or undecided until the timeout (3, with a line per look)."""
    good = write(tmp_path / "good.db", [_result(i) for i in range(600)])
    code, out = _cli(tmp_path, good, [{"name": "c", "max_diff_rate": 0.01}], *WATCH,
                     capsys=capsys)
    assert code == 0 and out.startswith("look 1 (+0s): PASS"), out
    bad = write(tmp_path / "bad.db",
                [_result(i, field="$.price" if i % 10 == 0 else None) for i in range(600)])
    code, out = _cli(tmp_path, bad, [{"name": "c", "max_diff_rate": 0.01}], *WATCH,
                     capsys=capsys)
    assert code == 1 and out.startswith("look 1 (+0s): FAIL; fail: c.max_diff_rate"), out
    few = write(tmp_path / "few.db", [_result(i) for i in range(50)])
    code, out = _cli(tmp_path, few, [{"name": "c", "max_diff_rate": 0.01}], *WATCH,
                     capsys=capsys)
    looks = [line for line in out.splitlines() if line.startswith("look ")]
    assert code == 3 and len(looks) >= 3, out
    assert "waiting for data: c.max_diff_rate (50 samples" in looks[0]
    assert "timeout after" in out and "verdict: INCONCLUSIVE" in out
    # --to makes no sense for a growing window; a bad --interval is a usage error
    assert _cli(tmp_path, few, [{"name": "c", "max_diff_rate": 0.01}], "--watch", "--to",
                "now", capsys=capsys)[0] == 2
    assert _cli(tmp_path, few, [{"name": "c", "max_diff_rate": 0.01}], "--watch",
                "--interval", "soon", capsys=capsys)[0] == 2


def test_low_traffic_policies(tmp_path):
    """Four endpoints of 300 clean exchanges each, 0.5 pp error threshold (915 needed to
    pass alone): `aggregate` passes on the 1,200 together, `inconclusive` waits,
    `ignore` has nothing left to judge."""
    results = []
    for j in range(4):
        for i in range(300):
            r = _result(j * 1000 + i)
            ex = r.exchange
            results.append(Result(Exchange(ex.id, ex.started, f"GET /e{j}", None, ex.request,
                                           ex.primary, ex.candidate, ex.secondary),
                                  "match", [], frozenset(), []))
    url = write(tmp_path / "r.db", results)
    verdicts = {}
    for policy in ("aggregate", "inconclusive", "ignore"):
        cfg = load(config(tmp_path, url, [{"name": "c", "max_error_rate_increase": 0.005,
                                           "low_traffic": policy}]))
        sub = run(cfg, since=None, until=NOW + 1).checks[0].subchecks[0]
        verdicts[policy] = sub.verdict
        assert all(u.details.get("low_traffic") for u in sub.endpoints)
        assert "too little traffic to be judged alone" in sub.summary
    assert verdicts == {"aggregate": PASS, "inconclusive": INCONCLUSIVE,
                        "ignore": INCONCLUSIVE}


def test_check_and_report_give_one_diff_rate(tmp_path):
    """Two rare differences the secondary never showed (S = 0) and a field since learned
    as noise: the stored verdicts say 12 diffs, the check counts none against the
    candidate, and the report (and the admin API, through the same function) shows the
    check's figure, not the stored verdicts'."""
    from shadowproxy.compare.noise import NoiseEvidence
    from shadowproxy.report.data import build_report
    from shadowproxy.store import open_store

    results = ([_result(i, field="$.ts" if i < 2 else None) for i in range(600)]
               + [_result(1000 + i, field="$.gen") for i in range(10)])
    ev = [NoiseEvidence(USERS, "$.gen", 610, 600, 590, 0.9, True, False, NOW)]
    url = write(tmp_path / "r.db", results, ev)
    cfg = load(config(tmp_path, url, [{"name": "c", "max_diff_rate": 0.01}]))
    since, until = NOW - 3600, NOW + 1
    agg = run(cfg, since=since, until=until).checks[0].subchecks[0].aggregate
    store = open_store(url, readonly=True)
    try:
        stored = store.endpoint_stats(since, until)[0]
        doc = build_report(store, since=since, until=until, checks=None)
    finally:
        store.close()
    assert stored.diffs == 12 and agg.details["diffs"] == 0 and agg.value == 0.0
    (ep,) = doc["endpoints"]
    assert ep["diffs"] == 0 and ep["diff_rate"] == agg.value
    assert doc["totals"]["diff_rate"] == agg.value
    assert ep["noise"] == stored.noise + 12            # every count still adds up


def test_secondary_endpoints_whole_minutes_and_ragged_ends(store_url):
    """Which endpoints the secondary answered, on both engines: from the aggregates'
    secondary sketches for whole minutes, from the rows for the ragged ends."""
    from shadowproxy.config import StoreConfig
    from shadowproxy.store import StoreWriter, open_store

    t0 = (int(NOW) // 60 - 10) * 60.0
    out = []
    for i in range(40):
        r = _result(i, ago=NOW - t0 - 30.0)         # minute t0, secondary answered
        ex = r.exchange
        out.append(r)
        out.append(Result(Exchange(f"n{i:05d}", t0 + 90.0, "GET /none", None, ex.request,
                                   ex.primary, ex.candidate, None), "match", [],
                          frozenset(), []))
    w = StoreWriter(store_url, StoreConfig(url=store_url))
    for r in out:
        assert w.submit(r)
    assert w.flush(30) and w.close(30)
    store = open_store(store_url, readonly=True)
    try:
        assert store.secondary_endpoints(t0, t0 + 120) == {USERS}          # whole minutes
        assert store.secondary_endpoints(t0 + 10, t0 + 50) == {USERS}      # ragged only
        assert store.secondary_endpoints(t0 + 60, t0 + 120) == set()
    finally:
        store.close()
