"""PostgreSQL store URLs: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAMS]`` (also
``postgres://``). The query parameters are libpq's (``sslmode``, ``sslrootcert``,
``connect_timeout``, ``application_name``, ...) and reach libpq unchanged. The password
comes from the URL or, better, from the environment variable ``store.password_env``
names; it is never logged nor shown: :func:`redact_url` and :func:`redact` hide it.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

from ...config import default_instance

__all__ = ["default_instance", "is_postgres_url", "redact", "redact_url", "url_password"]

SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    return isinstance(url, str) and url.startswith(SCHEMES)


def url_password(url: str) -> str | None:
    """The password the URL itself holds (decoded), if any."""
    try:
        pw = urlsplit(url).password
    except ValueError:
        return None
    return unquote(pw) if pw else None


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (and a ``password=`` parameter)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    query = "&".join("password=***" if q.lower().startswith("password=") else q
                     for q in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret (and its URL-encoded form) replaced by ``***``."""
    from urllib.parse import quote

    for s in secrets:
        if s:
            text = text.replace(s, "***").replace(quote(s, safe=""), "***")
    return text
