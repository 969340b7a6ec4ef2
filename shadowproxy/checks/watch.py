"""``shadowproxy check --watch``: look again as results arrive, stop when decided.

Every look evaluates the checks over a window with a fixed start (``--since``/``--from``
resolved once, when the command starts) and an end at the moment of the look, so the
looks see one growing stream of exchanges: the always-valid intervals of
:mod:`.sequential` keep their error bound over all the looks together. The watch
stops at the first look whose verdict is decided — exit 1 the moment a regression is
shown, 0 the moment every check passes — and exits 3 when ``--timeout`` passes first.
Each look prints one line: what is decided and what still waits for data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from ..errors import StoreError
from .evaluate import FAIL, INCONCLUSIVE, PASS, Report, SubCheck, fmt_value

EXIT_TIMEOUT = 3


def _sub_label(check: str, sub: SubCheck) -> str:
    return f"{check}.{sub.metric}"


def look_line(look: int, elapsed: float, report: Report) -> str:
    """``look 3 (+20s): INCONCLUSIVE; fail: ...; pass: ...; waiting: ...``"""
    passed, failed, waiting = [], [], []
    for c in report.checks:
        for s in c.subchecks:
            label = _sub_label(c.name, s)
            if s.verdict == PASS:
                passed.append(label)
            elif s.verdict == FAIL:
                bad = [u.label for u in s.endpoints if u.verdict == FAIL]
                where = ", ".join(bad[:3]) if bad else "all endpoints"
                failed.append(f"{label} [{where}]")
            else:
                a = s.aggregate
                iv = ("" if a.lo is None or a.hi is None else
                      f" in [{fmt_value(s.metric, a.lo)}, {fmt_value(s.metric, a.hi)}]")
                unsure = [u.label for u in s.endpoints if u.verdict == INCONCLUSIVE
                          and not u.details.get("low_traffic")]
                more = f", endpoints {', '.join(unsure[:3])}" if unsure else ""
                waiting.append(f"{label} ({a.samples} samples{iv}{more})")
    parts = [f"look {look} (+{elapsed:.0f}s): {report.verdict.upper()}"]
    if failed:
        parts.append("fail: " + "; ".join(failed))
    if passed:
        parts.append("pass: " + ", ".join(passed))
    if waiting:
        parts.append("waiting for data: " + "; ".join(waiting))
    return "; ".join(parts)


def watch(evaluate_at: Callable[[float], Report], *, interval: float, timeout: float,
          out: TextIO, clock: Callable[[], float] = time.time,
          sleep: Callable[[float], None] = time.sleep) -> tuple[int, Report | None]:
    """Look every ``interval`` seconds until decided or ``timeout``. ``evaluate_at(t)``
    evaluates the window ending at ``t``. → (exit code, the last report: None when the
    store could never be read)."""
    start = clock()
    deadline = start + timeout
    look = 0
    last: Report | None = None
    while True:
        now = clock()
        look += 1
        try:
            last = evaluate_at(now)
        except StoreError as exc:
            print(f"look {look} (+{now - start:.0f}s): the result store cannot be read yet: "
                  f"{exc}", file=out, flush=True)
        else:
            print(look_line(look, now - start, last), file=out, flush=True)
            if last.verdict in (PASS, FAIL):
                return last.exit_code, last
        if now >= deadline:
            print(f"timeout after {now - start:.0f}s and {look} looks: still undecided",
                  file=out, flush=True)
            return EXIT_TIMEOUT, last
        sleep(max(0.0, min(interval, deadline - clock())))
