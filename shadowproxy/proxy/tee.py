"""The worker's half of mirroring: decide, then hand the shadow to the shadow stage.

A proxy worker does the primary path and this tee, nothing more. For a request that
is eligible and sampled, :meth:`Tee.submit` queues one ``("q", …)`` item for the
shadow process that owns the request's endpoint (a stable hash of it, so that each
endpoint's shadows keep one queue and one breaker), written at the end of the loop's
turn, and returns the future that the proxy resolves with primary's captured answer;
that answer follows as a ``("p", id, record)`` item on the same connection, within
``PRIMARY_LINGER`` (it rides in the frame of the next request's item when one comes). Sending to
the candidate and the secondary, reading their answers, handing the exchange to the
comparator: all of it happens in the shadow process (:mod:`shadowproxy.control.shadow`), at a
lower CPU priority, never in the worker.

Bounded: each link's write buffer by ``shadow.buffer`` bytes (over it the shadow is
``dropped{shadow_full}``), primary's captures by ``mirror.buffer_limit`` (the budget
the proxy's :class:`~shadowproxy.proxy.capture.Capture` draws on, given back once the record
is queued). A link that is down drops shadows as ``dropped{shadow_down}`` and is
dialled again every ``REDIAL`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import fields
from operator import attrgetter
from typing import Any

from ..config import Config
from ..control.channel import ChannelClient
from ..models import RequestRecord, ResponseRecord
from ..stats import Stats
from .capture import Budget
from .policy import Policy

log = logging.getLogger("shadowproxy.tee")

REDIAL = 0.5
PRIMARY_LINGER = 0.005   # seconds primary's captured answer may wait for company
RECORD_FIELDS = attrgetter(*(f.name for f in fields(ResponseRecord)))


class Link:
    """A worker's connection to one shadow process, dialled again when it breaks."""

    def __init__(self, path: str, limit: int, stats: Stats) -> None:
        self.path = path
        self.limit = limit
        self.stats = stats
        self.client: ChannelClient | None = None
        self._redial: asyncio.Task[None] | None = None
        self.closing = False

    async def connect(self) -> bool:
        client = ChannelClient(self.path, self.limit, on_close=self._lost,
                               on_dropped=self._dropped, linger=0.0)
        try:
            await client.connect()
        except OSError:
            return False
        self.client = client
        return True

    def _lost(self) -> None:
        self.client = None
        if not self.closing and self._redial is None:
            log.warning("shadow process at %s went away; dialling it again", self.path)
            self._redial = asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        try:
            while not self.closing and not await self.connect():
                await asyncio.sleep(REDIAL)
        finally:
            self._redial = None

    def start(self) -> None:
        """Dial in the background until the shadow process answers."""
        if self.client is None and self._redial is None:
            self._redial = asyncio.get_running_loop().create_task(self._dial())

    def _dropped(self, items: list[Any]) -> None:
        # queued, then the connection broke before the frame was written
        for item in items:
            if item[0] == "q":
                self.stats.add("dropped", "shadow_down", item[3])
            elif item[0] == "r":
                self.stats.add("record_dropped", "shadow_down", item[-1])

    def queue(self, item: tuple[Any, ...], force: bool = False, linger: float = 0.0
              ) -> str | None:
        """None when queued, else the ``dropped`` reason."""
        client = self.client
        if client is None or client.broken:
            return "shadow_down"
        return None if client.queue(item, force, linger) else "shadow_full"

    @property
    def buffered(self) -> int:
        return self.client.buffered if self.client is not None else 0

    async def close(self) -> None:
        self.closing = True
        if self._redial is not None:
            self._redial.cancel()
        if self.client is not None:
            await self.client.close()


class Tee(Policy):
    """Decides (:class:`~shadowproxy.proxy.policy.Policy`) and hands shadows to the links."""

    def __init__(self, cfg: Config, stats: Stats, paths: list[str]) -> None:
        self.stats = stats
        self.links = [Link(p, cfg.shadow.buffer, stats) for p in paths]
        self.budget = Budget(cfg.mirror.buffer_limit)
        self.accepting = True
        self.open = 0          # primary answers not yet known
        self._idle = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        self.cfg = cfg.mirror
        self.budget.limit = cfg.mirror.buffer_limit
        self.configure_policy(cfg)
        for link in self.links:
            link.limit = cfg.shadow.buffer
            if link.client is not None:
                link.client.limit = cfg.shadow.buffer

    async def start(self, wait: float = 0.0) -> None:
        """Dial every shadow process not dialled yet; wait up to ``wait`` s for them to
        answer (the server starts it again: links already up are kept)."""
        self._loop = asyncio.get_running_loop()
        for link in self.links:
            if link.client is None and link._redial is None and not await link.connect():
                link.start()
        t0 = time.monotonic()
        while any(link.client is None for link in self.links) and \
                time.monotonic() - t0 < wait:
            await asyncio.sleep(0.05)

    def _link(self, endpoint: str) -> Link:
        links = self.links
        if len(links) == 1:
            return links[0]
        return links[zlib.crc32(endpoint.encode("utf-8", "surrogateescape")) % len(links)]

    def submit(self, id_: str, endpoint: str, route: str | None, request: RequestRecord,
               target: str | None = None, block: bytes | None = None
               ) -> asyncio.Future[ResponseRecord] | None:
        """Hand a shadow of ``request`` to its shadow process; the future the proxy
        resolves with primary's captured answer, or None when dropped (counted)."""
        if not self.accepting:
            # as the mirror counts it: accepted, then abandoned
            self.stats.add("mirrored", "", endpoint)
            self.stats.add("dropped", "shutdown", endpoint)
            return None
        if target is None:
            target = request.path + ("?" + request.query if request.query else "")
        link = self._link(endpoint)
        why = link.queue(("q", id_, time.time(), endpoint, route, request.method,
                          request.path, request.query, request.headers, request.body,
                          target, block))
        if why is not None:
            self.stats.add("dropped", why, endpoint)
            return None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[ResponseRecord] = loop.create_future()
        self.open += 1
        fut.add_done_callback(lambda f: self._primary_done(link, id_, f))
        return fut

    def record(self, item: tuple[Any, ...]) -> str | None:
        """Hand a recorded exchange (:mod:`shadowproxy.record.hook`) to the shadow process
        of its endpoint, whose writer thread writes it; None, else the drop reason."""
        return self._link(item[-1]).queue(item)

    def _primary_done(self, link: Link, id_: str, fut: asyncio.Future[ResponseRecord]) -> None:
        rec = ResponseRecord(status=0, error="incomplete") if fut.cancelled() else fut.result()
        # the shadow process waits for it (a lost link: it counts primary_incomplete);
        # it may wait PRIMARY_LINGER to ride with the next request's item (one write and
        # one wake-up of the shadow process fewer), never holding that request back
        link.queue(("p", id_, RECORD_FIELDS(rec)), force=True, linger=PRIMARY_LINGER)
        self.budget.give(len(rec.body))     # charged by the proxy's Capture
        self.open -= 1
        if not self.open and not self.accepting:
            self._idle.set()

    @property
    def depth(self) -> int:
        """Shadows this worker handed on whose primary answer is not yet known."""
        return self.open

    in_flight = depth

    @property
    def buffered(self) -> int:
        return sum(link.buffered for link in self.links)

    async def drain(self, deadline: float) -> None:
        """Stop accepting; once every primary answer is handed on (or at ``deadline``,
        loop time), flush the links and close them."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        if self.open:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
        for link in self.links:
            await link.close()
