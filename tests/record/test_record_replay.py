"""Record during a real `shadowproxy run`, then replay the recording against a candidate
with a planted regression and against a copy of primary: `check --run` fails naming the
field for the first and passes for the second. The recording holds none of the planted
secrets; the replay injects a test credential where the recording has a mask."""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from shadowproxy.record import goreplay
from shadowproxy.record.source import load
from tests.control.test_process import ROOT, Running
from tests.record.apps import COOKIE, SECRET, TEST_CRED, item_app
from tests.support import Upstream, free_port

N = 60
QUERY_SECRET = "qtok-93c1d2e4f5a6b7c8"
KEY = "record-replay-test-key"


async def _cli(*args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """The command in a thread: the test's upstreams answer on this loop meanwhile."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "shadowproxy", *args], cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})})


def _config(path: Path, primary: Upstream, rec_dir: Path, store: Path,
            candidate: str | None = None) -> tuple[Path, int, int]:
    listen, admin = free_port(), free_port()
    cand = f"\n  candidate: {candidate}" if candidate else ""
    path.write_text(f"""\
listen: 127.0.0.1:{listen}
workers: 2
admin: {{listen: 127.0.0.1:{admin}}}
upstreams:
  primary: {primary.url}{cand}
timeouts: {{shutdown: 10s}}
redact: {{key_env: SP_TEST_REDACT_KEY}}
record:
  dir: {rec_dir}
  sample: 1.0
routes:
  - name: item
    match: /api/items/{{id}}
store:
  url: sqlite:///{store}
checks:
  - name: diff-rate
    max_diff_rate: 0.10
    min_samples: 10
""")
    return path, listen, admin


async def _traffic(port: int, n: int) -> int:
    ok = 0
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            async with s.get(f"http://127.0.0.1:{port}/api/items/{i % 20}?q=x{i}"
                             f"&token={QUERY_SECRET}",
                             headers={"Authorization": f"Bearer {SECRET}"}) as r:
                body = await r.json()
                ok += r.status == 200 and body["price"] == 10
    return ok


async def test_record_live_then_replay_and_check(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SP_TEST_REDACT_KEY", KEY)
    rec_dir = tmp_path / "rec"
    primary = await Upstream(item_app(10)).start()
    cfg, listen, admin = _config(tmp_path / "live.yaml", primary, rec_dir, tmp_path / "live.db")
    run = Running(cfg, listen, admin, tmp_path / "live.log")
    try:
        await run.ready()
        assert await _traffic(listen, N) == N          # clients got primary's answers
        await run.wait_total(N)
        # the shadow process's writer counts what it wrote; /metrics shows it
        metrics = ""
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                    metrics = await r.text()
                if f"shadowproxy_recorded_total {N}.0" in metrics:
                    break
                await asyncio.sleep(0.1)
        assert f"shadowproxy_recorded_total {N}.0" in metrics, metrics[-2000:]
        assert run.stop() == 0, run.log.read_text()[-3000:]
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        await primary.stop()

    files = sorted(glob.glob(str(rec_dir / "shadowproxy-*.gor")))
    assert files, run.log.read_text()[-2000:]
    raw = b"".join(Path(f).read_bytes() for f in files)
    # GoReplay's format: a header line per payload and its separator
    assert raw.count(goreplay.SEPARATOR) == 2 * N
    assert raw.startswith(b"1 ")
    # no planted secret in any recording file; masks stand in their place
    for secret in (SECRET, COOKIE, QUERY_SECRET):
        assert secret.encode() not in raw
    assert b"Authorization: Bearer [redacted:" in raw
    items = load(files)
    assert len(items) == N
    assert all(i.response is not None and i.response.status == 200 for i in items)
    assert sorted(i.target.split("&")[0] for i in items) == \
        sorted(f"/api/items/{i % 20}?q=x{i}" for i in range(N))
    assert all("&token=%5Bredacted%3A" in i.target or "&token=[redacted:" in i.target
               for i in items), items[0].target

    # replay: a candidate with a regression, then a copy of primary; both accept only
    # the test credential the replay injects where the recording has a mask
    bad = await Upstream(item_app(12, accept=TEST_CRED)).start()
    good = await Upstream(item_app(10, accept=TEST_CRED)).start()
    env = {"SP_TEST_REDACT_KEY": KEY, "TEST_TOKEN": TEST_CRED}
    try:
        for name, cand in (("bad", bad), ("good", good)):
            out = await _cli("replay", "-c", str(cfg), *files, "--candidate", cand.url,
                       "--run", name, "--header", "Authorization: Bearer ${TEST_TOKEN}",
                       "--concurrency", "8", env=env)
            assert out.returncode == 0, out.stdout + out.stderr
            assert f"{N} of {N} requests sent" in out.stdout, out.stdout
            assert "replay: " in out.stderr                    # plain progress lines
    finally:
        await bad.stop()
        await good.stop()
    check = await _cli("check", "-c", str(cfg), "--run", "bad", env=env)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "$.price" in check.stdout and "FAIL" in check.stdout, check.stdout
    check = await _cli("check", "-c", str(cfg), "--run", "good", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    report = await _cli("report", "-c", str(cfg), "--run", "bad", "--format", "md", env=env)
    assert report.returncode in (0, 1), report.stderr
    assert "$.price" in report.stdout
    # the live store was not touched by the replays: the runs have files of their own
    assert (tmp_path / "live.run-bad.db").exists() and (tmp_path / "live.run-good.db").exists()
