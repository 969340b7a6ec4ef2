"""The per-minute aggregates on their own: they merge to what the rows would give.

The pair sample merged from minutes is exactly the window's pairs of smallest key,
however the minutes were split; sketches read quantiles within their stated relative
error; the diff sets forgive exactly what the row-based rule forgives."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.checks.evaluate import effective_diffs
from shadowproxy.store.rollup import (
    MANY_FIELDS,
    MAX_SET_FIELDS,
    PAIR_SAMPLE,
    Minute,
    Pairs,
    forgiven,
    pair_key,
    set_key,
)
from shadowproxy.store.sketch import Sketch


def _pairs(n: int, seed: int) -> list[tuple[str, float, float]]:
    rnd = random.Random(seed)
    return [(f"x{seed}-{i}", rnd.lognormvariate(-4, 1), rnd.lognormvariate(-4, 1))
            for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12), st.integers(0, 10**6))
def test_merged_pair_sample_is_the_windows_bottom_k(sizes: list[int], seed: int) -> None:
    minutes, every = [], []
    for i, n in enumerate(sizes):
        part = Pairs()
        for xid, p, c in _pairs(n, seed * 100 + i):
            part.add(pair_key(xid), p, c)
            every.append((pair_key(xid), p, c))
        # through the stored form, as a reader gets it
        minutes.append(Pairs.from_bytes(part.to_bytes()))
    merged = Pairs()
    for m in minutes:
        merged.merge(m)
    k = 100
    got_p, got_c, _got_s = merged.window(k)
    every.sort()
    # the sample: every pair of the window below a bound, at most k of them, and
    # every pair when the window has no more than one minute's worth
    want = every[:len(got_p)]
    assert got_p == [p for _k, p, _c in want]
    assert got_c == [c for _k, _p, c in want]
    assert len(got_p) <= k
    if len(every) <= PAIR_SAMPLE:
        assert len(got_p) == min(len(every), k)
    # a uniform sample needs the bound: none of the pairs left out lies below the
    # largest key taken
    if got_p:
        assert all(key >= want[-1][0] for key, _p, _c in every[len(got_p):])


def test_pair_sample_bound_is_kept_through_bytes() -> None:
    part = Pairs()
    for xid, p, c in _pairs(1000, 1):
        part.add(pair_key(xid), p, c)
    blob = part.to_bytes()
    back = Pairs.from_bytes(blob)
    assert len(back.items) == PAIR_SAMPLE
    assert back.bound == part.bound < (1 << 64)
    assert sorted(back.items) == sorted(part.items)
    assert Pairs.from_bytes(Pairs().to_bytes()).items == []


def _v1_bytes(bound: int | None, items: list[tuple[int, float, float]]) -> bytes:
    """A pair sample as stores of schema 3 and older kept it (rollup.py before
    PAIRS_V2, byte for byte): flag 0/1, the bound and the keys, then primary and
    candidate latency of each pair."""
    from array import array

    keys = array("Q", [(1 << 64) - 1 if bound is None else bound])
    keys.extend(k for k, _p, _c in items)
    vals = array("d", [x for _k, p, c in items for x in (p, c)])
    return (b"\x00" if bound is None else b"\x01") + keys.tobytes() + vals.tobytes()


def test_pair_sample_carries_the_secondary_and_reads_the_old_format() -> None:
    """PAIRS_V2 keeps each pair's secondary latency (NaN where it did not answer); a
    sample of the old format reads as pairs without a secondary, and the two merge."""
    import math

    from shadowproxy.store.rollup import PAIRS_V1, PAIRS_V2

    rnd = random.Random(3)
    with_s = Pairs()
    want = {}
    for i in range(50):
        key = pair_key(f"s{i}")
        sec = rnd.random() if i % 5 else math.nan
        with_s.add(key, i / 100, i / 50, sec)
        want[key] = (i / 100, i / 50, sec)
    blob = with_s.to_bytes()
    assert blob[0] == PAIRS_V2 and len(blob) == 9 + 32 * 50
    back = Pairs.from_bytes(blob)
    for key, p, c, sec in back.items:
        assert (p, c) == want[key][:2]
        assert sec == want[key][2] or (math.isnan(sec) and math.isnan(want[key][2]))
    # no secondary in any pair: the old, smaller form
    plain = Pairs()
    plain.add(pair_key("p0"), 0.1, 0.2)
    assert plain.to_bytes()[0] == PAIRS_V1 and len(plain.to_bytes()) == 9 + 24
    # an old sample: its pairs have no secondary
    old_items = sorted((pair_key(f"o{i}"), i / 10, i / 5) for i in range(20))
    old = Pairs.from_bytes(_v1_bytes(None, old_items))
    assert [(k, p, c) for k, p, c, _s in old.items] == old_items
    assert all(math.isnan(sec) for *_x, sec in old.items)
    bounded = Pairs.from_bytes(_v1_bytes(old_items[10][0], old_items[:10]))
    assert bounded.bound == old_items[10][0] and len(bounded.items) == 10
    # merged (a minute written before the upgrade and after): every pair, secondary
    # latencies where they were kept
    merged = Pairs()
    merged.merge_bytes(_v1_bytes(None, old_items))
    merged.merge_bytes(blob)
    prim, cand, sec = merged.window()
    assert len(prim) == len(cand) == len(sec) == 70
    assert sum(not math.isnan(x) for x in sec) == 40
    import pytest

    with pytest.raises(ValueError, match="unknown latency pair sample format"):
        Pairs.from_bytes(b"\x04" + bytes(8))


def test_minute_pairs_carry_the_secondary_where_it_answered() -> None:
    import math

    m = Minute()
    base = {"verdict": "match", "p_status": 200, "p_error": None, "p_latency": 0.001,
            "c_status": 200, "c_error": None, "c_latency": 0.02}
    m.add_exchange(exchange_id="a", s_status=200, s_error=None, s_latency=0.021, **base)
    m.add_exchange(exchange_id="b", s_status=None, s_error=None, s_latency=None, **base)
    m.add_exchange(exchange_id="c", s_status=0, s_error="timeout", s_latency=2.0, **base)
    m.add_exchange(exchange_id="d", s_status=503, s_error=None, s_latency=0.03, **base)
    got = {k: sec for k, _p, _c, sec in Pairs.from_bytes(m.pairs.to_bytes()).items}
    assert got[pair_key("a")] == 0.021 and got[pair_key("d")] == 0.03
    assert math.isnan(got[pair_key("b")]) and math.isnan(got[pair_key("c")])
    assert m.secondary.count == 2          # the sketch counts the same answers


def test_sketch_quantiles_within_stated_error_after_merging_minutes() -> None:
    rnd = random.Random(7)
    values = [rnd.lognormvariate(-4, 1.2) for _ in range(30000)]
    merged = Sketch()
    for i in range(0, len(values), 600):
        part = Sketch()
        part.extend(values[i:i + 600])
        merged.merge_bytes(part.to_bytes())
    assert merged.count == len(values)
    values.sort()
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = values[min(len(values) - 1, int(q * len(values)))]
        got = merged.quantile(q)
        assert got is not None
        # two significant figures: within 1/128 of the value, plus the 1 µs unit
        assert abs(got - exact) <= exact / 128 + 1e-6, (q, got, exact)
    assert Sketch().quantile(0.5) is None
    clamped = Sketch()
    clamped.extend([-1.0, 0.0, 1e9])
    assert clamped.count == 3


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=5), max_size=30),
       st.sets(st.sampled_from("abcdefg")))
def test_diff_sets_forgive_what_the_row_rule_forgives(sets: list[list[str]],
                                                      noise_now: set[str]) -> None:
    m = Minute()
    for fields in sets:
        m.add_differences("diff", [(f, "changed", False) for f in fields])
    _diffs, want = effective_diffs(sets, noise_now)
    assert forgiven(m.diff_sets, noise_now) == want


def test_a_set_of_many_fields_is_never_forgiven() -> None:
    fields = [f"f{i}" for i in range(MAX_SET_FIELDS + 1)]
    assert set_key(fields) == MANY_FIELDS
    m = Minute()
    m.add_differences("diff", [(f, "changed", False) for f in fields])
    assert forgiven(m.diff_sets, set(fields)) == 0


def test_field_rows_count_each_exchange_once_per_field() -> None:
    m = Minute()
    m.add_differences("diff", [("$.a", "changed", False), ("$.a", "type", False),
                               ("$.b", "added", True)])
    m.add_differences("noise", [("$.b", "added", True)])
    assert m.fields[("$.a", "changed")] == [1, 0, 1]
    assert m.fields[("$.a", "type")] == [1, 0, 0]      # the exchange is counted once
    assert m.fields[("$.b", "added")] == [2, 2, 2]
    assert m.diff_sets == {"$.a": 1}


def test_minute_counts_failures_on_the_same_exchange() -> None:
    m = Minute()
    base = {"p_latency": 0.01, "c_latency": 0.02, "s_status": None, "s_error": None,
            "s_latency": None}
    m.add_exchange(exchange_id="a", verdict="error", p_status=200, p_error=None,
                   c_status=0, c_error="connect", **base)
    m.add_exchange(exchange_id="b", verdict="diff", p_status=503, p_error=None,
                   c_status=503, c_error=None, **base)
    m.add_exchange(exchange_id="c", verdict="diff", p_status=500, p_error=None,
                   c_status=200, c_error=None, **base)
    m.add_exchange(exchange_id="d", verdict="match", p_status=200, p_error=None,
                   c_status=200, c_error=None, **base)
    assert (m.count("both_failed"), m.count("candidate_only_failed"),
            m.count("primary_only_failed")) == (1, 1, 1)
    # pairs: both answered (a 5xx is an answer), the connect failure is not a pair
    assert m.count("latency_pairs") == 3 == m.primary.count == len(m.pairs.items)
    other = Minute()
    other.merge(m).merge(m)
    assert other.count("exchanges") == 8 and other.primary.count == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1.0, max_value=2e3, allow_nan=False), max_size=60),
       st.lists(st.floats(min_value=0.0, max_value=5.0, allow_nan=False), max_size=60))
def test_sketch_fold_is_hdrhistograms_own_record_and_encode(stored: list[float],
                                                             batch: list[float]) -> None:
    """The writer's fast path (values binned and encoded without a histogram object)
    stores what HdrHistogram's own record_value + encode store, byte for byte."""
    import base64

    from hdrh.histogram import HdrHistogram

    def us(x: float) -> int:
        return min(max(int(x * 1e6 + 0.5), 1), 1_000_000_000)

    old = Sketch()
    old.add_many(stored)
    new = Sketch()
    new.add_many(batch)
    got = new.fold_into(old.to_bytes() if stored else None)
    if not stored and not batch:
        assert got is None
        return
    assert got is not None
    ref = HdrHistogram(1, 1_000_000_000, 2)
    for x in stored + batch:
        ref.record_value(us(x))
    back = Sketch.from_bytes(got)
    assert back.count == len(stored) + len(batch)
    if len(stored) + len(batch) > 16:
        # the stored form: tag 1, then the library's V2 compressed encoding (decoded by
        # the library itself: counts equal)
        lib = HdrHistogram.decode(base64.b64encode(got[1:]))
        assert list(lib.counts) == list(ref.counts)
    for q in (0.01, 0.5, 0.9, 0.999, 1.0):
        want = Sketch()
        want.add_many(stored + batch)
        assert back.quantile(q) == want.quantile(q)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["match", "diff", "noise", "error"]),
                          st.sampled_from([0, 200, 404, 500, 503]),
                          st.sampled_from([None, "timeout"]),
                          st.sampled_from([0, 200, 502]),
                          st.sampled_from([None, "reset"]),
                          st.sampled_from([None, 0, 200])), max_size=40))
def test_columns_count_what_exchanges_one_by_one_count(rows: list[tuple[object, ...]]) -> None:
    """The writer's columnar pass gives the same minute as one exchange at a time."""
    one, cols = Minute(), Minute()
    rnd = random.Random(len(rows))
    full = []
    for i, (verdict, ps, pe, cs, ce, ss) in enumerate(rows):
        r = (f"x{i}", str(verdict), int(ps), pe, rnd.random(), int(cs), ce, rnd.random(),
             ss, rnd.random())
        full.append(r)
        one.add_exchange(exchange_id=r[0], verdict=r[1], p_status=r[2], p_error=r[3],  # type: ignore[arg-type]
                         p_latency=r[4], c_status=r[5], c_error=r[6], c_latency=r[7],  # type: ignore[arg-type]
                         s_status=r[8], s_error=None, s_latency=r[9])  # type: ignore[arg-type]
    if full:
        cols.add_columns(*zip(*full, strict=True))  # type: ignore[arg-type]
    assert cols.counts == one.counts
    assert cols.sums == one.sums
    for a, b in ((cols.primary, one.primary), (cols.candidate, one.candidate),
                 (cols.secondary, one.secondary)):
        assert a.count == b.count and a.to_bytes() == b.to_bytes()
    assert cols.pairs.to_bytes() == one.pairs.to_bytes()
