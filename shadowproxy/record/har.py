"""HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/) read as recorded exchanges.

A HAR entry has the request (``method``, ``url``, ``headers``, ``postData.text``) and
the response (``status``, ``statusText``, ``headers``, ``content.text``, base64 when
``content.encoding`` says so), its start (``startedDateTime``, ISO 8601) and its time
(``time``, ms). Browsers export bodies decoded, so a ``Content-Encoding`` header of the
response is dropped with its framing; HTTP/2 pseudo-headers (``:authority``) are left
out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ..models import RequestRecord, ResponseRecord
from .recorded import Recorded

_DROP = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection",
                   "keep-alive", "host"})


def _headers(items: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(h["name"]), str(h["value"])) for h in items
                 if not str(h["name"]).startswith(":") and str(h["name"]).lower() not in _DROP)


def _started(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_har(path: str) -> Iterator[Recorded]:
    with open(path, "rb") as fh:
        doc = json.load(fh)
    for i, e in enumerate(doc["log"]["entries"]):
        rq, rs = e["request"], e.get("response")
        url = urlsplit(rq["url"])
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        body = (rq.get("postData") or {}).get("text", "").encode("utf-8")
        req = RequestRecord(str(rq["method"]).upper(), url.path or "/", url.query,
                            _headers(rq.get("headers", [])), body)
        resp = None
        if rs and int(rs.get("status", 0)) > 0:
            content = rs.get("content") or {}
            text = content.get("text", "") or ""
            data = base64.b64decode(text) if content.get("encoding") == "base64" \
                else text.encode("utf-8")
            resp = ResponseRecord(status=int(rs["status"]), reason=rs.get("statusText", ""),
                                  headers=_headers(rs.get("headers", [])), body=data,
                                  size=len(data), latency=max(float(e.get("time", 0)), 0) / 1000)
        yield Recorded(f"har-{i}", _started(e["startedDateTime"]), req, target, resp)
