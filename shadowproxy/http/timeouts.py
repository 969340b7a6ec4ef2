"""Awaiting a future with a timer handle: cheaper than ``asyncio.timeout`` when the
answer is usually there, and able to start the clock only when an upload ends."""

from __future__ import annotations

import asyncio
from typing import Any


async def _after(sender: asyncio.Task[BaseException | None], fut: asyncio.Future[Any],
                 timeout: float | None) -> Any:
    """``await fut``, failed with TimeoutError ``timeout`` seconds after ``sender`` ends."""
    if timeout is None:
        return await fut
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def arm(_task: object) -> None:
        nonlocal timer
        if not fut.done():
            timer = loop.call_later(timeout, _expire, fut)

    sender.add_done_callback(arm)
    try:
        return await fut
    finally:
        sender.remove_done_callback(arm)
        if timer is not None:
            timer.cancel()


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _within(fut: asyncio.Future[Any], timeout: float | None) -> Any:
    """``await fut``, failed with TimeoutError after ``timeout`` seconds (a timer
    handle: cheaper than ``asyncio.timeout`` when the answer is usually there)."""
    if timeout is None or fut.done():
        return await fut
    timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
    try:
        return await fut
    finally:
        timer.cancel()
