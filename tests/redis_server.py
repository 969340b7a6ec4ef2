"""A throwaway redis-server from Debian's package (``redis-server``), started on
loopback by the tests (the Redis counterpart of :mod:`tests.pg_server`).

Each server gets a fresh directory (its RDB and AOF files live there: a test can look
inside them), a free port on 127.0.0.1, no Unix socket, and append-only persistence on
(``appendfsync always``), so :meth:`RedisServer.halt` and :meth:`RedisServer.resume`
restart it with its data. ``redis`` fixture: one server per test.

When ``CI=true`` a missing server is a failure, never a silent skip.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import _free_port, require

PACKAGE = "redis-server"


class RedisServer:
    def __init__(self, root: Path) -> None:
        self.bin = require("redis-server", PACKAGE)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _launch(self, timeout: float = 15.0) -> bool:
        argv = [self.bin, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.root), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--dbfilename", "dump.rdb",
                "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.root / "redis.log")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer in {timeout}s: {self.log()}")

    def start(self) -> RedisServer:
        for _attempt in range(3):           # the free port may be taken meanwhile
            self.port = _free_port()
            if self._launch():
                return self
        raise RuntimeError(f"redis-server exited: {self.log()}")

    def halt(self, kill: bool = False) -> None:
        """Stop it, keeping its directory and port (:meth:`resume` starts it again);
        ``kill``: SIGKILL, as a crash."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def resume(self) -> None:
        for _attempt in range(50):      # the port may linger a moment
            if self._launch():
                return
            time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start again on {self.port}: {self.log()}")

    def log(self, tail: int = 2000) -> str:
        try:
            return (self.root / "redis.log").read_text(errors="replace")[-tail:]
        except OSError:
            return "(no log)"

    def files(self) -> list[Path]:
        """Its persistence files (the RDB and the AOF directory's files)."""
        return [p for p in self.root.rglob("*") if p.is_file() and p.name != "redis.log"]

    def stop(self) -> None:
        self.halt()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own for a test, on loopback (marker ``server``)."""
    root = tmp_path / "redis"
    server = RedisServer(root).start()
    try:
        yield server
    finally:
        server.stop()
