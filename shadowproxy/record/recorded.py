"""One recorded exchange, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass

from ..models import RequestRecord, ResponseRecord


@dataclass(slots=True)
class Recorded:
    id: str
    started: float                  # unix seconds the request started
    request: RequestRecord
    target: str                     # path and query as recorded
    response: ResponseRecord | None  # production's answer, when recorded
