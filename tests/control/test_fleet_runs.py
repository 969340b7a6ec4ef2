"""Runs of a fleet's sidecars on one PostgreSQL store: a sidecar that starts while
another serves does not take the other's open run for a crash of its own (it used to
record ``incident{unclean_stop}`` and warn in every fleet, ``make demo-fleet``
included); a run of its own that was killed is still found."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.control.test_process import Running, _write_config
from tests.support import free_port

pytestmark = pytest.mark.server


def _config(path: Path, upstreams: Any, pg_url: str, instance: str) -> tuple[int, int]:
    listen, admin = free_port(), free_port()
    _write_config(path, upstreams, Path("unused.db"), listen, admin,
                  extra=f"instance: {instance}\n")
    path.write_text(path.read_text().replace("url: sqlite:///unused.db",
                                             f"url: {pg_url}\n  flush_interval: 100ms"))
    return listen, admin


def _runs_started(pg_url: str, instance: str) -> int:
    with psycopg.connect(pg_url) as con:
        row = con.execute("SELECT coalesce(sum(count), 0) FROM outcomes WHERE outcome = "
                          "'run' AND reason = 'started' AND instance = %s",
                          (instance,)).fetchone()
    return int(row[0]) if row else 0


def _incidents(pg_url: str) -> int:
    with psycopg.connect(pg_url) as con:
        row = con.execute("SELECT coalesce(sum(count), 0) FROM outcomes WHERE "
                          "outcome = 'incident' AND reason = 'unclean_stop'").fetchone()
    return int(row[0]) if row else 0


async def test_a_sidecar_starting_beside_another_records_no_unclean_stop(
        upstreams: Any, pg_url: str, tmp_path: Path) -> None:
    a_cfg, b_cfg = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a = Running(a_cfg, *_config(a_cfg, upstreams, pg_url, "sidecar-a"), tmp_path / "a.log")
    await a.ready()
    b = Running(b_cfg, *_config(b_cfg, upstreams, pg_url, "sidecar-b"), tmp_path / "b.log")
    await b.ready()
    assert b.stop() == 0 and a.stop() == 0
    assert "ended without a clean stop" not in (tmp_path / "b.log").read_text()
    assert _incidents(pg_url) == 0

    # sidecar-b killed: its next run finds that one, and only that one
    b = Running(b_cfg, *_config(b_cfg, upstreams, pg_url, "sidecar-b"), tmp_path / "b2.log")
    await b.ready()
    for _ in range(200):                # its start is in the store before the kill
        if _runs_started(pg_url, "sidecar-b") == 2:
            break
        await asyncio.sleep(0.05)
    b.stop(signal.SIGKILL)
    b = Running(b_cfg, *_config(b_cfg, upstreams, pg_url, "sidecar-b"), tmp_path / "b3.log")
    await b.ready()
    assert b.stop() == 0
    assert "the store says 1 run(s) before this one ended without a clean stop" in \
        (tmp_path / "b3.log").read_text()
    assert _incidents(pg_url) == 1
