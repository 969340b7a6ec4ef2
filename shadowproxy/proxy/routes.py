"""Route matching and endpoint keys.

A route's ``match`` is a path template: ``{name}`` matches one segment,
``*`` one segment, ``**`` any number of segments (including none).
Requests that match no route get an automatic endpoint key: id-like segments
(numbers, UUIDs, long hex, long mixed tokens) become ``{id}``. The number of
distinct keys is capped; beyond the cap every new key falls into ``OVERFLOW``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from functools import lru_cache

from ..config import Route
from ..routepattern import RoutePattern

OVERFLOW = "(other)"

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}$")
_NUM = re.compile(r"^[-+]?\d+(?:\.\d+)?$")
_HEX = re.compile(r"^[0-9a-fA-F]{12,}$")
_TOKEN = re.compile(r"^(?=.*\d)[A-Za-z0-9_\-=.~%]{16,}$")


@lru_cache(maxsize=4096)
def template_path(path: str) -> str:
    """``/api/users/42/orders/9f1c...`` → ``/api/users/{id}/orders/{id}``.

    Cached (bounded): most traffic repeats a small set of paths."""
    out = []
    for seg in path.split("/"):
        if seg and (_NUM.match(seg) or _UUID.match(seg) or _HEX.match(seg) or
                    _TOKEN.match(seg) or len(seg) > 64):
            out.append("{id}")
        else:
            out.append(seg)
    return "/".join(out) or "/"


class Router:
    """Finds the route for a request and its bounded endpoint key. Thread-safe."""

    def __init__(self, routes: Sequence[Route], max_endpoints: int = 200) -> None:
        self.routes = tuple(routes)
        self._compiled = [(RoutePattern(r.match), r) for r in self.routes]
        self._max = max_endpoints
        self._seen: set[str] = {r.key for r in self.routes}
        self._lock = threading.Lock()

    def route(self, method: str, path: str) -> Route | None:
        for pattern, route in self._compiled:
            if pattern.matches(path) and (route.methods is None or method in route.methods):
                return route
        return None

    def endpoint(self, route: Route | None, method: str, path: str) -> str:
        if route is not None:
            return route.key
        key = template_path(path)
        if key in self._seen:
            return key
        with self._lock:
            if key in self._seen:
                return key
            if len(self._seen) >= self._max + len(self.routes):
                return OVERFLOW
            self._seen.add(key)
            return key
