"""``shadowproxy check --watch`` against a real ``shadowproxy run``: real upstreams on
loopback (the demo's services), real worker and shadow processes, the real store.

A/A: the candidate is a second copy of the primary (volatile fields: a millisecond
timestamp and a request id in every response): the watch exits 0. A/B: the demo's
candidate, which gives ~4 % of users another plan: the watch exits 1 naming the
endpoint and the field. Load runs until the watch has exited."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from shadowproxy.demo.upstreams import make_app
from tests.control.test_process import Running
from tests.support import Upstream, free_port

ROOT = Path(__file__).resolve().parents[2]
CHECKS = """\
checks:
  - name: correctness
    max_diff_rate: 0.01
    forbid_kinds: [removed, type_changed]
  - name: reliability
    max_error_rate_increase: 0.02
"""


def _config(path: Path, ups: dict[str, Upstream], db: Path, listen: int, admin: int) -> None:
    path.write_text(f"""\
listen: 127.0.0.1:{listen}
workers: 2
admin: {{listen: 127.0.0.1:{admin}}}
upstreams:
  primary: {ups['primary'].url}
  candidate: {ups['candidate'].url}
  secondary: {ups['secondary'].url}
timeouts: {{shutdown: 5s}}
mirror: {{sample: 1.0, timeout: 2s}}
routes:
  - name: user
    match: /api/users/{{id}}
store:
  url: sqlite:///{db}
{CHECKS}""")


async def _one_diff_rate(cfg_path: Path, db: Path, admin: int, endpoint: str) -> list[float]:
    """The diff rate of ``endpoint`` over one window of the store, as ``check``,
    ``report`` and the admin API (which the UI shows) give it."""
    from shadowproxy.checks import run
    from shadowproxy.config import load
    from shadowproxy.report.data import build_report
    from shadowproxy.store import open_store

    until = float(int(time.time()) - 1)
    cfg = load(cfg_path)
    rep = run(cfg, since=0.0, until=until)
    sub = next(s for c in rep.checks for s in c.subchecks if s.metric == "max_diff_rate")
    check_rate = next(u.value for u in sub.endpoints if u.endpoint == endpoint)
    store = open_store(f"sqlite:///{db}", readonly=True)
    try:
        doc = build_report(store, since=0.0, until=until, checks=None)
    finally:
        store.close()
    report_rate = next(e["diff_rate"] for e in doc["endpoints"] if e["endpoint"] == endpoint)
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{admin}/api/v1/endpoints?from=0&to={until}") as r:
        api = await r.json()
    api_ep = next(e for e in api["endpoints"] if e["endpoint"] == endpoint)
    # the request accounting beside it covers the same window (the stored outcomes, not
    # this process's live counters): the compared requests are the compared exchanges,
    # up to results still on their way to the store when the window was read
    counters = api_ep["counters"]
    assert abs(counters["compared"] - api_ep["exchanges"]) <= 0.02 * api_ep["exchanges"], \
        api_ep
    assert counters["mirrored"] >= counters["compared"] > 0, api_ep
    return [check_rate, report_rate, api_ep["diff_rate"]]


async def _watch_under_load(tmp_path: Path, candidate_role: str, rates: list | None = None
                            ) -> tuple[int, str, int]:
    """→ (the watch's exit code, its output, requests sent); ``rates``: filled with
    :func:`_one_diff_rate` once the load has stopped."""
    ups = {"primary": await Upstream(make_app("primary")).start(),
           "candidate": await Upstream(make_app(candidate_role)).start(),
           "secondary": await Upstream(make_app("secondary")).start()}
    listen, admin = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    _config(cfg, ups, tmp_path / "r.db", listen, admin)
    proxy = Running(cfg, listen, admin, tmp_path / "log")
    sent = 0
    try:
        await proxy.ready()
        watch = subprocess.Popen(
            [sys.executable, "-m", "shadowproxy", "check", "-c", str(cfg), "--from", "now",
             "--watch", "--interval", "1s", "--timeout", "90s"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> None:
                async with s.get(f"http://127.0.0.1:{listen}/api/users/{i % 200}") as r:
                    await r.read()
                    assert r.status == 200

            t0 = time.monotonic()
            while watch.poll() is None and time.monotonic() - t0 < 120:
                await asyncio.gather(*(one(sent + i) for i in range(20)))
                sent += 20
        code = watch.wait(30)
        out = watch.stdout.read().decode() if watch.stdout else ""
        if rates is not None:
            await asyncio.sleep(3.0)           # the last results reach the store
            # serve the stored run from a new process (its live counters start at 0)
            assert proxy.stop() == 0
            proxy = Running(cfg, listen, admin, tmp_path / "log2")
            await proxy.ready()
            rates.extend(await _one_diff_rate(cfg, tmp_path / "r.db", admin, "user"))
    finally:
        assert proxy.stop() == 0
        for u in ups.values():
            await u.stop()
    return code, out, sent


async def test_watch_exits_0_on_a_real_aa_run(tmp_path: Path) -> None:
    code, out, sent = await _watch_under_load(tmp_path, "secondary")
    assert code == 0, out
    lines = out.splitlines()
    looks = [line for line in lines if line.startswith("look ")]
    assert looks and looks[-1].split(": ")[1].startswith("PASS"), out
    assert any("waiting for data" in line for line in looks[:-1]), out   # it did wait
    assert lines[-1].startswith("verdict: PASS"), out
    print(f"A/A: PASS after {len(looks)} looks, {sent} requests sent")


async def test_watch_exits_1_on_a_real_ab_run(tmp_path: Path) -> None:
    """...and, served again by a new process, the same store and window give one diff
    rate in check, report and the admin API (the UI's endpoints table shows the API's
    figure), with the window's request counts beside it."""
    rates: list[float] = []
    code, out, sent = await _watch_under_load(tmp_path, "candidate", rates)
    assert code == 1, out
    looks = [line for line in out.splitlines() if line.startswith("look ")]
    assert "FAIL" in looks[-1] and "correctness" in looks[-1], out
    assert "[user]" in looks[-1], out          # the endpoint (the route's name)
    assert "$.plan" in out and "verdict: FAIL" in out, out
    print(f"A/B: FAIL after {len(looks)} looks, {sent} requests sent; diff rates {rates}")
    assert rates[0] > 0.01 and rates[0] == rates[1] == rates[2], rates
