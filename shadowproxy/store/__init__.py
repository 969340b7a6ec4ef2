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
from .sqlite import SqliteStore
from .writer import StoreWriter

__all__ = [
    "ERROR_SAMPLE", "MATCH_SAMPLE", "EndpointStats", "ExchangeRow", "FieldStats", "NoiseRow",
    "OutcomeRow", "SeriesPoint", "SqliteStore", "Store", "StoreError", "StoreInfo",
    "StoreWriter", "open_store", "percentile",
]


def open_store(url: str, *, readonly: bool = False, samples_per_field: int = 5) -> Store:
    """Open (creating when writable and missing) the store at ``url``.

    ``sqlite:///./results.db`` (relative), ``sqlite:////abs/results.db``,
    ``sqlite:///file:results.db?mode=ro`` (an SQLite URI), ``sqlite:///:memory:``.
    Raises :class:`StoreError` with a message naming the file and the cause."""
    if not isinstance(url, str) or not url:
        raise StoreError(f"no store URL given (got {url!r}); expected sqlite:///PATH")
    if url.startswith(("sqlite:", "memory:")):
        return SqliteStore(url, readonly=readonly, samples_per_field=samples_per_field)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(f"unsupported store URL {url!r}: scheme {scheme!r} is not supported "
                     "(expected sqlite:///PATH)")
