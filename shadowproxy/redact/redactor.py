"""Redaction of secrets before anything is stored.

Every exchange the comparator has judged is redacted (:meth:`Redactor.redact_result`)
before it reaches the result store, so the store, the reports and the admin API never
see a secret: whole when the store may keep it as a sample, else reduced to what the
summary rows store (path, query, errors, differences: redacted exactly as in the whole
copy, with every secret of the exchange found for the echo pass) with headers and
bodies left out, so that nothing unredacted is even handed to the store. A secret is
replaced by a *mask*::

    [redacted:3f9a0c1d2b4e]

the first 12 hex digits of ``HMAC-SHA256(key, value)``. Equal values give equal masks
(so "the candidate sends a different token than primary" stays visible), and nothing
of the value can be read back without the key.

The key
    ``redact.key_env`` names an environment variable that holds the key. When it is
    unset a random 32-byte key is drawn per run: masks then only compare within one
    run. A multi-process master draws one key (:meth:`Redactor.generate_key`) and
    passes it to its workers so that all workers mask alike.

What is masked
    * Headers named in ``DEFAULT_REDACTED_HEADERS`` + ``redact.headers`` (any case),
      in the request and every response. ``Authorization``-style values keep their
      scheme (``Bearer [redacted:…]``); ``Cookie`` keeps cookie names, ``Set-Cookie``
      keeps the name and the attributes (``Path``, ``HttpOnly``…); only values go.
    * Query parameters named in ``redact.query``, or ending with one of those names'
      words (any case and spelling: ``token`` also masks ``refreshToken``).
    * Bodies, after undoing ``Content-Encoding`` (gzip, deflate, and br when the
      ``brotli`` module is installed). The stored copy is the *decoded* body and its
      ``Content-Encoding`` header is removed. Decoded bodies are capped at
      :data:`~shadowproxy.redact.bodies.MAX_DECODED` bytes (the record is then marked
      ``truncated``).

      - JSON: values at the JSONPaths in ``DEFAULT_REDACTED_FIELDS`` + ``redact.fields``
        are masked (paths in the grammar of :mod:`shadowproxy.jsonpath`, selecting
        what they select for the comparator's rules); an object or array found there is
        masked as a whole (its orjson serialisation with sorted keys). Key names match
        case-insensitively, and a ``$..name`` field also masks keys ending with its
        words (``accessToken``, ``client_secret``, ``apiKey`` for ``$..token``,
        ``$..secret``, ``$..api_key``). String values anywhere also get the text pass
        below (``{"next": "/x?token=…"}``).
      - ``application/x-www-form-urlencoded``: values of the *sensitive names* (the
        last name of every field path, the ``redact.query`` names and the redacted
        header names).
      - other text (and JSON that does not parse, e.g. truncated): a regex pass over
        ``name: value`` / ``name=value`` / ``"name": "value"`` pairs,
        ``<name>value</name>`` and multipart ``name="…"`` parts of the sensitive names.
      - anything else (binary, undecodable, unknown encoding): the body is dropped
        (stored empty; the record keeps ``size`` and its keyed ``sha256``, below).
    * Echoes: every secret value of at least
      :data:`~shadowproxy.redact.echo.MIN_ECHO_LEN` characters found by the rules
      above is also masked wherever else it appears in the same exchange (a body
      echoing the request's token, a path, another header).
    * Body digests: a plain SHA-256 of a body whose template is known gives a short
      secret in it away by brute force, so no plain one is stored. Every digest of a
      body (a record's ``sha256``; the ``sha256`` of the ``{"size", "sha256",
      "truncated"}`` fingerprints that ``body.bytes`` differences carry) is replaced
      by :meth:`Redactor.body_digest`: ``HMAC-SHA256(digest key, SHA-256 of the
      body)`` as 64 hex digits, the digest key being ``HMAC-SHA256(key,
      DIGEST_KEY_LABEL)``. The field keeps its name ``sha256`` but is keyed: equal
      bodies still have equal digests wherever they are shown (within a run, or
      across runs sharing ``redact.key_env``), and no guessed body can be checked
      against one without the key (nor with masks, which use the key itself).

:meth:`Redactor.redact_differences` masks the ``a``/``b`` values of differences whose
path is a redacted header, a redacted JSON field (or lies under / above one), or a
sensitive form key, keys the digest of ``body.bytes`` fingerprints, and runs the text
pass (and the exchange's echoes) on the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

from ..config import RedactConfig
from ..models import Difference, Exchange, Headers, RequestRecord, ResponseRecord, Result
from .bodies import _header
from .echo import _Echo, _Secrets
from .names import concrete_path
from .values import ValueRedactor

log = logging.getLogger("shadowproxy.redact")

_CONTENT_ENCODING = frozenset({"content-encoding"})
# the bodies redacted so far in one exchange: ((body, encoding, type, truncated), result)
_Done = list[tuple[tuple[bytes, str | None, str | None, bool], tuple[bytes, bool, bool]]]


def _texts(records: Iterable[RequestRecord | ResponseRecord | None]) -> Iterator[str]:
    """Every text of the records that :meth:`Redactor._echo_record` passes (a body once
    when answers share it: a candidate's equal to primary's is the same object)."""
    bodies: list[bytes] = []
    for r in records:
        if r is None:
            continue
        for _k, v in r.headers:
            yield v
        if r.body and not any(r.body is b for b in bodies):
            bodies.append(r.body)
            yield r.body.decode("utf-8", "surrogateescape")
        if isinstance(r, RequestRecord):
            yield r.path
            yield r.query
        elif r.error:
            yield r.error


class Redactor(ValueRedactor):
    """Masks secrets in exchanges and differences. Thread-safe; cheap to share."""

    # -- construction

    @classmethod
    def from_config(cls, cfg: RedactConfig, env: Mapping[str, str] | None = None,
                    *, key: bytes | None = None) -> Redactor:
        """The key from ``env[cfg.key_env]`` when set, else ``key``, else a random one.

        A random key is per run: masks then only compare within this run (a master
        process passes its key to its workers through ``key``)."""
        env = os.environ if env is None else env
        if cfg.key_env:
            value = env.get(cfg.key_env)
            if value:
                return cls(cfg, value.encode("utf-8"))
            log.warning("redact.key_env: environment variable %s is not set; masks use a "
                        "random key and only compare within this run", cfg.key_env)
        return cls(cfg, key if key else cls.generate_key())

    # -- records

    def _headers(self, headers: Sequence[tuple[str, str]], secrets: _Secrets,
                 drop: frozenset[str] = frozenset(),
                 keep: bool = True) -> Headers:
        """The stored headers (without ``drop``), their secrets added to ``secrets``.
        ``keep=False``: only the secrets (a summary stores no headers)."""
        out = []
        redacted, plain = self.headers, self._plain
        for k, v in headers:
            lname = k.lower()
            if lname in drop:
                continue
            if lname not in redacted and (v in plain or ("=" not in v and ":" not in v)):
                if keep:
                    out.append((k, v))   # what redact_header_value returns, sooner
            else:
                red = self.redact_header_value(k, v, secrets)
                if keep:
                    out.append((k, red))
        return tuple(out)

    def _body(self, body: bytes, headers: Headers, truncated: bool, secrets: _Secrets,
              done: _Done) -> tuple[bytes, bool, bool]:
        """:meth:`redact_body`, once per distinct input in an exchange (``done``: inputs
        and outputs so far, compared rather than hashed: bodies of different lengths
        differ at no cost)."""
        if not body:
            return body, False, False
        key = (body, _header(headers, "content-encoding"), _header(headers, "content-type"),
               truncated)
        for k, out in done:
            if k == key:
                return out
        out = self._redact_body(*key, secrets)
        done.append((key, out))
        return out

    def _request(self, r: RequestRecord, secrets: _Secrets, done: _Done, whole: bool
                 ) -> RequestRecord:
        body, decoded, _cut = self._body(r.body, r.headers, False, secrets, done)
        query = self.redact_query(r.query, secrets)
        headers = self._headers(r.headers, secrets, _CONTENT_ENCODING if decoded else frozenset(),
                                keep=whole)
        if not whole:
            return RequestRecord(method=r.method, path=r.path, query=query, headers=(), body=b"")
        return RequestRecord(method=r.method, path=r.path, query=query, headers=headers,
                             body=body)

    def _response(self, r: ResponseRecord, secrets: _Secrets, done: _Done, whole: bool
                  ) -> ResponseRecord:
        body, decoded, cut = self._body(r.body, r.headers, r.truncated, secrets, done)
        headers = self._headers(r.headers, secrets, _CONTENT_ENCODING if decoded else frozenset(),
                                keep=whole)
        error = self.redact_text(r.error, secrets) if r.error else r.error
        if not whole:
            return ResponseRecord(status=r.status, size=r.size,
                                  sha256=self.body_digest(r.sha256),
                                  truncated=r.truncated, latency=r.latency, error=error)
        # a sample identifies the body it may not store (binary, cut): the digest of the
        # whole body as received, which a capture computes only for a body it cut; keyed,
        # as every stored digest (a plain one gives a short secret in a known body away)
        digest = r.sha256 or ("" if r.truncated else hashlib.sha256(r.body).hexdigest())
        digest = self.body_digest(digest)
        return ResponseRecord(status=r.status, reason=r.reason, headers=headers, body=body,
                              size=r.size, sha256=digest, truncated=r.truncated or cut,
                              latency=r.latency, error=error)

    @staticmethod
    def _echo_record(r: Any, echo: _Echo) -> Any:
        if r is None:
            return None
        headers = tuple((k, echo(v)) for k, v in r.headers)
        body = r.body
        if body:
            text = body.decode("utf-8", "surrogateescape")
            new = echo(text)
            if new != text:
                body = new.encode("utf-8", "surrogateescape")
        if isinstance(r, RequestRecord):
            return RequestRecord(method=r.method, path=echo(r.path), query=echo(r.query),
                                 headers=headers, body=body)
        return ResponseRecord(status=r.status, reason=r.reason, headers=headers, body=body,
                              size=r.size, sha256=r.sha256, truncated=r.truncated,
                              latency=r.latency, error=echo(r.error))

    def _redact_exchange(self, ex: Exchange, whole: bool = True) -> tuple[Exchange, _Secrets]:
        """A redacted copy of ``ex`` and the secrets found in it. ``whole=False``: the
        records keep only what a summary row stores (no headers, bodies or reason phrases).
        Every header value and body is redacted either way, since a secret found anywhere
        is masked wherever it is echoed (path, query, errors, differences), but each
        distinct body only once: a candidate usually answers primary's bytes, and equal
        input gives the same output and finds the same secrets."""
        secrets = _Secrets()
        done: _Done = []   # bodies redacted so far
        req = self._request(ex.request, secrets, done, whole)
        pri = self._response(ex.primary, secrets, done, whole)
        cand = self._response(ex.candidate, secrets, done, whole)
        sec = None if ex.secondary is None else self._response(ex.secondary, secrets, done, whole)
        echo = secrets.echo()
        # most secrets were masked where they were found: one search of every text first
        if echo is not None and echo.found_in(_texts((req, pri, cand, sec))):
            req, pri, cand, sec = (self._echo_record(r, echo) for r in (req, pri, cand, sec))
        out = Exchange(id=ex.id, started=ex.started, endpoint=ex.endpoint, route=ex.route,
                       request=req, primary=pri, candidate=cand, secondary=sec,
                       instance=ex.instance)
        return out, secrets

    def redact_target(self, target: str, headers: Sequence[tuple[str, str]]) -> str:
        """A request target (origin form) as the store would keep its path and query:
        sensitive query values masked, and the secrets of the request's headers masked
        wherever they are echoed in it."""
        path, sep, query = target.partition("?")
        secrets = _Secrets()
        self._headers(headers, secrets, keep=False)
        if sep:
            query = self.redact_query(query, secrets)
        out = f"{path}?{query}" if sep else path
        echo = secrets.echo()
        return echo(out) if echo is not None else out

    def redact_exchange(self, ex: Exchange) -> Exchange:
        """A redacted copy of ``ex`` (the original is not modified)."""
        return self._redact_exchange(ex)[0]

    # -- differences

    def _redact_value(self, d: Difference, value: Any, secrets: _Secrets) -> Any:
        if value is None:
            return None
        if d.section == "header":
            name = d.path.split(".", 1)[1] if "." in d.path else d.path
            if name.lower() in self.headers:
                if isinstance(value, list):
                    return [self.redact_header_value(name, str(v), secrets) for v in value]
                return self.redact_header_value(name, str(value), secrets)
        elif d.path.startswith("body.form."):
            key = unquote_plus(d.path[len("body.form."):])
            if key in self.sensitive:
                return self._mask_tree(value, secrets)
        elif d.path == "body.bytes" and isinstance(value, dict):
            # the comparator's fingerprint of a body: its plain digest is keyed
            return self._walk(self._fingerprint(value), frozenset(), secrets)
        elif d.path.startswith("$"):
            keys = concrete_path(d.path)
            if keys is None:   # not parseable as a concrete path: be safe
                return self._mask_tree(value, secrets)
            return self.redact_json(value, secrets, keys)
        if isinstance(value, str):
            return self.redact_text(value, secrets)
        if isinstance(value, (dict, list)):
            return self._walk(value, frozenset(), secrets)
        return value

    def redact_differences(self, diffs: Iterable[Difference], *, _secrets: _Secrets | None = None
                           ) -> list[Difference]:
        """Differences with the values of redacted headers/fields masked."""
        secrets = _secrets if _secrets is not None else _Secrets()
        staged = [(d, self._redact_value(d, d.a, secrets), self._redact_value(d, d.b, secrets))
                  for d in diffs]
        echo = secrets.echo()
        out = []
        for d, a, b in staged:
            if echo is not None:
                a, b = self._echo_value(a, echo), self._echo_value(b, echo)
            if a is d.a and b is d.b:
                out.append(d)
            else:
                out.append(dataclasses.replace(d, a=a, b=b))
        return out

    def _echo_value(self, v: Any, echo: _Echo) -> Any:
        if isinstance(v, str):
            new = echo(v)
            return v if new == v else new
        if isinstance(v, list):
            return [self._echo_value(x, echo) for x in v]
        if isinstance(v, dict):
            return {k: self._echo_value(x, echo) for k, x in v.items()}
        return v

    def redact_result(self, result: Result, *, whole: bool = True) -> Result:
        """The result with its exchange and differences redacted.

        ``whole=False`` when the store will keep no sample of it
        (:meth:`StoreWriter.keeps_sample <shadowproxy.store.writer.StoreWriter.keeps_sample>`):
        the exchange is then reduced to what the summary row stores (no headers, bodies or
        reason phrases; path, query and errors redacted as in the whole copy), the
        secondary differences (kept only in samples) are left out, and the result is
        marked ``summary_only`` so that no store keeps it as a sample."""
        ex, secrets = self._redact_exchange(result.exchange, whole)
        diffs = self.redact_differences(result.differences, _secrets=secrets)
        sdiffs = self.redact_differences(result.secondary_differences, _secrets=secrets) \
            if whole else []
        return dataclasses.replace(result, exchange=ex, differences=diffs,
                                   secondary_differences=sdiffs, summary_only=not whole)
