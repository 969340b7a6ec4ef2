"""The report as one self-contained HTML file: inline CSS, inline SVG charts, no script,
no fonts or images from anywhere. Every value from the store is escaped.

Numbers a test (or a script) may want carry stable attributes::

    <td data-metric="diff_rate" data-endpoint="user" data-value="0.05">5.00%</td>

``data-value`` is the exact number (Python ``repr``; seconds for latencies, fractions
for rates; empty for none), the text is for people. Sections have fixed ids:
``summary``, ``checks``, ``endpoints``, ``diff-rate``, ``latency``, ``fields``,
``noise``, ``outcomes``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from html import escape
from typing import Any

import orjson

PRIMARY_COLOR = "#2563eb"
CANDIDATE_COLOR = "#ea580c"
SECONDARY_COLOR = "#7c3aed"

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--bg:#fff;--panel:#f6f8fa;--line:#d1d9e0;
--bad:#cf222e;--bad-bg:#ffebe9;--ok:#1a7f37;--ok-bg:#dafbe1;--warn:#9a6700;--warn-bg:#fff8c5;
--primary:#2563eb;--candidate:#ea580c}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;
--panel:#151b23;--line:#3d444d;--bad-bg:#3c1618;--ok-bg:#12261e;--warn-bg:#272115}}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:var(--fg);background:var(--bg);margin:0 auto;padding:16px 24px 48px;max-width:1400px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:32px 0 8px;
border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:15px;margin:20px 0 6px}
.muted{color:var(--muted)}code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,
monospace}
pre{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:8px;
margin:4px 0;overflow:auto;max-height:420px;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:6px 0 12px;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:right;
vertical-align:top;white-space:nowrap}
th{background:var(--panel);font-weight:600}
td.l,th.l{text-align:left;white-space:normal;word-break:break-word}
td.ep{min-width:10em;word-break:normal;overflow-wrap:anywhere}
.verdict{border-radius:8px;padding:12px 16px;margin:12px 0;font-size:16px;font-weight:600}
.verdict.fail,.verdict.diffs{background:var(--bad-bg);color:var(--bad)}
.verdict.pass,.verdict.clean{background:var(--ok-bg);color:var(--ok)}
.verdict.inconclusive,.verdict.no_data{background:var(--warn-bg);color:var(--warn)}
.tiles{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.tile{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:6px 12px}
.tile b{display:block;font-size:18px}
.bad{color:var(--bad);font-weight:600}.judged{font-weight:600}.ok{color:var(--ok)}.warn{color:var(--warn)}
.badge{display:inline-block;border-radius:10px;padding:0 7px;font-size:11px;
background:var(--panel);border:1px solid var(--line);color:var(--muted);font-weight:500}
.badge.noise{color:var(--warn);border-color:var(--warn)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.card h3{margin:0 0 4px;font-size:14px}
.side{display:grid;grid-template-columns:1fr 1fr;gap:8px}
.side.three{grid-template-columns:1fr 1fr 1fr}
.side h5{margin:4px 0 0;font-size:12px}
table.checks td:nth-child(-n+3),table.checks th{white-space:nowrap;word-break:normal}
table.checks td:last-child{width:100%}
table.fields td.val{width:30%;max-width:30vw}
table.fields td.k{text-align:left}
table.fields tr.field td:first-child{min-width:12em}
table.fields td.val pre{max-height:140px;margin:0}
table.fields tr.example td{border-bottom:2px solid var(--line);padding-top:0}
h2 code,h3 code{font-size:inherit}
details summary{cursor:pointer;color:var(--muted);margin:4px 0}
svg{display:block;width:100%;height:auto}
svg text{font:10px system-ui,sans-serif;fill:var(--muted)}
svg .axis{stroke:var(--line);stroke-width:1}
svg .grid{stroke:var(--line);stroke-width:.5;stroke-dasharray:2 3}
.key{display:inline-block;width:12px;height:3px;vertical-align:middle;margin:0 4px 0 10px}
nav a{margin-right:12px;color:var(--muted)}
"""


# ------------------------------------------------------------------ formatting


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def fmt_int(n: Any) -> str:
    return "–" if n is None else f"{int(n):,}"


def fmt_pct(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    if 0 < x < 10 ** -(digits + 2):
        return f"<{10 ** -digits:.{digits}f}%"
    return f"{x * 100:.{digits}f}%"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1000.0
    if ms >= 10000:
        return f"{seconds:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"×{r:.2f}"


def fmt_time(t: float | None, seconds: bool = False) -> str:
    if t is None:
        return "–"
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return datetime.fromtimestamp(t, UTC).strftime(fmt) + " UTC"


def fmt_duration(seconds: float) -> str:
    s = round(seconds)
    if s % 86400 == 0 and s:
        return f"{s // 86400}d"
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    return f"{s}s"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    if p == 0:
        return "0"
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def json_text(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_INDENT_2,
                            default=str).decode()
    except TypeError:
        return repr(value)


def dv(value: Any) -> str:
    """A data-value attribute's text: exact (repr) for floats, empty for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def cell(metric: str, endpoint: str | None, value: Any, text: str, cls: str = "",
         **attrs: Any) -> str:
    a = f' data-metric="{e(metric)}"'
    if endpoint is not None:
        a += f' data-endpoint="{e(endpoint)}"'
    a += f' data-value="{e(dv(value))}"'
    for k, v in attrs.items():
        a += f' data-{k.replace("_", "-")}="{e(v)}"'
    if cls:
        a += f' class="{cls}"'
    return f"<td{a}>{text}</td>"


# ------------------------------------------------------------------ charts


def _svg_open(width: int, height: int, title: str) -> str:
    return (f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{e(title)}"><title>{e(title)}</title>')


def _nice_max(x: float) -> float:
    if x <= 0:
        return 0.01
    exp: float = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if x <= m * exp:
            return m * exp
    return 10 * exp  # pragma: no cover


def svg_diff_rate(points: list[dict[str, Any]], since: float, until: float, bucket: int,
                  title: str, width: int = 360, height: int = 130) -> str:
    """Diff rate (line) and noise rate (dashed) per bucket; gaps where nothing came."""
    left, right, top, bottom = 40, 8, 8, 22
    w, h = width - left - right, height - top - bottom
    span = max(until - since, 1.0)
    peak = max([p["diff_rate"] for p in points] +
               [(p["noise"] / p["exchanges"]) if p["exchanges"] else 0 for p in points] + [0])
    ymax = _nice_max(peak)

    def x(t: float) -> float:
        return left + max(0.0, min(1.0, (t + bucket / 2 - since) / span)) * w

    def y(v: float) -> float:
        return top + h - (v / ymax) * h

    parts = [_svg_open(width, height, title)]
    for frac in (0, 0.5, 1):
        yy = y(ymax * frac)
        parts.append(f'<line class="{"axis" if frac == 0 else "grid"}" x1="{left}" '
                     f'x2="{left + w}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        parts.append(f'<text x="{left - 4}" y="{yy + 3:.1f}" text-anchor="end">'
                     f'{e(fmt_pct(ymax * frac, 1 if ymax * frac >= 0.01 else 2))}</text>')
    for frac, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        t = since + span * frac
        label = datetime.fromtimestamp(t, UTC).strftime(
            "%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M")
        parts.append(f'<text x="{left + w * frac:.1f}" y="{height - 6}" '
                     f'text-anchor="{anchor}">{e(label)}</text>')

    def runs(values: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
        out: list[list[tuple[float, float]]] = []
        prev = None
        for t, v in values:
            if prev is None or t - prev > bucket * 1.5:
                out.append([])
            out[-1].append((t, v))
            prev = t
        return out

    diff_pts = [(p["t"], p["diff_rate"]) for p in points if p["exchanges"]]
    noise_pts = [(p["t"], p["noise"] / p["exchanges"]) for p in points if p["exchanges"]]
    for series, color, extra in ((noise_pts, "#9a6700", ' stroke-dasharray="3 2"'),
                                 (diff_pts, "#cf222e", "")):
        for run in runs(series):
            if len(run) == 1:
                t, v = run[0]
                parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" fill="{color}"/>')
                continue
            pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{extra} '
                         f'points="{pts}"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_cdf(cdf: dict[str, Any], title: str, width: int = 360, height: int = 170) -> str:
    """Latency CDFs, primary vs candidate, on a log time axis."""
    left, right, top, bottom = 34, 16, 8, 22
    w, h = width - left - right, height - top - bottom
    qs = cdf.get("q") or []
    series = [(cdf.get("primary") or [], PRIMARY_COLOR), (cdf.get("candidate") or [],
                                                          CANDIDATE_COLOR)]
    values = [v for s, _ in series for v in s if v is not None and v > 0]
    parts = [_svg_open(width, height, title)]
    if not values:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">'
                     'no latency pairs</text></svg>')
        return "".join(parts)
    lo_ms, hi_ms = min(values) * 1000, max(values) * 1000
    lo = math.floor(math.log10(lo_ms))
    hi = math.ceil(math.log10(hi_ms))
    if hi <= lo:
        hi = lo + 1

    def x(sec: float) -> float:
        ms = max(sec * 1000, 10 ** lo)
        return left + (math.log10(ms) - lo) / (hi - lo) * w

    def y(q: float) -> float:
        return top + h - q / 100 * h

    for q, label in ((0, "0"), (50, "p50"), (90, "p90"), (99, ""), (100, "max")):
        parts.append(f'<line class="{"axis" if q == 0 else "grid"}" x1="{left}" x2="{left + w}" '
                     f'y1="{y(q):.1f}" y2="{y(q):.1f}"/>')
        if label:
            parts.append(f'<text x="{left - 4}" y="{y(q) + 3:.1f}" text-anchor="end">'
                         f'{label}</text>')
    for k in range(lo, hi + 1):
        xx = left + (k - lo) / (hi - lo) * w
        ms = 10 ** k
        label = f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"
        anchor = "start" if k == lo else "end" if k == hi else "middle"
        parts.append(f'<line class="grid" x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" '
                     f'y2="{top + h}"/>')
        parts.append(f'<text x="{xx:.1f}" y="{height - 6}" text-anchor="{anchor}">{e(label)}'
                     '</text>')
    for vals, color in series:
        pts = [(v, q) for v, q in zip(vals, qs, strict=False) if v is not None]
        if not pts:
            continue
        # a step-ish line through the quantiles
        path = " ".join(f"{x(v):.1f},{y(q):.1f}" for v, q in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" '
                     f'points="{path}"/>')
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------ sections


def _header(r: dict[str, Any]) -> str:
    w = r["window"]
    label = w.get("label") or fmt_duration(w["seconds"])
    st = r.get("store") or {}
    return (
        f'<header><h1>shadowproxy report</h1>'
        f'<p class="muted" id="window" data-since="{e(dv(w["since"]))}" '
        f'data-until="{e(dv(w["until"]))}">Window: <b>{e(fmt_time(w["since"]))}</b> → '
        f'<b>{e(fmt_time(w["until"]))}</b> (last {e(label)}) · generated '
        f'{e(fmt_time(r["generated_at"], True))} · store {e(st.get("url"))}'
        + (f' (data from {e(fmt_time(st.get("data_from")))} to '
           f'{e(fmt_time(st.get("data_to")))})' if st.get("data_from") else "")
        + "</p>"
        '<nav><a href="#summary">summary</a><a href="#endpoints">endpoints</a>'
        '<a href="#diff-rate">diff rate</a><a href="#latency">latency</a>'
        '<a href="#fields">fields</a><a href="#noise">noise</a>'
        '<a href="#outcomes">not shadowed</a></nav></header>')


def _summary(r: dict[str, Any]) -> str:
    v = r["verdict"]
    t = r["totals"]
    status = v["status"]
    icon = {"pass": "✔", "clean": "✔", "fail": "✘", "diffs": "✘"}.get(status, "⚠")
    tiles = [
        ("total_exchanges", t["exchanges"], fmt_int(t["exchanges"]), "exchanges compared"),
        ("total_diff_rate", t["diff_rate"], fmt_pct(t["diff_rate"]), "diff rate"),
        ("total_noise_rate", t["noise_rate"], fmt_pct(t["noise_rate"]), "noise only"),
        ("total_error_rate", t["error_rate"], fmt_pct(t["error_rate"]), "errors"),
        ("endpoints_with_diffs", t["endpoints_with_diffs"],
         f'{fmt_int(t["endpoints_with_diffs"])} / {fmt_int(t["endpoints"])}',
         "endpoints with diffs"),
        ("total_requests", t["requests"], fmt_int(t["requests"]), "requests seen"),
        ("total_not_shadowed", t["not_shadowed"], fmt_int(t["not_shadowed"]),
         "not compared"),
    ]
    tiles_html = "".join(
        f'<div class="tile" data-metric="{m}" data-value="{e(dv(val))}"><b>{e(text)}</b>'
        f'<span class="muted">{e(label)}</span></div>' for m, val, text, label in tiles)
    setup = r["setup"]
    if setup.get("secondary"):
        noise_note = ('<p id="noise-mode" data-noise-mode="learned">Noise: <b>learned</b> '
                      'from a secondary (a second copy of production) in addition to the '
                      'comparison rules.</p>')
    else:
        noise_note = ('<p id="noise-mode" data-noise-mode="rules only" class="warn">'
                      '<b>Noise: rules only</b> — no secondary was configured, so '
                      'differences production has with itself (timestamps, ids, ordering) '
                      'are only removed by the comparison rules; some reported '
                      'differences may be noise.</p>')
    return (f'<section id="summary"><div class="verdict {e(status)}" id="verdict" '
            f'data-status="{e(status)}" data-source="{e(v["source"])}">{icon} '
            f'{e(v["headline"])}</div><div class="tiles">{tiles_html}</div>{noise_note}'
            '</section>')


def fmt_threshold(metric: str, t: Any) -> str:
    if isinstance(t, (list, tuple)):
        return ", ".join(map(str, t))
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        if metric in ("max_diff_rate", "max_error_rate_increase"):
            return fmt_pct(float(t))
        if metric.endswith("_ratio"):
            return fmt_ratio(float(t))
    return str(t)


def _status_cls(st: str) -> str:
    return {"pass": "ok", "fail": "bad", "inconclusive": "warn", "error": "bad"}.get(st, "")


UNITS_SHOWN = 10     # endpoint lines per sub-check (failing and inconclusive first)


def _checks(r: dict[str, Any]) -> str:
    from .data import check_status

    c = r.get("checks")
    if not c:
        return ('<section id="checks"><h2>Checks</h2><p class="muted" data-checks="none">'
                'No canary checks were evaluated (none configured, or the checks module is '
                'not available); the verdict above summarises the differences.</p></section>')
    st = check_status(c)
    if st == "error":
        return (f'<section id="checks" data-status="error"><h2>Checks</h2><p class="bad">The '
                f'checks could not be evaluated: {e(c.get("error"))}</p></section>')
    rows = []
    order = {"fail": 0, "inconclusive": 1, "pass": 2}
    for chk in c.get("checks") or []:
        cst = check_status(chk)
        crit = ' <span class="badge">critical</span>' if chk.get("critical") else ""
        scope = ", ".join(f"{k} {chk[k]}" for k in ("endpoints", "min_samples", "confidence")
                          if chk.get(k) is not None)
        rows.append(f'<tr data-check="{e(chk.get("name"))}" data-status="{e(cst)}">'
                    f'<td class="l"><b>{e(chk.get("name"))}</b>{crit}</td><td class="l"></td>'
                    f'<td class="l {_status_cls(cst)}">{e(cst)}</td>'
                    f'<td class="l muted">{e(scope)}</td></tr>')
        for sub in chk.get("subchecks") or []:
            sst = check_status(sub)
            metric = str(sub.get("metric", ""))
            units = sorted((u for u in sub.get("endpoints") or [] if isinstance(u, dict)),
                           key=lambda u: (order.get(check_status(u), 3),
                                          str(u.get("endpoint"))))
            shown = [u for u in units if check_status(u) != "pass"][:UNITS_SHOWN]
            unit_html = "".join(
                f'<div><span class="{_status_cls(check_status(u))}">{e(check_status(u))}'
                f'</span> <code>{e(u.get("endpoint"))}</code>: {e(u.get("reason"))}</div>'
                for u in shown)
            more = len([u for u in units if check_status(u) != "pass"]) - len(shown)
            if more > 0:
                unit_html += f'<div class="muted">… {more} more</div>'
            rows.append(
                f'<tr data-subcheck="{e(metric)}" data-parent="{e(chk.get("name"))}" '
                f'data-status="{e(sst)}"><td class="l"></td>'
                f'<td class="l"><code title="{e(sub.get("method"))}">{e(metric)}</code> '
                f'{e(fmt_threshold(metric, sub.get("threshold")))}</td>'
                f'<td class="l {_status_cls(sst)}">{e(sst)}</td>'
                f'<td class="l">{e(sub.get("summary"))}{unit_html}</td></tr>')
    counts = c.get("counts") or {}
    head = (f'{fmt_int(counts.get("fail", 0))} failed, '
            f'{fmt_int(counts.get("inconclusive", 0))} inconclusive, '
            f'{fmt_int(counts.get("pass", 0))} passed' if counts else "")
    return (f'<section id="checks" data-status="{e(st)}"><h2>Checks: '
            f'<span class="{_status_cls(st)}">{e(st)}</span></h2>'
            + (f'<p class="muted">{e(head)}; each threshold is decided on a statistical '
               'interval over the same window (see docs/checks.md).</p>' if head else "")
            + '<table class="checks"><thead><tr><th class="l">check</th>'
            '<th class="l">threshold</th><th class="l">verdict</th><th class="l">why</th>'
            '</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def _endpoints(r: dict[str, Any]) -> str:
    eps = r["endpoints"]
    if not eps:
        return ('<section id="endpoints"><h2>Endpoints</h2><p class="muted">No exchanges '
                'in the window.</p></section>')
    head = ('<tr><th class="l" rowspan="2">endpoint</th><th rowspan="2">exchanges</th>'
            '<th rowspan="2">diff rate</th><th rowspan="2">noise rate</th>'
            '<th rowspan="2">errors</th>'
            '<th colspan="2">5xx / failed</th><th colspan="3">p50</th>'
            '<th colspan="3">p95</th><th colspan="3">p99</th></tr><tr>'
            '<th>primary</th><th>candidate</th>'
            + "<th>primary</th><th>candidate</th><th>ratio</th>" * 3 + "</tr>")
    rows = []
    for ep in eps:
        name = ep["endpoint"]
        label = f"<code>{e(name)}</code>"
        if name in r["fields"]:
            label = f'<a href="#ep-{_slug(r, name)}">{label}</a>'
        row = [f'<td class="l ep">{label}</td>',
               cell("exchanges", name, ep["exchanges"], fmt_int(ep["exchanges"])),
               cell("diff_rate", name, ep["diff_rate"], fmt_pct(ep["diff_rate"]),
                    "bad" if ep["diffs"] else ""),
               cell("noise_rate", name, ep["noise_rate"], fmt_pct(ep["noise_rate"])),
               cell("error_rate", name, ep["error_rate"], fmt_pct(ep["error_rate"])),
               cell("primary_error_rate", name, ep["primary_error_rate"],
                    fmt_pct(ep["primary_error_rate"])),
               cell("candidate_error_rate", name, ep["candidate_error_rate"],
                    fmt_pct(ep["candidate_error_rate"]),
                    "bad" if ep["candidate_error_rate"] > ep["primary_error_rate"] else "")]
        for q in ("p50", "p95", "p99"):
            lat = ep["latency"][q]
            # the ratio the latency checks judge: against the secondary where there is one
            base = lat.get("baseline", "primary")
            ratio = lat.get("judged_ratio", lat["ratio"])
            row.append(cell(f"{q}_primary", name, lat["primary"], fmt_ms(lat["primary"])))
            row.append(cell(f"{q}_candidate", name, lat["candidate"], fmt_ms(lat["candidate"])))
            row.append(cell(f"{q}_ratio", name, ratio,
                            fmt_ratio(ratio) + (" <small>÷ sec</small>"
                                                if base == "secondary" else ""),
                            "bad" if ratio is not None and ratio > 1.2 else
                            ("ok" if ratio is not None and ratio < 0.9 else ""),
                            baseline=base))
        rows.append(f'<tr data-endpoint="{e(name)}">{"".join(row)}</tr>')
    return ('<section id="endpoints"><h2>Endpoints</h2><p class="muted">Diff rate: exchanges '
            'with a difference that is not noise; noise rate: exchanges whose only differences '
            'were noise; errors: exchanges that could not be compared. 5xx / failed: '
            'responses with a 5xx status or no complete response. Latencies over the '
            'exchanges where both answered; ratio = candidate ÷ the baseline the latency '
            'checks judge against: the secondary where it answered (marked ÷ sec; sent '
            'from the same process at the same moments as the candidate), else '
            'primary.</p>'
            f'<table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></section>')


def _slug(r: dict[str, Any], name: str) -> int:
    index: dict[str, int] = r.setdefault("_slugs", {})
    if name not in index:
        index[name] = len(index)
    return index[name]


def _diff_rate(r: dict[str, Any]) -> str:
    s = r["series"]
    w = r["window"]
    eps = s["endpoints"]
    if not eps:
        return ('<section id="diff-rate"><h2>Diff rate over time</h2><p class="muted">'
                'No data.</p></section>')
    cards = []
    for name, pts in eps.items():
        n = sum(p["exchanges"] for p in pts)
        d = sum(p["diffs"] for p in pts)
        svg = svg_diff_rate(pts, w["since"], w["until"], s["bucket_seconds"],
                            f"diff rate of {name}")
        cards.append(
            f'<div class="card" data-chart="diff_rate" data-endpoint="{e(name)}" '
            f'data-points="{len(pts)}"><h3><code>{e(name)}</code> '
            f'<span class="muted">{e(fmt_pct(d / n if n else 0))} of {e(fmt_int(n))}</span>'
            f'</h3>{svg}'
            '</div>')
    return ('<section id="diff-rate"><h2>Diff rate over time</h2><p class="muted">'
            f'Per {e(fmt_duration(s["bucket_seconds"]))} bucket: '
            '<span class="key" style="background:#cf222e"></span>diff rate'
            '<span class="key" style="background:#9a6700"></span>noise-only rate '
            '(gaps: no exchanges).</p>'
            f'<div class="grid">{"".join(cards)}</div></section>')


def _latency(r: dict[str, Any]) -> str:
    lat = r["latency"]
    if not lat:
        return ('<section id="latency"><h2>Latency</h2><p class="muted">No data.</p>'
                '</section>')
    cards = []
    for name, v in lat.items():
        rows = []
        sec = v.get("secondary")
        judged = v.get("baseline") or {}
        for q in ("p50", "p90", "p95", "p99", "max"):
            p, c = v["primary"][q], v["candidate"][q]
            ratio = (c / p) if (p and c is not None) else None
            on_sec = sec is not None and judged.get(q) == "secondary"
            row = (f'<tr><th>{q}</th>'
                   + cell(f"latency_{q}_primary", name, p, fmt_ms(p))
                   + cell(f"latency_{q}_candidate", name, c, fmt_ms(c))
                   + _judged(cell(f"latency_{q}_ratio", name, ratio, fmt_ratio(ratio),
                                  "judged" if not on_sec else "",
                                  judged="no" if on_sec else "yes"), not on_sec))
            if sec is not None:
                s2 = sec[q]
                r2 = (c / s2) if (s2 and c is not None) else None
                row += (cell(f"latency_{q}_secondary", name, s2, fmt_ms(s2))
                        + _judged(cell(f"latency_{q}_ratio_secondary", name, r2,
                                       fmt_ratio(r2), "judged" if on_sec else "",
                                       judged="yes" if on_sec else "no"), on_sec))
            rows.append(row + "</tr>")
        head = "<th></th><th>primary</th><th>candidate</th><th>ratio</th>"
        if sec is not None:
            head += ('<th title="sent from the same process at the same moments as the '
                     'candidate: the like-with-like reference">secondary</th>'
                     "<th>candidate ÷ secondary</th>")
        cards.append(
            f'<div class="card" data-chart="latency" data-endpoint="{e(name)}">'
            f'<h3><code>{e(name)}</code> <span class="muted">'
            f'{e(fmt_int(v["samples"]))} pairs</span></h3>'
            f'{svg_cdf(v["cdf"], f"latency CDF of {name}")}'
            f'<table><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></div>')
    return ('<section id="latency"><h2>Latency: primary vs candidate</h2>'
            '<p class="muted">Cumulative distribution (log time axis) over the exchanges where '
            f'both answered: <span class="key" style="background:{PRIMARY_COLOR}"></span>'
            f'primary<span class="key" style="background:{CANDIDATE_COLOR}"></span>candidate'
            '. ◆ marks the ratio the latency checks judge: candidate ÷ secondary where the '
            'secondary answered, else candidate ÷ primary (docs/checks.md).'
            f'</p><div class="grid">{"".join(cards)}</div></section>')


def _judged(td: str, mark: bool) -> str:
    """A ratio's cell, marked ◆ when it is the one the latency checks judge."""
    return td.replace(">", ">◆ ", 1) if mark else td


def _value(v: Any, kind: str | None, side: str) -> str:
    if v is None:
        absent = (kind == "added" and side == "primary") or (kind == "removed" and
                                                             side == "candidate")
        return f'<pre class="muted">{"(absent)" if absent else "null"}</pre>'
    return f"<pre>{e(json_text(v))}</pre>"


def _headers_text(headers: Any) -> str:
    if not headers:
        return ""
    return "\n".join(f"{h[0]}: {h[1]}" for h in headers if isinstance(h, (list, tuple))
                     and len(h) == 2)


def _message_block(title: str, m: dict[str, Any] | None, request: bool = False) -> str:
    if not m:
        return f'<div><h5>{e(title)}</h5><pre class="muted">(none)</pre></div>'
    if request:
        line = f'{m.get("method", "")} {m.get("path", "")}' + (
            f'?{m["query"]}' if m.get("query") else "")
    else:
        line = f'{m.get("status", "")} {m.get("reason") or ""}'.strip()
        if m.get("error"):
            line += f' (error: {m["error"]})'
        if m.get("latency") is not None:
            line += f' · {fmt_ms(m["latency"])}'
        if m.get("size") is not None:
            line += f' · {m["size"]} bytes'
    body = m.get("body")
    enc = m.get("body_encoding")
    note = []
    if m.get("body_truncated"):
        note.append("body truncated")
    if enc == "base64":
        note.append("base64")
    hdrs = _headers_text(m.get("headers"))
    return (f'<div><h5>{e(title)}</h5><pre>{e(line)}'
            + (f"\n{e(hdrs)}" if hdrs else "") + "</pre>"
            + (f'<pre>{e(body)}</pre>' if body else
               "" if request else '<pre class="muted">(empty body)</pre>')
            + (f'<div class="muted">{e(", ".join(note))}</div>' if note else "") + "</div>")


def _plural(n: int, word: str) -> str:
    return f"{fmt_int(n)} {word}{'' if n == 1 else 's'}"


FIELD_COLUMNS = 7


def _field_rows(r: dict[str, Any], name: str, f: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} ×{n}" for k, n in f["kinds"].items())
    badge = ' <span class="badge noise">noise</span>' if f["noise"] else ""
    ex = f.get("example") or None
    if ex:
        a = _value(ex.get("a"), ex.get("kind"), "primary")
        b = _value(ex.get("b"), ex.get("kind"), "candidate")
    else:
        a = b = '<span class="muted">no stored example</span>'
    noise_note = (f'<div class="muted">{_plural(f["noise_count"], "row")} judged noise '
                  "when seen</div>" if f["noise_count"] else "")
    row = (f'<tr class="field" data-endpoint="{e(name)}" data-field="{e(f["field"])}">'
           f'<td class="l"><code>{e(f["field"])}</code>{badge}{noise_note}</td>'
           f'<td class="k">{e(kinds)}</td>'
           + cell("field_count", name, f["count"], fmt_int(f["count"]), field=f["field"])
           + cell("field_exchanges", name, f["exchanges"], fmt_int(f["exchanges"]),
                  field=f["field"])
           + cell("field_share", name, f["share"], fmt_pct(f["share"]), field=f["field"])
           + f'<td class="l val">{a}</td><td class="l val">{b}</td></tr>')
    if not ex:
        return row
    where = f'{ex.get("method") or ""} {ex.get("path") or ""}' + (
        f'?{ex["query"]}' if ex.get("query") else "")
    at = ex.get("diff_path") or f["field"]
    summary = (f'example <code>{e(where)}</code> · <code>{e(at)}</code>'
               + (f' ({ex["occurrences"]}× in this exchange)'
                  if (ex.get("occurrences") or 0) > 1 else "")
               + f' · {e(fmt_time(ex.get("time"), True))} · verdict {e(ex.get("verdict"))}')
    xid = str(ex.get("id"))
    seen = r.setdefault("_examples", {})
    if xid in seen:
        inner = (f'<div class="muted">{summary} — whole exchange shown with '
                 f'<a href="#x-{seen[xid]}">the example above</a></div>')
    elif ex.get("bodies_omitted"):
        inner = (f'<div class="muted">{summary} (bodies left out of this report to keep it '
                 f'small; exchange <code>{e(xid)}</code>)</div>')
    elif ex.get("sampled") and ex.get("primary") and "body" in ex["primary"]:
        seen[xid] = len(seen)
        blocks = [_message_block("primary", ex.get("primary")),
                  _message_block("candidate", ex.get("candidate"))]
        if ex.get("secondary"):
            blocks.append(_message_block("secondary", ex.get("secondary")))
        three = " three" if len(blocks) == 3 else ""
        inner = (f'<details id="x-{seen[xid]}"><summary>{summary} — whole exchange '
                 f'<code>{e(xid)}</code></summary>'
                 f'{_message_block("request", ex.get("request"), True)}'
                 f'<div class="side{three}">{"".join(blocks)}</div></details>')
    else:
        inner = f'<div class="muted">{summary} (the whole exchange was not sampled)</div>'
    return row + f'<tr class="example"><td class="l" colspan="{FIELD_COLUMNS}">{inner}</td></tr>'


def _fields(r: dict[str, Any]) -> str:
    if not r["fields"]:
        return ('<section id="fields"><h2>Top differing fields</h2><p class="muted">No '
                'differences in the window.</p></section>')
    intro = ('<section id="fields"><h2>Top differing fields</h2><p class="muted">'
             'Field paths are JSONPath (array indexes folded to [*]), header.NAME or status; '
             'share: of the endpoint\'s exchanges. Values come from stored samples, which '
             'were redacted before they were stored; open an example for the whole '
             'exchange.</p>')
    parts = [intro]
    head = ('<thead><tr><th class="l">field</th><th class="l">kinds</th><th>differences</th>'
            '<th>exchanges</th><th>share</th><th class="l">primary</th>'
            '<th class="l">candidate</th></tr></thead>')
    for name, rows in r["fields"].items():
        more = r.get("fields_more", {}).get(name, 0)
        parts.append(f'<h3 id="ep-{_slug(r, name)}"><code>{e(name)}</code></h3>'
                     f'<table class="fields">{head}<tbody>')
        parts.extend(_field_rows(r, name, f) for f in rows)
        parts.append("</tbody></table>")
        if more:
            parts.append(f'<p class="muted">… and {_plural(more, "more field")}.</p>')
    parts.append("</section>")
    return "".join(parts)


def _noise(r: dict[str, Any]) -> str:
    rows = r["noise"]
    intro = ('<p class="muted">For every field the learner compares how often the candidate '
             'differs from primary (R of N exchanges with a secondary answer) with how often '
             'production differs from itself (S of N). A field is noise unless the candidate '
             'differs significantly more often (one-sided test, p-value).</p>')
    if not r["setup"].get("secondary"):
        intro += ('<p class="warn">No secondary is configured: noise comes from the rules '
                  'only.</p>')
    if not rows:
        return (f'<section id="noise"><h2>Learned noise</h2>{intro}<p class="muted">'
                'No evidence stored.</p></section>')

    def table(sel: list[dict[str, Any]]) -> str:
        body = []
        for x in sel:
            ep, fld = x["endpoint"], x["field"]
            attrs = {"field": fld}
            body.append(
                f'<tr data-endpoint="{e(ep)}" data-field="{e(fld)}">'
                f'<td class="l"><code>{e(ep)}</code></td><td class="l"><code>{e(fld)}</code>'
                + (' <span class="badge">provisional</span>' if x["provisional"] else "")
                + "</td>"
                + cell("noise_n", ep, x["n"], fmt_int(x["n"]), **attrs)
                + cell("noise_r", ep, x["r"], fmt_int(x["r"]), **attrs)
                + cell("noise_s", ep, x["s"], fmt_int(x["s"]), **attrs)
                + cell("noise_p", ep, x["p_value"], fmt_p(x["p_value"]), **attrs)
                + f'<td class="l">{"noise" if x["noise"] else "real difference"}</td>'
                + f'<td>{e(fmt_time(x["decided_at"]))}</td></tr>')
        return ('<table><thead><tr><th class="l">endpoint</th><th class="l">field</th>'
                '<th>N</th><th>R (cand≠prim)</th><th>S (sec≠prim)</th><th>p-value</th>'
                '<th class="l">decision</th><th>since</th></tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table>')

    yes = [x for x in rows if x["noise"]]
    no = [x for x in rows if not x["noise"]]
    out = f'<section id="noise"><h2>Learned noise</h2>{intro}'
    out += table(yes) if yes else '<p class="muted">No field is currently judged noise.</p>'
    if no:
        out += (f'<details><summary>{len(no)} field{"s" if len(no) != 1 else ""} judged real '
                f'differences (evidence)</summary>{table(no)}</details>')
    return out + "</section>"


OUTCOME_HELP = {
    "compared": "mirrored and compared",
    "sampled_out": "not picked by the sampling rate",
    "not_eligible": "not safe or not configured to mirror",
    "dropped": "would have been mirrored but was dropped",
    "candidate_error": "the candidate gave no usable answer",
    "candidate_timeout": "the candidate did not answer in time",
    "mirrored": "accepted by the mirror queue (counted on the way; ends in another outcome)",
}


def _outcomes(r: dict[str, Any]) -> str:
    oc = r["outcomes"]
    if not oc:
        return ('<section id="outcomes"><h2>What was not shadowed, and why</h2>'
                '<p class="muted">No outcome counts in the window.</p></section>')
    total = r["totals"]["requests"] or 0
    rows = []
    order = ["compared", "sampled_out", "not_eligible", "dropped", "candidate_error",
             "candidate_timeout"]
    names = sorted(oc, key=lambda o: (order.index(o) if o in order else len(order), o))
    for o in names:
        for reason, n in sorted(oc[o].items(), key=lambda kv: (-kv[1], kv[0])):
            share = n / total if total and o != "mirrored" else None
            cls = "bad" if o in ("dropped", "candidate_error", "candidate_timeout") else ""
            rows.append(
                f'<tr data-outcome="{e(o)}" data-reason="{e(reason)}">'
                f'<td class="l"><code>{e(o)}</code></td><td class="l">{e(reason or "—")}</td>'
                + cell("outcome_count", None, n, fmt_int(n), cls, outcome=o, reason=reason)
                + f'<td>{e(fmt_pct(share)) if share is not None else ""}</td>'
                f'<td class="l muted">{e(OUTCOME_HELP.get(o, ""))}</td></tr>')
    return ('<section id="outcomes"><h2>What was not shadowed, and why</h2>'
            f'<p class="muted">Every request the proxy saw ends in one outcome '
            f'({e(fmt_int(total))} in the window, counted per minute).</p>'
            '<table><thead><tr><th class="l">outcome</th><th class="l">reason</th>'
            '<th>requests</th><th>share</th><th class="l"></th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def render_html(report: dict[str, Any]) -> str:
    r = dict(report)   # _slug keeps its index in the copy
    title = f'shadowproxy report — {r["verdict"]["headline"]}'
    body = "".join((_header(r), _summary(r), _checks(r), _endpoints(r), _diff_rate(r),
                    _latency(r), _fields(r), _noise(r), _outcomes(r)))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="generator" content="shadowproxy report {e(r["schema"])}">'
            f'<title>{e(title)}</title><style>{CSS}</style></head><body>{body}'
            f'<footer class="muted"><p>{e(r["schema"])} · generated '
            f'{e(fmt_time(r["generated_at"], True))}</p></footer></body></html>\n')
