"""HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/) read as recorded exchanges.

A HAR entry has the request (``method``, ``url``, ``headers``, ``postData.text`` or
``postData.params``) and the response (``status``, ``statusText``, ``headers``,
``content.text``, base64 when ``content.encoding`` says so; none when ``status`` is 0 or
the export left a body of ``content.size`` > 0 out), its start (``startedDateTime``,
ISO 8601) and its time (``time``, ms). Browsers export bodies decoded, so a
``Content-Encoding`` header of the response is dropped with its framing; HTTP/2
pseudo-headers (``:authority``) are left out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from ..errors import ShadowProxyError
from ..models import RequestRecord, ResponseRecord
from .recorded import Recorded

_DROP = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection",
                   "keep-alive", "host"})


def _headers(items: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((str(h["name"]), str(h["value"])) for h in items
                 if not str(h["name"]).startswith(":") and str(h["name"]).lower() not in _DROP)


def _started(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _body(post: dict[str, Any] | None) -> bytes:
    """A request's body: ``postData.text``, else its ``params`` form-encoded (HAR 1.2
    has one or the other; Firefox and Charles export a form as ``params``)."""
    if not post:
        return b""
    if post.get("text") is not None:
        return str(post["text"]).encode("utf-8")
    params = post.get("params") or []
    return urlencode([(str(p["name"]), str(p.get("value", ""))) for p in params]).encode()


def _response(e: dict[str, Any]) -> ResponseRecord | None:
    """The recorded answer, or None: none (``status`` 0: the browser got none), or one
    whose body the export left out (``content.size`` > 0 without ``text``), which is
    no reference to compare with."""
    rs = e.get("response")
    if not rs or int(rs.get("status", 0)) <= 0:
        return None
    content = rs.get("content") or {}
    text = content.get("text")
    if text is None:
        if int(content.get("size", 0) or 0) > 0:
            return None
        text = ""
    data = base64.b64decode(text) if content.get("encoding") == "base64" \
        else str(text).encode("utf-8")
    return ResponseRecord(status=int(rs["status"]), reason=str(rs.get("statusText", "")),
                          headers=_headers(rs.get("headers", [])), body=data, size=len(data),
                          latency=max(float(e.get("time", 0) or 0), 0) / 1000)


def read_har(path: str) -> Iterator[Recorded]:
    """The entries of ``path``; an entry that cannot be read fails the whole file with
    an error naming the file and the entry (``log.entries[N]``): nothing is skipped
    without a word."""
    with open(path, "rb") as fh:
        doc = json.load(fh)
    try:
        entries = doc["log"]["entries"]
    except (KeyError, TypeError) as exc:
        raise ShadowProxyError(f"{path}: not a HAR 1.2 file (no log.entries: {exc})") from None
    for i, e in enumerate(entries):
        try:
            rq = e["request"]
            url = urlsplit(rq["url"])
            target = (url.path or "/") + (f"?{url.query}" if url.query else "")
            req = RequestRecord(str(rq["method"]).upper(), url.path or "/", url.query,
                                _headers(rq.get("headers", [])), _body(rq.get("postData")))
            item = Recorded(f"har-{i}", _started(e["startedDateTime"]), req, target,
                            _response(e))
        except KeyError as exc:
            raise ShadowProxyError(f"{path}: log.entries[{i}]: no {exc}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ShadowProxyError(f"{path}: log.entries[{i}]: {exc}") from None
        yield item
