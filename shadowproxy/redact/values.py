"""Redaction of single values: header values, query strings and form bodies, free
text, JSON documents and bodies.

:class:`ValueRedactor` compiles the redaction config once: which header, query and
field names are secret (:mod:`~shadowproxy.redact.names`), the JSONPath matcher of
the field paths and the regexes of the text pass; it masks a value's secrets and
adds them to the exchange's :class:`~shadowproxy.redact.echo._Secrets`. The
:class:`~shadowproxy.redact.redactor.Redactor` applies it to whole records.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_plus

import orjson

from .. import jsonpath
from ..config import DEFAULT_REDACTED_FIELDS, DEFAULT_REDACTED_HEADERS, RedactConfig
from ..errors import ConfigError
from ..models import Headers
from .bodies import _BINARY_TYPES, MAX_DECODED, _decode_body, _header, _to_text
from .echo import _Secrets
from .headers import _AUTH_HEADERS, _AUTH_SCHEME, PLAIN_CACHE, _mask_cookie, _mask_set_cookie
from .jsontext import JsonText
from .masks import Masker
from .names import _folded, _Names


class ValueRedactor(Masker):
    """Masks secrets in single values under the redaction config. Thread-safe; cheap
    to share."""

    def __init__(self, cfg: RedactConfig, key: bytes) -> None:
        super().__init__(key)
        self.cfg = cfg
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
        # a key's words end with a field name's last word (``api.key`` names ``api_key``,
        # which no spelling of the name is part of): looked for too
        spell = self.sensitive.spellings() | {w[-1] for w in self.field_words._words}
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
        # every field path ``$..name`` and every name in ASCII: a JSON body is redacted
        # on its text (.jsontext), the tokens that mention a name alone
        self._text_json: JsonText | None = None
        if self._all_named and field_names == anywhere and \
                all(n.isascii() for n in self.sensitive.exact) and \
                all(len(t) == 2 and t[0][0] == "desc" for t in patterns):
            self._text_json = JsonText((*self._sensitive_cores, *self.field_words.exact),
                                       self.field_words.__contains__, self._mask_tree,
                                       self.redact_text)
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

    # -- headers and query

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
            return _mask_cookie(value, secrets, self.mask)
        if lname == "set-cookie":
            return _mask_set_cookie(value, secrets, self.mask)
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
            if eq and (unquote_plus(name) if "%" in name or "+" in name else name
                       ).strip() in names:
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
                if self._text_json is not None:
                    return self._text_json.redact(orjson.dumps(doc), secrets), decoded, cut
                red = self.redact_json(doc, secrets)
                return orjson.dumps(red, option=orjson.OPT_NON_STR_KEYS), decoded, cut
        return self.redact_text(text, secrets).encode(), decoded, cut
