"""A circuit breaker for a candidate that refuses connections.

A candidate that is down would otherwise cost every worker a connection attempt,
an exchange, a comparison and a stored error per request. After ``failures``
consecutive connect errors the breaker opens: shadows are dropped at once and
counted ``dropped{candidate_down}``. After ``cooldown`` one probe is let through;
its success closes the breaker, its failure doubles the cooldown (up to 30 s).
Slow answers and timeouts never open it: they are what the shadow measures.

A probe that never reports (dropped on some path that does not call
:meth:`Breaker.cancel_probe`) is given up after ``probe_limit`` seconds and the next
shadow probes instead, so the breaker can never stay half-open for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable

MAX_COOLDOWN = 30.0


class Breaker:
    __slots__ = ("failures", "base_cooldown", "cooldown", "_clock", "_streak", "_open_until",
                 "_probing", "probe_limit", "_probe_until")

    def __init__(self, failures: int, cooldown: float,
                 clock: Callable[[], float] = time.monotonic, probe_limit: float = 60.0
                 ) -> None:
        self.failures = failures            # 0 disables the breaker
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self._clock = clock
        self._streak = 0
        self._open_until: float | None = None
        self._probing = False
        self.probe_limit = probe_limit      # a probe not heard of by then is lost
        self._probe_until = 0.0

    @property
    def open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """May a shadow be sent now?"""
        if self._open_until is None:
            return True
        now = self._clock()
        if now < self._open_until or (self._probing and now < self._probe_until):
            return False
        self._probing = True                # half-open: this one is the probe
        self._probe_until = now + self.probe_limit
        return True

    def cancel_probe(self) -> None:
        """The shadow let through as a probe was dropped before it was sent."""
        self._probing = False

    def record(self, error: str | None) -> bool:
        """The outcome of a shadow request: its error kind, or None for an answer.
        → True when it opened or closed the breaker (worth telling the operator)."""
        if error == "connect":
            self._streak += 1
            if self._open_until is not None:          # the probe failed
                self.cooldown = min(self.cooldown * 2, MAX_COOLDOWN)
                self._open_until = self._clock() + self.cooldown
                self._probing = False
            elif self.failures and self._streak >= self.failures:
                self._open_until = self._clock() + self.cooldown
                return True
            return False
        self._streak = 0
        if self._open_until is not None and error is None:
            self._open_until = None
            self._probing = False
            self.cooldown = self.base_cooldown
            return True
        if self._probing:
            # the probe got through but failed otherwise (timeout, reset): try again later
            self._probing = False
            self._open_until = self._clock() + self.cooldown
        return False
