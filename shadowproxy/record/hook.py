"""The worker's half of recording: decide, then hand over once primary has answered.

:meth:`Recorder.sampled` is asked on the request path when ``record:`` is configured
(the proxy holds None otherwise: one ``is None`` test is all recording costs then).
For a sampled request the proxy captures primary's answer as it does for a shadow;
when the answer ends, :meth:`Recorder.done` hands one ``("r", …)`` item to ``send`` (a
worker's link to a shadow process, or an in-process writer) and returns. A hand-over
that does not fit is counted ``record_dropped{reason}`` at once, never waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import Any

from ..config import RecordConfig, Route
from ..models import ResponseRecord
from ..proxy.capture import Budget
from ..proxy.policy import Sampler
from ..stats import Stats

RECORD_FIELDS = attrgetter(*(f.name for f in fields(ResponseRecord)))


class Recorder:
    def __init__(self, cfg: RecordConfig, stats: Stats,
                 send: Callable[[tuple[Any, ...]], str | None]) -> None:
        self.stats = stats
        self.send = send
        self.configure(cfg)

    def configure(self, cfg: RecordConfig) -> None:
        self.cfg = cfg
        self.sample = cfg.sample
        self.sampler = Sampler(cfg.sample_by)

    def sampled(self, route: Route | None, headers: list[tuple[str, str]], query: str) -> bool:
        return self.sampler.sampled(self.sample, headers, query)

    def done(self, fut: asyncio.Future[ResponseRecord], started: float, method: str,
             target: str, headers: list[tuple[str, str]], body: bytes, endpoint: str,
             budget: Budget | None) -> None:
        """Primary's answer is known: hand the exchange over. ``budget``: give the
        captured bytes back to it (when no shadow job owns them)."""
        rec = ResponseRecord(status=0, error="incomplete") if fut.cancelled() else fut.result()
        if budget is not None:
            budget.give(len(rec.body))
        if rec.error is not None:
            self.stats.add("record_dropped", "primary_error", endpoint)
            return
        why = self.send(("r", started, method, target, headers, body, RECORD_FIELDS(rec),
                         endpoint))
        if why is not None:
            self.stats.add("record_dropped", why, endpoint)
