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

The write path does not pay the library's Python ``record_value`` (~4 µs a value):
values added to a sketch stay a plain list until it is read, merged or stored; then
they are binned with HdrHistogram's index arithmetic inlined and encoded by its C codec
(``pyhdrh``) without a histogram object, and a writer adds a batch to a stored minute
with :meth:`Sketch.fold_into`. The bytes are the library's own (tests/store/test_rollup.py
decodes them with it).
"""

from __future__ import annotations

import base64
import ctypes
import math
import struct
import threading
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate

import pyhdrh
from hdrh.codec import (
    PayloadHeader,
    ext_header_size,
    get_compression_cookie,
    get_encoding_cookie,
    payload_header_size,
)
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
# HdrHistogram's counts index of a value, for this range and precision (checked against
# the library when this module loads, below): the bucket is how far the value reaches
# past the first 2**_HALF_MAG+1 sub-buckets, the sub-bucket its top bits
_HALF_MAG = 7                # log2(sub-buckets) - 1: 256 sub-buckets hold 2 digits
_SUB_MASK = (1 << (_HALF_MAG + 1)) - 1
_COUNTS_LEN = 3072           # counters for LOWEST..HIGHEST
_V2_HEADER = struct.Struct(">IIIIQQd")      # HdrHistogram's V2 payload header
_V2_OUTER = struct.Struct(">II")            # its compressed form's header: cookie, length
_ENCODING_COOKIE: int = get_encoding_cookie()
_COMPRESSION_COOKIE: int = get_compression_cookie()


def _index(us: int) -> int:
    b = (us | _SUB_MASK).bit_length() - (_HALF_MAG + 1)
    return (b << _HALF_MAG) + (us >> b)


def _bin(counts: ctypes.Array[ctypes.c_uint64], values: Iterable[int]) -> int:
    """Adds ``values`` (µs, in range) to HdrHistogram ``counts``; → the highest index
    touched (-1 for none). The library's ``record_value`` costs ~4 µs a value in Python;
    this ~0.3 µs."""
    top = -1
    for us in values:
        b = (us | _SUB_MASK).bit_length() - (_HALF_MAG + 1)
        i = (b << _HALF_MAG) + (us >> b)
        counts[i] += 1
        if i > top:
            top = i
    return top


def _record(h: HdrHistogram, values: Sequence[int]) -> None:
    """``h.record_value`` of every value (µs, in range), the counters at C-like speed."""
    if values:
        _bin(h.counts, values)
        h.total_count += len(values)
        h.min_value = min(h.min_value, min(values))
        h.max_value = max(h.max_value, max(values))


def _scratch() -> ctypes.Array[ctypes.c_uint64]:
    """This thread's counters, zeroed."""
    scratch: ctypes.Array[ctypes.c_uint64] | None = getattr(_LOCAL, "scratch", None)
    if scratch is None:
        scratch = _LOCAL.scratch = (ctypes.c_uint64 * _COUNTS_LEN)()
    else:
        ctypes.memset(scratch, 0, ctypes.sizeof(scratch))
    return scratch


def _encode(counts: ctypes.Array[ctypes.c_uint64], top: int) -> bytes:
    """The stored form (tag, then HdrHistogram's V2 compressed encoding) of ``counts``
    up to index ``top``: the bytes the library's ``encode()`` wraps in base64, made
    without building a histogram object (its encoder allocates and zeroes ~27 KB
    each time)."""
    buf: ctypes.Array[ctypes.c_ubyte] | None = getattr(_LOCAL, "encode_buf", None)
    if buf is None:
        buf = _LOCAL.encode_buf = (ctypes.c_ubyte * (_PAYLOAD_HEADER + _COUNTS_LEN * 9))()
    n = pyhdrh.encode(ctypes.addressof(counts), top + 1, _WORD,
                      ctypes.addressof(buf) + _PAYLOAD_HEADER, _COUNTS_LEN * 9)
    _V2_HEADER.pack_into(buf, 0, _ENCODING_COOKIE, n, 0, DIGITS, LOWEST, HIGHEST, 1.0)
    # a 512-byte window: any zlib reader inflates it, and it is ~3 times faster to set
    # up than the default 32 KB for a payload of a few hundred bytes
    packed = zlib.compress(ctypes.string_at(buf, _PAYLOAD_HEADER + n), 6, 9)
    return bytes((_HDR,)) + _V2_OUTER.pack(_COMPRESSION_COOKIE, len(packed)) + packed


def _decode_ours(data: bytes, counts: ctypes.Array[ctypes.c_uint64]) -> dict[str, int] | None:
    """Adds a stored histogram of this range and precision to ``counts`` (C codec);
    None (nothing added) for one of another range or precision."""
    payload = zlib.decompress(data[1 + _EXT_HEADER:])
    head = PayloadHeader.from_buffer_copy(payload)
    if (head.lowest_trackable_value, head.highest_trackable_value,
            head.significant_figures, head.normalizing_index_offset) != \
            (LOWEST, HIGHEST, DIGITS, 0):
        return None
    found: dict[str, int] = pyhdrh.decode(payload, _PAYLOAD_HEADER, ctypes.addressof(counts),
                                          _COUNTS_LEN, _WORD)
    return found


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
            _record(h, self._raw)
            self._raw = []
        return h

    def add(self, seconds: float) -> None:
        """One value. Kept as it is until the sketch is read, merged or stored, however
        many come (a writer's batch: binned at C speed then, not ~4 µs a value now)."""
        us = int(seconds * 1e6 + 0.5)
        us = LOWEST if us < LOWEST else HIGHEST if us > HIGHEST else us
        if self._h is None:
            self._raw.append(us)
        else:
            self._h.record_value(us)

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def add_many(self, seconds: Sequence[float]) -> None:
        """:meth:`add` of each value."""
        us = [int(x * 1e6 + 0.5) for x in seconds]
        if us and (min(us) < LOWEST or max(us) > HIGHEST):
            us = [LOWEST if v < LOWEST else HIGHEST if v > HIGHEST else v for v in us]
        if self._h is None:
            self._raw.extend(us)
        else:
            _record(self._h, us)

    @property
    def count(self) -> int:
        return len(self._raw) if self._h is None else int(self._h.get_total_count())

    def merge(self, other: Sketch) -> Sketch:
        """Adds ``other`` into this one; → self."""
        if other._h is None:
            if self._h is None and len(self._raw) + len(other._raw) <= RAW_MAX:
                self._raw.extend(other._raw)
            else:
                _record(self._hist(), other._raw)
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
            if self._h is None and len(self._raw) + len(values) <= RAW_MAX:
                self._raw.extend(values)
            else:       # binned at C-like speed (a window merges thousands of these)
                _record(self._hist(), values)
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
        scratch = _scratch()
        found = _decode_ours(data, scratch)
        if found is None:
            h.decode_and_add(base64.b64encode(data[1:]))     # not ours: the general path
            return
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
            if len(self._raw) <= RAW_MAX:
                return bytes((_RAW,)) + array("Q", self._raw).tobytes()
            scratch = _scratch()
            return _encode(scratch, _bin(scratch, self._raw))
        # encode() gives the V2 compressed encoding wrapped in base64 (its "HISTF..."
        # log form); the store keeps the binary it wraps
        return bytes((_HDR,)) + base64.b64decode(self._h.encode())

    def fold_into(self, stored: bytes | memoryview | None) -> bytes | None:
        """The stored form of ``stored`` (a stored sketch, or None) with this sketch's
        values added: what a writer puts back for a minute it adds a batch to. While
        this sketch only holds values (a batch's), both are added as counters at C
        speed and encoded without a histogram object; None when both are empty."""
        if not self.count:
            return None if stored is None else bytes(stored)
        if not stored:
            return self.to_bytes()
        data = bytes(stored)
        if self._h is None and data[0] in (_RAW, _HDR):
            new = self._raw
            scratch = _scratch()
            if data[0] == _RAW:
                old = array("Q")
                old.frombytes(data[1:])
                if len(old) + len(new) <= RAW_MAX:
                    return bytes((_RAW,)) + data[1:] + array("Q", new).tobytes()
                return _encode(scratch, max(_bin(scratch, old), _bin(scratch, new)))
            found = _decode_ours(data, scratch)
            if found is not None:
                top = found["max_nonzero_index"] if found["total"] else -1
                return _encode(scratch, max(top, _bin(scratch, new)))
        return Sketch.from_bytes(data).merge(self).to_bytes()     # the general path

    @classmethod
    def from_bytes(cls, blob: bytes | memoryview | None) -> Sketch:
        return cls().merge_bytes(blob)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) in seconds, nearest rank: the smallest value with at
        least ``q`` of the values at or below it (to the sketch's precision, reported at
        the top of its bucket); None when empty."""
        return self.quantiles((q,))[0]

    def _settled(self) -> None:
        """Reads see what a stored sketch would give: values kept as they are only up
        to :data:`RAW_MAX` (more, added by :meth:`add`, are binned first)."""
        if self._h is None and len(self._raw) > RAW_MAX:
            self._hist()

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        self._settled()
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
        self._settled()
        if self._h is None:
            return min(self._raw) / 1e6 if self._raw else None
        return float(self._h.get_min_value()) / 1e6 if self.count else None

    def max(self) -> float | None:
        self._settled()
        if self._h is None:
            return max(self._raw) / 1e6 if self._raw else None
        return float(self._h.get_max_value()) / 1e6 if self.count else None

    def mean(self) -> float | None:
        self._settled()
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


def _check_layout() -> None:
    """The inlined index arithmetic and sizes above are HdrHistogram's for this range
    and precision (a changed constant must fail loudly, not store wrong counts)."""
    h = HdrHistogram(LOWEST, HIGHEST, DIGITS)
    if (h.sub_bucket_half_count_magnitude, h.unit_magnitude, h.counts_len) != \
            (_HALF_MAG, 0, _COUNTS_LEN):
        raise RuntimeError("sketch constants do not match HdrHistogram's layout")


_check_layout()
