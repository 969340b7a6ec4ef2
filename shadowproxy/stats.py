"""Outcome accounting: every request ends in exactly one counted outcome.

Final outcomes (``FINAL``) add up to the number of requests:
``not_eligible{reason}``, ``sampled_out``, ``dropped{reason}``, ``compared``,
``candidate_error{kind}``, ``candidate_timeout``. ``mirrored`` is counted on the
way (a request accepted by the mirror queue) and ends later in ``compared``,
``candidate_error``, ``candidate_timeout`` or ``dropped`` — so
``mirrored == compared + candidate_error + candidate_timeout + dropped_after_mirror
+ in flight``.

Counters are plain dict increments on the hot path. Each process keeps its own
``Stats``; :meth:`Stats.take_delta` hands the increments since the last call to
whoever aggregates them (the control process in multi-process mode).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

FINAL = ("not_eligible", "sampled_out", "dropped", "compared", "candidate_error",
         "candidate_timeout")
# dropped reasons that happen after the request was mirrored
AFTER_MIRROR_DROPS = frozenset({"primary_error", "primary_incomplete", "compare_full",
                                "shutdown", "channel_error", "internal_error",
                                "queue_timeout", "shadow_crash",
                                # the fleet's transport (docs/fleet.md)
                                "transport_down", "transport_refused", "dead_letter",
                                "transport_trimmed"})

Key = tuple[str, str, str]   # (outcome, reason, endpoint)


class Stats:
    __slots__ = ("counts", "_sent", "gauges")

    def __init__(self) -> None:
        self.counts: Counter[Key] = Counter()
        self._sent: Counter[Key] = Counter()
        self.gauges: dict[str, float] = {}

    def add(self, outcome: str, reason: str = "", endpoint: str = "", n: int = 1) -> None:
        key = (outcome, reason, endpoint)
        self.counts[key] = self.counts.get(key, 0) + n

    def merge(self, rows: Iterable[tuple[Key, int]]) -> None:
        for key, n in rows:
            self.counts[key] = self.counts.get(key, 0) + n

    def take_delta(self) -> list[tuple[Key, int]]:
        out = []
        for key, n in self.counts.items():
            d = n - self._sent.get(key, 0)
            if d:
                out.append((key, d))
                self._sent[key] = n
        return out

    def total(self, outcome: str, reason: str | None = None) -> int:
        return sum(n for (o, r, _e), n in self.counts.items()
                   if o == outcome and (reason is None or r == reason))

    def by_outcome(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (o, r, _e), n in self.counts.items():
            name = f"{o}{{{r}}}" if r else o
            out[name] = out.get(name, 0) + n
        return dict(sorted(out.items()))

    def final_total(self) -> int:
        return sum(n for (o, _r, _e), n in self.counts.items() if o in FINAL)

    def dropped_after_mirror(self) -> int:
        return sum(n for (o, r, _e), n in self.counts.items()
                   if o == "dropped" and r in AFTER_MIRROR_DROPS)
