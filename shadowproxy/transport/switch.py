"""The fleet's mirror switch: one Redis key (``<transport.stream>:mirror``) that every
sidecar sharing the transport watches, so that ``shadowproxy mirror on|off`` reaches
all of them within a second.

The key holds ``on`` or ``off`` and, after a space, the sample rate (empty: the
sidecar keeps its own). A sidecar's control process reads it every
:data:`POLL_INTERVAL` seconds and applies a change as the admin API's switch does
(:meth:`Control.set_mirror <shadowproxy.control.stages.Control.set_mirror>`); a key
that is absent, or that Redis cannot be reached for, changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from ..config import TransportConfig
from .client import Keys, connect

log = logging.getLogger("shadowproxy.transport")

POLL_INTERVAL = 0.5


def encode(enabled: bool, sample: float | None) -> str:
    return ("on" if enabled else "off") + " " + ("" if sample is None else repr(sample))


def decode(value: bytes | str) -> tuple[bool, float | None] | None:
    """``(enabled, sample or None)``; None when the value is not a switch."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    state, _, rate = text.strip().partition(" ")
    if state not in ("on", "off"):
        return None
    try:
        sample = float(rate) if rate.strip() else None
    except ValueError:
        return None
    if sample is not None and not 0.0 <= sample <= 1.0:
        return None
    return state == "on", sample


async def set_switch(cfg: TransportConfig, enabled: bool, sample: float | None) -> None:
    r = connect(cfg)
    try:
        await r.set(Keys.of(cfg).mirror, encode(enabled, sample))
    finally:
        await r.aclose()


async def watch(cfg: TransportConfig, apply: Callable[[bool, float | None], None],
                interval: float = POLL_INTERVAL) -> None:
    """Apply each new value of the key (the first one read too)."""
    key = Keys.of(cfg).mirror
    last: bytes | str | None = None
    r = connect(cfg)
    try:
        while True:
            try:
                value = await r.get(key)
            except (RedisError, OSError):
                value = last      # unreachable: keep what was applied
            if value is not None and value != last:
                last = value
                switch = decode(value)
                if switch is None:
                    log.error("transport: %s holds %r, not 'on|off [RATE]'; ignored", key,
                              value[:40])
                else:
                    log.info("mirroring switched %s%s for the fleet (%s)",
                             "on" if switch[0] else "off",
                             "" if switch[1] is None else f" at sample {switch[1]}", key)
                    apply(*switch)
            await asyncio.sleep(interval)
    finally:
        await r.aclose()
