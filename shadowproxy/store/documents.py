"""How a judged exchange is stored as documents, independent of the database engine.

A sample is the whole redacted result as one JSON document (:func:`sample_document`:
request, every response with headers and body, the differences); a difference's values
``a``/``b`` are kept as short JSON text (:func:`_json_text`, :func:`_json_value`); and
:func:`_sample_keys` names what a result may be kept as a sample for. The SQLite store
uses these, and a PostgreSQL store would store the same documents.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from ..models import Difference, Exchange, RequestRecord, ResponseRecord, Result
from .base import ERROR_SAMPLE, MATCH_SAMPLE

DIFF_VALUE_MAX = 512          # bytes of JSON text kept for a difference's a / b
SAMPLE_BODY_MAX = 256 * 1024  # bytes of each body kept in a sample


def _body_doc(body: bytes) -> dict[str, Any]:
    """A body as stored in a sample: UTF-8 text, else base64; at most SAMPLE_BODY_MAX."""
    cut = len(body) > SAMPLE_BODY_MAX
    data = body[:SAMPLE_BODY_MAX] if cut else body
    if _utf8_prefix_ok(data):
        return {"body": data.decode("utf-8", "ignore"), "body_encoding": "utf-8",
                "body_truncated": cut}
    return {"body": base64.b64encode(data).decode("ascii"), "body_encoding": "base64",
            "body_truncated": cut}


def _utf8_prefix_ok(data: bytes) -> bool:
    """Is ``data`` UTF-8 but for a character cut at its end?"""
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3:
            try:
                data[:exc.start].decode("utf-8")
                return True
            except UnicodeDecodeError:
                return False
        return False


def _json_text(value: Any) -> str | None:
    """A difference's value as short JSON text (None for an absent value)."""
    if value is None:
        return None
    try:
        raw = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        raw = orjson.dumps(repr(value))
    if len(raw) > DIFF_VALUE_MAX:
        text = raw[:DIFF_VALUE_MAX - 16].decode("utf-8", "ignore") + "…"
        raw = orjson.dumps(text)
    return raw.decode()


def _json_value(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _diff_doc(d: Difference, noise: bool) -> dict[str, Any]:
    return {"section": d.section, "path": d.path, "field": d.field, "kind": d.kind,
            "a": d.a, "b": d.b, "noise": noise}


def _request_doc(r: RequestRecord) -> dict[str, Any]:
    return {"method": r.method, "path": r.path, "query": r.query,
            "headers": [list(h) for h in r.headers], **_body_doc(r.body)}


def _response_doc(r: ResponseRecord | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"status": r.status, "reason": r.reason, "headers": [list(h) for h in r.headers],
            "size": r.size, "sha256": r.sha256, "truncated": r.truncated,
            "latency": r.latency, "error": r.error, **_body_doc(r.body)}


def sample_document(result: Result) -> dict[str, Any]:
    """The stored form of a whole (redacted) result, as :meth:`SqliteStore.exchange`
    returns it for sampled exchanges."""
    ex: Exchange = result.exchange
    nf = result.noise_fields
    return {
        "id": ex.id, "time": ex.started, "endpoint": ex.endpoint, "route": ex.route,
        "verdict": result.verdict, "sampled": True,
        "request": _request_doc(ex.request),
        "primary": _response_doc(ex.primary),
        "candidate": _response_doc(ex.candidate),
        "secondary": _response_doc(ex.secondary),
        "differences": [_diff_doc(d, d.field in nf) for d in result.differences],
        "noise_fields": sorted(nf),
        "secondary_differences": [_diff_doc(d, False) for d in result.secondary_differences],
    }


def _sample_keys(res: Result) -> list[str]:
    """What a result may be kept as a sample for (within its endpoint): ``#match`` or
    ``#error`` by verdict, and the field of each difference."""
    keys: list[str] = []
    if res.verdict == "match":
        keys.append(MATCH_SAMPLE)
    elif res.verdict == "error":
        keys.append(ERROR_SAMPLE)
    keys.extend(sorted({d.field for d in res.differences}))
    return keys


# ------------------------------------------------------------------ rows (both engines)


def exchange_row(res: Result, sampled: bool) -> tuple[Any, ...]:
    """The exchanges row of ``res``, in :data:`shadowproxy.store.window.EX_COLS`' order."""
    ex = res.exchange
    p, c, s = ex.primary, ex.candidate, ex.secondary
    nf = res.noise_fields
    return (ex.id, float(ex.started), ex.endpoint, ex.route, ex.request.method,
            ex.request.path, ex.request.query or "", res.verdict, p.status, c.status,
            s.status if s else None, float(p.latency), float(c.latency),
            float(s.latency) if s else None, p.size, c.size, p.error, c.error,
            len(res.differences), sum(1 for d in res.differences if d.field in nf),
            1 if sampled else 0)


def difference_rows(res: Result) -> list[tuple[Any, ...]]:
    """The differences rows of ``res``: (exchange_id, endpoint, time, section, path,
    field, kind, a, b, noise)."""
    ex, nf = res.exchange, res.noise_fields
    out = []
    for d in res.differences:
        f = d.field
        out.append((ex.id, ex.endpoint, float(ex.started), d.section, d.path, f, d.kind,
                    _json_text(d.a), _json_text(d.b), 1 if f in nf else 0))
    return out


def sample_blob(res: Result) -> bytes:
    """The stored form of a sample: :func:`sample_document` as orjson."""
    return orjson.dumps(sample_document(res), default=str, option=orjson.OPT_NON_STR_KEYS)

