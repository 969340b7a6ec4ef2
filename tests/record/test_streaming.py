"""A replay streams its recordings: counted and checked first, then read again in
start order through a window of start times, files merged; memory is the window, not
the recordings."""

from __future__ import annotations

import io
import random
import tracemalloc
from pathlib import Path

from shadowproxy.models import ResponseRecord
from shadowproxy.record import goreplay
from shadowproxy.record.source import HOLD, Recordings


def _write(path: Path, starts: list[float], body_size: int = 0, tag: str = "") -> None:
    buf = io.BytesIO()
    for i, t in enumerate(starts):
        body = (b'{"i": %d, "pad": "' % i) + b"x" * body_size + b'"}'
        goreplay.write_exchange(buf, f"{tag}{i:023x}", t, "GET", f"/a/{tag}{i}",
                                [("Host", "h")], b"",
                                ResponseRecord(status=200, reason="OK", body=body,
                                               size=len(body), latency=0.001))
    path.write_bytes(buf.getvalue())


def test_requests_come_in_start_order_with_their_answers_across_files(tmp_path: Path
                                                                      ) -> None:
    """A file holds requests in the order they ended: starts up to a minute apart come
    out sorted, each with its answer, and two files are merged by start."""
    rnd = random.Random(3)
    t0 = 1_700_000_000.0
    a = [t0 + i for i in range(600)]
    written = sorted(a, key=lambda t: t + rnd.uniform(0, 60))      # ended order
    _write(tmp_path / "a.gor", written, tag="a")
    b = [t0 + 0.5 + 2 * i for i in range(300)]
    _write(tmp_path / "b.gor", b, tag="b")
    rec = Recordings([str(tmp_path / "a.gor"), str(tmp_path / "b.gor")])
    assert rec.total == 900 and not rec.masked
    got = list(rec)
    starts = [r.started for r in got]
    assert starts == sorted(a + b)
    assert all(r.response is not None and r.response.status == 200 for r in got)
    assert [r.id for r in rec] == [r.id for r in got]           # iterated again: read again


def test_memory_is_the_window_not_the_recording(tmp_path: Path) -> None:
    """16 MB of recorded exchanges a second apart: streaming them holds about HOLD
    seconds of them (~0.5 MB), not the file."""
    n, size = 4000, 4000
    _write(tmp_path / "big.gor", [1_700_000_000.0 + i for i in range(n)], body_size=size)
    assert (tmp_path / "big.gor").stat().st_size > n * size
    rec = Recordings([str(tmp_path / "big.gor")])
    tracemalloc.start()
    try:
        count = 0
        for _r in rec:
            count += 1
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    window = (HOLD + 10) * (size + 2000)
    assert peak < 4 * window < n * size / 4, (peak, window)
