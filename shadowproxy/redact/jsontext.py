"""JSON redacted on its text: the field rules and the text pass applied to the few
string tokens of a document that can hold a secret, the rest kept as bytes.

Walking a parsed document visits every key and value in Python; most are plain. When
every field path is ``$..name`` (the default), whether a member's value is masked
depends on its key alone, and the text pass changes only a string that spells a
sensitive name. :class:`JsonText` takes orjson's compact output of the parsed
document, where a name's characters are never escaped, finds the string tokens that
mention one of :attr:`JsonText.mentions` (the names' spellings, and the last word of
every field name, which a key's words must end with; names in ASCII) or hold one of
the :data:`LOOKALIKES` (a key ``to\N{KELVIN SIGN}en`` lower-cases to ``token``;
``pa\N{LATIN SMALL LETTER LONG S}sword`` matches the text pass's case-insensitive
regexes), and redacts only those: a key that names a secret field has its value masked
whole, a string value gets the text pass. The output is what ``orjson.dumps`` of the
walked document gives, byte for byte, with the same secrets found
(tests/redact/test_jsontext.py holds the two against each other).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .echo import _Secrets

# the characters beyond ASCII whose lower or upper case holds an ASCII letter, digit,
# _ or -, or that a case-insensitive regex matches to one (the test finds them all)
LOOKALIKES = ("\u00df\u0130\u0131\u0149\u017f\u01f0\u1e96\u1e97\u1e98\u1e99\u1e9a\u212a"
              "\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06")
_LOOKALIKE = re.compile(b"|".join(re.escape(c.encode()) for c in LOOKALIKES))
_QUOTE_OR_ESCAPE = re.compile(rb'\\.|"', re.S)          # escapes eaten: quotes left are real
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NESTED = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_SCALAR_END = re.compile(rb"[,}\]]")


def minimal(words: Iterable[str]) -> tuple[bytes, ...]:
    """The words none of the others is part of (a text holding ``x-auth-token`` holds
    ``token``), as bytes."""
    ws = set(words)
    return tuple(sorted(w.encode() for w in ws if not any(v != w and v in w for v in ws)))


class JsonText:
    """Redacts orjson's compact serialisation of a document (see module doc).

    ``key_hit(key)``: is a member of that key masked whole; ``mask_tree(value,
    secrets)``: its mask; ``text_pass(text, secrets)``: a string value redacted."""

    def __init__(self, mentions: Iterable[str], key_hit: Callable[[str], bool],
                 mask_tree: Callable[[Any, _Secrets], Any],
                 text_pass: Callable[[str, _Secrets], str]) -> None:
        self.mentions = minimal(mentions)
        if not all(m.isascii() for m in self.mentions):
            raise ValueError("names beyond ASCII are not looked for on the text")
        self._key_hit = key_hit
        self._mask_tree = mask_tree
        self._text_pass = text_pass

    def _spots(self, norm: bytes) -> list[int]:
        low = norm.lower()
        spots = []
        for m in self.mentions:
            i = low.find(m)
            while i >= 0:
                spots.append(i)
                i = low.find(m, i + 1)
        if not norm.isascii():
            spots.extend(mo.start() for mo in _LOOKALIKE.finditer(norm))
        spots.sort()
        return spots

    @staticmethod
    def _tokens(norm: bytes, spots: list[int]) -> list[tuple[int, int]]:
        """The string tokens (open quote, close quote) holding the ``spots`` (sorted),
        in order; a spot outside every string (a number's digits) is none's."""
        out: list[tuple[int, int]] = []
        if b"\\" not in norm:
            # no escapes: every quote opens or closes a string, one after the other
            last, inside, close = 0, False, -1
            for p in spots:
                if p <= close:
                    continue
                inside ^= bool(norm.count(b'"', last, p) & 1)
                last = p
                if inside:
                    close = norm.find(b'"', p)
                    out.append((norm.rfind(b'"', 0, p), close))
            return out
        quotes = [m.start() for m in _QUOTE_OR_ESCAPE.finditer(norm) if m.end() - m.start() == 1]
        k = 0
        for p in spots:
            while k + 1 < len(quotes) and quotes[k + 1] < p:
                k += 2
            if k + 1 < len(quotes) and quotes[k] < p < quotes[k + 1]:
                tok = (quotes[k], quotes[k + 1])
                if not out or out[-1] != tok:
                    out.append(tok)
        return out

    @staticmethod
    def _value_end(norm: bytes, start: int) -> int:
        """The end of the JSON value that begins at ``start``."""
        ch = norm[start:start + 1]
        if ch == b'"':
            m = _STRING.match(norm, start)
            assert m is not None
            return m.end()
        if ch in (b"{", b"["):
            depth = 0
            for m in _NESTED.finditer(norm, start):
                c = m.group()
                if c in (b"{", b"["):
                    depth += 1
                elif c in (b"}", b"]"):
                    depth -= 1
                    if depth == 0:
                        return m.end()
            raise ValueError("unbalanced JSON")      # never from orjson's output
        m = _SCALAR_END.search(norm, start)
        return m.start() if m is not None else len(norm)

    def redact(self, norm: bytes, secrets: _Secrets) -> bytes:
        """``norm`` (``orjson.dumps`` of a document) with its secrets masked."""
        spots = self._spots(norm)
        if not spots:
            return norm
        parts: list[bytes] = []
        done = 0                      # norm[:done] is in parts
        plain = b"\\" not in norm     # no escapes: a string token is its text, quoted
        for o, c in self._tokens(norm, spots):
            if o < done:              # inside a value masked whole
                continue
            if norm[c + 1:c + 2] == b":":      # a key
                key = norm[o + 1:c].decode() if plain else orjson.loads(norm[o:c + 1])
                if not self._key_hit(key):
                    continue
                start = c + 2
                if plain and norm[start:start + 1] == b'"':    # the usual: a string
                    end = norm.index(b'"', start + 1) + 1
                    value: Any = norm[start + 1:end - 1].decode()
                else:
                    end = self._value_end(norm, start)
                    value = orjson.loads(norm[start:end])
                new = orjson.dumps(self._mask_tree(value, secrets))
            else:                               # a string value
                text = orjson.loads(norm[o:c + 1])
                if len(text) <= 3:
                    continue
                red = self._text_pass(text, secrets)
                if red == text:
                    continue
                start, end, new = o, c + 1, orjson.dumps(red)
            parts.append(norm[done:start])
            parts.append(new)
            done = end
        if not parts:
            return norm
        parts.append(norm[done:])
        return b"".join(parts)
