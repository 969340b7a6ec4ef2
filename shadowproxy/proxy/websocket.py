"""WebSocket upgrades: passed through to primary in both directions, never mirrored."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import aiohttp
from aiohttp import WSMsgType, hdrs, web
from multidict import CIMultiDict
from yarl import URL

from ..http.headers import end_to_end
from ..stats import Stats

# The handshake headers aiohttp negotiates itself on each side.
_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                        "sec-websocket-protocol", "sec-websocket-accept", "content-length"})


REFUSAL_BODY = 64 * 1024      # bytes of primary's refusal relayed to the client
# set while proxy_websocket's handshake is under way (the session serves nothing else
# today; the flag keeps keep_refusal from touching any other request)
_HANDSHAKING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "shadowproxy_ws_handshaking", default=False)


# what aiohttp adds to any answer of its own accord (a default Content-Type for a body)
_OWN = (hdrs.SERVER, hdrs.DATE, hdrs.CONTENT_TYPE)


def _drop_own(headers: CIMultiDict[str], sent: set[str]) -> None:
    """Take out what aiohttp added of :data:`_OWN` (``sent``: primary's names)."""
    for name in _OWN:
        if name.lower() not in sent:
            headers.popall(name, None)


class _OnlySent:
    """A response whose headers are primary's: aiohttp's own (:data:`_OWN`) are taken
    out unless primary sent them too. ``sent``: the names primary sent (lower-cased)."""

    sent: set[str]
    _headers: Any

    async def _prepare_headers(self) -> None:
        # a mixin: the next class in the response's MRO is aiohttp's
        await super()._prepare_headers()  # type: ignore[misc]
        _drop_own(self._headers, self.sent)


class _Relayed(_OnlySent, web.Response):
    """Primary's refusal as primary sent it: aiohttp adds the framing and Connection
    headers, nothing else."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent = set()


class _Upgraded(_OnlySent, web.WebSocketResponse):
    """The client's 101: the handshake aiohttp computes, and primary's other headers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent = set()


class Refused(Exception):
    """Primary answered a WebSocket handshake with something else than 101."""

    def __init__(self, status: int, reason: str, raw_headers: list[tuple[bytes, bytes]],
                 body: bytes) -> None:
        super().__init__(f"primary answered the handshake with {status}")
        self.status, self.reason, self.raw_headers, self.body = status, reason, raw_headers, body


async def keep_refusal(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
                       ) -> aiohttp.ClientResponse:
    """A client middleware of the proxy's session: when primary answers a WebSocket
    handshake (one :func:`proxy_websocket` sends) with anything but 101, that answer
    (its body up to :data:`REFUSAL_BODY`) is raised as :class:`Refused`, to be relayed
    as it is: aiohttp's ``ws_connect`` would drop the body and follow a redirect."""
    resp = await handler(req)
    if resp.status == 101 or not _HANDSHAKING.get():
        return resp
    body = b""
    try:
        while len(body) < REFUSAL_BODY:     # read() gives what has arrived so far
            more = await resp.content.read(REFUSAL_BODY - len(body))
            if not more:
                break
            body += more
    except (aiohttp.ClientError, TimeoutError):
        pass
    finally:
        resp.release()
    raise Refused(resp.status, resp.reason or "", list(resp.raw_headers), body)


# Close codes that must never be sent on the wire (RFC 6455 §7.4.1), mapped to
# what the proxy tells the other side instead.
_NO_CODE = frozenset({0, 1005})           # peer closed without a status code
_ABNORMAL = frozenset({1006, 1015})       # connection lost / TLS failure


def _wire_code(code: int | None) -> int:
    if code is None or code in _NO_CODE:
        return aiohttp.WSCloseCode.OK
    if code in _ABNORMAL:
        return aiohttp.WSCloseCode.GOING_AWAY
    return code


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    """Copy messages from ``src`` to ``dst``; on a close from ``src`` close ``dst`` with
    the same code and reason, then echo it back to ``src``.

    Both sides run with ``autoclose=False`` so the close handshake is relayed, not
    answered by the proxy on its own with a different code. A ``CLOSING`` message
    means the other pump is closing ``src``: nothing to do here.
    """
    while True:
        msg = await src.receive()
        t = msg.type
        if t is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif t is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif t is WSMsgType.PING:
            await dst.ping(msg.data)
        elif t is WSMsgType.PONG:
            await dst.pong(msg.data)
        else:
            break
    if t is WSMsgType.CLOSING:
        return
    if t is WSMsgType.CLOSE:
        code = _wire_code(msg.data)
        reason = (msg.extra or "").encode("utf-8")
    else:   # CLOSED / ERROR: the peer vanished
        code, reason = _wire_code(src.close_code or 1006), b""
    await dst.close(code=code, message=reason)
    await src.close(code=code, message=reason)


async def proxy_websocket(session: aiohttp.ClientSession, primary: str, stats: Stats,
                          request: web.BaseRequest, target: str,
                          headers: list[tuple[str, str]]) -> web.StreamResponse:
    """Upgrade ``request`` to primary (``primary``: its origin) through ``session``."""
    protocols = [p.strip(" \t") for p in
                 request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip(" \t")]
    # Host is in ``headers`` only with preserve_host (see Proxy._forwarded)
    fwd = CIMultiDict((k, v) for k, v in headers if k.lower() not in _HANDSHAKE)
    token = _HANDSHAKING.set(True)
    try:
        upstream = await session.ws_connect(
            URL(primary + target, encoded=True), headers=fwd, protocols=protocols,
            autoping=False, autoclose=False, max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
        )
    except Refused as ref:
        # primary declined the upgrade (401, a redirect, a plain page): its answer is
        # the client's, as it would be without the proxy
        out = _Relayed(status=ref.status, reason=ref.reason or None, body=ref.body)
        for k, v in end_to_end(ref.raw_headers, frozenset({"content-length"})):
            out.headers.add(k, v)
            out.sent.add(k.lower())
        return out
    except aiohttp.WSServerHandshakeError as exc:
        # a 101 without a valid handshake: primary's failure
        stats.add("primary_error", "websocket")
        return web.Response(status=502, text=f"bad websocket handshake from primary: "
                                             f"{exc.message}\n")
    except (TimeoutError, aiohttp.ClientError):
        stats.add("primary_error", "websocket")
        return web.Response(status=502, text="primary unavailable\n")
    finally:
        _HANDSHAKING.reset(token)
    ws = _Upgraded(protocols=(upstream.protocol,) if upstream.protocol else (),
                   autoping=False, autoclose=False, max_msg_size=0)
    # primary's end-to-end handshake headers (Set-Cookie, ...) reach the client
    handshake = getattr(upstream, "_response", None)
    if handshake is not None:
        for k, v in end_to_end(handshake.raw_headers, _HANDSHAKE):
            ws.headers.add(k, v)
            ws.sent.add(k.lower())
    tasks: list[asyncio.Task[None]] = []
    try:
        await ws.prepare(request)
        tasks = [asyncio.create_task(_pump(ws, upstream)),
                 asyncio.create_task(_pump(upstream, ws))]
        # each pump ends when its side closes (the closing one ends the other); a
        # failing pump ends both, and the finally closes what is still open
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if not upstream.closed:
            await upstream.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        if ws.prepared:
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
    return ws
