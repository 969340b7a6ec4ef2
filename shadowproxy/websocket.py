"""WebSocket upgrades: passed through to primary in both directions, never mirrored."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

if TYPE_CHECKING:
    from .proxy import Proxy

# The handshake headers aiohttp negotiates itself on each side.
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                        "sec-websocket-protocol", "sec-websocket-accept", "content-length"})


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    async for msg in src:
        if msg.type == WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == WSMsgType.PING:
            await dst.ping(msg.data)
        elif msg.type == WSMsgType.PONG:
            await dst.pong(msg.data)
        else:
            break
    await dst.close(code=src.close_code or aiohttp.WSCloseCode.OK)


async def proxy_websocket(proxy: "Proxy", request: web.BaseRequest, target: str,
                          headers: list[tuple[str, str]]) -> web.StreamResponse:
    assert proxy.session is not None
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                 if p.strip()]
    fwd = CIMultiDict((k, v) for k, v in headers
                      if k.lower() not in _HANDSHAKE and (proxy.preserve_host or
                                                          k.lower() != "host"))
    try:
        upstream = await proxy.session.ws_connect(
            URL(proxy.primary + target, encoded=True), headers=fwd, protocols=protocols,
            autoping=False, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        )
    except aiohttp.WSServerHandshakeError as exc:
        return web.Response(status=exc.status if exc.status >= 400 else 502,
                            text="websocket handshake refused by primary\n")
    except (aiohttp.ClientError, asyncio.TimeoutError):
        proxy.stats.add("primary_error", "websocket")
        return web.Response(status=502, text="primary unavailable\n")
    ws = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (),
                               autoping=False, max_msg_size=0)
    await ws.prepare(request)
    try:
        tasks = [asyncio.create_task(_pump(ws, upstream)),
                 asyncio.create_task(_pump(upstream, ws))]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await upstream.close()
        await ws.close()
    return ws
