"""GoReplay's file format both ways, HAR 1.2 read, and the replay of each: a file we
write is read back whole; a file written by hand from GoReplay's source
(``fixtures/goreplay-handwritten.gor``: ``protocol.go``'s ``payloadHeader`` "%c %s %d %d\\n"
and ``payloadSeparator`` "\\n🐵🙈🙉\\n", requests and chunked responses as GoReplay
captures them off the wire) and a browser's HAR export are replayed against a candidate
with a planted regression, and `check --run` names the field."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

from shadowproxy.models import ResponseRecord
from shadowproxy.record import goreplay
from shadowproxy.record.source import load
from tests.control.test_process import ROOT
from tests.record.apps import item_app
from tests.support import Upstream

FIXTURES = Path(__file__).parent / "fixtures"


def test_round_trip_of_what_we_write(tmp_path: Path) -> None:
    buf = io.BytesIO()
    answer = ResponseRecord(status=201, reason="Created",
                            headers=(("Content-Type", "application/json"),
                                     ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
                            body=b'{"ok": true}\n\n\xff', size=14, latency=0.0125)
    goreplay.write_exchange(buf, "ab" * 12, 1700000000.5, "POST", "/p/a%20b?x=1&y=",
                            [("Host", "h"), ("X-A", "1")], b"body\nwith lines", answer)
    path = tmp_path / "one.gor.gz"
    with gzip.open(path, "wb") as fh:           # a rotated, compressed file
        fh.write(buf.getvalue())
    (item,) = load([str(path)])
    assert item.id == "ab" * 12 and item.started == 1700000000.5
    assert item.target == "/p/a%20b?x=1&y="
    req = item.request
    assert (req.method, req.path, req.query) == ("POST", "/p/a%20b", "x=1&y=")
    assert req.headers == (("Host", "h"), ("X-A", "1")) and req.body == b"body\nwith lines"
    got = item.response
    assert got is not None
    assert (got.status, got.reason, got.headers, got.body) == \
        (201, "Created", answer.headers, answer.body)
    assert abs(got.latency - 0.0125) < 1e-9


def test_handwritten_goreplay_file_is_read() -> None:
    items = load([str(FIXTURES / "goreplay-handwritten.gor")])
    assert len(items) == 13
    assert [i.started for i in items] == sorted(i.started for i in items)
    first = items[0]
    assert first.target == "/api/items/0" and first.response is not None
    assert first.response.body == b'{"id": 0, "price": 10, "q": ""}'     # de-chunked
    assert abs(first.response.latency - 0.00183) < 1e-9
    post = items[-1]
    assert post.request.method == "POST" and post.request.body == b'{"price": 10}'
    assert post.response is None                # no original response recorded


def test_har_is_read() -> None:
    items = load([str(FIXTURES / "browser-export.har")])
    assert len(items) == 12
    assert items[3].target == "/api/items/3?q=h3"
    assert ("accept", "application/json") in items[3].request.headers
    assert not any(k.startswith(":") for k, _ in items[3].request.headers)
    resp = items[3].response
    assert resp is not None and resp.status == 200
    # exported decoded: the Content-Encoding the browser saw is not the body's any more
    assert all(k.lower() != "content-encoding" for k, _ in resp.headers)


async def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "shadowproxy", *args], cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ))


async def test_replay_goreplay_and_har_files(tmp_path: Path, store_url: str) -> None:
    """On both engines: each run's results apart, under its name, and apart from the
    live traffic's (a plain `check` sees none of them)."""
    cfg = tmp_path / "replay.yaml"
    cfg.write_text(f"""\
upstreams:
  primary: http://127.0.0.1:9
routes:
  - name: item
    match: /api/items/{{id}}
store:
  url: '{store_url}'
checks:
  - name: diff-rate
    max_diff_rate: 0.10
    min_samples: 10
""")
    candidate = await Upstream(item_app(12, accept=None)).start()
    try:
        gor = await _cli("replay", "-c", str(cfg), str(FIXTURES / "goreplay-handwritten.gor"),
                         "--candidate", candidate.url, "--run", "gor")
        har = await _cli("replay", "-c", str(cfg), str(FIXTURES / "browser-export.har"),
                         "--candidate", candidate.url, "--run", "har")
        # a run's name again: refused, not mixed into the earlier replay's verdict
        again = await _cli("replay", "-c", str(cfg), str(FIXTURES / "browser-export.har"),
                           "--candidate", candidate.url, "--run", "gor")
    finally:
        await candidate.stop()
    assert gor.returncode == 0, gor.stdout + gor.stderr
    assert "12 of 13 requests sent" in gor.stdout, gor.stdout
    # the POST: unsafe, and no route opts in (mirror_unsafe): not replayed, counted
    assert "not_eligible{method} 1" in gor.stdout, gor.stdout
    assert har.returncode == 0, har.stdout + har.stderr
    assert "12 of 12 requests sent" in har.stdout, har.stdout
    assert again.returncode == 2, again.stdout + again.stderr
    assert "run gor already holds the results of 1 earlier replay" in again.stderr
    for run in ("gor", "har"):
        check = await _cli("check", "-c", str(cfg), "--run", run)
        assert check.returncode == 1, check.stdout + check.stderr
        assert "$.price" in check.stdout and "compared 12" in check.stdout, check.stdout
    # a run's name mistyped: an error on both engines, not an inconclusive empty run
    typo = await _cli("check", "-c", str(cfg), "--run", "hra")
    assert typo.returncode == 2, typo.stdout + typo.stderr
    assert "no run hra in the store" in typo.stderr or "does not exist" in typo.stderr
    live = await _cli("check", "-c", str(cfg))
    if store_url.startswith("sqlite"):    # the runs have files of their own
        assert live.returncode == 2 and "does not exist" in live.stderr, live.stderr
        assert (tmp_path / "results.run-gor.db").exists()
    else:                                 # the run: instances are not read by default
        assert live.returncode == 3, live.stdout + live.stderr
        assert "compared 12" not in live.stdout and "(0 of 0)" in live.stdout, live.stdout
