"""Comparison rules compiled once per route, with per-path decisions cached.

:func:`compile_rules` merges the global ``compare:`` rules with a route's
``compare:`` rules:

* ``headers``: headers are compared only if both levels allow it;
* ``ignore_headers``, ``ignore`` and ``scrubbers`` add up (global first);
* a route's tolerance or array rule for the same path (compared in canonical
  form, so ``$['a']`` is ``$.a``) replaces the global one;
* when several *different* patterns match the same node, route rules win over
  global ones and, within a level, the first one listed wins.

Rule paths use the JSONPath subset described in :mod:`.paths`. ``ignore`` and
array rules apply to the node the pattern matches; a tolerance applies to the
numbers at the matched node *or beneath it* (``$.totals`` covers
``$.totals.net``).

Decisions are cached per folded path (array indexes, keyed and unordered
elements all become "some element"), so ``$.items[0].price`` and
``$.items[7].price`` share one entry. If any pattern names a specific index
(``[3]``), indexes are kept in the cache key instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from ..config import DEFAULT_IGNORED_HEADERS, ArrayRule, CompareRules, Scrubber, Tolerance
from ..errors import ConfigError
from .paths import Pattern, Segment, parse_pattern, pattern_matches, render_pattern

__all__ = ["BUILTIN_SCRUBBERS", "CompiledRules", "NodeRule", "compile_rules", "compile_scrubbers"]

ArrayMode = Literal["ordered", "unordered", "keyed"]

#: Builtin scrubbers: name → (regex, replacement). Applied in the order configured.
BUILTIN_SCRUBBERS: MappingProxyType[str, tuple[str, str]] = MappingProxyType({
    # ISO 8601 date-time (date alone is data, not a timestamp), RFC 1123 / 850 dates,
    # unix epoch seconds or milliseconds (10 or 13 digits, 2001..2033).
    "timestamp": (
        r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?"
        r"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*, \d{1,2}[ -][A-Z][a-z]{2}[ -]\d{2,4} "
        r"\d{2}:\d{2}:\d{2} (?:GMT|UTC|[+-]\d{4})"
        r"|(?<![\d.])1\d{9}(?:\d{3})?(?:\.\d+)?(?![\d.])",
        "<timestamp>",
    ),
    "uuid": (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
             "<uuid>"),
    "hex": (r"\b[0-9a-fA-F]{16,}\b", "<hex>"),
    "number": (r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", "<number>"),
})

_CACHE_MAX = 65536


@dataclass(frozen=True, slots=True)
class NodeRule:
    """What the rules say about one (folded) path."""

    ignored: bool = False
    tolerance: tuple[float, float] | None = None          # (abs, rel)
    array: tuple[ArrayMode, str | None] | None = None      # (mode, key)


def compile_scrubbers(
    items: Iterable[str | Scrubber],
) -> tuple[tuple[re.Pattern[str], str], ...]:
    """Builtin names or :class:`Scrubber` → compiled ``(regex, replacement)`` pairs."""
    out: list[tuple[re.Pattern[str], str]] = []
    seen: set[tuple[str, str]] = set()
    for item in items:
        if isinstance(item, Scrubber):
            pattern, replace = item.pattern, item.replace
        elif item in BUILTIN_SCRUBBERS:
            pattern, replace = BUILTIN_SCRUBBERS[item]
        else:
            known = ", ".join(BUILTIN_SCRUBBERS)
            raise ValueError(f"unknown scrubber {item!r} (builtins: {known})")
        if (pattern, replace) in seen:
            continue
        seen.add((pattern, replace))
        out.append((re.compile(pattern), replace))
    return tuple(out)


class CompiledRules:
    """Rules ready for the comparator. Immutable except for the per-path decision cache."""

    __slots__ = ("headers", "ignored_headers", "scrubbers", "ignore", "tolerances", "arrays",
                 "has_path_rules", "_fold_indexes", "_cache")

    def __init__(
        self,
        *,
        headers: bool = True,
        ignored_headers: Iterable[str] = DEFAULT_IGNORED_HEADERS,
        scrubbers: tuple[tuple[re.Pattern[str], str], ...] = (),
        ignore: tuple[Pattern, ...] = (),
        tolerances: tuple[tuple[Pattern, float, float], ...] = (),
        arrays: tuple[tuple[Pattern, ArrayMode, str | None], ...] = (),
    ) -> None:
        self.headers = headers
        self.ignored_headers: frozenset[str] = frozenset(h.lower() for h in ignored_headers)
        self.scrubbers = scrubbers
        self.ignore = ignore
        self.tolerances = tolerances
        self.arrays = arrays
        self.has_path_rules = bool(ignore or tolerances or arrays)
        every = ignore + tuple(t[0] for t in tolerances) + tuple(a[0] for a in arrays)
        self._fold_indexes = not any(tok[0] == "index" for p in every for tok in p)
        self._cache: dict[tuple[object, ...], NodeRule | None] = {}

    def __repr__(self) -> str:
        return (f"CompiledRules(headers={self.headers}, ignore={len(self.ignore)}, "
                f"tolerances={len(self.tolerances)}, arrays={len(self.arrays)}, "
                f"scrubbers={len(self.scrubbers)})")

    def scrub(self, text: str) -> str:
        """Apply the scrubbers in order."""
        for regex, replace in self.scrubbers:
            text = regex.sub(replace, text)
        return text

    def node(self, path: tuple[Segment, ...]) -> NodeRule | None:
        """The rule for a walker path, or ``None`` when no rule touches it (cached)."""
        key: tuple[object, ...]
        if self._fold_indexes:
            key = tuple([s if type(s) is str else None for s in path])
        else:
            key = tuple([s if type(s) is str or type(s) is int else None for s in path])
        try:
            return self._cache[key]
        except KeyError:
            pass
        rule = self._decide(key)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = rule
        return rule

    def _decide(self, path: tuple[object, ...]) -> NodeRule | None:
        ignored = any(pattern_matches(p, path) for p in self.ignore)
        tolerance = None
        for pattern, abs_, rel in self.tolerances:
            if any(pattern_matches(pattern, path[:n]) for n in range(len(path), -1, -1)):
                tolerance = (abs_, rel)
                break
        array = None
        for pattern, mode, key in self.arrays:
            if pattern_matches(pattern, path):
                array = (mode, key)
                break
        if not ignored and tolerance is None and array is None:
            return None
        return NodeRule(ignored, tolerance, array)


def _parse(text: str, where: str) -> Pattern:
    try:
        return parse_pattern(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=where) from None


def compile_rules(global_rules: CompareRules | None = None,
                  route_rules: CompareRules | None = None) -> CompiledRules:
    """Merge global and route rules (see the module docstring) and compile them.

    Raises :class:`~shadowproxy.errors.ConfigError` naming the rule for a path
    outside the supported JSONPath subset or an unknown scrubber.
    """
    g = global_rules or CompareRules()
    levels = [("route compare", route_rules)] if route_rules is not None else []
    levels.append(("compare", g))

    ignore: dict[str, Pattern] = {}
    tolerances: dict[str, tuple[Pattern, float, float]] = {}
    arrays: dict[str, tuple[Pattern, ArrayMode, str | None]] = {}
    for where, rules in levels:                     # route first: it wins
        tol: Tolerance
        for i, tol in enumerate(rules.tolerance):
            p = _parse(tol.path, f"{where}.tolerance[{i}].path")
            tolerances.setdefault(render_pattern(p), (p, float(tol.abs), float(tol.rel)))
        arr: ArrayRule
        for i, arr in enumerate(rules.arrays):
            p = _parse(arr.path, f"{where}.arrays[{i}].path")
            if arr.mode == "keyed" and not arr.key:
                raise ConfigError("mode keyed needs a key", key=f"{where}.arrays[{i}].key")
            arrays.setdefault(render_pattern(p), (p, arr.mode, arr.key))
    for where, rules in reversed(levels):            # global first: lists add up
        for i, text in enumerate(rules.ignore):
            p = _parse(text, f"{where}.ignore[{i}]")
            ignore.setdefault(render_pattern(p), p)

    scrubber_items = list(g.scrubbers) + list(route_rules.scrubbers if route_rules else ())
    try:
        scrubbers = compile_scrubbers(scrubber_items)
    except (ValueError, re.error) as exc:
        raise ConfigError(str(exc), key="compare.scrubbers") from None
    ignored_headers = list(DEFAULT_IGNORED_HEADERS) + list(g.ignore_headers)
    if route_rules is not None:
        ignored_headers += list(route_rules.ignore_headers)
    return CompiledRules(
        headers=g.headers and (route_rules.headers if route_rules is not None else True),
        ignored_headers=ignored_headers,
        scrubbers=scrubbers,
        ignore=tuple(ignore.values()),
        tolerances=tuple(tolerances.values()),
        arrays=tuple(arrays.values()),
    )
