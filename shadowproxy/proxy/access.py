"""The access log (``log.access: true``).

One INFO line per request on the ``shadowproxy.access`` logger once its answer is
done: client address, method, target (its path and query as the store keeps them:
origin form, sensitive query values masked and the request headers' secrets masked
where they are echoed, with the run's key so the masks match the store's), HTTP
version, status (``-`` when none was sent: the client went away first) and the time
from the head's arrival to the answer's end. Headers and bodies are never logged.
Off by default, and then the server's handler is not wrapped at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter

from ..http.request import Request
from ..redact import Redactor
from .handler import origin_form

log = logging.getLogger("shadowproxy.access")


class AccessLog:
    """Wraps the request handler with a line per request."""

    __slots__ = ("handler", "redactor")

    def __init__(self, handler: Callable[[Request], Awaitable[None]], redactor: Redactor
                 ) -> None:
        self.handler = handler
        self.redactor = redactor

    async def __call__(self, request: Request) -> None:
        t0 = perf_counter()
        gone = False    # the client went away (or the drain ended it): no answer
        try:
            await self.handler(request)
        except (asyncio.CancelledError, ConnectionError):
            gone = True
            raise
        finally:
            target = origin_form(request.target)
            if target is None:
                target = "*" if request.target == "*" else "(not a path)"
            elif target != "*":
                target = self.redactor.redact_target(target, request.headers)
            major, minor = request.version
            log.info('%s "%s %s HTTP/%d.%d" %s %.1fms', request.remote, request.method, target,
                     major, minor,
                     # a handler that failed or left no answer: the server answers 500
                     request.status or ("-" if gone else 500),
                     1000 * (perf_counter() - t0))
