"""Structural diff of two parsed JSON values (as returned by ``orjson.loads``).

Every difference is a ``Difference(section="body", path=<JSONPath>, kind, a, b)``
with the path rendered as in :mod:`.paths` (``$.user.tags[2]``, ``$['odd key']``,
``$.users[id=7]``, ``$.tags[*]``). ``a``/``b`` are display values: strings cut
to 200 characters, objects and arrays summarised (``{…3 keys}``, ``[…5 items]``).

Kinds
-----
* ``changed``: same JSON type, different value. Numbers are one type and compare
  numerically (``1 == 1.0``), within a tolerance when a rule gives one.
* ``type_changed``: different JSON types (object, array, string, number,
  boolean, null). A boolean is not a number: ``true`` vs ``1`` is a type change.
* ``removed``: an object member (or array element) only in ``a``;
  ``added``: only in ``b``.
* ``length_changed``: an *ordered* array whose length differs. Reported at the
  array path with ``a``/``b`` the two lengths, **in addition to** per-element
  differences: elements of the common prefix are compared index by index, and the
  extra elements are reported as ``removed`` (``a`` longer) or ``added`` (``b``
  longer) at their own index. Nothing is realigned: an element inserted at the
  front shows as changes all the way down.

Arrays by rule
--------------
* ``ordered`` (default): as above.
* ``unordered``: the arrays are compared as multisets (ignore rules apply inside
  elements; tolerances and scrubbers are honoured by pairing leftovers). Each
  unmatched element is ``removed``/``added`` at ``<array>[*]``; no
  ``length_changed`` is reported.
* ``keyed`` (``key: id``): elements are objects matched by the value of their
  ``id`` member; matched pairs are diffed at ``<array>[id=7]`` (string keys in
  quotes: ``[id='u7']``); unmatched ones are ``removed``/``added`` there. Order
  changes are not differences. If an element is not an object, lacks the key,
  has a non-scalar key or a key is repeated, the array falls back to unordered.

Speed: subtrees are first compared with C-level ``==`` and only descended into
when unequal. Because Python says ``True == 1``, an equal container is confirmed
by comparing ``orjson.dumps`` of both sides (and, when that differs because of
key order or ``1`` vs ``1.0``, by a quick type-only walk), unless the caller
says the documents hold no booleans at all.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from ..models import Difference, DiffKind
from .paths import STAR, KeySel, Segment, render
from .rules import CompiledRules, NodeRule

__all__ = ["JsonDiffer", "json_equal", "short"]

MAX_DISPLAY = 200
_MISSING = object()
_PAIRING_MAX = 4096            # unordered leftovers: max pairs tried for tolerance/scrubbers
_KEY_TYPES = (str, int, float, bool, type(None))
_T_BOOL, _T_LIST, _T_DICT, _T_BAG = 0, 1, 2, 3


class _Enough(Exception):
    """Raised internally when the difference limit is reached."""


def short(value: Any) -> Any:
    """A display form of a JSON value: long strings cut, containers summarised."""
    t = type(value)
    if t is str:
        return value if len(value) <= MAX_DISPLAY else value[:MAX_DISPLAY] + "…"
    if t is dict:
        n = len(value)
        return f"{{…{n} key{'' if n == 1 else 's'}}}"
    if t is list:
        n = len(value)
        return f"[…{n} item{'' if n == 1 else 's'}]"
    return value


def _no_bool_swap(a: Any, b: Any) -> bool:
    """Given ``a == b``: True unless a boolean sits where the other side has a number."""
    if type(a) is dict:
        for k, x in a.items():
            y = b[k]
            if x is y:
                continue
            tx, ty = type(x), type(y)
            if tx is dict or tx is list:
                if not _no_bool_swap(x, y):
                    return False
            elif tx is not ty and (tx is bool or ty is bool):
                return False
        return True
    for x, y in zip(a, b, strict=True):
        if x is y:
            continue
        tx, ty = type(x), type(y)
        if tx is dict or tx is list:
            if not _no_bool_swap(x, y):
                return False
        elif tx is not ty and (tx is bool or ty is bool):
            return False
    return True


def _dumps_equal(a: Any, b: Any) -> bool:
    """Same JSON text (so same types, key order and number spelling)?"""
    try:
        return orjson.dumps(a) == orjson.dumps(b)
    except TypeError:  # e.g. an int beyond 64 bits, parsed by the stdlib fallback
        return False


def _same_container(a: Any, b: Any) -> bool:
    """Given ``a == b`` for two containers: are they equal as JSON (bool ≠ number)?"""
    return _dumps_equal(a, b) or _no_bool_swap(a, b)


def json_equal(a: Any, b: Any, bools: bool = True) -> bool:
    """JSON equality: numbers numerically, but a boolean never equals a number."""
    if a is b:
        return True
    if a != b:
        return False
    ta, tb = type(a), type(b)
    if ta is dict or ta is list:
        return not bools or _same_container(a, b)
    return ta is tb or (ta is not bool and tb is not bool)


class JsonDiffer:
    """Diffs parsed JSON under compiled rules.

    Holds per-call state: reuse it for sequential calls, but not from several
    threads at once (:class:`~shadowproxy.compare.Comparator` makes one per call).
    """

    __slots__ = ("rules", "limit", "_rules", "_scrub", "_out", "_bools")

    def __init__(self, rules: CompiledRules, *, limit: int = 1000) -> None:
        self.rules = rules
        self.limit = limit
        self._rules = rules if rules.has_path_rules else None
        self._scrub = rules.scrub if rules.scrubbers else None
        self._out: list[Difference] = []
        self._bools = True

    def diff(self, a: Any, b: Any, *, bools: bool = True) -> list[Difference]:
        """The differences between ``a`` and ``b`` (empty when equal under the rules).

        ``bools=False`` promises that neither document contains a boolean, which
        lets equal subtrees be skipped on ``==`` alone.
        """
        out: list[Difference] = []
        self._out = out
        self._bools = bools
        try:
            if not json_equal(a, b, bools):
                self._node(a, b, ())
        except _Enough:
            pass
        finally:
            self._out = []
        return out

    # ------------------------------------------------------------ emission

    def _emit(self, path: tuple[Segment, ...], kind: DiffKind, a: Any, b: Any) -> None:
        out = self._out
        out.append(Difference("body", render(path), kind, a, b))
        if len(out) >= self.limit:
            raise _Enough

    def _ignored(self, path: tuple[Segment, ...]) -> bool:
        rules = self._rules
        if rules is None:
            return False
        nr = rules.node(path)
        return nr is not None and nr.ignored

    # ------------------------------------------------------------ walking

    def _node(self, a: Any, b: Any, path: tuple[Segment, ...]) -> None:
        """Diff two values known (or suspected) to differ."""
        nr: NodeRule | None = None
        if self._rules is not None:
            nr = self._rules.node(path)
            if nr is not None and nr.ignored:
                return
        ta, tb = type(a), type(b)
        if ta is dict:
            if tb is dict:
                self._dict(a, b, path)
                return
        elif ta is list:
            if tb is list:
                self._list(a, b, path, nr)
                return
        elif (ta is int or ta is float) and (tb is int or tb is float):
            if a == b:
                return
            if nr is not None and nr.tolerance is not None and _close(a, b, nr.tolerance):
                return
            self._emit(path, "changed", a, b)
            return
        elif ta is tb:                                   # str, bool, None
            if a == b:
                return
            if ta is str and self._scrub is not None and self._scrub(a) == self._scrub(b):
                return
            self._emit(path, "changed", short(a), short(b))
            return
        self._emit(path, "type_changed", short(a), short(b))

    def _dict(self, a: dict[str, Any], b: dict[str, Any], path: tuple[Segment, ...]) -> None:
        bools = self._bools
        common = 0
        held: list[Any] | None = None          # equal containers, confirmed in one batch
        for k, x in a.items():
            y = b.get(k, _MISSING)
            if y is _MISSING:
                p = path + (k,)
                if not self._ignored(p):
                    self._emit(p, "removed", short(x), None)
                continue
            common += 1
            if x is y:
                continue
            if x == y:
                tx, ty = type(x), type(y)
                if tx is dict or tx is list:
                    if bools:
                        if held is None:
                            held = []
                        held.append(k)
                    continue
                if tx is ty or (tx is not bool and ty is not bool):
                    continue
            self._node(x, y, path + (k,))
        if held is not None:
            self._confirm(held, [a[k] for k in held], [b[k] for k in held], path)
        if len(b) > common:
            for k, y in b.items():
                if k not in a:
                    p = path + (k,)
                    if not self._ignored(p):
                        self._emit(p, "added", None, short(y))

    def _confirm(self, keys: list[Any], xs: list[Any], ys: list[Any],
                 path: tuple[Segment, ...]) -> None:
        """Check containers found ``==`` for hidden bool/number swaps, in one batch."""
        if _dumps_equal(xs, ys):
            return
        for k, x, y in zip(keys, xs, ys, strict=True):
            if not _same_container(x, y):
                self._node(x, y, path + (k,))

    def _list(self, a: list[Any], b: list[Any], path: tuple[Segment, ...],
              nr: NodeRule | None) -> None:
        if nr is not None and nr.array is not None:
            mode, key = nr.array
            if mode == "keyed" and key is not None and self._keyed(a, b, path, key):
                return
            if mode != "ordered":
                self._unordered(a, b, path)
                return
        na, nb = len(a), len(b)
        if na != nb:
            self._emit(path, "length_changed", na, nb)
        bools = self._bools
        held: list[Any] | None = None
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x is y:
                continue
            if x == y:
                tx, ty = type(x), type(y)
                if tx is dict or tx is list:
                    if bools:
                        if held is None:
                            held = []
                        held.append(i)
                    continue
                if tx is ty or (tx is not bool and ty is not bool):
                    continue
            self._node(x, y, path + (i,))
        if held is not None:
            self._confirm(held, [a[i] for i in held], [b[i] for i in held], path)
        for i in range(nb, na):
            p = path + (i,)
            if not self._ignored(p):
                self._emit(p, "removed", short(a[i]), None)
        for i in range(na, nb):
            p = path + (i,)
            if not self._ignored(p):
                self._emit(p, "added", None, short(b[i]))

    # ------------------------------------------------------------ keyed arrays

    def _keyed(self, a: list[Any], b: list[Any], path: tuple[Segment, ...], key: str) -> bool:
        """Match elements by ``key``; return False (nothing emitted) if not keyable."""
        ia, ib = _index_by(a, key), _index_by(b, key)
        if ia is None or ib is None:
            return False
        bools = self._bools
        for kv, x in ia.items():
            y = ib.get(kv, _MISSING)
            p = path + (KeySel(key, kv),)
            if y is _MISSING:
                if not self._ignored(p):
                    self._emit(p, "removed", short(x), None)
            elif not json_equal(x, y, bools):
                self._node(x, y, p)
        for kv, y in ib.items():
            if kv not in ia:
                p = path + (KeySel(key, kv),)
                if not self._ignored(p):
                    self._emit(p, "added", None, short(y))
        return True

    # ------------------------------------------------------------ unordered arrays

    def _unordered(self, a: list[Any], b: list[Any], path: tuple[Segment, ...]) -> None:
        ep = path + (STAR,)
        if self._ignored(ep):
            return
        fa = [self._freeze(x, ep) for x in a]
        fb = [self._freeze(y, ep) for y in b]
        ca, cb = Counter(fa), Counter(fb)
        if ca == cb:
            return
        left_a = _leftovers(a, fa, ca - cb)
        left_b = _leftovers(b, fb, cb - ca)
        rules = self.rules
        if left_a and left_b and (rules.tolerances or rules.scrubbers) \
                and len(left_a) * len(left_b) <= _PAIRING_MAX:
            left_a, left_b = self._pair(left_a, left_b, ep)
        for x in left_a:
            self._emit(ep, "removed", short(x), None)
        for y in left_b:
            self._emit(ep, "added", None, short(y))

    def _pair(self, left_a: list[Any], left_b: list[Any],
              ep: tuple[Segment, ...]) -> tuple[list[Any], list[Any]]:
        """Drop pairs that differ only within tolerances/scrubbers."""
        probe = JsonDiffer(self.rules, limit=1)
        rest_a: list[Any] = []
        rest_b = list(left_b)
        for x in left_a:
            for j, y in enumerate(rest_b):
                probe._out = []
                probe._bools = self._bools
                try:
                    probe._node(x, y, ep)
                except _Enough:
                    pass
                if not probe._out:
                    del rest_b[j]
                    break
            else:
                rest_a.append(x)
        return rest_a, rest_b

    def _freeze(self, v: Any, path: tuple[Segment, ...]) -> Any:
        """A hashable canonical form of ``v`` honouring ignore and array rules."""
        t = type(v)
        rules = self._rules
        if t is dict:
            items = []
            for k, x in v.items():
                p = path + (k,)
                if rules is not None:
                    nr = rules.node(p)
                    if nr is not None and nr.ignored:
                        continue
                items.append((k, self._freeze(x, p)))
            return (_T_DICT, frozenset(items))
        if t is list:
            nr = rules.node(path) if rules is not None else None
            if nr is not None and nr.array is not None and nr.array[0] != "ordered":
                ep = path + (STAR,)
                return (_T_BAG, frozenset(Counter(self._freeze(x, ep) for x in v).items()))
            return (_T_LIST, tuple(self._freeze(x, path + (i,)) for i, x in enumerate(v)))
        if t is bool:
            return (_T_BOOL, v)
        return v


def _leftovers(values: list[Any], frozen: list[Any], extra: Counter[Any]) -> list[Any]:
    out: list[Any] = []
    if not extra:
        return out
    for v, f in zip(values, frozen, strict=True):
        n = extra.get(f, 0)
        if n:
            extra[f] = n - 1
            out.append(v)
    return out


def _index_by(items: list[Any], key: str) -> dict[Any, Any] | None:
    index: dict[Any, Any] = {}
    seen_bool = seen_num = False
    for item in items:
        if type(item) is not dict:
            return None
        kv = item.get(key, _MISSING)
        if kv is _MISSING or not isinstance(kv, _KEY_TYPES):
            return None
        if type(kv) is bool:
            seen_bool = True
        elif type(kv) is not str and kv is not None:
            seen_num = True
        if kv in index:
            return None
        index[kv] = item
    if seen_bool and seen_num:       # True == 1 as dict keys: too ambiguous
        return None
    return index


def _close(a: float, b: float, tolerance: tuple[float, float]) -> bool:
    abs_tol, rel_tol = tolerance
    try:
        d = abs(a - b)
        return d <= abs_tol or d <= rel_tol * max(abs(a), abs(b))
    except OverflowError:
        return False
