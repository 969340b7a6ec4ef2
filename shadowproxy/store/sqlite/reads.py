"""The SQLite store's reads: the engines' shared reads (:mod:`shadowproxy.store.reads`)
over its connection, plus its snapshot, store info and the integrity check.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..base import StoreInfo
from ..reads import PAIR_ROWS, SharedReads
from ..window import Query
from .connection import SqliteConnection, _store_error

__all__ = ["PAIR_ROWS", "ReadsMixin"]


class ReadsMixin(SqliteConnection, SharedReads):
    """:class:`~shadowproxy.store.sqlite.store.SqliteStore`'s reads."""

    @contextmanager
    def _reading(self) -> Iterator[Query]:
        with self._lock:
            try:
                yield self._conn.execute
            except sqlite3.Error as exc:
                raise _store_error(exc, "read", self.path or ":memory:") from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one consistent state of the store (one read transaction),
        however the writer and the cleanup go on meanwhile. Hold it for one command's
        reads (seconds): while it is held, the WAL cannot be reset behind it."""
        with self._lock:
            if self._conn.in_transaction:      # nested: the outer one is the snapshot
                yield
                return
            self._conn.execute("BEGIN")
            try:
                self._conn.execute("SELECT 1 FROM schema_version LIMIT 1").fetchall()
                yield
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def info(self) -> StoreInfo:
        file_bytes = 0
        if self.path:
            for suffix in ("", "-wal"):
                try:
                    file_bytes += os.path.getsize(self.path + suffix)
                except OSError:
                    pass
        n_ex = self._read("SELECT count(*) FROM exchanges")[0][0]
        n_s = self._read("SELECT count(*) FROM samples")[0][0]
        return StoreInfo(self.url, self.schema_version, self.used_bytes(), file_bytes, n_ex, n_s)

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: 'ok' or the problems found."""
        rows = self._read("PRAGMA integrity_check")
        return "\n".join(r[0] for r in rows)
