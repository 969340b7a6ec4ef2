"""Damaged and odd recordings: a GoReplay file cut short (plain or gzip), a payload
header that is not one, a file that is not GoReplay's, and HAR entries of every odd
kind. What can be read is replayed; what cannot is said, naming the file and where in
it (a byte offset, a payload, ``log.entries[N]``); nothing is lost without a word."""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from shadowproxy.config import RecordConfig, RedactConfig
from shadowproxy.errors import ShadowProxyError
from shadowproxy.models import ResponseRecord
from shadowproxy.record import goreplay
from shadowproxy.record.hook import RECORD_FIELDS
from shadowproxy.record.source import load
from shadowproxy.record.writer import RecordWriter
from shadowproxy.redact import Redactor
from shadowproxy.stats import Stats
from tests.record.apps import item_app
from tests.record.test_formats import _cli
from tests.support import Upstream


def _gor(n: int) -> bytes:
    buf = io.BytesIO()
    for i in range(n):
        body = b'{"id": %d}' % i
        goreplay.write_exchange(buf, f"{i:024x}", 1700000000.0 + i, "GET", f"/a/{i}",
                                [("Host", "h")], b"",
                                ResponseRecord(status=200, reason="OK", body=body,
                                               size=len(body), latency=0.001))
    return buf.getvalue()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_cut_short_file_is_said_with_its_offset(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    data = _gor(3)
    whole = data.index(goreplay.SEPARATOR, data.index(b"\n2 000000000000000000000001")) + \
        len(goreplay.SEPARATOR)            # the second exchange ends here
    path = tmp_path / "cut.gor"
    path.write_bytes(data[:whole + 40])     # inside the third request
    with caplog.at_level(logging.WARNING, "shadowproxy.record"):
        items = load([str(path)])
    assert [i.target for i in items] == ["/a/0", "/a/1"]
    (msg,) = _warnings(caplog)
    assert str(path) in msg and f"byte {whole}:" in msg and "ends inside a payload" in msg


def test_a_cut_short_gzip_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    packed = gzip.compress(_gor(200), mtime=0)
    path = tmp_path / "cut.gor.gz"
    path.write_bytes(packed[:len(packed) // 2])
    with caplog.at_level(logging.WARNING, "shadowproxy.record"):
        items = load([str(path)])
    assert 0 < len(items) < 200
    (msg,) = _warnings(caplog)
    assert str(path) in msg and "compressed file is cut short" in msg
    path.write_bytes(packed[:60])           # not even one payload
    with pytest.raises(ShadowProxyError, match=r"cut\.gor\.gz: not a readable gzip file"):
        load([str(path)])


def test_bad_headers_and_files_that_are_not_goreplay(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad.gor"
    path.write_bytes(b"1 abc notanumber -1\nGET / HTTP/1.1\r\n\r\n" + goreplay.SEPARATOR +
                     _gor(1))
    with caplog.at_level(logging.WARNING, "shadowproxy.record"):
        (item,) = load([str(path)])
    assert item.target == "/a/0"
    (msg,) = _warnings(caplog)
    assert str(path) in msg and "byte 0: not a payload header" in msg
    path.write_bytes(b"a log file, not a recording\n")
    with pytest.raises(ShadowProxyError, match=r"bad\.gor: not a GoReplay file"):
        load([str(path)])


def _entry(**changes: Any) -> dict[str, Any]:
    body = base64.b64encode(b'{"id": 1}').decode()
    e: dict[str, Any] = {
        "startedDateTime": "2026-12-01T10:00:00.000Z", "time": 12.5,
        "request": {"method": "GET", "url": "http://shop.example/a/1?q=1",
                    "headers": [{"name": "Accept", "value": "*/*"}]},
        "response": {"status": 200, "statusText": "OK",
                     "headers": [{"name": "Content-Type", "value": "application/json"}],
                     "content": {"size": 9, "mimeType": "application/json", "text": body,
                                 "encoding": "base64"}}}
    e.update(changes)
    return e


def _har(tmp_path: Path, *entries: dict[str, Any]) -> str:
    path = tmp_path / "odd.har"
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": list(entries)}}))
    return str(path)


def test_odd_har_entries(tmp_path: Path) -> None:
    no_response = _entry()
    del no_response["response"]
    no_headers = _entry()
    del no_headers["request"]["headers"], no_headers["response"]["headers"]
    body_left_out = _entry()
    del body_left_out["response"]["content"]["text"]
    form = _entry(request={"method": "post", "url": "http://shop.example/orders",
                           "postData": {"mimeType": "application/x-www-form-urlencoded",
                                        "params": [{"name": "a b", "value": "1&2"},
                                                   {"name": "c", "value": ""}]}})
    items = load([_har(tmp_path, _entry(), no_response,
                       _entry(response={"status": 0, "content": {}}), no_headers,
                       body_left_out, form)])
    first = items[0].response
    assert first is not None and first.body == b'{"id": 1}' and first.status == 200
    assert abs(first.latency - 0.0125) < 1e-9
    # no answer, or one whose body the export left out: no reference (replay counts it)
    assert [i.response is None for i in items] == [False, True, True, False, True, False]
    assert items[3].request.headers == () and items[3].response.headers == ()  # type: ignore[union-attr]
    assert items[5].request.method == "POST" and items[5].request.body == b"a+b=1%262&c="


@pytest.mark.parametrize(("bad", "says"), [
    ({"startedDateTime": "yesterday"}, "Invalid isoformat string"),
    ({"request": {"url": "http://shop.example/"}}, "no 'method'"),
    ({"response": {"status": "abc"}}, "invalid literal"),
    ({"response": {"status": 200, "content": {"text": "!!!x", "encoding": "base64"}}},
     "base64"),
])
def test_a_bad_har_entry_is_named(tmp_path: Path, bad: dict[str, Any], says: str) -> None:
    path = _har(tmp_path, _entry(), _entry(**bad))
    with pytest.raises(ShadowProxyError) as err:
        load([path])
    assert str(err.value).startswith(f"{path}: log.entries[1]: ") and says in str(err.value)


async def test_a_binary_request_body_left_out_is_not_replayed_without_it(
        tmp_path: Path) -> None:
    """The recording cannot mask a binary body, so it leaves it out; it says so, and a
    replay counts the request not_eligible{body_not_recorded} instead of sending it
    with an empty body (which a candidate answers differently: a false difference)."""
    stats = Stats()
    rec = tmp_path / "rec"
    cfg = RecordConfig(dir=str(rec), sample=1.0)
    w = RecordWriter(cfg, Redactor(RedactConfig(), b"k" * 32), "t", stats)
    w.start()
    answer = ResponseRecord(status=200, reason="OK", body=b'{"len": 14}', size=11,
                            headers=(("Content-Type", "application/json"),), latency=0.01)
    for i, (ctype, body) in enumerate([("application/octet-stream", b"\x00\x01\xffbinary"),
                                       ("application/json", b'{"a": 1}')]):
        assert w.offer(("r", 1700000000.0 + i, "POST", "/upload", [("Content-Type", ctype)],
                        body, RECORD_FIELDS(answer), "POST /upload"))
    await w.close()
    files = [str(p) for p in rec.iterdir()]
    binary, text = load(files)
    assert binary.request.body == b"" and \
        (goreplay.OMITTED_HEADER, "9") in binary.request.headers
    assert text.request.body == b'{"a": 1}' and \
        all(k != goreplay.OMITTED_HEADER for k, _ in text.request.headers)
    conf = tmp_path / "replay.yaml"
    conf.write_text(f"""\
upstreams:
  primary: http://127.0.0.1:9
routes:
  - match: /upload
    methods: [POST]
    mirror_unsafe: true
store:
  url: sqlite:///{tmp_path}/results.db
""")
    candidate = await Upstream(item_app(10, accept=None)).start()
    try:
        out = await _cli("replay", "-c", str(conf), *files, "--candidate", candidate.url,
                         "--run", "bin")
    finally:
        await candidate.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 of 2 requests sent" in out.stdout, out.stdout
    assert "not_eligible{body_not_recorded} 1" in out.stdout, out.stdout


async def test_a_replay_without_the_recordings_key_says_so(tmp_path: Path) -> None:
    """Recorded answers hold masks; replayed without redact.key_env, the candidate's are
    masked with a random key and every masked field differs: the replay says so."""
    path = tmp_path / "masked.gor"
    buf = io.BytesIO()
    body = b'{"id": 1, "price": 10, "q": ""}'
    goreplay.write_exchange(buf, "0" * 24, 1700000000.0, "GET", "/api/items/1", [], b"",
                            ResponseRecord(status=200, reason="OK", body=body, size=len(body),
                                           headers=(("Set-Cookie",
                                                     "session=[redacted:0123456789ab]"),)))
    path.write_bytes(buf.getvalue())
    candidate = await Upstream(item_app(10, accept=None)).start()
    try:
        for key_env in ("", "redact: {key_env: HOME}\n"):
            conf = tmp_path / "replay.yaml"
            conf.write_text(f"upstreams: {{primary: http://127.0.0.1:9}}\n{key_env}"
                            f"store: {{url: 'sqlite:///{tmp_path}/r.db'}}\n")
            out = await _cli("replay", "-c", str(conf), str(path), "--candidate",
                             candidate.url, "--run", f"k{len(key_env)}")
            assert out.returncode == 0, out.stdout + out.stderr
            warned = "redact.key_env is not set" in out.stderr
            assert warned == (not key_env), out.stderr
    finally:
        await candidate.stop()


async def test_nothing_compared_fails_the_replay(tmp_path: Path) -> None:
    """A live primary that cannot be reached: every request is sent and none compared;
    the replay says so and exits 1 instead of 0."""
    path = tmp_path / "one.gor"
    path.write_bytes(_gor(3))
    conf = tmp_path / "replay.yaml"
    conf.write_text(f"upstreams: {{primary: http://127.0.0.1:9}}\n"
                    f"store: {{url: 'sqlite:///{tmp_path}/r.db'}}\n")
    candidate = await Upstream(item_app(10, accept=None)).start()
    try:
        out = await _cli("replay", "-c", str(conf), str(path), "--candidate", candidate.url,
                         "--primary", "http://127.0.0.1:9", "--run", "noprimary")
    finally:
        await candidate.stop()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "primary_error{connect} 3" in out.stdout, out.stdout
    assert "no request sent was compared" in out.stderr, out.stderr


async def test_a_candidate_that_answers_nothing_fails_the_replay(tmp_path: Path) -> None:
    """A candidate that cannot be reached: every request sent fails on it; the replay
    says so and exits 1 (the verdicts are all errors, not a comparison)."""
    path = tmp_path / "one.gor"
    path.write_bytes(_gor(3))
    conf = tmp_path / "replay.yaml"
    conf.write_text(f"upstreams: {{primary: http://127.0.0.1:9}}\n"
                    f"store: {{url: 'sqlite:///{tmp_path}/r.db'}}\n")
    out = await _cli("replay", "-c", str(conf), str(path), "--candidate",
                     "http://127.0.0.1:9", "--run", "nocandidate")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "candidate_error{connect} 3" in out.stdout, out.stdout
    assert "the candidate answered none of the 3 requests" in out.stderr, out.stderr


def test_report_of_a_run_replayed_days_ago_reads_the_whole_run(tmp_path: Path) -> None:
    """``report --run NAME`` without --since reads the run whole (as ``check --run``
    does), not the last 24 hours of it: a replay reported days later is not empty."""
    from shadowproxy.cli import main as cli_main
    from shadowproxy.config import StoreConfig
    from shadowproxy.models import Result
    from shadowproxy.store.writer import StoreWriter
    from tests.report.test_report import _exchange, _resp

    url = f"sqlite:///{tmp_path}/results.run-old.db"
    writer = StoreWriter(url, StoreConfig(url=url))
    then = time.time() - 3 * 86400
    redactor = Redactor(RedactConfig(), b"k" * 32)
    for i in range(4):
        ex = _exchange(i, "/a/{id}", then + i, f"/a/{i}", _resp(200, {"n": i}, latency=0.01),
                       _resp(200, {"n": i}, latency=0.01))
        assert writer.submit(redactor.redact_result(Result(ex, "match", [], frozenset(), [])))
    writer.add_outcomes([(float(int(then // 60 * 60)), "", "run", "started", 1),
                         (float(int(then // 60 * 60)), "/a/{id}", "compared", "", 4)])
    assert writer.flush(10) and writer.close(10)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"upstreams: {{primary: http://127.0.0.1:9}}\n"
                    f"store: {{url: 'sqlite:///{tmp_path}/results.db'}}\n")
    out = tmp_path / "r.json"
    assert cli_main(["report", "-c", str(conf), "--run", "old", "--format", "json",
                     "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["totals"]["exchanges"] == 4, doc["totals"]
    assert doc["window"]["label"] == "run old"
