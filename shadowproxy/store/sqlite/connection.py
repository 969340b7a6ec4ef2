"""The SQLite store's connection: opening it, its lock and write transactions, reads
that turn sqlite errors into :class:`~shadowproxy.errors.StoreError`, the used size,
the file's upkeep (WAL checkpoints, VACUUM) and closing. The base of the store's write,
read and retention mixins.

File and WAL
    A new store is created with ``auto_vacuum=INCREMENTAL``, so retention gives freed
    pages back (``PRAGMA incremental_vacuum``, see :mod:`.retention`). A store made
    before that (``auto_vacuum=NONE``) is switched by a one-time ``VACUUM`` when it is
    opened for writing and its file is under :data:`VACUUM_ON_OPEN_MAX` (256 MiB; it
    rewrites the file through the WAL, a few seconds at that size); a larger one is
    left alone with one warning that its file will not shrink until
    :meth:`SqliteConnection.vacuum` is run (``shadowproxy store vacuum``), which needs
    as much free disk as the file and the WAL as large as it for the time it runs.

    The WAL is checkpointed by SQLite every 1000 pages (PASSIVE) and reset to zero
    bytes (``wal_checkpoint(TRUNCATE)``, never waiting on readers) after every
    retention slice and by the writer whenever it is above :data:`WAL_CAP` (64 MiB,
    also the ``journal_size_limit``), checked every second. A checkpoint cannot go past
    the snapshot of a reader that is still in its read transaction, nor reset the WAL
    while one is: the WAL then grows by what is written for as long as that reader
    lasts, and is back under the cap at the first check after it ends. The bound is
    therefore ``WAL_CAP`` + the bytes written during the longest read transaction
    (``check``, ``report`` and the admin API read for seconds).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ...errors import StoreError
from .migrations import migrate
from .schema import BUSY_TIMEOUT, parse_url, setup_connection

_T = TypeVar("_T")

log = logging.getLogger("shadowproxy.store")

WAL_CAP = 64 * 1024 * 1024              # the WAL's cap (and journal_size_limit)
VACUUM_ON_OPEN_MAX = 256 * 1024 * 1024   # auto_vacuum=NONE files switched at open below it
AUTO_VACUUM_INCREMENTAL = 2

_warned_no_shrink: set[str] = set()      # files told once that they will not shrink


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
        self.wal_cap = WAL_CAP                       # maintain_wal() resets the WAL above it
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
        where = self.path or ":memory:"
        version = setup_connection(self._conn, where, self.readonly)
        self.schema_version = migrate(self._conn, version, where, self.readonly)
        self._vacuum_on_open()

    def _vacuum_on_open(self) -> None:
        """Switch a writable store made with ``auto_vacuum=NONE`` to INCREMENTAL: by a
        VACUUM when its file is small enough, else by a warning (once per file)."""
        if self.readonly or self.path is None or self.auto_vacuum == AUTO_VACUUM_INCREMENTAL:
            return
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return
        if size < VACUUM_ON_OPEN_MAX:
            try:
                before, after = self.vacuum()
            except StoreError as exc:   # e.g. another process holds the write lock
                log.warning("store %s: could not switch it to incremental vacuum (%s); "
                            "will try again when it is next opened", self.path, exc)
                return
            log.warning("store %s: switched to incremental vacuum by a one-time VACUUM "
                        "(file %.1f MB -> %.1f MB); retention now gives space back",
                        self.path, before / 1e6, after / 1e6)
        elif self.path not in _warned_no_shrink:
            _warned_no_shrink.add(self.path)
            log.warning("store %s: its file (%.0f MB) was made without incremental vacuum "
                        "and is too large to switch when opened: it will not shrink when "
                        "retention deletes (freed space is reused) until `shadowproxy store "
                        "vacuum` is run (it needs as much free disk as the file)",
                        self.path, size / 1e6)

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

    # -- the file: vacuum and the WAL

    @property
    def auto_vacuum(self) -> int:
        """``PRAGMA auto_vacuum``: 0 none, 1 full, 2 incremental."""
        mode: int = self._read("PRAGMA auto_vacuum")[0][0]
        return mode

    def file_bytes(self) -> int:
        """Bytes on disk: the database file and its WAL (0 for a memory store)."""
        total = 0
        if self.path:
            for suffix in ("", "-wal"):
                try:
                    total += os.path.getsize(self.path + suffix)
                except OSError:
                    pass
        return total

    def wal_bytes(self) -> int:
        """Size of the WAL file (0 when there is none)."""
        if not self.path:
            return 0
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def checkpoint(self) -> bool:
        """``PRAGMA wal_checkpoint(TRUNCATE)`` without waiting (busy timeout 0 for it):
        → True when the WAL was checkpointed and truncated to zero bytes; False when a
        reader's snapshot or another writer kept it (as much as could be is copied to
        the file all the same, as a PASSIVE checkpoint would)."""
        if self.readonly or self.path is None:
            return False
        with self._lock:
            c = self._conn
            try:
                c.execute("PRAGMA busy_timeout=0")
                try:
                    busy: int = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    c.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return False
                raise _store_error(exc, "checkpoint", self.path) from exc
            except sqlite3.Error as exc:
                raise _store_error(exc, "checkpoint", self.path) from exc
        return busy == 0

    def maintain_wal(self) -> int:
        """Reset the WAL when it is above :attr:`wal_cap` (the writer calls this every
        second). → the WAL's size after."""
        wal = self.wal_bytes()
        if wal > self.wal_cap and self.checkpoint():
            wal = self.wal_bytes()
        return wal

    def vacuum(self) -> tuple[int, int]:
        """``VACUUM`` with ``auto_vacuum=INCREMENTAL``: rewrites the file without its
        free pages and switches a store made without incremental vacuum; then resets
        the WAL. Holds the write lock throughout (writers wait, readers go on); needs
        free disk for a copy of the file. → (file + WAL bytes before, after)."""
        if self.readonly:
            raise StoreError(f"the store {self.path or ':memory:'} was opened read-only")
        before = self.file_bytes()
        with self._lock:
            try:
                self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                self._conn.execute("VACUUM")
            except sqlite3.Error as exc:
                raise _store_error(exc, "vacuum", self.path or ":memory:") from exc
        self.checkpoint()
        return before, self.file_bytes()

    # -- size (the retention's limit and the store info)

    def used_bytes(self) -> int:
        """Bytes of the pages in use: (page_count - freelist_count) * page_size."""
        with self._lock:
            c = self._conn
            pc: int = c.execute("PRAGMA page_count").fetchone()[0]
            fl: int = c.execute("PRAGMA freelist_count").fetchone()[0]
            ps: int = c.execute("PRAGMA page_size").fetchone()[0]
        return (pc - fl) * ps
