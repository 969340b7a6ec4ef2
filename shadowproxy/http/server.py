"""The client-facing HTTP/1.1 server of the primary path: asyncio Protocols, no framework.

Each client connection is a :class:`Connection`. It parses one request head at a time
(:class:`~shadowproxy.http.request.RequestParser`: the framing rules of
:class:`~shadowproxy.http.response.ResponseParser` with a request's head), hands a
:class:`Request` to the handler in a task of its own, and parses the next (pipelined)
request only once the answer to this one is complete.
The request body reaches the handler as it arrives (:meth:`Request.read`); above
``STREAM_HIGH`` queued bytes the connection stops reading, so a slow upstream slows the
client. The handler answers with :meth:`Request.reply` or :meth:`Request.respond`
(head and body written as given: nothing is added but the framing and ``Connection``
headers the client needs).

What the handler never sees:

* a malformed head (a bad request line or header name, control characters, a size
  beyond the limits, conflicting or unparsable Content-Length, Transfer-Encoding with
  Content-Length or without ``chunked`` last): answered 400 (414, 431, 505 where they
  fit) and the connection closed; counted, and logged at most once a minute;
* a WebSocket upgrade (a GET with ``Upgrade: websocket``, HTTP/1.1): the connection is
  handed, bytes and all, to ``on_upgrade`` (an aiohttp server protocol) which takes it
  from there. Another method asking for one is a plain request (its Upgrade, hop-by-hop,
  is not passed on), as an HTTP/1.0 one is (RFC 9110 §7.8).

A client that goes away cancels its handler. A connection that ends after an answer
is closed in two steps: FIN once the answer is written, then what the client still
sends is read and dropped until it closes too (or falls quiet): closing with bytes
unread would reset the connection, and a reset can destroy the end of the answer
before the client has read it.

:meth:`Server.shutdown` stops accepting and closes the connections that are between
requests, unless the next request is already waiting in the socket. A request whose
first byte was read is answered: the one being read or answered, and those pipelined
behind it that were read with it. The last answer says ``Connection: close`` and
nothing after it is read. What is left at the deadline is aborted.

The server accepts on its own (not ``loop.create_server``: out of descriptors,
asyncio's accept loop logs and retries without pause and uvloop's accepts and drops the
waiting clients). Connections between requests are kept in order of their last
activity; when accept runs out of descriptors, or the connections reach
``max_connections`` (:func:`~shadowproxy.limits.connection_limit`), the longest idle
are closed first, so that new clients are still served.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import socket
import struct
import termios
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ProtocolError
from ..limits import connection_limit
from .request import BadRequest, Request, RequestParser

log = logging.getLogger("shadowproxy.server")

PENDING_HIGH = 256 * 1024     # bytes of pipelined requests held while one is answered
KEEPALIVE_TIMEOUT = 75.0      # seconds an idle client connection is kept (aiohttp's)
LINGER_QUIET = 0.5            # after a connection's last answer: it closes once the
LINGER_MAX = 5.0              # client is quiet this long (or this long at most)
ACCEPT_BATCH = 128            # connections accepted in one go
ACCEPT_RETRY = 0.5            # seconds accepting pauses when out of descriptors for good
EVICT_BATCH = 16              # idle connections closed when out of descriptors

_LINGER_0 = struct.pack("ii", 1, 0)


Handler = Callable[[Request], Awaitable[None]]
UpgradeFactory = Callable[[], asyncio.Protocol]


class Connection(asyncio.Protocol):
    """One client connection: requests in order, one at a time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop     # set by connection_made: asyncio calls it first
        self.peer = ""
        self.keep_alive = True
        self.closing = False               # nothing more is read (nor written, but FIN)
        self._parser: RequestParser | None = None
        self._request: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._task_for: Request | None = None    # the request self._task serves
        self._pending = bytearray()        # bytes after the request being answered
        self._head_pieces: list[bytes] = []   # the current head's bytes, for an upgrade
        self._read_paused = False
        self._write_paused: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None     # keep-alive, or linger, timer
        self._heard = 0.0                  # lingering: when the client last sent bytes
        self._linger_end = 0.0

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = self.server.loop
        assert loop is not None            # a started server's connection
        self._loop = loop
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        server = self.server
        server.connections.add(self)
        if len(server.connections) > server.max_connections:
            server.evict(1, "connections at the limit")   # one in, the longest idle out
        server.idle[self] = None
        self._idle_timer()
        if server.stopping:
            self.stop()        # accepted as the server stopped

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            if self.closing or not self.keep_alive:
                # after the last request: nothing more is read as a request
                if self.closing:
                    self._heard = self._loop.time()     # lingering
                else:
                    self.pause()
                return
            if self._request is not None:
                self._hold(data)     # the next request: parsed once this one is answered
                return
            self.server.idle.pop(self, None)
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            if self.closing:
                return
            parser = self._parser = RequestParser(_ignore)
            self._head_pieces = []
        try:
            if parser.head is None:
                self._head_pieces.append(data)   # no copy: kept for an upgrade
                done = parser.feed(data)
                req = parser.head
                if req is None:
                    return
                assert isinstance(req, Request)
                if req.upgrade and self.server.on_upgrade is not None:
                    self._hand_over(b"".join(self._head_pieces))
                    return
                self._start(req)
            else:
                done = parser.feed(data)
        except ProtocolError as exc:
            self._bad(exc)
            return
        if done:
            self._body_done(parser)

    def _body_done(self, parser: RequestParser) -> None:
        req = self._request
        self._parser = None
        if req is not None:
            req.end()
        if not parser.keep_alive:
            self.keep_alive = False
        if parser.tail and self.keep_alive:
            self._hold(parser.tail)
        if self.server.stopping:
            self.pause()     # all of it is here: what came with it is answered, no more

    def _hold(self, data: bytes) -> None:
        """Bytes of the next request(s), kept until this one is answered."""
        self._pending += data
        if len(self._pending) > PENDING_HIGH:
            self.pause()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self.server.idle.pop(self, None)
        if self._idle is not None:
            self._idle.cancel()
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)
        req = self._request
        if req is not None:
            req.end(exc or ConnectionResetError("the client closed the connection"))
        if self._task is not None and not self._task.done():
            self._task.cancel()      # nobody is listening for the answer any more
        self.server._changed()

    def pause_writing(self) -> None:
        self._write_paused = self._loop.create_future()

    def resume_writing(self) -> None:
        w, self._write_paused = self._write_paused, None
        if w is not None and not w.done():
            w.set_result(None)

    # ------------------------------------------------------------ for the request

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    async def drain(self) -> None:
        w = self._write_paused
        if w is not None:
            await w
            if self.closing:
                raise ConnectionResetError("the client went away")

    def pause(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closing:
            self._read_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        # (stopping: nothing beyond a request read whole is read before it is answered)
        if self._read_paused and self.transport is not None and not self.closing and \
                not (self.server.stopping and self._parser is None and
                     self._request is not None):
            self._read_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close with RST: a client reading a close-delimited body must see it broken,
        never cleanly ended."""
        self.closing = True
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
                except (OSError, ValueError):
                    pass   # already closed (uvloop says ValueError: negative fd)
            self.transport.abort()

    def finish(self) -> None:
        """The answer is complete: the next request, or close."""
        req, self._request = self._request, None
        if req is not None and not req.done:
            self.keep_alive = False        # the rest of its body was never read
        if not self.keep_alive:
            self._close()
            return
        self.resume()
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self._parse(data)
        if self._request is not None or self.closing:
            return
        if self._parser is None:           # nothing of a next request read yet
            if self.server.stopping and self._close_idle():
                return
            self.server.idle[self] = None
        self._idle_timer()   # idle, or part of a head: it must be whole in time

    def stop(self) -> None:
        """The server stops: close now if between requests (unless the next one is
        already in the socket); else read no more than the request begun needs."""
        if self.closing:
            return
        if self._request is None and self._parser is None:
            self._close_idle()
        elif self._parser is None:
            self.pause()

    # ------------------------------------------------------------ internals

    def _start(self, req: Request) -> None:
        if self._idle is not None:
            # the timer ran from the end of the last answer: a whole head had to come
            # within it (a client sending a head byte by byte cannot hold the connection)
            self._idle.cancel()
            self._idle = None
        req._conn = self
        self._request = req
        self.server.requests += 1
        self._task = self._loop.create_task(self._run(req))
        self._task_for = req

    async def _run(self, req: Request) -> None:
        # once its answer is finished the connection may be serving the next request:
        # what happens here after that concerns that request no more
        try:
            await self.server.handler(req)
        except asyncio.CancelledError:
            if self._request is req:
                self.abort()
            raise
        except ConnectionError:
            if self._request is req:
                self.abort()
        except Exception:  # one failed request must not stop the server
            log.exception("request handler failed")
            if self._request is req:
                if not req.responded and not self.closing:
                    self.keep_alive = False
                    req.reply(500, "internal error")
                else:
                    self.abort()
        else:
            if self._request is req:
                if not req.responded:
                    self.keep_alive = False
                    req.reply(500, "internal error")
                elif not self.closing:
                    self.abort()     # the handler left its answer unfinished
        finally:
            if self._task_for is req:    # no later request has a task yet
                self._task = self._task_for = None
            self.server._changed()

    def _bad(self, exc: ProtocolError) -> None:
        """Answer a malformed request ourselves and close."""
        status = exc.status if isinstance(exc, BadRequest) else 400
        self.server.malformed(exc)
        self._parser = None
        req = self._request
        if req is None and self.server.on_malformed is not None:
            self.server.on_malformed()
        if req is not None:
            # its body was malformed (chunk framing): the answer may be under way
            req.end(exc)
            self.keep_alive = False
            return
        self.keep_alive = False
        if self.transport is not None and not self.closing:
            body = f"{exc}\n".encode()
            self.transport.write(
                f"HTTP/1.1 {status} \r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        self._close()

    def _hand_over(self, data: bytes) -> None:
        """An upgrade: the connection becomes the upgrade server's, from this head on."""
        assert self.transport is not None and self.server.on_upgrade is not None
        self.server.connections.discard(self)
        self.server.idle.pop(self, None)
        self._parser = None
        self.closing = True          # no longer ours: no timer of ours may close it
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        proto = self.server.on_upgrade()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(data)

    def _idle_timer(self) -> None:
        if self._idle is None:
            self._idle = self._loop.call_later(
                self.server.keepalive_timeout, self._idle_close)

    def _idle_close(self) -> None:
        self._idle = None
        if self._request is not None or self.transport is None or self.closing:
            return
        if self._parser is not None:       # part of a head, not whole in time
            self.closing = True
            self.server.idle.pop(self, None)
            self.transport.close()
        elif not self._close_idle():
            self._idle_timer()     # its next request is arriving: the usual time for it

    def _close_idle(self, linger: bool = True) -> bool:
        """Close between requests, unless bytes of the next one wait in the socket (then
        it is read and answered): True when closed. Before any byte of a request is read
        a close loses no request: the client sees the end before any answer to it. It
        lingers as after a last answer (a client may not have read the answers before,
        and a request it sends now would be answered by a reset, which destroys them);
        ``linger=False`` gives the descriptor back at once (to make room)."""
        t = self.transport
        if t is None or self.closing:
            return self.closing
        if _unread(t):
            return False
        if linger:
            self._close()
            return True
        self.closing = True
        self.server.idle.pop(self, None)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        t.close()
        return True

    def _close(self) -> None:
        """Close after the last answer: FIN once it is written, then read and drop what
        the client still sends until it closes, or is quiet for ``LINGER_QUIET`` seconds
        (``LINGER_MAX`` at most once the answer is written)."""
        if self.closing:
            return
        self.closing = True
        self.keep_alive = False
        self._parser = None          # the rest of a body never read is dropped unparsed
        self.server.idle.pop(self, None)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        t = self.transport
        if t is None or t.is_closing():
            return
        try:
            t.write_eof()      # once what is buffered is written
        except (RuntimeError, OSError, NotImplementedError):
            t.close()
            return
        if self._read_paused:
            self._read_paused = False
            t.resume_reading()
        loop = self._loop
        self._heard = loop.time()
        self._linger_end = self._heard + LINGER_MAX
        self._idle = loop.call_later(LINGER_QUIET, self._linger)

    def _linger(self) -> None:
        self._idle = None
        t = self.transport
        if t is None or t.is_closing():
            return
        now = self._loop.time()
        if t.get_write_buffer_size():
            self._linger_end = now + LINGER_MAX     # the answer is still being written
        elif now - self._heard >= LINGER_QUIET or now >= self._linger_end:
            t.close()
            return
        self._idle = self._loop.call_later(LINGER_QUIET, self._linger)


def _ignore(_data: bytes | bytearray) -> None:
    pass


def _unread(transport: asyncio.BaseTransport) -> int:
    """Bytes waiting in the connection's socket, not read yet (0 when it cannot tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                                  b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return 0


class Server:
    """The protocol factory and what its connections share."""

    def __init__(self, handler: Handler, *, on_upgrade: UpgradeFactory | None = None,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 on_malformed: Callable[[], None] | None = None,
                 max_connections: int | None = None) -> None:
        self.handler = handler
        self.on_upgrade = on_upgrade
        # told of each request answered here because its head was malformed (one the
        # handler never saw; a bad body is the handler's to count)
        self.on_malformed = on_malformed
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[Connection] = set()
        # connections between requests (or before the first), the longest idle first
        self.idle: OrderedDict[Connection, None] = OrderedDict()
        # beyond this many, each new connection closes the longest idle one (default:
        # from the soft RLIMIT_NOFILE when the server starts)
        self.max_connections = max_connections or 0
        self.stopping = False
        self.requests = 0
        self.bad_requests = 0
        self.evicted = 0                # idle connections closed to make room
        self._last_warned: float | None = None
        self._fds_warned: float | None = None
        self._sock: socket.socket | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._idle_wait: asyncio.Event = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None     # set by start()

    def __call__(self) -> Connection:
        return Connection(self)

    async def start(self, sock: Any) -> None:
        self.loop = asyncio.get_running_loop()
        if not self.max_connections:
            self.max_connections = connection_limit()
        sock.setblocking(False)
        sock.listen(1024)
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)

    # ------------------------------------------------------------ accepting

    def _accept(self) -> None:
        sock, loop = self._sock, self.loop
        assert sock is not None and loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._out_of_fds(exc)
                else:
                    log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            loop.create_task(self._connect(conn))

    async def _connect(self, sock: socket.socket) -> None:
        assert self.loop is not None
        try:
            await self.loop.connect_accepted_socket(self, sock)
        except Exception as exc:  # noqa: BLE001 - one client, gone at once
            log.debug("accepted connection failed: %s", exc)
            sock.close()

    def _out_of_fds(self, exc: OSError) -> None:
        """Accept failed for want of descriptors: the longest idle connections make room
        (the listening socket stays readable: accept is tried again on the next turn
        of the loop, once they are closed); with none, accepting pauses a moment and
        new clients wait in the backlog."""
        assert self._sock is not None and self.loop is not None
        closed = self.evict(EVICT_BATCH, f"out of file descriptors ({exc.strerror})")
        if not closed:
            self.loop.remove_reader(self._sock.fileno())
            self._retry = self.loop.call_later(ACCEPT_RETRY, self._accept_again)
            self._warn_fds(f"out of file descriptors ({exc.strerror}) with no idle "
                           "connection to close: new clients wait")

    def _accept_again(self) -> None:
        self._retry = None
        if self._sock is not None and not self.stopping:
            assert self.loop is not None
            self.loop.add_reader(self._sock.fileno(), self._accept)

    def evict(self, n: int, why: str) -> int:
        """Close up to ``n`` connections between requests, the longest idle first; →
        how many were closed."""
        closed = 0
        while closed < n and self.idle:
            conn, _ = self.idle.popitem(last=False)
            if conn._close_idle(linger=False):
                closed += 1
        if closed:
            self.evicted += closed
            self._warn_fds(f"{why}: closing the longest idle connections to serve new "
                           f"ones ({self.evicted} so far, {len(self.connections)} open, "
                           f"limit {self.max_connections})")
        return closed

    def _warn_fds(self, message: str) -> None:
        now = time.monotonic()
        if self._fds_warned is None or now - self._fds_warned >= 60.0:
            self._fds_warned = now
            log.warning("%s", message)

    # ------------------------------------------------------------ the rest

    def malformed(self, exc: BaseException) -> None:
        """Count a malformed request; log at most one line a minute about them."""
        self.bad_requests += 1
        now = time.monotonic()
        if self._last_warned is None or now - self._last_warned >= 60.0:
            self._last_warned = now
            log.warning("malformed requests answered with 4xx: %d so far (latest: %s)",
                        self.bad_requests, str(exc)[:200])

    def _busy(self) -> bool:
        return any(not c.closing for c in self.connections)

    def _changed(self) -> None:
        if self.stopping:
            self._idle_wait.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; close the connections between requests (one whose next
        request is already in the socket answers it); wait up to ``timeout`` for the
        requests begun to be answered (each connection closes after its last answer);
        abort the rest."""
        self.stopping = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sock is not None and self.loop is not None:
            if self._sock.fileno() >= 0:
                self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for c in list(self.connections):
            c.stop()
        while self._busy() and loop.time() < deadline:
            self._idle_wait.clear()
            try:
                await asyncio.wait_for(self._idle_wait.wait(), deadline - loop.time())
            except TimeoutError:
                break
        for c in list(self.connections):
            if not c.closing:
                c.abort()        # still reading or answering at the deadline
        # the others are closing: let them flush and linger (a second past the deadline
        # at most)
        while self.connections and loop.time() < deadline + 1.0:
            await asyncio.sleep(0.01)
