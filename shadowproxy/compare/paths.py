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

Rule paths (``ignore``, ``tolerance``, ``arrays``) are parsed, rendered and matched
by :mod:`shadowproxy.jsonpath`, the project's one JSONPath grammar (the config
loader and the redactor use it too); :func:`parse_pattern`, :func:`render_pattern`
and :func:`pattern_matches` are its :func:`~shadowproxy.jsonpath.parse`,
:func:`~shadowproxy.jsonpath.render` and :func:`~shadowproxy.jsonpath.matches`. On a
walker path, ``*`` matches one member or element of any kind, including keyed and
unordered elements (and ``None``, a folded index); ``[N]`` matches only index ``N``.
Every rendered path is in that grammar except the keyed ``[key=value]`` selectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from ..jsonpath import ANY, Pattern, render_member
from ..jsonpath import matches as pattern_matches
from ..jsonpath import parse as parse_pattern
from ..jsonpath import quote_name as _quote
from ..jsonpath import render as render_pattern

__all__ = [
    "ANY", "STAR", "KeySel", "Pattern", "Segment", "parse_pattern", "pattern_matches",
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
        return render_member(seg)
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
