"""Builders of realistic results for the store, redaction and crash tests.

Also runnable as a script: ``python tests/store_helpers.py crash-writer DB_URL [PREFIX
START]`` writes results through a StoreWriter forever and prints the acknowledged count
after every commit (the crash-safety test kills it with SIGKILL); with PREFIX and START
the results are :func:`crash_result` ``(PREFIX, i, START)`` for i = 1, 2, ..., the same
ones another writer can resubmit.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import sys
import time

import orjson

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from shadowproxy.models import (  # noqa: E402
    Difference,
    Exchange,
    RequestRecord,
    ResponseRecord,
    Result,
)

_ids = itertools.count(1)


def response(status: int = 200, body: object = None, *, latency: float = 0.01,
             headers: tuple = (), error: str | None = None, raw: bytes | None = None,
             gzip_body: bool = False) -> ResponseRecord:
    data = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
    hdrs = list(headers)
    if body is not None and not any(k.lower() == "content-type" for k, _ in hdrs):
        hdrs.append(("Content-Type", "application/json"))
    if gzip_body:
        data = gzip.compress(data)
        hdrs.append(("Content-Encoding", "gzip"))
    return ResponseRecord(status=status, reason="OK" if status == 200 else "", headers=tuple(hdrs),
                          body=data, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                          latency=latency, error=error)


def exchange(*, id: str | None = None, started: float | None = None,
             endpoint: str = "GET /api/users/{id}", route: str | None = "users",
             method: str = "GET", path: str = "/api/users/1", query: str = "",
             req_headers: tuple = (("Host", "example"),), req_body: bytes = b"",
             primary: ResponseRecord | None = None, candidate: ResponseRecord | None = None,
             secondary: ResponseRecord | None = None) -> Exchange:
    return Exchange(
        id=id or f"ex-{next(_ids):08d}", started=time.time() if started is None else started,
        endpoint=endpoint, route=route,
        request=RequestRecord(method, path, query, req_headers, req_body),
        primary=primary or response(200, {"id": 1}),
        candidate=candidate or response(200, {"id": 1}),
        secondary=secondary)


def result(verdict: str = "match", *, diffs: list[Difference] | None = None,
           noise: frozenset[str] = frozenset(), sdiffs: list[Difference] | None = None,
           **kw) -> Result:
    return Result(exchange(**kw), verdict, list(diffs or []), frozenset(noise), list(sdiffs or []))


def diff(path: str, a: object = 1, b: object = 2, kind: str = "changed",
         section: str | None = None) -> Difference:
    if section is None:
        section = "header" if path.startswith("header.") else \
            "status" if path == "status" else "body"
    return Difference(section, path, kind, a, b)  # type: ignore[arg-type]


# ------------------------------------------------------------------ planted secrets

SECRETS = {
    "bearer": "eyJhbGciOiJIUzI1NiJ9.BEARERsecret.x1y2z3",
    "cookie": "sessCOOKIEsecret-77",
    "apikey": "APIKEYsecret-4242",
    "password": "hunter2-PASSWORD-secret",
    "token": "TOKENinArray-secret-99",
    "query": "QUERYtokenSECRET-55",
    "setcookie": "SETCOOKIEvalue-secret",
    "gzpassword": "GZIPPEDpassword-secret",
    "nested": "NESTEDsecretOBJ-31",
    "text": "TEXTpassword-secret-12",
    "form": "FORMpassword-secret-8",
}


def secret_result(id: str | None = None, started: float | None = None) -> Result:
    """A diff result with secrets planted in headers, cookies, query, JSON bodies
    (nested in arrays, gzip-compressed), text and form bodies, and in differences."""
    s = SECRETS
    req_body = orjson.dumps({"user": {"name": "bob", "password": s["password"]},
                             "items": [{"id": 1, "token": s["token"]},
                                       {"id": 2, "token": s["token"]}]})
    primary = response(200, {"data": [{"secret": {"nested": s["nested"], "n": 1}}],
                             "password": s["gzpassword"], "echo": "Bearer " + s["bearer"],
                             "name": "alice"},
                       headers=(("Set-Cookie", f"session={s['setcookie']}; Path=/; HttpOnly"),
                                ("X-Api-Key", s["apikey"])),
                       gzip_body=True, latency=0.02)
    candidate = response(200, raw=f"ok\npassword={s['text']}&token={s['token']}\n".encode(),
                         headers=(("Content-Type", "text/plain"),), latency=0.03)
    secondary = response(200, raw=f"user=bob&password={s['form']}".encode(),
                         headers=(("Content-Type", "application/x-www-form-urlencoded"),))
    diffs = [
        Difference("header", "header.set-cookie", "changed",
                   f"session={s['setcookie']}; Path=/", "session=other; Path=/"),
        Difference("body", "$.password", "removed", s["gzpassword"], None),
        Difference("body", "$.data[0].secret", "changed", {"nested": s["nested"], "n": 1}, None),
        Difference("body", "$.data[0]", "changed", {"secret": {"nested": s["nested"]}}, 3),
        Difference("body", "$.echo", "removed", "Bearer " + s["bearer"], None),
        Difference("header", "header.x-api-key", "changed", s["apikey"], "other-key-value"),
        Difference("body", "body.line[1]", "changed", f"password={s['text']}", "x"),
    ]
    ex = Exchange(
        id=id or f"secret-{next(_ids):08d}",
        started=time.time() if started is None else started,
        endpoint="POST /login", route="login",
        request=RequestRecord(
            "POST", "/login", f"page=2&token={s['query']}",
            (("Host", "example"), ("Authorization", "Bearer " + s["bearer"]),
             ("Cookie", f"session={s['cookie']}; theme=dark"), ("X-Api-Key", s["apikey"]),
             ("Content-Type", "application/json")),
            req_body),
        primary=primary, candidate=candidate, secondary=secondary)
    return Result(ex, "diff", diffs, frozenset(), [diffs[0]])


def crash_result(prefix: str, i: int, start: float) -> Result:
    """The ``i``-th result of a crash writer: the same for the same arguments."""
    verdict = "diff" if i % 3 == 0 else "match"
    diffs = [diff("$.items[0].price", 1.0, 1.5), diff("header.x-version", "1", "2")] \
        if verdict == "diff" else []
    return result(verdict, diffs=diffs, id=f"{prefix}-{i:09d}", started=start + i * 0.0001,
                  endpoint=f"GET /e{i % 5}")


def crash_writer(url: str, prefix: str | None = None, start: float | None = None) -> None:
    """Write results forever; print the acknowledged count after every commit."""
    from shadowproxy.config import StoreConfig
    from shadowproxy.store import StoreWriter

    cfg = StoreConfig(url=url, batch=50, flush_interval=0.01, queue=100000)
    box: dict[str, StoreWriter] = {}

    def on_commit(n: int) -> None:
        sys.stdout.write(f"{box['w'].acknowledged}\n")
        sys.stdout.flush()

    w = box["w"] = StoreWriter(url, cfg, on_commit=on_commit)
    i = 0
    while True:
        i += 1
        if prefix is not None and start is not None:
            r = crash_result(prefix, i, start)
        else:
            verdict = "diff" if i % 3 == 0 else "match"
            diffs = [diff("$.items[0].price", 1.0, 1.5), diff("header.x-version", "1", "2")] \
                if verdict == "diff" else []
            r = result(verdict, diffs=diffs, id=f"crash-{os.getpid()}-{i:09d}",
                       started=time.time(), endpoint=f"GET /e{i % 5}")
        while not w.submit(r):
            time.sleep(0.001)
        if i % 50 == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "crash-writer":
        crash_writer(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "crash-writer":
        crash_writer(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        sys.exit("usage: store_helpers.py crash-writer DB_URL [PREFIX START]")
