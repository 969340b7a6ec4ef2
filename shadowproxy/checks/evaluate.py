"""Turning per-endpoint evidence into check verdicts.

The evaluation reads its data through a :class:`Source` (the store, or simulated data in
the calibration tests), so the same code decides in production and in the simulations.

Structure of a result::

    Report                      the run: verdict (pass | fail | inconclusive), window
      CheckResult               one configured check (``checks[i]``)
        SubCheck                one configured threshold of it (max_diff_rate, ...)
          UnitResult            the aggregate over the check's endpoints, and one per endpoint

A sub-check **fails** when its aggregate or any endpoint fails, **passes** when its
aggregate passes and so does every endpoint with ``min_samples`` samples, else is
**inconclusive** (:func:`combine`); a check takes the worst of its sub-checks; the run
the worst of its checks (fail > inconclusive > pass).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import CheckConfig
from . import sequential, stats

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}

METRICS = ("max_diff_rate", "max_error_rate_increase", "max_p50_ratio", "max_p99_ratio",
           "forbid_kinds")
QUANTILE = {"max_p50_ratio": 0.5, "max_p99_ratio": 0.99}
# judged on the per-exchange latency ratios as well as on the ratio of the quantiles
PAIRED = frozenset({"max_p50_ratio"})
# the latency ratios' baselines (``latency_baseline``: docs/checks.md)
PRIMARY, SECONDARY = "primary", "secondary"
MAX_FIELDS = 5          # fields listed behind a failing diff-rate unit
MAX_EXAMPLES = 3        # example exchange ids listed per finding


def worst(verdicts: Iterable[str]) -> str:
    out = PASS
    for v in verdicts:
        if _RANK[v] > _RANK[out]:
            out = v
    return out


# ------------------------------------------------------------------ the data


@dataclass(frozen=True, slots=True)
class Counts:
    """Verdict counts of one endpoint in the window."""

    exchanges: int      # all judged exchanges
    compared: int       # exchanges with a comparison (verdict match, diff or noise)
    diffs: int          # verdict diff, less the forgiven ones (see effective_diffs)
    forgiven: int = 0   # verdict diff whose real differences are all on fields that do
                        # not count against the candidate (learned as noise since they
                        # were written, or not shown beyond the secondary)
    uncertain: int = 0  # of those, the ones not on learned noise: not (yet) shown beyond
                        # the secondary; they keep a unit from passing, never fail it


def effective_diffs(real_fields: Iterable[Iterable[str]], noise_now: set[str] | frozenset[str]
                    ) -> tuple[int, int]:
    """Diff exchanges judged with today's noise knowledge. → (diffs, forgiven).

    ``real_fields`` has, per exchange stored with verdict ``diff``, the fields of its
    differences that were not noise when it was written; ``noise_now`` the fields the
    noise learner holds to be noise now. An exchange stays a diff when one of its real
    fields is still not noise; it is *forgiven* when all of them have been learned as
    noise since (the learner decides on every exchange, so early in a run a noisy field
    can be judged real for a while before the evidence settles). Nothing is ever added:
    a difference judged noise when written stays noise."""
    diffs = forgiven = 0
    for fields in real_fields:
        if any(f not in noise_now for f in fields):
            diffs += 1
        else:
            forgiven += 1
    return diffs, forgiven


@dataclass(frozen=True, slots=True)
class ErrorPairs:
    """Failures of primary and candidate on the same exchanges.

    A candidate *fails* an exchange with a 5xx status or no complete response
    (a transport error: connect, timeout, reset, ...); the primary likewise."""

    n: int                          # exchanges
    both: int                       # both failed
    candidate_only: int             # b: only the candidate failed
    primary_only: int               # c: only the primary failed
    examples: tuple[str, ...] = ()  # exchanges where only the candidate failed

    @property
    def candidate_rate(self) -> float:
        return (self.both + self.candidate_only) / self.n if self.n else 0.0

    @property
    def primary_rate(self) -> float:
        return (self.both + self.primary_only) / self.n if self.n else 0.0


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """A field with differences that are not noise."""

    endpoint: str
    field: str
    exchanges: int                  # exchanges with a difference on the field
    kinds: dict[str, int]
    example_id: str | None


@dataclass(frozen=True, slots=True)
class ForbiddenHit:
    """Differences of a forbidden kind on one field (not noise)."""

    endpoint: str
    field: str
    kind: str
    count: int                      # difference rows of that kind (at least one not noise)
    example_id: str | None


class Source(Protocol):
    """What the evaluation reads. Endpoint arguments are exact names, never globs."""

    def endpoints(self) -> list[str]: ...
    def counts(self, endpoint: str) -> Counts: ...
    def error_pairs(self, endpoint: str) -> ErrorPairs: ...
    def latency_cumulative(self, endpoints: Sequence[str], baseline: str = PRIMARY
                           ) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        """Over every pair of ``endpoints`` (exchanges where primary and candidate
        answered): the baseline's and the candidate's ``(latency, count ≤ latency)``
        ascending; the baseline is primary over the same exchanges, or the secondary
        over the exchanges it answered."""
        ...
    def latency_pairs(self, endpoints: Sequence[str], baseline: str = PRIMARY
                      ) -> tuple[list[float], list[float]]:
        """The paired latencies of ``endpoints`` together (element ``i`` of both lists
        is one exchange's baseline and candidate latency; with the secondary as the
        baseline, only the pairs that have its latency): every pair of the window, or a
        uniform sample of them when there are more than the store's sample holds."""
        ...
    def secondary_latencies(self, endpoint: str) -> tuple[int, int]:
        """(latency pairs of primary and candidate, the secondary's latencies) of the
        window: whether the secondary answered enough to be the baseline."""
        ...
    def fields(self, endpoint: str, limit: int) -> list[FieldInfo]: ...
    def forbidden(self, endpoint: str, kinds: Sequence[str]) -> list[ForbiddenHit]: ...
    def slow_example(self, endpoint: str, baseline: str = PRIMARY) -> str | None: ...


@dataclass
class MemorySource:
    """A :class:`Source` from plain values (simulations and tests)."""

    counts_by_endpoint: dict[str, Counts] = field(default_factory=dict)
    pairs_by_endpoint: dict[str, ErrorPairs] = field(default_factory=dict)
    # endpoint → (primary, candidate) latencies of each pair, or (primary, candidate,
    # secondary), the secondary's NaN where it did not answer
    latencies_by_endpoint: dict[str, tuple[list[float], ...]] = field(default_factory=dict)
    fields_by_endpoint: dict[str, list[FieldInfo]] = field(default_factory=dict)
    forbidden_by_endpoint: dict[str, list[ForbiddenHit]] = field(default_factory=dict)
    # endpoint → every latency of the secondary (the exchanges it answered, as the
    # store's sketch counts them, the candidate's failures included); without it, the
    # secondary latencies of the pairs
    secondary_by_endpoint: dict[str, list[float]] = field(default_factory=dict)

    def endpoints(self) -> list[str]:
        names = set(self.counts_by_endpoint) | set(self.pairs_by_endpoint) | \
            set(self.latencies_by_endpoint)
        return sorted(names)

    def counts(self, endpoint: str) -> Counts:
        return self.counts_by_endpoint.get(endpoint, Counts(0, 0, 0))

    def error_pairs(self, endpoint: str) -> ErrorPairs:
        return self.pairs_by_endpoint.get(endpoint, ErrorPairs(0, 0, 0, 0))

    def _triples(self, endpoints: Sequence[str]
                 ) -> list[tuple[float, float, float]]:
        out: list[tuple[float, float, float]] = []
        for ep in endpoints:
            lats = self.latencies_by_endpoint.get(ep, ([], []))
            sec = lats[2] if len(lats) > 2 else [math.nan] * len(lats[0])
            out.extend(zip(lats[0], lats[1], sec, strict=True))
        return out

    def latency_cumulative(self, endpoints: Sequence[str], baseline: str = PRIMARY
                           ) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        t = self._triples(endpoints)
        base = [x for ep in endpoints for x in self._secondary(ep)] \
            if baseline == SECONDARY else [p for p, _c, _s in t]
        return (sequential.sorted_cumulative(base),
                sequential.sorted_cumulative([c for _p, c, _s in t]))

    def _secondary(self, endpoint: str) -> list[float]:
        got = self.secondary_by_endpoint.get(endpoint)
        if got is not None:
            return got
        return [s for _p, _c, s in self._triples([endpoint]) if s == s]

    def latency_pairs(self, endpoints: Sequence[str], baseline: str = PRIMARY
                      ) -> tuple[list[float], list[float]]:
        t = self._triples(endpoints)
        if baseline == SECONDARY:
            t = [x for x in t if x[2] == x[2]]
            return [s for _p, _c, s in t], [c for _p, c, _s in t]
        return [p for p, _c, _s in t], [c for _p, c, _s in t]

    def secondary_latencies(self, endpoint: str) -> tuple[int, int]:
        return len(self._triples([endpoint])), len(self._secondary(endpoint))

    def fields(self, endpoint: str, limit: int) -> list[FieldInfo]:
        return self.fields_by_endpoint.get(endpoint, [])[:limit]

    def forbidden(self, endpoint: str, kinds: Sequence[str]) -> list[ForbiddenHit]:
        return [h for h in self.forbidden_by_endpoint.get(endpoint, []) if h.kind in kinds]

    def slow_example(self, endpoint: str, baseline: str = PRIMARY) -> str | None:
        return None


# ------------------------------------------------------------------ results


@dataclass
class UnitResult:
    """One sub-check on one endpoint, or on all of the check's endpoints together."""

    endpoint: str | None            # None: the aggregate
    verdict: str
    value: float | None             # the point estimate (a rate, a difference, a ratio, a count)
    lo: float | None                # the interval at the check's confidence
    hi: float | None
    samples: int
    reason: str                     # why this verdict, in one sentence
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return "aggregate" if self.endpoint is None else "endpoint"

    @property
    def label(self) -> str:
        return "all endpoints" if self.endpoint is None else self.endpoint


@dataclass
class SubCheck:
    metric: str
    threshold: Any                  # a number, or the forbidden kinds
    method: str
    verdict: str
    aggregate: UnitResult
    endpoints: list[UnitResult]
    summary: str

    @property
    def units(self) -> list[UnitResult]:
        return [self.aggregate, *self.endpoints]


@dataclass
class CheckResult:
    name: str
    critical: bool
    endpoints_glob: str
    min_samples: int
    confidence: float
    verdict: str
    subchecks: list[SubCheck]


@dataclass
class Report:
    verdict: str
    checks: list[CheckResult]
    since: float | None = None
    until: float | None = None
    endpoint_filter: str = "*"
    store: str | None = None
    generated_at: float | None = None
    # the window's shadow accounting: "mirrored", "compared", "candidate_error{connect}",
    # "dropped{candidate_down}", ... → count (None when the source has none): what
    # explains a check with too few compared exchanges
    shadow: dict[str, int] | None = None

    @property
    def exit_code(self) -> int:
        return {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}[self.verdict]

    def counts(self) -> dict[str, int]:
        out = {PASS: 0, FAIL: 0, INCONCLUSIVE: 0}
        for c in self.checks:
            out[c.verdict] += 1
        return out


# ------------------------------------------------------------------ formatting helpers


def fmt_pct(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    v = 100.0 * x
    if v == 0:
        return "0%"
    if abs(v) >= 10:
        return f"{v:.1f}%"
    if abs(v) >= 0.1:
        return f"{v:.2f}%"
    return f"{v:.3g}%"


def fmt_ratio(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3f}x"


def fmt_pp(x: float | None) -> str:
    """A difference of rates, in percentage points."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x * 100:+.3g} pp"


def fmt_value(metric: str, x: float | None) -> str:
    if metric == "max_diff_rate":
        return fmt_pct(x)
    if metric == "max_error_rate_increase":
        return fmt_pp(x)
    if metric in QUANTILE:
        return fmt_ratio(x)
    return "n/a" if x is None else str(int(x))


def fmt_threshold(metric: str, t: Any) -> str:
    if metric == "forbid_kinds":
        return ", ".join(t)
    if metric == "max_error_rate_increase":
        return f"{t * 100:.3g} pp"
    if metric == "max_diff_rate":
        return fmt_pct(t)
    return fmt_ratio(t)


# ------------------------------------------------------------------ the decision rule


def decide(lo: float, hi: float, threshold: float, n: int, min_samples: int,
           critical: bool, confidence: float, metric: str) -> tuple[str, str]:
    """The verdict of an anytime-valid interval against a maximum. → (verdict, reason).

    ``[lo, hi]`` is a confidence sequence (:mod:`.sequential`): each side is wrong at
    most ``(1 − confidence)/2`` of the time *however often it is looked at*, so:

    * the interval entirely above the threshold (lo > threshold): fail, at any number
      of samples (a regression is shown as soon as the evidence is there);
    * entirely below it (hi < threshold) with at least ``min_samples`` samples: pass;
    * otherwise inconclusive: more samples needed. ``critical`` no longer turns doubt
      into a failure: with a gate polled until it decides, doubt-is-failure would fail
      every healthy candidate that is still gathering data."""
    t = fmt_threshold(metric, threshold)
    iv = (f"{confidence:.0%} always-valid interval [{fmt_value(metric, lo)}, "
          f"{fmt_value(metric, hi)}]")
    if lo > threshold:
        return FAIL, f"{iv} is above the threshold {t}"
    if n < min_samples:
        return INCONCLUSIVE, (f"only {n} samples, fewer than min_samples {min_samples} "
                              f"({iv})")
    if hi < threshold:
        return PASS, f"{iv} is below the threshold {t}"
    return INCONCLUSIVE, f"{iv} contains the threshold {t}: more samples needed"


# ------------------------------------------------------------------ one unit per metric


def diff_rate_unit(endpoint: str | None, c: Counts, threshold: float, check: CheckConfig
                   ) -> UnitResult:
    """Share of compared exchanges with verdict diff; an always-valid interval
    (:func:`.sequential.rate_bounds`). The lower bound counts the diffs against the
    candidate; the upper bound those and the ``uncertain`` ones (fields not yet shown to
    differ more than with the secondary): doubt never fails a candidate, and never
    passes one either."""
    lo = sequential.rate_bounds(c.diffs, c.compared, check.confidence)[0]
    hi = sequential.rate_bounds(c.diffs + c.uncertain, c.compared, check.confidence)[1]
    value = c.diffs / c.compared if c.compared else None
    if c.compared == 0:
        verdict, reason = INCONCLUSIVE, "no compared exchanges"
    else:
        verdict, reason = decide(lo, hi, threshold, c.compared, check.min_samples,
                                 check.critical, check.confidence, "max_diff_rate")
    learned = c.forgiven - c.uncertain
    extra = (f", {learned} more on fields learned as noise since" if learned else "")
    if c.uncertain:
        extra += (f", {c.uncertain} more on fields not shown to differ more often than "
                  "with the secondary")
    return UnitResult(endpoint, verdict, value, lo, hi, c.compared,
                      f"diff rate {fmt_pct(value)} ({c.diffs} of {c.compared}{extra}): "
                      f"{reason}",
                      {"diffs": c.diffs, "compared": c.compared, "exchanges": c.exchanges,
                       "forgiven": c.forgiven, "uncertain": c.uncertain})


def error_unit(endpoint: str | None, p: ErrorPairs, threshold: float, check: CheckConfig
               ) -> UnitResult:
    """Candidate failure rate minus primary failure rate on the same exchanges; an
    always-valid interval (:func:`.sequential.difference_bounds`)."""
    lo, hi = sequential.difference_bounds(p.candidate_only, p.primary_only, p.n,
                                          check.confidence)
    value = (p.candidate_only - p.primary_only) / p.n if p.n else None
    pval = stats.mcnemar_exact(p.candidate_only, p.primary_only)
    if p.n == 0:
        verdict, reason = INCONCLUSIVE, "no exchanges"
    else:
        verdict, reason = decide(lo, hi, threshold, p.n, check.min_samples, check.critical,
                                 check.confidence, "max_error_rate_increase")
    text = (f"error rate candidate {fmt_pct(p.candidate_rate)} vs primary "
            f"{fmt_pct(p.primary_rate)}, increase {fmt_pp(value)} "
            f"(only candidate failed: {p.candidate_only}, only primary: {p.primary_only}, "
            f"both: {p.both}, of {p.n}): {reason}")
    details: dict[str, Any] = {
        "exchanges": p.n, "both_failed": p.both, "candidate_only": p.candidate_only,
        "primary_only": p.primary_only, "candidate_error_rate": p.candidate_rate,
        "primary_error_rate": p.primary_rate, "mcnemar_exact_p": pval,
    }
    if p.examples:
        details["examples"] = list(p.examples[:MAX_EXAMPLES])
    return UnitResult(endpoint, verdict, value, lo, hi, p.n, text, details)


def _nearest_rank(cumulative: Sequence[tuple[float, int]], q: float) -> float:
    """The smallest value with at least a share ``q`` of the values at or below it."""
    target = max(1, math.ceil(q * cumulative[-1][1] - 1e-9))
    for v, c in cumulative:
        if c >= target:
            return v
    return cumulative[-1][0]


def baseline_name(baseline: str) -> str:
    return "the secondary" if baseline == SECONDARY else "primary"


def latency_unit(endpoint: str | None, base: Sequence[tuple[float, int]],
                 candidate: Sequence[tuple[float, int]], metric: str, threshold: float,
                 check: CheckConfig,
                 pairs: tuple[Sequence[float], Sequence[float]] | None = None,
                 baseline: str = PRIMARY, why: str = "") -> UnitResult:
    """quantile(candidate) / quantile(baseline): the baseline is primary over the
    exchanges where both answered, or the secondary (``baseline``) over the exchanges
    it answered (sent from the same process at the same moments as the candidate: like
    with like); an always-valid interval from both sides' cumulative counts (the
    window's latency sketches: every latency, no sample; :func:`.sequential.ratio_bounds`).
    ``why``: how the baseline was chosen, for the text.

    For the metrics in :data:`PAIRED` (p50) the ratio judged is the larger of that ratio
    of quantiles and the quantile of the per-exchange ratios candidate / baseline of
    ``pairs`` (:func:`.sequential.paired_ratio_bounds`): the interval is
    ``[max(lo), max(hi)]``, its lower side split between the two tests (each at
    ``(1 − confidence)/4``), its upper side at ``(1 − confidence)/2`` each (a false pass
    needs the larger of the two to be passed falsely, one test). Without pairs the unit
    cannot pass."""
    q = QUANTILE[metric]
    n = min(base[-1][1], candidate[-1][1]) if base and candidate else 0
    label = f"p{round(q * 100)}"
    against = f"against {baseline_name(baseline)}{f' ({why})' if why else ''}"
    details: dict[str, Any] = {"baseline": baseline}
    if why:
        details["baseline_reason"] = why
    if n == 0:
        return UnitResult(endpoint, INCONCLUSIVE, None, None, None, 0,
                          f"{label} ratio {against}: no latency pairs (exchanges where "
                          "both answered)", details)
    qp, qc = _nearest_rank(base, q), _nearest_rank(candidate, q)
    ratio = stats._ratio(qc, qp)
    details.update({"pairs": n, baseline: qp, "candidate": qc})
    what = f"candidate {qc * 1000:.1f} ms / {baseline} {qp * 1000:.1f} ms, {n} latencies"
    value = ratio
    if metric in PAIRED:
        a = 1.0 - check.confidence
        lo, hi = sequential.ratio_bounds(base, candidate, q, check.confidence,
                                         lo_alpha=a / 4, hi_alpha=a / 2)
        p_lat, c_lat = pairs if pairs is not None else ((), ())
        ratios = sorted(sequential.pair_ratio(p, c)
                        for p, c in zip(p_lat, c_lat, strict=True))
        if ratios:
            plo, phi = sequential.paired_ratio_bounds(p_lat, c_lat, q, a / 4, a / 2)
            paired = ratios[max(0, math.ceil(q * len(ratios) - 1e-9) - 1)]
        else:
            plo, phi, paired = 0.0, math.inf, math.nan
        details.update(ratio_of_quantiles=ratio, paired_ratio=_finite(paired),
                       paired_samples=len(ratios),
                       paired_interval={"lo": _finite(plo), "hi": _finite(phi)})
        if ratios and paired > ratio:
            value = paired
        lo, hi = max(lo, plo), max(hi, phi)
        what += (f"; {label} of the per-exchange ratios {fmt_ratio(paired)} over "
                 f"{len(ratios)} pairs")
    else:
        lo, hi = sequential.ratio_bounds(base, candidate, q, check.confidence)
    verdict, reason = decide(lo, hi, threshold, n, check.min_samples,
                             check.critical, check.confidence, metric)
    text = f"{label} ratio {fmt_ratio(value)} {against} ({what}): {reason}"
    return UnitResult(endpoint, verdict, value, lo, hi, n, text, details)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def forbidden_unit(endpoint: str | None, hits: list[ForbiddenHit], compared: int,
                   kinds: Sequence[str], check: CheckConfig) -> UnitResult:
    count = sum(h.count for h in hits)
    if hits:
        where = "; ".join(f"{h.endpoint} {h.field} {h.kind} x{h.count}"
                          + (f" (e.g. exchange {h.example_id})" if h.example_id else "")
                          for h in hits[:MAX_FIELDS])
        more = f" and {len(hits) - MAX_FIELDS} more" if len(hits) > MAX_FIELDS else ""
        verdict, reason = FAIL, f"forbidden differences: {where}{more}"
    elif compared < check.min_samples:
        verdict, reason = INCONCLUSIVE, (f"no forbidden differences, but only {compared} "
                                         f"compared exchanges, fewer than min_samples "
                                         f"{check.min_samples}")
    else:
        verdict, reason = PASS, (f"no difference of kind {', '.join(kinds)} in {compared} "
                                 "compared exchanges")
    details = {"compared": compared,
               "hits": [{"endpoint": h.endpoint, "field": h.field, "kind": h.kind,
                         "count": h.count, "example_id": h.example_id} for h in hits]}
    return UnitResult(endpoint, verdict, float(count), None, None, compared, reason, details)
