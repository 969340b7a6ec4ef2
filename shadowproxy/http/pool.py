"""A lean HTTP/1.1 client for shadow requests: keep-alive pools of asyncio Protocols.

The mirror sends each shadow to one configured upstream and only needs the answer's
status, reason, headers (raw, in wire order) and body bytes fed to a
:class:`~shadowproxy.proxy.capture.Capture`. aiohttp's ``ClientSession.request`` does far
more per request (URL and header objects, cookie and redirect machinery, a stream
reader per response); this client does only that:

* :func:`~shadowproxy.http.framing.encode_headers` builds the header block once per
  shadow (the candidate and the secondary share it); :meth:`Pool.start` (from
  callbacks, no task: the mirror) and :meth:`Pool.request` (its coroutine form)
  prepend the request line with the raw path and query exactly as received and the
  upstream's ``Host``. :meth:`Pool.open` is the primary path's: the answer streams.
* :class:`~shadowproxy.http.response.ResponseParser` reads the answers, on one
  :class:`~shadowproxy.http.connection._Conn` each.
* :class:`Pool` keeps idle connections (LIFO, at most ``limit``, expired after
  ``IDLE_EXPIRY`` seconds) and reuses one only when its last answer allowed keep-alive
  and was read to the end. An idempotent request on a reused connection that closes
  before any response byte arrives (the server's keep-alive timeout won the race) is
  sent once more on a new connection.

Failures raise an :class:`UpstreamError` whose ``kind`` is the label the mirror
counts: ``connect``, ``reset`` or ``protocol``; a request's timeout raises
``TimeoutError``, and a cancelled request aborts its connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from ..errors import ConnectError, ResetError
from .connection import _Conn, _send_body
from .response import BodySink, Head, InterimSink
from .stream import Pulled
from .timed import open_timed
from .timeouts import _after, _expire

IDLE_EXPIRY = 15.0            # seconds an idle connection is kept (aiohttp's default)
IDLE_LIMIT = 1024            # idle connections kept by a pool without a limit

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Stream(Pulled):
    """A response being read: its head, and its body pulled with :meth:`read` (an
    :class:`UpstreamError`, or ``TimeoutError`` after ``timeout`` seconds without a
    byte). :meth:`release` must be called once: it gives the connection back to its
    pool when the response was read to its end, else closes it.
    """

    __slots__ = ("_conn", "_pool", "_sender", "head", "timeout")

    def __init__(self, conn: _Conn, pool: Pool, timeout: float | None) -> None:
        super().__init__()
        self._conn = conn
        self._pool = pool
        self.timeout = timeout          # seconds without a byte before read() times out
        self.head: Head | None = None
        self._sender: asyncio.Task[BaseException | None] | None = None   # a streamed body

    def _pause(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.pause_reading()

    def _resume(self) -> None:
        if self._conn.transport is not None:
            self._conn.transport.resume_reading()

    async def read(self, timeout: float | None = None) -> bytes:
        return await super().read(self.timeout if timeout is None else timeout)

    @property
    def elapsed(self) -> float:
        """Seconds from the request written to the answer's last bytes arrived, once
        :attr:`done` (:attr:`_Conn.elapsed`)."""
        return self._conn.elapsed

    @property
    def framing(self) -> tuple[str | None, str | None]:
        """The head's Content-Length and Transfer-Encoding (see :class:`ResponseParser`)."""
        p = self._conn._parser
        return (p.length, p.te) if p is not None else (None, None)

    def release(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            sender.cancel()
            self._conn.abort()
        elif self.done and self.error is None:
            self.unpause()                   # the answer is all here
            self._pool._give(self._conn)
        else:
            self._conn.abort()


Done = Callable[[Head | BaseException, float], None]
"""Told of an answer read to its end (or of the failure) and its latency: seconds from
the request written to the answer's last bytes arrived (:attr:`_Conn.elapsed`); a
failure's, from the call's start to the failure seen."""


class Call:
    """One request sent by :meth:`Pool.start`: callbacks only, no task (unless it has to
    connect)."""

    __slots__ = ("pool", "method", "data", "body", "on_body", "done", "timer", "conn",
                 "reused", "retried", "task", "finished", "started")

    def __init__(self, pool: Pool, method: str, data: bytes, body: bytes, on_body: BodySink,
                 done: Done) -> None:
        self.pool = pool
        self.method = method
        self.data = data
        self.body = body
        self.on_body = on_body
        self.done = done
        self.timer: asyncio.TimerHandle | None = None
        self.conn: _Conn | None = None
        self.reused = False
        self.retried = False
        self.task: asyncio.Task[None] | None = None
        self.finished = False
        self.started = time.time()

    def send(self, conn: _Conn, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        fut = conn.send(self.data, self.body, self.method == "HEAD", self.on_body,
                        max_bytes=self.pool.max_answer)
        fut.add_done_callback(self._answered)

    def connect(self) -> None:
        self.task = self.pool._loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.pool._connect()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the caller gets every failure
            self._end(exc)
            return
        self.task = None
        if self.finished:        # timed out or cancelled while connecting
            conn.close()
            return
        self.send(conn, False)

    def _answered(self, fut: asyncio.Future[Head]) -> None:
        conn = self.conn
        assert conn is not None
        exc = ResetError("cancelled") if fut.cancelled() else fut.exception()
        if self.finished:
            if exc is None:
                self.pool._give(conn)
            return
        if exc is None:
            self.pool._give(conn)
            self._end(fut.result(), conn.elapsed)
            return
        conn.abort()
        if isinstance(exc, ResetError) and exc.before_response and self.reused and \
                not self.retried and self.method in IDEMPOTENT:
            self.retried = True          # stale keep-alive: once more on a new connection
            self.connect()
            return
        self._end(exc)

    def expire(self) -> None:
        self.timer = None
        if not self.finished:
            self._abandon()
            self._end(TimeoutError())

    def cancel(self) -> None:
        """Abandon the request (its connection is aborted); ``done`` is not called."""
        if not self.finished:
            self._abandon()
            self.finished = True
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def _abandon(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.conn is not None:
            self.conn.abort()

    def _end(self, result: Head | BaseException, latency: float | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.done(result, time.time() - self.started if latency is None else latency)


class Pool:
    """Keep-alive connections to one upstream (``http://host[:port][/prefix]``).

    :meth:`request` (shadows): at most ``limit`` requests in flight. :meth:`open` (the
    primary path): not limited. At most ``limit`` connections are kept idle (``None``:
    ``IDLE_LIMIT``).
    """

    def __init__(self, base: str, limit: int | None, max_answer: int | None = None,
                 timed: bool = False) -> None:
        """``max_answer``: the bytes an answer to :meth:`start` may have (shadows).
        ``timed``: plain TCP connections on a :class:`~shadowproxy.http.timed.TimedTransport`,
        so an answer's arrival is the kernel's stamp of its last bytes (TLS: when read)."""
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s):// URL, got {base!r}")
        tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if tls else 80)
        self.prefix = parts.path.rstrip("/")   # see _line
        self.max_answer = max_answer
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if tls else 80
        self.host_header = name if parts.port in (None, default) else f"{name}:{parts.port}"
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self.limit = limit if limit is not None else IDLE_LIMIT
        self.timed = timed and self.ssl is None
        self._sem = asyncio.Semaphore(self.limit)
        self._idle: list[_Conn] = []
        self._closed = False
        self._loop_: asyncio.AbstractEventLoop | None = None

    def start(self, method: str, target: str, header_block: bytes, body: bytes,
              on_body: BodySink, timeout: float | None, done: Done) -> Call:
        """Send one request from a callback, with no task of its own (the mirror's
        shadows): ``done`` gets the :class:`Head` once the answer is read to its end
        (body bytes to ``on_body``), or the failure (an :class:`UpstreamError`,
        ``TimeoutError`` after ``timeout`` seconds, connecting included), and its
        latency (:data:`Done`). Not limited
        to ``limit`` requests in flight: the caller bounds them. :meth:`Call.cancel`
        abandons it without calling ``done``."""
        data = (self._line(method, target) + f"Host: {self.host_header}\r\n") \
            .encode("latin-1") + header_block
        call = Call(self, method, data, body, on_body, done)
        if timeout is not None:
            call.timer = self._loop().call_later(timeout, call.expire)
        conn = self._take()
        if conn is None:
            call.connect()
        else:
            call.send(conn, True)
        return call

    async def request(self, method: str, target: str, header_block: bytes, body: bytes,
                      on_body: BodySink, timeout: float | None = None) -> Head:
        """:meth:`start` as a coroutine, at most ``limit`` at a time."""
        async with self._sem:
            fut: asyncio.Future[Head] = self._loop().create_future()

            def done(result: Head | BaseException, _latency: float) -> None:
                if not fut.done():
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)

            call = self.start(method, target, header_block, body, on_body, timeout, done)
            try:
                return await fut
            except asyncio.CancelledError:
                call.cancel()
                raise

    def _line(self, method: str, target: str) -> str:
        """The request line: the upstream's path prefix before every target but ``*``
        (``OPTIONS *``, the server as a whole)."""
        return f"{method} {self.prefix if target != '*' else ''}{target} HTTP/1.1\r\n"

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_
        if loop is None:
            loop = self._loop_ = asyncio.get_running_loop()
        return loop

    async def open(self, method: str, target: str, header_block: bytes, body: bytes, *,
                   host: bool = True, body_stream: AsyncIterator[bytes] | None = None,
                   chunked: bool = False, connect_timeout: float | None = None,
                   read_timeout: float | None = None,
                   on_interim: InterimSink | None = None) -> Stream:
        """Send one request and return its answer as a :class:`Stream` once the head
        has arrived. ``host``: add the upstream's ``Host`` (else ``header_block`` has
        one). ``body_stream``: the body, sent as it comes (chunked when ``chunked``,
        else as framed by the Content-Length in ``header_block``), from a task of its
        own so an early answer is read while it is still being sent. Raises an
        :class:`UpstreamError` or ``TimeoutError`` (connecting, or waiting
        ``read_timeout`` for a byte of the head); the caller must
        :meth:`Stream.release` what it gets. ``on_interim``: told of interim answers
        before the head (not 100 Continue)."""
        line = self._line(method, target)
        if host:
            line += f"Host: {self.host_header}\r\n"
        data = line.encode("latin-1") + header_block
        no_body = method == "HEAD"
        conn = self._take()
        reused = conn is not None
        for attempt in (1, 2):
            if conn is None:
                async with asyncio.timeout(connect_timeout):
                    conn = await self._connect()
            stream = Stream(conn, self, read_timeout)
            try:
                fut = conn.send(data, body, no_body, stream.feed, stream,
                                on_interim=on_interim)
                if body_stream is None:
                    # the timer inline, not _within(): one coroutine less per request
                    timer = None if read_timeout is None or fut.done() else \
                        self._loop().call_later(read_timeout, _expire, fut)
                    try:
                        stream.head = await fut
                    finally:
                        if timer is not None:
                            timer.cancel()
                else:
                    sender = stream._sender = asyncio.create_task(
                        _send_body(conn, body_stream, chunked, read_timeout))
                    # the wait for the answer starts when the upload has ended
                    stream.head = await _after(sender, fut, read_timeout)
                return stream
            except ResetError as exc:
                pending = stream._sender
                failure = pending.result() if pending is not None and pending.done() and \
                    not pending.cancelled() else None
                if failure is not None:
                    stream.release()
                    raise ClientBodyError(failure) from exc
                stream.release()
                if attempt == 2 or not (reused and exc.before_response and
                                        method in IDEMPOTENT and body_stream is None):
                    raise
                conn = None   # stale keep-alive: once more on a new connection
            except BaseException:
                stream.release()
                raise
        raise AssertionError("unreachable")

    def _take(self) -> _Conn | None:
        idle = self._idle
        if not idle:
            return None
        now = self._loop().time()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < IDLE_EXPIRY:
                return conn
            conn.close()
        return None

    def _give(self, conn: _Conn) -> None:
        if self._closed or not conn.reusable or len(self._idle) >= self.limit:
            conn.close()
            return
        conn.idle_since = self._loop().time()
        self._idle.append(conn)

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            if self.timed:
                _, conn = await open_timed(loop, _Conn, self.host, self.port)
            else:
                _, conn = await loop.create_connection(
                    _Conn, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None)
        except OSError as exc:   # refused, unreachable, DNS, TLS handshake
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close_idle(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def close(self) -> None:
        self.close_idle()


class ClientBodyError(Exception):
    """The client's request body failed while it was being sent upstream."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
