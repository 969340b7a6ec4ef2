"""The worker → control channel: exchanges finished in one loop iteration travel in one
frame, the limit still drops (counted by the caller), nothing queued is lost on close."""

from __future__ import annotations

import asyncio
import os
import tempfile

from shadowproxy import channel
from shadowproxy.channel import ChannelClient, ChannelServer


async def _pair(handle, **kw) -> tuple[ChannelServer, ChannelClient, str]:
    path = os.path.join(tempfile.mkdtemp(prefix="sp-chan-"), "c.sock")
    server = ChannelServer(path, handle)
    await server.start()
    client = ChannelClient(path, **kw)
    await client.connect()
    return server, client, path


async def test_one_frame_per_loop_iteration_and_flush_on_close():
    frames: list[tuple] = []
    server, client, _ = await _pair(frames.append)
    try:
        assert all(client.queue(i) for i in range(5))
        await asyncio.sleep(0)          # the end of this iteration writes the frame
        assert client.queue(5)
        await client.close()            # queued but not yet written: flushed by close
        await server.wait_closed(2.0)
        assert frames == [("xs", [0, 1, 2, 3, 4]), ("xs", [5])]
    finally:
        await server.close()


async def test_batches_are_capped():
    frames: list[tuple] = []
    server, client, _ = await _pair(frames.append)
    try:
        n = channel.MAX_BATCH + 3
        assert all(client.queue(i) for i in range(n))
        await client.close()
        await server.wait_closed(2.0)
        assert [len(f[1]) for f in frames] == [channel.MAX_BATCH, 3]
        assert [x for f in frames for x in f[1]] == list(range(n))
    finally:
        await server.close()


async def test_over_the_limit_or_broken_queue_refuses():
    blocker = asyncio.Event()

    async def slow(msg):                # the control side stops reading
        await blocker.wait()

    lost: list[list] = []
    server, client, _ = await _pair(slow, limit=64 * 1024, on_dropped=lost.append)
    try:
        big = b"x" * (256 * 1024)
        refused = 0
        for _ in range(200):
            if not client.queue(big):
                refused += 1
            await asyncio.sleep(0)
        assert refused > 0              # the write buffer went over the limit
        # queued, then the channel breaks before the frame is written: handed back
        client._writer = None  # simulate a connection gone
        assert client.queue(1) is False
        client._batch = [1, 2]
        client._writable = lambda force=False: False  # type: ignore[method-assign]
        client.flush_queued()
        assert lost == [[1, 2]]
    finally:
        blocker.set()
        await server.close()
