"""Helpers for tests: real loopback servers and a real proxy, no mocks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import yaml
from aiohttp import web

from shadowproxy.config import Config, loads
from shadowproxy.models import Exchange
from shadowproxy.proxy.server import ProxyServer
from shadowproxy.stats import Stats


class Upstream:
    """An aiohttp app on an ephemeral loopback port."""

    def __init__(self, app: web.Application, **runner_kw: Any) -> None:
        self.app = app
        self.runner = web.AppRunner(app, access_log=None, **runner_kw)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Upstream:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(primary: str, candidate: str | None = None, secondary: str | None = None,
           **extra: Any) -> Config:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "upstreams": {"primary": primary},
        "store": {"url": "sqlite:///:memory:"},
    }
    if candidate:
        doc["upstreams"]["candidate"] = candidate
    if secondary:
        doc["upstreams"]["secondary"] = secondary
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k] = {**doc[k], **v}
        else:
            doc[k] = v
    return loads(yaml.safe_dump(doc), file="<test>")


class Collector:
    """A sink that keeps exchanges in a list (in place of the comparator)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.items: list[Exchange] = []
        self.limit = limit
        self.event = asyncio.Event()

    def __call__(self, ex: Exchange) -> bool:
        if len(self.items) >= self.limit:
            return False
        self.items.append(ex)
        self.event.set()
        return True

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Exchange]:
        async def _wait() -> None:
            while len(self.items) < n:
                self.event.clear()
                await self.event.wait()
        await asyncio.wait_for(_wait(), timeout)
        return self.items


async def start_proxy(cfg: Config, sink: Callable[[Exchange], bool] | None = None,
                      stats: Stats | None = None) -> ProxyServer:
    server = ProxyServer(cfg, stats or Stats(), sink or Collector())
    await server.start()
    return server


async def wait_logged(proc: Any, log: Any, text: str = "ready: 2 workers",
                      tries: int = 400) -> None:
    """Until ``text`` appears in the file ``log`` of the running ``proc`` (a Popen);
    fails at once, with the log, if the process ends first."""
    for _ in range(tries):
        assert proc.poll() is None, log.read_text()
        if text in log.read_text():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {text!r}: " + log.read_text())
