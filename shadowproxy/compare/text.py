"""Line diff of two text bodies, after scrubbing.

Differences are ``Difference("body", "body.line[N]", kind, a, b)``:

* ``N`` is the 1-based line number in the first response for ``changed`` and
  ``removed`` lines, and in the second response for ``added`` lines;
* ``changed``: a line replaced by another (``difflib`` ``replace`` blocks are
  paired line by line; the surplus of a block is ``removed``/``added``);
* ``a``/``b`` are the lines (original text when scrubbing kept the line count,
  else the scrubbed text), cut to 200 characters around the first difference.

Both sides are scrubbed first and compared whole; ``difflib`` only runs on the
lines between the common prefix and suffix, and falls back to a positional
pairing when that middle is too large for a quadratic matcher.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from ..models import Difference, DiffKind

__all__ = ["excerpt", "text_diff"]

MAX_DISPLAY = 200
_MATCHER_MAX_LINES = 2000        # per side, in the differing middle


def excerpt(line: str, other: str | None = None) -> str:
    """``line`` cut to 200 characters; when longer, a window around where it
    starts to differ from ``other``."""
    if len(line) <= MAX_DISPLAY:
        return line
    start = 0
    if other is not None:
        n = min(len(line), len(other))
        i = 0
        while i < n and line[i] == other[i]:
            i += 1
        start = max(0, min(i - MAX_DISPLAY // 4, len(line) - MAX_DISPLAY))
    head = "…" if start else ""
    tail = "…" if start + MAX_DISPLAY < len(line) else ""
    return head + line[start:start + MAX_DISPLAY] + tail


def text_diff(a: str, b: str, scrub: Callable[[str], str] | None = None, *,
              limit: int = 1000) -> list[Difference]:
    """Differences between two texts as ``body.line[N]`` entries (see module doc)."""
    sa, sb = (scrub(a), scrub(b)) if scrub is not None else (a, b)
    if sa == sb:
        return []
    la, lb = sa.splitlines(), sb.splitlines()
    da, db = la, lb
    if scrub is not None:
        oa, ob = a.splitlines(), b.splitlines()
        if len(oa) == len(la):
            da = oa
        if len(ob) == len(lb):
            db = ob

    # common prefix and suffix
    lo, n = 0, min(len(la), len(lb))
    while lo < n and la[lo] == lb[lo]:
        lo += 1
    hi = 0
    while hi < n - lo and la[-1 - hi] == lb[-1 - hi]:
        hi += 1
    ma, mb = la[lo:len(la) - hi], lb[lo:len(lb) - hi]

    if len(ma) <= _MATCHER_MAX_LINES and len(mb) <= _MATCHER_MAX_LINES:
        ops = difflib.SequenceMatcher(None, ma, mb, autojunk=False).get_opcodes()
    else:
        ops = [("replace", 0, len(ma), 0, len(mb))]

    out: list[Difference] = []

    def emit(kind: DiffKind, line_no: int, x: str | None, y: str | None) -> bool:
        out.append(Difference("body", f"body.line[{line_no}]", kind, x, y))
        return len(out) >= limit

    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(paired):
            ia, ib = lo + i1 + k, lo + j1 + k
            if emit("changed", ia + 1, excerpt(da[ia], db[ib]), excerpt(db[ib], da[ia])):
                return out
        for ia in range(lo + i1 + paired, lo + i2):
            if emit("removed", ia + 1, excerpt(da[ia]), None):
                return out
        for ib in range(lo + j1 + paired, lo + j2):
            if emit("added", ib + 1, None, excerpt(db[ib])):
                return out
    return out
