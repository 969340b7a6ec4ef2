"""The shadow stage: its own processes, at a lower CPU priority than the workers.

``shadow.processes`` of them (default 1) each listen on a Unix socket in the run's
private directory. Every proxy worker connects to each and sends, for a mirrored
request, a ``("q", …)`` item (the request: head and body) as soon as it is decided,
then a ``("p", id, record)`` item (primary's captured answer) when primary's answer
ends (:mod:`shadowproxy.proxy.tee`). Here a :class:`~shadowproxy.proxy.mirror.Mirror` sends the
request to the candidate and the secondary, reads and bounds their answers, and hands
each finished :class:`~shadowproxy.models.Exchange` to the control process over the
channel, where it is compared and stored.

What a candidate can make this process do (50 MB answers, an endless chunked body,
garbage) costs this process's CPU, which the kernel gives the workers first
(``os.nice(shadow.nice)``), and its memory, bounded by ``mirror.buffer_limit``, the
queue (``mirror.queue``), the concurrency (``mirror.concurrency``) and each answer's
cap (``mirror.max_response``).

A worker that goes away leaves shadows waiting for primary's answer: they are counted
``dropped{primary_incomplete}``. Reading the workers never waits: a shadow the mirror
cannot take is dropped and counted at once, so a worker's link only fills when this
process is starved of CPU, and then the worker drops (``dropped{shadow_full}``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
from collections.abc import Callable
from typing import Any

from ..config import Config
from ..models import RequestRecord, ResponseRecord
from ..process import install_uvloop, lower_priority, name_process, setup_logging
from ..proxy.mirror import Mirror
from ..record.writer import RecordWriter
from ..redact import Redactor
from ..stats import Stats
from .channel import ChannelClient, read_frame, report_forever

log = logging.getLogger("shadowproxy.shadow")

class Intake:
    """Reads the workers' items into the mirror."""

    def __init__(self, mirror: Mirror, record: Callable[[tuple[Any, ...]], bool] | None = None
                 ) -> None:
        """``record``: the recording writer's hand-over (``record:`` configured)."""
        self.mirror = mirror
        self.record = record
        self.waiting: dict[str, asyncio.Future[ResponseRecord]] = {}
        self.conns: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.conns.add(task)
        mine: set[str] = set()       # this worker's shadows waiting for primary's answer
        try:
            while True:
                msg = await read_frame(reader)
                if msg[0] != "xs":
                    continue
                for item in msg[1]:
                    if item[0] == "q":
                        self._request(item, mine)
                    elif item[0] == "p":
                        self._primary(item, mine)
                    elif item[0] == "r" and self.record is not None:
                        self.record(item)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:  # a bad frame closes that worker's link only
            log.exception("bad frame from a worker")
        finally:
            self.conns.discard(task)
            writer.close()
            # the worker went away before telling primary's answer
            for id_ in mine:
                fut = self.waiting.pop(id_, None)
                if fut is not None and not fut.done():
                    fut.set_result(ResponseRecord(status=0, error="incomplete"))

    def _request(self, item: tuple[Any, ...], mine: set[str]) -> None:
        (_, id_, started, endpoint, route, method, path, query, headers, body, target,
         block) = item
        rec = RequestRecord(method, path, query, tuple(headers), body)
        fut = self.mirror.submit(id_, endpoint, route, rec, target, block, started)
        if fut is not None:
            self.waiting[id_] = fut
            mine.add(id_)

    def _primary(self, item: tuple[Any, ...], mine: set[str]) -> None:
        id_ = item[1]
        mine.discard(id_)
        fut = self.waiting.pop(id_, None)
        if fut is None or fut.done():
            return          # dropped here already (counted)
        rec = ResponseRecord(*item[2])
        # the mirror gives primary's captured bytes back to its budget when done
        self.mirror.budget.used += len(rec.body)
        fut.set_result(rec)

    async def wait_closed(self, timeout: float) -> None:
        if self.conns:
            await asyncio.wait(list(self.conns), timeout=timeout)


def skew_gauges(skews: Any) -> dict[str, float]:
    """Send skew (request arrival → shadow sent) of the shadows sent since last time."""
    if not skews:
        return {}
    xs = sorted(skews)
    skews.clear()
    return {"shadow_skew_p50": statistics.median(xs),
            "shadow_skew_p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))],
            "shadow_skew_max": xs[-1], "shadow_skew_n": float(len(xs))}


def shadow_entry(cfg: Config, path: str, control_path: str, index: int,
                 redact_key: bytes | None = None) -> None:
    """A shadow process (started by the supervisor with the spawn method). ``redact_key``:
    the run's, with which recordings are masked as the store's results are."""

    name_process(f"shadowproxy-s{index}")
    setup_logging(cfg)
    install_uvloop()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides
    nice = lower_priority(cfg.shadow.nice)
    try:
        asyncio.run(_shadow(cfg, path, control_path, index, nice, redact_key))
    except KeyboardInterrupt:  # pragma: no cover
        pass


async def _shadow(cfg: Config, path: str, control_path: str, index: int, nice: int,
                  redact_key: bytes | None = None) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    stop = asyncio.Event()
    mirror: Mirror | None = None
    publisher: Any = None     # a fleet's sidecar: the stream's publisher

    def on_message(msg: tuple[Any, ...]) -> None:
        if mirror is None:
            return
        if msg[0] == "cfg":
            mirror.configure(msg[1])
            if publisher is not None:   # the reloaded redaction rules, under the run's key
                publisher.redactor = Redactor(msg[1].redact, publisher.redactor.key)
        elif msg[0] == "mirror":
            mirror.enabled = bool(msg[1]) and mirror.candidate is not None

    def dropped(exchanges: list[Any]) -> None:
        for ex in exchanges:   # queued for the channel, which broke before the write
            stats.add("dropped", "compare_full", ex.endpoint)

    def counts() -> tuple[Any, ...] | None:
        delta = stats.take_delta()
        return ("s", delta) if delta else None

    # the counts go ahead of each frame of exchanges: the control process never sees an
    # exchange compared whose `mirrored` it has not counted
    control = ChannelClient(control_path, on_message=on_message, on_close=stop.set,
                            on_dropped=dropped, before_frame=counts)
    await control.connect()
    if cfg.transport.url is not None:
        # a fleet's sidecar: exchanges go, redacted, to the stream; the comparators judge
        from ..transport.publisher import Publisher

        publisher = Publisher(cfg, stats, Redactor(cfg.redact, redact_key) if redact_key
                              else Redactor.from_config(cfg.redact))
        publisher.start()
    mirror = Mirror(cfg, stats, control.queue if publisher is None else publisher.offer)
    await mirror.start()
    writer: RecordWriter | None = None
    if cfg.record is not None:
        redactor = Redactor(cfg.redact, redact_key) if redact_key \
            else Redactor.from_config(cfg.redact)
        writer = RecordWriter(cfg.record, redactor, f"{cfg.instance}-s{index}", stats)
        writer.start()
    intake = Intake(mirror, writer.offer if writer is not None else None)
    if os.path.exists(path):
        os.unlink(path)      # a socket left by a predecessor that died
    server = await asyncio.start_unix_server(intake.serve, path)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor reloads

    def gauges() -> dict[str, float]:
        m = mirror
        assert m is not None
        return {"mirror_queue_depth": m.depth, "mirror_in_flight": m.in_flight,
                "mirror_pending": m.pending,
                "mirror_buffered_bytes": m.budget.used,
                "channel_buffered_bytes": control.buffered, "nice": nice,
                **(publisher.gauges() if publisher is not None else {}),
                **({"record_queue_depth": writer.depth} if writer is not None else {}),
                **skew_gauges(m.skews)}

    reporter = asyncio.create_task(report_forever(control, stats.take_delta,
                                                  lambda: ("gs", index, gauges())))
    control.send(("shadow_ready", index), force=True)
    log.info("shadow process %d at nice %d", index, nice)
    await stop.wait()
    # the supervisor stops the workers first: their last items are in, or on the way
    server.close()
    await intake.wait_closed(cfg.timeouts.shutdown)
    await mirror.drain(loop.time() + cfg.timeouts.shutdown)
    if publisher is not None:
        await publisher.close(max(1.0, cfg.timeouts.shutdown))
    if writer is not None:
        await writer.close(cfg.timeouts.shutdown or 1.0)
    reporter.cancel()
    control.send(("gs", index, gauges()), force=True)
    control.send(("s", stats.take_delta()), force=True)
    await control.close()
