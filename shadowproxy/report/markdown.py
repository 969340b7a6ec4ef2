"""The report as compact Markdown for a pull-request comment or a chat message:
verdict, window and totals, one table row per endpoint, the top differing fields,
the checks and what was not compared. About 30-60 lines whatever the store holds
(long lists are cut with a "… and N more" line)."""

from __future__ import annotations

from typing import Any

import orjson

from .data import check_status
from .html import fmt_duration, fmt_int, fmt_ms, fmt_pct, fmt_ratio, fmt_time

MAX_ENDPOINTS = 15       # table rows
MAX_FIELD_LINES = 15     # field lines in all
FIELDS_PER_ENDPOINT = 3
VALUE_CHARS = 40
MAX_CHECKS = 8
SUMMARY_CHARS = 240

ICONS = {"pass": "✅", "clean": "✅", "fail": "❌", "diffs": "❌", "inconclusive": "⚠️",
         "no_data": "⚠️"}


def _cell(text: Any) -> str:
    """Text safe inside a table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: Any) -> str:
    """Inline code; backticks and newlines cannot break out of it."""
    s = str(text).replace("`", "\u02cb").replace("\n", " ").replace("|", "\\|")
    return f"`{s}`"


def _val(v: Any) -> str:
    if v is None:
        return "∅"
    s = orjson.dumps(v, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    if len(s) > VALUE_CHARS:
        s = s[:VALUE_CHARS - 1] + "…"
    return _code(s)


def render_markdown(r: dict[str, Any]) -> str:
    v, t, w = r["verdict"], r["totals"], r["window"]
    label = w.get("label") or fmt_duration(w["seconds"])
    lines = [f'### {ICONS.get(v["status"], "")} shadowproxy: {_cell(v["headline"])}', ""]
    noise = ("noise: learned from a secondary" if r["setup"].get("secondary")
             else "**noise: rules only** (no secondary)")
    lines.append(f'{fmt_time(w["since"])} → {fmt_time(w["until"])} ({label}) · '
                 f'**{fmt_int(t["exchanges"])}** exchanges on {t["endpoints"]} endpoints · '
                 f'diff rate **{fmt_pct(t["diff_rate"])}** · errors {fmt_pct(t["error_rate"])}'
                 f' · {noise}')
    lines.append("")

    checks = r.get("checks")
    if checks and check_status(checks) == "error":
        lines.append(f'**Checks:** ⚠️ could not be evaluated: {_cell(checks.get("error"))}')
        lines.append("")
    elif checks and checks.get("checks"):
        lines.append(f"**Checks: {check_status(checks)}**")
        for c in checks["checks"][:MAX_CHECKS]:
            st = check_status(c)
            why = "; ".join(f'{s.get("metric")}: {s.get("summary")}'
                            for s in c.get("subchecks") or [] if check_status(s) == st
                            and st != "pass")
            if len(why) > SUMMARY_CHARS:
                why = why[:SUMMARY_CHARS - 1] + "…"
            lines.append(f'- {ICONS.get(st, "•")} {_code(c.get("name"))} {st}'
                         + (f" — {_cell(why)}" if why else ""))
        if len(checks["checks"]) > MAX_CHECKS:
            lines.append(f'- … and {len(checks["checks"]) - MAX_CHECKS} more checks')
        lines.append("")

    eps = r["endpoints"]
    if eps:
        lines.append("| endpoint | exchanges | diff | noise | 5xx/failed prim → cand | "
                     "p50 prim → cand | p99 prim → cand |")
        lines.append("|:--|--:|--:|--:|--:|--:|--:|")
        for ep in eps[:MAX_ENDPOINTS]:
            lat50, lat99 = ep["latency"]["p50"], ep["latency"]["p99"]
            diff = fmt_pct(ep["diff_rate"])
            lines.append(
                f'| {_code(ep["endpoint"])} | {fmt_int(ep["exchanges"])} | '
                f'{f"**{diff}**" if ep["diffs"] else diff} | {fmt_pct(ep["noise_rate"])} | '
                f'{fmt_pct(ep["primary_error_rate"])} → {fmt_pct(ep["candidate_error_rate"])} | '
                f'{fmt_ms(lat50["primary"])} → {fmt_ms(lat50["candidate"])} | '
                f'{fmt_ms(lat99["primary"])} → {fmt_ms(lat99["candidate"])} '
                f'({_judged_ratio(lat99)}) |')
        if len(eps) > MAX_ENDPOINTS:
            lines.append(f"| … and {len(eps) - MAX_ENDPOINTS} more endpoints | | | | | | |")
        lines.append("")

    field_lines: list[str] = []
    hidden = 0
    for name, rows in r["fields"].items():
        real = [f for f in rows if not f["noise"]]
        for f in real[:FIELDS_PER_ENDPOINT]:
            if len(field_lines) >= MAX_FIELD_LINES:
                hidden += 1
                continue
            kinds = ", ".join(f"{k} {n}" for k, n in f["kinds"].items())
            ex = f.get("example") or {}
            change = ""
            if ex and (ex.get("a") is not None or ex.get("b") is not None):
                change = f' · e.g. {_val(ex.get("a"))} → {_val(ex.get("b"))}'
            field_lines.append(f'- {_code(name)} {_code(f["field"])}: {fmt_int(f["count"])} '
                               f'({kinds}) in {fmt_pct(f["share"])} of exchanges{change}')
        hidden += max(0, len(real) - FIELDS_PER_ENDPOINT)
    if field_lines:
        lines.append("**Top differing fields**")
        lines.extend(field_lines)
        if hidden:
            lines.append(f"- … and {hidden} more (see the HTML report)")
        lines.append("")

    noise_rows = [x for x in r["noise"] if x["noise"]]
    if noise_rows:
        shown = ", ".join(f'{_code(x["endpoint"])} {_code(x["field"])}'
                          for x in noise_rows[:5])
        more = f" and {len(noise_rows) - 5} more" if len(noise_rows) > 5 else ""
        lines.append(f"**Learned noise** ({len(noise_rows)}): {shown}{more}")
        lines.append("")

    oc = r["outcomes"]
    drops = []
    for o in ("sampled_out", "not_eligible", "dropped", "candidate_error", "candidate_timeout"):
        for reason, n in sorted(oc.get(o, {}).items(), key=lambda kv: (-kv[1], kv[0])):
            drops.append(f"{o}{f' ({reason})' if reason else ''} {fmt_int(n)}")
    if drops or oc:
        total = t["requests"]
        compared = sum(oc.get("compared", {}).values())
        head = (f"**Not compared** (of {fmt_int(total)} requests, {fmt_int(compared)} "
                "compared): ")
        if len(drops) > 12:
            drops = drops[:12] + [f"… {len(drops) - 12} more"]
        lines.append(head + (" · ".join(drops) if drops else "none"))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _judged_ratio(lat: dict[str, Any]) -> str:
    """The ratio the latency checks judge: candidate ÷ secondary where there is one."""
    if lat.get("baseline") == "secondary":
        return f'{fmt_ratio(lat.get("judged_ratio"))} ÷ secondary'
    return fmt_ratio(lat.get("judged_ratio", lat["ratio"]))
