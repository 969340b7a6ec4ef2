"""No body digest that is stored or shown lets a secret be brute-forced.

A plain SHA-256 of a body whose template is known gives a short secret in it away: a
4-hex-digit token in ``{"token": "…", …}`` is one of 65,536 bodies, all hashed in a
fraction of a second. Short tokens are planted in such bodies (whole and cut by the
capture, JSON and binary, equal and differing), run through the real comparison stage
(the run's :class:`Control`: comparator, redactor, store writer, SQLite in tmp_path),
then read back through the admin API and the JSON report; every candidate body's
plain SHA-256 is looked for in the database file and its WAL (as hex or raw bytes), in
the API's answers, in the report and in the logs. Equal bodies must still show equal
digests.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shadowproxy.admin.server import AdminServer
from shadowproxy.control.stages import Control
from shadowproxy.models import Exchange, RequestRecord, ResponseRecord
from shadowproxy.proxy.capture import Capture
from shadowproxy.redact import Redactor
from shadowproxy.report import build_report
from shadowproxy.report.data import dumps
from shadowproxy.store import open_store
from tests.store.test_store_secrets import raw_bytes
from tests.support import config

PAD = "n" * 64
CAP = 24                     # what a capture keeps of a cut body: '{"token": "ab12", "note'
JSON = (("Content-Type", "application/json"),)
BINARY = (("Content-Type", "application/octet-stream"),)
TOKENS = [f"{i:04x}" for i in range(1 << 16)]
HEX64 = re.compile(rb"[0-9a-fA-F]{64,}")


def body(token: str) -> bytes:
    """The known template: only the 4-hex-digit token is secret."""
    return b'{"token": "%s", "note": "%s"}' % (token.encode(), PAD.encode())


# every body the template can give: plain digest (hex and raw) → its token
PLAIN_HEX = {hashlib.sha256(body(t)).hexdigest().encode(): t for t in TOKENS}
PLAIN_RAW = {bytes.fromhex(h.decode()): t for h, t in PLAIN_HEX.items()}


def recoverable(data: bytes) -> set[str]:
    """Tokens whose body's plain SHA-256 appears in ``data`` (hex in any case, or raw)."""
    found = set()
    for m in HEX64.finditer(data):
        run = m.group().lower()
        for i in range(len(run) - 63):
            tok = PLAIN_HEX.get(run[i:i + 64])
            if tok is not None:
                found.add(tok)
    raw = PLAIN_RAW
    for i in range(len(data) - 31):
        tok = raw.get(data[i:i + 32])
        if tok is not None:
            found.add(tok)
    return found


def captured(token: str, headers: tuple, cap: int) -> ResponseRecord:
    """A response as the proxy captures it (in pieces, the first ``cap`` bytes kept)."""
    data = body(token)
    c = Capture(cap)
    for i in range(0, len(data), 10):
        c.feed(data[i:i + 10])
    return ResponseRecord(status=200, reason="OK", headers=headers + (
        ("Content-Length", str(len(data))),), body=c.body, size=c.size, sha256=c.sha256,
        truncated=c.truncated, latency=0.01)


def exchange(xid: str, endpoint: str, primary: ResponseRecord, candidate: ResponseRecord,
             secondary: ResponseRecord | None = None) -> Exchange:
    req = RequestRecord("GET", "/" + xid, "", (("Host", "example"),), b"")
    return Exchange(xid, time.time() - 5, endpoint, None, req, primary, candidate, secondary)


WHOLE = 1 << 20
# id → (exchange, the tokens planted in it)
CASES: dict[str, tuple[Exchange, set[str]]] = {
    # equal JSON bodies, whole: the sample's digest is computed by the redactor
    "dig-match": (exchange("dig-match", "GET /match", captured("ab12", JSON, WHOLE),
                           captured("ab12", JSON, WHOLE)), {"ab12"}),
    # binary bodies, whole: dropped from the sample; the comparator fingerprints them
    "dig-bytes": (exchange("dig-bytes", "GET /bytes", captured("c3d4", BINARY, WHOLE),
                           captured("e5f6", BINARY, WHOLE)), {"c3d4", "e5f6"}),
    # equal bodies cut by the capture: its digests of the whole bodies
    "dig-cut-same": (exchange("dig-cut-same", "GET /cut-same", captured("9f0e", JSON, CAP),
                              captured("9f0e", JSON, CAP)), {"9f0e"}),
    # cut and different, with a secondary (its differences are kept in the sample too)
    "dig-cut-diff": (exchange("dig-cut-diff", "GET /cut-diff", captured("7a7b", JSON, CAP),
                              captured("1c2d", JSON, CAP), captured("0b0b", JSON, CAP)),
                     {"7a7b", "1c2d", "0b0b"}),
}
PLANTED = set().union(*(toks for _ex, toks in CASES.values()))


async def run(tmp_path: Path) -> dict[str, Any]:
    """The cases through the run's comparison stage into SQLite, read back through the
    admin API and the JSON report."""
    db = tmp_path / "digests.db"
    cfg = config("http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9",
                 store={"url": f"sqlite:///{db}", "retention_age": 0, "retention_size": 0})
    control = Control(cfg)
    assert control.redactor is control.stage.redactor is not None
    for ex, _toks in CASES.values():
        control.stage.process(ex)
    assert control.writer.flush(20)
    api: dict[str, Any] = {}
    admin = AdminServer(cfg, control)
    await admin.start()
    try:
        base = f"http://127.0.0.1:{admin.port}/api/v1"
        async with aiohttp.ClientSession() as s:
            for xid in CASES:
                async with s.get(f"{base}/exchanges/{xid}") as r:
                    assert r.status == 200
                    api[xid] = (await r.read(), await r.json())
            async with s.get(f"{base}/exchanges?since=1h&limit=100") as r:
                assert r.status == 200
                api["list"] = (await r.read(), await r.json())
    finally:
        await admin.stop()
    now = time.time()
    store = open_store(f"sqlite:///{db}", readonly=True)
    try:
        report = build_report(store, since=now - 3600, until=now + 1, cfg=cfg, checks=None)
        docs = {xid: store.exchange(xid) for xid in CASES}
    finally:
        store.close()
    data = raw_bytes(db)
    assert Path(str(db) + "-wal").stat().st_size > 0        # the data is (also) in the WAL
    await control.stop(10)
    return {"db": data + raw_bytes(db), "api": api, "report": dumps(report), "docs": docs,
            "report_doc": report}


async def test_no_plain_body_digest_is_stored_served_reported_or_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    out = await run(tmp_path)
    assert recoverable(out["db"]) == set()
    for xid, (raw, _doc) in out["api"].items():
        assert recoverable(raw) == set(), xid
    assert recoverable(out["report"]) == set()
    assert recoverable(caplog.text.encode()) == set()

    # the samples were kept and are what the API served; their bodies masked
    docs = out["docs"]
    for xid, doc in docs.items():
        assert doc is not None and doc["sampled"], xid
        served = out["api"][xid][1]
        for role in ("primary", "candidate", "secondary"):
            assert (served[role] or {}).get("sha256") == (doc[role] or {}).get("sha256")
    # the secret as a body holds it (a value after a quote): the bare four characters
    # also turn up inside hex digests by chance (a keyed sha256 held "…cba6ab12df71…")
    assert b'"ab12' not in out["db"] and b"[redacted:" in out["db"]

    def digest(xid: str, role: str) -> str:
        d = docs[xid][role]["sha256"]
        assert re.fullmatch(r"[0-9a-f]{64}", d), (xid, role, d)
        return d

    # equal bodies still show equal digests (and so do a record and its fingerprint)
    assert digest("dig-match", "primary") == digest("dig-match", "candidate")
    assert digest("dig-cut-same", "primary") == digest("dig-cut-same", "candidate")
    assert docs["dig-match"]["differences"] == docs["dig-cut-same"]["differences"] == []
    (d,) = docs["dig-bytes"]["differences"]
    assert d["path"] == "body.bytes"
    assert d["a"] == {"size": len(body("c3d4")), "sha256": digest("dig-bytes", "primary"),
                      "truncated": False}
    assert d["b"] == {"size": len(body("e5f6")), "sha256": digest("dig-bytes", "candidate"),
                      "truncated": False}
    assert d["a"]["sha256"] != d["b"]["sha256"]
    assert docs["dig-bytes"]["primary"]["body"] == ""       # binary: dropped, digest kept
    (d,) = docs["dig-cut-diff"]["differences"]
    assert d["path"] == "body.bytes" and d["a"]["truncated"] and d["b"]["truncated"]
    assert (d["a"]["sha256"], d["b"]["sha256"]) == \
        (digest("dig-cut-diff", "primary"), digest("dig-cut-diff", "candidate"))
    (sd,) = docs["dig-cut-diff"]["secondary_differences"]
    assert sd["a"] == d["a"]
    assert sd["b"]["sha256"] == digest("dig-cut-diff", "secondary") != d["a"]["sha256"]
    # the report shows the keyed fingerprints as the field's example values
    examples = [f["example"] for fs in out["report_doc"]["fields"].values() for f in fs
                if f["field"] == "body.bytes" and f["example"]]
    assert examples and all(re.fullmatch(r"[0-9a-f]{64}", e[side]["sha256"])
                            for e in examples for side in ("a", "b"))


async def test_the_scan_would_find_plain_digests(tmp_path, monkeypatch):
    """The same run with body digests left plain: the scan recovers every token."""
    monkeypatch.setattr(Redactor, "body_digest", lambda self, digest: digest)
    out = await run(tmp_path)
    assert recoverable(out["db"]) == PLANTED
    assert set().union(*(recoverable(raw) for raw, _doc in out["api"].values())) == PLANTED
    assert recoverable(out["report"]) >= {"c3d4", "e5f6", "7a7b", "1c2d"}   # fingerprints


def test_the_template_is_what_the_brute_force_tries():
    assert len(PLAIN_HEX) == len(PLAIN_RAW) == 65536
    assert all(hashlib.sha256(body(t)).hexdigest().encode() in PLAIN_HEX for t in PLANTED)
    cut = captured("9f0e", JSON, CAP)
    assert cut.truncated and cut.body == body("9f0e")[:CAP]
    assert cut.sha256 == hashlib.sha256(body("9f0e")).hexdigest()
    assert not captured("ab12", JSON, WHOLE).truncated


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
