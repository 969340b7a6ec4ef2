"""Capture: the first ``cap`` bytes of a body, its size, its digest once cut; bytes
charged to the worker's budget; memory close to the bytes kept, however the body
arrives (a trickle of tiny reads included)."""

from __future__ import annotations

import hashlib
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.proxy.capture import Budget, Capture


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.binary(min_size=1, max_size=40), max_size=60),
       cap=st.integers(0, 500), limit=st.integers(0, 600))
def test_body_size_digest_and_budget(pieces, cap, limit):
    budget = Budget(limit)
    c = Capture(cap, budget)
    for p in pieces:
        c.feed(p)
    whole = b"".join(pieces)
    assert c.size == len(whole)
    assert c.body == whole[:len(c.body)] and len(c.body) <= min(cap, limit)
    assert budget.used == c.kept == len(c.body)
    assert c.truncated == (len(c.body) < len(whole))
    assert c.sha256 == (hashlib.sha256(whole).hexdigest() if c.truncated else "")
    c.release()
    assert budget.used == 0 and c.body == b""


def test_a_trickle_of_tiny_reads_holds_about_what_it_keeps():
    budget = Budget(64 * 1024 * 1024)
    c = Capture(1024 * 1024, budget)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(200_000):
            c.feed(b"ab")
        now, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert c.kept == budget.used == 400_000
    # ~0.4 MB kept: a list of 200,000 bytes objects would hold ~7 MB
    assert now - before < 2 * 400_000, now - before
    assert c.body == b"ab" * 200_000
