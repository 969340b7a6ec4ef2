"""The recording writer: a bounded queue and one thread that masks and writes.

It runs in a shadow process (at ``shadow.nice``), never in a worker: a worker only
hands each sampled exchange over (:mod:`shadowproxy.record.hook`). :meth:`offer` never
blocks; a full queue drops the exchange as ``record_dropped{queue_full}``. The thread
masks secrets exactly as the store does (the run's :class:`~shadowproxy.redact.Redactor`:
keyed masks, decoded bodies, binary bodies left out: a request's with an
``X-Shadowproxy-Body-Omitted: SIZE`` header, so that a replay does not send it without
its body), writes GoReplay payloads (:mod:`shadowproxy.record.goreplay`) and counts
``recorded``.

Files: ``DIR/shadowproxy-NAME-YYYYmmddTHHMMSSZ.gor``, one open at a time per writer,
closed when it reaches ``record.rotate.size`` or ``record.rotate.age`` (then gzipped to
``.gor.gz`` when ``record.rotate.compress``); closed files older than ``record.keep.age``
are deleted, then the oldest while all together exceed ``record.keep.size``. A disk that
is full (ENOSPC, EDQUOT) is logged once until a write succeeds again; every exchange it
refuses is counted ``record_dropped{disk_full}`` (other write errors:
``record_dropped{write_error}``).
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

from ..config import RecordConfig
from ..models import Exchange, RequestRecord, ResponseRecord
from ..redact import Redactor
from ..stats import Stats
from . import goreplay

log = logging.getLogger("shadowproxy.record")

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
PREFIX = "shadowproxy-"
# shadowproxy-WRITER-YYYYmmddTHHMMSSZ[-N].gor[.gz]
_NAME = re.compile(r"^shadowproxy-(.+)-\d{8}T\d{6}Z(?:-\d+)?\.gor(\.gz)?$")

# what a worker hands over: ("r", started, method, target, headers, body,
# primary's ResponseRecord fields, endpoint)
Item = tuple[Any, ...]


class RecordWriter:
    def __init__(self, cfg: RecordConfig, redactor: Redactor, name: str, stats: Stats,
                 opener: Callable[[str], IO[bytes]] | None = None) -> None:
        """``name`` distinguishes this writer's files (one per process); ``stats``: the
        process's counters, which the thread adds to on the event loop's thread;
        ``opener``: how a new file is opened (default: append, binary)."""
        self.cfg = cfg
        self.redactor = redactor
        self.name = name
        self.stats = stats
        self._open = opener or (lambda p: open(p, "ab"))  # noqa: SIM115
        self._q: queue.Queue[Item | None] = queue.Queue(cfg.queue)
        self._counts: Counter[tuple[str, str, str]] = Counter()   # the thread's, not yet added
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._file: IO[bytes] | None = None
        self.path: str | None = None
        self._opened = 0.0
        self._size = 0
        self._full = False          # the disk is full: logged once until a write succeeds
        self._failed_at = 0.0

    # ------------------------------------------------------------ the loop's side

    def offer(self, item: Item) -> bool:
        """Queue an exchange for writing; False (counted) when the queue is full."""
        try:
            self._q.put_nowait(item)
        except queue.Full:
            self.stats.add("record_dropped", "queue_full", item[-1])
            return False
        return True

    def send(self, item: Item) -> str | None:
        """:meth:`offer` as a :class:`~shadowproxy.record.hook.Recorder` hands over (a
        full queue is counted here, so no reason is returned)."""
        self.offer(item)
        return None

    @property
    def depth(self) -> int:
        return self._q.qsize()

    def start(self) -> None:
        """Start the thread (on the event loop whose thread the counts are added on)."""
        self._loop = asyncio.get_running_loop()
        os.makedirs(self.cfg.dir, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"record-{self.name}",
                                        daemon=True)
        self._thread.start()

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), close the file; the counts are all
        added when this returns."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None

        def stop() -> None:
            try:
                self._q.put(None, timeout=timeout)
            except queue.Full:
                pass
            thread.join(timeout)
        # the thread's last counts are queued on the loop before this await resumes
        await asyncio.get_running_loop().run_in_executor(None, stop)

    # ------------------------------------------------------------ the thread

    def _count(self, outcome: str, reason: str, endpoint: str) -> None:
        self._counts[(outcome, reason, endpoint)] += 1

    def _push(self) -> None:
        """Hand the thread's counts to the loop (once a burst of writes is flushed)."""
        if self._counts and self._loop is not None:
            rows = list(self._counts.items())
            self._counts.clear()
            try:
                self._loop.call_soon_threadsafe(self.stats.merge, rows)
            except RuntimeError:    # the loop is closed: nobody reads the counts any more
                pass

    def _run(self) -> None:
        while True:
            try:
                item = self._q.get(timeout=1.0)
            except queue.Empty:
                item = ()
            if item is None:
                break
            if item:
                self._write(item)
            if self._file is not None and (self._q.empty() or not item):
                self._flush()
            if self._file is not None and time.time() - self._opened >= self.cfg.rotate.age:
                self._rotate()
            if self._q.empty():
                self._push()
        if self._file is not None:
            self._flush()
            self._rotate()
        self._push()

    def _write(self, item: Item) -> None:
        _, started, method, target, headers, body, fields, endpoint = item
        path, _, query = target.partition("?")
        ex = Exchange(id="", started=started, endpoint=endpoint, route=None,
                      request=RequestRecord(method, path, query, tuple(headers), body),
                      primary=ResponseRecord(*fields), candidate=ResponseRecord(0))
        try:
            red = self.redactor.redact_exchange(ex)
        except Exception:
            log.exception("recording: masking failed; the exchange is not recorded")
            self._count("record_dropped", "internal_error", endpoint)
            return
        req = red.request
        target = req.path + ("?" + req.query if req.query or "?" in target else "")
        rheaders = list(req.headers)
        if body and not req.body:
            # left out (binary): said, so that a replay does not send it without its body
            rheaders.append((goreplay.OMITTED_HEADER, str(len(body))))
        if not any(k.lower() == "host" for k, _ in rheaders):
            # GoReplay's readers expect the Host a client sent: the one the proxy saw
            fwd = [v for k, v in rheaders if k.lower() == "x-forwarded-host"]
            if fwd:
                rheaders.insert(0, ("Host", fwd[-1].rsplit(",", 1)[-1].strip()))
        try:
            if self._file is None:
                self._new_file()
            assert self._file is not None
            self._size += goreplay.write_exchange(
                self._file, os.urandom(12).hex(), started, req.method, target, rheaders,
                req.body, red.primary)
        except OSError as exc:
            self._failed(exc, endpoint)
            return
        if self._full:
            log.warning("recording: writing to %s again", self.cfg.dir)
            self._full = False
        self._count("recorded", "", endpoint)
        if self._size >= self.cfg.rotate.size:
            self._flush()
            self._rotate()

    def _flush(self) -> None:
        try:
            self._file.flush()  # type: ignore[union-attr]
        except OSError as exc:
            # buffered exchanges already counted recorded are lost with the buffer
            self._failed(exc, "")
            self._close_quietly()

    def _failed(self, exc: OSError, endpoint: str) -> None:
        if exc.errno in _FULL:
            self._count("record_dropped", "disk_full", endpoint)
            if not self._full:
                log.error("recording: the disk of %s is full (%s); exchanges are dropped "
                          "and counted record_dropped{disk_full} until it has room",
                          self.cfg.dir, exc.strerror)
                self._full = True
            return
        self._count("record_dropped", "write_error", endpoint)
        now = time.monotonic()
        if now - self._failed_at > 60.0:
            self._failed_at = now
            log.error("recording: cannot write to %s: %s", self.cfg.dir, exc)

    def _close_quietly(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def _new_file(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = os.path.join(self.cfg.dir, f"{PREFIX}{self.name}-{stamp}.gor")
        n = 1
        while os.path.exists(path) or os.path.exists(path + ".gz"):
            n += 1
            path = os.path.join(self.cfg.dir, f"{PREFIX}{self.name}-{stamp}-{n}.gor")
        self._file = self._open(path)
        self.path = path
        self._opened = time.time()
        self._size = 0

    def _rotate(self) -> None:
        """Close the file (gzip it when asked), then apply ``record.keep``."""
        path = self.path
        self._close_quietly()
        self.path = None
        if path is not None and self.cfg.rotate.compress and os.path.exists(path):
            try:
                with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
                os.unlink(path)
            except OSError as exc:
                log.error("recording: cannot compress %s: %s (kept uncompressed)", path, exc)
                try:
                    os.unlink(path + ".gz")
                except OSError:
                    pass
        self._keep()

    def _keep(self) -> None:
        keep = self.cfg.keep
        now = time.time()
        files = []
        try:
            names = os.listdir(self.cfg.dir)
        except OSError:
            return
        for name in names:
            if not _NAME.match(name):
                continue
            p = os.path.join(self.cfg.dir, name)
            if p == self.path:
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(s for _m, s, _p in files)
        # the newest uncompressed file of each other writer (shadow process) may be
        # open: it is left to that writer
        newest: dict[str, str] = {}
        for _m, _s, p in files:
            m = _NAME.match(os.path.basename(p))
            if m and not m.group(2) and m.group(1) != self.name:
                newest[m.group(1)] = p
        busy = set(newest.values())
        for mtime, size, p in files:
            if p in busy:
                continue
            if now - mtime > keep.age or total > keep.size:
                try:
                    os.unlink(p)
                    total -= size
                except OSError:
                    pass
