"""No planted secret reaches the database file or its WAL."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from store_helpers import SECRETS, secret_result  # noqa: E402

from shadowproxy.config import RedactConfig, StoreConfig  # noqa: E402
from shadowproxy.redact import Redactor  # noqa: E402
from shadowproxy.store import StoreWriter, open_store  # noqa: E402


def raw_bytes(db: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal"):
        p = Path(str(db) + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


def leaked(data: bytes) -> list[str]:
    return [name for name, s in SECRETS.items() if s.encode() in data]


def write(db: Path, results, close: bool) -> StoreWriter:
    u = f"sqlite:///{db}"
    w = StoreWriter(u, StoreConfig(url=u, batch=7, flush_interval=0.01, samples_per_field=50,
                                   retention_age=0.0, retention_size=0))
    for r in results:
        assert w.submit(r)
    assert w.flush(20)
    if close:
        w.close()
    return w


def test_no_secret_in_db_file_or_wal(tmp_path):
    red = Redactor(RedactConfig(), Redactor.generate_key())
    db = tmp_path / "secrets.db"
    results = [red.redact_result(secret_result()) for _ in range(25)]
    w = write(db, results, close=False)
    assert Path(str(db) + "-wal").stat().st_size > 0       # the data is (also) in the WAL
    assert leaked(raw_bytes(db)) == []
    w.close()
    assert leaked(raw_bytes(db)) == []
    # samples were kept, masked: the grep above looked at real content
    s = open_store(f"sqlite:///{db}", readonly=True)
    doc = s.exchange(results[0].exchange.id)
    assert doc["sampled"]
    hdrs = dict(doc["request"]["headers"])
    assert hdrs["Authorization"] == "Bearer " + red.mask(SECRETS["bearer"])
    assert red.mask(SECRETS["password"]).encode() in raw_bytes(db)
    assert s.exchanges(limit=1)[0].query == "page=2&token=" + red.mask(SECRETS["query"])
    s.close()


def test_the_grep_would_see_unredacted_secrets(tmp_path):
    db = tmp_path / "plain.db"
    write(db, [secret_result()], close=True)
    found = set(leaked(raw_bytes(db)))
    # the sample holds everything; gzip-compressed bodies are stored as sent (base64)
    assert {"bearer", "cookie", "apikey", "password", "token", "query", "setcookie"} <= found
