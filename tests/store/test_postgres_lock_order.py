"""Writers that share rows of the PostgreSQL store lock them in one order: two
processes of a comparator pool (one instance name) adding outcome counts, or any two
instances saving the shared noise evidence, wait for each other instead of
deadlocking (PostgreSQL aborts one of them, its write fails and is logged)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from shadowproxy.store import open_store

pytestmark = pytest.mark.server

MINUTE = 1_800_000_000.0


def _upsert_outcome(cur: Any, outcome: str) -> None:
    cur.execute("INSERT INTO outcomes(minute, endpoint, instance, outcome, reason, count) "
                "VALUES (%s, 'ep', 'pool', %s, '', 1) ON CONFLICT (minute, endpoint, "
                "instance, outcome, reason) DO UPDATE SET count = outcomes.count + 1",
                (int(MINUTE), outcome))


def _waits_on_a_lock(conn: Any) -> bool:
    """The store's connection (named after its instance) waits on a row lock."""
    row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE "
                       "application_name = 'shadowproxy pool'").fetchone()
    return row is not None and row[0] == "Lock"


def test_two_writers_of_one_instance_wait_for_each_other_not_deadlock(pg_url: str) -> None:
    store = open_store(pg_url, instance="pool")
    store.add_outcomes([(MINUTE, "ep", "compared", "", 1), (MINUTE, "ep", "mirrored", "", 1)])
    errors: list[BaseException] = []

    def pool_process_b() -> None:   # gathered its rows in the order mirrored, compared
        try:
            store.add_outcomes([(MINUTE, "ep", "mirrored", "", 1),
                                (MINUTE, "ep", "compared", "", 1)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with psycopg.connect(pg_url) as watch, \
            psycopg.connect(pg_url) as a:
        watch.autocommit = True
        with a.transaction(), a.cursor() as cur:
            _upsert_outcome(cur, "compared")             # process A holds "compared"
            b = threading.Thread(target=pool_process_b)
            b.start()
            deadline = time.monotonic() + 10
            while not _waits_on_a_lock(watch) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _waits_on_a_lock(watch), "B never waited on A's row"
            _upsert_outcome(cur, "mirrored")             # then wants "mirrored"
        b.join(10)
    assert not b.is_alive() and errors == []
    counts = store.outcome_counts()
    store.close()
    assert counts["compared"][""] == 3 and counts["mirrored"][""] == 3
