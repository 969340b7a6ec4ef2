"""Per-minute aggregates: what readers need, written with the results.

``check``, ``report``, the admin API and the UI read a window of a day or more; a
day of a fleet's traffic is millions of exchanges. They read these instead of rows:

:class:`Minute`, per minute and endpoint
    verdict counts, 5xx and transport failures of each side, the failures of primary
    and candidate *on the same exchange* (both / candidate only / primary only: the
    sufficient statistics of the paired error test), a latency :class:`Sketch` per
    side over the exchanges where both answered, and a bounded sample of those
    latency pairs (below);
``fields``, per minute, endpoint, field and difference kind
    difference rows, rows judged noise when written, and exchanges with the field
    (each exchange counted under the first kind it shows on the field, so the kinds of
    a field add up to its distinct exchanges);
``diff_sets``, per minute and endpoint
    how many ``diff`` exchanges had each set of real (not noise) fields: a field the
    noise learner learns as noise later forgives exactly the exchanges whose whole set
    it covers (:func:`shadowproxy.checks.evaluate.effective_diffs`) without reading
    them. A set of more than :data:`MAX_SET_FIELDS` fields is kept as
    :data:`MANY_FIELDS`, which is never forgiven.

Every part merges by addition (the pair sample by its key, below), so minutes merge
into windows, and the rows of many writers (a fleet's instances) merge the same way.

The latency pair sample
    Each exchange has a key: the first 8 bytes of BLAKE2b of its id, a uniform 64-bit
    number fixed by the id (ids are random). A minute keeps the :data:`PAIR_SAMPLE`
    pairs of smallest key (a bottom-k sample). Merged over a window, the pairs whose key
    lies below the smallest "k-th key" of the minutes that kept only part of theirs
    are exactly the window's pairs of key below that bound: a uniform sample of the
    window's pairs, the same whichever way the minutes were written or merged; of it a
    reader keeps the :data:`PAIR_WINDOW` of smallest key. A window with fewer pairs
    has all of them.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .sketch import Sketch

PAIR_SAMPLE = 128         # latency pairs a minute keeps (of smallest key)
PAIR_WINDOW = 16384       # latency pairs a reader takes from a window (of smallest key)
MAX_SET_FIELDS = 16       # real fields of one diff exchange kept as a set
MANY_FIELDS = "*"         # the set of an exchange with more fields (never forgiven)
SEP = "\n"                # joins a set's fields (a field name never holds a newline)
MAX_KEY = (1 << 64) - 1
K = TypeVar("K")                # what :func:`aggregate` groups by

COUNTS = ("exchanges", "matches", "diffs", "noise", "errors", "candidate_5xx",
          "primary_5xx", "candidate_errors", "primary_errors", "latency_pairs",
          "both_failed", "candidate_only_failed", "primary_only_failed")
_VERDICT_COL = {"match": 1, "diff": 2, "noise": 3, "error": 4}


def pair_key(exchange_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(exchange_id.encode(), digest_size=8).digest(),
                          "little")


def pair_ok(p_status: int, p_error: str | None, c_status: int, c_error: str | None) -> bool:
    """Both sides answered: the exchange's latencies form a pair."""
    return p_error is None and c_error is None and p_status > 0 and c_status > 0


def set_key(fields: Iterable[str]) -> str:
    unique = sorted(set(fields))
    return MANY_FIELDS if len(unique) > MAX_SET_FIELDS else SEP.join(unique)


NO_SECONDARY = math.nan     # a pair's secondary latency where there is none
# The stored pair sample (``rollup_blobs`` of kind ``pairs``): a flag byte, then n + 1
# little-endian unsigned 64-bit numbers (the bound, then the n keys ascending), then the
# latencies (little-endian doubles, seconds), pair after pair.
#   PAIRS_V1 (flag 0 or 1): 2 latencies a pair, primary and candidate: 9 + 24n bytes
#   PAIRS_V2 (flag | 2): 3 a pair, primary, candidate and secondary (NaN where the
#       secondary did not answer): 9 + 32n bytes; written when a pair has a secondary
# Flag bit 0: the bound holds (some pairs of the span were left out). A pair sample
# written before V2 (store schema 3 and older, either engine) reads as pairs without
# a secondary.
_BOUNDED, _SECONDARY = 1, 2
PAIRS_V1, PAIRS_V2 = 0, _SECONDARY


def _width(flag: int) -> int:
    if flag & ~(_BOUNDED | _SECONDARY):
        raise ValueError(f"unknown latency pair sample format (flag byte {flag})")
    return 3 if flag & _SECONDARY else 2


def _key(it: tuple[int, float, float, float]) -> int:
    return it[0]


@dataclass(slots=True)
class Pairs:
    """A bottom-k sample of latency pairs: ``(key, primary, candidate, secondary)`` (the
    secondary's latency NaN where it did not answer, or the pair was stored before the
    sample kept it), and whether it holds every pair of its span (``complete``) or only
    those of key < ``bound``."""

    items: list[tuple[int, float, float, float]] = field(default_factory=list)
    bound: int = MAX_KEY + 1        # every pair of the span with key < bound is here

    def add(self, key: int, primary: float, candidate: float, secondary: float = NO_SECONDARY,
            k: int = PAIR_SAMPLE) -> None:
        if key >= self.bound:
            return
        self.items.append((key, primary, candidate, secondary))
        if len(self.items) > 2 * k:
            self.trim(k)

    def add_many(self, items: Iterable[tuple[int, float, float, float]],
                 k: int = PAIR_SAMPLE) -> None:
        """:meth:`add` of many ``(key, primary, candidate, secondary)``."""
        bound = self.bound
        self.items.extend(it for it in items if it[0] < bound)
        if len(self.items) > 2 * k:
            self.trim(k)

    def trim(self, k: int) -> None:
        """Keep the ``k`` of smallest key (and lower the bound accordingly)."""
        below = [it for it in self.items if it[0] < self.bound]
        below.sort(key=_key)    # a sort beats a heap when k is near the length (at most 2k)
        if len(below) > k:
            below = below[:k + 1]
            self.bound = below[k][0]
            below = below[:k]
        self.items = below

    def merge(self, other: Pairs, k: int = PAIR_WINDOW) -> None:
        """Adds ``other``'s pairs; keeps at most ``2k`` (the ``k`` of smallest key
        are kept exactly: merging is associative)."""
        self.bound = min(self.bound, other.bound)
        self.items.extend(other.items)
        if len(self.items) > 2 * k:
            self.trim(k)

    def merge_bytes(self, blob: bytes | memoryview | None, k: int = PAIR_WINDOW) -> None:
        """:meth:`merge` of a stored sample, decoding only its pairs below the bound
        (a stored sample is ascending by key)."""
        if not blob:
            return
        data = bytes(blob)
        width = _width(data[0])
        n = (len(data) - 9) // (8 + 8 * width)
        keys = array("Q")
        keys.frombytes(data[9:9 + 8 * n])
        if data[0] & _BOUNDED:
            self.bound = min(self.bound, int.from_bytes(data[1:9], "little"))
        cut = bisect_left(keys, self.bound)
        if not cut:
            return
        vals = array("d")
        vals.frombytes(data[9 + 8 * n:9 + 8 * n + 8 * width * cut])
        if width == 3:
            self.items.extend(zip(keys[:cut], vals[0::3], vals[1::3], vals[2::3],
                                  strict=True))
        else:
            self.items.extend((key, p, c, NO_SECONDARY) for key, p, c in
                              zip(keys[:cut], vals[0::2], vals[1::2], strict=True))
        if len(self.items) > 2 * k:
            self.trim(k)

    def window(self, k: int = PAIR_WINDOW) -> tuple[list[float], list[float], list[float]]:
        """The sample's pairs, ascending by key: (primary latencies, candidate latencies,
        secondary latencies, NaN where there is none)."""
        self.trim(k)            # leaves the items below the bound, ascending by key
        chosen = self.items
        return ([it[1] for it in chosen], [it[2] for it in chosen],
                [it[3] for it in chosen])

    def to_bytes(self, k: int = PAIR_SAMPLE) -> bytes:
        """The stored form (:data:`PAIRS_V1`, or :data:`PAIRS_V2` when a pair has the
        secondary's latency) of the ``k`` pairs of smallest key (a minute's
        :data:`PAIR_SAMPLE`; an hour's, :mod:`.hours`, :data:`PAIR_WINDOW`)."""
        self.trim(k)
        items = self.items      # trim left them ascending by key
        keys = array("Q", [self.bound if self.bound <= MAX_KEY else MAX_KEY])
        keys.extend([it[0] for it in items])
        with_secondary = any(it[3] == it[3] for it in items)     # any not NaN
        width = 3 if with_secondary else 2
        vals = array("d", [x for it in items for x in it[1:1 + width]])
        flag = (_BOUNDED if self.bound <= MAX_KEY else 0) | (_SECONDARY if with_secondary
                                                              else 0)
        return bytes((flag,)) + keys.tobytes() + vals.tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes | memoryview | None) -> Pairs:
        out = cls()
        out.merge_bytes(blob, k=1 << 62)
        return out


@dataclass(slots=True)
class Minute:
    """The aggregate of one endpoint's exchanges over one span (a minute, or a window)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(COUNTS))
    primary: Sketch = field(default_factory=Sketch)
    candidate: Sketch = field(default_factory=Sketch)
    secondary: Sketch = field(default_factory=Sketch)
    pairs: Pairs = field(default_factory=Pairs)
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])   # of the pairs' latencies
    # (field, kind) → [rows, noise rows, exchanges]
    fields: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    diff_sets: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> int:
        return self.counts[COUNTS.index(name)]

    def add_exchange(self, *, exchange_id: str, verdict: str, p_status: int,
                     p_error: str | None, p_latency: float, c_status: int,
                     c_error: str | None, c_latency: float, s_status: int | None,
                     s_error: str | None, s_latency: float | None) -> None:
        """One exchange's part in the counts, sketches and pair sample (the differences
        go in with :meth:`add_differences`)."""
        if s_error is not None:
            s_status = None
        self.add_columns((exchange_id,), (verdict,), (p_status,), (p_error,), (p_latency,),
                         (c_status,), (c_error,), (c_latency,), (s_status,), (s_latency,))

    def add_columns(self, ids: Sequence[str], verdicts: Sequence[str],
                    p_status: Sequence[int], p_error: Sequence[str | None],
                    p_latency: Sequence[float], c_status: Sequence[int],
                    c_error: Sequence[str | None], c_latency: Sequence[float],
                    s_status: Sequence[int | None], s_latency: Sequence[float | None]) -> None:
        """Many exchanges' part in the counts, sketches and pair sample, one sequence a
        column (:func:`aggregate`, into this one)."""
        aggregate({None: self}, [None] * len(ids), ids, verdicts, p_status, p_error,
                  p_latency, c_status, c_error, c_latency, s_status, s_latency)

    def add_differences(self, verdict: str, diffs: Sequence[tuple[str, str, bool]]) -> None:
        """One exchange's differences: ``(field, kind, noise)`` each."""
        seen: set[str] = set()
        fields = self.fields
        real: list[str] = []
        for fld, kind, noise in diffs:
            row = fields.get((fld, kind))
            if row is None:
                row = fields[(fld, kind)] = [0, 0, 0]
            row[0] += 1
            if noise:
                row[1] += 1
            else:
                real.append(fld)
            if fld not in seen:
                seen.add(fld)
                row[2] += 1
        if verdict == "diff":
            key = set_key(real)
            self.diff_sets[key] = self.diff_sets.get(key, 0) + 1

    def merge(self, other: Minute) -> Minute:
        for i, v in enumerate(other.counts):
            self.counts[i] += v
        self.primary.merge(other.primary)
        self.candidate.merge(other.candidate)
        self.secondary.merge(other.secondary)
        self.pairs.merge(other.pairs)
        self.sums[0] += other.sums[0]
        self.sums[1] += other.sums[1]
        for key, row in other.fields.items():
            mine = self.fields.get(key)
            if mine is None:
                self.fields[key] = list(row)
            else:
                for i in range(3):
                    mine[i] += row[i]
        for fields, n in other.diff_sets.items():
            self.diff_sets[fields] = self.diff_sets.get(fields, 0) + n
        return self


def minute_of(t: float) -> int:
    """The start (whole seconds) of the minute ``t`` falls in."""
    return int(t // 60) * 60


def aggregate(out: dict[K, Minute], keys: Sequence[K], ids: Sequence[str],
              verdicts: Sequence[str], p_status: Sequence[int], p_error: Sequence[str | None],
              p_latency: Sequence[float], c_status: Sequence[int],
              c_error: Sequence[str | None], c_latency: Sequence[float],
              s_status: Sequence[int | None], s_latency: Sequence[float | None]) -> None:
    """Adds exchanges, one sequence a column, to ``out[keys[i]]`` (made as needed): a
    writer's batch keyed by (minute, endpoint), or a ragged end's rows by endpoint.

    The cost is per exchange, not per minute and endpoint (a batch of a quiet service,
    or of one with hundreds of endpoints, has few exchanges in each): each exchange's
    flags come out of one pass over the whole batch, ``Counter`` counts the distinct
    (key, flags) combinations in C, and only those are added to the counters; latencies
    go to their sketches as lists (binned when stored, :mod:`.sketch`). A secondary
    counts where its status is positive and it has a latency."""
    flags = [(v, 500 <= cs <= 599, 500 <= ps <= 599, ce is not None, pe is not None,
              ce is not None or cs <= 0 or 500 <= cs <= 599,
              pe is not None or ps <= 0 or 500 <= ps <= 599)
             for v, ps, pe, cs, ce in zip(verdicts, p_status, p_error, c_status, c_error,
                                          strict=True)]
    for (key, (v, c5, p5, cerr, perr, cf, pf)), m in Counter(zip(keys, flags, strict=True)).items():
        mm = out.get(key)
        if mm is None:
            mm = out[key] = Minute()
        n = mm.counts
        n[0] += m
        n[_VERDICT_COL.get(v, 4)] += m
        if c5:
            n[5] += m
        if p5:
            n[6] += m
        if cerr:
            n[7] += m
        if perr:
            n[8] += m
        if cf or pf:
            n[10 if cf and pf else 11 if cf else 12] += m
    # latency pairs (both answered) and the secondary's latencies, per key
    lat: dict[K, tuple[list[str], list[float], list[float], list[float]]] = {}
    for key, x, ps, pe, pl, cs, ce, cl, ss, sl in zip(
            keys, ids, p_status, p_error, p_latency, c_status, c_error, c_latency,
            s_status, s_latency, strict=True):
        if pe is None and ce is None and ps > 0 and cs > 0:
            got = lat.get(key)
            if got is None:
                got = lat[key] = ([], [], [], [])
            got[0].append(x)
            got[1].append(pl)
            got[2].append(cl)
            # the secondary's latency where it answered (as its sketch counts it)
            got[3].append(sl if ss is not None and sl is not None and ss > 0
                          else NO_SECONDARY)
    for key, (xs, pls, cls, sls) in lat.items():
        mm = out[key]
        mm.counts[9] += len(xs)
        mm.sums[0] += sum(pls)
        mm.sums[1] += sum(cls)
        mm.primary.add_many(pls)
        mm.candidate.add_many(cls)
        mm.pairs.add_many(zip(map(pair_key, xs), pls, cls, sls, strict=True))
    if any(st is not None for st in s_status):
        sec: dict[K, list[float]] = {}
        for key, st, sl in zip(keys, s_status, s_latency, strict=True):
            if st is not None and sl is not None and st > 0:
                got_s = sec.get(key)
                if got_s is None:
                    sec[key] = [sl]
                else:
                    got_s.append(sl)
        for key, values in sec.items():
            out[key].secondary.add_many(values)


def rollup(rows: Sequence[Sequence[Any]],
           diffs: Sequence[Sequence[tuple[str, str, bool]] | None]) -> dict[tuple[int, str],
                                                                         Minute]:
    """(minute, endpoint) → the aggregate of a writer's new rows: ``rows`` are exchanges
    rows (:data:`shadowproxy.store.window.EX_COLS`' order, as
    :func:`shadowproxy.store.documents.exchange_row` makes them), ``diffs[i]`` the
    ``(field, kind, noise)`` of row ``i``'s differences (None or empty for none)."""
    out: dict[tuple[int, str], Minute] = {}
    if not rows:
        return out
    cols = list(zip(*rows, strict=True))
    keys = [(int(t // 60) * 60, ep) for t, ep in zip(cols[1], cols[2], strict=True)]
    aggregate(out, keys, cols[0], cols[7], cols[8], cols[16], cols[11], cols[9], cols[17],
              cols[12], cols[10], cols[13])
    for key, verdict, d in zip(keys, cols[7], diffs, strict=True):
        if d:
            out[key].add_differences(verdict, d)
    return out


def forgiven(diff_sets: dict[str, int], noise_now: set[str] | frozenset[str]) -> int:
    """Diff exchanges whose real fields are all learned as noise now."""
    return sum(n for key, n in diff_sets.items()
               if key != MANY_FIELDS and all(f in noise_now for f in key.split(SEP) if f))
