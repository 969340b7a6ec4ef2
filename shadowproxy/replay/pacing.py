"""When each replayed request is sent: the recorded spacing (``--speed``), a fixed rate
(``--rate``), or as fast as ``--concurrency`` allows.

The offsets are computed up front from the recording, so that a sender that falls
behind catches up (it sends at once what is due) instead of drifting: over a replay
the rate holds on average even when single sends are late.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_SPEED = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x?\s*$", re.IGNORECASE)
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:/\s*(s|m|min|h))?\s*$", re.IGNORECASE)
_PER = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}


def parse_speed(value: str) -> float:
    """``2x``, ``0.5x``, ``1`` → the factor (recorded gaps are divided by it)."""
    m = _SPEED.match(value)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a speed such as 2x or 0.5x, got {value!r}")
    return float(m.group(1))


def parse_rate(value: str) -> float:
    """``500/s``, ``100/m``, ``500`` → requests per second."""
    m = _RATE.match(value)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a rate such as 500/s or 100/m, got {value!r}")
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) / _PER[unit]


def pacer(*, speed: float | None = None, rate: float | None = None
          ) -> Callable[[int, float], float] | None:
    """:func:`offsets` one request at a time (a replay streams its recordings): →
    ``due(i, started)``, the seconds after the replay's start at which request ``i``
    (recorded at ``started``, in order) is due; None: no pacing."""
    if rate is not None:
        return lambda i, _started: i / rate
    if speed is not None:
        first: list[float] = []

        def due(_i: int, started: float) -> float:
            if not first:
                first.append(started)
            return max(0.0, (started - first[0]) / speed)
        return due
    return None


def offsets(started: Sequence[float], *, speed: float | None = None,
            rate: float | None = None) -> list[float] | None:
    """Seconds after the replay's start at which each request is due, or None (no
    pacing: each goes as soon as a slot is free). ``started``: the recorded start
    times, in order."""
    if rate is not None:
        return [i / rate for i in range(len(started))]
    if speed is not None and started:
        t0 = started[0]
        return [max(0.0, (t - t0) / speed) for t in started]
    return None
