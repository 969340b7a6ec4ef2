"""A comparator: one member of the consumer group on the stream (``shadowproxy
compare`` runs ``--processes`` of them).

Each reads entries with ``XREADGROUP`` (up to ``transport.batch`` at a time, and only
while the store writer has room: a slow store slows the reading, it never drops),
judges each exchange with the same comparator, noise learner and store writer as a
sidecar's control process (:class:`~shadowproxy.control.stages.Control`), and
acknowledges an entry (``XACK``) only once the store has committed its result:

* an exchange whose result the store did not take (it failed, or the comparator died
  first) stays pending; ``transport.claim_after`` seconds later another comparator
  claims it (``XAUTOCLAIM``) and judges it again. The store's writes are idempotent by
  exchange id, and a claimed exchange the store already holds is acknowledged without
  being judged again, so a redelivery is never counted twice;
* an entry delivered ``transport.max_deliveries`` times without being acknowledged
  goes to the dead-letter stream (``<stream>:dead``, with its id and why), counted
  ``dropped{dead_letter}``; one this comparator cannot read (an unknown version of
  the wire format, a malformed frame) goes there at once, counted
  ``dropped{transport_refused}``;
* pending entries that were trimmed before anyone acknowledged them (``XAUTOCLAIM``
  reports them deleted) and unread entries trimmed past the group
  (:data:`~.scripts.TRIMMED`) are counted ``dropped{transport_trimmed}``.

The exchanges were redacted by the sidecar; the comparator masks nothing again
(:class:`~shadowproxy.redact.fleet.Redacted`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections import deque
from typing import Any

from redis.exceptions import OutOfMemoryError, RedisError

from ..config import Config
from ..errors import StoreError
from ..models import Result
from ..redact.fleet import Redacted
from . import wire
from .client import Keys, connect, ensure_group, safe_url
from .scripts import TRIM_READ, TRIMMED

log = logging.getLogger("shadowproxy.comparator")

BLOCK_MS = 1000          # an XREADGROUP waits this long for entries
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
DEAD_LOG_INTERVAL = 60.0  # seconds between two lines for one cause of dead letters


def consumer_name(index: int) -> str:
    """Unique in the group: host (the pod's name), process id and index."""
    host = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{host}:{os.getpid()}:{index}"


class Consumer:
    def __init__(self, cfg: Config, index: int = 0) -> None:
        from ..control.stages import Control

        self.cfg = cfg
        self.tcfg = cfg.transport
        self.keys = Keys.of(cfg.transport)
        self.name = consumer_name(index)
        self.control = Control(cfg)
        self.control.stage.redactor = Redacted()
        self.stats = self.control.stats
        self.writer = self.control.writer
        self.writer.on_committed = self._committed
        # exchange id → (monotonic time read, stream ids) waiting for the store's commit
        self.waiting: dict[str, tuple[float, list[bytes]]] = {}
        self._acks: deque[bytes] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ack_ready = asyncio.Event()
        self._reader_store: Any = None
        self.redis: Any = None
        self.stop = asyncio.Event()
        self.claimed = 0
        self._failures: dict[bytes, str] = {}   # entry → why its comparison raised
        self.trimmed_read = 0     # entries done with, trimmed from the stream (TRIM_READ)
        self.redelivered = 0
        # dead letters by cause: when each was last logged, and how many since (a
        # rollout of a newer sidecar, or garbage written to the stream, sends thousands
        # of one cause; each is counted, the cause logged at most once a minute)
        self._dead_said: dict[str, tuple[float, int]] = {}

    # ------------------------------------------------------------ acknowledgement

    def _committed(self, results: list[Result]) -> None:
        """The writer's thread: these results are in the store; acknowledge them."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._ack, [r.exchange.id for r in results])

    def _ack(self, ids: list[str]) -> None:
        for ex_id in ids:
            got = self.waiting.pop(ex_id, None)
            if got is not None:
                self._acks.extend(got[1])
        self._ack_ready.set()

    def _forget_stale(self) -> None:
        """Exchanges whose result the store never committed (it refused them): their
        entries are left to be claimed again (and dead-lettered if they keep failing);
        holding them longer would only shrink :meth:`_room`."""
        cutoff = time.monotonic() - 2 * self.tcfg.claim_after
        for ex_id in [k for k, (t, _ids) in self.waiting.items() if t < cutoff]:
            del self.waiting[ex_id]

    async def _ack_forever(self) -> None:
        while True:
            await self._ack_ready.wait()
            self._ack_ready.clear()
            while self._acks:
                ids = [self._acks.popleft() for _ in range(min(500, len(self._acks)))]
                try:
                    await self.redis.xack(self.keys.stream, self.tcfg.group, *ids)
                except (RedisError, OSError) as exc:
                    # unacknowledged: claimed again later, found in the store, acked then
                    log.warning("comparator: XACK failed (%s); the entries stay pending", exc)
                    break

    # ------------------------------------------------------------ entries

    def _room(self) -> int:
        """Entries the writer can take now (reading stops while the store is behind)."""
        return max(0, self.cfg.store.queue - self.writer.depth - len(self.waiting))

    async def _dead(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str,
                    endpoint: str = "") -> None:
        """Move one entry to the dead-letter stream and count it: under the sidecar's
        instance when the entry says it (one delivered too often), else under this
        comparator's own (one it cannot read)."""
        dead = {b"id": entry_id, b"reason": reason.encode(), **fields}
        async with self.redis.pipeline(transaction=True) as p:
            p.xadd(self.keys.dead, dead, maxlen=self.tcfg.max_len, approximate=True)
            p.xack(self.keys.stream, self.tcfg.group, entry_id)
            await p.execute()
        outcome = "dead_letter" if reason.startswith("deliver") else "transport_refused"
        instance = None
        if outcome == "dead_letter":
            try:
                ex = wire.read_entry(fields)
                instance, endpoint = ex.instance, ex.endpoint
            except wire.RefusedFrame:
                pass
        self.control.stats_for(instance).add("dropped", outcome, endpoint)
        cause = reason.split(" (", 1)[0]
        now = time.monotonic()
        said, since = self._dead_said.get(cause, (-DEAD_LOG_INTERVAL, 0))
        if now - said < DEAD_LOG_INTERVAL:
            self._dead_said[cause] = (said, since + 1)
            return
        self._dead_said[cause] = (now, 0)
        log.warning("comparator: entry %s moved to %s (%s)%s; counted dropped{%s}, "
                    "logged at most once a minute for this cause", entry_id.decode(),
                    self.keys.dead, reason,
                    f", and {since} more since the last time" if since else "", outcome)

    async def _handle(self, entries: list[Any], claimed: bool = False) -> None:
        stage = self.control.stage
        for entry_id, fields in entries:
            if fields is None:       # trimmed while pending (XCLAIM of a deleted entry)
                continue
            try:
                ex = wire.read_entry(fields)
            except wire.RefusedFrame as exc:
                await self._dead(entry_id, fields, f"refused: {exc}")
                continue
            mine = self.waiting.get(ex.id)
            if mine is not None:      # claimed back while its result is on its way here
                mine[1].append(entry_id)
                continue
            if claimed and await self._stored(ex.id):
                self.redelivered += 1
                self._acks.append(entry_id)
                self._ack_ready.set()
                continue
            self.waiting[ex.id] = (time.monotonic(), [entry_id])
            try:
                # counted and stored under the sidecar that mirrored it (version 2)
                stage.process(ex, self.control.stats_for(ex.instance))
            except Exception as exc:  # one bad exchange must not stop the comparator
                # left pending: retried, then dead-lettered with this cause, and counted
                # once there (dropped{dead_letter}), not at every delivery
                log.exception("comparison failed for exchange %s", ex.id)
                if len(self._failures) > 10_000:
                    self._failures.clear()
                self._failures[entry_id] = f"comparison failed: {type(exc).__name__}: {exc}"
                self.waiting.pop(ex.id, None)
        stage._burst_done()

    async def _stored(self, ex_id: str) -> bool:
        """Does the store hold ``ex_id`` already (a redelivery after a commit)?"""
        from ..store.open import open_configured

        def look() -> bool:
            if self._reader_store is None:
                self._reader_store = open_configured(self.cfg, readonly=True)
            return self._reader_store.exchange(ex_id) is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(None, look)
        except StoreError:
            return False

    # ------------------------------------------------------------ the loops

    async def _read_forever(self) -> None:
        """Entries new to the group. Each read runs in one transaction after the
        :data:`~.scripts.TRIMMED` check, so no entry trimmed unread is skipped over
        uncounted; only when that finds nothing does a blocking read wait for more (a
        new entry is handed to a blocked reader before anything can trim it)."""
        trimmed = self.redis.register_script(TRIMMED)
        stream, group = self.keys.stream, self.tcfg.group
        while not self.stop.is_set():
            room = min(self.tcfg.batch, self._room())
            if room == 0:
                await asyncio.sleep(0.05)
                continue
            try:
                async with self.redis.pipeline(transaction=True) as p:
                    await trimmed(keys=[stream], args=[group], client=p)
                    p.xreadgroup(group, self.name, {stream: ">"}, count=room)
                    lost, resp = await p.execute()
            except OutOfMemoryError:
                # Redis is full: it refuses the check inside a transaction, and nothing
                # can be added (so nothing trimmed unread) until reading, acknowledging
                # and trimming free it: read without the check
                lost = 0
                resp = await self.redis.xreadgroup(group, self.name, {stream: ">"},
                                                   count=room)
            self._count_trimmed(int(lost))
            if not resp:
                resp = await self.redis.xreadgroup(group, self.name, {stream: ">"},
                                                   count=room, block=BLOCK_MS)
            for _stream, entries in resp or ():
                await self._handle(entries)

    def _count_trimmed(self, lost: int) -> None:
        if not lost:
            return
        n = max(lost, 0)
        self.stats.add("dropped", "transport_trimmed", "", n)
        log.error("comparator: %s unread entries were trimmed from the stream before a "
                  "comparator read them (counted dropped{transport_trimmed}); another writer "
                  "trims it, or transport.max_len differs between sidecars",
                  n if lost > 0 else "some")

    async def _claim_forever(self) -> None:
        """Dead letters and claims, every ``claim_after`` / 2 (≤ 5 s)."""
        tcfg = self.tcfg
        idle_ms = int(tcfg.claim_after * 1000)
        trim_read = self.redis.register_script(TRIM_READ)
        while not self.stop.is_set():
            await asyncio.sleep(min(5.0, tcfg.claim_after / 2))
            self._forget_stale()
            await self._drop_idle_consumers()
            # what every comparator is done with leaves the stream (frees Redis)
            self.trimmed_read += int(await trim_read(keys=[self.keys.stream],
                                                     args=[tcfg.group]))
            # entries delivered max_deliveries times without an ack: dead letters
            pending = await self.redis.xpending_range(
                self.keys.stream, tcfg.group, min="-", max="+", count=100, idle=idle_ms)
            for p in pending:
                if p["times_delivered"] >= tcfg.max_deliveries:
                    got = await self.redis.xrange(self.keys.stream, p["message_id"],
                                                  p["message_id"])
                    fields = got[0][1] if got else {}
                    why = self._failures.pop(p["message_id"], None)
                    await self._dead(p["message_id"], fields,
                                     f"delivered {p['times_delivered']} times"
                                     + (f" ({why[:200]})" if why else ""))
            start = "0-0"
            for _ in range(10):       # at most 10 batches a round
                room = min(tcfg.batch, self._room())
                if room == 0:
                    break
                start, entries, deleted = await self._autoclaim(start, idle_ms, room)
                if deleted:
                    self.stats.add("dropped", "transport_trimmed", "", len(deleted))
                    log.error("comparator: %d pending entries were trimmed from the stream "
                              "before a comparator acknowledged them (counted "
                              "dropped{transport_trimmed})", len(deleted))
                if entries:
                    self.claimed += len(entries)
                    await self._handle(entries, claimed=True)
                if start in (b"0-0", "0-0"):
                    break

    async def _drop_idle_consumers(self) -> None:
        """Consumers of the group that hold nothing and have not read for
        10 × ``claim_after`` (comparators that stopped or were replaced) leave it, so the
        group lists the comparators there are."""
        idle_ms = int(10 * self.tcfg.claim_after * 1000)
        for c in await self.redis.xinfo_consumers(self.keys.stream, self.tcfg.group):
            name = c["name"]
            if c["pending"] == 0 and c["idle"] > idle_ms and name != self.name.encode():
                await self.redis.xgroup_delconsumer(self.keys.stream, self.tcfg.group, name)

    async def _autoclaim(self, start: Any, idle_ms: int, count: int
                         ) -> tuple[Any, list[Any], list[Any]]:
        resp = await self.redis.execute_command(
            "XAUTOCLAIM", self.keys.stream, self.tcfg.group, self.name, idle_ms, start,
            "COUNT", count)
        nxt, raw, deleted = resp[0], resp[1], resp[2] if len(resp) > 2 else []
        entries = [(e[0], _fields(e[1])) for e in raw if e is not None]
        return nxt, entries, list(deleted)

    async def run(self) -> None:
        """Until :attr:`stop` is set; reconnects to Redis with backoff."""
        self._loop = asyncio.get_running_loop()
        await self.control.start()
        acker = asyncio.create_task(self._ack_forever(), name="comparator-ack")
        delay = BACKOFF_MIN
        down = False
        while not self.stop.is_set():
            self.redis = connect(self.tcfg, timeout=BLOCK_MS / 1000 + 5.0)
            tasks: list[asyncio.Task[None]] = []
            try:
                await ensure_group(self.redis, self.tcfg)
                if down:
                    log.info("comparator: reading %s again", safe_url(self.tcfg.url or ""))
                down, delay = False, BACKOFF_MIN
                tasks = [asyncio.create_task(self._read_forever()),
                         asyncio.create_task(self._claim_forever())]
                stopper = asyncio.create_task(self.stop.wait())
                done, _ = await asyncio.wait([*tasks, stopper],
                                             return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                for t in done:
                    if t is not stopper:
                        t.result()      # raises what ended it
            except (RedisError, OSError) as exc:
                if not down:
                    log.error("comparator: %s is down (%s); reconnecting with backoff",
                              safe_url(self.tcfg.url or ""), exc)
                down = True
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX, delay * 2)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        # stopping: what was read is judged; what the store commits in time is acked
        self.writer.flush(self.cfg.timeouts.shutdown)
        await asyncio.sleep(0)
        while self._acks:
            self._ack_ready.set()
            await asyncio.sleep(0.01)
            if acker.done():
                break
        acker.cancel()
        await self.control.stop(self.cfg.timeouts.shutdown)
        if self._reader_store is not None:
            self._reader_store.close()
        await self.redis.aclose()


def _fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's fields as XAUTOCLAIM answers them (a flat list) or as a dict."""
    if isinstance(raw, dict):
        return raw
    return {raw[i]: raw[i + 1] for i in range(0, len(raw), 2)}


def consumer_entry(cfg: Config, index: int) -> None:
    """One comparator process (started by :func:`~.pool.run_pool`)."""
    from ..process import install_uvloop, name_process, setup_logging

    name_process(f"shadowproxy-c{index}")
    setup_logging(cfg)
    install_uvloop()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the pool decides

    # each process of a pool has a name of its own: the store keys the aggregate rows
    # it writes by it (their writer), since a minute's sketches are read, merged and
    # written back, and two writers sharing rows would wait on each other (or, without
    # the store's locks, keep only one's sketches). The traffic's rows are labelled
    # with the sidecar each entry names; this name labels what only a comparator can
    # (entries it cannot read) and its noise learner
    cfg = cfg.replace(instance=f"{cfg.instance}-c{index}")

    async def main() -> None:
        c = Consumer(cfg, index)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, c.stop.set)
        await c.run()
    asyncio.run(main())
