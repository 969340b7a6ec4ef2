from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.compare.noise import (
    NoiseEvidence,
    NoiseLearner,
    fisher_greater,
    judge,
    two_proportion_pvalue,
    ztest_greater,
)
from shadowproxy.config import NoiseConfig

EP = "GET /api/items"


def feed(learner: NoiseLearner, n: int, r_rate: float, s_rate: float, field: str = "$.f",
         seed: int = 1, endpoint: str = EP) -> None:
    rnd = random.Random(seed)
    for _ in range(n):
        cand = {field} if rnd.random() < r_rate else set()
        sec = {field} if rnd.random() < s_rate else set()
        learner.observe(endpoint, cand, sec)


def test_timestamp_differs_always_on_both_is_noise():
    lr = NoiseLearner(NoiseConfig())
    for _ in range(200):
        lr.observe(EP, {"$.generated_at", "$.price"}, {"$.generated_at"})
    assert lr.noise_fields(EP, {"$.generated_at", "$.price"}) == frozenset({"$.generated_at"})
    ev = {e.field: e for e in lr.evidence(include_not_noise=False)}
    assert set(ev) == {"$.generated_at"}
    e = ev["$.generated_at"]
    assert (e.endpoint, e.n, e.r, e.s) == (EP, 200, 200, 200)
    assert e.noise and not e.provisional and e.p_value > 0.5 and e.decided_at > 0


def test_aa_random_field_same_rate_is_noise():
    lr = NoiseLearner(NoiseConfig())
    feed(lr, 3000, 0.3, 0.3, seed=7)
    assert lr.is_noise(EP, "$.f")


def test_real_regression_is_not_noise():
    lr = NoiseLearner(NoiseConfig())
    feed(lr, 2000, 0.05, 0.0)
    assert lr.counts(EP, "$.f")[2] == 0
    assert not lr.is_noise(EP, "$.f")          # never seen on the secondary
    lr2 = NoiseLearner(NoiseConfig())
    feed(lr2, 2000, 0.05, 0.005, seed=3)       # the secondary shows it rarely
    _n, r, s = lr2.counts(EP, "$.f")
    assert s > 0 and r > 3 * s
    assert not lr2.is_noise(EP, "$.f")
    ev = lr2.evidence()
    assert len(ev) == 1 and not ev[0].noise and ev[0].p_value < 0.05
    assert lr2.evidence(include_not_noise=False) == []


def test_small_samples_provisional():
    cfg = NoiseConfig(min_samples=50)
    lr = NoiseLearner(cfg)
    for i in range(10):
        lr.observe(EP, {"$.a", "$.b"}, {"$.a"} if i == 0 else set())
    # before min_samples: shown by the secondary once → provisionally noise
    assert lr.noise_fields(EP, {"$.a", "$.b"}) == frozenset({"$.a"})
    ev = lr.evidence(include_not_noise=False)
    assert len(ev) == 1 and ev[0].provisional and ev[0].field == "$.a"
    for _ in range(100):
        lr.observe(EP, {"$.a"}, set())
    # now judged: candidate 110/110 vs secondary 1/110 → real
    assert not lr.is_noise(EP, "$.a")
    assert lr.evidence()[0].provisional is False


def test_no_secondary_does_not_count():
    lr = NoiseLearner(NoiseConfig())
    lr.observe(EP, {"$.a"}, None)
    assert lr.counts(EP, "$.a") == (0, 0, 0)
    assert lr.noise_fields(EP, {"$.a"}) == frozenset()
    assert lr.noise_fields("unknown", {"$.a"}) == frozenset()


def test_endpoints_are_separate():
    lr = NoiseLearner(NoiseConfig(min_samples=1))
    for _ in range(100):
        lr.observe("A", {"$.t"}, {"$.t"})
        lr.observe("B", {"$.t"}, set())
    assert lr.is_noise("A", "$.t") and not lr.is_noise("B", "$.t")


def test_effect_size_thresholds():
    cfg = NoiseConfig(min_samples=10, alpha=0.05, relative=0.2, absolute=0.0003)
    # significant but relative effect small: (R-S)/(R+S) = 0.1 → noise
    noise, p, _ = judge(100_000, 55_000, 45_000, cfg)
    assert p < 1e-6 and noise
    # significant and large relative, but absolute below threshold → noise
    noise, p, _ = judge(10_000_000, 100, 1, NoiseConfig(min_samples=10, absolute=0.001))
    assert p < 0.05 and noise
    # all three → real
    noise, p, _ = judge(10_000, 600, 100, cfg)
    assert not noise


def test_decision_cached_until_counts_change():
    calls = []
    lr = NoiseLearner(NoiseConfig(min_samples=1), clock=lambda: calls.append(1) or 123.0)
    for _ in range(20):
        lr.observe(EP, {"$.t"}, {"$.t"})
    lr.noise_fields(EP, {"$.t"})
    lr.noise_fields(EP, {"$.t"})
    lr.evidence()
    assert len(calls) == 1                 # decided once; same counts → cached
    lr.observe(EP, {"$.t"}, {"$.t"})
    lr.noise_fields(EP, {"$.t"})
    assert len(calls) == 1                 # recomputed, same decision: decided_at kept
    assert lr.evidence()[0].decided_at == 123.0


def test_fisher_matches_exact_enumeration():
    # tiny tables against a brute-force hypergeometric tail
    for n in range(1, 8):
        for r in range(n + 1):
            for s in range(n + 1):
                k = r + s
                total = math.comb(2 * n, n)
                tail = sum(math.comb(k, x) * math.comb(2 * n - k, n - x)
                           for x in range(r, min(k, n) + 1)) / total
                assert fisher_greater(n, r, s) == pytest.approx(tail, abs=1e-9)


def test_ztest_known_value():
    # p1 = .6, p2 = .5, n = 200 each: z = 0.1 / sqrt(.55 * .45 * 2/200) = 2.0101
    assert ztest_greater(200, 120, 100) == pytest.approx(0.02221, abs=1e-4)
    assert ztest_greater(200, 100, 120) > 0.9
    assert ztest_greater(200, 0, 0) == 1.0
    assert two_proportion_pvalue(1000, 3, 1) == fisher_greater(1000, 3, 1)
    assert two_proportion_pvalue(1000, 300, 100) == ztest_greater(1000, 300, 100)


def test_evidence_is_dataclass_and_sorted():
    lr = NoiseLearner(NoiseConfig(min_samples=1))
    for _ in range(5):
        lr.observe("B", {"$.z"}, {"$.z"})
        lr.observe("A", {"$.y", "$.x"}, {"$.x", "$.y"})
    ev = lr.evidence()
    assert all(isinstance(e, NoiseEvidence) for e in ev)
    assert [(e.endpoint, e.field) for e in ev] == [("A", "$.x"), ("A", "$.y"), ("B", "$.z")]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 100_000).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(1, n)).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.integers(0, t[1]), st.just(t[1])))),
    st.integers(1, 200), st.floats(0.001, 0.5), st.floats(0.0, 0.9), st.floats(0.0, 0.01))
def test_property_r_le_s_is_always_noise(nrs, min_samples, alpha, relative, absolute):
    n, r, s = nrs
    cfg = NoiseConfig(min_samples=min_samples, alpha=alpha, relative=relative, absolute=absolute)
    noise, p, _ = judge(n, r, s, cfg)
    assert noise
    assert 0.0 <= p <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(0, 60), st.integers(1, 60))
def test_property_learner_r_le_s(n, r, s):
    r, s = min(r, n), min(s, n)
    if r > s:
        r, s = s, r
    if s == 0:
        return
    lr = NoiseLearner(NoiseConfig(min_samples=10))
    for i in range(n):
        lr.observe(EP, {"$.f"} if i < r else set(), {"$.f"} if i < s else set())
    assert lr.is_noise(EP, "$.f")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.data())
def test_property_pvalue_in_range_and_monotone(n, data):
    s = data.draw(st.integers(0, n))
    r1 = data.draw(st.integers(0, n))
    r2 = data.draw(st.integers(r1, n))
    p1, p2 = two_proportion_pvalue(n, r1, s), two_proportion_pvalue(n, r2, s)
    assert 0.0 <= p1 <= 1.0 and 0.0 <= p2 <= 1.0
    # more candidate differences never make the evidence for H1 weaker (same test kind)
    if (min(r1 + s, 2 * n - r1 - s) < 10) == (min(r2 + s, 2 * n - r2 - s) < 10):
        assert p2 <= p1 + 1e-9
