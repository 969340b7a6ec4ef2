"""The sidecar's end of the transport: a shadow process's exchanges, redacted, onto
the stream.

The mirror hands each finished exchange to :meth:`Publisher.offer`, which never waits:
it redacts the exchange (:func:`~shadowproxy.redact.fleet.redact_for_transport`: no
secret leaves the pod), packs it (:mod:`.wire`) and appends it to a bounded buffer
(``transport.buffer`` bytes). One task drains the buffer: up to ``transport.batch``
entries at a time through the :data:`~.scripts.ADD` script (one round trip for the
batch), which adds only while the consumer group's lag leaves room under
``transport.max_len``.

Nothing here blocks the mirror, nor the workers before it. Each shadow that does not
reach the stream is counted, with its reason:

``dropped{transport_down}``
    Redis is down or out of reach (or a batch's write failed): the buffer is emptied
    and new exchanges are dropped at once until a reconnect, tried with backoff
    (0.1 s doubling up to 2 s), succeeds;
``dropped{transport_full}``
    the buffer is full: Redis takes the entries more slowly than they come;
``dropped{compare_full}``
    the comparators are ``transport.max_len`` entries behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Any

from redis.exceptions import OutOfMemoryError, RedisError

from ..config import Config
from ..models import Exchange
from ..redact import Redactor
from ..redact.fleet import redact_for_transport
from ..stats import Stats
from . import wire
from .client import connect, ensure_group, safe_url
from .scripts import ADD

log = logging.getLogger("shadowproxy.transport")

BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0


class Publisher:
    def __init__(self, cfg: Config, stats: Stats, redactor: Redactor) -> None:
        self.cfg = cfg.transport
        self.instance = cfg.instance     # each entry says which sidecar mirrored it
        self.stats = stats
        self.redactor = redactor
        self.buffer: deque[tuple[str, bytes]] = deque()   # (endpoint, packed exchange)
        self.bytes = 0
        self.down: str | None = "not connected yet"
        self.full: str | None = None    # Redis refuses writes at its maxmemory (it is up)
        # the failure last logged, until a batch is written again: a Redis that takes
        # connections and refuses every write (full: OOM at maxmemory) is said once,
        # not twice a batch
        self._said: str | None = None
        self._wrote_once = False
        self.added = 0
        # batches: numbered, the number recorded in Redis with them (scripts.ADD), so
        # that a batch whose reply was lost is found applied or not on reconnecting
        self._seq_key = (f"{cfg.transport.stream}:publisher:"
                         f"{os.getpid()}-{time.time_ns():x}-{id(self):x}")
        self._seq = 0
        self._unsure: tuple[int, list[tuple[str, bytes]]] | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------ the mirror's side

    def offer(self, ex: Exchange) -> bool:
        """Take ``ex`` for the stream; always True (each drop is counted here, with
        its reason, rather than as the mirror's ``compare_full``)."""
        if self.down is not None:
            self.stats.add("dropped", "transport_down", ex.endpoint)
            return True
        data = wire.pack(redact_for_transport(self.redactor, ex), self.instance)
        if self.bytes and self.bytes + len(data) > self.cfg.buffer:
            self.stats.add("dropped", "transport_full", ex.endpoint)
            return True
        self.buffer.append((ex.endpoint, data))
        self.bytes += len(data)
        self._ready.set()
        return True

    def gauges(self) -> dict[str, float]:
        return {"transport_buffered_bytes": float(self.bytes),
                "transport_buffered": float(len(self.buffer)),
                "transport_down": 1.0 if self.down is not None else 0.0,
                "transport_redis_full": 1.0 if self.full is not None else 0.0}

    # ------------------------------------------------------------ the drain

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="transport-publisher")

    def _shed(self, reason: str) -> None:
        """Everything buffered dropped, counted ``reason``."""
        while self.buffer:
            endpoint, _ = self.buffer.popleft()
            self.stats.add("dropped", reason, endpoint)
        self.bytes = 0

    async def run(self) -> None:
        cfg = self.cfg
        delay = BACKOFF_MIN
        r = None
        while True:
            if r is None:
                try:
                    r = connect(cfg)
                    await ensure_group(r, cfg)
                    add = r.register_script(ADD)
                    if self._unsure is not None:   # the batch in flight when it went
                        await self._settle(r)
                except (RedisError, OSError) as exc:
                    await self._lost(r, exc)
                    r = None
                    if self._closing:
                        return
                    await asyncio.sleep(delay)
                    delay = min(BACKOFF_MAX, delay * 2)
                    continue
                if not self._wrote_once:
                    self._wrote_once = True
                    log.info("transport: writing to %s stream %s", safe_url(cfg.url or ""),
                             cfg.stream)
                self.down = None
                delay = BACKOFF_MIN
            if not self.buffer:
                if self._closing:
                    break
                self._ready.clear()
                await self._ready.wait()
                continue
            batch = [self.buffer.popleft() for _ in range(min(cfg.batch, len(self.buffer)))]
            self.bytes -= sum(len(d) for _e, d in batch)
            self._seq += 1
            try:
                added, _lag = await add(keys=[cfg.stream, self._seq_key],
                                        args=[cfg.group, cfg.max_len, wire.VERSION,
                                              self._seq, *(d for _e, d in batch)])
            except OutOfMemoryError as exc:
                # Redis is up but full (maxmemory): the comparators' trimming frees it;
                # the connection stays, the shadows meanwhile are counted apart
                for endpoint, _d in batch:
                    self.stats.add("dropped", "transport_oom", endpoint)
                self._oom(exc)
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            except (RedisError, OSError) as exc:
                # applied or not: Redis may have run the script before the connection
                # broke; settled on reconnecting (_settle), or counted lost at close
                self._unsure = (self._seq, batch)
                await self._lost(r, exc)
                r = None
                continue
            delay = BACKOFF_MIN
            self.full = None
            self.added += int(added)
            if self._said is not None:
                log.info("transport: writing to %s stream %s again", safe_url(cfg.url or ""),
                         cfg.stream)
                self._said = None
            for endpoint, _d in batch[int(added):]:
                self.stats.add("dropped", "compare_full", endpoint)
        await r.aclose()

    async def _settle(self, r: Any) -> None:
        """The batch whose reply was lost: added (Redis recorded its number with the
        entries) or lost (counted ``dropped{transport_down}``)."""
        assert self._unsure is not None
        seq, batch = self._unsure
        got = await r.get(self._seq_key)
        text = got.decode() if isinstance(got, bytes) else (got or "")
        done, _, n = text.partition(":")
        self._unsure = None
        if done == str(seq) and n.isdigit():
            self.added += int(n)
            for endpoint, _d in batch[int(n):]:
                self.stats.add("dropped", "compare_full", endpoint)
        else:
            self._count_lost(batch)

    @property
    def unsettled(self) -> int:
        """Entries of a batch whose reply was lost, until Redis says whether it took
        them (on reconnecting) or the publisher closes (then counted lost)."""
        return len(self._unsure[1]) if self._unsure is not None else 0

    def _count_lost(self, batch: list[tuple[str, bytes]]) -> None:
        for endpoint, _d in batch:
            self.stats.add("dropped", "transport_down", endpoint)

    def _oom(self, exc: BaseException) -> None:
        """Redis is full: the buffer keeps taking shadows, batches are tried with
        backoff (each refused one counted), the connection is kept."""
        self.full = f"Redis is full: {exc}"
        if self._said is None:
            self._said = self.full
            log.error("transport: %s is full (maxmemory: %s); dropping shadows (counted "
                      "dropped{transport_oom}) until the comparators' trimming frees it",
                      safe_url(self.cfg.url or ""), exc)

    async def _lost(self, r: object, exc: BaseException) -> None:
        self.down = str(exc) or type(exc).__name__
        if self._said is None:
            self._said = self.down
            log.error("transport: %s is down (%s); dropping shadows (counted "
                      "dropped{transport_down}) and reconnecting with backoff",
                      safe_url(self.cfg.url or ""), exc)
        self._shed("transport_down")
        close = getattr(r, "aclose", None)
        if close is not None:
            try:
                await close()
            except (RedisError, OSError):
                pass

    async def close(self, timeout: float) -> None:
        """Write what is buffered (up to ``timeout`` s), then stop; what is left is
        counted ``dropped{shutdown}``."""
        self._closing = True
        self._ready.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                pass
        if self._unsure is not None:       # Redis never came back to say: lost
            self._count_lost(self._unsure[1])
            self._unsure = None
        self._shed("shutdown")
