"""One upstream connection: the asyncio Protocol that sends a request and reads its
answer with a :class:`~shadowproxy.http.response.ResponseParser`, one request at a
time, and the writer of a streamed request body.

Its answer's body goes to a callback (the mirror's shadows, bounded in size and in the
work of a read) or to a :class:`~shadowproxy.http.pool.Stream` (the primary path).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ..errors import ProtocolError, ResetError, TooLargeError, UpstreamError
from .response import BodySink, Head, InterimSink, ResponseParser
from .stream import Pulled
from .timed import TimedTransport
from .timeouts import _within

SHADOW_CHUNKS = 1024       # chunks of a shadow parsed in one turn of the loop (~2 ms)
YIELD_READ = 64 * 1024     # a shadow's read this big waits a loop turn before the next


class _Conn(asyncio.Protocol):
    """One upstream connection carrying one request at a time.

    ``send`` returns a future of the head: resolved at the end of the response when
    its body goes to a callback (shadows), or as soon as the head is parsed when it
    goes to a :class:`~shadowproxy.http.pool.Stream` (the primary path), which is then
    told of the rest.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.aborted = False
        self.idle_since = 0.0
        self._parser: ResponseParser | None = None
        self._fut: asyncio.Future[Head] | None = None
        self._stream: Pulled | None = None
        self._drained: asyncio.Future[None] | None = None   # set while writes are paused
        self._loop: asyncio.AbstractEventLoop     # set by connection_made: asyncio calls it first
        self._max_bytes: int | None = None
        self.sent = 0.0           # Unix time the last request's first bytes were written
        self.arrived = 0.0        # Unix time the last answer's last bytes arrived

    def _arrival(self) -> None:
        """The answer is complete: when its last bytes arrived. The kernel's stamp of
        them on a :class:`TimedTransport` (however late this process got to read them),
        else now (this callback runs as the bytes are read, not a loop turn later)."""
        t = self.transport
        self.arrived = t.received_at if isinstance(t, TimedTransport) and t.received_at \
            else time.time()

    @property
    def elapsed(self) -> float:
        """Seconds from the last request written to its answer's last bytes arrived: the
        span every side's latency is (a connection's setup is not in it)."""
        return max(0.0, self.arrived - self.sent)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def send(self, data: bytes, body: bytes, no_body: bool, on_body: BodySink,
             stream: Pulled | None = None, max_bytes: int | None = None,
             on_interim: InterimSink | None = None) -> asyncio.Future[Head]:
        """``max_bytes`` (shadows): the answer may be this long, head included, else it
        fails with :class:`TooLargeError`; its reads are then also bounded in work
        (:data:`SHADOW_CHUNKS` chunks each) and take turns with the other connections."""
        assert self.transport is not None
        self._max_bytes = max_bytes
        self._parser = ResponseParser(on_body, no_body=no_body,
                                      chunk_limit=SHADOW_CHUNKS if max_bytes else None,
                                      on_interim=on_interim)
        self._stream = stream
        self._fut = fut = self._loop.create_future()
        if self.lost or self.transport.is_closing():
            fut.set_exception(ResetError("connection closed", before_response=True))
            return fut
        self.sent = time.time()
        if body and len(body) > 16 * 1024:
            self.transport.write(data)
            self.transport.write(body)
        else:
            self.transport.write(data + body if body else data)
        return fut

    @property
    def reusable(self) -> bool:
        """The last response allowed keep-alive, was read to its end and nothing more
        came; the request was written out entirely."""
        p = self._parser
        return p is not None and p.done and p.keep_alive and not p.extra and \
            not self.lost and self.transport is not None and \
            not self.transport.is_closing() and self.transport.is_reading() and \
            self.transport.get_write_buffer_size() == 0

    def data_received(self, data: bytes) -> None:
        p, fut, stream = self._parser, self._fut, self._stream
        if p is None or fut is None or p.done or (stream is None and fut.done()):
            # bytes nobody asked for (on an idle connection, or after the response)
            if p is not None:
                p.extra = True
            self.abort()
            return
        try:
            done = p.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            self.abort()
            return
        if stream is not None:
            if not fut.done() and p.head is not None:
                fut.set_result(p.head)
            if done:
                self._arrival()
                stream.end()
        elif self._max_bytes is None:
            if done and not fut.done():
                assert p.head is not None
                self._arrival()
                fut.set_result(p.head)
        else:
            self._shadow_read(p, fut, done, len(data) >= YIELD_READ)

    def _shadow_read(self, p: ResponseParser, fut: asyncio.Future[Head], done: bool,
                     big: bool) -> None:
        """After a shadow's read: the answer, its size cap, and its turn. A big read
        or a backlog of chunks waits for the loop's next turn before more is parsed
        or read, so a flood from the candidate takes turns with clients and primary."""
        t = self.transport
        assert t is not None and self._max_bytes is not None
        if p.received > self._max_bytes:
            self._fail(TooLargeError(f"the answer exceeds {self._max_bytes} bytes"))
            self.abort()
        elif done:
            if not t.is_reading():
                t.resume_reading()      # reusable again
            if not fut.done():
                assert p.head is not None
                self._arrival()
                fut.set_result(p.head)
        elif p.backlog or big:
            if t.is_reading():
                t.pause_reading()
            self._loop.call_soon(self._next_turn)
        elif not t.is_reading():
            t.resume_reading()

    def _next_turn(self) -> None:
        p, fut, t = self._parser, self._fut, self.transport
        if p is None or fut is None or fut.done() or t is None or self.lost or \
                t.is_closing():
            return
        if not p.backlog:
            t.resume_reading()
            return
        try:
            done = p.feed_backlog()
        except ProtocolError as exc:
            self._fail(exc)
            self.abort()
            return
        self._shadow_read(p, fut, done, False)

    def _fail(self, exc: BaseException) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        elif self._stream is not None:
            self._stream.end(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self.aborted:
            exc = ConnectionAbortedError("aborted")   # our doing: never a clean end
        self.lost = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        p, fut = self._parser, self._fut
        if p is None or fut is None or p.done:
            return
        try:
            p.eof(exc)
        except (UpstreamError, ProtocolError) as err:
            self._fail(err)
            return
        self._arrival()
        if self._stream is not None:
            self._stream.end()
        elif not fut.done():
            assert p.head is not None
            fut.set_result(p.head)

    def pause_writing(self) -> None:
        self._drained = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def write(self, data: bytes, timeout: float | None = None) -> None:
        """Write part of a streamed request body, waiting (at most ``timeout``) while
        the transport's buffer is above its high-water mark."""
        if self.lost or self.transport is None or self.transport.is_closing():
            raise ResetError("connection closed while sending the request body")
        self.transport.write(data)
        if self._drained is not None:
            await _within(self._drained, timeout)

    def abort(self) -> None:
        self.lost = self.aborted = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()


async def _send_body(conn: _Conn, chunks: AsyncIterator[bytes], chunked: bool,
                     timeout: float | None) -> BaseException | None:
    """Write a streamed request body (waiting at most ``timeout`` for the upstream to
    take each part). Any failure aborts the connection, so the upstream never sees a
    complete, truncated request; the failure of the body's source (the client) is
    returned, not raised: :meth:`Pool.open` tells it from the upstream's."""
    try:
        async for chunk in chunks:
            if chunk:
                await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk,
                                 timeout)
        if chunked:
            await conn.write(b"0\r\n\r\n", timeout)
    except asyncio.CancelledError:
        conn.abort()
        raise
    except (UpstreamError, ProtocolError, TimeoutError):   # the upstream's side: open() reports it
        conn.abort()
    except Exception as exc:  # noqa: BLE001 - the client's side failed: cut the request
        conn.abort()
        return exc
    return None
