"""Shutdown while the shadow process is starved of CPU: what the workers handed to it
still ends in a counted outcome (docs/architecture.md, "Accounting")."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

from shadowproxy.stats import FINAL
from tests.control.test_process import Running, _load, _named, _write_config
from tests.support import free_port


async def test_items_a_stalled_shadow_process_had_not_read_are_counted(upstreams, tmp_path: Path
                                                                       ) -> None:
    listen, admin, db = free_port(), free_port(), tmp_path / "r.db"
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, upstreams, db, listen, admin)
    run = Running(cfg, listen, admin, tmp_path / "log")
    await run.ready()
    shadows = _named(run.proc.pid, "shadowproxy-s")
    assert shadows
    # stopped, as a shadow process starved of CPU is: it reads nothing, the kernel's
    # buffers of the workers' links fill and the rest waits in the workers' transports
    for pid in shadows:
        os.kill(pid, signal.SIGSTOP)
    try:
        try:
            ok = await _load(listen, 300, conc=30)
        finally:
            run.proc.send_signal(signal.SIGTERM)
        # nothing is in flight: the workers drain at once, then wait for their links to
        # be written out (they used to exit with those bytes still unwritten)
        for _ in range(30):
            if not _named(run.proc.pid, "shadowproxy-w"):
                break
            await asyncio.sleep(0.05)
    finally:
        for pid in shadows:
            os.kill(pid, signal.SIGCONT)
    code = await asyncio.get_running_loop().run_in_executor(None, run.proc.wait, 60)
    assert code == 0, run.log.read_text()
    con = sqlite3.connect(db)
    counted = dict(con.execute("select outcome, sum(count) from outcomes group by outcome"))
    con.close()
    assert ok == 300
    assert sum(counted.get(k, 0) for k in FINAL) == 300, counted
