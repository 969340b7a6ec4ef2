"""A whole check: its sub-checks over the endpoints and their aggregate, and the run.

A sub-check **fails** when its aggregate or any endpoint fails; **passes** when its
aggregate passes and so does every endpoint with enough traffic to be judged alone;
is **inconclusive** otherwise (:func:`combine`). An endpoint has too little traffic to
be judged alone (*low traffic*) while it has fewer samples than ``min_samples``, or so
few that even a candidate identical to the primary could not pass (no diff at all; the
discordant failures split evenly, an odd one on the candidate's side; the primary's
latencies on both sides); the check's
``low_traffic`` policy says what such endpoints do: ``aggregate`` (the default) judges
them inside the aggregate only (unless their estimate is above the threshold),
``inconclusive`` holds the sub-check inconclusive until they pass on their own,
``ignore`` leaves them out of the aggregate too. A failure shown on a low-traffic
endpoint fails the sub-check under every policy: a regression is never ignored.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config import CheckConfig
from . import sequential
from .evaluate import (
    FAIL,
    INCONCLUSIVE,
    MAX_EXAMPLES,
    MAX_FIELDS,
    PAIRED,
    PASS,
    PRIMARY,
    QUANTILE,
    SECONDARY,
    CheckResult,
    Counts,
    ErrorPairs,
    FieldInfo,
    Report,
    Source,
    SubCheck,
    UnitResult,
    diff_rate_unit,
    error_unit,
    fmt_ratio,
    forbidden_unit,
    latency_unit,
    worst,
)


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


def low_traffic(u: UnitResult, min_samples: int) -> bool:
    return u.samples < min_samples or bool(u.details.get("low_traffic"))


def _looks_bad(u: UnitResult, threshold: Any) -> bool:
    """A unit whose point estimate is above the threshold (not shown: estimated)."""
    return (isinstance(threshold, (int, float)) and u.value is not None
            and u.value > threshold)


def combine(agg: UnitResult, units: Sequence[UnitResult], min_samples: int,
            policy: str = "aggregate", threshold: Any = None) -> str:
    """The verdict of a sub-check from its aggregate and endpoint units:

    * fail when the aggregate or any endpoint fails;
    * pass when the aggregate passes and so does every endpoint with enough traffic to
      be judged alone (:func:`low_traffic`), and no low-traffic endpoint's estimate is
      above the threshold (a regression on a small endpoint is not passed on the
      strength of the others while it is too young to be shown); under the
      ``inconclusive`` policy every endpoint must pass;
    * inconclusive otherwise."""
    if agg.verdict == FAIL or any(u.verdict == FAIL for u in units):
        return FAIL
    if agg.verdict == PASS and all(
            u.verdict == PASS for u in units
            if policy == "inconclusive" or not low_traffic(u, min_samples)) and not any(
            _looks_bad(u, threshold) for u in units
            if policy == "aggregate" and low_traffic(u, min_samples)):
        return PASS
    return INCONCLUSIVE


def _combine(metric: str, threshold: Any, method: str, agg: UnitResult,
             units: list[UnitResult], check: CheckConfig) -> SubCheck:
    min_samples, policy = check.min_samples, check.low_traffic
    verdict = combine(agg, units, min_samples, policy, threshold)
    failing = [u for u in units if u.verdict == FAIL]
    blocking = [u for u in units if u.verdict == INCONCLUSIVE
                and (policy == "inconclusive" or not low_traffic(u, min_samples)
                     or (policy == "aggregate" and _looks_bad(u, threshold)))]
    small = [u for u in units if u.verdict != FAIL and low_traffic(u, min_samples)]
    parts = [f"all endpoints: {agg.reason}"]
    if failing:
        parts.append(f"{len(failing)} of {len(units)} endpoints fail: "
                     + ", ".join(u.label for u in failing[:10])
                     + (" ..." if len(failing) > 10 else ""))
    if blocking:
        parts.append(f"{len(blocking)} endpoints are inconclusive: "
                     + ", ".join(u.label + (" (estimate above the threshold)"
                                            if _looks_bad(u, threshold) else "")
                                 for u in blocking[:10])
                     + (" ..." if len(blocking) > 10 else ""))
    if small:
        how = {"aggregate": "judged only within the aggregate",
               "inconclusive": "the check waits for them to pass on their own",
               "ignore": "left out of the check"}[policy]
        parts.append(f"{len(small)} endpoints have too little traffic to be judged alone "
                     f"({how}): " + ", ".join(u.label for u in small[:10])
                     + (" ..." if len(small) > 10 else ""))
    return SubCheck(metric, threshold, method, verdict, agg, units, "; ".join(parts))


_BASELINE = ("; candidate against the secondary where the window has enough of its "
             "latencies (latency_baseline: secondary, the default), else against primary")
_QUANTILE_METHOD = ("always-valid quantile bounds of each side from the latency sketches' "
                    "cumulative counts (Bonferroni)" + _BASELINE)
METHODS = {
    "max_diff_rate": "always-valid binomial confidence sequence (mixture of likelihood "
                     "ratios)",
    "max_error_rate_increase": "always-valid betting confidence sequence on candidate-only "
                               "minus primary-only failures of the same exchanges",
    "max_p50_ratio": ("the larger of the ratio of medians (always-valid quantile bounds "
                      "of each side from the latency sketches, Bonferroni) and the median "
                      "of the per-exchange latency ratios (always-valid sequential sign "
                      "test on the latency pairs)" + _BASELINE),
    "max_p99_ratio": _QUANTILE_METHOD,
    "forbid_kinds": "any difference of a forbidden kind that is not noise fails",
}


def check_endpoints(check: CheckConfig, all_endpoints: Iterable[str], endpoint_filter: str
                    ) -> list[str]:
    return sorted(e for e in all_endpoints
                  if fnmatch.fnmatchcase(e, check.endpoints)
                  and fnmatch.fnmatchcase(e, endpoint_filter))


def _mark_low(units: list[UnitResult], could_pass: Callable[[UnitResult], bool],
              check: CheckConfig) -> list[str]:
    """Flag the units with too little traffic to be judged alone: fewer than
    ``min_samples`` samples, or so few that even a candidate identical to the primary
    could not pass (``could_pass``); → the endpoints the aggregate covers (all, or
    without those under ``ignore``)."""
    keep: list[str] = []
    for u in units:
        low = u.samples < check.min_samples or not could_pass(u)
        if low:
            u.details["low_traffic"] = True
            if u.verdict != FAIL:
                u.reason += (" [too little traffic to be judged alone: an identical "
                             f"candidate could not pass with {u.samples} samples]")
        if not (check.low_traffic == "ignore" and low) and u.endpoint is not None:
            keep.append(u.endpoint)
    return keep


def _enough(metric: str, threshold: float, check: CheckConfig) -> Callable[[UnitResult], bool]:
    """Rates: as many samples as a unit with no event at all needs to pass."""
    need = sequential.samples_to_decide(metric, threshold, check.confidence)
    return lambda u: u.samples >= need


def _diff_rate(check: CheckConfig, source: Source, eps: list[str],
               cs: dict[str, Counts]) -> SubCheck:
    t = check.max_diff_rate
    assert t is not None
    units = [diff_rate_unit(ep, cs[ep], t, check) for ep in eps]
    inside = _mark_low(units, _enough("max_diff_rate", t, check), check)
    total = Counts(sum(cs[e].exchanges for e in inside), sum(cs[e].compared for e in inside),
                   sum(cs[e].diffs for e in inside), sum(cs[e].forgiven for e in inside),
                   sum(cs[e].uncertain for e in inside))
    agg = diff_rate_unit(None, total, t, check)
    for u in units:
        if u.verdict == FAIL:
            fs = _fields_detail(source, [u.endpoint])  # type: ignore[list-item]
            u.details["fields"] = fs
            if fs:
                u.reason += "; fields: " + _explain_fields(fs)
    if agg.verdict == FAIL:
        worst_eps = sorted(inside, key=lambda e: -cs[e].diffs)[:MAX_FIELDS]
        agg.details["endpoints"] = [
            {"endpoint": e, "diffs": cs[e].diffs, "compared": cs[e].compared,
             "diff_rate": cs[e].diffs / cs[e].compared if cs[e].compared else None}
            for e in worst_eps if cs[e].diffs]
        fs = _fields_detail(source, worst_eps)
        agg.details["fields"] = fs
        if fs:
            agg.reason += "; fields: " + _explain_fields(fs)
    return _combine("max_diff_rate", t, METHODS["max_diff_rate"], agg, units, check)


def _errors(check: CheckConfig, source: Source, eps: list[str]) -> SubCheck:
    t = check.max_error_rate_increase
    assert t is not None
    pairs = {ep: source.error_pairs(ep) for ep in eps}
    units = [error_unit(ep, pairs[ep], t, check) for ep in eps]

    def identical_passes(u: UnitResult) -> bool:
        """The same exchanges with the discordant failures split evenly, an odd one on
        the candidate's side (with one discordant failure an identical candidate's is
        as likely the candidate's as the primary's; an endpoint whose one failure was the
        candidate's is not judged alone before that data could pass)."""
        p = pairs[u.endpoint]  # type: ignore[index]
        d = p.candidate_only + p.primary_only
        return sequential.difference_bounds(d - d // 2, d // 2, p.n, check.confidence)[1] < t

    inside = _mark_low(units, identical_passes, check)
    examples = tuple(x for ep in inside for x in pairs[ep].examples)[:MAX_EXAMPLES]
    total = ErrorPairs(sum(pairs[e].n for e in inside), sum(pairs[e].both for e in inside),
                       sum(pairs[e].candidate_only for e in inside),
                       sum(pairs[e].primary_only for e in inside), examples)
    agg = error_unit(None, total, t, check)
    for u in [agg, *units]:
        if u.verdict == FAIL and u.details.get("examples"):
            u.reason += "; e.g. exchange " + ", ".join(u.details["examples"])
    if agg.verdict == FAIL:
        agg.details["endpoints"] = [
            {"endpoint": ep, "candidate_only": pairs[ep].candidate_only,
             "primary_only": pairs[ep].primary_only, "exchanges": pairs[ep].n}
            for ep in sorted(inside, key=lambda e: -(pairs[e].candidate_only
                                                     - pairs[e].primary_only))[:MAX_FIELDS]]
    return _combine("max_error_rate_increase", t, METHODS["max_error_rate_increase"], agg,
                    units, check)


ENOUGH_SECONDARY = 0.5   # of the candidate's latencies, the secondary's a baseline needs


def sketch_baseline(pairs: int, secondary: int) -> str:
    """The default rule on the window's sketches alone: the secondary where it has at
    least :data:`ENOUGH_SECONDARY` as many latencies as the endpoint has pairs (the
    report and the UI mark that side where no check says otherwise)."""
    return SECONDARY if secondary and secondary >= ENOUGH_SECONDARY * pairs else PRIMARY


def choose_baseline(check: CheckConfig, source: Source, endpoint: str, paired: bool,
                    pair_sample: Callable[[str], tuple[int, int]]) -> tuple[str, str]:
    """The baseline of an endpoint's latency ratio, and why (for the text; '' when the
    secondary is used as configured): the secondary where the check asks for it
    (``latency_baseline: secondary``, the default) and the window has enough of its
    latencies — at least :data:`ENOUGH_SECONDARY` of the endpoint's latency pairs in
    its sketch and, for the paired test (``paired``), in the pair sample (a sample
    stored before pairs kept the secondary's latency has none) — else primary."""
    if check.latency_baseline == PRIMARY:
        return PRIMARY, "latency_baseline: primary"
    pairs, secondary = source.secondary_latencies(endpoint)
    if not secondary:
        return PRIMARY, "no secondary latencies in the window"
    if sketch_baseline(pairs, secondary) == PRIMARY:
        return PRIMARY, (f"the secondary answered {secondary} of {pairs} exchanges, too few "
                         "to compare with")
    if paired:
        sample, with_secondary = pair_sample(endpoint)
        if with_secondary < ENOUGH_SECONDARY * sample:
            return PRIMARY, (f"{with_secondary} of {sample} latency pairs have the "
                             "secondary's latency (pairs stored before the store kept it)")
    return SECONDARY, ""


def _latency(check: CheckConfig, source: Source, eps: list[str], metric: str,
             read: Callable[[tuple[str, ...], str, bool], Any],
             pair_sample: Callable[[str], tuple[int, int]]) -> SubCheck:
    """``read(endpoints, baseline, paired)``: the baseline's and the candidate's
    cumulative counts, and with ``paired`` the paired latencies (baseline, candidate);
    ``pair_sample(endpoint)``: (pairs in the sample, those with a secondary latency)."""
    t = getattr(check, metric)
    paired = metric in PAIRED
    chosen = {ep: choose_baseline(check, source, ep, paired, pair_sample) for ep in eps}
    data = {ep: read((ep,), chosen[ep][0], paired) for ep in eps}
    units = [latency_unit(ep, data[ep][0], data[ep][1], metric, t, check,
                          data[ep][2] if paired else None, *chosen[ep]) for ep in eps]
    q = QUANTILE[metric]

    def identical_passes(u: UnitResult) -> bool:
        """The baseline's latencies on both sides."""
        base = data[u.endpoint][0]  # type: ignore[index]
        return bool(base) and sequential.ratio_bounds(base, base, q, check.confidence)[1] < t

    inside = _mark_low(units, identical_passes, check)
    if len(inside) == 1 and len(units) == 1:   # one endpoint: the aggregate is the same data
        agg = dataclasses.replace(units[0], endpoint=None, details=dict(units[0].details))
        agg.details.pop("low_traffic", None)
    else:
        # the secondary when every endpoint inside is judged against it, else primary
        off = [ep for ep in inside if chosen[ep][0] != SECONDARY]
        base = SECONDARY if inside and not off else PRIMARY
        why = chosen[off[0]][1] if off and check.latency_baseline == SECONDARY else ""
        if off and why:
            why = (f"{off[0]}: {why}" if len(off) == 1 else
                   f"{len(off)} endpoints judged against primary, e.g. {off[0]}: {why}")
        elif check.latency_baseline == PRIMARY:
            why = "latency_baseline: primary"
        cp, cc, pairs = read(tuple(inside), base, paired)
        agg = latency_unit(None, cp, cc, metric, t, check, pairs if paired else None,
                           base, why)
    if agg.verdict == FAIL:
        agg.details["endpoints"] = [
            {"endpoint": u.endpoint, "ratio": u.value, "pairs": u.samples,
             "baseline": u.details.get("baseline")}
            for u in sorted(units, key=lambda u: -(u.value or 0))[:MAX_FIELDS]]
        agg.reason += "; slowest endpoints: " + ", ".join(
            f"{d['endpoint']} {fmt_ratio(d['ratio'])}" for d in agg.details["endpoints"])
    for u in units:
        if u.verdict == FAIL:
            ex = source.slow_example(u.endpoint,  # type: ignore[arg-type]
                                     u.details.get("baseline", PRIMARY))
            if ex:
                u.details["example_id"] = ex
                u.reason += f"; e.g. slow exchange {ex}"
    return _combine(metric, t, METHODS[metric], agg, units, check)


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
        subs.append(_diff_rate(check, source, eps, get_counts()))
    if check.max_error_rate_increase is not None:
        subs.append(_errors(check, source, eps))
    latency_metrics = [m for m in QUANTILE if getattr(check, m) is not None]
    if latency_metrics:
        cums: dict[tuple[tuple[str, ...], str], Any] = {}
        paired_lat: dict[tuple[tuple[str, ...], str], Any] = {}
        samples: dict[str, tuple[int, int]] = {}

        def read(scope: tuple[str, ...], baseline: str, paired: bool) -> Any:
            """Each side's cumulative counts read once for every metric; the pairs
            once for the paired ones."""
            key = (scope, baseline)
            if key not in cums:
                cums[key] = source.latency_cumulative(scope, baseline)
            if paired and key not in paired_lat:
                paired_lat[key] = source.latency_pairs(scope, baseline)
            return (*cums[key], paired_lat[key] if paired else None)

        def pair_sample(ep: str) -> tuple[int, int]:
            if ep not in samples:
                samples[ep] = (len(source.latency_pairs((ep,), PRIMARY)[0]),
                               len(source.latency_pairs((ep,), SECONDARY)[0]))
            return samples[ep]

        subs.extend(_latency(check, source, eps, metric, read, pair_sample)
                    for metric in latency_metrics)
    if check.forbid_kinds is not None:
        kinds = tuple(check.forbid_kinds)
        cs = get_counts()
        hits = {ep: source.forbidden(ep, kinds) for ep in eps}
        units = [forbidden_unit(ep, hits[ep], cs[ep].compared, kinds, check) for ep in eps]
        inside = _mark_low(units, lambda u: True, check)
        # a forbidden difference on any endpoint is shown, whatever its traffic
        agg = forbidden_unit(None, [h for ep in eps for h in hits[ep]],
                             sum(cs[e].compared for e in inside), kinds, check)
        subs.append(_combine("forbid_kinds", list(kinds), METHODS["forbid_kinds"], agg, units,
                             check))
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
