"""``shadowproxy compare -c FILE [--processes N]``: a pool of comparators on the stream.

Each process is a :class:`~.consumer.Consumer` of the group, with its own store
writer; a process that dies is started again (what it had read and not acknowledged
is claimed by the others after ``transport.claim_after``). SIGTERM or SIGINT: each
stops reading, judges what it read, waits for the store's commits and acknowledges
them, and exits; the pool exits 0 when they have.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from typing import Any

from ..config import Config
from ..errors import ShadowProxyError
from ..process import setup_logging
from .client import safe_url
from .consumer import consumer_entry

log = logging.getLogger("shadowproxy.comparator")


def run_pool(cfg: Config, processes: int) -> int:
    if cfg.transport.url is None:
        raise ShadowProxyError(f"{cfg.where('transport.url')}: `compare` reads the fleet's "
                               "stream: set transport.url (redis://HOST:PORT/DB)")
    setup_logging(cfg)
    ctx = multiprocessing.get_context("spawn")
    procs: dict[int, Any] = {}
    stopping = False

    def spawn(i: int) -> None:
        p = ctx.Process(target=consumer_entry, args=(cfg, i), name=f"shadowproxy-c{i}")
        p.start()
        procs[i] = p

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(processes):
        spawn(i)
    print(f"comparing from {safe_url(cfg.transport.url)} stream {cfg.transport.stream} "
          f"with {processes} process(es) into {cfg.store.url.split('@')[-1]}", flush=True)
    while not stopping:
        time.sleep(0.2)
        for i, p in list(procs.items()):
            if not p.is_alive() and not stopping:
                log.error("comparator %d exited with %s; starting it again", i, p.exitcode)
                spawn(i)
    deadline = time.monotonic() + cfg.timeouts.shutdown + 10.0
    for p in procs.values():
        if p.pid is not None and p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    for p in procs.values():
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            log.error("comparator %s did not stop in time; killing it", p.pid)
            p.kill()
    return 0
