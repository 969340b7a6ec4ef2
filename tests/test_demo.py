"""`make demo` works from a checkout: the demo finds its config, runs the proxy against
its upstreams, and its gate fails on the regression the demo candidate carries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
