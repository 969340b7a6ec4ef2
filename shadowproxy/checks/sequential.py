"""Anytime-valid decisions: sequential tests whose error bound holds however often,
and whenever, the data are looked at.

A canary gate is polled (``check`` every minute, ``check --watch`` every few seconds).
A fixed-sample interval looked at again and again fails a good candidate more often
with every look; these tests do not. Each is an *e-process*: a nonnegative
supermartingale under its null hypothesis, so by Ville's inequality the chance that it
*ever* reaches ``1/α`` is at most ``α`` (Ville 1939; Robbins 1970; Howard, Ramdas,
McAuliffe, Sekhon 2021; Ramdas et al. 2023). Every function here is a function of
counts only (successes ``k`` of ``n`` trials, the cumulative counts of a latency sketch),
so the store's per-minute aggregates are all a decision reads.

**Bernoulli rates** (the diff rate; the share of latencies below a value). For a
threshold ``t`` two one-sided tests, each a mixture of likelihood ratios against a
geometric grid of alternatives (a *discrete mixture*, Howard et al. 2021 §3; the
mixture SPRT of Robbins 1970):

* :func:`log_e_above` — evidence that ``p > t``; null ``p ≤ t``; alternatives
  ``t + (1 − t)·2^−j``, ``j = 1..GRID``. Each ratio
  ``(p'/t)^k ((1−p')/(1−t))^(n−k)`` has expectation ≤ 1 under every ``p ≤ t``, so
  the mixture is a supermartingale for the whole composite null.
* :func:`log_e_below` — evidence that ``p < t``; null ``p ≥ t``; alternatives ``p' = 0``
  with half the weight (a healthy candidate's rate is usually near 0, and with no event
  at all ``n`` exchanges give ``(1 − t)^−n``) and ``t·r`` for ``r`` in
  :data:`PASS_RATIOS` (``1/64 .. 1/4`` and ``1 − 2^−j``, ``j = 1..GRID``) sharing
  the rest.

Both are monotone in ``t`` (more evidence against a threshold further from the data),
so inverting them gives a confidence sequence ``[lo, hi]`` (:func:`rate_bounds`).

**Paired differences** (the error increase): a betting confidence sequence on the mean
of ``X ∈ {−1, 0, 1}`` (:func:`log_e_difference`, :func:`difference_bounds`).

**Against the secondary**: a sequential sign test per field
(:func:`log_e_more_than_secondary`).

What the guarantees assume: each exchange's outcome, given the ones before it, has a
rate on the null side (the factors' conditional expectations are then at most 1; the
exchanges need not be identically distributed), and the window grows with a fixed
start.

**Latency quantiles.** ``Q = inf{x : F(x) ≥ q}``. A bucket edge ``u`` with
``#{X ≤ u}`` of ``n`` is below ``Q`` when :func:`log_e_quantile` shows ``F(u) < q``,
above it when it shows ``F(u) > q`` (Howard & Ramdas 2022 use the same reduction; the
mixture's alternatives are spaced on the binomial's spread at ``q``):
:func:`quantile_bounds` reads them off a sketch's cumulative counts, valid for all ``n``
at once, exactly conservative at the sketch's bucket edges. The same bounds over the
per-exchange ratios of the latency pairs (:func:`paired_ratio_bounds`) are a sequential
sign test of the ratio's quantile.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections.abc import Callable, Sequence

GRID = 12                       # alternatives per one-sided mixture
_LOG_GRID = math.log(GRID)


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _log_lr(k: int, n: int, alt: float, null: float) -> float:
    """log of L(alt)/L(null) for ``k`` successes in ``n`` Bernoulli trials."""
    out = 0.0
    if k:
        if alt <= 0.0:
            return -math.inf
        out += k * (math.log(alt) - math.log(null))
    if n - k:
        if alt >= 1.0:
            return -math.inf
        out += (n - k) * (math.log1p(-alt) - math.log1p(-null))
    return out


def log_e_above(k: int, n: int, t: float) -> float:
    """log of the e-value against ``p ≤ t`` (evidence that the rate exceeds ``t``)."""
    if n <= 0 or t >= 1.0:
        return 0.0 if n <= 0 else -math.inf
    if t <= 0.0:
        return math.inf if k else -math.inf
    terms = [_log_lr(k, n, t + (1.0 - t) * 2.0 ** -j, t) for j in range(1, GRID + 1)]
    return _logsumexp(terms) - _LOG_GRID


# alternatives p' = t·r of the pass side (besides p' = 0): far below t, and 1 − 2^−j
# towards t (as close as the fail side's grid comes from above)
PASS_RATIOS = tuple([2.0 ** -j for j in range(6, 1, -1)]
                    + [1.0 - 2.0 ** -j for j in range(1, GRID + 1)])


def log_e_below(k: int, n: int, t: float) -> float:
    """log of the e-value against ``p ≥ t`` (evidence that the rate is below ``t``)."""
    if n <= 0 or t <= 0.0:
        return 0.0 if n <= 0 else -math.inf
    if t >= 1.0:
        return math.inf if k < n else -math.inf
    half = math.log(0.5)
    rest = math.log(0.5 / len(PASS_RATIOS))
    terms = [half + _log_lr(k, n, 0.0, t)]
    terms += [rest + _log_lr(k, n, t * r, t) for r in PASS_RATIOS]
    return _logsumexp(terms)


def shows_above(k: int, n: int, t: float, alpha: float) -> bool:
    """Anytime-valid: the rate is above ``t`` (false at most ``alpha`` of the time when
    it is not, however often this is asked)."""
    return log_e_above(k, n, t) >= -math.log(alpha)


def shows_below(k: int, n: int, t: float, alpha: float) -> bool:
    return log_e_below(k, n, t) >= -math.log(alpha)


def lower_bound(k: int, n: int, alpha: float) -> float:
    """The largest ``t`` that :func:`shows_above` rejects (0 when none): a lower
    confidence sequence for the rate at level ``alpha``."""
    if n <= 0 or not shows_above(k, n, 0.0, alpha):
        return 0.0
    lo, hi = 0.0, k / n
    if k == 0:
        return 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if shows_above(k, n, mid, alpha):
            lo = mid
        else:
            hi = mid
    return lo


def upper_bound(k: int, n: int, alpha: float) -> float:
    """The smallest ``t`` that :func:`shows_below` rejects (1 when none)."""
    if n <= 0 or k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    if not shows_below(k, n, 1.0 - 1e-12, alpha):
        return 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if shows_below(k, n, mid, alpha):
            hi = mid
        else:
            lo = mid
    return hi


def rate_bounds(k: int, n: int, confidence: float) -> tuple[float, float]:
    """A two-sided confidence sequence for a Bernoulli rate: each side at
    ``(1 − confidence)/2``."""
    a = (1.0 - confidence) / 2
    return lower_bound(k, n, a), upper_bound(k, n, a)


# ------------------------------------------------------------------ paired difference


# constant bets λ = f/(1 − t) (pass side) or f/(1 + t) (fail side), as fractions f of the
# largest bet that cannot lose everything, with their weights: two bold ones (a healthy
# candidate with no failure at all passes soonest) and a geometric grid of careful ones
BETS = ((0.99, 0.25), (0.9, 0.25)) + tuple((2.0 ** -j, 0.05) for j in range(1, 11))


def log_e_difference(b: int, c: int, n: int, t: float, side: str) -> float:
    """log e-value of a betting test on the mean of ``X ∈ {−1, 0, 1}`` per exchange (1:
    only the candidate failed, −1: only the primary, 0: neither or both) from its counts
    ``b`` (X = 1), ``c`` (X = −1) of ``n``.

    ``side="above"``: evidence that ``E[X] > t``; the capital ``Π (1 + λ(X − t))`` has
    expectation ≤ 1 whenever ``E[X] ≤ t``. ``side="below"``: evidence that
    ``E[X] < t``; capital ``Π (1 + λ(t − X))``. A mixture over the constant bets
    :data:`BETS` (Waudby-Smith & Ramdas 2024, betting confidence sequences; the
    capital depends on the three counts only)."""
    rest = n - b - c
    terms = []
    for f, w in BETS:
        if side == "above":
            lam = f / (1.0 + t)
            v = (b * math.log1p(lam * (1.0 - t)) + c * math.log1p(-lam * (1.0 + t))
                 + rest * math.log1p(-lam * t))
        else:
            lam = f / (1.0 - t)
            v = (b * math.log1p(lam * (t - 1.0)) + c * math.log1p(lam * (t + 1.0))
                 + rest * math.log1p(lam * t))
        terms.append(math.log(w) + v)
    return _logsumexp(terms)


def difference_bounds(b: int, c: int, n: int, confidence: float) -> tuple[float, float]:
    """Bounds on ``P(only the candidate fails) − P(only the primary fails)`` from ``n``
    exchanges with ``b`` and ``c`` of each: the thresholds the betting tests of
    :func:`log_e_difference` reject, each side at ``(1 − confidence)/2`` (the capital
    is monotone in the threshold, so the bounds are found by bisection)."""
    if n <= 0:
        return -1.0, 1.0
    need = -math.log((1.0 - confidence) / 2)
    eps = 1e-9
    lo_t, hi_t = -1.0 + eps, 1.0 - eps

    def above(t: float) -> bool:
        return log_e_difference(b, c, n, t, "above") >= need

    def below(t: float) -> bool:
        return log_e_difference(b, c, n, t, "below") >= need

    lo = -1.0
    if above(lo_t):
        x, y = lo_t, (b - c) / n
        for _ in range(50):
            mid = (x + y) / 2
            if above(mid):
                x = mid
            else:
                y = mid
        lo = x
    hi = 1.0
    if below(hi_t):
        x, y = (b - c) / n, hi_t
        for _ in range(50):
            mid = (x + y) / 2
            if below(mid):
                y = mid
            else:
                x = mid
        hi = y
    return lo, hi


# ------------------------------------------------------------------ quantiles


# alternatives of the quantile tests: distances from q of h·sqrt(q(1 − q)), h on a
# geometric grid of ratio √2 (the alternative best for n samples lies near
# h = sqrt(2 log(1/α)/n): these cover n from ~40 to ~150,000 at α ≈ 1 %)
QUANTILE_STEPS = tuple(0.5 * 2.0 ** (-j / 2) for j in range(12))


def log_e_quantile(k: int, n: int, q: float, side: str) -> float:
    """log e-value for the share ``p`` of values at or below a point ``u`` (``k`` of
    ``n``) against the quantile level ``q``: ``side="above"``, evidence that
    ``p > q`` (null ``p ≤ q``: then ``u`` is at or above the ``q``-quantile);
    ``side="below"``, that ``p < q`` (null ``p ≥ q``: ``u`` is below it).

    A uniform mixture of likelihood ratios against alternatives on the tested side at
    distances ``h·sqrt(q(1 − q))`` (:data:`QUANTILE_STEPS`, at most 90 % of the way to 0
    or 1): each ratio has expectation ≤ 1 under every ``p`` of the null, as in
    :func:`log_e_above`; the grid is scaled to the binomial's spread at ``q`` rather
    than to the distance to 0 or 1, so the p99's tests are as sharp as the median's."""
    if n <= 0:
        return 0.0
    sd = math.sqrt(q * (1.0 - q))
    terms = []
    for h in QUANTILE_STEPS:
        d = min(h * sd, 0.9 * (1.0 - q if side == "above" else q))
        terms.append(_log_lr(k, n, q + d if side == "above" else q - d, q))
    return _logsumexp(terms) - math.log(len(QUANTILE_STEPS))


def quantile_bounds(cumulative: Sequence[tuple[float, int]], q: float, alpha: float
                    ) -> tuple[float | None, float | None]:
    """Bounds on the ``q``-quantile from ``(value, count of values ≤ value)`` ascending
    (a sketch's bucket edges, or every sorted value), each at level ``alpha``.

    lo: the largest edge ``u`` with ``F(u) < q`` shown (the quantile lies above ``u``);
    None when none. hi: the smallest edge with ``F(u) > q`` shown; None when none (the
    quantile may lie above every value seen)."""
    if not cumulative:
        return None, None
    n = cumulative[-1][1]
    counts = [c for _v, c in cumulative]
    # e_below decreases in the count: the edges that show F(u) < q are a prefix
    need = -math.log(alpha)
    lo_i = _first_false(len(counts),
                        lambda i: log_e_quantile(counts[i], n, q, "below") >= need) - 1
    hi_i = _first_false(len(counts),
                        lambda i: log_e_quantile(counts[i], n, q, "above") < need)
    lo = cumulative[lo_i][0] if lo_i >= 0 else None
    hi = cumulative[hi_i][0] if hi_i < len(counts) else None
    return lo, hi


def _first_false(size: int, pred: Callable[[int], bool]) -> int:
    """The first index in ``range(size)`` where the monotone ``pred`` (true, then
    false) is false (``size`` when never)."""
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def ratio_bounds(primary: Sequence[tuple[float, int]], candidate: Sequence[tuple[float, int]],
                 q: float, confidence: float, *, lo_alpha: float | None = None,
                 hi_alpha: float | None = None) -> tuple[float, float]:
    """Bounds on ``Q_q(candidate) / Q_q(primary)``: the lower bound wrong with
    probability at most ``lo_alpha``, the upper at most ``hi_alpha`` (each
    ``(1 − confidence)/2`` unless given), each the quotient of two quantile bounds at
    half that level (Bonferroni). Unknown bounds are 0 and inf."""
    a_lo = ((1.0 - confidence) / 2 if lo_alpha is None else lo_alpha) / 2
    a_hi = ((1.0 - confidence) / 2 if hi_alpha is None else hi_alpha) / 2
    p_lo, p_hi = quantile_bounds(primary, q, a_hi)
    c_lo, c_hi = quantile_bounds(candidate, q, a_hi)
    if a_lo != a_hi:
        p_hi = quantile_bounds(primary, q, a_lo)[1]
        c_lo = quantile_bounds(candidate, q, a_lo)[0]
    lo = 0.0 if c_lo is None or p_hi is None or p_hi <= 0 else c_lo / p_hi
    hi = math.inf if c_hi is None or p_lo is None or p_lo <= 0 else c_hi / p_lo
    return lo, hi


def pair_ratio(primary: float, candidate: float) -> float:
    """One exchange's latency ratio candidate/primary (a zero primary latency: inf,
    or 1 when both are zero)."""
    if primary > 0:
        return candidate / primary
    return math.inf if candidate > 0 else 1.0


def paired_ratio_bounds(primary: Sequence[float], candidate: Sequence[float], q: float,
                        lo_alpha: float, hi_alpha: float) -> tuple[float, float]:
    """Bounds on the ``q``-quantile of the per-exchange ratio ``candidate/primary``
    from the paired latencies (element ``i`` of both is one exchange): the
    :func:`quantile_bounds` of the ratios, the lower wrong with probability at most
    ``lo_alpha``, the upper at most ``hi_alpha``, however often they are computed on a
    growing set of pairs. The lower bound exceeds a threshold ``t`` only when
    :func:`log_e_quantile` shows ``P(ratio ≤ t) < q``: a sequential sign test of the
    pairs' ratios against ``t`` (for ``q = ½`` the median of the ratios). It assumes
    that each pair's ratio, given the pairs before it, is at most ``t`` with
    probability at least ``q`` under the null (no identical distribution needed, no
    symmetry). Unknown bounds are 0 and inf."""
    cum = sorted_cumulative([pair_ratio(p, c) for p, c in zip(primary, candidate, strict=True)])
    lo = quantile_bounds(cum, q, lo_alpha)[0]
    hi = quantile_bounds(cum, q, hi_alpha)[1]
    return (0.0 if lo is None else max(lo, 0.0)), (math.inf if hi is None else hi)


def sorted_cumulative(values: Sequence[float]) -> list[tuple[float, int]]:
    """``(value, count ≤ value)`` of every distinct value (exact data, no sketch),
    after the value just below the smallest, with count 0."""
    xs = sorted(values)
    out: list[tuple[float, int]] = [(math.nextafter(xs[0], -math.inf), 0)] if xs else []
    for i, x in enumerate(xs):
        if out and out[-1][0] == x:
            out[-1] = (x, i + 1)
        else:
            out.append((x, i + 1))
    return out


# ------------------------------------------------------------------ against a secondary


SIGN_ALTERNATIVES = (0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def log_e_more_than_secondary(r: int, s: int) -> float:
    """log e-value that the candidate differs from the primary on a field more often
    than the secondary does, from ``r`` exchanges where the candidate differed and ``s``
    where the secondary did (on the same exchanges).

    Null: P(only the candidate differs) ≤ P(only the secondary differs). Per exchange
    the factor is ``2π`` when only the candidate differs, ``2(1 − π)`` when only the
    secondary does, ``4π(1 − π) ≤ 1`` when both do and 1 when neither: its expectation
    is at most 1 under the null, and the product over exchanges is
    ``(2π)^r (2(1 − π))^s``, a function of the two counts alone (a sequential sign
    test; mixture over ``π`` in :data:`SIGN_ALTERNATIVES`). One difference the
    secondary happened not to show gives at most 1.98: never significant."""
    terms = [r * math.log(2 * pi) + s * math.log(2 * (1 - pi)) for pi in SIGN_ALTERNATIVES]
    return _logsumexp(terms) - math.log(len(SIGN_ALTERNATIVES))


def more_than_secondary(r: int, s: int, alpha: float) -> bool:
    return log_e_more_than_secondary(r, s) >= -math.log(alpha)


def cumulative_index(cumulative: Sequence[tuple[float, int]], value: float) -> int:
    """Count of values ≤ ``value`` (helper for tests)."""
    i = bisect_left([v for v, _c in cumulative], value)
    if i < len(cumulative) and cumulative[i][0] == value:
        return cumulative[i][1]
    return cumulative[i - 1][1] if i else 0


# ------------------------------------------------------------------ traffic to decide


def _smallest(pred: Callable[[int], bool], limit: int = 1 << 24) -> int:
    """The smallest ``n ≥ 1`` with ``pred(n)`` (monotone), or ``limit``."""
    hi = 1
    while not pred(hi):
        hi *= 2
        if hi >= limit:
            return limit
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


@functools.lru_cache(maxsize=512)
def samples_to_decide(metric: str, threshold: float, confidence: float) -> int:
    """The fewest samples with which the best possible data could pass ``metric``
    at ``threshold`` (1 for the metrics where that depends on the data): a unit with
    fewer has too little traffic to be judged alone.

    * ``max_diff_rate``: no diff at all and the upper bound below the threshold;
    * ``max_error_rate_increase``: no failure on either side and the upper bound of
      the difference below the threshold."""
    if metric == "max_diff_rate":
        a = (1.0 - confidence) / 2
        return _smallest(lambda n: shows_below(0, n, threshold, a))
    if metric == "max_error_rate_increase":
        a = (1.0 - confidence) / 2
        return _smallest(lambda n: log_e_difference(0, 0, n, threshold, "below")
                         >= -math.log(a))
    return 1
