"""The comparator: two :class:`ResponseRecord` → a list of :class:`Difference`.

Order of the result: status, then headers, then body.

* **status**: ``Difference("status", "status", "changed", a.status, b.status)``;
  the reason phrase is not compared.
* **headers** (when the rules compare headers): see :mod:`.headers`.
* **body**:

  - either side ``truncated``: only size and SHA-256 are compared; a difference
    is ``body.bytes`` ``changed`` with ``a``/``b`` =
    ``{"size": …, "sha256": …, "truncated": …}`` (the plain digest, for in-memory
    use only: before anything is stored or shown the redactor replaces it by its
    keyed form, :meth:`Redactor.body_digest <shadowproxy.redact.redactor.Redactor.body_digest>`);
  - identical bytes: no difference, nothing parsed;
  - otherwise content codings are undone (bounded by ``max_decoded``; on failure
    the raw bytes are compared) and the media type picks the method: JSON →
    :mod:`.jsondiff` (parsed with orjson, so integers beyond the 64-bit range
    compare as doubles; a body that does not parse falls back to text), text / HTML
    / XML → :mod:`.text` line diff with scrubbers, form → :mod:`.form`, anything
    else → ``body.bytes`` with size and SHA-256. When the two sides' media types
    disagree: a binary side means bytes, else a JSON side means JSON (falling back
    to text), else text.
  - a truncated side without a SHA-256 cannot be checked: reported as different.

If either response has ``error`` set the caller should not compare them; if it
does anyway, the result is empty when both failed the same way, else one
``status`` difference whose values are the status or ``"error: <kind>"``.

At most ``limit`` differences are returned (the rest are dropped).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import orjson

from ..config import CompareRules, Config, Route
from ..models import Difference, ResponseRecord
from .decode import MediaKind, charset, content_headers, decode_content, media_kind
from .form import form_diff
from .headers import compare_headers
from .jsondiff import JsonDiffer
from .rules import CompiledRules, compile_rules
from .text import text_diff

__all__ = ["Comparator", "RuleCache", "compare_responses"]

DEFAULT_MAX_DECODED = 16 * 1024 * 1024
_NOT_JSON = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:  # valid JSON orjson refuses (integers beyond 64 bits)
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _has_bools(data: bytes) -> bool:
    return b"true" in data or b"false" in data


def _pick(ka: MediaKind, kb: MediaKind) -> MediaKind:
    if ka == kb:
        return ka
    if ka == "binary" or kb == "binary":
        return "binary"
    if ka == "json" or kb == "json":
        return "json"
    return "text"


def _fingerprint(r: ResponseRecord) -> dict[str, Any]:
    """Size and plain SHA-256 of a body: keyed by the redactor before it is stored."""
    digest = r.sha256
    if not digest and not r.truncated:
        digest = hashlib.sha256(r.body).hexdigest()
    return {"size": r.size or len(r.body), "sha256": digest, "truncated": r.truncated}


def _outcome(r: ResponseRecord) -> int | str:
    return r.status if r.error is None else f"error: {r.error}"


class Comparator:
    """Compares responses under one set of compiled rules. Thread-safe; reuse it."""

    __slots__ = ("rules", "max_decoded", "limit")

    def __init__(self, rules: CompiledRules | None = None, *,
                 max_decoded: int = DEFAULT_MAX_DECODED, limit: int = 1000) -> None:
        self.rules = rules if rules is not None else compile_rules()
        self.max_decoded = max_decoded
        self.limit = limit

    def compare(self, a: ResponseRecord, b: ResponseRecord) -> list[Difference]:
        """Differences between a first (primary) and a second response (see module doc)."""
        if a.error is not None or b.error is not None:
            if a.error == b.error:
                return []
            return [Difference("status", "status", "changed", _outcome(a), _outcome(b))]
        out: list[Difference] = []
        if a.status != b.status:
            out.append(Difference("status", "status", "changed", a.status, b.status))
        if self.rules.headers and a.headers != b.headers:
            out += compare_headers(a.headers, b.headers, self.rules.ignored_headers)
        if a.truncated or b.truncated:
            fa, fb = _fingerprint(a), _fingerprint(b)
            if fa["size"] != fb["size"] or fa["sha256"] != fb["sha256"] or not fa["sha256"]:
                out.append(Difference("body", "body.bytes", "changed", fa, fb))
        elif a.body != b.body:
            out += self._body(a, b)
        return out if len(out) <= self.limit else out[:self.limit]

    # ------------------------------------------------------------ bodies

    def _bytes(self, a: ResponseRecord, b: ResponseRecord) -> list[Difference]:
        return [Difference("body", "body.bytes", "changed", _fingerprint(a), _fingerprint(b))]

    def _body(self, a: ResponseRecord, b: ResponseRecord) -> list[Difference]:
        cta, enca = content_headers(a.headers)
        ctb, encb = content_headers(b.headers)
        da = decode_content(a.body, enca, self.max_decoded)
        db = decode_content(b.body, encb, self.max_decoded)
        if da is None or db is None:
            return self._bytes(a, b)
        if da == db:
            return []
        kind = _pick(media_kind(cta, da), media_kind(ctb, db))
        if kind == "json":
            va, vb = _loads(da), _loads(db)
            if va is not _NOT_JSON and vb is not _NOT_JSON:
                differ = JsonDiffer(self.rules, limit=self.limit)
                try:
                    return differ.diff(va, vb, bools=_has_bools(da) or _has_bools(db))
                except RecursionError:
                    pass
            kind = "text"
        if kind == "binary":
            return self._bytes(a, b)
        ta = da.decode(charset(cta), errors="replace")
        tb = db.decode(charset(ctb), errors="replace")
        scrub = self.rules.scrub if self.rules.scrubbers else None
        if kind == "form":
            return form_diff(ta, tb, scrub)
        return text_diff(ta, tb, scrub, limit=self.limit)


def compare_responses(a: ResponseRecord, b: ResponseRecord,
                      rules: CompiledRules | CompareRules | None = None) -> list[Difference]:
    """One-off comparison (compiles ``CompareRules``; prefer a reused :class:`Comparator`)."""
    if not isinstance(rules, CompiledRules):
        rules = compile_rules(rules)
    return Comparator(rules).compare(a, b)


class RuleCache:
    """Compiled rules and a :class:`Comparator` per route key, compiled up front.

    Routes without ``compare:`` rules, unknown keys and ``None`` share the
    comparator built from the global rules. Lookup is one dict access.
    """

    __slots__ = ("default", "_by_route")

    def __init__(self, global_rules: CompareRules | None = None, routes: Iterable[Route] = (), *,
                 max_decoded: int = DEFAULT_MAX_DECODED, limit: int = 1000) -> None:
        self.default = Comparator(compile_rules(global_rules), max_decoded=max_decoded,
                                  limit=limit)
        self._by_route: dict[str, Comparator] = {}
        for route in routes:
            if route.compare is not None and route.key not in self._by_route:
                self._by_route[route.key] = Comparator(
                    compile_rules(global_rules, route.compare), max_decoded=max_decoded,
                    limit=limit)

    @classmethod
    def from_config(cls, cfg: Config, *, limit: int = 1000) -> RuleCache:
        """From a loaded config; decoded bodies are capped at 16 × ``mirror.capture_max``."""
        return cls(cfg.compare, cfg.routes, max_decoded=16 * max(cfg.mirror.capture_max, 65536),
                   limit=limit)

    def comparator(self, route_key: str | None) -> Comparator:
        """The comparator for a route key (``Route.key``, i.e. ``Exchange.route``)."""
        if route_key is None:
            return self.default
        return self._by_route.get(route_key, self.default)

    def rules(self, route_key: str | None) -> CompiledRules:
        """The compiled rules for a route key."""
        return self.comparator(route_key).rules

    def compare(self, route_key: str | None, a: ResponseRecord,
                b: ResponseRecord) -> list[Difference]:
        """Compare with the route's rules."""
        return self.comparator(route_key).compare(a, b)
