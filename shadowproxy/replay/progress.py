"""Progress of a replay: a bar redrawn in place on a terminal (done/total, rate,
differences so far, ETA), plain lines every few seconds otherwise (CI logs, cron mail),
both on stderr so that stdout stays the command's result."""

from __future__ import annotations

import logging
import shutil
import sys
import time
from typing import TextIO


def _eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, out: TextIO | None = None, *, interval: float | None = None
                 ) -> None:
        self.total = total
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.t0 = time.monotonic()
        self._last = 0.0
        self._drawn = False      # a bar is on the terminal's current line

    def clear(self) -> None:
        """Wipe the bar off its line, so that what is written next (a warning) starts
        at the left margin; the next update draws it again."""
        if self._drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._drawn = False

    def filter(self, record: logging.LogRecord) -> bool:
        """As a logging filter on the handlers writing to the terminal: each message
        gets a line of its own instead of being written onto the end of the bar."""
        self.clear()
        return True

    def line(self, done: int, diffs: int) -> str:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        return (f"{done}/{self.total} done, {rate:.1f}/s, {diffs} with differences, "
                f"ETA {_eta(eta)}")

    def update(self, done: int, diffs: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        text = self.line(done, diffs)
        if self.tty:
            width = shutil.get_terminal_size((80, 20)).columns
            bar_w = max(10, width - len(text) - 4)
            filled = bar_w * done // self.total if self.total else bar_w
            self.out.write(f"\r[{'#' * filled}{'.' * (bar_w - filled)}] {text}"[:width])
            self._drawn = True
            if final:
                self.out.write("\n")
                self._drawn = False
        else:
            self.out.write(f"replay: {text}\n")
        self.out.flush()
