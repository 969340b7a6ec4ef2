r"""The one JSONPath grammar of shadowproxy: parsing, canonical form, matching.

Every JSONPath in a configuration (``compare.ignore``, ``compare.tolerance[].path``,
``compare.arrays[].path``, their per-route forms, ``redact.fields``) is parsed here
and nowhere else: by the config loader (so ``shadowproxy validate`` refuses what the
run could not use, naming file, line and key), by the comparator's rules
(:mod:`shadowproxy.compare.rules`) and by the redactor (:mod:`shadowproxy.redact.redactor`).
Both read a path the same way (:func:`matches` and :class:`Matcher` select the same
locations); this module imports nothing else of shadowproxy.

Grammar
=======

A subset of RFC 9535 (JSONPath), written in ABNF (RFC 5234; ``ALPHA``, ``DIGIT``,
``DQUOTE``, ``SP``, ``HTAB``, ``CR``, ``LF`` as there; strings in double quotes are
case-sensitive here)::

    json-path          = root *segment
    root               = "$"
    segment            = child-segment / descendant-segment
    child-segment      = "." dot-selector / bracketed
    descendant-segment = ".." ( dot-selector / bracketed )
    dot-selector       = wildcard / member-name
    bracketed          = "[" B ( name-selector / index-selector / wildcard ) B "]"
    wildcard           = "*"
    member-name        = name-first *name-char
    name-first         = ALPHA / "_" / "$" / "@" / "-"       ; ASCII only
    name-char          = name-first / DIGIT
    index-selector     = 1*DIGIT                   ; decimal, 0-based ("007" is 7)
    name-selector      = "'" *( single-char / escape ) "'"
                       / DQUOTE *( double-char / escape ) DQUOTE
    single-char        = %x00-26 / %x28-5B / %x5D-10FFFF   ; not ' nor \
    double-char        = %x00-21 / %x23-5B / %x5D-10FFFF   ; not " nor \
    escape             = "\" ( "\" / "'" / DQUOTE )       ; the character itself
    B                  = *( SP / HTAB / CR / LF )  ; blank space, inside brackets only

Meaning
=======

A path selects *locations*: the sequence of member names and array indexes from the
root of a document to a node (``("users", 2, "name")``). Reading left to right,
each segment selects from the nodes selected so far:

* ``$`` selects the root (the empty location);
* ``.name``, ``['name']``, ``["name"]``: the member ``name`` of an object (nothing
  of an array); ``['a.b']`` is the one member named ``a.b``;
* ``[N]``: element ``N`` of an array, counted from 0 (nothing of an object);
* ``.*``, ``[*]``: every member of an object and every element of an array;
* ``..X`` (``X`` any selector above: ``..name``, ``..['x y']``, ``..[2]``, ``..*``,
  ``..[*]``): what ``X`` selects from the node *and from every node beneath it*.
  ``$..token`` is a ``token`` member at any depth, ``$..[2].token`` the ``token``
  of every third array element at any depth, ``$..*`` every node but the root.

A rule applies to the node a path selects and everything beneath it (an ignored or
redacted object is ignored or masked whole).

Supported, then: root ``$``; child by name (``.name``, ``['name']``, ``["name"]``, with
``\\``, ``\'``, ``\"`` escapes); wildcard (``.*``, ``[*]``); array index (``[N]``);
recursive descent ``..`` before any of these. Beyond RFC 9535: ``$``, ``@`` and ``-``
in dot names (``$.x-request-id``) and leading zeros in indexes. Short of it: dot names
are ASCII (``$.café``: write ``$['café']``) and what follows.

Refused, with a message naming the position (0-based): a path not starting with ``$``
(no relative ``@`` paths), blank space outside brackets, an empty name after ``.``
(``$.``) or nothing after ``..``, ``...``, a name that is not a ``member-name``
(``$.2fa``, ``$.x y``: write ``$['2fa']``), negative indexes (``[-1]``), slices
(``[1:3]``), unions (``[0,1]``, ``['a','b']``), filters (``[?(@.x)]``), script
expressions (``[(@.length-1)]``), function extensions and any escape in a quoted name
other than ``\\``, ``\'`` and ``\"`` (RFC 9535's ``\n``, ``\uXXXX``…: write the
character itself, which YAML's double-quoted strings can spell).

Locations
=========

:func:`matches` and :class:`Matcher` take a location as a sequence of segments:
``str`` (member name) and ``int`` (array index) are concrete. :data:`SOME_INDEX`
stands for an array element whose index is unknown (a folded ``[*]`` in a difference
path): ``*`` and every ``[N]`` select it (the redactor's safe side). Any other
object (the comparator's keyed ``[id=7]`` or unordered ``[*]`` elements, or ``None``
for a folded index) is an element selected by ``*`` only.

Names compare exactly. The redactor compares them case-insensitively by folding
both the path and the document's keys to lower case, and masks more besides
(:mod:`shadowproxy.redact.redactor`: ``$..token`` also masks ``accessToken``); it never
masks less than a path selects.

Difference paths (``$.users[2]['a b']``, rendered by
:func:`shadowproxy.compare.paths.render`) are in this grammar, except keyed-array
elements (``[id=7]``), which are folded to ``[*]`` before parsing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "ANY", "DESC", "SOME_INDEX", "JSONPathError", "Matcher", "Pattern", "States", "Token",
    "matches", "parse", "quote_name", "render", "render_member", "selects",
]

# Tokens: ("key", name) | ("index", n) | ("any",) | ("desc",). A ("desc",) token is
# always followed by one selector token (the parser guarantees it).
Token = tuple[Any, ...]
Pattern = tuple[Token, ...]
ANY: Token = ("any",)
DESC: Token = ("desc",)
# a Matcher's position: the (pattern, token) index pairs still matching
States = frozenset[tuple[int, int]]

SUPPORTED = "$, .name, ['name'], [N], [*], .*, ..name, ..['name'], ..[N], ..[*], ..*"

_NAME = re.compile(r"[A-Za-z_$@\-][A-Za-z0-9_$@\-]*")
_DIGITS = re.compile(r"[0-9]+")
_BLANK = " \t\r\n"
_ESCAPABLE = "\\'\""


class JSONPathError(ValueError):
    """A path outside the grammar; the message names the path, the position and why."""

    def __init__(self, text: str, position: int, reason: str) -> None:
        self.text = text
        self.position = position
        self.reason = reason
        super().__init__(f"unsupported JSONPath {text!r} at position {position}: {reason} "
                         f"(supported: {SUPPORTED})")


class _SomeIndex:
    """An array element at an unknown index (a singleton, :data:`SOME_INDEX`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SOME_INDEX"


SOME_INDEX = _SomeIndex()


# ---------------------------------------------------------------- parsing


def parse(text: str) -> Pattern:
    """Parse ``text`` into tokens; :class:`JSONPathError` (a ``ValueError``) when it is
    outside the grammar."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise ValueError(f"a JSONPath starts with $, got {text!r}")
    tokens: list[Token] = []
    i, n = 1, len(text)
    while i < n:
        c = text[i]
        if text.startswith("..", i):
            tokens.append(DESC)
            i += 2
            if i < n and text[i] == "[":
                i = _bracketed(text, i, tokens)
            else:
                i = _dot_selector(text, i, tokens, "..")
        elif c == ".":
            i = _dot_selector(text, i + 1, tokens, ".")
        elif c == "[":
            i = _bracketed(text, i, tokens)
        elif c in _BLANK:
            raise JSONPathError(text, i, "blank space is allowed only inside brackets")
        else:
            raise JSONPathError(text, i, f"expected '.', '..' or '[', got {c!r}")
    return tuple(tokens)


def _dot_selector(text: str, i: int, tokens: list[Token], lead: str) -> int:
    if i >= len(text):
        raise JSONPathError(text, i, f"the path ends with {lead!r}")
    c = text[i]
    if c == "*":
        tokens.append(ANY)
        return i + 1
    m = _NAME.match(text, i)
    if m and (m.end() == len(text) or text[m.end()] in ".["):
        tokens.append(("key", m.group(0)))
        return m.end()
    if c == ".":
        raise JSONPathError(text, i, "'...' is not JSONPath (use '..name' or '..[...]')")
    # not a name (2fa, x y, café): name the whole run of characters that would not do
    end = i
    while end < len(text) and text[end] not in ".[":
        end += 1
    word = text[i:end]
    raise JSONPathError(text, i, f"{word!r} is not a name for '{lead}name' (ASCII letters, "
                        "digits, _, $, @ and -, not starting with a digit): write "
                        f"{lead if lead == '..' else ''}[{quote_name(word)}]")


def _skip_blank(text: str, i: int) -> int:
    while i < len(text) and text[i] in _BLANK:
        i += 1
    return i


def _bracketed(text: str, i: int, tokens: list[Token]) -> int:
    start = i
    i = _skip_blank(text, i + 1)
    if i >= len(text):
        raise JSONPathError(text, start, "unclosed '['")
    c = text[i]
    if c in "'\"":
        name, i = _quoted(text, i)
        token: Token = ("key", name)
    elif c == "*":
        token, i = ANY, i + 1
    elif c.isascii() and c.isdigit():
        m = _DIGITS.match(text, i)
        assert m is not None
        token, i = ("index", int(m.group(0))), m.end()
    elif c == "-":
        raise JSONPathError(text, i, "negative indexes ([-1]) are not supported")
    elif c == "?":
        raise JSONPathError(text, i, "filters ([?...]) are not supported")
    elif c == "(":
        raise JSONPathError(text, i, "script expressions ([(...)]) are not supported")
    elif c == ":":
        raise JSONPathError(text, i, "slices ([a:b]) are not supported")
    elif c == "]":
        raise JSONPathError(text, i, "empty brackets")
    else:
        raise JSONPathError(text, i, f"expected a quoted name, an index or * after '[', "
                            f"got {c!r}")
    i = _skip_blank(text, i)
    if i >= len(text):
        raise JSONPathError(text, start, "unclosed '['")
    c = text[i]
    if c == "]":
        tokens.append(token)
        return i + 1
    if c == ",":
        raise JSONPathError(text, i, "unions ([a,b]) are not supported: write one rule each")
    if c == ":":
        raise JSONPathError(text, i, "slices ([a:b]) are not supported")
    raise JSONPathError(text, i, f"expected ']', got {c!r}")


def _quoted(text: str, i: int) -> tuple[str, int]:
    quote = text[i]
    start = i
    i += 1
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= n:
                break
            e = text[i + 1]
            if e not in _ESCAPABLE:
                raise JSONPathError(text, i, f"unsupported escape '\\{e}' in a quoted name "
                                    "(only \\\\, \\' and \\\" are; write the character itself)")
            out.append(e)
            i += 2
            continue
        out.append(c)
        i += 1
    raise JSONPathError(text, start, f"unterminated quoted name (no closing {quote})")


# ---------------------------------------------------------------- rendering


_QUOTE_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'"})


def quote_name(name: str) -> str:
    """``name`` as a single-quoted name selector body: ``it's`` → ``'it\\'s'``."""
    return "'" + name.translate(_QUOTE_ESCAPES) + "'"


def render_member(name: str) -> str:
    """A member segment: ``.name`` for ASCII identifiers, else ``['odd key']``."""
    return "." + name if name.isidentifier() and name.isascii() else "[" + quote_name(name) + "]"


def render(pattern: Pattern) -> str:
    """The canonical text of a parsed path: ``parse(render(p)) == p``, and spellings of
    one path render alike (``$['a']`` and ``$.a`` give ``$.a``, ``$..[*]`` gives ``$..*``)."""
    out = ["$"]
    for tok in pattern:
        kind = tok[0]
        after_desc = out[-1] == ".."
        if kind == "desc":
            out.append("..")
        elif kind == "any":
            out.append("*" if after_desc else "[*]")
        elif kind == "index":
            out.append(f"[{tok[1]}]")
        else:
            member = render_member(tok[1])
            out.append(member[1:] if after_desc and member[0] == "." else member)
    return "".join(out)


# ---------------------------------------------------------------- matching


def selects(token: Token, seg: object) -> bool:
    """Does the selector ``token`` (not ``DESC``) select the location segment ``seg``?"""
    kind = token[0]
    if kind == "any":
        return True
    if kind == "key":
        return type(seg) is str and seg == token[1]
    return (type(seg) is int and seg == token[1]) or seg is SOME_INDEX     # index


def matches(pattern: Pattern, path: Sequence[object]) -> bool:
    """Does ``pattern`` select the location ``path`` (exactly, not an ancestor of it)?"""
    return _match(pattern, 0, path, 0)


def _match(pattern: Pattern, pi: int, path: Sequence[object], si: int) -> bool:
    while pi < len(pattern):
        tok = pattern[pi]
        if tok[0] == "desc":
            nxt = pattern[pi + 1]
            for j in range(si, len(path)):
                if selects(nxt, path[j]) and _match(pattern, pi + 2, path, j + 1):
                    return True
            return False
        if si >= len(path) or not selects(tok, path[si]):
            return False
        pi += 1
        si += 1
    return si == len(path)


class Matcher:
    """Several patterns run together down a document, one segment at a time.

    A state set stands for the locations walked so far; :meth:`step` advances it by
    one segment and tells whether a pattern selects the new location exactly (what
    :func:`matches` says of it). Steps are cached: a document's keys repeat.
    """

    def __init__(self, patterns: Iterable[Pattern]) -> None:
        self.patterns = tuple(patterns)
        for p in self.patterns:
            if (p and p[-1][0] == "desc") or any(t[0] == "desc" and p[k + 1][0] == "desc"
                                            for k, t in enumerate(p[:-1])):
                raise ValueError(f"'..' must be followed by a selector: {p!r}")
        self.root_hit = any(len(p) == 0 for p in self.patterns)
        self.initial: States = frozenset(
            (i, 0) for i, p in enumerate(self.patterns) if p)
        self._cache: dict[tuple[States, object], tuple[States, bool]] = {}

    def step(self, states: States, seg: object) -> tuple[States, bool]:
        """→ (states after ``seg``, whether some pattern selects the location reached)."""
        if not states:
            return states, False
        ck = (states, seg)
        cached = self._cache.get(ck)
        if cached is not None:
            return cached
        out: set[tuple[int, int]] = set()
        hit = False
        for pi, pos in states:
            toks = self.patterns[pi]
            tok = toks[pos]
            if tok[0] == "desc":
                out.add((pi, pos))          # '..' skips this segment
                pos += 1                    # ... or its selector takes it
                tok = toks[pos]
            if not selects(tok, seg):
                continue
            if pos + 1 == len(toks):
                hit = True
            else:
                out.add((pi, pos + 1))
        res = (frozenset(out), hit)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[ck] = res
        return res

    def walk(self, path: Iterable[object]) -> tuple[States, bool]:
        """States after ``path``, and whether a pattern selected it or one of its
        ancestors (the walk stops at the first such)."""
        states = self.initial
        if self.root_hit:
            return states, True
        for seg in path:
            states, hit = self.step(states, seg)
            if hit:
                return states, True
        return states, False
