"""The Redis connection of the fleet's transport and the names of its keys.

Every process that touches the transport (a sidecar's shadow and control processes,
a comparator, ``shadowproxy mirror``) connects here: the URL of ``transport.url``
(``redis://`` or ``rediss://`` for TLS, user and password from the URL or the variable
``transport.password_env``), short socket timeouts so that a Redis that hangs is
seen as down within a second or two instead of holding anything up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from ..config import TransportConfig

CONNECT_TIMEOUT = 1.0     # seconds to connect
SOCKET_TIMEOUT = 2.0      # seconds any one command may take


@dataclass(frozen=True)
class Keys:
    """The keys of one transport: all start with ``transport.stream``."""

    stream: str           # the exchanges
    dead: str             # entries that failed transport.max_deliveries times, or refused
    mirror: str           # the fleet's run-time mirror switch (``shadowproxy mirror``)

    @classmethod
    def of(cls, cfg: TransportConfig) -> Keys:
        return cls(stream=cfg.stream, dead=cfg.stream + ":dead", mirror=cfg.stream + ":mirror")


def safe_url(url: str) -> str:
    """``url`` without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = user + (f"[{host}]" if ":" in host else host) + \
        (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(cfg: TransportConfig, *, timeout: float = SOCKET_TIMEOUT,
            **options: Any) -> aioredis.Redis:
    """A client (connections are made on first use) for ``cfg.url``."""
    assert cfg.url is not None
    kw: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT,
                          "socket_timeout": timeout, "retry_on_timeout": False,
                          "health_check_interval": 0}
    if cfg.password_env:
        kw["password"] = os.environ.get(cfg.password_env)
    kw.update(options)
    return aioredis.Redis.from_url(cfg.url, **kw)


MIN_REDIS = (7, 0)        # XINFO's lag and entries-read, XGROUP … ENTRIESREAD, script flags


def too_old(version: str) -> bool:
    """Is a ``redis_version`` older than the transport needs (:data:`MIN_REDIS`)?"""
    parts = []
    for x in version.split(".")[:2]:
        digits = "".join(ch for ch in x if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) < MIN_REDIS


async def ensure_group(r: aioredis.Redis, cfg: TransportConfig) -> None:
    """The stream and its consumer group, created when missing (from the stream's
    first entry: a group created after entries were added reads them too; with a read
    count of 0, which Redis keeps exact so that trimmed entries can be counted, see
    :data:`~.scripts.TRIMMED`)."""
    try:
        server = await r.info("server")
    except aioredis.ResponseError:      # INFO disabled (some managed services): go on
        server = {}
    version = str(server.get("redis_version", ""))
    if version and too_old(version):
        raise aioredis.ResponseError(
            f"Redis {version} is too old for the transport: it needs "
            f"{'.'.join(map(str, MIN_REDIS))} or newer (the stream group's lag and read "
            "count, and scripts that run when Redis is full)")
    try:
        groups = await r.xinfo_groups(cfg.stream)
    except aioredis.ResponseError:        # no stream yet
        groups = []
    if any(g["name"] in (cfg.group, cfg.group.encode()) for g in groups):
        return      # a full Redis refuses XGROUP CREATE even for a group it has
    try:
        await r.xgroup_create(cfg.stream, cfg.group, id="0", mkstream=True, entries_read=0)
    except aioredis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
