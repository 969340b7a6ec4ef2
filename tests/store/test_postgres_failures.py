"""PostgreSQL refusing writes, as the SQLite tests of test_store_failures.py do it: a
database turned read-only under a running writer, and a full disk. Either way the
writer never blocks a caller, drops and counts what it cannot write, logs once per
cause, stays alive, and writes again by itself when the database takes writes again.

Read-only: ``ALTER DATABASE … SET default_transaction_read_only = on`` and the
database's sessions ended, as a DBA or a failover to a standby would leave it (the
writer reconnects, then every write is refused with SQLSTATE 25006). Full disk: the
database lives in a tablespace on a tmpfs of its own, shrunk to a little more than it
holds (PostgreSQL then fails with SQLSTATE 53100, "No space left on device"), then
grown again. Mounting needs root: under CI=true a machine that cannot mount fails.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowproxy.config import StoreConfig
from shadowproxy.store import StoreWriter, open_store
from tests.pg_server import PgServer, require_postgres, start_postgres
from tests.store_helpers import diff, response, result

pytestmark = pytest.mark.server


def cfg(**kw: Any) -> StoreConfig:
    # transactions of exactly 10 (max_batch): a failure drops a known number
    base: dict[str, Any] = {"batch": 10, "max_batch": 10, "flush_interval": 0.01,
                            "queue": 100000,
                            "samples_per_field": 5, "retention_age": 0.0,
                            "retention_size": 0}
    base.update(kw)
    return StoreConfig(**base)


def big_result(i: int) -> Any:
    blob = os.urandom(3000).hex()
    return result("diff", diffs=[diff(f"$.f{i}", blob, blob[::-1])],
                  primary=response(200, {"blob": blob}))


def errors_for(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and text in r.getMessage()]


def admin(server: PgServer, sql: str) -> list[tuple[Any, ...]]:
    import psycopg
    with psycopg.connect(server.url_for("postgres"), autocommit=True) as c:
        cur = c.execute(sql)
        return list(cur.fetchall()) if cur.description else []


def end_sessions(server: PgServer, database: str) -> None:
    admin(server, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  f"WHERE datname = '{database}' AND pid <> pg_backend_pid()")


def stored(store: Any) -> tuple[int, int]:
    row = store._read("SELECT count(*), count(DISTINCT id) FROM exchanges")[0]
    return int(row[0]), int(row[1])


def test_postgres_read_only_database_drops_counts_logs_once_and_recovers(
        postgres: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="shadowproxy.store")
    url = postgres.create_database()
    db = url.rsplit("/", 1)[1]
    store = open_store(url, samples_per_field=5)
    w = StoreWriter(store, cfg())
    try:
        assert sum(w.submit(big_result(i)) for i in range(20)) == 20
        assert w.flush(30) and w.acknowledged == 20
        admin(postgres, f"ALTER DATABASE {db} SET default_transaction_read_only = on")
        end_sessions(postgres, db)
        t = time.monotonic()
        assert sum(w.submit(big_result(i)) for i in range(20, 60)) == 40
        assert time.monotonic() - t < 1.0        # submit never waits for the store
        assert w.flush(60)
        assert w.failed == 40 and w.acknowledged == 20
        assert w.alive
        msgs = errors_for(caplog, "read-only transaction")
        assert len(msgs) == 1, msgs              # one line per cause, rate-limited
        assert "dropped 10 results" in msgs[0]
        # writable again: the writer resumes by itself, nothing stored twice
        admin(postgres, f"ALTER DATABASE {db} RESET default_transaction_read_only")
        end_sessions(postgres, db)
        assert sum(w.submit(big_result(i)) for i in range(60, 80)) == 20
        assert w.flush(60)
        assert w.acknowledged == 40 and w.failed == 40
        assert stored(store) == (40, 40)
    finally:
        w.close(10)
        store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own (8 MiB to start), owned by the server's system user."""
    mnt = Path(f"/tmp/sp-tmpfs-{os.getpid()}-{time.monotonic_ns()}")
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs",
                           str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        mnt.rmdir()
        why = f"cannot mount a tmpfs for a full disk: {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(mnt, pg.pw_uid, pg.pw_gid)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


def resize(mnt: Path, size_kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(mnt)], check=True,
                   capture_output=True)


def used_kib(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


def test_postgres_full_disk_drops_counts_logs_once_and_recovers(
        tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="shadowproxy.store")
    server = start_postgres(tmp_path, bindir=require_postgres())
    try:
        admin(server, f"CREATE TABLESPACE small LOCATION '{small_disk}'")
        admin(server, "CREATE DATABASE onsmall TABLESPACE small")
        store = open_store(server.url_for("onsmall"), samples_per_field=5)
        w = StoreWriter(store, cfg())
        try:
            assert sum(w.submit(big_result(i)) for i in range(10)) == 10
            assert w.flush(30) and w.acknowledged == 10
            resize(small_disk, used_kib(small_disk) + 1024)     # ~1 MiB of room left
            t = time.monotonic()
            accepted = sum(w.submit(big_result(i)) for i in range(10, 810))
            assert time.monotonic() - t < 2.0
            assert accepted == 800
            assert w.flush(120)
            assert w.failed > 0 and w.acknowledged > 10
            assert w.acknowledged + w.failed == 810
            assert w.alive
            msgs = errors_for(caplog, "No space left on device")
            assert len(msgs) == 1, msgs
            assert "dropped 10 results" in msgs[0] and "free disk space" in msgs[0]
            # what was acknowledged is exactly what is stored
            assert stored(store) == (w.acknowledged, w.acknowledged)
            # room again: writing resumes
            resize(small_disk, 256 * 1024)
            before = w.acknowledged
            assert sum(w.submit(big_result(i)) for i in range(810, 830)) == 20
            assert w.flush(60)
            assert w.acknowledged == before + 20
            assert stored(store) == (w.acknowledged, w.acknowledged)
        finally:
            w.close(10)
            store.close()
        admin(server, "DROP DATABASE onsmall")
        admin(server, "DROP TABLESPACE small")
    finally:
        server.stop()


def test_a_connection_left_in_a_pipeline_or_transaction_is_replaced(
        postgres: PgServer) -> None:
    """A server gone in the middle of a batch's pipeline can leave a connection that is
    not marked broken but refuses every statement: the store replaces it."""
    store = open_store(postgres.create_database())
    try:
        conn = store._conn
        left_open = conn.pipeline()                  # as a write cut off mid-pipeline
        left_open.__enter__()
        assert store.write_results([big_result(i) for i in range(3)]) == 3
        assert store._conn is not conn
        store._conn.execute("BEGIN")                 # a transaction left behind
        assert store.write_results([big_result(i) for i in range(3, 5)]) == 2
        assert stored(store) == (5, 5)
    finally:
        store.close()


def test_two_writers_under_one_instance_name_lose_no_sketch(postgres: PgServer) -> None:
    """Two writers labelled with the same instance (a misconfiguration, or two pools
    of one config) beginning the same minutes at once: every latency ends up in the
    minute's sketch (the rows are made before they are locked), as many values as the
    counters count."""
    import threading

    from shadowproxy.store.sketch import Sketch

    url = postgres.create_database()
    stores = [open_store(url, instance="pod-a") for _ in range(2)]
    t0 = float(int(time.time() // 60 * 60)) - 3600
    errors: list[BaseException] = []
    together = threading.Barrier(2)

    def write(k: int, store: Any) -> None:
        try:
            for b in range(15):
                together.wait(10)           # both begin minute b at once
                store.write_results([result("match", id=f"w{k}-{b}-{i}",
                                            started=t0 + 60 * b + i * 0.1)
                                     for i in range(40)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k, s)) for k, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        pairs = stores[0]._read("SELECT coalesce(sum(latency_pairs), 0) FROM rollups")[0][0]
        blobs = stores[0]._read("SELECT data FROM rollup_blobs WHERE kind = 'primary'")
        assert int(pairs) == 2 * 15 * 40
        assert sum(Sketch.from_bytes(bytes(b)).count for (b,) in blobs) == int(pairs)
        assert stores[0]._read("SELECT count(*) FROM rollup_blobs WHERE data = ''") == [(0,)]
    finally:
        for s in stores:
            s.close()
