"""The embedded SQLite store.

:class:`SqliteStore` (in :mod:`.store`) is assembled from :mod:`.connection` (opening,
transactions), :mod:`.writes`, :mod:`.reads` and :mod:`.retention`; :mod:`.schema` holds
the DDL, its version and the URL parsing.
"""

from __future__ import annotations

from .schema import SCHEMA_VERSION, parse_url
from .store import SqliteStore

__all__ = ["SCHEMA_VERSION", "SqliteStore", "parse_url"]
