"""Header handling shared by the primary path and the mirror."""

from __future__ import annotations

from collections.abc import Iterable

# RFC 9110 §7.6.1, plus the non-standard ones still seen on the wire.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
    "trailer", "proxy-authenticate", "proxy-authorization",
})


def end_to_end(raw_headers: Iterable[tuple[bytes, bytes]],
               drop: frozenset[str] = frozenset(), *,
               same_case: bool = False, underscores: bool = True) -> list[tuple[str, str]]:
    """(name, value) pairs in wire order without hop-by-hop headers and ``drop``.

    ``same_case``: spell every repeat of a name like its first occurrence. aiohttp's
    client keeps only the last of ``X-A`` / ``x-a`` (it merges names case-sensitively
    into a case-insensitive dict), so headers bound for it need one spelling.

    ``underscores`` False: names with an underscore are left out too. A server that
    maps ``_`` to ``-`` (CGI, WSGI) would take ``Transfer_Encoding`` for a second
    framing header, or ``X_Forwarded_For`` for the proxy's; nginx drops them as well
    (``underscores_in_headers off``).
    """
    return end_to_end_text([(k.decode("latin-1"), v.decode("latin-1"))
                            for k, v in raw_headers], drop, same_case=same_case,
                           underscores=underscores)


def end_to_end_text(headers: Iterable[tuple[str, str]],
                    drop: frozenset[str] = frozenset(), *,
                    same_case: bool = False,
                    underscores: bool = True) -> list[tuple[str, str]]:
    """:func:`end_to_end` of headers already decoded (latin-1)."""
    # One pass; the names listed in Connection (which may come after them) are
    # removed at the end, and only when there are some beyond the standard ones.
    out: list[tuple[str, str]] = []
    lnames: list[str] = []
    named: set[str] | None = None
    first: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in drop:
            if lname == "connection" or lname == "proxy-connection":
                for token in value.split(","):
                    token = token.strip(" \t").lower()
                    if token and token not in HOP_BY_HOP:
                        if named is None:
                            named = set()
                        named.add(token)
            continue
        if not underscores and "_" in name:
            continue
        if same_case:
            name = first.setdefault(lname, name)
        out.append((name, value))
        lnames.append(lname)
    if named:
        out = [h for h, lname in zip(out, lnames, strict=True) if lname not in named]
    return out
