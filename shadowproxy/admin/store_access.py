"""How the admin server reads the store: through its own read-only connection for a
file store (opened lazily, in a thread), every read in ``run_in_executor`` so the
comparator's loop never waits for SQLite."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..control.stages import Control

log = logging.getLogger("shadowproxy.admin")


class StoreAccess:
    """The store reads of :class:`~shadowproxy.admin.server.AdminServer` (a base class:
    the server sets ``control`` and calls :meth:`_init_reader`)."""

    control: Control
    _reader: Any
    _reader_lock: threading.Lock

    def _init_reader(self) -> None:
        self._reader = None
        self._reader_lock = threading.Lock()

    def _close_reader(self) -> None:
        if self._reader is not None and self._reader is not self.control.store:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001
                pass
        self._reader = None

    def _store(self) -> Any:
        with self._reader_lock:
            return self._open_reader()

    def _open_reader(self) -> Any:
        if self._reader is None:
            store = self.control.store
            path = getattr(store, "path", None)
            self._reader = store
            if path:
                try:
                    from ..store import open_store
                    self._reader = open_store(store.url, readonly=True)
                except Exception as exc:  # noqa: BLE001 - fall back to the shared one
                    log.warning("admin: cannot open a read-only store connection (%s); "
                                "reading through the writer's", exc)
        return self._reader

    async def _store_read(self, method: str, *args: Any, **kw: Any) -> Any:
        """``store.<method>(...)`` in a thread; opening the store happens there too."""
        return await self._read(lambda: getattr(self._store(), method)(*args, **kw))

    async def _read(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: fn(*args, **kw))
