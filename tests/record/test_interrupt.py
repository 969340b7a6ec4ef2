"""Ctrl-C during a replay: no more requests go, those sent are awaited, compared and
stored, the summary says so and the exit code is 130; ``check --run`` then reads every
request that was sent."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
from pathlib import Path

from shadowproxy.models import ResponseRecord
from shadowproxy.record import goreplay
from tests.control.test_process import ROOT
from tests.record.apps import item_app
from tests.record.test_formats import _cli
from tests.support import Upstream

N = 300


def _recording(path: Path) -> None:
    buf = io.BytesIO()
    for i in range(N):
        body = b'{"id": %d, "price": 10, "q": ""}' % i
        goreplay.write_exchange(buf, f"{i:024x}", 1700000000.0 + i / 100, "GET",
                                f"/api/items/{i}", [("Host", "shop")], b"",
                                ResponseRecord(status=200, reason="OK", body=body,
                                               size=len(body), latency=0.001,
                                               headers=(("Content-Type",
                                                         "application/json"),)))
    path.write_bytes(buf.getvalue())


async def test_sigint_stops_sending_and_keeps_what_was_sent(tmp_path: Path) -> None:
    cfg = tmp_path / "replay.yaml"
    cfg.write_text(f"""\
upstreams:
  primary: http://127.0.0.1:9
store:
  url: sqlite:///{tmp_path}/results.db
checks:
  - name: diff-rate
    max_diff_rate: 0.10
    min_samples: 1
""")
    rec = tmp_path / "many.gor"
    _recording(rec)
    candidate = await Upstream(item_app(12, accept=None)).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shadowproxy", "replay", "-c", str(cfg), str(rec),
            "--candidate", candidate.url, "--run", "cut", "--rate", "20/s", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ))
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert first.startswith(b"replay: 1/300 done"), first    # sending has begun
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await candidate.stop()
    text = out.decode()
    assert proc.returncode == 130, text + err.decode()
    m = re.search(r"run cut: (\d+) of 300 requests sent", text)
    assert m is not None, text
    sent = int(m.group(1))
    assert 0 < sent < N, text
    assert f"interrupted: {N - sent} of 300 requests were not sent" in text, text
    assert "SIGINT: no more requests are sent" in err.decode()
    assert "Traceback" not in err.decode(), err.decode()
    check = await _cli("check", "-c", str(cfg), "--run", "cut")
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"compared {sent}" in check.stdout, check.stdout   # every one sent is stored
