"""Crash safety: a writer killed with SIGKILL loses no acknowledged result.

A child process writes results through a StoreWriter in a loop and prints the
acknowledged count after every commit. The test reads some acknowledgements, kills
the child with SIGKILL mid-stream, and checks that the database is intact and holds
at least every acknowledged result (WAL + synchronous=NORMAL: a committed transaction
survives the death of the process). Three rounds on the same file also show that a
store left by a killed writer opens and takes writes again.
"""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(os.path.dirname(HERE), "store_helpers.py")


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run_and_kill(db: str, want_acks: int, *extra: str) -> int:
    """Start the writer (on an SQLite file, or a store URL; ``extra``: the helper's
    PREFIX START), wait for ``want_acks`` commits, SIGKILL it; → last ack read."""
    url = db if "://" in db else f"sqlite:///{db}"
    proc = subprocess.Popen([sys.executable, HELPER, "crash-writer", url, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
    acks: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(acks) < want_acks:
            left = deadline - time.monotonic()
            assert left > 0, "the writer did not acknowledge in time"
            try:
                line = q.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, "writer exited: " + proc.stderr.read()
            acks.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # acknowledgements printed before death count too
    while True:
        try:
            line = q.get(timeout=2)
        except queue.Empty:
            break
        if line is None:
            break
        acks.append(int(line))
    assert acks == sorted(acks) and acks[-1] > 0
    return acks[-1]


def test_kill_9_keeps_every_acknowledged_result(tmp_path):
    db = str(tmp_path / "crash.db")
    total_acked = 0
    for round_, want in enumerate((5, 30, 12)):
        total_acked += run_and_kill(db, want)
        c = sqlite3.connect(db)
        try:
            assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n = c.execute("SELECT count(*) FROM exchanges").fetchone()[0]
            assert n >= total_acked, f"round {round_}: {n} rows < {total_acked} acknowledged"
            # differences of every stored exchange are there too (same transaction)
            diff_ex = c.execute("SELECT count(*) FROM exchanges WHERE verdict='diff'").fetchone()[0]
            assert c.execute("SELECT count(*) FROM differences").fetchone()[0] == 2 * diff_ex
        finally:
            c.close()
