"""Walker paths, their JSONPath rendering, and the JSONPath subset used by rules.

A *walker path* is a tuple of segments: ``str`` (object member), ``int`` (array
index) or :class:`KeySel` (an element of a keyed array, found by its key field).

Rendering (:func:`render`) gives one JSONPath per difference:

* ``$`` is the document root;
* identifier-like member names as ``.name``, anything else as ``['odd key']``
  (``\\`` and ``'`` escaped with a backslash);
* array indexes as ``[N]`` (0-based);
* keyed-array elements as ``[key=value]``: ``$.users[id=7]``,
  ``$.users[id='u-7']``, ``$.users[id=null]`` (the value in JSON form, strings in
  single quotes);
* unordered-array elements as ``[*]``: ``$.tags[*]``.

The rule pattern subset (:func:`parse_pattern`): ``$``, ``.name``, ``['name']``
(or ``["name"]``), ``[N]``, ``[*]``, ``.*``, ``..name``, ``..*``, ``..['name']``,
``..[N]``, ``..[*]``. ``*`` matches one member or element of any kind, including
keyed and unordered elements; ``[N]`` matches only index ``N``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
import orjson

__all__ = [
    "ANY", "KeySel", "Pattern", "Segment", "STAR", "parse_pattern", "pattern_matches",
    "render", "render_pattern",
]


@dataclass(frozen=True, slots=True)
class KeySel:
    """An element of a keyed array: the one whose ``name`` field equals ``value``."""

    name: str
    value: object


class _Star:
    """The element of an unordered array (rendered ``[*]``); a singleton."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "STAR"


STAR = _Star()
Segment = str | int | KeySel | _Star

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _quote(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _render_key(name: str) -> str:
    return "." + name if name.isidentifier() and name.isascii() else "[" + _quote(name) + "]"


def _render_value(value: object) -> str:
    if isinstance(value, str):
        return _quote(value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def render_segment(seg: Segment) -> str:
    """One segment in JSONPath form (``.name``, ``['x y']``, ``[3]``, ``[id=7]``, ``[*]``)."""
    if type(seg) is str:
        return _render_key(seg)
    if type(seg) is int:
        return f"[{seg}]"
    if isinstance(seg, KeySel):
        name = seg.name if _IDENT.match(seg.name) else _quote(seg.name)
        return f"[{name}={_render_value(seg.value)}]"
    return "[*]"


def render(path: tuple[Segment, ...]) -> str:
    """A walker path as JSONPath: ``("user", "tags", 2)`` → ``$.user.tags[2]``."""
    out = "$"
    for seg in path:
        if type(seg) is str:
            out += "." + seg if seg.isidentifier() and seg.isascii() else "[" + _quote(seg) + "]"
        elif type(seg) is int:
            out += f"[{seg}]"
        else:
            out += render_segment(seg)
    return out


# ---------------------------------------------------------------- patterns

# Pattern tokens: ("key", name) | ("index", n) | ("any",) | ("desc",)
Token = tuple[Any, ...]
Pattern = tuple[Token, ...]
ANY: Token = ("any",)
DESC: Token = ("desc",)

_NAME = re.compile(r"[A-Za-z_$@\-][A-Za-z0-9_$@\-]*")
_QUOTED = re.compile(r"""\[\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*\]""")
_INDEX_RE = re.compile(r"\[\s*(\d+)\s*\]")
_STAR_RE = re.compile(r"\[\s*\*\s*\]")
_UNESCAPE = re.compile(r"\\(.)")


def parse_pattern(text: str) -> Pattern:
    """Parse a rule path into tokens; raise ``ValueError`` naming what is unsupported."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise ValueError(f"a JSONPath starts with $, got {text!r}")
    tokens: list[Token] = []
    i, n = 1, len(text)
    while i < n:
        if text.startswith("..", i):
            tokens.append(DESC)
            i += 2
            if i < n and text[i] == "[":
                continue                     # ..['name'], ..[*], ..[N]
            i = _member(text, i, tokens)
            continue
        c = text[i]
        if c == ".":
            i = _member(text, i + 1, tokens)
            continue
        if c == "[":
            m = _QUOTED.match(text, i)
            if m:
                raw = m.group(1) if m.group(1) is not None else m.group(2)
                tokens.append(("key", _UNESCAPE.sub(r"\1", raw)))
                i = m.end()
                continue
            m = _INDEX_RE.match(text, i)
            if m:
                tokens.append(("index", int(m.group(1))))
                i = m.end()
                continue
            m = _STAR_RE.match(text, i)
            if m:
                tokens.append(ANY)
                i = m.end()
                continue
        raise ValueError(f"unsupported JSONPath {text!r} at position {i}: supported are $, .name, "
                         "['name'], [N], [*], .*, ..name and ..*")
    if tokens and tokens[-1] is DESC:
        raise ValueError(f"JSONPath {text!r} ends with '..'")
    return tuple(tokens)


def _member(text: str, i: int, tokens: list[Token]) -> int:
    if text.startswith("*", i):
        tokens.append(ANY)
        return i + 1
    m = _NAME.match(text, i)
    if not m:
        raise ValueError(f"unsupported JSONPath {text!r}: expected a name or * at position {i}")
    tokens.append(("key", m.group(0)))
    return m.end()


def render_pattern(pattern: Pattern) -> str:
    """Canonical text of a pattern (``$['a']`` and ``$.a`` render the same)."""
    out = ["$"]
    for tok in pattern:
        kind = tok[0]
        if kind == "desc":
            out.append("..")
        elif kind == "any":
            out.append("*" if out[-1] == ".." else "[*]")
        elif kind == "index":
            out.append(f"[{tok[1]}]")
        else:
            rendered = _render_key(tok[1])
            out.append(rendered[1:] if out[-1] == ".." and rendered[0] == "." else rendered)
    return "".join(out)


def pattern_matches(pattern: Pattern, path: tuple[object, ...]) -> bool:
    """Does ``pattern`` match the whole of ``path``?

    ``path`` is a walker path, possibly folded (indexes replaced by ``None``); a
    ``None``, :class:`KeySel` or ``STAR`` segment is "some element" and matches
    only ``*``.
    """
    return _match(pattern, 0, path, 0)


def _seg_ok(tok: Token, seg: object) -> bool:
    kind = tok[0]
    if kind == "any":
        return True
    if kind == "key":
        return type(seg) is str and seg == tok[1]
    return type(seg) is int and seg == tok[1]     # index


def _match(pattern: Pattern, pi: int, path: tuple[object, ...], si: int) -> bool:
    while pi < len(pattern):
        tok = pattern[pi]
        if tok[0] == "desc":
            nxt = pattern[pi + 1]
            for j in range(si, len(path)):
                if _seg_ok(nxt, path[j]) and _match(pattern, pi + 2, path, j + 1):
                    return True
            return False
        if si >= len(path) or not _seg_ok(tok, path[si]):
            return False
        pi += 1
        si += 1
    return si == len(path)
