"""No planted secret reaches the database file or its WAL."""

from __future__ import annotations

from pathlib import Path

from shadowproxy.compare.stage import CompareStage
from shadowproxy.config import RedactConfig, StoreConfig
from shadowproxy.models import Exchange, RequestRecord
from shadowproxy.redact import Redactor
from shadowproxy.stats import Stats
from shadowproxy.store import StoreWriter, open_store
from tests.store_helpers import SECRETS, response, secret_result
from tests.support import config


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


def compared(i: int) -> Exchange:
    """A mirrored exchange whose primary and candidate differ in a secret field, a field
    echoing the request's token and a plain one; the token is in the path and query."""
    s = SECRETS
    pri = {"password": s["password"], "echo": s["bearer"], "n": 1}
    cand = {"password": s["gzpassword"], "echo": "none", "n": 2}
    req = RequestRecord("GET", f"/api/users/{s['bearer']}", f"page={i}&token={s['query']}",
                        (("Authorization", "Bearer " + s["bearer"]),
                         ("Cookie", f"session={s['cookie']}")), b"")
    return Exchange(f"stage-{i:04d}", 1_700_000_000.0 + i, "GET /api/users/{id}", None, req,
                    response(200, pri, headers=(("X-Api-Key", s["apikey"]),)),
                    response(200, cand, headers=(("X-Api-Key", s["apikey"]),)))


def test_stage_redacts_whole_only_what_is_kept_as_a_sample(tmp_path):
    """Through the comparison stage: the first K exchanges per field are kept as samples,
    redacted whole; the store says it keeps no more, so later ones are redacted only as
    far as their summary rows, whose query, path and difference values are still masked."""
    db = tmp_path / "stage.db"
    u = f"sqlite:///{db}"
    red = Redactor(RedactConfig(), Redactor.generate_key())
    calls: list[bool] = []
    redact_result = red.redact_result

    def spy(result, *, whole=True):
        calls.append(whole)
        return redact_result(result, whole=whole)

    red.redact_result = spy  # type: ignore[method-assign]
    w = StoreWriter(u, StoreConfig(url=u, batch=7, flush_interval=0.01, samples_per_field=2,
                                   retention_age=0.0, retention_size=0))
    stage = CompareStage(config("http://127.0.0.1:9", "http://127.0.0.1:9"), Stats(),
                         writer=w, redactor=red)
    for i in range(3):
        stage.process(compared(i))
    assert w.flush(20)                       # the store now knows its keys are full
    for i in range(3, 10):
        stage.process(compared(i))
    assert w.flush(20)
    w.close()
    assert calls == [True] * 3 + [False] * 7
    assert leaked(raw_bytes(db)) == []
    s, m = SECRETS, red.mask
    store = open_store(u, readonly=True)
    for i in range(10):
        doc = store.exchange(f"stage-{i:04d}")
        assert doc["sampled"] == (i < 2)
        req = doc["request"] if doc["sampled"] else doc["summary"]
        assert req["query"] == f"page={i}&token={m(s['query'])}"
        assert req["path"] == f"/api/users/{m(s['bearer'])}"
        diffs = {d["path"]: (d["a"], d["b"]) for d in doc["differences"]}
        assert diffs == {"$.password": (m(s["password"]), m(s["gzpassword"])),
                         "$.echo": (m(s["bearer"]), "none"), "$.n": (1, 2)}
        if doc["sampled"]:
            assert dict(doc["request"]["headers"]) == {
                "Authorization": "Bearer " + m(s["bearer"]),
                "Cookie": f"session={m(s['cookie'])}"}
            assert dict(doc["primary"]["headers"])["X-Api-Key"] == m(s["apikey"])
    store.close()
