"""Noise learned together: learners (a fleet's comparators, or one instance before and
after a restart) save their own counts to the store and decide on everyone's sums.

Against a real store on both engines (SQLite file, PostgreSQL started by the tests).
"""

from __future__ import annotations

import random

from shadowproxy.compare.noise import NoiseLearner
from shadowproxy.config import NoiseConfig
from shadowproxy.store import open_store

EP = "GET /api/items"


def feed(learner: NoiseLearner, n: int, r_rate: float, s_rate: float, field: str,
         seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(n):
        cand = {field} if rnd.random() < r_rate else set()
        sec = {field} if rnd.random() < s_rate else set()
        learner.observe(EP, cand, sec)


def share(store: object, name: str, learner: NoiseLearner) -> None:
    store.save_noise_counts(name, learner.own_counts())  # type: ignore[attr-defined]
    learner.set_others(store.noise_counts(exclude=name))  # type: ignore[attr-defined]


def test_a_field_learned_as_noise_by_one_comparator_is_noise_for_the_other(
        store_url: str) -> None:
    store = open_store(store_url)
    try:
        a, b = NoiseLearner(NoiseConfig()), NoiseLearner(NoiseConfig())
        # a saw a field differ as often on the secondary as on the candidate (noise);
        # b saw the field differ once on the candidate, never on its secondaries
        feed(a, 400, 0.3, 0.3, "$.meta.ts", seed=1)
        b.observe(EP, {"$.meta.ts"}, set())
        for _ in range(30):
            b.observe(EP, set(), set())
        assert a.is_noise(EP, "$.meta.ts")
        assert not b.is_noise(EP, "$.meta.ts")        # S = 0 alone: never noise
        share(store, "a", a)
        share(store, "b", b)
        assert b.is_noise(EP, "$.meta.ts")
        n, r, s = b.counts(EP, "$.meta.ts")
        na, ra, sa = a.counts(EP, "$.meta.ts")
        assert (n, na) == (431, 400)
        assert (r, s) == (ra + 1, sa)
        # a learns b's exchanges too (each counted once, whoever saw it)
        share(store, "a", a)
        assert a.counts(EP, "$.meta.ts") == (431, ra + 1, sa)
        ev = {e.field: e for e in b.evidence()}
        assert ev["$.meta.ts"].noise and ev["$.meta.ts"].n == 431
    finally:
        store.close()


def test_a_regression_seen_by_both_is_judged_on_the_sum(store_url: str) -> None:
    """Each comparator alone has too few exchanges to judge (min_samples); together
    they have enough, and a candidate-only difference is real, not provisional noise."""
    store = open_store(store_url)
    try:
        cfg = NoiseConfig(min_samples=200)
        a, b = NoiseLearner(cfg), NoiseLearner(cfg)
        feed(a, 150, 0.5, 0.06, "$.price", seed=2)
        feed(b, 150, 0.5, 0.06, "$.price", seed=3)
        assert a.counts(EP, "$.price")[2] > 0 and b.counts(EP, "$.price")[2] > 0
        assert a.is_noise(EP, "$.price") and b.is_noise(EP, "$.price")   # provisional
        share(store, "a", a)
        share(store, "b", b)
        share(store, "a", a)            # the next round: each has the other's counts
        for lr in (a, b):
            assert not lr.is_noise(EP, "$.price")
            (ev,) = [e for e in lr.evidence() if e.field == "$.price"]
            assert ev.n == 300 and not ev.provisional and not ev.noise
    finally:
        store.close()


def test_counts_of_a_learner_replace_its_earlier_ones(store_url: str) -> None:
    """A learner saves its cumulative counts again and again: the store keeps the
    latest, never adds them up; a restarted process (a new name) adds to the old."""
    store = open_store(store_url)
    try:
        a = NoiseLearner(NoiseConfig())
        feed(a, 100, 0.2, 0.2, "$.x", seed=4)
        store.save_noise_counts("a", a.own_counts())
        feed(a, 100, 0.2, 0.2, "$.x", seed=5)
        store.save_noise_counts("a", a.own_counts())
        rows = {(e, f): (n, r, s) for e, f, n, r, s in store.noise_counts()}
        assert rows[(EP, "")][0] == 200
        assert rows[(EP, "$.x")][1:] == a.counts(EP, "$.x")[1:]
        restarted = NoiseLearner(NoiseConfig())
        feed(restarted, 50, 0.2, 0.2, "$.x", seed=6)
        share(store, "a-restarted", restarted)
        assert restarted.counts(EP, "$.x")[0] == 250
        assert {row[2] for row in store.noise_counts(exclude="a")} == {50}  # the restarted one
    finally:
        store.close()


def test_a_replay_runs_learners_and_the_live_ones_do_not_mix(store_url: str) -> None:
    """A replay (instance ``run:NAME``) learns with its own run's learners only."""
    store = open_store(store_url)
    try:
        live, replay = NoiseLearner(NoiseConfig()), NoiseLearner(NoiseConfig())
        feed(live, 300, 0.3, 0.3, "$.ts", seed=8)
        feed(replay, 300, 0.9, 0.0, "$.ts", seed=9)
        store.save_noise_counts("pod-a/1/x", live.own_counts())
        store.save_noise_counts("run:pr-42/2/y", replay.own_counts())
        store.save_noise_counts("run:pr-7/3/z", replay.own_counts())
        live_sums = {(e, f): (n, r, s) for e, f, n, r, s in store.noise_counts()}
        assert live_sums[(EP, "")][0] == 300 and live_sums[(EP, "$.ts")][1:] == \
            live.counts(EP, "$.ts")[1:]
        run_sums = {(e, f): n for e, f, n, _r, _s in store.noise_counts(run="pr-42")}
        assert run_sums[(EP, "")] == 300                 # pr-42's alone, not pr-7's
        assert store.noise_counts("run:pr-42/2/y", run="pr-42") == []
    finally:
        store.close()
