"""An upstream in a process of its own that answers every request head after a fixed
delay, from a timer: a few µs of CPU a request, so its latency is the delay and not
its own share of a busy machine. asyncio's own loop (uvloop's clock is read once a loop
turn, which would time a bunch of requests from the turn's start). An upstream short
of CPU itself (an aiohttp app in the test's process, whose loop also runs the clients)
would serve the shadows, which arrive in bunches, differently from primary's requests,
one at a time: a real difference of the traffic each side got, not of what is tested.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.support import free_port

BODY = b'{"id": 7, "name": "widget"}'

SERVER = """
import asyncio, sys
BODY = sys.argv[3].encode()
DELAY = float(sys.argv[2])
ANSWER = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
          b"Content-Length: %d\\r\\n\\r\\n%b" % (len(BODY), BODY))
class Delayed(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while (i := self.buf.find(b"\\r\\n\\r\\n")) >= 0:
            self.buf = self.buf[i + 4:]
            asyncio.get_running_loop().call_later(DELAY, self.answer)
    def answer(self):
        if not self.t.is_closing():
            self.t.write(ANSWER)
async def main():
    server = await asyncio.get_running_loop().create_server(
        Delayed, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""


class DelayedUpstream:
    """The upstream on a free loopback port, answering ``body`` after ``delay`` s."""

    def __init__(self, delay: float, body: bytes = BODY) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(self.port),
                                      str(delay), body.decode()])
        for _ in range(200):
            assert self.proc.poll() is None
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("the upstream did not listen")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
