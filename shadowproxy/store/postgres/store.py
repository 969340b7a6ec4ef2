"""The PostgreSQL result store: one database for every instance of a fleet.

URL: ``postgresql://USER@HOST:PORT/DB`` (or ``postgres://``; libpq query parameters such
as ``sslmode`` pass through); the password from ``store.password_env`` or the URL, never
logged (see :mod:`.url`). Tables, partitions and migrations: :mod:`.schema`,
:mod:`.partitions`; writes: :mod:`.writes`; retention: :mod:`.retention`; the reads are
the engines' shared :mod:`shadowproxy.store.reads`, with the instance filter as their
scope.

Many writers
    Each writer (``instance:`` in the config; default ``POD_NAME`` or the host name)
    labels every row it writes with the instance whose traffic it is (its own, or in a
    fleet the sidecar an exchange names) and merges only the aggregate rows of its own
    ``writer`` key; a batch's ids already stored are skipped inside its transaction, so
    a retried batch never counts twice. Readers sum across instances and writers, or
    keep one instance (``read_instance``).
Durability
    A batch is one transaction: after its COMMIT returned it survives a crash of the
    writer or a restart of the server; before, nothing of it is stored.
"""

from __future__ import annotations

from typing import Any

from ..base import StoreInfo
from ..reads import SharedReads
from .retention import RetentionMixin
from .writes import WritesMixin


class PostgresStore(WritesMixin, RetentionMixin, SharedReads):
    """A result store in a PostgreSQL database. See the module docstring."""

    def info(self) -> StoreInfo:
        clauses, params = self._range(None, None)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        n_ex = self._read(f"SELECT count(*) FROM exchanges{where}", params)[0][0]
        n_s = self._read(f"SELECT count(*) FROM samples{where}", params)[0][0]
        size = self.used_bytes()
        db = self._read("SELECT pg_database_size(current_database()), "
                        "current_setting('server_version')")[0]
        instances = [r[0] for r in self._read(
            "SELECT DISTINCT instance FROM rollups ORDER BY instance")]
        return StoreInfo(self.url, self.schema_version, size, int(db[0]), int(n_ex), int(n_s),
                         {"engine": "postgresql", "server_version": db[1],
                          "instance": self.instance, "instances": instances,
                          "read_instance": self.read_instance})

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
