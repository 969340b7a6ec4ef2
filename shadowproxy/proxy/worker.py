"""A proxy worker process: the primary path and the tee (:mod:`shadowproxy.proxy.tee`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

from ..config import Config
from ..control.channel import ChannelClient, report_forever
from ..process import install_uvloop, name_process, settle_heap, setup_logging
from ..stats import Stats
from .server import ProxyServer, bind
from .tee import Tee

log = logging.getLogger("shadowproxy")

COUNTS_INTERVAL = 0.5    # the control process hands its counts to the store writer


def worker_entry(cfg: Config, sock: socket.socket | str, channel_path: str, index: int,
                 redact_key: bytes | None = None, shadow_paths: list[str] | None = None
                 ) -> None:
    """A proxy worker process. ``redact_key``: the run's (the control process's), so
    that what a worker masks (the access log) masks as the store does. ``shadow_paths``:
    the shadow processes' sockets."""
    name_process(f"shadowproxy-w{index}")
    setup_logging(cfg)
    install_uvloop()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides
    try:
        asyncio.run(_worker(cfg, sock, channel_path, index, redact_key, shadow_paths or []))
    except KeyboardInterrupt:  # pragma: no cover
        pass


async def _worker(cfg: Config, sock: socket.socket | str, channel_path: str, index: int,
                  redact_key: bytes | None, shadow_paths: list[str]) -> None:
    """``sock`` is the shared listening socket, or the address to bind with SO_REUSEPORT.
    The worker does the primary path and the tee: each mirrored request leaves it at
    once for a shadow process (:mod:`shadowproxy.proxy.tee`)."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    stop = asyncio.Event()
    server: ProxyServer | None = None

    def on_message(msg: tuple[Any, ...]) -> None:
        if msg[0] == "cfg" and server is not None:
            server.reload(msg[1])
        elif msg[0] == "mirror" and server is not None:
            server.mirror.enabled = bool(msg[1]) and server.mirror.candidate is not None
            if msg[2] is not None:
                server.mirror.sample = float(msg[2])

    client = ChannelClient(channel_path, on_message=on_message, on_close=stop.set)
    await client.connect()
    tee = Tee(cfg, stats, shadow_paths)
    await tee.start(wait=5.0)
    server = ProxyServer(cfg, stats, None, redact_key=redact_key, tee=tee)
    if isinstance(sock, str):
        sock = bind(sock, reuse_port=True)
    sock.setblocking(False)
    await server.start(sock)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor reloads
    settle_heap()

    def gauges() -> dict[str, float]:
        return {"tee_waiting_primary": tee.open, "tee_buffered_bytes": tee.budget.used,
                "shadow_link_buffered_bytes": tee.buffered}

    reporter = asyncio.create_task(report_forever(client, stats.take_delta,
                                                  lambda: ("g", index, gauges())))
    client.send(("ready", index), force=True)
    await stop.wait()
    client.send(("bye", index), force=True)
    await server.stop()
    reporter.cancel()
    client.send(("s", stats.take_delta()), force=True)
    await client.close()
