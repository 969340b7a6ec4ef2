"""Check reports as text (people), JSON (machines) and JUnit XML (CI systems)."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from .evaluate import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    CheckResult,
    Report,
    SubCheck,
    UnitResult,
    fmt_threshold,
    fmt_value,
)

TEXT_UNITS = 20         # endpoint lines per sub-check in the text format


_XML_BAD = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _x(text: str) -> str:
    """Text XML 1.0 can carry (control characters and lone surrogates become U+FFFD)."""
    return _XML_BAD.sub("\ufffd", text)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def summary_line(report: Report) -> str:
    c = report.counts()
    n = len(report.checks)
    return (f"shadowproxy check: {report.verdict.upper()} ({c[FAIL]} of {n} checks failed, "
            f"{c[INCONCLUSIVE]} inconclusive, {c[PASS]} passed)")


def _window(report: Report) -> str:
    return (f"window {iso(report.since) or 'beginning'} .. {iso(report.until) or 'now'}, "
            f"endpoints {report.endpoint_filter}")


# ------------------------------------------------------------------ text


def _unit_line(u: UnitResult) -> str:
    return f"{u.verdict.upper():<12} {u.label}: {u.reason}"


def shadow_line(report: Report) -> str | None:
    """``shadow traffic: mirrored 30: compared 0, dropped{candidate_down} 20, …``"""
    if report.shadow is None:
        return None
    sh = dict(report.shadow)
    mirrored = sh.pop("mirrored", 0)
    rest = ", ".join(f"{k} {v:,}" for k, v in sh.items())
    return f"shadow traffic: mirrored {mirrored:,}" + (f": {rest}" if rest else "")


def render_text(report: Report) -> str:
    lines = [f"shadowproxy check: {_window(report)}"]
    shadow = shadow_line(report)
    if shadow:
        lines.append(shadow)
    for c in report.checks:
        crit = " (critical)" if c.critical else ""
        lines.append(f"{c.verdict.upper():<12} {c.name}{crit}  [endpoints {c.endpoints_glob}, "
                     f"min_samples {c.min_samples}, confidence {c.confidence:g}]")
        for s in c.subchecks:
            lines.append(f"    {s.verdict.upper():<12} {_sub_title(s)}")
            lines.append(f"        {_unit_line(s.aggregate)}")
            order = {FAIL: 0, INCONCLUSIVE: 1, PASS: 2}
            eps = sorted(s.endpoints, key=lambda u: (order[u.verdict], u.label))
            lines.extend(f"        {_unit_line(u)}" for u in eps[:TEXT_UNITS])
            if len(eps) > TEXT_UNITS:
                rest = eps[TEXT_UNITS:]
                lines.append(f"        ... {len(rest)} more endpoints "
                             f"({sum(u.verdict == PASS for u in rest)} pass, "
                             f"{sum(u.verdict == INCONCLUSIVE for u in rest)} inconclusive; "
                             "--format json lists all)")
    lines.append(summary_line(report).replace("shadowproxy check: ", "verdict: "))
    return "\n".join(lines) + "\n"


def _sub_title(s: SubCheck) -> str:
    if s.metric == "forbid_kinds":
        return f"forbid_kinds [{fmt_threshold(s.metric, s.threshold)}]"
    return f"{s.metric} < {fmt_threshold(s.metric, s.threshold)}  ({s.method})"


# ------------------------------------------------------------------ JSON


def _unit_doc(u: UnitResult, confidence: float, metric: str) -> dict[str, Any]:
    return {
        "scope": u.scope, "endpoint": u.endpoint, "verdict": u.verdict, "value": u.value,
        "value_text": fmt_value(metric, u.value) if metric != "forbid_kinds" else None,
        "interval": None if u.lo is None else {"lo": u.lo, "hi": u.hi,
                                                "confidence": confidence},
        "samples": u.samples, "reason": u.reason, "details": u.details,
    }


def _check_doc(c: CheckResult) -> dict[str, Any]:
    return {
        "name": c.name, "verdict": c.verdict, "critical": c.critical,
        "endpoints": c.endpoints_glob, "min_samples": c.min_samples,
        "confidence": c.confidence,
        "subchecks": [{
            "metric": s.metric, "threshold": s.threshold, "method": s.method,
            "verdict": s.verdict, "summary": s.summary,
            "aggregate": _unit_doc(s.aggregate, c.confidence, s.metric),
            "endpoints": [_unit_doc(u, c.confidence, s.metric) for u in s.endpoints],
        } for s in c.subchecks],
    }


def report_doc(report: Report) -> dict[str, Any]:
    doc: dict[str, Any] = _finite({
        "verdict": report.verdict, "exit_code": report.exit_code,
        "counts": report.counts(),
        "window": {"since": report.since, "until": report.until,
                   "since_iso": iso(report.since), "until_iso": iso(report.until)},
        "endpoint_filter": report.endpoint_filter, "store": report.store,
        "shadow": report.shadow,
        "generated_at": report.generated_at, "generated_at_iso": iso(report.generated_at),
        "checks": [_check_doc(c) for c in report.checks],
    })
    return doc


def render_json(report: Report) -> str:
    return json.dumps(report_doc(report), indent=2, allow_nan=False) + "\n"


# ------------------------------------------------------------------ JUnit XML


def render_junit(report: Report) -> str:
    """One ``<testsuite>`` per check, one ``<testcase>`` per sub-check and endpoint (the
    aggregate is the endpoint ``all endpoints``): ``<failure>`` for fail, ``<skipped>``
    for inconclusive, nothing for pass."""
    root = ET.Element("testsuites", name="shadowproxy check")
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for c in report.checks:
        suite = ET.SubElement(root, "testsuite", name=_x(c.name))
        props = ET.SubElement(suite, "properties")
        for prop, value in (("verdict", c.verdict), ("critical", str(c.critical).lower()),
                     ("endpoints", c.endpoints_glob), ("min_samples", str(c.min_samples)),
                     ("confidence", f"{c.confidence:g}"),
                     ("window_since", iso(report.since) or ""),
                     ("window_until", iso(report.until) or ""),
                     ("shadow_traffic", shadow_line(report) or "")):
            ET.SubElement(props, "property", name=prop, value=_x(value))
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for s in c.subchecks:
            for u in s.units:
                counts["tests"] += 1
                case = ET.SubElement(suite, "testcase",
                                     classname=_x(f"shadowproxy.check.{c.name}"),
                                     name=_x(f"{s.metric} [{u.label}]"), time="0")
                body = (f"{s.metric} threshold {fmt_threshold(s.metric, s.threshold)} "
                        f"({s.method}); {u.label}: {u.reason}")
                if u.lo is not None:
                    body += (f"\nvalue {fmt_value(s.metric, u.value)}, interval "
                             f"[{fmt_value(s.metric, u.lo)}, {fmt_value(s.metric, u.hi)}] at "
                             f"{c.confidence:g}, samples {u.samples}")
                if u.details:
                    body += "\n" + json.dumps(_finite(u.details), sort_keys=True)
                if u.verdict == FAIL:
                    counts["failures"] += 1
                    el = ET.SubElement(case, "failure", message=_x(u.reason), type=s.metric)
                    el.text = _x(body)
                elif u.verdict == INCONCLUSIVE:
                    counts["skipped"] += 1
                    ET.SubElement(case, "skipped", message=_x(f"inconclusive: {u.reason}"))
                    ET.SubElement(case, "system-out").text = _x(body)
                else:
                    ET.SubElement(case, "system-out").text = _x(body)
        for k, v in counts.items():
            totals[k] += v
            suite.set(k, str(v))
        suite.set("errors", "0")
        suite.set("time", "0")
        if report.generated_at is not None:
            suite.set("timestamp", (iso(report.generated_at) or "").rstrip("Z"))
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("errors", "0")
    root.set("time", "0")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


RENDERERS = {"text": render_text, "json": render_json, "junit": render_junit}
