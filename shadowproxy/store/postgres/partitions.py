"""Day partitions of the PostgreSQL store's result tables (:data:`.schema.PARTITIONED`).

A day ``d`` (days since the epoch, UTC) is the partition ``<table>_pYYYYMMDD`` of each
table, ``FOR VALUES FROM (d * 86400) TO ((d + 1) * 86400)``. The writer creates the days
a batch needs, and today's and tomorrow's, before writing it (in a transaction of their
own, under an advisory lock so that instances creating the same day wait for each other);
retention drops whole days (:mod:`.retention`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from .schema import PARTITION_LOCK, PARTITIONED

DAY = 86400
_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<date>\d{8})$")
_EPOCH = dt.date(1970, 1, 1)


def day_of(t: float) -> int:
    return int(t // DAY)


def name(table: str, day: int) -> str:
    return f"{table}_p{(_EPOCH + dt.timedelta(days=day)).strftime('%Y%m%d')}"


def parse(relname: str) -> tuple[str, int] | None:
    """``exchanges_p20261202`` → ("exchanges", its day)."""
    m = _NAME.match(relname)
    if m is None:
        return None
    day = dt.datetime.strptime(m["date"], "%Y%m%d").date()
    return m["table"], (day - _EPOCH).days


def existing(cur: Any) -> dict[str, set[int]]:
    """table → the days it has a partition for (in the current schema)."""
    out: dict[str, set[int]] = {t: set() for t in PARTITIONED}
    cur.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE p.relnamespace = current_schema()::regnamespace AND p.relname = ANY(%s)",
        (list(PARTITIONED),))
    for (relname,) in cur.fetchall():
        parsed = parse(relname)
        if parsed is not None and parsed[0] in out:
            out[parsed[0]].add(parsed[1])
    return out


def days(known: dict[str, set[int]]) -> list[int]:
    """The days every partitioned table has, ascending."""
    sets = [known.get(t, set()) for t in PARTITIONED]
    return sorted(set.intersection(*sets)) if sets else []


def create(cur: Any, wanted: Iterable[int]) -> set[int]:
    """Create the partitions of ``wanted`` days that are missing (inside a transaction);
    → the days now present in every table."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    have = existing(cur)
    made: set[int] = set()
    for day in sorted(set(wanted)):
        for table in PARTITIONED:
            if day not in have[table]:
                cur.execute(f'CREATE TABLE IF NOT EXISTS "{name(table, day)}" PARTITION OF '
                            f"{table} FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})")
        made.add(day)
    return set(days(have)) | made


def drop(cur: Any, day: int) -> int:
    """Drop the partitions of ``day`` (inside a transaction), and the sample keys of
    that day; → the exchanges they held."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
    have = existing(cur)
    n = 0
    if day in have["exchanges"]:
        cur.execute(f'SELECT count(*) FROM "{name("exchanges", day)}"')
        n = int(cur.fetchone()[0])
    for table in PARTITIONED:
        if day in have[table]:
            cur.execute(f'DROP TABLE IF EXISTS "{name(table, day)}"')
    cur.execute("DELETE FROM sample_keys WHERE time >= %s AND time < %s",
                (day * DAY, (day + 1) * DAY))
    return n
