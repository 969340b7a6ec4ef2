"""Query parsing and JSON answers for the admin API: time windows (``since``,
``from``/``to``), integer parameters, :class:`ApiError` (a client error the server
answers with ``{"error": ...}``) and the JSON encoding every handler uses."""

from __future__ import annotations

import dataclasses
import math
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from ..config import parse_duration

API = "/api/v1"
VERDICTS = ("match", "diff", "noise", "error")
MAX_LIMIT = 500


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS,
                                          default=_default),
                        status=status, content_type="application/json", headers=headers)


def _default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError


class ApiError(Exception):
    """A client error: answered 400 (or ``status``) with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _parse_time(value: str, name: str) -> float:
    try:
        t = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(f"{name}: expected unix seconds or an ISO 8601 time, "
                             f"got {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise ApiError(f"{name}: expected a finite time, got {value!r}")
    return t


def parse_window(query: Any, now: float | None = None) -> tuple[float | None, float | None]:
    """``since=1h`` (``all``: no bound) or ``from``/``to`` → (since, until)."""
    since_s, frm, to = query.get("since"), query.get("from"), query.get("to")
    if since_s and frm:
        raise ApiError("give either since or from/to, not both")
    now = time.time() if now is None else now
    since: float | None = None
    until: float | None = None
    if since_s and since_s != "all":
        try:
            since = now - parse_duration(since_s)
        except ValueError:
            raise ApiError(f"since: expected a duration such as 15m, 1h, 24h or 'all', "
                             f"got {since_s!r}") from None
    if frm:
        since = _parse_time(frm, "from")
    if to:
        until = _parse_time(to, "to")
    if since is not None and until is not None and until < since:
        raise ApiError("to is before from")
    return since, until


def _int_param(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise ApiError(f"{name}: expected {lo}..{hi}, got {v}")
    return v


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0
