"""The PostgreSQL store's connection: connecting (psycopg 3, autocommit, one connection
per store object behind a lock, reconnected after the server went away), the schema set
up or migrated, write transactions, reads with ``?`` placeholders, and errors turned into
:class:`~shadowproxy.errors.StoreError` with the password redacted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import StoreError, StoreUnavailable
from ..runs import RUN_PREFIX
from ..window import Dialect, Query, Scope
from . import schema
from .cursor import query_of
from .url import default_instance, redact, redact_url, url_password

if TYPE_CHECKING:
    import psycopg

_T = TypeVar("_T")

log = logging.getLogger("shadowproxy.store")

CONNECT_TIMEOUT = 10      # seconds, unless the URL sets connect_timeout
# SQLSTATEs of a server that is going away or not there yet (the same statement may
# succeed later): admin/crash shutdown, cannot connect now (starting up, shutting
# down, in recovery), idle session timeout, too many connections
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "57P05", "53300"})
PG_DIALECT = Dialect(diff_order="seq", diff_time=True, instance=True)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError("a postgresql:// store needs psycopg 3: pip install "
                         "'shadowproxy[postgres]' (or 'psycopg[binary]>=3.1')") from None
    return psycopg


class PgConnection:
    """The connection of a :class:`~shadowproxy.store.postgres.store.PostgresStore` and
    the plumbing its mixins share."""

    dialect: Dialect = PG_DIALECT
    path: str | None = None      # no file

    def __init__(self, url: str, *, readonly: bool = False, samples_per_field: int = 5,
                 instance: str | None = None, password: str | None = None,
                 read_instance: str | None = None) -> None:
        self._pg = _psycopg()
        self._dsn = url
        self._password = password
        self._secret = password or url_password(url)
        self.url = redact_url(url)
        self.readonly = readonly
        self.samples_per_field = samples_per_field
        self.instance = instance or default_instance()
        self.read_instance = read_instance
        # without an instance: the live instances, never a replay's run (store/runs.py)
        self.scope: Scope = Scope(("instance = ?",), (read_instance,)) if read_instance \
            else Scope(("instance NOT LIKE ?",), (RUN_PREFIX + "%",))
        self._lock = threading.RLock()
        self._full: set[tuple[str, str]] = set()     # (endpoint, field) with K samples
        self._days: set[int] = set()                 # day partitions known to exist
        self._snapshot = False
        self._conn: psycopg.Connection[Any] | None = None
        self.schema_version = 0
        with self._lock:
            try:
                self._connect()
                self._setup()
            except StoreError:
                self.close()
                raise
            except self._pg.Error as exc:
                self.close()
                raise self._error(exc, "open") from None

    # -- errors

    def _error(self, exc: BaseException, what: str) -> StoreError:
        cls = StoreUnavailable if self._unavailable(exc) else StoreError
        state = getattr(exc, "sqlstate", None)
        err = cls(f"cannot {what} the store {self.url}: "
                  f"{redact(str(exc).strip(), self._secret)}",
                  cause=f"{type(exc).__name__} (SQLSTATE {state})" if state else None)
        err.__cause__ = None
        return err

    def _unavailable(self, exc: BaseException) -> bool:
        """Is ``exc`` the server being down, restarting or out of reach (retrying the
        same statement may succeed), rather than a refusal of what was written (a full
        disk, a read-only database, bad data)?"""
        pg = self._pg
        if isinstance(exc, pg.OperationalError):
            state = getattr(exc, "sqlstate", None)
            # no SQLSTATE: libpq's own (connection refused, timed out, lost)
            if state is None or state.startswith("08") or state in _UNAVAILABLE_STATES:
                return True
        if isinstance(exc, pg.InterfaceError):
            return True         # the connection is closed or broken
        conn = self._conn
        return conn is not None and bool(conn.broken) and \
            not isinstance(exc, pg.errors.DiskFull)

    # -- connecting

    def _connect(self) -> psycopg.Connection[Any]:
        kw: dict[str, Any] = {"autocommit": True}
        if self._password is not None:
            kw["password"] = self._password
        if "connect_timeout" not in self._dsn:
            kw["connect_timeout"] = CONNECT_TIMEOUT
        if "application_name" not in self._dsn:
            kw["application_name"] = f"shadowproxy {self.instance}"[:63]
        conn: psycopg.Connection[Any] = self._pg.connect(self._dsn, **kw)
        # the hour locks (store/hours.py) need each statement to see what committed
        # before it, whatever default the server, database or role sets
        conn.execute("SET default_transaction_isolation = 'read committed'")
        if self.readonly:
            conn.execute("SET default_transaction_read_only = on")
        self._conn = conn
        self._snapshot = False
        return conn

    def _ensure(self) -> psycopg.Connection[Any]:
        """The connection, reconnecting when the server closed or broke it."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken or not self._ready(conn):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - a broken connection: only let it go
                    pass
            conn = self._connect()
        return conn

    def _ready(self, conn: psycopg.Connection[Any]) -> bool:
        """Is ``conn`` between statements: no pipeline left open or aborted, no
        transaction left behind (but this store's own snapshot)? A server that went away
        in the middle of a batch's pipeline can leave a connection that is not "broken"
        yet refuses every statement ("PQsendQuery not allowed in pipeline mode"): it is
        replaced rather than retried for ever."""
        pq = self._pg.pq
        if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            return False
        status = conn.info.transaction_status
        return bool(status == pq.TransactionStatus.IDLE or
                    (self._snapshot and status == pq.TransactionStatus.INTRANS))

    def _setup(self) -> None:
        conn = self._ensure()
        with conn.transaction(), conn.cursor() as cur:
            if not self.readonly:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATION_LOCK,))
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            tables = {r[0] for r in cur.fetchall()}
            if "schema_version" not in tables:
                if self.readonly:
                    raise StoreError(f"{self.url} is not a shadowproxy store (no "
                                     "schema_version table): start `shadowproxy run` or "
                                     "`shadowproxy store migrate` once to create it")
                if tables & (schema.TABLES - {"schema_version"}):
                    raise StoreError(f"{self.url} has tables named like a shadowproxy "
                                     "store's but no schema_version table: not a store")
                for stmt in schema.statements():
                    cur.execute(stmt)
                cur.execute("INSERT INTO schema_version(version) VALUES (%s)",
                            (schema.SCHEMA_VERSION,))
            cur.execute("SELECT max(version) FROM schema_version")
            row = cur.fetchone()
            version = row[0] if row else None
            if version is None:
                raise StoreError(f"{self.url}: the schema_version table is empty")
            if version > schema.SCHEMA_VERSION:
                raise StoreError(f"{self.url} has store schema version {version}, newer "
                                 f"than this shadowproxy supports ({schema.SCHEMA_VERSION}); "
                                 "upgrade shadowproxy")
            if version < schema.SCHEMA_VERSION and self.readonly:
                raise StoreError(
                    f"{self.url} has store schema version {version}, older than this "
                    f"shadowproxy's ({schema.SCHEMA_VERSION}): upgrade it with `shadowproxy "
                    "store migrate -c FILE` (or by starting `shadowproxy run` once); "
                    "nothing stored is lost")
            for target in range(version + 1, schema.SCHEMA_VERSION + 1):
                t0 = time.monotonic()
                what = schema.MIGRATIONS[target](cur)
                cur.execute("INSERT INTO schema_version(version) VALUES (%s)", (target,))
                log.warning("store %s: schema upgraded from version %d to %d in %.1f s (%s)",
                            self.url, target - 1, target, time.monotonic() - t0, what)
            self.schema_version = max(version, schema.SCHEMA_VERSION) \
                if not self.readonly else version

    # -- transactions and reads

    def _write(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(cursor, *args)`` in one transaction; errors become StoreError."""
        if self.readonly:
            raise StoreError(f"the store {self.url} was opened read-only")
        with self._lock:
            try:
                conn = self._ensure()
                with conn.transaction(), conn.cursor() as cur:
                    return fn(cur, *args)
            except self._pg.Error as exc:
                self._full.clear()
                self._days.clear()
                raise self._error(exc, what) from exc
            except BaseException:
                self._full.clear()
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._reading() as q:
            return [tuple(r) for r in q(sql, params)]

    @contextmanager
    def _reading(self) -> Iterator[Query]:
        with self._lock:
            try:
                conn = self._ensure()
                with conn.cursor() as cur:
                    yield query_of(cur)
            except self._pg.Error as exc:
                raise self._error(exc, "read") from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one consistent state of the store (one REPEATABLE READ, READ
        ONLY transaction), however the writers and the cleanup go on meanwhile."""
        with self._lock:
            if self._snapshot:               # nested: the outer one is the snapshot
                yield
                return
            try:
                conn = self._ensure()
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except self._pg.Error as exc:
                raise self._error(exc, "read") from exc
            self._snapshot = True
            try:
                yield
            finally:
                self._snapshot = False
                try:
                    conn.execute("COMMIT")
                except self._pg.Error:
                    pass

    def used_bytes(self) -> int:
        """Bytes of the store's tables (with their indexes and TOAST, every partition)."""
        rows = self._read(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'")
        return int(rows[0][0])

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
