"""``open_store(url)``: the store a URL names (the one place that knows the engines)."""

from __future__ import annotations

from ..errors import StoreError
from .base import Store
from .sqlite import SqliteStore


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
