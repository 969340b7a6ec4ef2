"""The result store: where judged exchanges, outcome counters and learned noise live.

``open_store(url)`` opens a store (SQLite today; the interface in :mod:`.base` is
narrow so PostgreSQL can follow). Writes go through exactly one
:class:`~shadowproxy.store.writer.StoreWriter` per process; readers (checks, reports,
the admin API) open their own store with ``readonly=True``.
"""

from __future__ import annotations

from ..errors import StoreError
from .base import (
    ERROR_SAMPLE,
    MATCH_SAMPLE,
    EndpointStats,
    ExchangeRow,
    FieldStats,
    NoiseRow,
    OutcomeRow,
    SeriesPoint,
    Store,
    StoreInfo,
    percentile,
)
from .open import open_store
from .sqlite import SqliteStore
from .writer import StoreWriter

__all__ = [
    "ERROR_SAMPLE", "MATCH_SAMPLE", "EndpointStats", "ExchangeRow", "FieldStats", "NoiseRow",
    "OutcomeRow", "SeriesPoint", "SqliteStore", "Store", "StoreError", "StoreInfo",
    "StoreWriter", "open_store", "percentile",
]
