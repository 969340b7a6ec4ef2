"""The bounded channel between proxy workers and the control process.

Local default: a Unix socket in a private directory, frames of a 4-byte length
and a pickled tuple. Worker → control: ``("xs", [Exchange, ...])`` exchanges to
compare, collected by :meth:`ChannelClient.queue` into one frame for those queued
within ``linger`` (5 ms) of the first or up to ``MAX_BATCH`` (``("x", Exchange)``,
one a frame, is still understood), ``("s", delta)``
outcome counter increments, ``("g", worker, gauges)``. A batch of exchanges travels
as ``("xw", [tuple, ...])`` (:func:`~shadowproxy.models.to_wire`: plain tuples are
cheaper to pickle and unpickle than dataclasses); :func:`read_frame` hands it on as
``("xs", [Exchange, ...])``.
Control → worker: ``("cfg", Config)`` a reloaded config, ``("mirror", enabled,
sample)`` a run-time change.

Back pressure: the control side awaits the comparator's bounded queue before
reading the next frame, so a slow comparator fills the socket buffers and then
the sender's write buffer; beyond ``limit`` bytes :meth:`ChannelClient.send`
returns False and the worker counts the shadow as ``dropped{compare_full}``;
:meth:`ChannelClient.queue` answers the same way for each exchange.
The primary path never waits on it.

The same two methods (``send`` returning a bool, and an async consumer) are what
a network transport (Redis Streams) has to provide to replace this one.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from ..models import Exchange, from_wire, to_wire

MAX_BATCH = 64          # exchanges in one ("xs", [...]) frame
LINGER = 0.005          # seconds a frame waits for more exchanges before it is written

log = logging.getLogger("shadowproxy.channel")

_LEN = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024


def encode(msg: Any) -> bytes:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def encode_batch(items: list[Any]) -> bytes:
    """The frame of a queued batch: ``("xw", …)`` when all are exchanges, else ``("xs", …)``."""
    if all(type(x) is Exchange for x in items):
        return encode(("xw", [to_wire(x) for x in items]))
    return encode(("xs", items))


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(4)
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes exceeds the channel limit")
    msg = pickle.loads(await reader.readexactly(n))
    if msg[0] == "xw":
        return ("xs", [from_wire(t) for t in msg[1]])
    return msg


class ChannelClient:
    """The worker's end. ``send`` never blocks."""

    def __init__(self, path: str, limit: int = 32 * 1024 * 1024,
                 on_message: Callable[[Any], None] | None = None,
                 on_close: Callable[[], None] | None = None,
                 on_dropped: Callable[[list[Any]], None] | None = None,
                 linger: float = LINGER,
                 before_frame: Callable[[], Any] | None = None) -> None:
        self.path = path
        self.limit = limit
        # a queued frame is written ``linger`` s after its first item or at MAX_BATCH
        # items: at a moderate rate that is one write (and one wake-up of the control
        # process) for several exchanges instead of one for each
        self.linger = linger
        self._flush_at: asyncio.TimerHandle | asyncio.Handle | None = None
        self._flush_due = 0.0    # loop time the scheduled flush is for
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_message = on_message
        self.on_close = on_close   # the control process went away
        # queued items the channel lost between queue() and the frame's write
        self.on_dropped = on_dropped
        # a message to write just before each frame of queued items (None: nothing), so
        # that what the receiver learns from it never lags behind those items
        self.before_frame = before_frame
        self._batch: list[Any] = []
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.broken = False

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._reader_task = asyncio.create_task(self._read(reader), name="channel-reader")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await read_frame(reader)
                if self.on_message is not None:
                    self.on_message(msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.broken = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bad frame from the control process")
            self.broken = True
        if self.on_close is not None:
            self.on_close()

    @property
    def buffered(self) -> int:
        w = self._writer
        return w.transport.get_write_buffer_size() if w is not None else 0

    def send(self, msg: Any, force: bool = False) -> bool:
        """Queue ``msg``; False (dropped) when the channel is down or over its limit.
        ``force`` ignores the limit (small control frames such as counters)."""
        if not self._writable(force):
            return False
        self._writer.write(encode(msg))  # type: ignore[union-attr]
        return True

    def _writable(self, force: bool = False) -> bool:
        w = self._writer
        if w is None or self.broken or w.is_closing():
            return False
        return force or w.transport.get_write_buffer_size() <= self.limit

    def queue(self, item: Any, force: bool = False, linger: float | None = None) -> bool:
        """Add ``item`` to the ``("xs", [...])`` frame written ``linger`` seconds later
        (default: the channel's; at the end of the loop's turn when 0) or once it holds
        MAX_BATCH items (one pickle and one write for all of them): an item that may
        wait rides in the frame of one that may not. False (dropped) when the channel
        is down or over its limit (``force`` ignores the limit), as for :meth:`send`."""
        if not self._writable(force):
            return False
        batch = self._batch
        batch.append(item)
        if len(batch) >= MAX_BATCH:
            self.flush_queued()
            return True
        loop = self._loop
        assert loop is not None
        wait = self.linger if linger is None else linger
        due = loop.time() + wait
        if self._flush_at is None or due < self._flush_due:
            if self._flush_at is not None:
                self._flush_at.cancel()
            self._flush_due = due
            self._flush_at = loop.call_later(wait, self.flush_queued) if wait \
                else loop.call_soon(self.flush_queued)
        return True

    def flush_queued(self) -> None:
        """Write the queued items now (as one frame, or several if it would be too big)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        items = self._batch
        if not items:
            return
        self._batch = []
        if self.before_frame is not None:
            msg = self.before_frame()
            if msg is not None:
                self.send(msg, force=True)
        self._write_items(items)

    def _write_items(self, items: list[Any]) -> None:
        frame = encode_batch(items)
        if len(frame) - _LEN.size > MAX_FRAME and len(items) > 1:
            half = len(items) // 2
            self._write_items(items[:half])
            self._write_items(items[half:])
            return
        # accepted by queue() when the channel had room: written even if it filled since
        if self._writable(force=True):
            self._writer.write(frame)  # type: ignore[union-attr]
        elif self.on_dropped is not None:
            self.on_dropped(items)

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close once every byte is handed to the kernel
        (up to ``timeout``). ``drain()`` alone does not wait while the transport holds
        less than its high-water mark (64 KiB), which it does when the reader is slow (a
        shadow process starved of CPU): a process that exits right after would lose
        those frames unseen, and the requests in them would end in no counted outcome."""
        self.flush_queued()
        w = self._writer
        if w is not None:
            w.close()     # the transport writes what it holds, then closes
            try:
                await asyncio.wait_for(w.wait_closed(), timeout)
            except TimeoutError:
                log.warning("channel to %s: %d bytes not written within %gs of closing; "
                            "they are lost", self.path, w.transport.get_write_buffer_size(),
                            timeout)
            except OSError:
                pass          # the reader went away: nothing more can be written
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it is gone
                pass


class ChannelServer:
    """The control process's end: one reader task per worker connection."""

    def __init__(self, path: str, handle: Callable[[Any], Awaitable[None] | None]) -> None:
        self.path = path
        self.handle = handle
        self._server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                msg = await read_frame(reader)
                res = self.handle(msg)
                if res is not None:
                    await res
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._conns.discard(task)
            if writer in self.writers:
                self.writers.remove(writer)
            writer.close()

    def broadcast(self, msg: Any) -> None:
        frame = encode(msg)
        for w in list(self.writers):
            if not w.is_closing():
                w.write(frame)

    async def wait_closed(self, timeout: float) -> None:
        """Wait until every worker has disconnected (they close after their drain)."""
        if self._conns:
            await asyncio.wait(list(self._conns), timeout=timeout)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()


REPORT_INTERVAL = 0.5   # seconds between a process's reports of counts and gauges


async def report_forever(client: ChannelClient, take_counts: Callable[[], Any],
                         gauges: Callable[[], tuple[Any, ...]]) -> None:
    """A worker's or a shadow process's reports to the control process: its counts
    (``("s", delta)``) and its gauges message, every ``REPORT_INTERVAL`` seconds."""
    while True:
        await asyncio.sleep(REPORT_INTERVAL)
        client.send(("s", take_counts()), force=True)
        client.send(gauges(), force=True)
