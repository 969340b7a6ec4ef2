"""The web UI's static files (``/`` and ``/ui/*``), read once from the package, and
the Content-Security-Policy they are served with."""

from __future__ import annotations

import logging
from importlib import resources

from aiohttp import web

log = logging.getLogger("shadowproxy.admin")

UI_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class UiHandlers:
    """The UI routes of :class:`~shadowproxy.admin.server.AdminServer` (a mixin: the
    server loads the files into ``_ui`` with :func:`_load_ui`)."""

    _ui: dict[str, bytes]

    async def ui_index(self, request: web.Request) -> web.Response:
        return self._ui_response("index.html")

    async def ui_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in UI_FILES or name == "index.html":
            raise web.HTTPNotFound()
        return self._ui_response(name)

    def _ui_response(self, name: str) -> web.Response:
        data = self._ui.get(name)
        if data is None:
            raise web.HTTPNotFound(reason=f"UI file {name} is not installed")
        return web.Response(body=data, content_type=UI_FILES[name], charset="utf-8")


def _load_ui() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    base = resources.files("shadowproxy.admin") / "ui"
    for name in UI_FILES:
        try:
            out[name] = (base / name).read_bytes()
        except (OSError, FileNotFoundError):
            log.warning("admin: UI file %s is missing; the web UI is incomplete", name)
    return out
