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
