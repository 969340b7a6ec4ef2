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

import dataclasses
import fnmatch
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
    forgiven: int = 0   # verdict diff whose real differences are all on fields learned
                        # as noise since they were written


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
    def latency_cumulative(self, endpoints: Sequence[str]
                           ) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        """Over every pair of ``endpoints`` (exchanges where both answered): the
        primary's and the candidate's ``(latency, count ≤ latency)`` ascending."""
        ...
    def fields(self, endpoint: str, limit: int) -> list[FieldInfo]: ...
    def forbidden(self, endpoint: str, kinds: Sequence[str]) -> list[ForbiddenHit]: ...
    def slow_example(self, endpoint: str) -> str | None: ...


@dataclass
class MemorySource:
    """A :class:`Source` from plain values (simulations and tests)."""

    counts_by_endpoint: dict[str, Counts] = field(default_factory=dict)
    pairs_by_endpoint: dict[str, ErrorPairs] = field(default_factory=dict)
    latencies_by_endpoint: dict[str, tuple[list[float], list[float]]] = \
        field(default_factory=dict)
    fields_by_endpoint: dict[str, list[FieldInfo]] = field(default_factory=dict)
    forbidden_by_endpoint: dict[str, list[ForbiddenHit]] = field(default_factory=dict)

    def endpoints(self) -> list[str]:
        names = set(self.counts_by_endpoint) | set(self.pairs_by_endpoint) | \
            set(self.latencies_by_endpoint)
        return sorted(names)

    def counts(self, endpoint: str) -> Counts:
        return self.counts_by_endpoint.get(endpoint, Counts(0, 0, 0))

    def error_pairs(self, endpoint: str) -> ErrorPairs:
        return self.pairs_by_endpoint.get(endpoint, ErrorPairs(0, 0, 0, 0))

    def latency_cumulative(self, endpoints: Sequence[str]
                           ) -> tuple[list[tuple[float, int]], list[tuple[float, int]]]:
        lats = [self.latencies_by_endpoint.get(ep, ([], [])) for ep in endpoints]
        return (sequential.sorted_cumulative([x for p, _c in lats for x in p]),
                sequential.sorted_cumulative([x for _p, c in lats for x in c]))

    def fields(self, endpoint: str, limit: int) -> list[FieldInfo]:
        return self.fields_by_endpoint.get(endpoint, [])[:limit]

    def forbidden(self, endpoint: str, kinds: Sequence[str]) -> list[ForbiddenHit]:
        return [h for h in self.forbidden_by_endpoint.get(endpoint, []) if h.kind in kinds]

    def slow_example(self, endpoint: str) -> str | None:
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
    (:func:`.sequential.rate_bounds`)."""
    lo, hi = sequential.rate_bounds(c.diffs, c.compared, check.confidence)
    value = c.diffs / c.compared if c.compared else None
    if c.compared == 0:
        verdict, reason = INCONCLUSIVE, "no compared exchanges"
    else:
        verdict, reason = decide(lo, hi, threshold, c.compared, check.min_samples,
                                 check.critical, check.confidence, "max_diff_rate")
    forgiven = (f", {c.forgiven} more on fields learned as noise since" if c.forgiven
                else "")
    return UnitResult(endpoint, verdict, value, lo, hi, c.compared,
                      f"diff rate {fmt_pct(value)} ({c.diffs} of {c.compared}{forgiven}): "
                      f"{reason}",
                      {"diffs": c.diffs, "compared": c.compared, "exchanges": c.exchanges,
                       "forgiven": c.forgiven})


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


def latency_unit(endpoint: str | None, primary: Sequence[tuple[float, int]],
                 candidate: Sequence[tuple[float, int]], metric: str, threshold: float,
                 check: CheckConfig) -> UnitResult:
    """quantile(candidate) / quantile(primary) over the exchanges where both answered;
    an always-valid interval from both sides' cumulative counts (the window's latency
    sketches: every pair, no sample; :func:`.sequential.ratio_bounds`)."""
    q = QUANTILE[metric]
    n = primary[-1][1] if primary else 0
    label = f"p{round(q * 100)}"
    if n == 0 or not candidate:
        return UnitResult(endpoint, INCONCLUSIVE, None, None, None, 0,
                          f"{label} ratio: no latency pairs (exchanges where both answered)")
    qp, qc = _nearest_rank(primary, q), _nearest_rank(candidate, q)
    ratio = stats._ratio(qc, qp)
    lo, hi = sequential.ratio_bounds(primary, candidate, q, check.confidence)
    details: dict[str, Any] = {"pairs": n, "primary": qp, "candidate": qc}
    verdict, reason = decide(lo, hi, threshold, n, check.min_samples,
                             check.critical, check.confidence, metric)
    text = (f"{label} ratio {fmt_ratio(ratio)} (candidate {qc * 1000:.1f} ms / "
            f"primary {qp * 1000:.1f} ms, {n} pairs): {reason}")
    return UnitResult(endpoint, verdict, ratio, lo, hi, n, text, details)


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


# ------------------------------------------------------------------ a whole check


def _fields_detail(source: Source, endpoints: Sequence[str]) -> list[dict[str, Any]]:
    out: list[FieldInfo] = []
    for ep in endpoints:
        out.extend(source.fields(ep, MAX_FIELDS))
    out.sort(key=lambda f: (-f.exchanges, f.endpoint, f.field))
    return [{"endpoint": f.endpoint, "field": f.field, "exchanges": f.exchanges,
             "kinds": dict(f.kinds), "example_id": f.example_id} for f in out[:MAX_FIELDS]]


def _explain_fields(fields: list[dict[str, Any]]) -> str:
    parts = []
    for f in fields:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(f["kinds"].items()))
        ex = f" e.g. exchange {f['example_id']}" if f["example_id"] else ""
        parts.append(f"{f['endpoint']} {f['field']} ({kinds}; {f['exchanges']} exchanges{ex})")
    return "; ".join(parts)


def combine(agg: UnitResult, units: Sequence[UnitResult], min_samples: int) -> str:
    """The verdict of a sub-check from its aggregate and endpoint units:

    * fail when the aggregate or any endpoint fails;
    * pass when the aggregate passes and so does every endpoint that has ``min_samples``
      samples (an endpoint with less data cannot pass or fail, and does not hold the
      others back);
    * inconclusive otherwise."""
    if agg.verdict == FAIL or any(u.verdict == FAIL for u in units):
        return FAIL
    if agg.verdict == PASS and all(u.verdict == PASS for u in units
                                   if u.samples >= min_samples):
        return PASS
    return INCONCLUSIVE


def _combine(metric: str, threshold: Any, method: str, agg: UnitResult,
             units: list[UnitResult], min_samples: int) -> SubCheck:
    verdict = combine(agg, units, min_samples)
    failing = [u for u in units if u.verdict == FAIL]
    blocking = [u for u in units if u.verdict == INCONCLUSIVE and u.samples >= min_samples]
    small = [u for u in units if u.samples < min_samples]
    parts = [f"all endpoints: {agg.reason}"]
    if failing:
        parts.append(f"{len(failing)} of {len(units)} endpoints fail: "
                     + ", ".join(u.label for u in failing[:10])
                     + (" ..." if len(failing) > 10 else ""))
    if blocking:
        parts.append(f"{len(blocking)} endpoints with enough samples are inconclusive: "
                     + ", ".join(u.label for u in blocking[:10])
                     + (" ..." if len(blocking) > 10 else ""))
    if small:
        parts.append(f"{len(small)} endpoints have fewer than {min_samples} samples "
                     "(judged only within the aggregate)")
    return SubCheck(metric, threshold, method, verdict, agg, units, "; ".join(parts))


_QUANTILE_METHOD = ("always-valid quantile bounds of each side from the latency sketches' "
                    "cumulative counts (Bonferroni)")
METHODS = {
    "max_diff_rate": "always-valid binomial confidence sequence (mixture of likelihood "
                     "ratios)",
    "max_error_rate_increase": "always-valid bounds on candidate-only minus primary-only "
                               "failure rates (Bonferroni)",
    "max_p50_ratio": _QUANTILE_METHOD,
    "max_p99_ratio": _QUANTILE_METHOD,
    "forbid_kinds": "any difference of a forbidden kind that is not noise fails",
}


def check_endpoints(check: CheckConfig, all_endpoints: Iterable[str], endpoint_filter: str
                    ) -> list[str]:
    return sorted(e for e in all_endpoints
                  if fnmatch.fnmatchcase(e, check.endpoints)
                  and fnmatch.fnmatchcase(e, endpoint_filter))


def evaluate_check(check: CheckConfig, source: Source, endpoint_filter: str = "*",
                   all_endpoints: Sequence[str] | None = None) -> CheckResult:
    """Every configured threshold of ``check`` over its endpoints (and the aggregate)."""
    eps = check_endpoints(check, source.endpoints() if all_endpoints is None
                          else all_endpoints, endpoint_filter)
    subs: list[SubCheck] = []
    counts: dict[str, Counts] | None = None

    def get_counts() -> dict[str, Counts]:
        nonlocal counts
        if counts is None:
            counts = {ep: source.counts(ep) for ep in eps}
        return counts

    if check.max_diff_rate is not None:
        t = check.max_diff_rate
        cs = get_counts()
        units = [diff_rate_unit(ep, cs[ep], t, check) for ep in eps]
        total = Counts(sum(c.exchanges for c in cs.values()),
                       sum(c.compared for c in cs.values()),
                       sum(c.diffs for c in cs.values()),
                       sum(c.forgiven for c in cs.values()))
        agg = diff_rate_unit(None, total, t, check)
        for u in units:
            if u.verdict == FAIL:
                fs = _fields_detail(source, [u.endpoint])  # type: ignore[list-item]
                u.details["fields"] = fs
                if fs:
                    u.reason += "; fields: " + _explain_fields(fs)
        if agg.verdict == FAIL:
            worst_eps = sorted(eps, key=lambda e: -cs[e].diffs)[:MAX_FIELDS]
            agg.details["endpoints"] = [
                {"endpoint": e, "diffs": cs[e].diffs, "compared": cs[e].compared,
                 "diff_rate": cs[e].diffs / cs[e].compared if cs[e].compared else None}
                for e in worst_eps if cs[e].diffs]
            fs = _fields_detail(source, worst_eps)
            agg.details["fields"] = fs
            if fs:
                agg.reason += "; fields: " + _explain_fields(fs)
        subs.append(_combine("max_diff_rate", t, METHODS["max_diff_rate"], agg, units,
                             check.min_samples))

    if check.max_error_rate_increase is not None:
        t = check.max_error_rate_increase
        pairs = {ep: source.error_pairs(ep) for ep in eps}
        units = [error_unit(ep, pairs[ep], t, check) for ep in eps]
        examples = tuple(x for ep in eps for x in pairs[ep].examples)[:MAX_EXAMPLES]
        total_pairs = ErrorPairs(sum(p.n for p in pairs.values()),
                           sum(p.both for p in pairs.values()),
                           sum(p.candidate_only for p in pairs.values()),
                           sum(p.primary_only for p in pairs.values()), examples)
        agg = error_unit(None, total_pairs, t, check)
        for u in [agg, *units]:
            if u.verdict == FAIL and u.details.get("examples"):
                u.reason += "; e.g. exchange " + ", ".join(u.details["examples"])
        if agg.verdict == FAIL:
            agg.details["endpoints"] = [
                {"endpoint": ep, "candidate_only": pairs[ep].candidate_only,
                 "primary_only": pairs[ep].primary_only, "exchanges": pairs[ep].n}
                for ep in sorted(eps, key=lambda e: -(pairs[e].candidate_only
                                                       - pairs[e].primary_only))[:MAX_FIELDS]]
        subs.append(_combine("max_error_rate_increase", t, METHODS["max_error_rate_increase"],
                             agg, units, check.min_samples))

    latency_metrics = [m for m in ("max_p50_ratio", "max_p99_ratio")
                       if getattr(check, m) is not None]
    if latency_metrics:
        cums = {ep: source.latency_cumulative([ep]) for ep in eps}
        all_cum = source.latency_cumulative(eps) if len(eps) > 1 else ([], [])
        for metric in latency_metrics:
            t = getattr(check, metric)
            units = [latency_unit(ep, cums[ep][0], cums[ep][1], metric, t, check)
                     for ep in eps]
            if len(units) == 1:     # one endpoint: the aggregate is the same data
                agg = dataclasses.replace(units[0], endpoint=None,
                                          details=dict(units[0].details))
            else:
                agg = latency_unit(None, all_cum[0], all_cum[1], metric, t, check)
            if agg.verdict == FAIL:
                agg.details["endpoints"] = [
                    {"endpoint": u.endpoint, "ratio": u.value, "pairs": u.samples}
                    for u in sorted(units, key=lambda u: -(u.value or 0))[:MAX_FIELDS]]
                agg.reason += "; slowest endpoints: " + ", ".join(
                    f"{d['endpoint']} {fmt_ratio(d['ratio'])}" for d in agg.details["endpoints"])
            for u in units:
                if u.verdict == FAIL:
                    ex = source.slow_example(u.endpoint)  # type: ignore[arg-type]
                    if ex:
                        u.details["example_id"] = ex
                        u.reason += f"; e.g. slow exchange {ex}"
            subs.append(_combine(metric, t, METHODS[metric], agg, units, check.min_samples))

    if check.forbid_kinds is not None:
        kinds = tuple(check.forbid_kinds)
        cs = get_counts()
        hits = {ep: source.forbidden(ep, kinds) for ep in eps}
        units = [forbidden_unit(ep, hits[ep], cs[ep].compared, kinds, check) for ep in eps]
        agg = forbidden_unit(None, [h for ep in eps for h in hits[ep]],
                             sum(c.compared for c in cs.values()), kinds, check)
        subs.append(_combine("forbid_kinds", list(kinds), METHODS["forbid_kinds"], agg, units,
                             check.min_samples))

    return CheckResult(check.name, check.critical, check.endpoints, check.min_samples,
                       check.confidence, worst(s.verdict for s in subs), subs)


def evaluate(checks: Sequence[CheckConfig], source: Source, endpoint_filter: str = "*",
             **report_kw: Any) -> Report:
    """All checks → a :class:`Report` (fail if any check fails, else inconclusive if any
    is, else pass)."""
    all_eps = source.endpoints()
    results = [evaluate_check(c, source, endpoint_filter, all_eps) for c in checks]
    verdict = worst(r.verdict for r in results) if results else INCONCLUSIVE
    return Report(verdict, results, endpoint_filter=endpoint_filter, **report_kw)
