"""Header handling shared by the primary path and the mirror."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict

# RFC 9110 §7.6.1, plus the non-standard ones still seen on the wire.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
    "trailer", "proxy-authenticate", "proxy-authorization",
})


def connection_tokens(raw_headers: Iterable[tuple[bytes, bytes]]) -> frozenset[str]:
    """Header names listed in Connection (and Proxy-Connection): hop-by-hop too."""
    names: set[str] = set()
    for k, v in raw_headers:
        lk = k.lower()
        if lk == b"connection" or lk == b"proxy-connection":
            for token in v.decode("latin-1").split(","):
                token = token.strip().lower()
                if token:
                    names.add(token)
    return frozenset(names)


def end_to_end(raw_headers: Iterable[tuple[bytes, bytes]],
               drop: frozenset[str] = frozenset(), *,
               same_case: bool = False) -> list[tuple[str, str]]:
    """(name, value) pairs in wire order without hop-by-hop headers and ``drop``.

    ``same_case``: spell every repeat of a name like its first occurrence. aiohttp's
    client keeps only the last of ``X-A`` / ``x-a`` (it merges names case-sensitively
    into a case-insensitive dict), so headers bound for it need one spelling.
    """
    raw = raw_headers if isinstance(raw_headers, tuple) else tuple(raw_headers)
    named = connection_tokens(raw)
    out = []
    first: dict[str, str] = {}
    for k, v in raw:
        name = k.decode("latin-1")
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in named or lname in drop:
            continue
        if same_case:
            name = first.setdefault(lname, name)
        out.append((name, v.decode("latin-1")))
    return out


def to_multidict(pairs: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    md: CIMultiDict[str] = CIMultiDict()
    for k, v in pairs:
        md.add(k, v)
    return md
