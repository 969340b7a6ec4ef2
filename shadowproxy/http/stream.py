"""A message body that arrives on its own and is pulled: the base of the upstream
answer's :class:`~shadowproxy.http.pool.Stream` and of the server's
:class:`~shadowproxy.http.request.Request`, with the bound on what it queues."""

from __future__ import annotations

import asyncio

from .timeouts import _within

STREAM_HIGH = 256 * 1024      # queued body bytes of a Stream before reading pauses
PIECE_OVERHEAD = 64           # bytes counted for each queued piece besides its data


class Pulled:
    """A message body that arrives on its own and is pulled with :meth:`read`.

    Pieces are queued as they arrive (:meth:`feed`, each counted with
    ``PIECE_OVERHEAD``); above ``STREAM_HIGH`` queued bytes :meth:`_pause` is called,
    and :meth:`_resume` once :meth:`read` has taken them, so the sender is held back
    and memory stays bounded. :meth:`end` marks the end, or a failure that
    :meth:`read` raises once the bytes before it are taken. The base of the upstream
    :class:`~shadowproxy.http.pool.Stream` and the server's request
    (:class:`shadowproxy.http.request.Request`).
    """

    __slots__ = ("_chunks", "_queued", "_waiter", "done", "error", "paused")

    def __init__(self) -> None:
        self._chunks: list[bytes | bytearray] = []
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.done = False                       # every byte has arrived
        self.error: BaseException | None = None

    def _pause(self) -> None:
        raise NotImplementedError

    def _resume(self) -> None:
        raise NotImplementedError

    def feed(self, data: bytes | bytearray) -> None:
        self._chunks.append(data)
        self._queued += len(data) + PIECE_OVERHEAD
        if self._queued > STREAM_HIGH and not self.paused:
            self.paused = True
            self._pause()
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def end(self, exc: BaseException | None = None) -> None:
        if exc is None:
            self.done = True
        elif not self.done and self.error is None:
            self.error = exc
        self._wake()

    def unpause(self) -> None:
        if self.paused:
            self.paused = False
            self._resume()

    @property
    def complete(self) -> bool:
        """Every byte has arrived and been read."""
        return self.done and not self._chunks

    @property
    def ready(self) -> bool:
        """:meth:`read` would not wait."""
        return bool(self._chunks) or self.done or self.error is not None

    async def read(self, timeout: float | None = None) -> bytes:
        """The bytes that arrived since the last call (waiting at most ``timeout`` for
        some: TimeoutError); b"" at the end; the failure given to :meth:`end`."""
        while True:
            if self._chunks:
                chunks, self._chunks, self._queued = self._chunks, [], 0
                self.unpause()
                return chunks[0] if len(chunks) == 1 and type(chunks[0]) is bytes \
                    else b"".join(chunks)
            if self.error is not None:
                raise self.error
            if self.done:
                return b""
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await _within(waiter, timeout)
            finally:
                self._waiter = None
