"""The shared, engine-neutral SQL (``?`` placeholders) on a psycopg cursor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..window import Query


def sql_of(sql: str) -> str:
    """The engine-neutral ``?`` placeholders as psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


def query_of(cur: Any) -> Query:
    """A :data:`~shadowproxy.store.window.Query` (``?`` placeholders) on a cursor: the
    shared reads, and the shared aggregate maintenance inside a write transaction."""
    def q(sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur.execute(sql_of(sql), list(params))
        return cur.fetchall() if cur.description is not None else []

    return q
