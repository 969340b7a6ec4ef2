"""Which field, parameter and header names are secret, and where a field path points.

Names match by their last words in any spelling (:func:`name_words`, :class:`_Names`:
``token`` also names ``accessToken``); field paths are JSONPaths in the grammar of
:mod:`shadowproxy.jsonpath`, folded to lower case (:func:`_folded`), and a difference's
path is read back as concrete keys and indexes (:func:`concrete_path`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from .. import jsonpath

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
