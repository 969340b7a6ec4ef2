"""A store that goes down: the writer keeps its batch, retries it with backoff, sheds
what does not fit in its bounded queue (``store_dropped{store_down}``) and resumes by
itself, with no result stored twice.

Engine-neutral tests wrap a real store (both engines) in :class:`Flaky`, which raises
:class:`StoreUnavailable` while it is "down", optionally *after* committing a batch (a
commit whose acknowledgement was lost: the retry must not store it twice). The
PostgreSQL tests stop a real server under a writing StoreWriter and start it again on
the same port and data directory, and SIGKILL a process writing to PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from shadowproxy.compare.stage import CompareStage
from shadowproxy.config import StoreConfig
from shadowproxy.errors import StoreError, StoreUnavailable
from shadowproxy.models import Result
from shadowproxy.store import StoreWriter, open_store
from tests.pg_server import PgServer, require_postgres
from tests.store.test_store_crash import run_and_kill
from tests.store_helpers import crash_result, diff, result


def cfg(**kw: Any) -> StoreConfig:
    base: dict[str, Any] = {"batch": 20, "flush_interval": 0.01, "queue": 100,
                            "samples_per_field": 5, "retention_age": 0.0, "retention_size": 0}
    base.update(kw)
    return StoreConfig(**base)


class Flaky:
    """A store whose writes raise StoreUnavailable while :attr:`down` (after committing
    when :attr:`commit_then_fail`), or StoreError while :attr:`broken`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.commit_then_fail = False
        self.broken = False
        self.calls = 0

    def write_results(self, results: Sequence[Result]) -> int:
        self.calls += 1
        if self.broken:
            raise StoreError("database or disk is full")
        if self.down:
            if self.commit_then_fail:
                self.inner.write_results(results)
            raise StoreUnavailable("cannot write to the store: connection refused")
        return int(self.inner.write_results(results))

    def add_outcomes(self, rows: Any) -> None:
        if self.down:
            raise StoreUnavailable("cannot write to the store: connection refused")
        self.inner.add_outcomes(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _count(store: Any) -> tuple[int, int]:
    """(rows, distinct ids) in exchanges."""
    row = store._read("SELECT count(*), count(DISTINCT id) FROM exchanges")[0]
    return int(row[0]), int(row[1])


def _wait(cond: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_down_keeps_the_batch_bounds_the_queue_and_resumes(store_url: str) -> None:
    store = open_store(store_url)
    flaky = Flaky(store)
    w = StoreWriter(flaky, cfg(), retry_min=0.01, retry_max=0.2)  # type: ignore[arg-type]
    try:
        for i in range(30):
            assert w.submit(result("match", id=f"a-{i}"))
        assert w.flush(10) and w.acknowledged == 30
        flaky.down = True
        for i in range(10):
            assert w.submit(result("match", id=f"b-{i}"))
        assert _wait(lambda: w.down is not None)
        assert "connection refused" in (w.down or "")
        # down: the batch is held, the queue takes up to its bound, the rest is refused
        accepted = sum(w.submit(result("match", id=f"c-{i}")) for i in range(500))
        assert accepted <= 100 and w.dropped_down == 500 - accepted
        assert w.drop_reason == "store_down"
        assert w.depth == 10 + accepted and w.failed == 0
        assert not w.flush(0.3)                   # nothing lost, nothing done yet
        calls = flaky.calls
        time.sleep(0.5)
        assert 2 <= flaky.calls - calls <= 12     # backoff: ~0.01, 0.02, ... 0.2 s
        flaky.down = False
        assert w.flush(10)
        assert w.down is None and w.drop_reason == "store_full" and w.failed == 0
        assert w.acknowledged == 40 + accepted and w.retries > 0
        assert _count(store) == (40 + accepted, 40 + accepted)
    finally:
        w.close()
        store.close()


def test_a_retried_batch_that_was_committed_is_not_stored_twice(store_url: str) -> None:
    store = open_store(store_url)
    flaky = Flaky(store)
    flaky.down = flaky.commit_then_fail = True    # commits, then the answer is lost
    w = StoreWriter(flaky, cfg(batch=25), retry_min=0.01, retry_max=0.05)  # type: ignore[arg-type]
    try:
        results = [result("diff", id=f"d-{i}", diffs=[diff("$.a", 1, 2)],
                          endpoint=f"GET /r{i % 3}") for i in range(100)]
        for r in results:
            assert w.submit(r)
        assert _wait(lambda: flaky.calls >= 3)
        flaky.down = False
        assert w.flush(10)
        assert w.acknowledged == 100 and w.failed == 0
        assert _count(store) == (100, 100)
        assert store._read("SELECT count(*) FROM differences")[0][0] == 100
        # the aggregates count each exchange once too
        assert sum(store.verdict_counts().values()) == 100
        assert sum(e["exchanges"] for e in store.rollup_totals().values()) == 100
    finally:
        w.close()
        store.close()


def test_other_failures_still_drop_the_batch(store_url: str) -> None:
    store = open_store(store_url)
    flaky = Flaky(store)
    flaky.broken = True
    w = StoreWriter(flaky, cfg(), retry_min=0.01)  # type: ignore[arg-type]
    try:
        for i in range(40):
            assert w.submit(result("match", id=f"e-{i}"))
        assert w.flush(10)
        assert w.failed == 40 and w.down is None and w.retries == 0
        assert w.drop_reason == "store_full"
    finally:
        w.close()
        store.close()


def test_close_while_down_gives_up_and_counts_what_it_held(store_url: str) -> None:
    store = open_store(store_url)
    flaky = Flaky(store)
    flaky.down = True
    w = StoreWriter(flaky, cfg(), retry_min=0.01, retry_max=0.05)  # type: ignore[arg-type]
    try:
        for i in range(50):
            assert w.submit(result("match", id=f"f-{i}"))
        assert _wait(lambda: w.down is not None)
        t = time.monotonic()
        assert w.close(2.0)
        assert time.monotonic() - t < 2.0
        assert w.failed == 50 and w.acknowledged == 0
    finally:
        store.close()


def test_the_comparator_counts_store_down_drops() -> None:
    from shadowproxy.stats import Stats
    from tests.support import config

    class DownWriter:
        drop_reason = "store_down"

        def keeps_sample(self, _r: Any) -> bool:
            return True

        def submit(self, _r: Any) -> bool:
            return False

    stats = Stats()
    stage = CompareStage(config("http://127.0.0.1:9", "http://127.0.0.1:9"), stats,
                         writer=DownWriter())
    ex = result("match").exchange
    stage.process(ex)
    assert stats.total("store_dropped", "store_down") == 1
    assert stats.total("store_dropped", "store_full") == 0


# ------------------------------------------------------------------ a real PostgreSQL


@pytest.fixture
def own_postgres(tmp_path: Any) -> Any:
    """A PostgreSQL of the test's own (it is stopped and started again): synchronous
    commits, so that a commit acknowledged before SIGKILL of the server is kept."""
    server = PgServer(tmp_path, bindir=require_postgres(),
                      settings={"synchronous_commit": "on"})
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.mark.server
@pytest.mark.parametrize("mode", ["fast", "immediate", "kill"])
def test_postgres_restart_under_load_loses_nothing_and_resumes(own_postgres: PgServer,
                                                               mode: str) -> None:
    url = own_postgres.url
    w = StoreWriter(url, cfg(batch=50, queue=400), retry_min=0.05, retry_max=0.5)
    accepted: list[str] = []
    refused = {"store_down": 0, "store_full": 0}
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            r = result("diff" if i % 4 == 0 else "match", id=f"load-{i:07d}",
                       diffs=[diff("$.v", 1, 2)] if i % 4 == 0 else [],
                       endpoint=f"GET /p{i % 4}")
            if w.submit(r):
                accepted.append(r.exchange.id)
            else:
                refused[w.drop_reason] += 1
            if i % 20 == 0:
                time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert _wait(lambda: w.acknowledged >= 500), w.stats()
        own_postgres.halt(mode)
        assert _wait(lambda: w.down is not None, 10), w.stats()
        time.sleep(1.5)                       # down for a while under load
        acked_while_down = w.acknowledged
        assert w.dropped_down > 0             # the bounded queue shed, and counted it
        own_postgres.resume()
        assert _wait(lambda: w.down is None and w.acknowledged > acked_while_down + 500,
                     30), w.stats()
    finally:
        stop.set()
        producer.join()
    assert w.flush(30), w.stats()
    stats = w.stats()
    assert w.close(10)
    # everything accepted is stored exactly once; what was refused was counted
    assert stats["failed"] == 0 and stats["acknowledged"] == len(accepted)
    assert refused["store_down"] == stats["dropped_down"] > 0
    assert refused["store_full"] + refused["store_down"] == stats["rejected"]
    reader = open_store(url, readonly=True)
    try:
        assert _count(reader) == (len(accepted), len(accepted))
        stored = {r[0] for r in reader._read("SELECT id FROM exchanges")}
        assert stored == set(accepted)
        assert sum(reader.verdict_counts().values()) == len(accepted)
        diffs = sum(1 for i in accepted if int(i.split("-")[1]) % 4 == 0)
        assert reader._read("SELECT count(*) FROM differences")[0][0] == diffs
    finally:
        reader.close()


@pytest.mark.server
def test_kill_9_of_a_postgres_writer_then_a_resubmit_stores_each_once(pg_url: str) -> None:
    start = time.time() - 60
    acked = run_and_kill(pg_url, 20, "k", repr(start))
    store = open_store(pg_url)
    try:
        rows, distinct = _count(store)
        assert rows == distinct and rows >= acked
        # a new writer resubmits the same results (all the killed one may have taken)
        n = rows + 2000
        w = StoreWriter(store, cfg(batch=200, queue=100000))
        for i in range(1, n + 1):
            assert w.submit(crash_result("k", i, start))
        assert w.flush(60) and w.failed == 0
        assert w.close(10)
        assert _count(store) == (n, n)
        assert sum(store.verdict_counts().values()) == n
        diff_ex = store._read("SELECT count(*) FROM exchanges WHERE verdict='diff'")[0][0]
        assert diff_ex == n // 3
        assert store._read("SELECT count(*) FROM differences")[0][0] == 2 * diff_ex
    finally:
        store.close()
