"""The PostgreSQL store: one database for a fleet of shadowproxy instances.

:class:`PostgresStore` (in :mod:`.store`) is assembled from :mod:`.connection`
(connecting, transactions, errors with the password redacted), :mod:`.writes`,
:mod:`.retention` and the engines' shared reads; :mod:`.schema` holds the DDL, its
version and the forward migrations, :mod:`.partitions` the day partitions, :mod:`.url`
the URL handling. psycopg 3 is imported only when a ``postgresql://`` store is opened.
"""

from __future__ import annotations

from .schema import SCHEMA_VERSION
from .store import PostgresStore
from .url import redact_url

__all__ = ["SCHEMA_VERSION", "PostgresStore", "redact_url"]
