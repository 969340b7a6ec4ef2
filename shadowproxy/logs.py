"""Logging set-up. No per-request logging on the hot path; anything a client can
trigger at will (a malformed request) is summarised, never logged per request."""

from __future__ import annotations

import logging
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a traceback at ERROR for every malformed request it answers with
    a 4xx: a log flood anyone can cause. Turn those into at most one line a minute."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self.interval = interval
        self.count = 0
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.count += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "malformed requests answered with 4xx: %d so far (latest: %s)"
        record.args = (self.count, str(exc.message if hasattr(exc, "message") else exc)[:200])
        record.exc_info = None
        record.exc_text = None
        return True


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
