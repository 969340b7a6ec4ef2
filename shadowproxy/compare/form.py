"""Comparison of ``application/x-www-form-urlencoded`` bodies.

Each key's values are compared as a list (order kept); paths are
``body.form.<key>``; ``a``/``b`` are the value (a string) or, for a repeated
key, the list of values. Scrubbers apply to the values. Kinds: ``changed``,
``removed`` (key only in the first body), ``added`` (only in the second).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

from ..models import Difference

__all__ = ["form_diff"]

MAX_DISPLAY = 200


def _fields(text: str, scrub: Callable[[str], str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        out.setdefault(key, []).append(scrub(value) if scrub is not None else value)
    return out


def _show(values: list[str]) -> str | list[str]:
    cut = [v if len(v) <= MAX_DISPLAY else v[:MAX_DISPLAY] + "…" for v in values]
    return cut[0] if len(cut) == 1 else cut


def form_diff(a: str, b: str, scrub: Callable[[str], str] | None = None) -> list[Difference]:
    """Differences between two urlencoded forms (see module doc)."""
    fa, fb = _fields(a, scrub), _fields(b, scrub)
    out: list[Difference] = []
    for key, va in fa.items():
        vb = fb.get(key)
        if vb is None:
            out.append(Difference("body", f"body.form.{key}", "removed", _show(va), None))
        elif va != vb:
            out.append(Difference("body", f"body.form.{key}", "changed", _show(va), _show(vb)))
    for key, vb in fb.items():
        if key not in fa:
            out.append(Difference("body", f"body.form.{key}", "added", None, _show(vb)))
    return out
