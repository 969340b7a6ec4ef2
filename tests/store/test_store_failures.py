"""The writer survives a full disk and a read-only database without hurting callers.

A full disk is simulated with ``PRAGMA max_page_count`` on the writer's connection
(:meth:`SqliteStore.limit_pages`): SQLite then fails exactly as on a full disk, with
"database or disk is full". A read-only database is opened through an SQLite URI with
``mode=ro`` (the tests run as root, where chmod would not stop writes).
"""

from __future__ import annotations

import logging
import os
import time

from shadowproxy.config import StoreConfig
from shadowproxy.store import StoreWriter, open_store
from tests.store_helpers import diff, response, result


def cfg(**kw) -> StoreConfig:
    # transactions of exactly 10 (max_batch): a failure drops a known number
    base = {"batch": 10, "max_batch": 10, "flush_interval": 0.01, "queue": 100000,
            "samples_per_field": 5, "retention_age": 0.0, "retention_size": 0}
    base.update(kw)
    return StoreConfig(**base)


def big_result(i: int):
    blob = os.urandom(3000).hex()
    return result("diff", diffs=[diff(f"$.f{i}", blob, blob[::-1])],
                  primary=response(200, {"blob": blob}))


def errors_for(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and text in r.getMessage()]


def test_disk_full_drops_batches_logs_once_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="shadowproxy.store")
    store = open_store(f"sqlite:///{tmp_path}/full.db", samples_per_field=5)
    pages = store._read("PRAGMA page_count")[0][0]
    store.limit_pages(pages + 200)          # ~800 KiB of room, then "disk full"
    w = StoreWriter(store, cfg())
    t = time.monotonic()
    accepted = sum(w.submit(big_result(i)) for i in range(400))
    assert time.monotonic() - t < 1.0        # submit never waits for the store
    assert accepted == 400
    assert w.flush(30)
    assert w.failed > 0 and w.acknowledged > 0
    assert w.acknowledged + w.failed == 400
    assert w.alive
    msgs = errors_for(caplog, "database or disk is full")
    assert len(msgs) == 1                    # one line per cause, rate-limited
    assert "dropped 10 results" in msgs[0] and "free disk space" in msgs[0]
    assert str(tmp_path / "full.db") in msgs[0]
    # the store is consistent and holds exactly what was acknowledged
    assert store.integrity_check() == "ok"
    assert store._read("SELECT count(*) FROM exchanges")[0][0] == w.acknowledged
    # space again: writing resumes
    store.limit_pages(1_000_000)
    before = w.acknowledged
    for i in range(20):
        w.submit(big_result(1000 + i))
    assert w.flush(10)
    assert w.acknowledged == before + 20
    # outcome counters the store refuses are kept, and written once it takes them
    store.limit_pages(store._read("PRAGMA page_count")[0][0])
    w.add_outcomes([(time.time(), "GET /x", "mirrored", f"r{i}" * 200, 1) for i in range(200)])
    assert w.flush(10)
    assert w.alive
    assert store._read("SELECT count(*) FROM outcomes")[0][0] == 0
    store.limit_pages(1_000_000)
    assert w.flush(10)
    assert store._read("SELECT sum(count) FROM outcomes")[0][0] == 200
    w.close()
    store.close()


def test_read_only_database(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="shadowproxy.store")
    path = tmp_path / "ro.db"
    open_store(f"sqlite:///{path}").close()
    w = StoreWriter(f"sqlite:///file:{path}?mode=ro", cfg(), log_interval=3600)
    t = time.monotonic()
    for _ in range(100):
        assert w.submit(result("match"))
    w.add_outcomes([(time.time(), "GET /x", "mirrored", "", 1)])
    assert time.monotonic() - t < 0.5
    assert w.flush(20)
    assert w.failed == 100 and w.acknowledged == 0
    msgs = errors_for(caplog, "attempt to write a readonly database")
    # one line for the results, one for the outcome counters: never one per batch
    assert 1 <= len(msgs) <= 2
    assert any("not writable" in m for m in msgs)
    assert w.alive
    assert w.close(10)
    s = open_store(f"sqlite:///{path}", readonly=True)
    assert s.verdict_counts()["match"] == 0
    s.close()


def test_close_returns_when_the_store_fails(tmp_path):
    path = tmp_path / "ro2.db"
    open_store(f"sqlite:///{path}").close()
    w = StoreWriter(f"sqlite:///file:{path}?mode=ro", cfg())
    for _ in range(50):
        w.submit(result("match"))
    t = time.monotonic()
    assert w.close(10)
    assert time.monotonic() - t < 5
    assert w.failed == 50
    assert not w.submit(result("match"))      # closed
