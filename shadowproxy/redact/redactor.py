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
      :data:`MAX_DECODED` bytes (the record is then marked ``truncated``).

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
    * Echoes: every secret value of at least :data:`MIN_ECHO_LEN` characters found
      by the rules above is also masked wherever else it appears in the same
      exchange (a body echoing the request's token, a path, another header).
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
import functools
import hashlib
import hmac
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus

import orjson

from .. import jsonpath
from ..compare.decode import decode_brotli
from ..config import DEFAULT_REDACTED_FIELDS, DEFAULT_REDACTED_HEADERS, RedactConfig
from ..errors import ConfigError
from ..models import Difference, Exchange, Headers, RequestRecord, ResponseRecord, Result

try:  # optional: only needed to decode Content-Encoding: br
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

log = logging.getLogger("shadowproxy.redact")

MASK_PREFIX = "[redacted:"
MASK_SUFFIX = "]"
DIGEST_KEY_LABEL = b"shadowproxy body digest"   # derives the key of body digests
MAX_DECODED = 8 * 1024 * 1024      # bytes of a decoded body kept at most
MIN_ECHO_LEN = 6                   # shorter secrets are not searched for elsewhere
PLAIN_CACHE = 4096                 # header values known to pass the text pass unchanged

_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_AUTH_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(\s+)(.+)$", re.S)
_BINARY_TYPES = re.compile(
    r"^(image|audio|video|font)/|octet-stream|zip|gzip|pdf|protobuf|grpc|msgpack|"
    r"x-tar|wasm|avro|parquet|cbor|bson", re.I)
# control characters that make a body binary, as bytes: in UTF-8 they never occur
# inside a multi-byte character (deleting them is much faster than a regex search)
_CONTROL_BYTES = bytes((*range(0x09), 0x0b, *range(0x0e, 0x20)))
_CONTENT_ENCODING = frozenset({"content-encoding"})
# the bodies redacted so far in one exchange: ((body, encoding, type, truncated), result)
_Done = list[tuple[tuple[bytes, str | None, str | None, bool], tuple[bytes, bool, bool]]]


# ------------------------------------------------------------------ JSONPath patterns
# Field paths are in the project's one grammar (:mod:`shadowproxy.jsonpath`), parsed and
# matched there as for the comparator's rules; the redactor folds names to lower case.


def _folded(pattern: jsonpath.Pattern) -> jsonpath.Pattern:
    """``pattern`` with its member names in lower case (keys are matched lower-cased)."""
    return tuple(("key", t[1].lower()) if t[0] == "key" else t for t in pattern)


@functools.lru_cache(maxsize=4096)
def concrete_path(path: str) -> tuple[str | int | object, ...] | None:
    """``$.users[2]['a b']`` → ``('users', 2, 'a b')`` (keys lower-cased); None if not a
    concrete JSONPath. ``[*]`` (an unordered element, or a keyed one: ``[id=7]`` is
    folded to it) becomes :data:`~shadowproxy.jsonpath.SOME_INDEX`, which every ``[N]``
    and ``*`` select. Cached: the same paths come back with every difference on a field."""
    try:
        toks = jsonpath.parse(path)
    except ValueError:
        # keyed-array selectors (``$.users[id=7].password``) fold to ``[*]``
        from ..models import fold_path

        try:
            toks = jsonpath.parse(fold_path(path))
        except ValueError:
            return None
    out: list[str | int | object] = []
    for t in toks:
        kind = t[0]
        if kind == "key":
            out.append(t[1].lower())
        elif kind == "index":
            out.append(t[1])
        elif kind == "any":
            out.append(jsonpath.SOME_INDEX)
        else:
            return None
    return tuple(out)


# ------------------------------------------------------------------ helpers


_PCT = re.compile(r"%[0-9A-F]{2}")     # a percent-escape, for its lower-case spelling


class _Echo:
    """Masks every secret known when it was made (and its JSON-escaped form) wherever
    it appears in a text, in one regex pass (longest secret first at each position).
    The regex is compiled only for a text that contains a secret: most texts do not,
    and compiling costs far more than the ``in`` tests that find that out."""

    def __init__(self, variants: dict[str, str]) -> None:
        self.variants = variants                # secret or its JSON-escaped form → mask
        self._pattern: re.Pattern[str] | None = None

    def __call__(self, text: str) -> str:
        if not text or not any(v in text for v in self.variants):
            return text
        if self._pattern is None:
            alts = sorted(self.variants, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, alts)))
        return self._pattern.sub(lambda m: self.variants[m.group(0)], text)


class _Secrets:
    """Secret values seen while redacting one exchange (for the echo pass)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}   # secret → mask
        self._echo: _Echo | None = None
        self._dirty = False

    def add(self, value: str, mask: str) -> None:
        value = value.strip()
        if len(value) >= MIN_ECHO_LEN and value not in self.values:
            self.values[value] = mask
            self._dirty = True

    def add_tree(self, value: Any, mask_fn: Callable[[str], str]) -> None:
        if isinstance(value, str):
            self.add(value, mask_fn(value))
        elif isinstance(value, dict):
            for v in value.values():
                self.add_tree(v, mask_fn)
        elif isinstance(value, list):
            for v in value:
                self.add_tree(v, mask_fn)

    def echo(self) -> _Echo | None:
        """The echo pass for the secrets seen so far (None when there are none); cached
        until another secret is added."""
        if not self._dirty:
            return self._echo
        self._dirty = False
        variants: dict[str, str] = {}
        for secret, mask in self.values.items():
            variants[secret] = mask
            esc = orjson.dumps(secret).decode()[1:-1]   # as it appears inside JSON text
            if esc != secret:
                variants[esc] = mask
            # as it appears percent-encoded in a path, query or form (both spellings)
            for enc in (quote(secret, safe=""), quote_plus(secret, safe="")):
                for spelling in (enc, _PCT.sub(lambda m: m.group(0).lower(), enc)):
                    if spelling != secret:
                        variants[spelling] = mask
        self._echo = _Echo(variants) if variants else None
        return self._echo


def _header(headers: Headers, name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _decode_body(body: bytes, encoding: str | None, limit: int) -> tuple[bytes | None, bool]:
    """Undo Content-Encoding. → (decoded or None when impossible, cut at limit)."""
    if not encoding:
        return body, False
    data = body
    cut = False
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        try:
            if coding in ("gzip", "x-gzip"):
                d = zlib.decompressobj(wbits=47)          # gzip or zlib, auto-detected
                out = d.decompress(data, limit + 1)
            elif coding == "deflate":
                try:
                    d = zlib.decompressobj()
                    out = d.decompress(data, limit + 1)
                except zlib.error:
                    d = zlib.decompressobj(wbits=-15)     # raw deflate, as some servers send
                    out = d.decompress(data, limit + 1)
            elif coding == "br" and _brotli is not None:
                br = decode_brotli(data, limit)   # bounded: never inflates past limit
                if br is None:
                    return None, False
                out = br
            else:
                return None, False
        except Exception:  # noqa: BLE001 - corrupt or truncated beyond use
            return None, False
        if len(out) > limit:
            out = out[:limit]
            cut = True
        data = out
    return data, cut


def _to_text(data: bytes, truncated: bool) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a capture cut in the middle of a character is still text
        if truncated and exc.start >= len(data) - 3 and exc.reason != "invalid start byte":
            data = data[:exc.start]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                return None
        else:
            return None
    if len(data.translate(None, _CONTROL_BYTES)) != len(data):
        return None
    return text


# ------------------------------------------------------------------ the redactor

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def name_words(name: str) -> tuple[str, ...]:
    """A key's words: ``accessToken``, ``access_token``, ``Access-Token`` → ``('access',
    'token')``."""
    return tuple(w for w in _NOT_ALNUM.split(_CAMEL.sub("_", name).lower()) if w)


class _Names:
    """Sensitive names matched by their last words: ``token`` matches ``token``,
    ``accessToken``, ``refresh_token`` and ``X-Auth-Token`` (not ``token_type`` or
    ``tokens``); ``api_key`` matches ``apiKey`` and ``x-api-key``. A lower-case name of
    one word matches when it ends with a name's words run together (``accesstoken``,
    ``passcode`` for ``code``)."""

    __slots__ = ("exact", "_words", "_joined", "_cache")

    def __init__(self, names: Iterable[str]) -> None:
        self.exact = frozenset(n.lower() for n in names)
        self._words = tuple({name_words(n) for n in self.exact if name_words(n)})
        self._joined = tuple("".join(w) for w in self._words)
        self._cache: dict[str, bool] = {}

    def __contains__(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            words = name_words(name)
            hit = name.lower() in self.exact or any(
                words[-len(w):] == w for w in self._words if len(w) <= len(words))
            if not hit and len(words) == 1 and name.islower():
                # one word without case to split on (a path folded to lower case):
                # ``accesstoken`` ends with ``token``, ``apikey`` with ``api_key``,
                # ``passcode`` with ``code`` (and ``paid`` with ``id``: masking too
                # much is the safe side)
                hit = any(words[0].endswith(j) for j in self._joined)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[name] = hit
        return hit

    def spellings(self) -> set[str]:
        """How the names may appear in lower-cased text (for a cheap substring test)."""
        out = set(self.exact)
        for w in self._words:
            out.update(("".join(w), "_".join(w), "-".join(w)))
        return out


class Redactor:
    """Masks secrets in exchanges and differences. Thread-safe; cheap to share."""

    def __init__(self, cfg: RedactConfig, key: bytes) -> None:
        if not key:
            raise ValueError("the redaction key must not be empty")
        self.cfg = cfg
        self._key = bytes(key)
        self._hmac = hmac.new(self._key, digestmod="sha256")
        # body digests under a key of their own (derived from the run's key): a mask,
        # which anyone can have made of a value they send, never helps guess a digest
        self._digest_hmac = hmac.new(
            hmac.new(self._key, DIGEST_KEY_LABEL, "sha256").digest(), digestmod="sha256")
        self.headers = frozenset(h.lower() for h in (*DEFAULT_REDACTED_HEADERS, *cfg.headers))
        self._plain: set[str] = set()   # values of other headers the text pass left alone
        self.query_names = _Names(cfg.query)
        patterns = []
        field_names = set()
        anywhere = set()            # $..name: also matched by its last words (accessToken)
        self._all_named = True     # every field pattern ends in a literal name
        for i, path in enumerate((*DEFAULT_REDACTED_FIELDS, *cfg.fields)):
            try:
                toks = _folded(jsonpath.parse(path))
            except ValueError as exc:
                n = i - len(DEFAULT_REDACTED_FIELDS)
                raise ConfigError(str(exc), key=f"redact.fields[{n}]") from None
            patterns.append(toks)
            if toks and toks[-1][0] == "key":
                name = toks[-1][1]
                field_names.add(name)
                if len(toks) == 2 and toks[0][0] == "desc":     # $..name
                    anywhere.add(name)
            else:
                self._all_named = False
        self.field_names = frozenset(field_names)
        self.matcher = jsonpath.Matcher(patterns)
        # names looked for in form bodies and free text
        self.field_words = _Names(anywhere)
        self.sensitive = _Names(self.field_names | self.query_names.exact | self.headers)
        # the same test with fewer searches: a text holding ``x-auth-token`` holds ``token``
        spell = self.sensitive.spellings()
        self._sensitive_cores = tuple(n for n in spell
                                      if not any(m != n and m in n for m in spell))
        # JSON text may spell a name escaped: a body with a \uXXXX escape of one of the
        # names' characters ("p\u0061ssword") is parsed, not skipped, and a name that
        # needs a short escape (a"b, a/b: \" and \/) or a surrogate pair allows no skip
        chars = {ch for core in self._sensitive_cores for c in core for ch in c + c.upper()}
        if any(c in '"\\/' or c < " " or c > "\uffff" for c in chars):
            self._all_named = False
        self._escaped = re.compile("|".join(re.escape(f"\\u{ord(c):04x}")
                                            for c in sorted(chars) if c <= "\uffff"))
        alts = "|".join(re.escape(n) for n in sorted(self.sensitive.exact, key=len,
                                                     reverse=True))
        halts = "|".join(re.escape(n) for n in sorted(self.headers, key=len, reverse=True))
        # "Authorization: Bearer x" as a line of text: the whole rest of the line goes
        self._hline = re.compile(
            r"(?P<pre>^[ \t]*(?:" + halts + r")[ \t]*:[ \t]*)(?P<val>[^\s\[\"'][^\r\n]*)",
            re.I | re.M)
        self._kv = re.compile(
            r"(?P<pre>(?<![A-Za-z0-9])(?P<q>[\"']?)(?:" + alts + r")(?P=q)\s*[:=]\s*)"
            r"(?P<val>\"(?:[^\"\\\r\n]|\\.)*\"|'(?:[^'\\\r\n]|\\.)*'|"
            r"[^\s&;,\"'<>(){}\[\]]+)", re.I)
        self._xml = re.compile(
            r"(?P<pre><(?P<tag>" + alts + r")(?:\s[^>]*)?>)(?P<val>[^<]*)(?=</(?P=tag)\s*>)",
            re.I)
        self._multipart = re.compile(
            r"(?P<pre>name=(?P<mq>\"?)(?:" + alts + r")(?P=mq)[^\r\n]*\r?\n"
            r"(?:[^\r\n]+\r?\n)*\r?\n)(?P<val>[^\r\n]*)", re.I)

    # -- construction

    @staticmethod
    def generate_key() -> bytes:
        """A fresh random 32-byte key (what a run uses when ``redact.key_env`` is unset)."""
        return os.urandom(32)

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

    @property
    def key(self) -> bytes:
        return self._key

    # -- the mask

    def mask(self, value: str) -> str:
        """``[redacted:<12 hex of HMAC-SHA256(key, value)>]``; equal values, equal masks."""
        # a copy of the keyed HMAC: no re-keying, and unlike hmac.digest() it keeps the
        # GIL (releasing it on every mask hands the store writer's thread the core)
        h = self._hmac.copy()
        h.update(value.encode("utf-8", "surrogatepass"))
        digest = h.digest()
        return MASK_PREFIX + digest[:6].hex() + MASK_SUFFIX

    def body_digest(self, sha256: str) -> str:
        """The stored form of a body's digest: ``HMAC-SHA256(digest key, digest)`` in hex,
        where ``sha256`` is the hex SHA-256 of the whole body ("" stays ""). Equal bodies,
        equal keyed digests; without the key a guessed body cannot be checked."""
        if not sha256:
            return sha256
        try:
            raw = bytes.fromhex(sha256)
        except ValueError:       # not a hex digest: keyed all the same
            raw = sha256.encode("utf-8", "surrogatepass")
        h = self._digest_hmac.copy()
        h.update(raw)
        return h.hexdigest()

    def _fingerprint(self, value: dict[str, Any]) -> dict[str, Any]:
        """A ``body.bytes`` difference's ``{"size", "sha256", "truncated"}`` with the
        digest keyed."""
        digest = value.get("sha256")
        if isinstance(digest, str) and digest:
            return {**value, "sha256": self.body_digest(digest)}
        return value

    def _mask_any(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, bytes):
            return self.mask(value.decode("utf-8", "replace"))
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                                default=str).decode()
        except TypeError:
            text = repr(value)
        return self.mask(text)

    @staticmethod
    def is_mask(value: Any) -> bool:
        return isinstance(value, str) and value.startswith(MASK_PREFIX) and \
            value.endswith(MASK_SUFFIX) and len(value) == len(MASK_PREFIX) + 12 + 1

    # -- headers and query

    def _mask_cookie(self, value: str, secrets: _Secrets) -> str:
        parts = []
        for part in value.split(";"):
            name, eq, val = part.partition("=")
            if eq and val.strip():
                raw = val.strip().strip('"')
                m = self.mask(raw)
                secrets.add(raw, m)
                lead = val[:len(val) - len(val.lstrip())]
                parts.append(f"{name}={lead}{m}")
            elif not eq and part.strip():       # a bare value: mask it too
                raw = part.strip()
                m = self.mask(raw)
                secrets.add(raw, m)
                parts.append(part[:len(part) - len(part.lstrip())] + m)
            else:
                parts.append(part)
        return ";".join(parts)

    def _mask_set_cookie(self, value: str, secrets: _Secrets) -> str:
        first, sep, attrs = value.partition(";")
        name, eq, val = first.partition("=")
        if not eq:
            m = self.mask(first.strip())
            secrets.add(first.strip(), m)
            return m + sep + attrs
        raw = val.strip().strip('"')
        m = self.mask(raw)
        secrets.add(raw, m)
        return f"{name}={m}{sep}{attrs}"

    def redact_header_value(self, name: str, value: str, secrets: _Secrets | None = None) -> str:
        """The stored form of one header value (unchanged when the name is not redacted)."""
        secrets = secrets if secrets is not None else _Secrets()
        lname = name.lower()
        if lname not in self.headers:
            # e.g. Location: /cb?access_token=… : the free-text pass, skipped for values it
            # already left unchanged (most repeat: Content-Type, Cache-Control, Date)
            if ("=" not in value and ":" not in value) or value in self._plain:
                return value
            found = _Secrets()
            out = self.redact_text(value, found)
            if out == value and not found.values:
                if len(self._plain) >= PLAIN_CACHE:
                    self._plain.clear()
                self._plain.add(value)
            for secret, mask in found.values.items():
                secrets.add(secret, mask)
            return out
        if lname == "cookie":
            return self._mask_cookie(value, secrets)
        if lname == "set-cookie":
            return self._mask_set_cookie(value, secrets)
        if lname in _AUTH_HEADERS:
            m = _AUTH_SCHEME.match(value.strip())
            if m:
                cred = m.group(3).strip()
                mk = self.mask(cred)
                secrets.add(cred, mk)
                return f"{m.group(1)} {mk}"
        mk = self.mask(value)
        secrets.add(value, mk)
        return mk

    def redact_query(self, query: str, secrets: _Secrets | None = None,
                     names: _Names | None = None) -> str:
        """Mask the values of sensitive parameters in a query string (or form body)."""
        if not query:
            return query
        secrets = secrets if secrets is not None else _Secrets()
        names = self.query_names if names is None else names
        out = []
        for part in query.split("&"):
            name, eq, val = part.partition("=")
            if eq and unquote_plus(name).strip() in names:
                raw = unquote_plus(val)
                m = self.mask(raw)
                secrets.add(raw, m)
                out.append(f"{name}={m}")
            else:
                out.append(part)
        return "&".join(out)

    # -- bodies

    def redact_text(self, text: str, secrets: _Secrets | None = None) -> str:
        """The regex pass for free text: sensitive ``name=value`` pairs and their kin."""
        if not text:
            return text
        secrets = secrets if secrets is not None else _Secrets()

        def sub(m: re.Match[str]) -> str:
            val = m.group("val")
            if self.is_mask(val) or self.is_mask(val[1:-1]):
                return m.group(0)
            if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
                inner = val[1:-1]
                mk = self.mask(inner)
                secrets.add(inner, mk)
                return m.group("pre") + val[0] + mk + val[0]
            if not val.strip():
                return m.group(0)
            mk = self.mask(val)
            secrets.add(val, mk)
            return m.group("pre") + mk

        if ":" in text:
            text = self._hline.sub(sub, text)
        text = self._kv.sub(sub, text)
        if "<" in text:
            text = self._xml.sub(sub, text)
        if "name=" in text:
            text = self._multipart.sub(sub, text)
        return text

    def redact_json(self, doc: Any, secrets: _Secrets | None = None,
                    start: Sequence[str | int | object] = ()) -> Any:
        """A copy of a parsed JSON document with the field paths masked. ``start`` is the
        concrete path of ``doc`` inside its document (for values found in differences)."""
        secrets = secrets if secrets is not None else _Secrets()
        states, hit = self.matcher.walk(start)
        if hit or any(type(k) is str and k in self.field_words for k in start):
            return self._mask_tree(doc, secrets)
        return self._walk(doc, states, secrets)

    def _mask_tree(self, value: Any, secrets: _Secrets) -> Any:
        m = self._mask_any(value)
        if isinstance(value, str):
            secrets.add(value, m)
        else:
            secrets.add_tree(value, self.mask)
        return m

    def _walk(self, node: Any, states: jsonpath.States, secrets: _Secrets) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                sk = str(k)
                if states:
                    st, hit = self.matcher.step(states, sk.lower())
                else:
                    st, hit = states, False
                if not hit and sk in self.field_words:     # accessToken, client_secret
                    hit = True
                out[k] = self._mask_tree(v, secrets) if hit else self._walk(v, st, secrets)
            return out
        if isinstance(node, list):
            out_l = []
            for i, v in enumerate(node):
                if states:
                    st, hit = self.matcher.step(states, i)
                else:
                    st, hit = states, False
                out_l.append(self._mask_tree(v, secrets) if hit else self._walk(v, st, secrets))
            return out_l
        if isinstance(node, str) and len(node) > 3:
            return self.redact_text(node, secrets)
        return node

    def _mentions_sensitive(self, text: str) -> bool:
        low = text.lower()
        if any(n in low for n in self._sensitive_cores):
            return True
        return "\\u" in low and self._escaped.search(low) is not None

    def redact_body(self, body: bytes, headers: Headers, truncated: bool, secrets: _Secrets
                    ) -> tuple[bytes, bool, bool]:
        """→ (stored body, decoded (drop Content-Encoding), cut (decoded beyond the cap))."""
        return self._redact_body(body, _header(headers, "content-encoding"),
                                 _header(headers, "content-type"), truncated, secrets)

    def _redact_body(self, body: bytes, encoding: str | None, ctype: str | None,
                     truncated: bool, secrets: _Secrets) -> tuple[bytes, bool, bool]:
        if not body:
            return body, False, False
        data, cut = _decode_body(body, encoding, MAX_DECODED)
        decoded = bool(encoding) and data is not None
        if data is None:
            return b"", False, False
        ctype = (ctype or "").lower()
        if ctype and "json" not in ctype and "text" not in ctype and _BINARY_TYPES.search(ctype):
            return b"", decoded, cut
        text = _to_text(data, truncated or cut)
        if text is None:
            return b"", decoded, cut
        if "x-www-form-urlencoded" in ctype:
            return self.redact_query(text, secrets, self.sensitive).encode(), decoded, cut
        stripped = text.lstrip()
        if "json" in ctype or stripped[:1] in ("{", "["):
            if self._all_named and not self._mentions_sensitive(text):
                return text.encode(), decoded, cut
            try:
                doc = orjson.loads(text)
            except orjson.JSONDecodeError:
                pass
            else:
                red = self.redact_json(doc, secrets)
                return orjson.dumps(red, option=orjson.OPT_NON_STR_KEYS), decoded, cut
        return self.redact_text(text, secrets).encode(), decoded, cut

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
        if echo is not None:
            req, pri, cand, sec = (self._echo_record(r, echo) for r in (req, pri, cand, sec))
        out = Exchange(id=ex.id, started=ex.started, endpoint=ex.endpoint, route=ex.route,
                       request=req, primary=pri, candidate=cand, secondary=sec)
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
