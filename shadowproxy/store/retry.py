"""A store that could not be opened yet: the proxy serves anyway, and it is retried.

A full disk, a read-only directory or a database that is not there yet must never
keep primary from serving. :func:`open_or_retry` opens the store; when that fails
it returns a :class:`RetryingStore` that tries again at most every ``interval``
seconds whenever it is used (by the store writer's thread, which uses it every
batch, or by a reader). Until it opens, every call raises :class:`StoreError` with
the cause: the writer counts the results it could not write as failed and logs the
cause (once a minute), the admin API answers 503 for reads, and ``/readyz`` reports
the store as degraded with the reason (:attr:`RetryingStore.unavailable`). When the
cause is a database server that is down or out of reach (:class:`StoreUnavailable`),
that is what is raised: the writer keeps its results and retries them instead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..errors import StoreError, StoreUnavailable
from .base import Store
from .open import open_store

log = logging.getLogger("shadowproxy.store")

RETRY_INTERVAL = 5.0


class RetryingStore:
    """Stands in for the store at ``url`` until it can be opened."""

    def __init__(self, url: str, error: str, *, samples_per_field: int = 5,
                 interval: float = RETRY_INTERVAL, down: bool = False,
                 **options: Any) -> None:
        self.url = url
        self.down = down        # the cause is the server being down (StoreUnavailable)
        self.samples_per_field = samples_per_field
        self._options = options     # open_store's (instance, password)
        self.interval = interval
        self.unavailable: str | None = error     # the cause, while it is not open
        self._inner: Store | None = None
        self._lock = threading.Lock()
        self._next = time.monotonic() + interval

    @property
    def path(self) -> str | None:
        inner = self._inner
        return getattr(inner, "path", None) if inner is not None else None

    def _open(self) -> Store:
        inner = self._inner
        if inner is not None:
            return inner
        with self._lock:
            if self._inner is None and time.monotonic() >= self._next:
                try:
                    self._inner = open_store(self.url, samples_per_field=self.samples_per_field,
                                             **self._options)
                except StoreError as exc:
                    self.unavailable = str(exc)
                    self.down = isinstance(exc, StoreUnavailable)
                    self._next = time.monotonic() + self.interval
                else:
                    log.warning("store %s is open now; results are stored again",
                                getattr(self._inner, "path", None) or self.url)
                    self.unavailable = None
            if self._inner is None:
                cls = StoreUnavailable if self.down else StoreError
                raise cls(f"the store cannot be opened (retried every "
                                 f"{self.interval:g}s): {self.unavailable}")
            return self._inner

    def keeps_sample(self, result: Any) -> bool:
        inner = self._inner
        return True if inner is None else inner.keeps_sample(result)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._open(), name)


def open_or_retry(url: str, *, samples_per_field: int = 5,
                  interval: float = RETRY_INTERVAL, **options: Any) -> Store:
    """The store at ``url``, or a :class:`RetryingStore` when it cannot be opened now
    (``options``: :func:`~shadowproxy.store.open.open_store`'s instance and password)."""
    try:
        return open_store(url, samples_per_field=samples_per_field, **options)
    except StoreError as exc:
        log.error("%s; the proxy serves without storing results until it can be opened "
                  "(retried every %gs)", exc, interval)
        return RetryingStore(url, str(exc), samples_per_field=samples_per_field,
                             interval=interval, down=isinstance(exc, StoreUnavailable),
                             **options)
