"""Canary checks: ``shadowproxy check`` turns stored results into a verdict for CI/CD.

Each configured check (``checks:`` in the config) is evaluated over a time window of the
store, per endpoint and over all of its endpoints together, with a statistical interval
for every threshold; the run is **pass** (exit 0), **fail** (exit 1) or **inconclusive**
(exit 3); a usage or config problem (bad window, no checks, no store) exits 2.
See ``docs/checks.md`` for the methods.

API::

    from shadowproxy.checks import evaluate, StoreSource, MemorySource, render_text
    report = evaluate(cfg.checks, StoreSource(store, since, until))
    report.verdict, report.exit_code
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from ..config import Config, parse_duration
from ..errors import StoreError
from ..store.base import glob_escape
from .evaluate import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    CheckResult,
    Counts,
    ErrorPairs,
    FieldInfo,
    ForbiddenHit,
    MemorySource,
    Report,
    Source,
    SubCheck,
    UnitResult,
    decide,
)
from .judge import evaluate, evaluate_check
from .render import (
    RENDERERS,
    render_json,
    render_junit,
    render_text,
    report_doc,
    summary_line,
)
from .source import StoreSource

__all__ = [
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "CheckResult",
    "Counts",
    "ErrorPairs",
    "FieldInfo",
    "ForbiddenHit",
    "MemorySource",
    "Report",
    "Source",
    "StoreSource",
    "SubCheck",
    "UnitResult",
    "UsageError",
    "decide",
    "evaluate",
    "evaluate_check",
    "glob_escape",
    "main",
    "parse_time",
    "parse_window",
    "render_json",
    "render_junit",
    "render_text",
    "report_doc",
    "run",
    "summary_line",
    "watch_start",
]

EXIT_USAGE = 2


class UsageError(ValueError):
    """A bad command line (window, endpoint filter)."""


def parse_time(value: str, now: float) -> float:
    """``now``, unix seconds (``1732600000``), ISO 8601 (``2026-11-26T17:00:00Z``; a
    time without zone is UTC) or a duration ago (``2h`` = two hours before now)."""
    text = value.strip()
    if text.lower() == "now":
        return now
    try:
        t = float(text)
        if math.isfinite(t):
            return t
    except ValueError:
        pass
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad time {value!r}: expected now, unix seconds, an ISO 8601 time "
                         "such as 2026-01-31T12:00:00Z, or a duration ago such as 2h"
                         ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_window(since: str | None, from_: str | None, to: str | None, now: float
                 ) -> tuple[float | None, float]:
    """→ (since or None for the beginning, until). ``until`` is pinned to ``now`` when
    not given, so every read of one run sees the same window."""
    if since is not None and (from_ is not None or to is not None):
        raise UsageError("use either --since or --from/--to, not both")
    if since is not None:
        try:
            d = parse_duration(since)
        except ValueError as exc:
            raise UsageError(f"bad --since {since!r}: {exc}") from None
        if d <= 0:
            raise UsageError(f"bad --since {since!r}: the window must be longer than 0")
        return now - d, now
    start = parse_time(from_, now) if from_ is not None else None
    end = parse_time(to, now) if to is not None else now
    if start is not None and start >= end:
        raise UsageError(f"--from ({from_}) must be before --to ({to or 'now'})")
    return start, end


def watch_start(since: str | None, from_: str | None, now: float) -> float | None:
    """The fixed start of a ``--watch`` window (None: the beginning of the store); its
    end is each look's moment, so ``--from now`` is allowed."""
    if since is not None and from_ is not None:
        raise UsageError("use either --since or --from, not both")
    if since is not None:
        return parse_window(since, None, None, now)[0]
    return None if from_ is None else parse_time(from_, now)


def run(cfg: Config, *, since: float | None, until: float | None, endpoint: str = "*",
        now: float | None = None, instance: str | None = None) -> Report:
    """Evaluate ``cfg.checks`` against the configured store (opened read-only), over
    every instance's results or only ``instance``'s."""
    from ..store.open import open_configured

    store = open_configured(cfg, readonly=True, read_instance=instance)
    try:
        with store.snapshot():        # every figure from one state of the store
            report = evaluate(cfg.checks, StoreSource(store, since, until), endpoint,
                              since=since, until=until, store=store.url,
                              generated_at=time.time() if now is None else now,
                              shadow=shadow_counts(store.outcome_counts(since, until,
                                                                        endpoint)))
    finally:
        store.close()
    return report


SHADOW_OUTCOMES = ("mirrored", "compared", "candidate_error", "candidate_timeout", "dropped",
                   "incident")   # incident{unclean_stop}: a run in the window was killed


def shadow_counts(outcomes: dict[str, dict[str, int]]) -> dict[str, int]:
    """The shadow's part of the outcome accounting, flat: ``mirrored``, ``compared``,
    ``candidate_error{connect}``, ``dropped{candidate_down}``, … (largest first within
    each outcome)."""
    out: dict[str, int] = {}
    for outcome in SHADOW_OUTCOMES:
        reasons = outcomes.get(outcome, {})
        for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
            if n:
                out[f"{outcome}{{{reason}}}" if reason else outcome] = n
    return out


def _err(msg: str) -> None:
    print(f"shadowproxy check: {msg}", file=sys.stderr)


def _write(text: str, output: str | None, report: Report, fmt: str) -> int:
    """The report to ``output`` (atomically; a summary line on stdout) or stdout."""
    if output:
        try:
            parent = os.path.dirname(os.path.abspath(output))
            os.makedirs(parent, exist_ok=True)
            tmp = f"{output}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, output)
        except OSError as exc:
            _err(f"cannot write {output}: {exc.strerror or exc}")
            return EXIT_USAGE
        print(f"{summary_line(report)}; {fmt} report written to {output}")
    else:
        sys.stdout.write(text)
    sys.stdout.flush()
    return report.exit_code


def main(cfg: Config, args: Any) -> int:
    """The ``check`` subcommand. → exit code: 0 pass, 1 fail, 3 inconclusive (or the
    ``--watch`` timeout), 2 usage."""
    fmt = getattr(args, "format", "text") or "text"
    output = getattr(args, "output", None)
    endpoint = getattr(args, "endpoint", "*") or "*"
    instance = getattr(args, "instance", None)
    if fmt not in RENDERERS:
        _err(f"unknown format {fmt!r} (text, json or junit)")
        return EXIT_USAGE
    if not cfg.checks:
        where = cfg.source or "the config"
        _err(f"no checks configured in {where}: add a checks: list (see docs/checks.md)")
        return EXIT_USAGE
    now = time.time()
    try:
        interval = timeout = 0.0
        if getattr(args, "watch", False):
            if getattr(args, "to", None) is not None:
                raise UsageError("--watch reads a window that grows as results arrive: "
                                 "--to cannot be used with it")
            # the start is fixed now; the end is each look's moment (--from now is fine)
            since = watch_start(getattr(args, "since", None), getattr(args, "from_", None),
                                now)
            interval = _duration("--interval", getattr(args, "interval", None) or "10s")
            timeout = _duration("--timeout", getattr(args, "timeout", None) or "30m")
        else:
            since, until = parse_window(getattr(args, "since", None),
                                        getattr(args, "from_", None),
                                        getattr(args, "to", None), now)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if getattr(args, "watch", False):
        from .watch import watch

        # the looks' lines go to stdout unless stdout carries a JSON or JUnit document
        looks = sys.stdout if fmt == "text" or output else sys.stderr
        code, report = watch(
            lambda t: run(cfg, since=since, until=t, endpoint=endpoint, now=t,
                          instance=instance),
            interval=interval, timeout=timeout, out=looks)
        if report is None:
            _err("the result store could never be read")
            return EXIT_USAGE
        written = _write(RENDERERS[fmt](report), output, report, fmt)
        return written if written == EXIT_USAGE else code
    try:
        report = run(cfg, since=since, until=until, endpoint=endpoint, now=now,
                     instance=instance)
    except StoreError as exc:
        _err(f"cannot read the result store: {exc}")
        return EXIT_USAGE
    return _write(RENDERERS[fmt](report), output, report, fmt)


def _duration(flag: str, value: str) -> float:
    try:
        d = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"bad {flag} {value!r}: {exc}") from None
    if d <= 0:
        raise UsageError(f"bad {flag} {value!r}: must be longer than 0")
    return d
