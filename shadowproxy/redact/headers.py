"""Header redaction: what of a secret header's value is kept.

``Authorization``-style values keep their scheme (``Bearer [redacted:…]``: the
schemes of :data:`_AUTH_HEADERS` matched by :data:`_AUTH_SCHEME`); ``Cookie`` keeps
cookie names and ``Set-Cookie`` the name and attributes (:func:`_mask_cookie`,
:func:`_mask_set_cookie`); only values go. Values of other headers get the text pass,
and the :data:`PLAIN_CACHE` values it last left unchanged are not passed again.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .echo import _Secrets

PLAIN_CACHE = 4096                 # header values known to pass the text pass unchanged

_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_AUTH_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(\s+)(.+)$", re.S)


def _mask_cookie(value: str, secrets: _Secrets, mask: Callable[[str], str]) -> str:
    parts = []
    for part in value.split(";"):
        name, eq, val = part.partition("=")
        if eq and val.strip():
            raw = val.strip().strip('"')
            m = mask(raw)
            secrets.add(raw, m)
            lead = val[:len(val) - len(val.lstrip())]
            parts.append(f"{name}={lead}{m}")
        elif not eq and part.strip():       # a bare value: mask it too
            raw = part.strip()
            m = mask(raw)
            secrets.add(raw, m)
            parts.append(part[:len(part) - len(part.lstrip())] + m)
        else:
            parts.append(part)
    return ";".join(parts)


def _mask_set_cookie(value: str, secrets: _Secrets, mask: Callable[[str], str]) -> str:
    first, sep, attrs = value.partition(";")
    name, eq, val = first.partition("=")
    if not eq:
        m = mask(first.strip())
        secrets.add(first.strip(), m)
        return m + sep + attrs
    raw = val.strip().strip('"')
    m = mask(raw)
    secrets.add(raw, m)
    return f"{name}={m}{sep}{attrs}"
