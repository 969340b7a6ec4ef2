"""The statistics behind the canary checks, in pure Python (``math`` and ``random``).

* :func:`wilson` – Wilson (1927) score interval for a binomial proportion.
* :func:`clopper_pearson` – the exact Clopper–Pearson (1934) interval, from the beta
  quantile (Newton steps, bisection as fallback, on the regularized incomplete beta
  function :func:`betainc`).
* :func:`paired_difference` – an exact (conservative) interval for the difference of two
  paired proportions: McNemar's conditional binomial on the discordant pairs combined
  with a Clopper–Pearson interval for the discordance rate (Bonferroni).
* :func:`mcnemar_exact` – the one-sided exact McNemar p-value.
* :func:`quantile_ratio` – a seeded weighted (Poisson-type) bootstrap percentile
  interval (Efron 1979; Hanley & MacGibbon 2006) of
  ``quantile(candidate) / quantile(primary)`` over pairs.

``docs/checks.md`` has the formulas and references.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

_EPS = 1e-15


def z_two_sided(confidence: float) -> float:
    """The normal quantile z with P(|Z| <= z) = confidence."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


# ------------------------------------------------------------------ binomial proportion


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = z_two_sided(confidence)
    z2 = z * z
    p = k / n
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < tiny:
        d = tiny
    d = 1.0 / d
    h = d
    # convergence takes O(sqrt(max(a, b))) terms
    max_iter = 200 + int(10 * math.sqrt(max(a, b)))
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < tiny:
            d = tiny
        c = 1.0 + aa / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < tiny:
            d = tiny
        c = 1.0 + aa / c
        if abs(c) < tiny:
            c = tiny
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 3e-16:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (a, b > 0)."""
    if a <= 0 or b <= 0:
        raise ValueError("betainc needs a > 0 and b > 0")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return min(1.0, max(0.0, front * _betacf(a, b, x) / a))
    return min(1.0, max(0.0, 1.0 - front * _betacf(b, a, 1.0 - x) / b))


def beta_ppf(p: float, a: float, b: float) -> float:
    """The p-quantile of Beta(a, b): Newton steps on :func:`betainc`, bisection when a
    step leaves the bracket."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    # Newton steps on I_x(a, b) - p (the derivative is the beta density), kept inside
    # a bisection bracket that every evaluation narrows; converges in a few steps
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    lo, hi = 0.0, 1.0
    x = min(max(a / (a + b), 1e-12), 1.0 - 1e-12)
    for _ in range(200):
        f = betainc(a, b, x) - p
        if f < 0:
            lo = x
        else:
            hi = x
        if f == 0.0 or hi - lo <= _EPS * hi:
            return x
        dens = math.exp(log_norm + (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x))
        nxt = x - f / dens if dens > 0 else -1.0
        if not lo < nxt < hi:
            nxt = (lo + hi) / 2.0
        if abs(nxt - x) <= 1e-14 * max(x, 1e-300):
            return nxt
        x = nxt
    return (lo + hi) / 2.0


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact Clopper–Pearson interval for k successes in n trials; (0, 1) for n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else beta_ppf(alpha / 2.0, k, n - k + 1)
    hi = 1.0 if k == n else beta_ppf(1.0 - alpha / 2.0, k + 1, n - k)
    return lo, hi


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return betainc(k, n - k + 1, p)


# ------------------------------------------------------------------ paired proportions


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value for "the candidate fails more often":
    P(X >= b) for X ~ Binomial(b + c, 1/2), b = pairs where only the candidate failed,
    c = pairs where only the primary failed. 1.0 when there are no discordant pairs."""
    m = b + c
    if m == 0:
        return 1.0
    return binom_sf(b, m, 0.5)


def paired_difference(b: int, c: int, n: int, confidence: float = 0.95
                      ) -> tuple[float, float]:
    """Exact (conservative) interval for Δ = p(candidate fails) − p(primary fails)
    from n pairs, b of them where only the candidate failed and c where only the primary did.

    Δ = ψ·(2π − 1) with ψ = P(discordant) and π = P(candidate is the one failing |
    discordant). π gets the Clopper–Pearson interval of b in b + c (McNemar's exact
    conditional model: b | b + c ~ Binomial(b + c, π)), ψ the Clopper–Pearson interval of
    b + c in n, each at confidence 1 − α/2 so that both hold together with probability at
    least 1 − α (Bonferroni); Δ's bounds are the extremes of ψ·(2π − 1) over that
    rectangle. With no discordant pairs π ∈ [0, 1], so the interval is [−ψ_hi, ψ_hi]:
    few samples can never bound the increase below a threshold."""
    if n <= 0:
        return -1.0, 1.0
    m = b + c
    if b < 0 or c < 0 or m > n:
        raise ValueError(f"need b, c >= 0 and b + c <= n, got b={b}, c={c}, n={n}")
    alpha = 1.0 - confidence
    inner = 1.0 - alpha / 2.0
    psi_lo, psi_hi = clopper_pearson(m, n, inner)
    pi_lo, pi_hi = clopper_pearson(b, m, inner)
    up = 2.0 * pi_hi - 1.0
    down = 2.0 * pi_lo - 1.0
    hi = (psi_hi if up >= 0 else psi_lo) * up
    lo = (psi_hi if down <= 0 else psi_lo) * down
    return lo, hi


# ------------------------------------------------------------------ latency quantiles


def quantile_sorted(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q < 1) of ascending values by the inverse empirical CDF:
    the smallest value with at least a q share of the values at or below it."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    k = max(1, math.ceil(q * n - 1e-9))
    return float(values[min(n, k) - 1])


def _ratio(cand: float, prim: float) -> float:
    if prim > 0:
        return cand / prim
    return 1.0 if cand <= 0 else math.inf


# Bootstrap weights: one random byte per pair, mapped through a 256-entry table whose
# counts (95, 92, 49, 15, 4, 1) of the weights 0..5 give mean 1 and variance 1 exactly,
# like Poisson(1) (whose probabilities they match within 0.009); so a resample's weights
# are one bytes.translate in C.
_WEIGHT_COUNTS = (95, 92, 49, 15, 4, 1)
WEIGHT_TABLE = bytes(k for k, c in enumerate(_WEIGHT_COUNTS) for _ in range(c))
assert len(WEIGHT_TABLE) == 256 and sum(WEIGHT_TABLE) == 256 and \
    sum(x * x for x in WEIGHT_TABLE) == 512


def bootstrap_weights(rnd: random.Random, m: int) -> bytes:
    """m independent bootstrap weights (mean 1, variance 1), as bytes."""
    return rnd.randbytes(m).translate(WEIGHT_TABLE)


def _explicit_sum(count: int, rnd: random.Random) -> int:
    """The summed weight of ``count`` pairs, drawn one by one."""
    return sum(bootstrap_weights(rnd, count)) if count > 0 else 0


def _gather(slots: Sequence[int]) -> Callable[[bytes], tuple[int, ...]]:
    """A C-speed function: weights → the tuple of the weights at ``slots``."""
    if not slots:
        return lambda w: ()
    if len(slots) == 1:
        s = slots[0]
        return lambda w: (w[s],)
    return operator.itemgetter(*slots)


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    ratio: float            # quantile(candidate) / quantile(primary), all pairs
    lo: float               # percentile bootstrap interval
    hi: float
    primary: float          # the quantiles themselves
    candidate: float
    n: int                  # pairs
    resamples: int
    window: int             # ranks around the quantile weighted explicitly (see below)


def quantile_ratio(primary: Sequence[float], candidate: Sequence[float], q: float,
                   confidence: float = 0.95, *, resamples: int = 2000, seed: int = 0
                   ) -> RatioEstimate:
    """Bootstrap percentile interval of ``Q_q(candidate) / Q_q(primary)`` over pairs.

    A weighted (Poisson-type) bootstrap: each resample gives every pair an independent
    weight with mean 1 and variance 1 (:data:`WEIGHT_TABLE`, matched to Poisson(1), the
    limit of Efron's multinomial resampling counts); both latencies of a pair share its
    weight, so their correlation is kept. ``Q_q`` of a resample is the smallest value
    whose cumulative weight reaches ``q`` times the total weight (the inverse empirical
    CDF, as :func:`quantile_sorted`).

    A weighted quantile only depends on the weights near its rank: in each of the two
    orderings (by primary and by candidate latency) a window of ±(5 standard deviations
    of the resampled rank, √(n·q·(1−q)), + 8) ranks around ``q·n`` gets explicit
    weights; the pairs outside both windows only matter through their summed weight in
    each of four cells (below/above the primary window × below/above the candidate
    window), drawn as N(count, count) for cells of 30 pairs or more and summed
    explicitly otherwise. The cost is O(√n) per resample instead of O(n log n). If a
    resampled quantile ever falls outside its window the bootstrap is redone with twice
    the window (probability about 1e-6 per resample).
    """
    n = len(primary)
    if n != len(candidate):
        raise ValueError("primary and candidate need the same number of values")
    if n == 0:
        raise ValueError("no pairs")
    if not 0.0 < q < 1.0:
        raise ValueError("q must be between 0 and 1")
    order_p = sorted(range(n), key=primary.__getitem__)
    order_c = sorted(range(n), key=candidate.__getitem__)
    ps = [float(primary[i]) for i in order_p]
    cs = [float(candidate[i]) for i in order_c]
    qp, qc = quantile_sorted(ps, q), quantile_sorted(cs, q)
    ratio = _ratio(qc, qp)
    sd = math.sqrt(n * q * (1.0 - q))
    half = int(5.0 * sd) + 8
    while True:
        ratios = _bootstrap(order_p, order_c, ps, cs, q, resamples, seed, half)
        if ratios is not None:
            lo, hi = percentile_interval(ratios, confidence)
            return RatioEstimate(ratio, lo, hi, qp, qc, n, resamples, min(n, 2 * half))
        half *= 2


def percentile_interval(ratios: list[float], confidence: float) -> tuple[float, float]:
    """The percentile interval of sorted bootstrap replicates."""
    k = len(ratios)
    if k == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    lo = ratios[max(0, min(k - 1, math.floor(alpha / 2.0 * k)))]
    hi = ratios[max(0, min(k - 1, math.ceil((1.0 - alpha / 2.0) * k) - 1))]
    return lo, hi


def _bootstrap(order_p: list[int], order_c: list[int], ps: list[float], cs: list[float],
               q: float, resamples: int, seed: int, half: int) -> list[float] | None:
    """The sorted bootstrap replicates of the ratio; None when a window was too narrow."""
    n = len(ps)
    center = int(q * n)
    a, b = max(0, center - half), min(n, center + half)     # the window, in both orderings
    rank_p = [0] * n
    rank_c = [0] * n
    for r, i in enumerate(order_p):
        rank_p[i] = r
    for r, i in enumerate(order_c):
        rank_c[i] = r
    # weight slots: the primary window in primary order, then the pairs only in the
    # candidate window, those below the primary window first
    win_p = order_p[a:b]
    in_p = set(win_p)
    only_c = [i for i in order_c[a:b] if i not in in_p]
    only_c_below = [i for i in only_c if rank_p[i] < a]
    only_c_above = [i for i in only_c if rank_p[i] >= b]
    members = win_p + only_c_below + only_c_above
    slot = {i: s for s, i in enumerate(members)}
    m = len(members)
    lp = len(win_p)
    below_p = (lp, lp + len(only_c_below))                  # slice of slots below the p-window
    below_c_slots = [slot[i] for i in members if rank_c[i] < a]
    win_c_slots = [slot[i] for i in order_c[a:b]]
    # the pairs outside both windows, by cell (below the primary window?, below the
    # candidate window?): counts from the rank ranges
    both_below = 0
    if a > 0:
        low_c = set(order_c[:a])
        both_below = sum(1 for i in order_p[:a] if i in low_c)
    both_below -= sum(1 for i in members if rank_p[i] < a and rank_c[i] < a)
    below_p_only = a - len(only_c_below) - both_below
    below_c_only = a - len(below_c_slots) - both_below
    above_both = n - m - both_below - below_p_only - below_c_only
    cells = (above_both, below_c_only, below_p_only, both_below)
    if min(cells) < 0:  # pragma: no cover - arithmetic guard
        raise AssertionError(f"bootstrap cell counts went negative: {cells}")

    rnd = random.Random(seed)
    rand = rnd.random
    find = bisect.bisect_left
    accumulate = itertools.accumulate
    below_c = _gather(below_c_slots)
    win_c = _gather(win_c_slots)
    lc = len(win_c_slots)
    bp0, bp1 = below_p
    lams = list(cells)
    normal = [lam >= 30 for lam in lams]
    roots = [math.sqrt(lam) for lam in lams]
    log, sqrt, cos, sin, tau = math.log, math.sqrt, math.cos, math.sin, math.tau
    randbytes = rnd.randbytes
    table = WEIGHT_TABLE
    ratios: list[float] = []
    append = ratios.append
    for _ in range(resamples):
        w = randbytes(m).translate(table)
        # the four cells' summed weights: N(lam, lam) from Box-Muller pairs for big cells
        r1 = sqrt(-2.0 * log(1.0 - rand()))
        t1 = tau * rand()
        r2 = sqrt(-2.0 * log(1.0 - rand()))
        t2 = tau * rand()
        gs = (r1 * cos(t1), r1 * sin(t1), r2 * cos(t2), r2 * sin(t2))
        n_ab, n_bc, n_bp, n_bb = [
            (max(0, int(lams[k] + roots[k] * gs[k] + 0.5)) if normal[k]
             else _explicit_sum(lams[k], rnd)) for k in range(4)]
        total = sum(w) + n_ab + n_bc + n_bp + n_bb
        if total == 0:
            continue
        target = q * total
        # primary: the weight below the window, then accumulate through it
        start = n_bp + n_bb + sum(w[bp0:bp1])
        if start >= target and a > 0:
            return None
        j = find(list(accumulate(w[:lp], initial=start)), target, 1)
        if j > lp:
            if b < n:
                return None
            j = lp
        vp = ps[a + j - 1]
        start = n_bc + n_bb + sum(below_c(w))
        if start >= target and a > 0:
            return None
        j = find(list(accumulate(win_c(w), initial=start)), target, 1)
        if j > lc:
            if b < n:
                return None
            j = lc
        vc = cs[a + j - 1]
        append(vc / vp if vp > 0 else _ratio(vc, vp))
    ratios.sort()
    return ratios
