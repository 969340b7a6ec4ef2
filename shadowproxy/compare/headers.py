"""Header comparison.

* Names compare case-insensitively; paths are ``header.<lower-name>``.
* Headers in the ignore set (``DEFAULT_IGNORED_HEADERS`` + ``ignore_headers``)
  are skipped.
* A name's field lines are compared as a list: the values, trimmed, joined with
  ``", "`` (so two ``Vary`` lines equal one comma-joined ``Vary`` line, as HTTP
  defines). ``a``/``b`` are that joined value (cut to 200 characters).
* ``Set-Cookie`` is compared per cookie name, on attributes only (never values):
  ``Path``, ``Domain``, ``Secure``, ``HttpOnly``, ``SameSite``, ``Partitioned``
  and the *presence* of ``Max-Age``/``Expires``. Paths are
  ``header.set-cookie.<cookie-name>``; ``a``/``b`` are the attribute signature,
  e.g. ``"Path=/; Max-Age; Secure; HttpOnly; SameSite=lax"``.
* Kinds: ``removed`` (only in the first response), ``added`` (only in the
  second), ``changed``.
"""

from __future__ import annotations

from ..models import Difference, Headers

__all__ = ["compare_headers", "cookie_signature"]

MAX_DISPLAY = 200


def _cut(value: str) -> str:
    return value if len(value) <= MAX_DISPLAY else value[:MAX_DISPLAY] + "…"


def cookie_signature(set_cookie: str) -> tuple[str, str]:
    """``"sid=abc; Path=/; HttpOnly"`` → ``("sid", "Path=/; HttpOnly")``."""
    first, *attrs = set_cookie.split(";")
    name = first.partition("=")[0].strip()
    parts: list[tuple[int, str]] = []
    for attr in attrs:
        key, _, value = attr.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "path":
            parts.append((0, f"Path={value}"))
        elif key == "domain":
            parts.append((1, f"Domain={value.lower().lstrip('.')}"))
        elif key == "max-age":
            parts.append((2, "Max-Age"))
        elif key == "expires":
            parts.append((3, "Expires"))
        elif key == "secure":
            parts.append((4, "Secure"))
        elif key == "httponly":
            parts.append((5, "HttpOnly"))
        elif key == "samesite":
            parts.append((6, f"SameSite={value.lower()}"))
        elif key == "partitioned":
            parts.append((7, "Partitioned"))
    return name, "; ".join(text for _, text in sorted(set(parts)))


def _filtered(headers: Headers, ignored: frozenset[str]) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        low = name.lower()
        if low not in ignored:
            out.append((low, value.strip()))
    return out


def _group(items: list[tuple[str, str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    fields: dict[str, list[str]] = {}
    cookies: dict[str, list[str]] = {}
    for name, value in items:
        if name == "set-cookie":
            cname, sig = cookie_signature(value)
            cookies.setdefault(cname, []).append(sig)
        else:
            fields.setdefault(name, []).append(value)
    return fields, cookies


def _diff_maps(a: dict[str, list[str]], b: dict[str, list[str]], prefix: str,
               join: str, out: list[Difference], sort: bool) -> None:
    for name, va in a.items():
        vb = b.get(name)
        if sort:
            va = sorted(va)
        sa = join.join(va)
        if vb is None:
            out.append(Difference("header", prefix + name, "removed", _cut(sa), None))
            continue
        sb = join.join(sorted(vb) if sort else vb)
        if sa != sb:
            out.append(Difference("header", prefix + name, "changed", _cut(sa), _cut(sb)))
    for name, vb in b.items():
        if name not in a:
            sb = join.join(sorted(vb) if sort else vb)
            out.append(Difference("header", prefix + name, "added", None, _cut(sb)))


def compare_headers(a: Headers, b: Headers, ignored: frozenset[str]) -> list[Difference]:
    """Differences between two header lists; ``ignored`` holds lower-case names."""
    fa, fb = _filtered(a, ignored), _filtered(b, ignored)
    if fa == fb:
        return []
    fields_a, cookies_a = _group(fa)
    fields_b, cookies_b = _group(fb)
    out: list[Difference] = []
    _diff_maps(fields_a, fields_b, "header.", ", ", out, sort=False)
    _diff_maps(cookies_a, cookies_b, "header.set-cookie.", " | ", out, sort=True)
    return out
