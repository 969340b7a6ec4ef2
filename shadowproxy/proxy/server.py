"""Lifecycle of one proxy process: listen, proxy, mirror, hand exchanges on, stop.

:class:`ProxyServer` is the proxy stage of one process: the HTTP/1.1 server
(:mod:`~shadowproxy.http.server`; WebSocket upgrades go on to aiohttp's), the
:class:`~shadowproxy.proxy.handler.Proxy` handler and its mirroring half: in a proxy worker
the :class:`~shadowproxy.proxy.tee.Tee`, which hands each shadow to the shadow processes;
in one process (tests, embedding) a :class:`~shadowproxy.proxy.mirror.Mirror`, whose
finished exchanges go to the ``sink`` (the comparator stage's bounded queue).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..config import Config, split_address
from ..http.grammar import MAX_HEADERS
from ..http.request import MAX_LINE as REQUEST_MAX_LINE
from ..http.request import Request
from ..http.server import Server
from ..models import Exchange
from ..record.hook import Recorder
from ..record.writer import RecordWriter
from ..stats import Stats
from .handler import Proxy
from .mirror import Mirror
from .receiver import Receiver
from .routes import Router
from .tee import Tee

log = logging.getLogger("shadowproxy.server")

# request head limits; a request beyond them gets a 4xx and the proxy goes on
MAX_LINE = MAX_FIELD = REQUEST_MAX_LINE


def bind(address: str, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port``; with ``reuse_port`` several
    processes bind the same port and the kernel spreads connections among them."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


class ProxyServer:
    def __init__(self, cfg: Config, stats: Stats, sink: Callable[[Exchange], bool] | None,
                 *, redact_key: bytes | None = None, tee: Tee | None = None) -> None:
        """``tee``: a worker's hand-off to the shadow stage; without it the mirror runs
        in this process and finished exchanges go to ``sink``."""
        self.cfg = cfg
        self.redact_key = redact_key    # the run's, for what this process masks itself
        self.stats = stats
        self.router = Router(cfg.routes, cfg.endpoints.max)
        if tee is not None:
            self.mirror: Mirror | Tee = tee
        else:
            assert sink is not None
            self.mirror = Mirror(cfg, stats, sink)
        proxy_cls = Receiver if cfg.mode == "receiver" else Proxy
        self.proxy = proxy_cls(cfg, stats, self.router, self.mirror)
        self.record_writer: RecordWriter | None = None
        if cfg.record is not None:
            if tee is not None:     # a worker: the shadow processes write
                send = tee.record
            else:                   # one process: written here, by the writer's thread
                from ..redact import Redactor
                redactor = Redactor(cfg.redact, redact_key) if redact_key \
                    else Redactor.from_config(cfg.redact)
                self.record_writer = RecordWriter(cfg.record, redactor, cfg.instance, stats)
                send = self.record_writer.send
            self.proxy.recorder = Recorder(cfg.record, stats, send)
        self._server: Server | None = None
        self._upgrades: web.Server | None = None
        self.sock: socket.socket | None = None

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    async def start(self, sock: socket.socket | None = None) -> None:
        self.sock = sock if sock is not None else bind(self.cfg.listen)
        await self.proxy.start()
        await self.mirror.start()
        if self.record_writer is not None:
            self.record_writer.start()
        # WebSocket upgrades are handed, connection and all, to aiohttp's server
        self._upgrades = web.Server(self.proxy.handle_upgrade, handler_cancellation=True,
                                    auto_decompress=False, max_line_size=MAX_LINE,
                                    max_field_size=MAX_FIELD, access_log=None,
                                    max_headers=MAX_HEADERS)
        self._server = Server(self._handler(self.cfg), on_upgrade=self._upgrades,
                              on_malformed=lambda: self.stats.add("not_eligible", "malformed"))
        await self._server.start(self.sock)
        log.info("proxying %s → %s (candidate %s)", self.cfg.listen, self.cfg.upstreams.primary,
                 self.cfg.upstreams.candidate or "none")

    def _handler(self, cfg: Config) -> Callable[[Request], Awaitable[None]]:
        """The proxy's handler, wrapped by the access log when ``log.access`` is on."""
        if isinstance(self.proxy, Receiver):
            return self.proxy.receive       # the target of a mirror: no access log of ours
        if not cfg.log.access:
            return self.proxy.handle
        from ..redact import Redactor
        from .access import AccessLog
        # the run's key as it is (a reloaded redact.key_env does not change a run's key)
        redactor = Redactor(cfg.redact, self.redact_key) if self.redact_key \
            else Redactor.from_config(cfg.redact)
        return AccessLog(self.proxy.handle, redactor)

    def reload(self, cfg: Config) -> None:
        """Apply a new config to routes, sampling and mirroring without dropping connections."""
        self.cfg = cfg
        self.router = Router(cfg.routes, cfg.endpoints.max)
        if (cfg.mode == "receiver") != isinstance(self.proxy, Receiver):
            log.warning("mode: a change takes effect on restart only")
        self.proxy.configure(cfg, self.router)
        self.mirror.configure(cfg)
        if self.proxy.recorder is not None and cfg.record is not None:
            self.proxy.recorder.configure(cfg.record)
        elif (self.proxy.recorder is None) != (cfg.record is None):
            log.warning("record: added or removed takes effect on restart only")
        if self._server is not None:
            self._server.handler = self._handler(cfg)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, drain the mirror up to the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.timeouts.shutdown
        if self._server is not None:
            # closes the listener, waits for in-flight requests
            await self._server.shutdown(self.cfg.timeouts.shutdown)
        if self._upgrades is not None:
            await self._upgrades.shutdown(max(0.0, deadline - loop.time()))
        await self.mirror.drain(deadline)
        await self.proxy.close()
        if self.record_writer is not None:
            await self.record_writer.close(max(1.0, deadline - loop.time()))
