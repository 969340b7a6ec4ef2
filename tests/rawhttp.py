"""Raw-socket HTTP/1.x helpers for tests: exact bytes on the wire, no client library.

``RawConn`` talks to a server over a plain TCP connection and parses responses
by hand so a test can assert the status line, every header in order and the
body bytes. ``RawServer`` is a loopback TCP server driven by a coroutine, for
upstreams that misbehave in ways a real HTTP server will not (garbage, resets,
exact header bytes) and for "elsewhere" servers that must receive nothing.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
    "trailer", "proxy-authenticate", "proxy-authorization",
})


class Incomplete(Exception):
    """The connection ended before a complete response was read."""


@dataclass
class RawResponse:
    status_line: bytes                       # without CRLF
    headers: list[tuple[bytes, bytes]]       # in wire order, as sent
    body: bytes                              # de-chunked
    raw: bytes                               # every byte read for this response
    chunks: list[bytes] = field(default_factory=list)   # chunk payloads when chunked
    interim: list[bytes] = field(default_factory=list)  # 1xx status lines seen before

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ", 2)[1])

    @property
    def version(self) -> bytes:
        return self.status_line.split(b" ", 1)[0]

    def get(self, name: str) -> bytes | None:
        n = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None

    def getall(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == n]

    def end_to_end(self) -> list[tuple[bytes, bytes]]:
        """Headers without hop-by-hop ones (and those named in Connection)."""
        named = set()
        for k, v in self.headers:
            if k.lower() in (b"connection", b"proxy-connection"):
                named.update(t.strip().lower() for t in v.split(b",") if t.strip())
        return [(k, v) for k, v in self.headers
                if k.decode("latin-1").lower() not in HOP_BY_HOP and k.lower() not in named]

    def fidelity(self) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        """What must be identical through the proxy: status line, end-to-end headers
        in order, body bytes."""
        return self.status_line, self.end_to_end(), self.body


class RawConn:
    """One client TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawConn:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def __aenter__(self) -> RawConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0), like a client that vanishes."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_head(self, timeout: float = 5.0
                        ) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
        """Status line, headers, and the raw bytes of the head."""
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw[:-4].split(b"\r\n")
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.append((k, v.strip(b" \t")))
        return lines[0], headers, raw

    async def read_response(self, method: str = "GET", timeout: float = 5.0,
                            skip_interim: bool = True) -> RawResponse:
        interim: list[bytes] = []
        raw_all = b""
        while True:
            try:
                status_line, headers, raw = await self.read_head(timeout)
            except asyncio.IncompleteReadError as exc:
                raise Incomplete(f"connection closed in the head: {exc.partial!r}") from None
            raw_all += raw
            status = int(status_line.split(b" ", 2)[1])
            if 100 <= status < 200 and status != 101 and skip_interim:
                interim.append(status_line)
                continue
            break
        resp = RawResponse(status_line, headers, b"", b"", interim=interim)
        te = b", ".join(resp.getall("Transfer-Encoding")).lower()
        cl = resp.get("Content-Length")
        body = b""
        try:
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                pass
            elif b"chunked" in te:
                while True:
                    size_line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)
                    raw_all += size_line
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        # trailers (none expected) then the blank line
                        while True:
                            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"),
                                                          timeout)
                            raw_all += line
                            if line == b"\r\n":
                                break
                        break
                    data = await asyncio.wait_for(self.reader.readexactly(size + 2), timeout)
                    raw_all += data
                    resp.chunks.append(data[:-2])
                    body += data[:-2]
            elif cl is not None:
                body = await asyncio.wait_for(self.reader.readexactly(int(cl)), timeout)
                raw_all += body
            else:
                body = await asyncio.wait_for(self.reader.read(), timeout)
                raw_all += body
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            partial = getattr(exc, "partial", b"")
            raise Incomplete(f"connection ended in the body after {len(body) + len(partial)} "
                             "bytes") from None
        resp.body = body
        resp.raw = raw_all
        return resp

    async def at_eof(self, timeout: float = 2.0) -> bool:
        """True when the peer closed (or reset) the connection within ``timeout``."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except (ConnectionError, OSError):
            return True
        except TimeoutError:
            return False
        return data == b""


async def exchange(port: int, data: bytes, method: str = "GET",
                   timeout: float = 5.0) -> RawResponse:
    """Send ``data`` on a new connection and read one response."""
    async with await RawConn.open(port) as conn:
        await conn.send(data)
        return await conn.read_response(method, timeout)


def request(method: str, target: str, headers: list[tuple[str, str]] | None = None,
            body: bytes = b"", version: str = "HTTP/1.1", host: str = "example.test"
            ) -> bytes:
    """A request as bytes; adds Host (unless given) and Content-Length when there is a body."""
    hs = list(headers or [])
    names = {k.lower() for k, _ in hs}
    if "host" not in names and host:
        hs.insert(0, ("Host", host))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + body


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


class RawServer:
    """A loopback TCP server; ``handler(reader, writer, log)`` serves each connection.

    ``connections`` counts accepted connections; handlers may append what they
    read to ``log`` (shared across connections).
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.connections = 0
        self.log: list[bytes] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            if self.handler is None:
                # record everything, answer nothing until the peer goes away
                while data := await reader.read(65536):
                    self.log.append(data)
            else:
                await self.handler(reader, writer, self.log)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass   # stop(): asyncio's start_server would log a cancelled handler
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one request head and its Content-Length body; (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
        elif k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    body = b""
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += (await reader.readexactly(size + 2))[:-2]
    elif length:
        body = await reader.readexactly(length)
    return head, body


def canned(response: bytes, *, keep_open: bool = False) -> Handler:
    """A handler answering every request on the connection with ``response`` bytes."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      log: list[bytes]) -> None:
        while True:
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            log.append(head + body)
            writer.write(response)
            await writer.drain()
            if not keep_open:
                return
    return handler
