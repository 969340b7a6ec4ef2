"""The statistics of the canary checks (pure functions: exact values, exact coverage by
enumeration, the bootstrap against a brute-force one) and the decision rules."""

from __future__ import annotations

import calendar
import json
import math
import random
import time
from bisect import bisect_right

import pytest

from shadowproxy.checks import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    Counts,
    ErrorPairs,
    MemorySource,
    UnitResult,
    UsageError,
    decide,
    evaluate,
    parse_time,
    parse_window,
    render_json,
    render_junit,
    render_text,
    stats,
)
from shadowproxy.checks.evaluate import effective_diffs
from shadowproxy.checks.judge import combine
from shadowproxy.config import CheckConfig


def binom_pmf(n: int, p: float) -> list[float]:
    if p <= 0:
        return [1.0] + [0.0] * n
    if p >= 1:
        return [0.0] * n + [1.0]
    lp, lq = math.log(p), math.log1p(-p)
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                     + k * lp + (n - k) * lq) for k in range(n + 1)]


# ------------------------------------------------------------------ special functions


@pytest.mark.parametrize("a, b, x, want", [
    (2, 3, 0.4, 0.5248),                 # 1 - (0.6^4 + 4 * 0.4 * 0.6^3)
    (1, 1, 0.3, 0.3),
    (0.5, 0.5, 0.5, 0.5),
    (5, 5, 0.5, 0.5),
    (1, 10, 0.1, 1 - 0.9 ** 10),
])
def test_betainc_known_values(a, b, x, want):
    assert stats.betainc(a, b, x) == pytest.approx(want, abs=1e-12)


def test_betainc_symmetry_and_binomial_tail():
    for a, b, x in ((3.5, 7, 0.2), (40, 1961, 0.02), (20001, 980000, 0.0204)):
        assert stats.betainc(a, b, x) == pytest.approx(1 - stats.betainc(b, a, 1 - x),
                                                       abs=1e-12)
    pmf = binom_pmf(60, 0.3)
    for k in (0, 1, 10, 18, 30, 60):
        assert stats.binom_sf(k, 60, 0.3) == pytest.approx(sum(pmf[k:]), abs=1e-12)


def test_beta_ppf_inverts_betainc():
    for a, b in ((1, 1), (2, 30), (41, 1960), (0.5, 3), (3000, 7)):
        for p in (1e-6, 0.025, 0.5, 0.975, 1 - 1e-6):
            x = stats.beta_ppf(p, a, b)
            assert stats.betainc(a, b, x) == pytest.approx(p, rel=1e-9, abs=1e-14)


# ------------------------------------------------------------------ binomial intervals


def test_clopper_pearson_known_values():
    assert stats.clopper_pearson(0, 10) == (0.0, pytest.approx(0.3084971, abs=1e-6))
    lo, hi = stats.clopper_pearson(5, 10)
    assert (lo, hi) == (pytest.approx(0.1870860, abs=1e-6), pytest.approx(0.8129140, abs=1e-6))
    assert stats.clopper_pearson(10, 10) == (pytest.approx(0.6915029, abs=1e-6), 1.0)
    # k = 0: the upper bound is 1 - (alpha/2)^(1/n)
    assert stats.clopper_pearson(0, 2000)[1] == pytest.approx(1 - 0.025 ** (1 / 2000))
    assert stats.clopper_pearson(0, 0) == (0.0, 1.0)


def test_clopper_pearson_coverage_is_exact_by_enumeration():
    """P(p < lo) <= 2.5 % and P(p > hi) <= 2.5 % for every p (here a grid)."""
    for n in (20, 137, 400):
        bounds = [stats.clopper_pearson(k, n) for k in range(n + 1)]
        for p in [i / 200 for i in range(1, 200)] + [0.001, 0.003, 0.997]:
            pmf = binom_pmf(n, p)
            above = sum(pr for pr, (lo, _hi) in zip(pmf, bounds, strict=True) if lo > p)
            below = sum(pr for pr, (_lo, hi) in zip(pmf, bounds, strict=True) if hi < p)
            assert above <= 0.025 + 1e-9 and below <= 0.025 + 1e-9, (n, p, above, below)


def test_wilson_values():
    lo, hi = stats.wilson(40, 2000)
    assert (lo, hi) == (pytest.approx(0.014722, abs=1e-5), pytest.approx(0.027119, abs=1e-5))
    assert stats.wilson(0, 100)[0] == 0.0
    assert stats.wilson(0, 100)[1] == pytest.approx(3.8415 / 103.8415, abs=1e-4)


# ------------------------------------------------------------------ paired differences


def test_mcnemar_exact():
    assert stats.mcnemar_exact(10, 2) == pytest.approx(79 / 4096)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(0, 5) == 1.0


def test_paired_difference_no_discordant_pairs_is_symmetric():
    lo, hi = stats.paired_difference(0, 0, 200)
    psi_hi = stats.clopper_pearson(0, 200, 0.975)[1]
    assert (lo, hi) == (pytest.approx(-psi_hi), pytest.approx(psi_hi))
    assert hi > 0.01            # 200 clean exchanges cannot show an increase below 1 %
    assert stats.paired_difference(0, 0, 2000)[1] < 0.01


def test_paired_difference_direction_and_monotonicity():
    assert stats.paired_difference(60, 10, 2000)[0] > 0
    assert stats.paired_difference(10, 60, 2000)[1] < 0
    his = [stats.paired_difference(b, 10, 2000)[1] for b in range(0, 80, 10)]
    assert his == sorted(his)


def test_paired_difference_coverage_by_simulation():
    """The interval contains the true difference at least ~95 % of the time (it is
    conservative by construction)."""
    rnd = random.Random(11)
    for n, p10, p01 in ((300, 0.02, 0.005), (1000, 0.004, 0.004), (150, 0.03, 0.0)):
        true = p10 - p01
        miss, sims = 0, 400
        for _ in range(sims):
            b = c = 0
            for _ in range(n):
                u = rnd.random()
                if u < p10:
                    b += 1
                elif u < p10 + p01:
                    c += 1
            lo, hi = stats.paired_difference(b, c, n)
            miss += not lo <= true <= hi
        assert miss / sims <= 0.05, (n, p10, p01, miss)


# ------------------------------------------------------------------ quantiles and bootstrap


def test_quantile_sorted_is_the_inverse_cdf():
    v = list(range(1, 101))
    assert stats.quantile_sorted(v, 0.5) == 50
    assert stats.quantile_sorted(v, 0.99) == 99
    assert stats.quantile_sorted(v, 0.995) == 100
    assert stats.quantile_sorted([7.0], 0.99) == 7.0


def test_weights_have_mean_and_variance_one():
    t = stats.WEIGHT_TABLE
    assert len(t) == 256 and sum(t) == 256 and sum(x * x for x in t) == 512
    poisson = [math.exp(-1) / math.factorial(k) for k in range(6)]
    for k in range(6):
        assert abs(t.count(k) / 256 - poisson[k]) < 0.009


def _weighted_quantile(vals: list[float], order: list[int], w: bytes, target: float
                       ) -> float:
    cum = 0
    for i in order:
        cum += w[i]
        if cum >= target:
            return vals[i]
    raise AssertionError("target above the total weight")


def _brute_force(p: list[float], c: list[float], q: float, resamples: int, seed: int
                 ) -> list[float]:
    """The same weighted bootstrap with every pair weighted explicitly: sorted ratios."""
    rnd = random.Random(seed)
    n = len(p)
    op = sorted(range(n), key=p.__getitem__)
    oc = sorted(range(n), key=c.__getitem__)
    out = []
    for _ in range(resamples):
        w = stats.bootstrap_weights(rnd, n)
        target = q * sum(w)
        out.append(_weighted_quantile(c, oc, w, target)
                   / _weighted_quantile(p, op, w, target))
    return sorted(out)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_windowed_bootstrap_matches_the_brute_force_one(q):
    """Same distribution: the empirical CDFs of 3000 replicates each agree within
    Monte Carlo error everywhere (a two-sample Kolmogorov-Smirnov bound)."""
    rnd = random.Random(5)
    base = [rnd.lognormvariate(0, 0.5) for _ in range(400)]
    p = [b * rnd.lognormvariate(0, 0.2) for b in base]
    c = [b * rnd.lognormvariate(0, 0.2) for b in base]
    order_p = sorted(range(400), key=p.__getitem__)
    order_c = sorted(range(400), key=c.__getitem__)
    half = int(5 * math.sqrt(400 * q * (1 - q))) + 8
    assert 2 * half < 400                   # the windows really are partial
    win = stats._bootstrap(order_p, order_c, sorted(p), sorted(c), q, 3000, 2, half)
    full = _brute_force(p, c, q, 3000, seed=9)
    support = sorted(set(win) | set(full))
    ks = max(abs(bisect_right(win, x) - bisect_right(full, x)) / 3000 for x in support)
    assert ks < 1.73 * math.sqrt(2 / 3000)  # KS critical value at alpha = 0.005


def test_bootstrap_redoes_with_a_wider_window_when_needed():
    rnd = random.Random(1)
    p = [rnd.random() for _ in range(500)]
    c = [rnd.random() for _ in range(500)]
    order_p = sorted(range(500), key=p.__getitem__)
    order_c = sorted(range(500), key=c.__getitem__)
    ps, cs = sorted(p), sorted(c)
    assert stats._bootstrap(order_p, order_c, ps, cs, 0.5, 200, 1, half=1) is None
    assert stats._bootstrap(order_p, order_c, ps, cs, 0.5, 200, 1, half=200) is not None


def test_bootstrap_edge_cases():
    same = stats.quantile_ratio([0.1] * 300, [0.1] * 300, 0.99, resamples=200)
    assert (same.ratio, same.lo, same.hi) == (1.0, 1.0, 1.0)
    one = stats.quantile_ratio([0.1], [0.3], 0.5, resamples=100)
    assert one.ratio == pytest.approx(3.0) and one.lo == pytest.approx(3.0)
    zero = stats.quantile_ratio([0.0] * 50, [0.1] * 50, 0.5, resamples=100)
    assert math.isinf(zero.ratio)
    a = stats.quantile_ratio([i / 100 for i in range(1, 200)],
                             [i / 90 for i in range(1, 200)], 0.9, resamples=300, seed=4)
    b = stats.quantile_ratio([i / 100 for i in range(1, 200)],
                             [i / 90 for i in range(1, 200)], 0.9, resamples=300, seed=4)
    assert a == b                                  # seeded: the same every run
    with pytest.raises(ValueError):
        stats.quantile_ratio([1.0], [1.0, 2.0], 0.5)


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_bootstrap_of_10k_pairs_takes_under_a_second(q):
    rnd = random.Random(3)
    base = [rnd.lognormvariate(-3, 0.6) for _ in range(10_000)]
    p = [b * rnd.lognormvariate(0, 0.25) for b in base]
    c = [b * rnd.lognormvariate(0, 0.25) for b in base]
    t0 = time.process_time()
    est = stats.quantile_ratio(p, c, q, resamples=1000, seed=1)
    assert time.process_time() - t0 < 1.0
    assert est.lo < 1.0 < est.hi


# ------------------------------------------------------------------ decisions


def test_decide_rules():
    """Always-valid intervals: a fail whenever the interval is above the threshold (even
    before min_samples: a regression is shown as soon as the evidence is there), a pass
    only below it with min_samples, and doubt is inconclusive, critical or not."""
    kw = {"threshold": 0.01, "min_samples": 100, "confidence": 0.95,
          "metric": "max_diff_rate"}
    assert decide(0.001, 0.005, n=1000, critical=False, **kw)[0] == PASS
    assert decide(0.02, 0.03, n=1000, critical=False, **kw)[0] == FAIL
    assert decide(0.005, 0.02, n=1000, critical=False, **kw)[0] == INCONCLUSIVE
    v, why = decide(0.005, 0.02, n=1000, critical=True, **kw)
    assert v == INCONCLUSIVE and "more samples needed" in why
    # below min_samples: never a pass, but a shown regression fails
    assert decide(0.001, 0.005, n=99, critical=True, **kw)[0] == INCONCLUSIVE
    assert decide(0.5, 0.9, n=99, critical=False, **kw)[0] == FAIL
    # the threshold itself is not below the threshold
    assert decide(0.0, 0.01, n=1000, critical=False, **kw)[0] == INCONCLUSIVE


def _u(verdict: str, samples: int = 1000, endpoint: str | None = "e") -> UnitResult:
    return UnitResult(endpoint, verdict, None, None, None, samples, "")


def test_combine_rules():
    agg_pass, agg_unsure = _u(PASS, endpoint=None), _u(INCONCLUSIVE, endpoint=None)
    assert combine(agg_pass, [_u(PASS), _u(INCONCLUSIVE, samples=50)], 100) == PASS
    assert combine(agg_pass, [_u(PASS), _u(INCONCLUSIVE, samples=500)], 100) == INCONCLUSIVE
    assert combine(agg_pass, [_u(PASS), _u(FAIL)], 100) == FAIL
    assert combine(_u(FAIL, endpoint=None), [_u(PASS)], 100) == FAIL
    assert combine(agg_unsure, [_u(PASS)], 100) == INCONCLUSIVE
    assert combine(agg_pass, [], 100) == PASS


def test_effective_diffs():
    sets = [{"$.ts"}, {"$.ts", "$.price"}, {"$.price"}, {"$.a", "$.ts"}]
    assert effective_diffs(sets, {"$.ts", "$.a"}) == (2, 2)
    assert effective_diffs(sets, set()) == (4, 0)


def test_overall_verdict_and_exit_codes():
    src = MemorySource(counts_by_endpoint={"A": Counts(1000, 1000, 0),
                                           "B": Counts(1000, 1000, 100)})
    ok = CheckConfig(name="ok", endpoints="A", max_diff_rate=0.01)
    bad = CheckConfig(name="bad", endpoints="B", max_diff_rate=0.01)
    few = CheckConfig(name="few", endpoints="A", max_diff_rate=0.01, min_samples=5000)
    assert evaluate([ok], src).exit_code == 0
    assert evaluate([ok, few], src).exit_code == 3
    assert evaluate([ok, few, bad], src).exit_code == 1
    assert evaluate([bad], src, "A").exit_code == 3        # --endpoint leaves no data
    # non-critical failing checks fail the run as well
    assert not bad.critical and evaluate([ok, bad], src).verdict == FAIL


def test_renderers_on_memory_data():
    src = MemorySource(counts_by_endpoint={"A": Counts(1000, 1000, 100)},
                       pairs_by_endpoint={"A": ErrorPairs(1000, 0, 50, 0, ("x1",))},
                       latencies_by_endpoint={"A": ([0.0] * 200, [0.1] * 200)})
    check = CheckConfig(name="c", max_diff_rate=0.01, max_error_rate_increase=0.01,
                        max_p99_ratio=1.5)
    report = evaluate([check], src)
    text = render_text(report)
    assert text.splitlines()[-1].startswith("verdict: FAIL")
    assert "x1" in text
    doc = json.loads(render_json(report))
    assert doc["checks"][0]["subchecks"][2]["aggregate"]["value"] is None    # inf ratio
    assert "<testsuites" in render_junit(report)


def test_parse_time_and_window():
    now = 1_800_000_000.0
    assert parse_time("now", now) == now
    assert parse_time("1700000000", now) == 1_700_000_000.0
    assert parse_time("2h", now) == now - 7200
    t = calendar.timegm((2027, 1, 15, 8, 0, 0))
    assert parse_time("2027-01-15T08:00:00Z", now) == t
    assert parse_time("2027-01-15T08:00:00", now) == t          # no zone: UTC
    assert parse_time("2027-01-15T09:00:00+01:00", now) == t
    assert parse_window("30m", None, None, now) == (now - 1800, now)
    assert parse_window(None, None, None, now) == (None, now)
    assert parse_window(None, "1h", None, now) == (now - 3600, now)
    for args in (("0s", None, None), ("x", None, None), ("1h", "2h", None),
                 (None, "1h", "2h"), (None, "tomorrow", None)):
        with pytest.raises(UsageError):
            parse_window(*args, now)
