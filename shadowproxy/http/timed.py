"""A TCP transport that knows when its bytes arrived: the kernel's receive timestamp.

A shadow's latency is the time from its request's bytes written to its answer's last
bytes arrived. The shadow processes run below the workers' priority (``shadow.nice``),
so on a busy machine the answer can wait in the socket's buffer until the process gets a
core and its loop reaches the connection: a clock read there adds that wait to the
candidate's latency (an equal candidate read 5x primary's p50 under load,
docs/performance.md). The kernel stamps each segment as it arrives (``SO_TIMESTAMPNS``)
and hands the stamp of the last segment read with the bytes (``recvmsg``'s ancillary
data): that is the arrival, whenever the process gets to read it.

Neither asyncio's nor uvloop's transports give the ancillary data, so this is a small
transport of its own over a non-blocking socket (``loop.add_reader`` /
``loop.add_writer``), for plain TCP only (TLS stays on the loop's transport, timed when
read). :attr:`TimedTransport.received_at` is the stamp of the latest read, in Unix time
(``CLOCK_REALTIME``, as :func:`time.time`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("shadowproxy.http")

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)    # Linux
READ_SIZE = 256 * 1024       # bytes a read takes at most (uvloop's size)
ANC_SIZE = socket.CMSG_SPACE(16)
WRITE_HIGH = 64 * 1024       # buffered request bytes above which the protocol is paused
_STAMP = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds

P = TypeVar("P", bound=asyncio.Protocol)

_LOCAL = threading.local()       # a read buffer per thread (an event loop's)


def _read_buffer() -> memoryview:
    """This thread's read buffer: every read of its loop lands there and is copied out
    at once (one loop a thread: two reads never overlap)."""
    view: memoryview | None = getattr(_LOCAL, "view", None)
    if view is None:
        view = _LOCAL.view = memoryview(bytearray(READ_SIZE))
    return view


class TimedTransport(asyncio.Transport):
    """Plain TCP over ``sock`` (connected, non-blocking), driving ``protocol``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._out = bytearray()
        self._reading = False
        self._writing = False
        self._closing = False
        self._lost = False
        self._paused_protocol = False
        self.received_at = 0.0          # kernel's stamp of the latest bytes read (Unix time)
        self._view = _read_buffer()     # made in the loop's thread (as its reads run)
        protocol.connection_made(self)
        self.resume_reading()

    # ------------------------------------------------------------ reading

    def _read_ready(self) -> None:
        try:
            n, anc, _flags, _addr = self._sock.recvmsg_into((self._view,), ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and \
                    len(data) >= _STAMP.size:
                sec, nsec = _STAMP.unpack_from(data)
                self.received_at = sec + nsec * 1e-9
                break
        else:
            # bytes without a stamp (the kernel turns stamping on a moment after the
            # first socket asks): timed when read, never by an older read's stamp
            self.received_at = time.time()
        if not n:
            # the FIN's arrival, which no stamp comes with: the end of an answer
            # delimited by the close is timed when read
            self.received_at = time.time()
            self.pause_reading()
            self._close(None)      # the peer's end: the protocol learns of it as a loss
            return
        try:
            self._protocol.data_received(self._view[:n].tobytes())
        except Exception as exc:  # as asyncio's transports: the connection is lost
            log.exception("the protocol failed on data received")
            self._fail(exc)

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    # ------------------------------------------------------------ writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._out:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fail(exc)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._writing = True
            self._loop.add_writer(self._fd, self._write_ready)
        self._out += data
        if len(self._out) > WRITE_HIGH and not self._paused_protocol:
            self._paused_protocol = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            n = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._out[:n]
        if self._paused_protocol and len(self._out) <= WRITE_HIGH // 4:
            self._paused_protocol = False
            self._protocol.resume_writing()
        if not self._out:
            self._writing = False
            self._loop.remove_writer(self._fd)
            if self._closing and not self._lost:
                self._call_lost(None)

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def can_write_eof(self) -> bool:
        return False

    # ------------------------------------------------------------ closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._close(None)

    def _close(self, exc: BaseException | None) -> None:
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._out:
            self._loop.call_soon(self._call_lost, exc)

    def abort(self) -> None:
        self._fail(None)

    def _fail(self, exc: BaseException | None) -> None:
        self._out.clear()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        if not self._closing:
            self._closing = True
            self.pause_reading()
        # also when closing: a close() waiting to send its bytes ends here (no second
        # loss: _call_lost runs once)
        self._loop.call_soon(self._call_lost, exc)

    def _call_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._sock.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "peername":
            try:
                return self._sock.getpeername()
            except OSError:
                return default
        return default


async def open_timed(loop: asyncio.AbstractEventLoop, factory: Callable[[], P],
                     host: str, port: int) -> tuple[TimedTransport, P]:
    """Connect to ``host:port`` (each address in turn) and run a :class:`TimedTransport`
    with the protocol ``factory`` makes. Raises ``OSError`` as ``create_connection``."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, type_, proto, _name, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        protocol = factory()
        return TimedTransport(loop, sock, protocol), protocol
    raise error or OSError(f"no address for {host}")
