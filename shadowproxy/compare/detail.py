"""Human-readable detail for a stored sample, using DeepDiff (slow: a few samples only).

Called for the first few samples of a field, never per request. JSON bodies get
DeepDiff's ``pretty()`` report (``verbose_level=2``; integral floats are made ints
first so ``1`` vs ``1.0`` is no difference, while ``true`` vs ``1`` still is); other
bodies a unified line diff. Output is capped at ``max_chars``.
"""

from __future__ import annotations

import difflib
from typing import Any

import orjson

from ..models import ResponseRecord
from .decode import charset, decode_content, header

__all__ = ["json_detail", "response_detail"]

_NOT_JSON = object()


def _cap(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + "\n…"


def _ints(v: Any) -> Any:
    """``v`` with integral floats as ints (numbers are one JSON type)."""
    if type(v) is float and v.is_integer() and abs(v) < 2**63:
        return int(v)
    if type(v) is dict:
        return {k: _ints(x) for k, x in v.items()}
    if type(v) is list:
        return [_ints(x) for x in v]
    return v


def json_detail(a: Any, b: Any, *, max_chars: int = 4000) -> str:
    """DeepDiff's readable report of two parsed JSON values ('' when equal)."""
    from deepdiff import DeepDiff  # heavy; only needed for samples

    diff = DeepDiff(_ints(a), _ints(b), verbose_level=2, ignore_order=False,
                    threshold_to_diff_deeper=0)
    return _cap(diff.pretty(), max_chars) if diff else ""


def _body(r: ResponseRecord, limit: int) -> bytes:
    decoded = decode_content(r.body, header(r.headers, "content-encoding"), limit)
    return r.body if decoded is None else decoded


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def response_detail(a: ResponseRecord, b: ResponseRecord, *, max_chars: int = 4000,
                    max_decoded: int = 16 * 1024 * 1024) -> str:
    """Readable body detail for one stored pair of responses."""
    da, db = _body(a, max_decoded), _body(b, max_decoded)
    va, vb = _json(da), _json(db)
    if va is not _NOT_JSON and vb is not _NOT_JSON:
        return json_detail(va, vb, max_chars=max_chars)
    ta = da.decode(charset(header(a.headers, "content-type")), errors="replace")
    tb = db.decode(charset(header(b.headers, "content-type")), errors="replace")
    lines = difflib.unified_diff(ta.splitlines(), tb.splitlines(), "primary", "candidate",
                                 lineterm="", n=2)
    return _cap("\n".join(lines), max_chars)
