"""The fleet's wire format: one :class:`~shadowproxy.models.Exchange` per stream entry.

The stream is a network boundary: anyone who can write to Redis can write an entry,
so what a comparator reads off it must be data, never code (pickle would run
whatever it was given). An entry has two fields:

``v``
    the format's version, ASCII digits (``2``; sidecars write :data:`VERSION`). A
    comparator reads only the versions it knows (:data:`READS`); any other entry is
    refused, counted ``dropped{transport_refused}`` and moved to the dead-letter
    stream, never guessed at.
``x``
    the exchange as MessagePack (bodies are raw ``bin``, text is ``str``), version 2::

        [id, started, endpoint, route, request, primary, candidate, secondary, instance]
        request  = [method, path, query, headers, body]
        response = [status, reason, headers, body, size, sha256, truncated, latency, error]
        headers  = [[name, value], ...]

    ``instance`` is the sidecar's (``instance:`` of its config, a valid instance name):
    the comparator stores the exchange and counts its outcome under it, so a fleet's
    rows say which sidecar mirrored each request. Version 1 is the same without
    ``instance``; a comparator still reads it and labels what it stores with its own
    name, as before version 2. ``route``, ``secondary`` and ``error`` may be nil. Every
    field is checked for its type on the way in; a frame that does not match is
    refused like an unknown version.

Everything in an entry has been redacted by the sidecar (see
:meth:`Redactor.redact_for_transport <shadowproxy.redact.redactor.Redactor.redact_for_transport>`),
so the stream, Redis's RDB and AOF files and the comparators never hold a secret.
docs/fleet.md ("The wire format") describes the same.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..config import INSTANCE_NAME
from ..models import Exchange, RequestRecord, ResponseRecord

VERSION = b"2"                    # what a sidecar writes
READS = (b"1", b"2")              # what a comparator reads
MAX_ENTRY = 64 * 1024 * 1024     # bytes of one packed exchange a comparator unpacks
# the largest numbers an entry may carry: what the store's columns hold (status: a
# smallint-sized code, 0 for "no answer"; size: int8; started: seconds before 2262)
MAX_STATUS = 999
MAX_SIZE = 2**62
MAX_STARTED = 9.2e9
MAX_LATENCY = 86400.0 * 365


class RefusedFrame(ValueError):
    """An entry a comparator will not read: ``reason`` is ``version`` or ``malformed``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _response(r: ResponseRecord) -> list[Any]:
    return [r.status, r.reason, [list(h) for h in r.headers], r.body, r.size, r.sha256,
            r.truncated, r.latency, r.error]


def pack(ex: Exchange, instance: str | None = None) -> bytes:
    """The ``x`` field of ``ex``'s entry (:data:`VERSION`), mirrored by the sidecar
    ``instance`` (default ``ex.instance``; one of them must be given)."""
    name = instance if instance is not None else ex.instance
    if name is None:
        raise ValueError("an exchange for the stream needs the sidecar's instance name")
    q = ex.request
    sec = ex.secondary
    data: bytes = msgpack.packb(
        [ex.id, ex.started, ex.endpoint, ex.route,
         [q.method, q.path, q.query, [list(h) for h in q.headers], q.body],
         _response(ex.primary), _response(ex.candidate),
         None if sec is None else _response(sec), name], use_bin_type=True)
    return data


def fields(ex: Exchange, instance: str | None = None) -> dict[bytes, bytes]:
    """The entry of ``ex`` (what XADD adds)."""
    return {b"v": VERSION, b"x": pack(ex, instance)}


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RefusedFrame("malformed", what)


def _str(v: Any, what: str) -> str:
    _check(isinstance(v, str), what)
    return str(v)


def _headers(v: Any, what: str) -> tuple[tuple[str, str], ...]:
    _check(isinstance(v, list), what)
    out = []
    for h in v:
        _check(isinstance(h, list) and len(h) == 2 and isinstance(h[0], str)
               and isinstance(h[1], str), what)
        out.append((h[0], h[1]))
    return tuple(out)


def _num(v: Any, what: str, top: float) -> float:
    """A number in [0, ``top``]: an infinity, a NaN or a value no store column holds
    (a timestamp past any date, a status beyond int4) would be judged, then fail in
    the store on every delivery and end as a dead letter besides its count."""
    _check(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= top, what)
    return float(v)


def _int(v: Any, what: str, top: int) -> int:
    _check(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top, what)
    return int(v)


def _resp(v: Any, what: str) -> ResponseRecord:
    _check(isinstance(v, list) and len(v) == 9, what)
    status, reason, headers, body, size, sha, truncated, latency, error = v
    _check(isinstance(body, bytes), f"{what}.body")
    _check(isinstance(truncated, bool), f"{what}.truncated")
    _check(error is None or isinstance(error, str), f"{what}.error")
    return ResponseRecord(status=_int(status, f"{what}.status", MAX_STATUS),
                          reason=_str(reason, f"{what}.reason"),
                          headers=_headers(headers, f"{what}.headers"), body=body,
                          size=_int(size, f"{what}.size", MAX_SIZE),
                          sha256=_str(sha, f"{what}.sha256"), truncated=truncated,
                          latency=_num(latency, f"{what}.latency", MAX_LATENCY), error=error)


def unpack(data: bytes, version: bytes = VERSION) -> Exchange:
    """The exchange of an ``x`` field of ``version`` (one of :data:`READS`);
    :class:`RefusedFrame` when it is not one."""
    if len(data) > MAX_ENTRY:
        raise RefusedFrame("malformed", f"{len(data)} bytes, more than {MAX_ENTRY}")
    try:
        t = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RefusedFrame("malformed", f"not MessagePack ({exc})") from None
    _check(isinstance(t, list) and len(t) == (8 if version == b"1" else 9), "not an exchange")
    instance = None
    if version != b"1":
        instance = t.pop()
        _check(isinstance(instance, str) and INSTANCE_NAME.fullmatch(instance) is not None,
               "instance")
    id_, started, endpoint, route, req, pri, cand, sec = t
    _check(route is None or isinstance(route, str), "route")
    _check(isinstance(req, list) and len(req) == 5, "request")
    method, path, query, headers, body = req
    _check(isinstance(body, bytes), "request.body")
    request = RequestRecord(_str(method, "request.method"), _str(path, "request.path"),
                            _str(query, "request.query"),
                            _headers(headers, "request.headers"), body)
    return Exchange(id=_str(id_, "id"), started=_num(started, "started", MAX_STARTED),
                    endpoint=_str(endpoint, "endpoint"), route=route, request=request,
                    primary=_resp(pri, "primary"), candidate=_resp(cand, "candidate"),
                    secondary=None if sec is None else _resp(sec, "secondary"),
                    instance=instance)


def read_entry(entry: dict[bytes, bytes]) -> Exchange:
    """The exchange of a stream entry; :class:`RefusedFrame` for an unknown version or a
    malformed one."""
    version = entry.get(b"v")
    if version not in READS:
        shown = version[:16].decode("ascii", "replace") if isinstance(version, bytes) else None
        raise RefusedFrame("version", f"version {shown!r} (this comparator reads "
                           f"{', '.join(v.decode() for v in READS)})")
    data = entry.get(b"x")
    if not isinstance(data, bytes):
        raise RefusedFrame("malformed", "no x field")
    return unpack(data, version)
