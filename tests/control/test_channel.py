"""The worker → control channel: exchanges queued within ``linger`` of the first travel in
one frame (with ``linger=0``, those of one loop iteration), the limit still drops (counted by
the caller), nothing queued is lost on close."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shadowproxy.control import channel
from shadowproxy.control.channel import ChannelClient, ChannelServer
from shadowproxy.models import (
    Exchange,
    RequestRecord,
    ResponseRecord,
    from_wire,
    to_wire,
)

ROOT = Path(__file__).resolve().parents[2]


def _exchange(i: int, secondary: bool) -> Exchange:
    """Every field set to a value that is not its default."""
    def resp(status: int) -> ResponseRecord:
        return ResponseRecord(status, "Reason", (("A", "1"), ("a", "2")), b"body\x00\xff",
                              99, "ab" * 32, True, 0.25 + i, "timeout")

    req = RequestRecord("POST", f"/p/{i}", "q=1&q=2", (("Host", "h"), ("X", "y")), b"\x01req")
    return Exchange(f"id-{i}", 1.5 + i, "POST /p/{id}", "route", req, resp(200), resp(502),
                    resp(201) if secondary else None)


async def _pair(handle, **kw) -> tuple[ChannelServer, ChannelClient, str]:
    path = os.path.join(tempfile.mkdtemp(prefix="sp-chan-"), "c.sock")
    server = ChannelServer(path, handle)
    await server.start()
    client = ChannelClient(path, **kw)
    await client.connect()
    return server, client, path


async def test_one_frame_per_linger_or_loop_iteration_and_flush_on_close():
    frames: list[tuple] = []
    server, client, _ = await _pair(frames.append, linger=0.05)
    try:
        assert client.queue(0)
        await asyncio.sleep(0.01)       # within the linger: the frame waits for more
        assert all(client.queue(i) for i in range(1, 5))
        await asyncio.sleep(0.01)
        assert frames == []
        for _ in range(100):            # 50 ms after the first item it is written
            if frames:
                break
            await asyncio.sleep(0.01)
        assert frames == [("xs", [0, 1, 2, 3, 4])]
        client.linger = 0               # without: written at the end of the iteration
        assert client.queue(5) and client.queue(6)
        await asyncio.sleep(0)
        assert client.queue(7)
        await client.close()            # queued but not yet written: flushed by close
        await server.wait_closed(2.0)
        assert frames[1:] == [("xs", [5, 6]), ("xs", [7])]
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


def test_exchanges_travel_as_plain_tuples_and_arrive_whole():
    for secondary, instance in ((False, None), (True, None), (True, "pod-a")):
        ex = dataclasses.replace(_exchange(1, secondary), instance=instance)
        wire = to_wire(ex)
        assert len(wire) == len(dataclasses.fields(Exchange))
        assert from_wire(wire) == ex


async def test_a_batch_of_exchanges_crosses_the_channel_unchanged():
    frames: list[tuple] = []
    server, client, _ = await _pair(frames.append, linger=0)
    try:
        sent = [_exchange(i, secondary=i % 2 == 1) for i in range(5)]
        assert pickle.loads(channel.encode_batch(sent)[4:])[0] == "xw"
        assert all(client.queue(ex) for ex in sent)
        await asyncio.sleep(0)
        assert client.queue(sent[0]) and client.queue("not an exchange")   # mixed: as is
        await client.close()
        await server.wait_closed(2.0)
        assert frames == [("xs", sent), ("xs", [sent[0], "not an exchange"])]
    finally:
        await server.close()


# a process that sends 40 frames of 1 kB through a socket whose kernel buffer holds a
# few (so most wait in the transport), closes its end and exits at once, as a worker does
_SENDER = """
import asyncio, socket, sys
from shadowproxy.control.channel import ChannelClient
from shadowproxy.process import install_uvloop
if sys.argv[2] == "uvloop":
    install_uvloop()
async def main():
    c = ChannelClient(sys.argv[1])
    await c.connect()
    sock = c._writer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for i in range(40):
        c.send(("s", i, b"x" * 1000), force=True)
    assert c.buffered > 16 * 1024       # below the high-water mark: drain() returns at once
    await c.close()
asyncio.run(main())
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_close_writes_everything_before_the_process_exits(loop: str):
    """A reader that is slow (a control or shadow process starved of CPU) still gets
    every frame sent before close(), although the sender exits right after it."""
    path = os.path.join(tempfile.mkdtemp(prefix="sp-chan-"), "c.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)
    proc = subprocess.Popen([sys.executable, "-c", _SENDER, path, loop], cwd=ROOT)

    def receive() -> bytes:
        conn, _ = listener.accept()
        with conn:
            time.sleep(0.5)     # reads nothing yet: the sender's transport holds the rest
            conn.settimeout(10)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            return data

    try:
        data = await asyncio.get_running_loop().run_in_executor(None, receive)
        assert proc.wait(10) == 0
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
    got = []
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    while not reader.at_eof():
        got.append((await channel.read_frame(reader))[1])
    assert got == list(range(40))
