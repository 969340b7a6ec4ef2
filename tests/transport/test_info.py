"""The stream's state a sidecar shows (shadowproxy/transport/info.py), against a real
redis-server started by the test."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shadowproxy.transport.info import info_forever
from tests.redis_server import RedisServer
from tests.support import config

pytestmark = pytest.mark.server


async def test_the_state_shown_never_goes_empty_while_the_next_is_read(
        redis: RedisServer, tmp_path: Path) -> None:
    """The admin API and /metrics read the dict at any moment: while Redis is slow to
    answer the next reading, they still see the last one, not nothing."""
    cfg = config("http://127.0.0.1:1", "http://127.0.0.1:2",
                 transport={"url": redis.url}).transport
    into: dict[str, object] = {}
    task = asyncio.create_task(info_forever(cfg, into, interval=0.01))
    r = aioredis.Redis.from_url(redis.url)
    try:
        for _ in range(400):
            if "length" in into:
                break
            await asyncio.sleep(0.01)
        assert into.get("up") is True and "length" in into
        await r.client_pause(1500, all=True)   # the readings now wait
        seen = []
        for _ in range(20):
            await asyncio.sleep(0.025)
            seen.append(dict(into))
        assert all(s.get("up") is True and "length" in s for s in seen), seen
    finally:
        await r.client_unpause()
        await r.aclose()
        # redis-py can swallow a cancellation that lands as a paused command returns:
        # cancel until the task is done
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        with contextlib.suppress(asyncio.CancelledError):
            await task
