"""The recording writer's thread: rotation by size, gzip on rotation, keep by size, a
full disk (Linux's /dev/full: every write fails with ENOSPC) logged once and counted,
a full queue counted; and the replay's pacing."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import os
from pathlib import Path

import pytest

from shadowproxy.config import KeepConfig, RecordConfig, RedactConfig, RotateConfig
from shadowproxy.models import ResponseRecord
from shadowproxy.record.hook import RECORD_FIELDS
from shadowproxy.record.source import load
from shadowproxy.record.writer import RecordWriter
from shadowproxy.redact import Redactor
from shadowproxy.replay.pacing import offsets, parse_rate, parse_speed
from shadowproxy.stats import Stats


def _item(i: int, secret: str = "tok-abcdef123456") -> tuple[object, ...]:
    answer = ResponseRecord(status=200, reason="OK",
                            headers=(("Content-Type", "application/json"),),
                            body=b'{"n": %d, "pad": "%s"}' % (i, b"x" * 400), size=420,
                            latency=0.01)
    return ("r", 1700000000.0 + i, "GET", f"/a/{i}?token={secret}",
            [("Authorization", f"Bearer {secret}")], b"", RECORD_FIELDS(answer), "GET /a")


def _writer(tmp_path: Path, stats: Stats, **kw: object) -> RecordWriter:
    cfg = RecordConfig(dir=str(tmp_path), sample=1.0, queue=int(kw.pop("queue", 1000)),  # type: ignore[call-overload]
                       rotate=RotateConfig(size=4096, age=3600, compress=True),
                       keep=KeepConfig(age=86400, size=int(kw.pop("keep", 10**9))))  # type: ignore[call-overload]
    return RecordWriter(cfg, Redactor(RedactConfig(), b"k" * 32), "t", stats, **kw)  # type: ignore[arg-type]


async def test_rotation_compression_and_masks(tmp_path: Path) -> None:
    stats = Stats()
    w = _writer(tmp_path, stats)
    w.start()
    for i in range(40):
        assert w.offer(_item(i))
    await w.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) > 3 and all(f.endswith(".gor.gz") for f in files), files
    assert stats.total("recorded") == 40
    items = load([str(tmp_path / f) for f in files])
    assert sorted(int(i.request.path.rsplit("/", 1)[1]) for i in items) == list(range(40))
    for f in files:
        with gzip.open(tmp_path / f) as fh:
            data = fh.read()
        assert b"tok-abcdef123456" not in data and b"[redacted:" in data


async def test_keep_by_size_deletes_the_oldest(tmp_path: Path) -> None:
    # another shadow process's file, still being written: never deleted under it
    other = tmp_path / "shadowproxy-pod-s1-20200101T000000Z.gor"
    other.write_bytes(b"x" * 1000)
    os.utime(other, (1e9, 1e9))
    stats = Stats()
    w = _writer(tmp_path, stats, keep=4000)
    w.start()
    for i in range(40):
        w.offer(_item(i))
    await w.close()
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert 1000 < total <= 4000
    assert other.exists()
    assert stats.total("recorded") == 40


async def test_full_disk_is_logged_once_and_counted(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    stats = Stats()
    w = _writer(tmp_path, stats, opener=lambda _p: open("/dev/full", "wb", buffering=0))  # noqa: SIM115
    w.start()
    with caplog.at_level(logging.ERROR, logger="shadowproxy.record"):
        for i in range(20):
            w.offer(_item(i))
            await asyncio.sleep(0.001)
        await w.close()
    assert stats.total("record_dropped", "disk_full") == 20
    assert stats.total("recorded") == 0
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    stats = Stats()
    w = _writer(tmp_path, stats, queue=5)      # not started: nothing drains the queue
    results = [w.offer(_item(i)) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    assert stats.total("record_dropped", "queue_full") == 3


def test_pacing() -> None:
    assert parse_speed("2x") == 2.0 and parse_speed("0.5") == 0.5
    assert parse_rate("500/s") == 500.0 and parse_rate("120/m") == 2.0
    with pytest.raises(ValueError):
        parse_rate("fast")
    started = [100.0, 100.5, 101.0, 103.0]
    assert offsets(started, speed=2.0) == [0.0, 0.25, 0.5, 1.5]     # the spacing, halved
    assert offsets(started, rate=4.0) == [0.0, 0.25, 0.5, 0.75]
    assert offsets(started) is None


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_lines_otherwise() -> None:
    from shadowproxy.replay.progress import Progress
    tty = _Terminal()
    bar = Progress(200, tty, interval=0.0)
    bar.update(50, 3)
    bar.update(200, 7, final=True)
    text = tty.getvalue()
    assert text.startswith("\r[") and "#" in text and "200/200 done" in text
    assert "7 with differences" in text and "ETA" in text and text.endswith("\n")
    plain = io.StringIO()
    lines = Progress(200, plain, interval=0.0)
    lines.update(50, 3)
    lines.update(200, 7, final=True)
    out = plain.getvalue().splitlines()
    assert out[0].startswith("replay: 50/200 done, ") and "3 with differences" in out[0]
    assert "\r" not in plain.getvalue() and len(out) == 2


def test_a_warning_during_the_bar_starts_a_line_of_its_own() -> None:
    """A log message written while the bar is drawn wipes the bar's line first (it
    was written onto the end of the bar); the next update draws the bar again."""
    import logging

    from shadowproxy.replay.progress import Progress
    tty = _Terminal()
    bar = Progress(200, tty, interval=0.0)
    handler = logging.StreamHandler(tty)
    handler.addFilter(bar)
    log = logging.getLogger("test.progress")
    log.addHandler(handler)
    try:
        bar.update(50, 3)
        log.warning("replay: interrupted")
        bar.update(60, 3)
    finally:
        log.removeHandler(handler)
    text = tty.getvalue()
    cut = text.index("\r\x1b[K")
    assert "50/200 done" in text[:cut]
    assert text[cut:].startswith("\r\x1b[Kreplay: interrupted\n\r[")
    assert "60/200 done" in text[cut:]
    plain = io.StringIO()
    lines = Progress(200, plain, interval=0.0)
    lines.update(50, 3)
    lines.clear()                       # nothing drawn in place: nothing to wipe
    assert "\x1b" not in plain.getvalue()


def test_credentials_and_run_names() -> None:
    from shadowproxy.config import loads
    from shadowproxy.errors import ConfigError
    from shadowproxy.replay.command import credentials
    from shadowproxy.replay.sender import inject
    from shadowproxy.store.runs import for_run
    creds = credentials(["Authorization: Bearer ${T}"], env={"T": "abc"})
    assert creds == {"authorization": "Bearer abc"}
    with pytest.raises(ValueError, match="T2 is not set"):
        credentials(["X-Key: ${T2}"], env={})
    recorded = [("Authorization", "Bearer [redacted:0123456789ab]"), ("Accept", "*/*")]
    assert inject(recorded, creds) == [("Authorization", "Bearer abc"), ("Accept", "*/*")]
    # a header the recording has in clear is left as it is
    assert inject([("Authorization", "Basic public")], creds) == \
        [("Authorization", "Basic public")]
    cfg = loads("upstreams: {primary: 'http://127.0.0.1:1'}\n"
                "store: {url: 'sqlite:///./out/results.db'}\n")
    run_cfg, inst = for_run(cfg, "pr-7")
    assert run_cfg.store.url == "sqlite:///./out/results.run-pr-7.db" and inst is None
    with pytest.raises(ConfigError):
        for_run(cfg, "../etc")


def test_record_has_no_max_body_of_its_own() -> None:
    """Request bodies over mirror.max_body are not recorded: a record.max_body, which
    nothing read, is refused as unknown rather than silently ignored."""
    from shadowproxy.config import loads
    from shadowproxy.errors import ConfigError
    text = "upstreams: {primary: http://127.0.0.1:9}\nrecord:\n  dir: /tmp/r\n"
    assert loads(text + "  sample: 1.0\n").record is not None
    with pytest.raises(ConfigError, match=r"record\.max_body: unknown key"):
        loads(text + "  max_body: 1KiB\n")
