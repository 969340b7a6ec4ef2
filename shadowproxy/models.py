"""The data passed between stages: proxy/mirror → comparator → store.

These are plain slotted dataclasses of bytes, strings and numbers so they can
be pickled or serialised (orjson) to cross a process or network boundary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from operator import attrgetter
from typing import Any, Literal

Headers = tuple[tuple[str, str], ...]   # (name, value) in wire order, names as received


@dataclass(slots=True)
class RequestRecord:
    method: str
    path: str          # raw path as received, percent-encoding preserved
    query: str         # raw query string, without '?'
    headers: Headers   # end-to-end headers the client sent
    body: bytes


@dataclass(slots=True)
class ResponseRecord:
    """One upstream's answer as captured for comparison (never shown to a client)."""

    status: int                 # 0 when there was no complete response
    reason: str = ""
    headers: Headers = ()
    body: bytes = b""           # the first capture_max bytes
    size: int = 0               # body bytes seen in total
    # hex SHA-256 of the whole body (when truncated; a capture hashes no other body);
    # once redacted (all that is stored or shown) HMAC-SHA256 keyed with the run's
    # redaction key instead (Redactor.body_digest): equal bodies, equal digests
    sha256: str = ""
    truncated: bool = False     # size > len(body)
    latency: float = 0.0        # seconds from dispatch to the last body byte (or failure)
    error: str | None = None    # connect, timeout, reset, protocol, ... when it failed

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class Exchange:
    """A mirrored request and what each upstream answered."""

    id: str
    started: float              # unix time the request arrived
    endpoint: str               # bounded endpoint key
    route: str | None
    request: RequestRecord
    primary: ResponseRecord
    candidate: ResponseRecord
    secondary: ResponseRecord | None = None
    # the instance (sidecar) that mirrored it, when it came over a fleet's transport;
    # None: the instance that stores it (a local run)
    instance: str | None = None


_REQUEST_FIELDS = attrgetter(*(f.name for f in fields(RequestRecord)))
_RESPONSE_FIELDS = attrgetter(*(f.name for f in fields(ResponseRecord)))


def failed(status: int, error: str | None) -> bool:
    """A side failed an exchange: no complete response, or a 5xx (one definition for
    the comparator's noise learning, the store's aggregates and the checks)."""
    return error is not None or status <= 0 or 500 <= status <= 599


def to_wire(ex: Exchange) -> tuple[Any, ...]:
    """``ex`` as nested tuples of its fields' values in declaration order: what the
    channel sends (for 1 KB bodies ~2.5× cheaper to pickle and ~1.5× to unpickle than
    the dataclasses)."""
    sec = ex.secondary
    return (ex.id, ex.started, ex.endpoint, ex.route, _REQUEST_FIELDS(ex.request),
            _RESPONSE_FIELDS(ex.primary), _RESPONSE_FIELDS(ex.candidate),
            None if sec is None else _RESPONSE_FIELDS(sec), ex.instance)


def from_wire(t: tuple[Any, ...]) -> Exchange:
    """The :class:`Exchange` that :func:`to_wire` turned into ``t``."""
    id_, started, endpoint, route, req, pri, cand, sec, instance = t
    return Exchange(id_, started, endpoint, route, RequestRecord(*req), ResponseRecord(*pri),
                    ResponseRecord(*cand), None if sec is None else ResponseRecord(*sec),
                    instance)


DiffKind = Literal["changed", "type_changed", "added", "removed", "length_changed"]
# array indexes ``[3]`` and keyed-array selectors ``[id=7]`` / ``['user id'=null]``
_INDEX = re.compile(r"\[(?:\d+|(?:[A-Za-z_]\w*|'(?:[^'\\]|\\.)*')=(?:'(?:[^'\\]|\\.)*'|[^'\]]*))\]",
                    re.ASCII)


@lru_cache(maxsize=4096)
def fold_path(path: str) -> str:
    """Array indexes and keyed selectors folded:
    ``$.users[id=7].tags[2]`` → ``$.users[*].tags[*]``. Cached (bounded): the comparator,
    the noise learner and the store fold the same few paths over and over."""
    return _INDEX.sub("[*]", path)


@dataclass(slots=True, frozen=True)
class Difference:
    """One difference between two responses.

    section: ``status``, ``header``, ``body``.
    path: ``status``; ``header.<lower-name>``; JSONPath (``$.user.tags[2]``) for JSON
    bodies; ``body.line[N]`` / ``body.form.<key>`` / ``body.bytes`` otherwise.
    ``added``: present only in the second (candidate) response; ``removed``: only in the first.
    """

    section: str
    path: str
    kind: DiffKind
    a: Any = None        # short value in the first (primary) response
    b: Any = None        # short value in the second (candidate/secondary) response

    @property
    def field(self) -> str:
        """The path with array indexes and keyed selectors folded (``$.items[*].id``):
        the unit of noise and of per-field statistics."""
        return fold_path(self.path)


Verdict = Literal["match", "diff", "noise", "error"]


@dataclass(slots=True)
class Result:
    """What the comparator concluded about one exchange; what the store keeps."""

    exchange: Exchange
    verdict: Verdict
    differences: list[Difference] = field(default_factory=list)   # primary vs candidate
    noise_fields: frozenset[str] = frozenset()                     # of those, judged noise
    secondary_differences: list[Difference] = field(default_factory=list)
    # the exchange holds only what a summary row stores (no headers, bodies or reason
    # phrases: Redactor.redact_result(whole=False)); a store never keeps it as a sample
    summary_only: bool = False
