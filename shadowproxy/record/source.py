"""Recorded exchanges read from files: GoReplay files (plain or ``.gz``) and HAR 1.2.

Each :class:`Recorded` is a request and, when the file has it, the answer production
gave then (the reference a replay compares the candidate with when no live primary is
given). Replayed-response payloads (GoReplay's type 3) are not references and are
skipped. The items come sorted by the time the request started, so a replay can keep
the recorded spacing.

A night's recordings can be gigabytes: :class:`Recordings` reads them twice rather
than holding them. A first pass counts the requests (for the progress and the
summary), says what is damaged, and fails on what cannot be read, all before a
request is sent; the replay then streams them, each GoReplay file through a window of
:data:`HOLD` seconds of start times (a file holds requests in the order they ended,
each followed by its answer), the files merged by start time. Memory is that window,
not the recordings.
"""

from __future__ import annotations

import gzip
import heapq
import json
import logging
import zlib
from collections.abc import Iterable, Iterator

from ..errors import ShadowProxyError
from ..redact.masks import MASK_PREFIX
from . import goreplay
from .har import read_har
from .recorded import Recorded

log = logging.getLogger("shadowproxy.record")


HOLD = 120.0     # s: how much later than its start a request's answer may be written


def _goreplay(path: str, *, say: bool = True) -> Iterator[Recorded]:
    """The requests of a GoReplay file in start order, each with its recorded answer
    when the file has one within :data:`HOLD` seconds of its start."""
    pending: dict[str, Recorded] = {}
    ready: list[tuple[float, int, Recorded]] = []     # a heap by start
    problems: list[str] = []
    payloads = 0
    latest = float("-inf")
    with goreplay.open_recording(path) as fh:
        try:
            for p in goreplay.read_payloads(fh, problems):
                payloads += 1
                try:
                    if p.kind == goreplay.REQUEST:
                        req, target = goreplay.parse_request(p.data)
                        rec = Recorded(p.id, p.timestamp / 1e9, req, target, None)
                        pending[p.id] = rec
                        heapq.heappush(ready, (rec.started, payloads, rec))
                        latest = max(latest, rec.started)
                    elif p.kind == goreplay.RESPONSE:
                        rec_ = pending.get(p.id)
                        if rec_ is not None:
                            rec_.response = goreplay.parse_response(p.data, p.latency)
                except ValueError as exc:
                    problems.append(f"payload {payloads} (id {p.id}): {exc}; skipped")
                while ready and ready[0][0] < latest - HOLD:
                    done = heapq.heappop(ready)[2]
                    pending.pop(done.id, None)
                    yield done
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            if not payloads:
                raise ShadowProxyError(f"{path}: not a readable gzip file ({exc})") from None
            problems.append(f"after payload {payloads}: the compressed file is cut short "
                            f"({exc}); what follows is lost")
    if not payloads and problems:
        raise ShadowProxyError(f"{path}: not a GoReplay file ({problems[0]})")
    if say:
        for problem in problems:
            log.warning("%s: %s", path, problem)
    while ready:
        yield heapq.heappop(ready)[2]


def is_har(path: str) -> bool:
    if path.endswith(".har"):
        return True
    if path.endswith((".gor", ".gz", ".log")):
        return False
    with open(path, "rb") as fh:
        return fh.read(64).lstrip().startswith(b"{")


def _read(path: str, *, say: bool = True) -> Iterator[Recorded]:
    try:
        if is_har(path):
            yield from sorted(read_har(path), key=lambda r: r.started)
        else:
            yield from _goreplay(path, say=say)
    except OSError as exc:
        raise ShadowProxyError(f"cannot read recording {path}: {exc.strerror or exc}") \
            from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ShadowProxyError(f"{path}: not a HAR 1.2 file ({exc})") from None


class Recordings:
    """The recorded exchanges of ``paths``: counted (and checked) when made, streamed
    in start order each time they are iterated."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = list(paths)
        self.total = 0
        self.masked = False        # a recorded answer holds a mask
        mark = MASK_PREFIX.encode()
        for path in self.paths:
            for r in _read(path):
                self.total += 1
                if not self.masked and r.response is not None and (
                        mark in r.response.body
                        or any(MASK_PREFIX in v for _, v in r.response.headers)):
                    self.masked = True

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Recorded]:
        return heapq.merge(*(_read(p, say=False) for p in self.paths),
                           key=lambda r: r.started)


def load(paths: Iterable[str]) -> list[Recorded]:
    """Every recorded exchange of ``paths``, sorted by start time, in memory (for small
    recordings and tests; a replay streams them: :class:`Recordings`)."""
    return list(Recordings(paths))
