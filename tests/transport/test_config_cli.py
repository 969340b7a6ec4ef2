"""The transport's keys are checked like every other (file, line and key named), and
the fleet's commands say what is missing instead of failing later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shadowproxy.config import loads
from shadowproxy.errors import ConfigError

BASE = "upstreams: {primary: 'http://127.0.0.1:1'}\ntransport:\n"


@pytest.mark.parametrize(("body", "key"), [
    ("  url: http://127.0.0.1:6379\n", "transport.url"),
    ("  url: redis://127.0.0.1:notaport/0\n", "transport.url"),
    ("  url: redis://127.0.0.1:6379/notadb\n", "transport.url"),
    ("  url: redis://127.0.0.1:6379/0/x\n", "transport.url"),
    ("  url: redis://127.0.0.1:6379/0\n  password_env: NOT_SET_ANYWHERE_42\n",
     "transport.password_env"),
    ("  max_len: 0\n", "transport.max_len"),
    ("  max_deliveries: 0\n", "transport.max_deliveries"),
    ("  claim_after: 0s\n", "transport.claim_after"),
    ("  batch: 0\n", "transport.batch"),
    ("  stream: ''\n", "transport.stream"),
    ("  surprise: 1\n", "transport.surprise"),
])
def test_a_bad_transport_key_is_named_with_its_line(body: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        loads(BASE + body, file="fleet.yaml", env={})
    msg = str(exc.value)
    assert "fleet.yaml:" in msg and key in msg, msg


def test_defaults_and_a_full_transport() -> None:
    cfg = loads("upstreams: {primary: 'http://127.0.0.1:1'}\n", env={})
    assert cfg.transport.url is None               # the local channel, no server needed
    cfg = loads(BASE + "  url: rediss://user@redis.example:6380/2\n  password_env: PW\n"
                "  claim_after: 5s\n  buffer: 1MiB\n", env={"PW": "x"})
    t = cfg.transport
    assert (t.url, t.claim_after, t.buffer, t.stream) == (
        "rediss://user@redis.example:6380/2", 5.0, 1024 * 1024, "shadowproxy:exchanges")


def _cli(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "shadowproxy", *args, "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_compare_and_mirror_need_a_transport(tmp_path: Path) -> None:
    text = "upstreams: {primary: 'http://127.0.0.1:1'}\n"
    done = _cli(tmp_path, text, "compare")
    assert done.returncode == 1 and "transport.url" in done.stderr, done.stderr
    done = _cli(tmp_path, text, "mirror", "off")
    assert done.returncode == 2 and "transport.url" in done.stderr, done.stderr
    done = _cli(tmp_path, text + "transport: {url: 'redis://127.0.0.1:1/0'}\n",
                "mirror", "on", "--sample", "2")
    assert done.returncode == 2 and "--sample" in done.stderr, done.stderr


def test_mirror_says_when_redis_cannot_be_reached(tmp_path: Path) -> None:
    with __import__("socket").socket() as s:      # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _cli(tmp_path, "upstreams: {primary: 'http://127.0.0.1:1'}\n"
                f"transport: {{url: 'redis://:secretpw@127.0.0.1:{port}/0'}}\n",
                "mirror", "off")
    assert done.returncode == 1 and f"127.0.0.1:{port}" in done.stderr, done.stderr
    assert "secretpw" not in done.stderr + done.stdout      # never the password


def test_a_redis_older_than_7_is_refused_by_name() -> None:
    """The transport needs Redis 7.0 (the group's lag and read count, script flags):
    an older server is refused with its version named, not used until it fails."""
    from shadowproxy.transport.client import too_old
    assert too_old("6.2.14") and too_old("5.0.7") and too_old("6")
    assert not too_old("7.0.15") and not too_old("7.2.4") and not too_old("8.0.0")
    assert not too_old("7.0.0-rc1") and too_old("6.2.6-v9")
