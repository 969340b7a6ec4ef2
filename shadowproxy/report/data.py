"""The report data: one JSON-ready dict built from the store, which every format renders.

:func:`build_report` reads the store once per section (a handful of queries plus one
``latencies()`` and a few ``exchange()`` calls per endpoint) and returns plain dicts,
lists, strings and numbers; ``--format json`` writes it as it is. Times are unix
seconds, latencies seconds, rates fractions (0..1). Everything shown comes from the
store, whose samples and difference values were redacted before they were written.

Schema ``shadowproxy.report/1`` (keys of the top-level dict)::

    schema          "shadowproxy.report/1"
    generated_at    unix time the report was built
    window          {since, until, seconds, label}           until exclusive
    store           {url, data_from, data_to}                time range of all stored exchanges
    setup           {candidate, secondary, noise_mode}       noise_mode "learned" | "rules only"
    verdict         {status, headline, source}               source "checks": status pass |
                                                             fail | inconclusive; source
                                                             "summary": diffs | clean | no_data
    checks          None | shadowproxy.checks.report_doc(): {verdict, exit_code, counts,
                     window, checks: [{name, verdict, critical, endpoints, min_samples,
                     confidence, subchecks: [{metric, threshold, method, verdict, summary,
                     aggregate{...}, endpoints[...]}]}]}; {verdict: "error", error} when
                     the checks raised
    totals          {exchanges, matches, diffs, noise, errors, diff_rate, noise_rate,
                     error_rate, endpoints, endpoints_with_diffs, requests, shadowed}
    endpoints       [{endpoint, exchanges, matches, diffs, noise, errors, diff_rate,
                      noise_rate, error_rate, candidate_5xx, primary_5xx, candidate_errors,
                      primary_errors, candidate_error_rate, primary_error_rate,
                      latency_samples, latency: {p50|p95|p99: {primary, candidate, ratio,
                      secondary, ratio_secondary, baseline, judged_ratio}},
                      fields_with_diffs}]                     most diffs first
    fields          {endpoint: [{field, count, exchanges, share, kinds{kind: n},
                      noise_count, noise, example}]}          top fields, most frequent first
                    example: None | {id, time, method, path, query, verdict, a, b,
                      occurrences, request{...}, primary{...}, candidate{...},
                      secondary{...}|None}                   bodies capped at BODY_MAX
    fields_more     {endpoint: number of further fields not listed}
    noise           [{endpoint, field, n, r, s, p_value, noise, provisional, decided_at,
                      updated}]                               the learner's evidence
    outcomes        {outcome: {reason: count}}                reason "" when none
    outcome_totals  {outcome: count}
    series          {bucket_seconds, endpoints: {endpoint: [{t, exchanges, diffs, noise,
                      errors, diff_rate}]}}
    latency         {endpoint: {samples, baseline{p50|p90|p95|p99|max: "primary" |
                      "secondary"}, primary{min,p50,p90,p95,p99,max,mean},
                      candidate{...}, secondary{...}|None, cdf{q[], primary[],
                      candidate[]}}}               baseline: what the latency checks
                                                   judge the candidate against
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import orjson

from ..checks.evaluate import PRIMARY, SECONDARY
from ..checks.judge import sketch_baseline
from ..store.base import EndpointStats, FieldStats, Store, with_quantiles
from ..store.sketch import Sketch

SCHEMA = "shadowproxy.report/1"
BODY_MAX = 8 * 1024          # characters of each body kept in a field example
VALUE_MAX = 2048             # characters of a difference value shown
TOP_FIELDS = 10              # fields listed per endpoint
EXAMPLES_WITH_BODIES = 60    # distinct example exchanges whose bodies are included
SERIES_POINTS = 96           # about this many buckets over the window
CDF_QUANTILES = tuple(range(0, 101, 2))   # quantiles (percent) kept per latency CDF
# outcomes that end a request (shadowproxy.stats.FINAL); others (mirrored) are on the way
FINAL_OUTCOMES = ("not_eligible", "sampled_out", "dropped", "compared", "candidate_error",
                  "candidate_timeout")
NOT_SHADOWED = ("not_eligible", "sampled_out", "dropped", "candidate_error",
                "candidate_timeout")


def _rate(n: float, d: float) -> float:
    return n / d if d else 0.0


def _ratio(candidate: float | None, primary: float | None) -> float | None:
    if candidate is None or primary is None or primary <= 0:
        return None
    return candidate / primary


def bucket_for(seconds: float, points: int = SERIES_POINTS) -> int:
    """A whole-minute bucket giving about ``points`` buckets over ``seconds``."""
    raw = max(60.0, seconds / max(1, points))
    for nice in (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
        if raw <= nice:
            return nice
    return math.ceil(raw / 86400.0) * 86400


# ------------------------------------------------------------------ sections


def _endpoint_row(s: EndpointStats, secondary: Sketch | None = None,
                  baselines: dict[str, str] | None = None) -> dict[str, Any]:
    n = s.exchanges
    lat = {}
    sq = secondary.quantiles((0.5, 0.95, 0.99)) if secondary is not None and \
        secondary.count else [None, None, None]
    for q, sv in zip(("p50", "p95", "p99"), sq, strict=True):
        p = getattr(s, f"primary_{q}")
        c = getattr(s, f"candidate_{q}")
        base = (baselines or {}).get(q, PRIMARY)
        ratio, ratio_s = _ratio(c, p), _ratio(c, sv)
        # ratio: candidate / primary; judged: candidate / the baseline the latency
        # checks judge against (the secondary where there is one: docs/checks.md)
        lat[q] = {"primary": p, "candidate": c, "ratio": ratio, "secondary": sv,
                  "ratio_secondary": ratio_s, "baseline": base,
                  "judged_ratio": ratio_s if base == SECONDARY else ratio}
    return {
        "endpoint": s.endpoint,
        "exchanges": n,
        "matches": s.matches,
        "diffs": s.diffs,
        "noise": s.noise,
        "errors": s.errors,
        "diff_rate": s.diff_rate,
        "noise_rate": _rate(s.noise, n),
        "error_rate": _rate(s.errors, n),
        "candidate_5xx": s.candidate_5xx,
        "primary_5xx": s.primary_5xx,
        "candidate_errors": s.candidate_errors,
        "primary_errors": s.primary_errors,
        # 5xx answers or no complete answer, per exchange
        "candidate_error_rate": min(1.0, _rate(s.candidate_5xx + s.candidate_errors, n)),
        "primary_error_rate": min(1.0, _rate(s.primary_5xx + s.primary_errors, n)),
        "latency_samples": s.latency_samples,
        "latency": lat,
        "fields_with_diffs": 0,
    }


def _summary(s: Sketch) -> dict[str, float | None]:
    p50, p90, p95, p99 = s.quantiles((0.50, 0.90, 0.95, 0.99))
    return {"min": s.min(), "p50": p50, "p90": p90, "p95": p95, "p99": p99, "max": s.max(),
            "mean": s.mean()}


LATENCY_QUANTILES = ("p50", "p90", "p95", "p99", "max")
_CHECKED = {"max_p50_ratio": "p50", "max_p99_ratio": "p99"}


def latency_baselines(sketches: dict[str, tuple[Sketch, Sketch, Sketch]],
                      checks: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """endpoint → quantile (``p50``, ``p90``, ``p95``, ``p99``, ``max``) → the baseline
    (``primary`` or ``secondary``) of the ratio the latency checks judge: for p50 and
    p99 the one the configured checks used on that endpoint (``details.baseline`` of
    their units), for the others, and without checks, the checks' default rule (the
    secondary where its sketch has at least half as many latencies as the endpoint's
    pairs)."""
    out: dict[str, dict[str, str]] = {}
    for ep, (ps, _cs, ss) in sketches.items():
        out[ep] = dict.fromkeys(LATENCY_QUANTILES, sketch_baseline(ps.count, ss.count))
    for c in (checks or {}).get("checks") or []:
        for sub in c.get("subchecks") or []:
            q = _CHECKED.get(sub.get("metric"))
            if q is None:
                continue
            for u in sub.get("endpoints") or []:
                b = (u.get("details") or {}).get("baseline")
                if u.get("endpoint") in out and b in (PRIMARY, SECONDARY):
                    out[u["endpoint"]].setdefault("_" + q, b)
    for marks in out.values():
        for q in ("p50", "p99"):
            if "_" + q in marks:
                marks[q] = marks.pop("_" + q)
    return out


def latency_section(primary: Sketch, candidate: Sketch,
                    secondary: Sketch | None = None,
                    baselines: dict[str, str] | None = None) -> dict[str, Any]:
    """Latencies of the exchanges where both answered, from the window's sketches: every
    figure within 1/128 of the exact one (see :mod:`shadowproxy.store.sketch`); and the
    secondary's (of the exchanges it answered; None without one): sent from the same
    process at the same moments as the candidate, it is the like-with-like reference
    for the candidate's latency (docs/architecture.md, "Latency: what is timed").
    ``baseline``: per quantile, the side the latency checks judge the candidate
    against (:func:`latency_baselines`)."""
    return {
        "samples": primary.count,
        "baseline": dict(baselines) if baselines else dict.fromkeys(LATENCY_QUANTILES,
                                                                    PRIMARY),
        "primary": _summary(primary),
        "candidate": _summary(candidate),
        "secondary": _summary(secondary) if secondary is not None and secondary.count
        else None,
        "cdf": {"q": list(CDF_QUANTILES),
                "primary": primary.quantiles([q / 100 for q in CDF_QUANTILES])
                if primary.count else [],
                "candidate": candidate.quantiles([q / 100 for q in CDF_QUANTILES])
                if candidate.count else []},
    }


def _clip(text: Any, limit: int) -> tuple[Any, bool]:
    if isinstance(text, str) and len(text) > limit:
        return text[:limit], True
    return text, False


def _pretty_body(body: Any, encoding: str | None) -> Any:
    """JSON bodies indented (keys kept in order) for a readable side-by-side."""
    if not isinstance(body, str) or encoding not in (None, "utf-8"):
        return body
    s = body.lstrip()
    if not s or s[0] not in "[{":
        return body
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
    except (orjson.JSONDecodeError, TypeError):
        return body


def _message(doc: Any, *, response: bool) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    out: dict[str, Any] = {}
    if response:
        for k in ("status", "reason", "size", "latency", "error", "truncated"):
            if k in doc:
                out[k] = doc[k]
    else:
        for k in ("method", "path", "query"):
            if k in doc:
                out[k] = doc[k]
    if "headers" in doc:
        out["headers"] = [list(h) for h in doc.get("headers") or []]
    if "body" in doc:
        enc = doc.get("body_encoding")
        body, cut = _clip(_pretty_body(doc.get("body"), enc), BODY_MAX)
        out["body"] = body
        out["body_encoding"] = enc
        out["body_truncated"] = bool(doc.get("body_truncated")) or cut
    return out


def _short(value: Any) -> Any:
    """A difference value as JSON-ready data, long text clipped."""
    if isinstance(value, str):
        return _clip(value, VALUE_MAX)[0]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    text = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    if len(text) > VALUE_MAX:
        return text[:VALUE_MAX] + "…"
    return value


def field_example(store: Store, fs: FieldStats, cache: dict[str, Any], *,
                  bodies: bool = True) -> dict[str, Any] | None:
    """The stored (redacted) example exchange of a field, with that field's values;
    without ``bodies`` only the request line and the field's values."""
    xid = fs.example_id
    if not xid:
        return None
    if xid not in cache:
        cache[xid] = store.exchange(xid)
    doc = cache[xid]
    if not doc:
        return None
    diffs = [d for d in doc.get("differences") or [] if d.get("field") == fs.field]
    first = diffs[0] if diffs else {}
    req = doc.get("request") or {}
    return {
        "id": doc.get("id", xid),
        "time": doc.get("time"),
        "sampled": bool(doc.get("sampled")),
        "method": req.get("method"),
        "path": req.get("path"),
        "query": req.get("query"),
        "verdict": doc.get("verdict"),
        "diff_path": first.get("path"),
        "kind": first.get("kind"),
        "a": _short(first.get("a")),
        "b": _short(first.get("b")),
        "occurrences": len(diffs),
        "bodies_omitted": not bodies,
        "request": _message(req, response=False) if bodies else None,
        "primary": _message(doc.get("primary"), response=True) if bodies else None,
        "candidate": _message(doc.get("candidate"), response=True) if bodies else None,
        "secondary": _message(doc.get("secondary"), response=True) if bodies else None,
    }


# ------------------------------------------------------------------ the canary checks


def evaluate_checks(store: Store, cfg: Any, since: float, until: float,
                    now: float | None = None, sketches: dict[str, Any] | None = None
                    ) -> dict[str, Any] | None:
    """The config's canary checks over the same window, as :mod:`shadowproxy.checks`
    reports them (``report_doc``: verdict, exit_code, counts, checks[{name, verdict,
    critical, subchecks[{metric, threshold, verdict, summary, aggregate, endpoints}]}]);
    None when no checks are configured or the checks module is not installed. A failure
    inside the checks is reported in the dict (``verdict: "error"``) rather than
    losing the whole report."""
    if cfg is None or not getattr(cfg, "checks", None):
        return None
    try:
        from ..checks import StoreSource, evaluate, report_doc
    except ImportError:
        return None
    try:
        source = StoreSource(store, since, until)
        if sketches is not None:        # the window's latency sketches, read by the report
            source.use_sketches(sketches)
        rep = evaluate(cfg.checks, source, since=since,
                       until=until, store=getattr(store, "url", None),
                       generated_at=time.time() if now is None else now)
        doc: dict[str, Any] = _jsonable(report_doc(rep))
        return doc
    except Exception as exc:  # noqa: BLE001 - the rest of the report is still worth having
        return {"verdict": "error", "error": f"{type(exc).__name__}: {exc}", "checks": []}


def _jsonable(obj: Any) -> Any:
    """Plain JSON data (NaN and infinities become null)."""
    return orjson.loads(orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS))


def check_status(c: dict[str, Any]) -> str:
    return str(c.get("verdict") or c.get("status") or "")


# ------------------------------------------------------------------ the whole report


def _verdict(checks: dict[str, Any] | None, endpoints: Sequence[dict[str, Any]],
             totals: dict[str, Any]) -> dict[str, Any]:
    if checks is not None and check_status(checks) in ("pass", "fail", "inconclusive"):
        status = check_status(checks)
        failed = [c.get("name") for c in checks.get("checks") or []
                  if check_status(c) == "fail"]
        inconclusive = [c.get("name") for c in checks.get("checks") or []
                        if check_status(c) == "inconclusive"]
        n = len(checks.get("checks") or [])
        if status == "fail":
            head = f"checks failed: {', '.join(map(str, failed)) or 'see below'}"
        elif status == "inconclusive":
            head = (f"checks inconclusive: {', '.join(map(str, inconclusive))}"
                    if inconclusive else "checks inconclusive")
        else:
            head = f"all {n} check{'s' if n != 1 else ''} passed"
        return {"status": status, "headline": head, "source": "checks"}
    if totals["exchanges"] == 0:
        return {"status": "no_data", "headline": "no exchanges were compared in the window",
                "source": "summary"}
    with_diffs = [e["endpoint"] for e in endpoints if e["diffs"]]
    if not with_diffs:
        return {"status": "clean",
                "headline": f"no differences in {totals['exchanges']} exchanges "
                            f"on {len(endpoints)} endpoint{'s' if len(endpoints) != 1 else ''}",
                "source": "summary"}
    shown = ", ".join(with_diffs[:5]) + (f" and {len(with_diffs) - 5} more"
                                         if len(with_diffs) > 5 else "")
    return {"status": "diffs",
            "headline": f"{len(with_diffs)} of {len(endpoints)} endpoints with differences: "
                        f"{shown}",
            "source": "summary"}


def _against_candidate(store: Store, stats: list[EndpointStats], since: float,
                       until: float) -> list[EndpointStats]:
    """The diffs ``check`` counts against the candidate (one definition of the diff
    rate); the stored verdicts when the checks module is not installed."""
    try:
        from ..checks.source import against_candidate
    except ImportError:
        return stats
    return against_candidate(store, stats, since, until)


def build_report(store: Store, *, since: float, until: float, cfg: Any = None,
                 label: str | None = None, top_fields: int = TOP_FIELDS,
                 bucket_seconds: int | None = None, checks: Any = "auto",
                 now: float | None = None) -> dict[str, Any]:
    """The report over ``[since, until)``. ``checks``: "auto" evaluates the config's
    checks when :mod:`shadowproxy.checks` is available, None leaves them out, a dict
    is used as it is."""
    now = time.time() if now is None else now
    # the window's sketches, read once: the endpoints' quantiles and the latency section
    sketches = store.latency_sketches(since, until)   # no secondary: none stored, none read
    none = (None, None, None)
    stats = [with_quantiles(s, *sketches.get(s.endpoint, none)[:2])
             for s in store.endpoint_stats(since, until, quantiles=False)]
    stats = _against_candidate(store, stats, since, until)
    stats.sort(key=lambda s: (-s.diffs, -s.exchanges, s.endpoint))
    if checks == "auto":
        checks = evaluate_checks(store, cfg, since, until, now, sketches)
    # the ratio each latency check judges: against the secondary where there is one
    baselines = latency_baselines(sketches, checks if isinstance(checks, dict) else None)
    endpoints = [_endpoint_row(s, sketches.get(s.endpoint, none)[2],
                               baselines.get(s.endpoint)) for s in stats]
    by_name = {e["endpoint"]: e for e in endpoints}

    # fields: one query for every endpoint, then the top ones per endpoint
    fields: dict[str, list[dict[str, Any]]] = {}
    more: dict[str, int] = {}
    cache: dict[str, Any] = {}
    per_ep: dict[str, list[FieldStats]] = {}
    for fs in store.field_stats(None, since, until):
        if fs.endpoint is not None:
            per_ep.setdefault(fs.endpoint, []).append(fs)
    with_bodies: set[str] = set()
    order = {e["endpoint"]: i for i, e in enumerate(endpoints)}
    for ep, lst in sorted(per_ep.items(), key=lambda kv: (order.get(kv[0], 1 << 30), kv[0])):
        lst.sort(key=lambda f: (f.noise, -f.count, f.field))   # real differences first
        ex = by_name.get(ep, {}).get("exchanges", 0)
        if ep in by_name:
            by_name[ep]["fields_with_diffs"] = len(lst)
        rows = []
        for fs in lst[:top_fields]:
            # bodies for the first EXAMPLES_WITH_BODIES distinct exchanges only, so that a
            # store with hundreds of endpoints still gives a report of a few megabytes
            bodies = fs.example_id in with_bodies or len(with_bodies) < EXAMPLES_WITH_BODIES
            if bodies and fs.example_id:
                with_bodies.add(fs.example_id)
            rows.append({
                "field": fs.field, "count": fs.count, "exchanges": fs.exchanges,
                "share": _rate(fs.exchanges, ex), "kinds": dict(sorted(fs.kinds.items())),
                "noise_count": fs.noise_count, "noise": fs.noise,
                "example": field_example(store, fs, cache, bodies=bodies),
            })
        fields[ep] = rows
        if len(lst) > top_fields:
            more[ep] = len(lst) - top_fields
    fields = dict(sorted(fields.items(), key=lambda kv: (order.get(kv[0], 1 << 30), kv[0])))

    noise = [{"endpoint": r.endpoint, "field": r.field, "n": r.n, "r": r.r, "s": r.s,
              "p_value": r.p_value, "noise": r.noise, "provisional": r.provisional,
              "decided_at": r.decided_at, "updated": r.updated}
             for r in store.noise(include_not_noise=True)]
    noise.sort(key=lambda r: (not r["noise"], r["endpoint"], r["field"]))

    outcomes = {o: dict(sorted(r.items())) for o, r in sorted(store.outcome_counts(since, until)
                                                              .items())}
    outcome_totals = {o: sum(r.values()) for o, r in outcomes.items()}

    bucket = bucket_seconds or bucket_for(until - since)
    series = {ep: [{"t": p.time, "exchanges": p.exchanges, "diffs": p.diffs, "noise": p.noise,
                    "errors": p.errors, "diff_rate": p.diff_rate} for p in pts]
              for ep, pts in sorted(store.diff_rate_series(since, until, bucket).items(),
                                    key=lambda kv: (order.get(kv[0], 1 << 30), kv[0]))}

    latency = {}
    for e in endpoints:
        ps, cs, ss = sketches.get(e["endpoint"], (Sketch(), Sketch(), Sketch()))
        latency[e["endpoint"]] = latency_section(ps, cs, ss, baselines.get(e["endpoint"]))

    n = sum(e["exchanges"] for e in endpoints)
    totals = {
        "exchanges": n,
        "matches": sum(e["matches"] for e in endpoints),
        "diffs": sum(e["diffs"] for e in endpoints),
        "noise": sum(e["noise"] for e in endpoints),
        "errors": sum(e["errors"] for e in endpoints),
        "endpoints": len(endpoints),
        "endpoints_with_diffs": sum(1 for e in endpoints if e["diffs"]),
        # every request the proxy counted (final outcomes) and what got compared
        "requests": sum(v for o, v in outcome_totals.items() if o in FINAL_OUTCOMES),
        "shadowed": n,
        "not_shadowed": sum(v for o, v in outcome_totals.items() if o in NOT_SHADOWED),
    }
    # diffs among compared exchanges (errors are their own rate), as EndpointStats
    totals["diff_rate"] = _rate(totals["diffs"], n - totals["errors"])
    totals["noise_rate"] = _rate(totals["noise"], n)
    totals["error_rate"] = _rate(totals["errors"], n)

    upstreams = getattr(cfg, "upstreams", None)
    secondary = bool(getattr(upstreams, "secondary", None)) if upstreams is not None else \
        any(r["s"] for r in noise)
    trange = store.time_range()
    return {
        "schema": SCHEMA,
        "generated_at": now,
        "window": {"since": since, "until": until, "seconds": until - since, "label": label},
        "store": {"url": getattr(store, "url", None),
                  "data_from": trange[0] if trange else None,
                  "data_to": trange[1] if trange else None},
        "setup": {"candidate": bool(getattr(upstreams, "candidate", True)),
                  "secondary": secondary,
                  "noise_mode": "learned" if secondary else "rules only"},
        "verdict": _verdict(checks, endpoints, totals),
        "checks": checks,
        "totals": totals,
        "endpoints": endpoints,
        "fields": fields,
        "fields_more": more,
        "noise": noise,
        "outcomes": outcomes,
        "outcome_totals": outcome_totals,
        "series": {"bucket_seconds": bucket, "endpoints": series},
        "latency": latency,
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report without bulky parts (bodies, series, CDFs): what a webhook carries."""
    out = {k: v for k, v in report.items() if k not in ("series", "latency", "fields")}
    out["fields"] = {
        ep: [{k: v for k, v in f.items() if k != "example"}
             | ({"example": {k: f["example"].get(k) for k in
                             ("id", "method", "path", "kind", "a", "b")}}
                if f.get("example") else {})
             for f in rows]
        for ep, rows in report.get("fields", {}).items()}
    out["latency"] = {ep: {"samples": v["samples"], "primary": v["primary"],
                           "candidate": v["candidate"], "secondary": v.get("secondary"),
                           "baseline": v.get("baseline")}
                      for ep, v in report.get("latency", {}).items()}
    return out


def dumps(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                        | orjson.OPT_APPEND_NEWLINE, default=str)
