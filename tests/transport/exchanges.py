"""Exchanges for the transport's tests: JSON answers with a planted secret in every
place the redactor looks (header, query, JSON field, form body, an echo), and answers
the comparator must tell apart (or not) after redaction."""

from __future__ import annotations

import gzip
import itertools
import time

import orjson

from shadowproxy.models import Exchange, RequestRecord, ResponseRecord

SECRET = "s3cr3t-Planted-Value-9f8e7d"      # found nowhere it was sent once redacted
_ids = itertools.count()


def response(body: object, *, status: int = 200, headers: tuple[tuple[str, str], ...] = (),
             ctype: str = "application/json", raw: bytes | None = None) -> ResponseRecord:
    data = raw if raw is not None else orjson.dumps(body)
    return ResponseRecord(status=status, reason="OK",
                          headers=(("Content-Type", ctype), *headers), body=data,
                          size=len(data), latency=0.01)


def exchange(primary: ResponseRecord, candidate: ResponseRecord, *,
             endpoint: str = "GET /api/items/{id}", secondary: ResponseRecord | None = None,
             ex_id: str | None = None, instance: str | None = "pod-test") -> Exchange:
    req = RequestRecord("GET", "/api/items/1", f"token={SECRET}&page=2",
                        (("Authorization", f"Bearer {SECRET}"), ("Accept", "*/*")), b"")
    return Exchange(id=ex_id or f"ex-{next(_ids)}-{time.monotonic_ns()}", started=time.time(),
                    endpoint=endpoint, route=None, request=req, primary=primary,
                    candidate=candidate, secondary=secondary, instance=instance)


def item(price: int, token: str = SECRET, **more: object) -> dict[str, object]:
    return {"id": 1, "price": price, "token": token, "owner": {"password": token},
            "note": f"call back with access_token={token}", **more}


def corpus() -> list[Exchange]:
    """Pairs that match, differ in a plain field, differ only in a secret, differ in
    headers, status, a binary or gzip body, a text body, and candidate errors."""
    gz_a = gzip.compress(orjson.dumps(item(10)))
    gz_b = gzip.compress(orjson.dumps(item(11)))
    return [
        exchange(response(item(10)), response(item(10))),                       # match
        exchange(response(item(10)), response(item(12))),                       # $.price
        exchange(response(item(10)), response(item(10, token="other-token-1234"))),  # secret
        exchange(response(item(10), headers=(("Set-Cookie", f"sid={SECRET}; Path=/"),)),
                 response(item(10), headers=(("Set-Cookie", "sid=another-one-42; Path=/"),))),
        exchange(response(item(10), headers=(("X-Api-Key", SECRET),)),
                 response(item(10), headers=(("X-Api-Key", SECRET),))),          # equal masks
        exchange(response(item(10)), response(item(10), status=500)),
        exchange(response(None, ctype="application/octet-stream", raw=b"\x00\x01bin" * 40),
                 response(None, ctype="application/octet-stream", raw=b"\x00\x01bin" * 40)),
        exchange(response(None, ctype="application/octet-stream", raw=b"\x00\x01bin" * 40),
                 response(None, ctype="application/octet-stream", raw=b"\x00\x02bin" * 40)),
        exchange(response(None, raw=gz_a, headers=(("Content-Encoding", "gzip"),)),
                 response(None, raw=gz_a, headers=(("Content-Encoding", "gzip"),))),
        exchange(response(None, raw=gz_a, headers=(("Content-Encoding", "gzip"),)),
                 response(None, raw=gz_b, headers=(("Content-Encoding", "gzip"),))),
        exchange(response(None, ctype="text/plain", raw=f"password={SECRET}\nok\n".encode()),
                 response(None, ctype="text/plain", raw=f"password={SECRET}\nko\n".encode())),
        exchange(response(None, ctype="application/x-www-form-urlencoded",
                          raw=f"a=1&secret={SECRET}".encode()),
                 response(None, ctype="application/x-www-form-urlencoded",
                          raw=b"a=1&secret=different-value-77")),
        exchange(response(item(10)), ResponseRecord(status=0, error="timeout", latency=5.0)),
        exchange(response(item(10)), ResponseRecord(status=0, error="connect")),
        exchange(response(item(10)), response(item(13)), secondary=response(item(10))),
    ]
