"""PostgreSQL retention by age and a writer adding to a minute at its cutoff (a replay
of old traffic, a comparator draining a lag) lock the aggregate rows in one order:
neither is aborted as a deadlock."""

from __future__ import annotations

import threading
import time

import pytest

from shadowproxy.store import open_store
from shadowproxy.store.postgres import writes
from tests.store.test_reads_scale import results

pytestmark = pytest.mark.server

T0 = 1_790_000_040.0


def test_retention_and_a_writer_at_its_cutoff_do_not_deadlock(pg_url: str,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    store = open_store(pg_url, instance="a")
    writer = open_store(pg_url, instance="b")
    try:
        store.write_results(results(300, 21, T0, 600))
        writer.write_results(results(100, 23, T0 + 60, 60))   # its own rows of a minute
        inside, go = threading.Event(), threading.Event()
        real = writes.added_blobs

        def held(*args, **kw):      # the writer has locked its blob rows, not yet rollups
            inside.set()
            go.wait(30)
            return real(*args, **kw)

        monkeypatch.setattr(writes, "added_blobs", held)
        errors: list[BaseException] = []

        def run(fn) -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        late = results(40, 22, T0 + 60, 60)          # more into that minute, at the cutoff
        w = threading.Thread(target=run, args=(lambda: writer.write_results(late),))
        w.start()
        assert inside.wait(30)
        max_age = 86400.0
        c = threading.Thread(target=run, args=(
            lambda: store.cleanup(T0 + 900 + max_age, max_age, None),))
        c.start()
        time.sleep(1.5)             # the cleanup is waiting on the writer's rows by now
        go.set()
        w.join(60)
        c.join(60)
        assert not errors, errors
    finally:
        store.close()
        writer.close()
