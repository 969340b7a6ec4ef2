"""Redaction for the fleet: exchanges are redacted in the sidecar, before they leave
the pod for the stream, and the comparators compare what was redacted.

:func:`redact_for_transport` is the sidecar's half. The exchange is redacted whole
(:meth:`Redactor.redact_exchange <shadowproxy.redact.redactor.Redactor.redact_exchange>`)
under the key of ``redact.key_env`` (the same for every instance), so equal values
mask equal in every sidecar and a comparison of the redacted exchange finds a
difference where one of the originals does:

* a masked header, query value or JSON field differs between primary and candidate
  exactly when the values do (a mask is a keyed HMAC of the value);
* a body the redactor cannot keep (binary, an unknown coding) is sent empty and marked
  ``truncated``, with its size and keyed digest: the comparator then compares it by
  size and digest, as it compares any body it was not given whole, and keyed digests
  are equal exactly when the bodies are;
* a body sent in a content coding is sent decoded, which is what the comparator
  compares anyway.

:class:`Redacted` is the comparator's half: the exchanges it judges hold no secret,
so what it stores is only reduced to what the store keeps (a summary, or a whole
sample), never masked again (a mask of a mask would not equal the mask a local run
stores for the same value).
"""

from __future__ import annotations

import dataclasses

from ..models import Exchange, RequestRecord, ResponseRecord, Result
from .redactor import Redactor


def _kept(orig: ResponseRecord, red: ResponseRecord) -> ResponseRecord:
    """``red``, marked truncated (compared by size and keyed digest) when the redactor
    dropped a body it could not keep."""
    if orig.body and not red.body and not red.truncated:
        return dataclasses.replace(red, truncated=True, size=orig.size or len(orig.body))
    return red


def redact_for_transport(redactor: Redactor, ex: Exchange) -> Exchange:
    """The copy of ``ex`` a sidecar may send over the network (see module doc)."""
    red = redactor.redact_exchange(ex)
    sec = red.secondary
    if ex.secondary is not None and sec is not None:
        sec = _kept(ex.secondary, sec)
    pri, cand = _kept(ex.primary, red.primary), _kept(ex.candidate, red.candidate)
    if pri is red.primary and cand is red.candidate and sec is red.secondary:
        return red         # no body dropped (the usual case): no copy
    return dataclasses.replace(red, primary=pri, candidate=cand, secondary=sec)


def _summary(r: ResponseRecord) -> ResponseRecord:
    return ResponseRecord(status=r.status, size=r.size, sha256=r.sha256, truncated=r.truncated,
                          latency=r.latency, error=r.error)


class Redacted:
    """The comparator's stand-in for a :class:`Redactor`: its input was redacted by the
    sidecar, so a result is only reduced for the store (``whole=False``: no headers,
    bodies, reason phrases or secondary differences, as
    :meth:`Redactor.redact_result <shadowproxy.redact.redactor.Redactor.redact_result>`
    leaves)."""

    key = b""     # no key: nothing is masked here

    def redact_result(self, result: Result, *, whole: bool = True) -> Result:
        if whole:
            return result
        ex = result.exchange
        q = ex.request
        small = Exchange(id=ex.id, started=ex.started, endpoint=ex.endpoint, route=ex.route,
                         request=RequestRecord(q.method, q.path, q.query, (), b""),
                         primary=_summary(ex.primary), candidate=_summary(ex.candidate),
                         secondary=None if ex.secondary is None else _summary(ex.secondary),
                         instance=ex.instance)
        return dataclasses.replace(result, exchange=small, secondary_differences=[],
                                   summary_only=True)
