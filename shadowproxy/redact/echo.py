"""Finding a secret's value echoed elsewhere in an exchange.

:class:`_Secrets` collects the secret values found while one exchange is redacted,
with their masks; its :meth:`~_Secrets.echo` pass (an :class:`_Echo`) masks each of
at least :data:`MIN_ECHO_LEN` characters wherever else it appears, as it is or in its
JSON-escaped and percent-encoded spellings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

MIN_ECHO_LEN = 6                   # shorter secrets are not searched for elsewhere

_PCT = re.compile(r"%[0-9A-F]{2}")     # a percent-escape, for its lower-case spelling
SPELLINGS_CACHE = 1024             # secrets whose other spellings are kept (~3 KB at most each)
SPELLED_LEN = 256                  # ... of at most this many characters
_spelled: dict[str, tuple[str, ...]] = {}


class _Echo:
    """Masks every secret known when it was made (and its JSON-escaped form) wherever
    it appears in a text, in one regex pass (longest secret first at each position).
    The regex is compiled only for a text that contains a secret: most texts do not,
    and compiling costs far more than the ``in`` tests that find that out."""

    def __init__(self, variants: dict[str, str]) -> None:
        self.variants = variants                # secret or its JSON-escaped form → mask
        self._pattern: re.Pattern[str] | None = None

    def found_in(self, texts: Iterable[str]) -> bool:
        """Might a secret appear in one of ``texts``? (Searched in them joined: one
        search a secret, not one a text; a secret spanning two texts is a false alarm,
        which only costs the pass that finds nothing.)"""
        blob = "\x00".join(texts)
        return any(v in blob for v in self.variants)

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
            for spelling in _spellings(secret):
                variants[spelling] = mask
        self._echo = _Echo(variants) if variants else None
        return self._echo


def _spellings(secret: str) -> tuple[str, ...]:
    """How else ``secret`` may appear: JSON-escaped, percent-encoded (both cases of hex
    digits); kept for the last :data:`SPELLINGS_CACHE` short secrets (they repeat)."""
    got = _spelled.get(secret)
    if got is not None:
        return got
    out: dict[str, None] = {}
    esc = orjson.dumps(secret).decode()[1:-1]   # as it appears inside JSON text
    if esc != secret:
        out[esc] = None
    # as it appears percent-encoded in a path, query or form (both spellings)
    for enc in (quote(secret, safe=""), quote_plus(secret, safe="")):
        for spelling in (enc, _PCT.sub(lambda m: m.group(0).lower(), enc)):
            if spelling != secret:
                out[spelling] = None
    got = tuple(out)
    if len(secret) <= SPELLED_LEN:
        if len(_spelled) >= SPELLINGS_CACHE:
            _spelled.clear()
        _spelled[secret] = got
    return got

