"""What every shadowproxy process does to itself: its event loop, logging, name,
CPU priority and heap."""

from __future__ import annotations

import asyncio
import gc
import logging
import os

from .config import Config

log = logging.getLogger("shadowproxy")


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def setup_logging(cfg: Config) -> None:
    from .logs import setup_logging as _setup

    _setup(cfg.log.level)


def name_process(name: str) -> None:
    """The name ``ps``, ``top`` and /proc/PID/comm show for this process (Linux; at most
    15 bytes), so that workers and shadow processes can be told apart."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def lower_priority(nice: int) -> int:
    """Add ``nice`` to this process's niceness; → the niceness it has now."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError as exc:  # pragma: no cover - lowering one's priority is always allowed
            log.warning("cannot lower the shadow stage's CPU priority: %s", exc)
    return os.getpriority(os.PRIO_PROCESS, 0)


def settle_heap() -> None:
    """Once a worker has started: what it has built so far (modules, config, pools,
    ~40,000 objects) lives as long as the process, so the cyclic collector stops
    walking it (``gc.freeze``). A full collection then walks only what requests made:
    with 1,000 shadows queued behind a slow candidate, 2 ms instead of 29 ms, a pause
    every request on the worker would otherwise wait out. (Not in the control process:
    its pauses never reach a client, and frozen cycles are never finalized, so a
    store connection held in one would not be closed at exit.)"""
    gc.collect()
    gc.freeze()
