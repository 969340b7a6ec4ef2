"""A tiny Chrome DevTools Protocol client for browser tests (aiohttp websockets only).

    async with Chromium.launch(tmp_path) as browser:
        page = await browser.new_page(width=1400, height=1000)
        await page.navigate("http://127.0.0.1:8081/")
        title = await page.evaluate("document.title")
        png = await page.screenshot()

It starts Debian's ``chromium`` headless with a throw-away profile and
``--remote-debugging-port=0``, reads the DevTools URL from stderr (or the
``DevToolsActivePort`` file in the profile), and talks to one browser websocket
with flattened target sessions. A page collects what would show in its console:
console errors/warnings (``Runtime.consoleAPICalled``), uncaught exceptions
(``Runtime.exceptionThrown``) and browser log entries such as failed loads
(``Log.entryAdded``), in :attr:`Page.console`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_WS_LINE = re.compile(r"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(Exception):
    pass


class JSError(CDPError):
    """Runtime.evaluate threw."""


class Connection:
    """One DevTools websocket: commands with ids, events fanned out to waiters."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._listeners: list[tuple[str | None, str, Any]] = []   # (session, method, callback)
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")
        self.closed = False

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "id" in data:
                    fut = self._pending.pop(data["id"], None)
                    if fut is not None and not fut.done():
                        if "error" in data:
                            fut.set_exception(CDPError(f"{data['error'].get('message')} "
                                                       f"({data['error'].get('data', '')})"))
                        else:
                            fut.set_result(data.get("result", {}))
                    continue
                method = data.get("method", "")
                session = data.get("sessionId")
                for s, m, cb in list(self._listeners):
                    if m == method and (s is None or s == session):
                        cb(data.get("params", {}))
        finally:
            self.closed = True
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(CDPError("the DevTools connection closed"))
            self._pending.clear()

    async def send(self, method: str, params: dict[str, Any] | None = None, *,
                   session: str | None = None, timeout: float = 30.0) -> Any:
        if self.closed:
            raise CDPError("the DevTools connection is closed")
        mid = next(self._ids)
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        await self.ws.send_str(json.dumps(msg))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(mid, None)

    def on(self, method: str, callback: Any, session: str | None = None) -> None:
        self._listeners.append((session, method, callback))

    def off(self, callback: Any) -> None:
        self._listeners = [x for x in self._listeners if x[2] is not callback]

    async def wait_event(self, method: str, session: str | None = None,
                         timeout: float = 30.0) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def cb(params: dict[str, Any]) -> None:
            if not fut.done():
                fut.set_result(params)

        self.on(method, cb, session)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.off(cb)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


class Page:
    """One tab, attached with a flattened session."""

    def __init__(self, conn: Connection, target_id: str, session: str) -> None:
        self.conn = conn
        self.target_id = target_id
        self.session = session
        self.console: list[dict[str, Any]] = []
        conn.on("Runtime.consoleAPICalled", self._console, session)
        conn.on("Runtime.exceptionThrown", self._exception, session)
        conn.on("Log.entryAdded", self._log, session)

    # -- what the console would show

    def _console(self, p: dict[str, Any]) -> None:
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
        self.console.append({"source": "console", "level": p.get("type"), "text": text})

    def _exception(self, p: dict[str, Any]) -> None:
        d = p.get("exceptionDetails", {})
        text = d.get("exception", {}).get("description") or d.get("text", "")
        self.console.append({"source": "exception", "level": "error", "text": text,
                             "url": d.get("url"), "line": d.get("lineNumber")})

    def _log(self, p: dict[str, Any]) -> None:
        e = p.get("entry", {})
        self.console.append({"source": e.get("source"), "level": e.get("level"),
                             "text": e.get("text", ""), "url": e.get("url")})

    def errors(self) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and error log entries so far."""
        return [c for c in self.console if c["level"] in ("error", "assert")]

    # -- commands

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   timeout: float = 30.0) -> Any:
        return await self.conn.send(method, params, session=self.session, timeout=timeout)

    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        loaded = asyncio.ensure_future(self.conn.wait_event("Page.loadEventFired", self.session,
                                                            timeout))
        try:
            res = await self.send("Page.navigate", {"url": url})
            if res.get("errorText"):
                raise CDPError(f"navigation to {url} failed: {res['errorText']}")
            await loaded
        finally:
            loaded.cancel()

    async def evaluate(self, expression: str, *, await_promise: bool = True,
                       timeout: float = 30.0) -> Any:
        res = await self.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": await_promise, "returnByValue": True,
            "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise JSError(d.get("exception", {}).get("description") or d.get("text"))
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0,
                       interval: float = 0.05) -> Any:
        """Poll a JS expression until it is truthy (in JS terms); → its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while True:
            try:
                ok, last = await self.evaluate(
                    f"(async () => {{ const v = await ({expression});"
                    " return [!!v, (v instanceof Node) ? String(v) : v]; })()")
            except JSError as exc:
                last = exc
            else:
                if ok:
                    return last
            if loop.time() > deadline:
                raise TimeoutError(f"timed out waiting for {expression!r} (last: {last!r}); "
                                   f"console: {self.console[-5:]}")
            await asyncio.sleep(interval)

    async def click(self, selector: str) -> None:
        """Click the element matching a CSS selector (a DOM click, after scrolling to it)."""
        ok = await self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " if (!el) return false; el.scrollIntoView({block: 'center'}); el.click();"
            " return true; })()")
        if not ok:
            raise CDPError(f"no element matches {selector!r}")

    async def screenshot(self, *, full_page: bool = False) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        res = await self.send("Page.captureScreenshot", params, timeout=60.0)
        return base64.b64decode(res["data"])


class Chromium:
    """A headless chromium process and its browser-level DevTools connection."""

    def __init__(self, proc: asyncio.subprocess.Process, conn: Connection,
                 session: aiohttp.ClientSession, profile: str, stderr: list[str]) -> None:
        self.proc = proc
        self.conn = conn
        self._http = session
        self.profile = profile
        self.stderr = stderr

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, workdir: Path | str | None = None, *, executable: str | None = None,
                     timeout: float = 30.0) -> AsyncIterator[Chromium]:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("chromium is not installed")
        profile = tempfile.mkdtemp(prefix="chromium-profile-",
                                   dir=str(workdir) if workdir else None)
        args = [
            exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--disable-dev-shm-usage", "--disable-features=Translate,MediaRouter",
            "--hide-scrollbars", "--mute-audio", "--window-size=1400,1000",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank",
        ]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        lines: list[str] = []
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def drain() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                lines.append(line)
                m = _WS_LINE.search(line)
                if m and not found.done():
                    found.set_result(m.group(1))

        drainer = asyncio.create_task(drain(), name="chromium-stderr")
        http = aiohttp.ClientSession()
        browser: Chromium | None = None
        try:
            ws_url = await cls._ws_url(proc, found, profile, lines, timeout)
            ws = await http.ws_connect(ws_url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(
                ws_receive=None, ws_close=5.0))
            browser = cls(proc, Connection(ws), http, profile, lines)
            yield browser
        finally:
            if browser is not None:
                await browser._shutdown()
            else:
                await _kill(proc)
            await http.close()
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drainer
            shutil.rmtree(profile, ignore_errors=True)

    @staticmethod
    async def _ws_url(proc: asyncio.subprocess.Process, found: asyncio.Future[str],
                      profile: str, lines: list[str], timeout: float) -> str:
        port_file = Path(profile) / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if found.done():
                return found.result()
            if port_file.exists():
                parts = port_file.read_text().split()
                if len(parts) >= 2:
                    return f"ws://127.0.0.1:{parts[0]}{parts[1]}"
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        tail = "\n".join(lines[-20:])
        raise CDPError(f"chromium did not open its DevTools port (exit code {proc.returncode});"
                       f" stderr:\n{tail}")

    async def new_page(self, width: int = 1400, height: int = 1000) -> Page:
        res = await self.conn.send("Target.createTarget", {"url": "about:blank"})
        target = res["targetId"]
        att = await self.conn.send("Target.attachToTarget", {"targetId": target,
                                                             "flatten": True})
        page = Page(self.conn, target, att["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return page

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await self.conn.send("Browser.close", timeout=5.0)
        with contextlib.suppress(Exception):
            await self.conn.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10.0)
        except TimeoutError:
            await _kill(self.proc)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the chromium we started and its helpers (its own process group)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 10.0)
