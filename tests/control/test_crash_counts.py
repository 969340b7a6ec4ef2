"""Counts never contradict the stored exchanges, even after kill -9 of the control process.

The real ``shadowproxy run`` under load; the control process (comparator, store
writer) is killed. The store's outcome counts and its exchanges were written at
most a transaction of results apart (a second of traffic or a store batch), so what
the crash leaves of one and the other differs by about that; the next run records
the unclean stop as ``incident{unclean_stop}`` and says so in its log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

from tests.control.test_process import Running, _load, _named, _write_config
from tests.support import free_port


def _stored(db: Path) -> tuple[int, int, int]:
    """(exchanges, the outcome rows' count of compared + candidate errors, incidents)."""
    con = sqlite3.connect(db)
    try:
        ex = con.execute("select count(*) from exchanges").fetchone()[0]
        judged = con.execute("select coalesce(sum(count), 0) from outcomes where outcome in "
                             "('compared', 'candidate_error', 'candidate_timeout')"
                             ).fetchone()[0]
        incidents = con.execute("select coalesce(sum(count), 0) from outcomes where "
                                "outcome = 'incident' and reason = 'unclean_stop'"
                                ).fetchone()[0]
    finally:
        con.close()
    return ex, judged, incidents


async def test_kill_9_of_the_control_process_leaves_counts_and_exchanges_together(
        upstreams, tmp_path: Path) -> None:
    listen, admin, db = free_port(), free_port(), tmp_path / "r.db"
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, upstreams, db, listen, admin)
    run = Running(cfg, listen, admin, tmp_path / "log")
    await run.ready()
    load = asyncio.create_task(_load(listen, 20000, conc=16, refused_ok=True))
    t0 = time.monotonic()
    stored = 0
    for _ in range(200):
        await asyncio.sleep(0.05)
        stored = (await run.outcomes())["stored"]
        if stored > 1500 and time.monotonic() - t0 > 3.0:
            break
    elapsed = time.monotonic() - t0
    pids = _named(run.proc.pid, "shadowproxy-")
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait(10)
    load.cancel()
    await asyncio.gather(load, return_exceptions=True)
    # the workers and shadow processes go when the control process is gone
    for _ in range(200):
        if not any(os.path.exists(f"/proc/{p}") and
                   Path(f"/proc/{p}/stat").read_text().split()[2] != "Z" for p in pids):
            break
        await asyncio.sleep(0.05)
    exchanges, judged, incidents = _stored(db)
    assert exchanges >= stored > 0 and judged > 0
    # at most a transaction apart (docs/architecture.md): the writer takes one when
    # store.batch (1,000) results wait or a second after the oldest, and the counts of
    # what arrives while it is written go ahead of it too: two transactions' worth is
    # the bound, a second of traffic or a batch, whichever is more
    rate = max(exchanges, judged) / elapsed    # judged per second of the run
    bound = 2 * max(1000.0, rate * 1.0)
    assert abs(exchanges - judged) <= bound, (exchanges, judged, rate)
    assert incidents == 0

    # the next run on the same store records the unclean stop, and stops cleanly itself
    listen2, admin2 = free_port(), free_port()
    cfg2 = tmp_path / "c2.yaml"
    _write_config(cfg2, upstreams, db, listen2, admin2)
    run2 = Running(cfg2, listen2, admin2, tmp_path / "log2")
    await run2.ready()
    assert run2.stop() == 0
    assert "ended without a clean stop" in (tmp_path / "log2").read_text()
    assert _stored(db)[2] == 1
    # a third run after a clean stop records nothing more
    run3 = Running(cfg2, listen2, admin2, tmp_path / "log3")
    await run3.ready()
    assert run3.stop() == 0
    assert "ended without a clean stop" not in (tmp_path / "log3").read_text()
    assert _stored(db)[2] == 1
