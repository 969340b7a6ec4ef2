"""Stopping under keep-alive load, over real sockets: every request the proxy has
begun to read is answered, and completely; a keep-alive connection is closed only
between requests, before any byte of the next one was read.

Clients of three kinds keep a proxy (in this process, an aiohttp primary behind it)
busy while ``ProxyServer.stop()`` runs: one request at a time, pipelined batches
(written whole, then read), and full duplex (written while earlier answers are
still coming). What a client can tell on its own is checked client-side; what only
the server knows (which requests it read) is checked through what reached primary.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from shadowproxy.http.request import Request
from shadowproxy.http.server import Server
from shadowproxy.proxy.server import bind
from tests.rawhttp import RawConn
from tests.support import Upstream, config, free_port, start_proxy, wait_logged

ROOT = Path(__file__).resolve().parents[2]

BIG = 1_500_000           # some answers do not fit the socket buffers
RUN = 0.6                 # seconds of load before the stop


def body_for(rid: int) -> bytes:
    size = BIG if rid % 7 == 0 else 1_500 + rid % 300
    unit = b"%d." % rid
    return (unit * (size // len(unit) + 1))[:size]


@dataclass
class Sent:
    rid: int
    batch: int                     # requests written in one piece share a batch
    outcome: str = "none"          # ok | none (no byte of an answer) | truncated | wrong
    close: bool = False            # its answer said Connection: close


@dataclass
class Client:
    kind: str
    sent: list[Sent] = field(default_factory=list)
    error: str = ""


def req(rid: int) -> bytes:
    return b"GET /r/%d HTTP/1.1\r\nHost: shadow.test\r\n\r\n" % rid


async def read_answer(reader: asyncio.StreamReader, s: Sent) -> bool:
    """One answer for ``s``; False when the connection ended (``s.outcome`` says how)."""
    got = 0
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        got = len(head)
        lines = head[:-4].split(b"\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in lines[1:])}
        s.close = headers.get(b"connection", b"").lower() == b"close"
        if b"content-length" in headers:
            body = await asyncio.wait_for(
                reader.readexactly(int(headers[b"content-length"])), 20)
        else:
            assert headers.get(b"transfer-encoding", b"").lower() == b"chunked", headers
            body = b""
            while True:
                size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 20))
                           .split(b";")[0], 16)
                got += 1
                piece = await asyncio.wait_for(reader.readexactly(size + 2), 20)
                body += piece[:-2]
                if size == 0:
                    break
        s.outcome = "ok" if lines[0].startswith(b"HTTP/1.1 200 ") and \
            body == body_for(s.rid) else "wrong"
        return True
    except asyncio.IncompleteReadError as exc:
        s.outcome = "truncated" if got or exc.partial else "none"
    except (ConnectionError, OSError):
        s.outcome = "truncated" if got else "none"
    return False


async def one_at_a_time(port: int, ids: list[int], c: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            s = Sent(ids.pop(), len(c.sent))
            c.sent.append(s)
            writer.write(req(s.rid))
            if not await read_answer(reader, s) or s.close:
                return
    finally:
        writer.close()


async def pipelined(port: int, ids: list[int], c: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        batch = 0
        while True:
            batch += 1
            now = [Sent(ids.pop(), batch) for _ in range(4)]
            c.sent += now
            writer.write(b"".join(req(s.rid) for s in now))
            for s in now:
                if not await read_answer(reader, s) or s.close:
                    return
    finally:
        writer.close()


async def duplex(port: int, ids: list[int], c: Client) -> None:
    """Writes a request every few ms (up to 6 unanswered) while reading answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    queue: asyncio.Queue[Sent] = asyncio.Queue()
    room = asyncio.Semaphore(6)
    ended = asyncio.Event()

    async def write() -> None:
        while not ended.is_set():
            await room.acquire()
            if ended.is_set():
                return
            s = Sent(ids.pop(), len(c.sent))
            c.sent.append(s)
            try:
                writer.write(req(s.rid))
                await writer.drain()
            except (ConnectionError, OSError):
                return
            queue.put_nowait(s)
            await asyncio.sleep(random.uniform(0.0, 0.004))

    writing = asyncio.create_task(write())
    try:
        while True:
            s = await queue.get()
            if not await read_answer(reader, s) or s.close:
                return
            room.release()
    finally:
        ended.set()
        room.release()
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        writer.close()


def primary(seen: set[int]) -> web.Application:
    """Answers /r/{id} with body_for(id) after 0-8 ms; ``seen``: the ids it was asked."""
    async def handle(request: web.Request) -> web.Response:
        rid = int(request.match_info["rid"])
        seen.add(rid)
        await asyncio.sleep(rid % 5 * 0.002)
        return web.Response(body=body_for(rid), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/r/{rid}", handle)
    return app


async def load_then_stop(port: int, seen: set[int], stop: Callable[[], Awaitable[object]],
                         run: float = RUN) -> None:
    """Keep-alive clients of the three kinds on ``port`` for ``run`` seconds, then
    ``stop()`` while they go on; asserts what the proxy must have done."""
    ids = list(range(1_000_000, 0, -1))
    clients: list[Client] = []

    async def one(kind: str) -> None:
        c = Client(kind)
        clients.append(c)
        fn = {"one": one_at_a_time, "pipelined": pipelined, "duplex": duplex}[kind]
        try:
            await fn(port, ids, c)
        except (ConnectionError, OSError) as exc:
            c.error = repr(exc)

    tasks = [asyncio.create_task(one(kind)) for kind in
             ["one"] * 24 + ["pipelined"] * 12 + ["duplex"] * 12]
    try:
        await asyncio.sleep(run)
        answered_before = sum(s.outcome == "ok" for c in clients for s in c.sent)
        await asyncio.wait_for(stop(), 30)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for t in tasks:
            t.cancel()

    sent = [s for c in clients for s in c.sent]
    ok = [s for s in sent if s.outcome == "ok"]
    assert answered_before > 100, answered_before          # the stop came under load
    assert len(ok) > answered_before                       # and answers went on after it
    assert not [c.error for c in clients if c.error], "every client connected in time"
    problems: dict[str, list[Any]] = {
        # no answer is cut short, none is wrong
        "truncated": [s.rid for s in sent if s.outcome == "truncated"],
        "wrong": [s.rid for s in sent if s.outcome == "wrong"],
        # every request the proxy read (it reached primary) was answered
        "read, not answered": [s.rid for s in sent if s.rid in seen and s.outcome != "ok"],
        # a batch written in one piece was read whole or not at all: answered so
        "batch answered in part": [
            sorted((s.rid, s.outcome) for s in c.sent if s.batch == b)
            for c in clients if c.kind == "pipelined"
            for b in {s.batch for s in c.sent}
            if len({s.outcome for s in c.sent if s.batch == b}) > 1],
        # answers in order: a connection ends after an answer (the last says
        # Connection: close, unless it was closed between requests), never mid-way
        "answers out of order": [c.kind for c in clients if [s.outcome for s in c.sent]
                                 != sorted((s.outcome for s in c.sent),
                                           key=lambda o: o != "ok")],
    }
    bad = {k: v for k, v in problems.items() if v}
    assert not bad, f"{len(sent)} requests, {len(ok)} answered: {bad}"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stop_under_keep_alive_load_answers_every_request_it_read(loop: str) -> None:
    """A proxy in this process (uvloop: the workers' loop)."""
    async def main() -> None:
        seen: set[int] = set()
        up = await Upstream(primary(seen)).start()
        try:
            proxy = await start_proxy(config(up.url, timeouts={"shutdown": "5s"}))
            await load_then_stop(proxy.port, seen, proxy.stop)
        finally:
            await up.stop()

    new_loop = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


async def test_sigterm_under_keep_alive_load_answers_every_request_it_read(tmp_path: Path
                                                                          ) -> None:
    """The real `shadowproxy run` (two uvloop workers) stopped by SIGTERM."""
    seen: set[int] = set()
    up = await Upstream(primary(seen)).start()
    listen, admin = free_port(), free_port()
    cfg, log = tmp_path / "c.yaml", tmp_path / "log"
    cfg.write_text(f"""\
listen: 127.0.0.1:{listen}
workers: 2
admin: {{listen: 127.0.0.1:{admin}}}
upstreams: {{primary: {up.url}}}
timeouts: {{shutdown: 5s}}
store: {{url: "sqlite:///{tmp_path / 'r.db'}"}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "shadowproxy", "run", "-c", str(cfg)],
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    loop = asyncio.get_running_loop()

    async def stop() -> int:
        proc.send_signal(signal.SIGTERM)
        return await loop.run_in_executor(None, proc.wait, 30)

    try:
        await wait_logged(proc, log)
        await load_then_stop(listen, seen, stop, run=1.0)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await up.stop()


# ------------------------------------------------------------------ one case at a time


@asynccontextmanager
async def serving(handler: Callable[[Request], Awaitable[None]]
                  ) -> AsyncIterator[tuple[Server, int]]:
    sock = bind("127.0.0.1:0")
    server = Server(handler)
    await server.start(sock)
    try:
        yield server, sock.getsockname()[1]
    finally:
        if not server.stopping:
            await server.shutdown(1.0)


def answer(r: Request, body: bytes) -> None:
    n = str(len(body))
    r.respond(200, "OK", [("Content-Length", n)], body, end=True, length=n)


async def test_a_request_already_in_the_socket_is_answered_not_closed_idle() -> None:
    """The client sends its next request as the server stops: its bytes are in the
    socket, unread, when the server looks for connections between requests."""
    async def hello(r: Request) -> None:
        answer(r, b"hello " + r.target.encode())

    async with serving(hello) as (server, port):
        conn = await RawConn.open(port)
        await conn.send(req(1))
        first = await conn.read_response()
        assert first.status == 200 and first.get("Connection") is None
        conn.writer.write(req(2))           # written now, not read before the stop below
        await server.shutdown(2.0)
        second = await conn.read_response()
        assert (second.status, second.body) == (200, b"hello /r/2")
        assert second.get("Connection") == b"close"
        assert await conn.at_eof()
        conn.close()


async def test_answers_not_read_yet_survive_a_request_sent_after_the_close() -> None:
    """Both requests answered, the connection is between requests when the server
    stops; the client has not read the answers yet and sends more requests. The close
    must not turn into a reset: the client's next write would fail, and with it (an
    asyncio stream, as many clients) the answers it had not read yet."""
    async def hello(r: Request) -> None:
        answer(r, b"hello " + r.target.encode())

    async with serving(hello) as (server, port):
        conn = await RawConn.open(port)
        await conn.send(req(1) + req(2))
        async with asyncio.timeout(5):                # both answers here, unread
            while conn.reader._buffer.count(b"hello /r/") < 2:
                await asyncio.sleep(0.01)
        stopping = asyncio.create_task(server.shutdown(3.0))
        await asyncio.sleep(0.05)                     # closed between requests
        conn.writer.write(req(3))                     # never read: after the close
        await asyncio.sleep(0.1)
        conn.writer.write(req(4))      # after a reset this write fails, and so the read
        await asyncio.sleep(0.1)
        got = [await conn.read_response() for _ in range(2)]
        assert [(r.status, r.body) for r in got] == [(200, b"hello /r/1"),
                                                     (200, b"hello /r/2")]
        assert await conn.at_eof()
        conn.close()
        await asyncio.wait_for(stopping, 5)


async def test_pipelined_requests_read_before_the_stop_are_answered() -> None:
    started = asyncio.Event()

    async def handler(r: Request) -> None:
        if r.target == "/r/1":
            started.set()
            await asyncio.sleep(0.2)
        answer(r, r.target.encode())

    async with serving(handler) as (server, port):
        conn = await RawConn.open(port)
        await conn.send(req(1) + req(2) + req(3))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.create_task(server.shutdown(3.0))
        got = [await conn.read_response() for _ in range(3)]
        assert [(r.status, r.body) for r in got] == [(200, b"/r/1"), (200, b"/r/2"),
                                                     (200, b"/r/3")]
        # Connection: close on the last only: nothing after it was read
        assert [r.get("Connection") for r in got] == [None, None, b"close"]
        assert await conn.at_eof()
        conn.close()
        await asyncio.wait_for(stopping, 5)


async def test_a_head_begun_before_the_stop_is_answered_when_it_completes() -> None:
    async def hello(r: Request) -> None:
        answer(r, b"hello")

    async with serving(hello) as (server, port):
        idle = await RawConn.open(port)
        conn = await RawConn.open(port)
        await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.shutdown(3.0))
        assert await idle.at_eof()               # nothing read: closed at once
        await asyncio.sleep(0.1)
        await conn.send(b"\r\n")
        resp = await conn.read_response()
        assert (resp.status, resp.body, resp.get("Connection")) == (200, b"hello", b"close")
        assert await conn.at_eof()
        for c in (idle, conn):
            c.close()
        await asyncio.wait_for(stopping, 5)


@pytest.mark.parametrize("why", ["stop", "client-close"])
async def test_the_last_answer_is_not_cut_by_bytes_left_unread(why: str) -> None:
    """The connection closes after an answer while more bytes from the client wait
    unread (the rest of a pipeline, a body never read): a plain close would send RST
    and the client, reading late, would lose the end of the answer."""
    big = bytes(range(256)) * 32_768          # 8 MB: more than the socket buffers hold
    started = asyncio.Event()

    async def handler(r: Request) -> None:
        started.set()
        await asyncio.sleep(0.1)
        answer(r, big)

    async with serving(handler) as (server, port):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32_768)    # a slow reader's
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        conn = RawConn(*await asyncio.open_connection(sock=sock, limit=1 << 20))
        head = b"GET / HTTP/1.1\r\nHost: x\r\n" + (
            b"Connection: close\r\n" if why == "client-close" else b"") + b"\r\n"
        await conn.send(head)
        await asyncio.wait_for(started.wait(), 5)
        if why == "stop":
            stopping = asyncio.create_task(server.shutdown(5.0))
            await asyncio.sleep(0)
        status, headers, _ = await conn.read_head()   # the server has done with it
        assert status == b"HTTP/1.1 200 OK" and (b"Connection", b"close") in headers
        await conn.send(req(2) * 200)             # never read: after the last request
        await asyncio.sleep(0.5)                  # the client reads the rest late
        body = await asyncio.wait_for(conn.reader.readexactly(len(big)), 10)
        assert body == big
        assert await conn.at_eof()
        conn.close()
        if why == "stop":
            await asyncio.wait_for(stopping, 5)


async def test_bytes_after_the_last_answer_are_dropped_unparsed() -> None:
    """Answered before its (chunked) body was read, the connection closes: what the
    client sends after is read only to be dropped, never parsed (a malformed chunk
    there is no malformed request)."""
    async def early(r: Request) -> None:
        answer(r, b"early")

    async with serving(early) as (server, port):
        conn = await RawConn.open(port)
        await conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nabcde\r\n")
        resp = await conn.read_response()
        assert (resp.status, resp.body, resp.get("Connection")) == (200, b"early", b"close")
        await conn.send(b"zz not a chunk\r\n" * 100)
        assert await conn.at_eof()
        conn.close()
        assert server.bad_requests == 0
