"""A failed answer (a 5xx) is no evidence about the body's fields.

Exchanges go through the real comparison stage (comparator and noise learner). A
failed answer differs from the others on every body field; counted as the secondary
showing them, it made every field (provisionally) noise, and the candidate's real
differences were forgiven (docs/checks.md, bench/calibrate's diff row)."""

from __future__ import annotations

import orjson

from shadowproxy.compare.stage import CompareStage
from shadowproxy.models import Exchange, RequestRecord, ResponseRecord, Result
from shadowproxy.stats import Stats
from tests.support import config

EP = "GET /api/items"
ERROR = {"error": "internal"}


def _resp(doc: dict[str, object], status: int = 200) -> ResponseRecord:
    body = orjson.dumps(doc)
    return ResponseRecord(status, "", (("Content-Type", "application/json"),), body,
                          len(body), "", False, 0.01, None)


def _doc(i: int, price: float = 9.99, ts: int = 0) -> dict[str, object]:
    return {"id": i, "name": f"item {i}", "price": price, "ts": ts}


def _stage() -> CompareStage:
    return CompareStage(config("http://127.0.0.1:9", "http://127.0.0.1:9",
                               "http://127.0.0.1:9"), Stats())


def _judge(stage: CompareStage, i: int, primary: dict[str, object],
           candidate: dict[str, object], secondary: dict[str, object], *,
           failed: str = "") -> Result:
    sides = {name: _resp(doc, 500 if name == failed else 200) for name, doc in
             (("primary", primary), ("candidate", candidate), ("secondary", secondary))}
    return stage.judge(Exchange(f"x{i}", float(i), EP, None,
                                RequestRecord("GET", f"/api/items/{i}", "", (), b""),
                                sides["primary"], sides["candidate"], sides["secondary"]))


def _real(res: Result) -> set[str]:
    return {d.field for d in res.differences} - res.noise_fields


def test_failed_secondary_does_not_make_body_fields_noise() -> None:
    stage = _stage()
    res = _judge(stage, 0, _doc(0), _doc(0), ERROR, failed="secondary")
    assert res.verdict == "match"
    # primary and secondary (both answered) differ on a volatile field: still learned
    assert _judge(stage, 1, _doc(1, ts=1), _doc(1, ts=1), _doc(1, ts=2)).verdict == "match"
    res = _judge(stage, 2, _doc(2, ts=1), _doc(2, price=10.99, ts=2), _doc(2, ts=1))
    assert res.verdict == "diff"
    assert _real(res) == {"$.price"} and res.noise_fields == {"$.ts"}
    # the failed secondary counted for N and its status, not for any body field
    assert stage.learner.counts(EP, "$.price") == (3, 1, 0)
    assert stage.learner.counts(EP, "$.ts") == (3, 1, 1)
    assert stage.learner.counts(EP, "status") == (3, 0, 1)


def test_failed_primary_is_forgiven_and_hides_no_later_difference() -> None:
    stage = _stage()
    # the candidate and the secondary answered, the primary failed: the candidate's
    # differences are the primary's failure, not a regression
    res = _judge(stage, 0, ERROR, _doc(0), _doc(0), failed="primary")
    assert res.verdict == "noise"
    assert {"$.price", "$.id", "status"} <= res.noise_fields
    # past noise.min_samples (50), the field is judged on the answers alone: the
    # secondary never differed on $.price, so the candidate's differences are real
    for i in range(1, 61):
        assert _judge(stage, i, _doc(i), _doc(i), _doc(i)).verdict == "match"
    for i in range(61, 64):
        res = _judge(stage, i, _doc(i), _doc(i, price=10.99), _doc(i))
        assert res.verdict == "diff" and _real(res) == {"$.price"}
    assert stage.learner.counts(EP, "$.price") == (64, 3, 0)
    assert not [e for e in stage.learner.evidence() if e.field == "$.price"]


def test_failed_candidate_differs_by_its_status_alone() -> None:
    stage = _stage()
    for i in range(3):
        assert _judge(stage, i, _doc(i), _doc(i), _doc(i)).verdict == "match"
    res = _judge(stage, 3, _doc(3), ERROR, _doc(3), failed="candidate")
    assert res.verdict == "diff"
    assert _real(res) == {"status"}
    assert {"$.price", "$.id", "$.name", "$.ts", "$.error"} == res.noise_fields
    assert stage.learner.counts(EP, "status") == (4, 1, 0)
    assert stage.learner.counts(EP, "$.price") == (4, 0, 0)
