"""Documents the API answers with beyond the store's rows: a field's section, a noise
decision's evidence, and the human-readable detail of a sampled exchange (two stored
bodies rebuilt as responses and compared)."""

from __future__ import annotations

import base64
import logging
import math
from typing import Any

log = logging.getLogger("shadowproxy.admin")


def _section(field: str) -> str:
    if field == "status":
        return "status"
    if field.startswith("header."):
        return "header"
    return "body"


def _evidence_doc(e: Any, source: str) -> dict[str, Any]:
    p = e.p_value
    return {"n": e.n, "r": e.r, "s": e.s,
            "p_value": None if p is None or not math.isfinite(p) else p,
            "noise": bool(e.noise), "provisional": bool(e.provisional),
            "decided_at": e.decided_at or None, "source": source}


def _record(doc: dict[str, Any] | None) -> Any:
    """A stored sample's response as a ResponseRecord (for the detail text)."""
    from ..models import ResponseRecord

    if not doc or doc.get("body") is None:
        return None
    body = doc["body"]
    data = base64.b64decode(body) if doc.get("body_encoding") == "base64" \
        else str(body).encode()
    headers = tuple((str(k), str(v)) for k, v in doc.get("headers") or ()
                    if str(k).lower() != "content-encoding")
    return ResponseRecord(status=int(doc.get("status") or 0), headers=headers, body=data,
                          size=len(data))


def _detail(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    """DeepDiff's human-readable report of two stored bodies (None when unavailable)."""
    try:
        ra, rb = _record(a), _record(b)
        if ra is None or rb is None or (not ra.body and not rb.body):
            return None
        from ..compare.detail import response_detail

        return response_detail(ra, rb) or None
    except Exception:
        log.debug("admin: detail failed", exc_info=True)
        return None
