"""`make demo` works from a checkout: the demo finds its config, runs the proxy against
its upstreams, and its gate fails on the regression the demo candidate carries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg_server import require_postgres
from tests.servers import require


def test_the_demo_runs_and_its_gate_fails_on_the_regression(tmp_path: Path) -> None:
    env = dict(os.environ, DEMO_OUT=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "shadowproxy.demo"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "verdict: FAIL" in done.stdout
    assert "user/$.plan" in done.stdout or "$.plan" in done.stdout
    assert (tmp_path / "shadowproxy.db").exists()
    report = tmp_path / "report.html"
    assert report.exists() and report.stat().st_size > 10_000


@pytest.mark.server
def test_the_fleet_demo_runs_sidecars_and_comparators_on_redis_and_postgres(
        tmp_path: Path) -> None:
    require("redis-server", "redis-server")
    require_postgres()
    env = dict(os.environ, DEMO_OUT=str(tmp_path / "fleet"))
    done = subprocess.run([sys.executable, "-m", "shadowproxy.demo.fleet"], env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    assert "exit codes [0, 0, 0]" in out                  # two sidecars, the comparators
    assert "comparators 2" in out                         # two consumers in the group
    assert "(adds up)" in out and "DOES NOT ADD UP" not in out
    assert "verdict: FAIL" in out and "$.plan" in out     # check read the fleet's store
    assert (tmp_path / "fleet" / "report.html").stat().st_size > 10_000
