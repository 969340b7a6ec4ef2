"""The stream's state as the admin API and ``/metrics`` show it: entries kept, the
group's lag (entries not yet delivered to a comparator: what a comparator
HorizontalPodAutoscaler scales on), entries delivered and not yet acknowledged, the
comparators, and the dead letters. Read every :data:`INTERVAL` seconds by a sidecar's
control process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from ..config import TransportConfig
from .client import Keys, connect, safe_url

log = logging.getLogger("shadowproxy.transport")

INTERVAL = 1.0


async def read_info(r: Any, cfg: TransportConfig) -> dict[str, Any]:
    keys = Keys.of(cfg)
    out: dict[str, Any] = {"url": safe_url(cfg.url or ""), "stream": cfg.stream,
                           "group": cfg.group, "max_len": cfg.max_len, "up": True}
    try:
        out["length"] = int(await r.xlen(keys.stream))
        out["dead_letters"] = int(await r.xlen(keys.dead))
        groups = await r.xinfo_groups(keys.stream) if out["length"] or \
            await r.exists(keys.stream) else []
    except (RedisError, OSError) as exc:
        return {**out, "up": False, "error": str(exc) or type(exc).__name__}
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == cfg.group:
            lag = g.get("lag")
            out["lag"] = int(lag) if lag is not None else out["length"]
            out["pending"] = int(g.get("pending", 0))
            out["consumers"] = int(g.get("consumers", 0))
    return out


async def info_forever(cfg: TransportConfig, into: dict[str, Any],
                       interval: float = INTERVAL) -> None:
    r = connect(cfg)
    try:
        while True:
            # read first, then swap: the admin API and /metrics read ``into`` while the
            # next reading is awaited, and must never see it empty (a scrape would miss
            # the lag a HorizontalPodAutoscaler scales on)
            info = await read_info(r, cfg)
            into.clear()
            into.update(info)
            await asyncio.sleep(interval)
    finally:
        await r.aclose()
