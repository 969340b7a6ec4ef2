"""Mergeable latency sketches: HdrHistogram, stored in its standard encoding.

A rollup keeps, per minute and endpoint, one sketch per side (primary, candidate,
secondary) instead of every latency; a reader merges the minutes of its window and
reads quantiles off the merged sketch. HdrHistogram was chosen by measurement over
DDSketch, KLL/REQ (Apache DataSketches) and t-digests (docs/performance.md, "Reads that
scale"): at two significant figures its error is relative (every reported value is
within 1/128 of the true one: under 0.8 %, reported at the top of its bucket, the
same bias on both sides of a ratio), a minute of 600 latencies is ~320 bytes, decoding
one takes ~16 µs, and the bytes are HdrHistogram's "V2 compressed" encoding that the
Java, C, Go and Rust implementations read too: a stored sketch stays readable.

Values are whole microseconds from :data:`LOWEST` to :data:`HIGHEST` (1 µs to ~16.7
minutes); anything outside is clamped (HdrHistogram would drop it silently). The
range and precision are part of the stored format: sketches of different ranges do
not merge, so they never change.

A sketch of at most :data:`RAW_MAX` values keeps the values themselves (a quiet
endpoint's minute holds a handful; a histogram costs ~3 KB of counters and ~40 µs to
build and encode, which the write path would pay for every minute and endpoint of a
batch); beyond that it is a histogram. Stored form: one tag byte, then either the
values (``0``: little-endian unsigned 64-bit microseconds) or HdrHistogram's V2
compressed encoding (``1``). Quantiles of kept values are exact.
"""

from __future__ import annotations

import base64
import ctypes
import math
import threading
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate

import pyhdrh
from hdrh.codec import PayloadHeader, ext_header_size, payload_header_size
from hdrh.histogram import HdrHistogram

LOWEST = 1                   # µs
HIGHEST = 1_000_000_000      # µs (16.7 minutes: beyond any timeout)
DIGITS = 2                   # significant figures: relative error < 1/128
RAW_MAX = 16                 # values kept as they are before a histogram is built
_RAW, _HDR = 0, 1            # the stored form's tag byte
_EXT_HEADER: int = ext_header_size
_PAYLOAD_HEADER: int = payload_header_size
_WORD = 8                    # bytes a counter (HdrHistogram's V2 payload)
_LOCAL = threading.local()   # a decoding scratch array per thread


class Sketch:
    """Latencies (seconds) of one side over some span; merges with others."""

    __slots__ = ("_h", "_raw")

    def __init__(self) -> None:
        self._h: HdrHistogram | None = None    # None while the values fit in _raw
        self._raw: list[int] = []              # µs, while _h is None

    def _hist(self) -> HdrHistogram:
        h = self._h
        if h is None:
            h = self._h = HdrHistogram(LOWEST, HIGHEST, DIGITS)
            for us in self._raw:
                h.record_value(us)
            self._raw = []
        return h

    def _add_us(self, us: int) -> None:
        if self._h is None:
            self._raw.append(us)
            if len(self._raw) > RAW_MAX:
                self._hist()
        else:
            self._h.record_value(us)

    def add(self, seconds: float) -> None:
        us = int(seconds * 1e6 + 0.5)
        self._add_us(LOWEST if us < LOWEST else HIGHEST if us > HIGHEST else us)

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    @property
    def count(self) -> int:
        return len(self._raw) if self._h is None else int(self._h.get_total_count())

    def merge(self, other: Sketch) -> Sketch:
        """Adds ``other`` into this one; → self."""
        if other._h is None:
            for us in other._raw:
                self._add_us(us)
        elif other.count:
            self._hist().add(other._h)
        return self

    def merge_bytes(self, blob: bytes | memoryview | None) -> Sketch:
        if not blob:
            return self
        data = bytes(blob)
        if data[0] == _RAW:
            values = array("Q")
            values.frombytes(data[1:])
            for us in values:
                self._add_us(us)
        elif data[0] == _HDR:
            self._merge_hdr(data)
        else:
            raise ValueError(f"unknown latency sketch format {data[0]}")
        return self

    def _merge_hdr(self, data: bytes) -> None:
        """Adds a stored histogram (tag, then the V2 compressed encoding): decoded by
        HdrHistogram's C codec into a scratch array and added to this one's counts in C,
        without building a histogram object for it (a day's window merges 1,440 a side
        and endpoint: 20 µs each instead of 60)."""
        h = self._hist()
        payload = zlib.decompress(data[1 + _EXT_HEADER:])
        head = PayloadHeader.from_buffer_copy(payload)
        if (head.lowest_trackable_value, head.highest_trackable_value,
                head.significant_figures, head.normalizing_index_offset) != \
                (LOWEST, HIGHEST, DIGITS, 0):
            h.decode_and_add(base64.b64encode(data[1:]))     # not ours: the general path
            return
        scratch = getattr(_LOCAL, "scratch", None)
        if scratch is None:
            scratch = _LOCAL.scratch = (ctypes.c_uint64 * h.counts_len)()
        else:
            ctypes.memset(scratch, 0, ctypes.sizeof(scratch))
        found = pyhdrh.decode(payload, _PAYLOAD_HEADER, ctypes.addressof(scratch),
                              h.counts_len, _WORD)
        if not found["total"]:
            return
        pyhdrh.add_array(ctypes.addressof(h.counts), ctypes.addressof(scratch),
                         h.counts_len, _WORD)
        h.total_count += found["total"]
        h.min_value = min(h.min_value, h.get_value_from_index(found["min_nonzero_index"]))
        h.max_value = max(h.max_value, h.get_highest_equivalent_value(
            h.get_value_from_index(found["max_nonzero_index"])))

    def to_bytes(self) -> bytes:
        if self._h is None:
            return bytes((_RAW,)) + array("Q", self._raw).tobytes()
        # encode() gives the V2 compressed encoding wrapped in base64 (its "HISTF..."
        # log form); the store keeps the binary it wraps
        return bytes((_HDR,)) + base64.b64decode(self._h.encode())

    @classmethod
    def from_bytes(cls, blob: bytes | memoryview | None) -> Sketch:
        return cls().merge_bytes(blob)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) in seconds, nearest rank: the smallest value with at
        least ``q`` of the values at or below it (to the sketch's precision, reported at
        the top of its bucket); None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        total = self.count
        if not total:
            return [None] * len(qs)
        h = self._h
        if h is None:
            values = sorted(self._raw)
            return [values[max(1, math.ceil(q * total - 1e-9)) - 1] / 1e6 for q in qs]
        out: list[float | None] = []
        cumulative = list(accumulate(h.counts))        # one pass for every quantile
        for q in qs:
            target = max(1, math.ceil(q * total - 1e-9))
            index = bisect_left(cumulative, target)
            out.append(float(h.get_highest_equivalent_value(
                h.get_value_from_index(index))) / 1e6)
        return out

    def cumulative(self) -> list[tuple[float, int]]:
        """``(value, count of values ≤ value)`` ascending, in seconds: every distinct
        value while the sketch holds them raw, else the top of every non-empty bucket
        (exact counts at those edges: what an anytime-valid quantile bound needs),
        after the value just below the smallest, with count 0."""
        out: list[tuple[float, int]] = []
        h = self._h
        if h is None:
            values = sorted(self._raw)
            if values:
                out.append(((values[0] - 1) / 1e6, 0))
            for i, us in enumerate(values):
                if out and out[-1][0] == us / 1e6:
                    out[-1] = (us / 1e6, i + 1)
                else:
                    out.append((us / 1e6, i + 1))
            return out
        total = 0
        for i, n in enumerate(h.counts):
            if n:
                if not total:
                    out.append(((h.get_value_from_index(i) - 1) / 1e6, 0))
                total += n
                out.append((float(h.get_highest_equivalent_value(
                    h.get_value_from_index(i))) / 1e6, total))
        return out

    def min(self) -> float | None:
        """The smallest value (to the sketch's precision); None when empty."""
        if self._h is None:
            return min(self._raw) / 1e6 if self._raw else None
        return float(self._h.get_min_value()) / 1e6 if self.count else None

    def max(self) -> float | None:
        if self._h is None:
            return max(self._raw) / 1e6 if self._raw else None
        return float(self._h.get_max_value()) / 1e6 if self.count else None

    def mean(self) -> float | None:
        if self._h is None:
            return sum(self._raw) / len(self._raw) / 1e6 if self._raw else None
        if not self.count:
            return None
        h = self._h
        # each bucket at its middle (as HdrHistogram's own mean), the counters read once
        total = 0.0
        for i, n in enumerate(h.counts):
            if n:
                lo = h.get_value_from_index(i)
                total += n * (lo + h.get_highest_equivalent_value(lo)) / 2
        return float(total) / self.count / 1e6
