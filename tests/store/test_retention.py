"""Retention of the SQLite store against real files: the size limit cleans down to its
target in bounded slices, the file shrinks (incremental vacuum, also for stores made
without it), and the WAL is back under its cap once a long reader ends."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from shadowproxy.config import StoreConfig
from shadowproxy.store import SqliteStore, StoreWriter
from shadowproxy.store.sqlite import connection, retention
from tests.store_helpers import diff, response, result

NOW = time.time()
T0 = NOW - 6 * 3600
BIG = "x" * 3000


def url(tmp_path, name="results.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def results(n: int, start: float = T0, step: float = 1.0):
    return [result("diff", diffs=[diff(f"$.f{i % 40}", BIG, BIG + "y")], started=start + i * step,
                   primary=response(200, {"blob": BIG, "i": i}))
            for i in range(n)]


def filled(tmp_path, n: int = 1200, **kw) -> SqliteStore:
    store = SqliteStore(url(tmp_path), samples_per_field=100_000, **kw)
    rs = results(n)
    for i in range(0, n, 100):
        store.write_results(rs[i:i + 100])
    store.checkpoint()
    return store


def integrity(store: SqliteStore) -> str:
    return store._read("PRAGMA integrity_check")[0][0]


def test_new_store_uses_incremental_vacuum(tmp_path):
    store = SqliteStore(url(tmp_path))
    assert store.auto_vacuum == 2
    store.close()


def test_size_limit_cleans_down_to_target_in_slices(tmp_path):
    store = filled(tmp_path)
    used = store.used_bytes()
    limit = int(used * 0.99)            # just over the limit: one slice gets under it
    target = int(limit * retention.SIZE_TARGET)
    calls = 0
    while True:
        calls += 1
        n = store.cleanup(NOW, None, limit, chunk=30, max_chunks=1)
        assert n <= 30
        if not store.cleanup_pending:
            break
        assert calls < 200
    assert calls > 2
    assert store.used_bytes() <= target
    # down at the target, a few more writes under the limit delete nothing
    store.write_results(results(5, start=NOW - 60))
    assert store.used_bytes() <= limit
    assert store.cleanup(NOW, None, limit, chunk=30, max_chunks=1) == 0
    left = store._read("SELECT min(time), count(*) FROM exchanges")[0]
    assert left[1] < 1205 and left[0] > T0          # the oldest went
    assert integrity(store) == "ok"
    store.close()


def test_file_shrinks_after_cleanup(tmp_path):
    store = filled(tmp_path)
    before = store.info()
    limit = before.size_bytes // 3
    deleted = store.cleanup(NOW, None, limit)
    assert deleted > 0 and not store.cleanup_pending
    after = store.info()
    # in use at most 90 % of the limit, free pages at most the 2 % slack, WAL reset
    assert after.size_bytes <= limit * retention.SIZE_TARGET
    assert store.wal_bytes() == 0
    assert after.file_bytes <= after.size_bytes * 1.03 + 4096
    assert after.file_bytes < before.file_bytes / 2.5
    print(f"\n  size limit: file+WAL {before.file_bytes / 1e6:.2f} MB -> "
          f"{after.file_bytes / 1e6:.2f} MB (limit {limit / 1e6:.2f} MB, "
          f"{deleted} of {before.exchanges} exchanges deleted)")
    # by age too: half of what is left is older than the cutoff
    tr = store.time_range()
    assert tr is not None
    cut = (tr[0] + tr[1]) / 2
    store.cleanup(NOW, NOW - cut, None)
    assert store.info().file_bytes < after.file_bytes * 0.7
    assert integrity(store) == "ok"
    store.close()


def test_vacuum_is_sliced(tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "VACUUM_STEP", 64 * 1024)
    store = filled(tmp_path, n=600)
    limit = store.used_bytes() // 2
    sizes = []
    calls = 0
    while True:
        calls += 1
        store.cleanup(NOW, None, limit, chunk=500, max_chunks=3)
        sizes.append(store.file_bytes())
        if not store.cleanup_pending:
            break
        assert calls < 500
    assert calls > 3
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    assert store.free_pages() <= store._read("PRAGMA page_count")[0][0] * 0.02 + 1
    store.close()


def _make_legacy(path) -> None:
    """Turn a store into one made before incremental vacuum (auto_vacuum=NONE)."""
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA auto_vacuum=NONE")
    c.execute("VACUUM")
    assert c.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    c.close()


def test_legacy_store_switched_when_opened_for_writing(tmp_path, caplog):
    store = filled(tmp_path, n=300)
    path = store.path
    store.close()
    _make_legacy(path)
    ro = SqliteStore(url(tmp_path), readonly=True)       # read-only: left alone
    assert ro.auto_vacuum == 0
    ro.close()
    with caplog.at_level(logging.WARNING, "shadowproxy.store"):
        store = SqliteStore(url(tmp_path))
    assert store.auto_vacuum == 2
    assert any("switched to incremental vacuum" in r.getMessage() for r in caplog.records)
    before = store.file_bytes()
    store.cleanup(NOW, None, store.used_bytes() // 2)
    assert store.file_bytes() < before * 0.6
    assert integrity(store) == "ok"
    store.close()


def test_large_legacy_store_warns_once_until_vacuumed(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(connection, "VACUUM_ON_OPEN_MAX", 0)
    monkeypatch.setattr(connection, "_warned_no_shrink", set())
    store = filled(tmp_path, n=300)
    path = store.path
    store.close()
    _make_legacy(path)
    with caplog.at_level(logging.WARNING, "shadowproxy.store"):
        for _ in range(2):
            store = SqliteStore(url(tmp_path))
            assert store.auto_vacuum == 0
            store.close()
    warned = [r for r in caplog.records if "will not shrink" in r.getMessage()]
    assert len(warned) == 1 and "shadowproxy store vacuum" in warned[0].getMessage()
    store = SqliteStore(url(tmp_path))
    before = store.file_bytes()
    store.cleanup(NOW, None, store.used_bytes() // 2)
    assert store.file_bytes() >= before * 0.95          # freed pages stay in the file
    was, now = store.vacuum()                           # the maintenance path
    assert store.auto_vacuum == 2
    assert now < was * 0.6
    assert integrity(store) == "ok"
    store.close()


def test_wal_back_under_cap_after_a_long_reader(tmp_path):
    u = url(tmp_path)
    store = SqliteStore(u, samples_per_field=100_000)
    store.wal_cap = 256 * 1024
    store.write_results(results(50))
    cfg = StoreConfig(url=u, batch=50, flush_interval=0.01, queue=10000,
                      samples_per_field=100_000, retention_age=0.0, retention_size=1_500_000)
    w = StoreWriter(store, cfg, cleanup_interval=0.05, cleanup_chunks=4,
                    wal_check_interval=0.02)
    # a reader in its own connection holds one snapshot while the writer writes and cleans
    reader = sqlite3.connect(store.path, isolation_level=None)
    reader.execute("BEGIN")
    seen = reader.execute("SELECT count(*) FROM exchanges").fetchone()[0]
    peak = 0
    for i, r in enumerate(results(800, start=NOW - 3600)):
        while not w.submit(r):
            time.sleep(0.001)
        if i % 100 == 99:
            assert w.flush(20)
            peak = max(peak, store.wal_bytes())
    assert w.flush(20)
    w.cleanup_now()
    time.sleep(0.3)
    assert w.cleaned > 0
    # the snapshot is still whole, and pinned the WAL above its cap
    assert reader.execute("SELECT count(*) FROM exchanges").fetchone()[0] == seen
    peak = max(peak, store.wal_bytes())
    assert peak > 4 * store.wal_cap
    reader.execute("COMMIT")
    reader.close()
    deadline = time.monotonic() + 5
    while store.wal_bytes() > store.wal_cap and time.monotonic() < deadline:
        time.sleep(0.02)
    wal_after = store.wal_bytes()
    assert wal_after <= store.wal_cap
    info = store.info()
    print(f"\n  WAL under a long reader: peak {peak / 1e6:.2f} MB, "
          f"{wal_after / 1e6:.2f} MB after it ended; file+WAL {info.file_bytes / 1e6:.2f} MB, "
          f"in use {info.size_bytes / 1e6:.2f} MB (limit 1.50 MB)")
    assert w.close(20) and w.failed == 0
    # the file is back within the size limit, give or take a cleanup interval of writes
    assert info.file_bytes <= 1_500_000 * 1.5
    assert integrity(store) == "ok"
    store.close()


@pytest.mark.parametrize("readonly", [True, False])
def test_checkpoint_never_waits_for_a_reader(tmp_path, readonly):
    store = filled(tmp_path, n=100)
    store.write_results(results(20, start=NOW - 60))
    reader = sqlite3.connect(store.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM exchanges").fetchone()
    store.write_results(results(20, start=NOW - 30))
    t0 = time.monotonic()
    assert store.checkpoint() is False                 # the reader keeps the WAL
    assert time.monotonic() - t0 < 1.0
    reader.execute("COMMIT")
    reader.close()
    if readonly:
        ro = SqliteStore(url(tmp_path), readonly=True)
        assert ro.checkpoint() is False and ro.maintain_wal() >= 0
        ro.close()
    assert store.checkpoint() is True and store.wal_bytes() == 0
    store.close()


def test_cli_store_vacuum(tmp_path, capsys, monkeypatch):
    import yaml

    from shadowproxy.cli import main as cli_main

    monkeypatch.setattr(connection, "VACUUM_ON_OPEN_MAX", 0)      # too large to switch
    monkeypatch.setattr(connection, "_warned_no_shrink", set())
    store = filled(tmp_path, n=300)
    store.cleanup(NOW, None, store.used_bytes() // 2)
    store.close()
    _make_legacy(tmp_path / "results.db")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "upstreams": {"primary": "http://127.0.0.1:9000", "candidate": "http://127.0.0.1:9001"},
        "store": {"url": url(tmp_path)}}))
    assert cli_main(["store", "vacuum", "-c", str(config)]) == 0
    assert "vacuumed, file and WAL" in capsys.readouterr().out
    store = SqliteStore(url(tmp_path), readonly=True)
    assert store.auto_vacuum == 2 and store.wal_bytes() == 0
    store.close()
