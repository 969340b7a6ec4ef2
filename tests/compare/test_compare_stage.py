"""The comparison stage applies each route's own rules and counts final outcomes."""

from __future__ import annotations

import orjson

from shadowproxy.compare.stage import CompareStage
from shadowproxy.models import Exchange, RequestRecord, ResponseRecord
from shadowproxy.stats import Stats
from tests.support import config


def _resp(doc: dict, error: str | None = None) -> ResponseRecord:
    body = orjson.dumps(doc)
    return ResponseRecord(200, "OK", (("Content-Type", "application/json"),), body, len(body),
                          "", False, 0.01, error)


def _ex(route: str | None, a: dict, b: dict, error: str | None = None) -> Exchange:
    req = RequestRecord("GET", "/x", "", (), b"")
    return Exchange("id", 0.0, route or "/x", route, req, _resp(a), _resp(b, error))


def test_route_rules_apply_to_their_route_only() -> None:
    cfg = config("http://127.0.0.1:9", "http://127.0.0.1:9",
                 compare={"ignore": ["$.meta"]},
                 routes=[{"name": "orders", "match": "/orders",
                          "compare": {"ignore": ["$.etag"],
                                      "tolerance": [{"path": "$.total", "abs": 0.01}]}},
                         {"name": "users", "match": "/users"}])
    stats = Stats()
    stage = CompareStage(cfg, stats)
    a = {"meta": 1, "etag": "a", "total": 10.0, "name": "x"}
    b = {"meta": 2, "etag": "b", "total": 10.005, "name": "x"}
    # orders: global ignore + its own ignore and tolerance → a match
    assert stage.judge(_ex("orders", a, b)).verdict == "match"
    # users (no rules of its own) and unrouted: only the global ignore applies
    for route in ("users", None):
        res = stage.judge(_ex(route, a, b))
        assert res.verdict == "diff"
        assert {d.path for d in res.differences} == {"$.etag", "$.total"}
    res = stage.judge(_ex("users", a, b, error="timeout"))
    assert res.verdict == "error"
    assert stats.total("compared") == 3 and stats.total("candidate_timeout") == 1


def test_a_failed_secondary_answer_is_no_evidence_of_noise() -> None:
    """A secondary 500 (its error body differs from the primary on every field) is a
    failure of one copy, not every field being volatile: it must not make the fields
    noise, or a candidate's regression on one of them is judged noise when written (a
    2 % price regression passed bench/calibrate's diff row in ~1 run of 6)."""
    import dataclasses
    cfg = config("http://127.0.0.1:9", "http://127.0.0.1:9")
    stage = CompareStage(cfg, Stats())
    ok = {"id": 1, "price": 9.99}
    req = RequestRecord("GET", "/x", "", (), b"")
    failed = dataclasses.replace(_resp({"error": "internal"}), status=500)
    stage.judge(Exchange("s", 0.0, "/x", None, req, _resp(ok), _resp(ok), failed))
    res = stage.judge(Exchange("c", 0.0, "/x", None, req, _resp(ok),
                               _resp({"id": 1, "price": 10.99}), _resp(ok)))
    assert res.verdict == "diff" and not res.noise_fields, res
    assert all(e.s == 0 for e in stage.learner.evidence())
