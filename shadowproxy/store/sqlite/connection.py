"""The SQLite store's connection: opening it, its lock and write transactions, reads
that turn sqlite errors into :class:`~shadowproxy.errors.StoreError`, the used size,
and closing. The base of the store's write, read and retention mixins.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ...errors import StoreError
from .schema import BUSY_TIMEOUT, parse_url, setup_connection

_T = TypeVar("_T")


def _store_error(exc: BaseException, what: str, where: str) -> StoreError:
    err = StoreError(f"cannot {what} the store {where}: {exc}")
    err.__cause__ = exc
    return err


class SqliteConnection:
    """The connection of a :class:`~shadowproxy.store.sqlite.store.SqliteStore` and the
    plumbing its mixins share."""

    def __init__(self, url: str, *, readonly: bool = False,
                 samples_per_field: int = 5) -> None:
        self.url = url
        self.readonly = readonly
        self.samples_per_field = samples_per_field
        target, uri, path = parse_url(url, readonly)
        self.path = path
        self._lock = threading.RLock()
        self._full: set[tuple[str, str]] = set()     # (endpoint, field) with K samples
        where = path or ":memory:"
        if readonly and path is not None and not os.path.exists(path):
            raise StoreError(f"no store at {path} (the file does not exist)")
        if path is not None and not uri:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise StoreError(f"cannot create the store {path}: directory {parent} "
                                 "does not exist")
        try:
            self._conn = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _store_error(exc, "open", where) from None
        try:
            self._setup()
        except StoreError:
            self._conn.close()
            raise
        except sqlite3.Error as exc:
            self._conn.close()
            msg = str(exc)
            if "not a database" in msg:
                raise StoreError(f"{where} is not an SQLite database") from exc
            raise _store_error(exc, "open", where) from exc

    # -- setup

    def _setup(self) -> None:
        self.schema_version = setup_connection(self._conn, self.path or ":memory:",
                                               self.readonly)

    # -- plumbing

    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _write(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn`` in one write transaction; sqlite errors become StoreError."""
        if self.readonly:
            raise StoreError(f"the store {self.path or ':memory:'} was opened read-only")
        with self._lock:
            try:
                self._begin()
                out = fn(*args)
                self._conn.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                self._rollback()
                self._full.clear()
                raise _store_error(exc, what, self.path or ":memory:") from exc
            except BaseException:
                self._rollback()
                self._full.clear()
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _store_error(exc, "read", self.path or ":memory:") from exc

    def limit_pages(self, max_pages: int) -> int:
        """Test hook: ``PRAGMA max_page_count`` on this connection, to simulate a full
        disk (writes then fail with "database or disk is full"). → the limit in force."""
        with self._lock:
            limit: int = self._conn.execute(f"PRAGMA max_page_count={int(max_pages)}").fetchone()[0]
            return limit

    def close(self) -> None:
        with self._lock:
            try:
                if not self.readonly:
                    try:
                        self._conn.execute("PRAGMA optimize")
                    except sqlite3.Error:
                        pass
                self._conn.close()
            except sqlite3.Error:
                pass

    # -- size (the retention's limit and the store info)

    def used_bytes(self) -> int:
        """Bytes of the pages in use: (page_count - freelist_count) * page_size."""
        with self._lock:
            c = self._conn
            pc: int = c.execute("PRAGMA page_count").fetchone()[0]
            fl: int = c.execute("PRAGMA freelist_count").fetchone()[0]
            ps: int = c.execute("PRAGMA page_size").fetchone()[0]
        return (pc - fl) * ps
