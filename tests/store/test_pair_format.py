"""A store whose pair samples were written before they kept the secondary's latency
(PAIRS_V1, store schema 3 on SQLite and on PostgreSQL) is upgraded in place, still
reads, and is still judged: its pairs read as pairs without a secondary, so the paired
p50 test falls back to primary there and says so, while what is written after the
upgrade carries the secondary again. On both engines."""

from __future__ import annotations

import math
import random
import sqlite3
from array import array
from typing import Any

import pytest

from shadowproxy.checks import StoreSource, evaluate
from shadowproxy.config import CheckConfig
from shadowproxy.errors import StoreError
from shadowproxy.store import open_store, reads
from shadowproxy.store.rollup import PAIRS_V1, PAIRS_V2, Pairs
from tests.store_helpers import response, result

T0 = 1_790_000_040.0          # a minute boundary
EP = "GET /api/users/{id}"


def _v1_bytes(p: Pairs) -> bytes:
    """``p`` as rollup.py stored a pair sample before PAIRS_V2, byte for byte."""
    bounded = p.bound <= (1 << 64) - 1
    keys = array("Q", [p.bound if bounded else (1 << 64) - 1])
    keys.extend(k for k, *_ in p.items)
    vals = array("d", [x for _k, pl, cl, _s in p.items for x in (pl, cl)])
    return (b"\x01" if bounded else b"\x00") + keys.tobytes() + vals.tobytes()


def _results(n: int, t0: float, seed: int) -> list[Any]:
    """Primary ~1 ms; candidate and secondary ~20 ms each (sent together)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        lag = rnd.uniform(0.019, 0.022)
        out.append(result(
            "match", id=f"x{seed}-{i}", started=t0 + 180 * i / n, endpoint=EP,
            primary=response(200, {"id": 1}, latency=rnd.uniform(0.0009, 0.0012)),
            candidate=response(200, {"id": 1}, latency=lag * rnd.uniform(0.99, 1.01)),
            secondary=response(200, {"id": 1}, latency=lag * rnd.uniform(0.99, 1.01))))
    return out


def _downgrade(url: str) -> None:
    """Rewrite every stored pair sample in the old format and set the schema version
    back to the one before: the store an older shadowproxy left."""
    if url.startswith("sqlite"):
        c = sqlite3.connect(url[len("sqlite:///"):])
        rows = c.execute("SELECT minute, endpoint, data FROM rollup_blobs "
                         "WHERE kind = 'pairs'").fetchall()
        assert rows and all(bytes(d)[0] & PAIRS_V2 for _m, _e, d in rows)
        for minute, ep, data in rows:
            c.execute("UPDATE rollup_blobs SET data = ? WHERE kind = 'pairs' AND minute = ? "
                      "AND endpoint = ?", (_v1_bytes(Pairs.from_bytes(data)), minute, ep))
        c.execute("UPDATE schema_version SET version = 3 WHERE version >= 4")
        c.commit()
        c.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute("SELECT minute, endpoint, instance, data FROM rollup_blobs "
                         "WHERE kind = 'pairs'").fetchall()
        assert rows and all(bytes(d)[0] & PAIRS_V2 for _m, _e, _i, d in rows)
        for minute, ep, inst, data in rows:
            c.execute("UPDATE rollup_blobs SET data = %s WHERE kind = 'pairs' AND "
                      "minute = %s AND endpoint = %s AND instance = %s",
                      (_v1_bytes(Pairs.from_bytes(data)), minute, ep, inst))
        c.execute("UPDATE schema_version SET version = 3 WHERE version >= 4")


def _speed(store: Any, since: float, until: float) -> dict[str, Any]:
    """metric → the endpoint unit of a speed check over the window."""
    check = CheckConfig(name="speed", min_samples=100, max_p50_ratio=1.25,
                        max_p99_ratio=1.5)
    rep = evaluate([check], StoreSource(store, since, until))
    return {s.metric: s.endpoints[0] for s in rep.checks[0].subchecks}


def test_a_store_of_old_pair_samples_upgrades_reads_and_is_judged(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(store_url)
    store.write_results(_results(600, T0, 1))
    store.close()
    _downgrade(store_url)
    with pytest.raises(StoreError, match="store migrate"):
        open_store(store_url, readonly=True)
    open_store(store_url).close()                 # a writer upgrades it

    # the window's pairs from the minutes' samples, as a window of more pairs than
    # PAIR_ROWS reads them
    monkeypatch.setattr(reads, "PAIR_ROWS", 0)
    store = open_store(store_url, readonly=True)
    try:
        raw = Pairs.from_bytes(store._read(
            "SELECT data FROM rollup_blobs WHERE kind = 'pairs' LIMIT 1")[0][0])
        assert raw.items
        p, c, s = store.latency_triples_of([EP], T0, T0 + 180)
        # a uniform sample: the minutes kept PAIR_SAMPLE pairs each
        assert 128 <= len(p) == len(c) == len(s) < 600
        assert all(math.isnan(x) for x in s)            # old pairs: no secondary
        assert min(p) >= 0.0009 and max(p) <= 0.0013 and min(c) >= 0.018
        assert store.latencies_of([EP], T0, T0 + 180) == (p, c)
        units = _speed(store, T0, T0 + 180)
    finally:
        store.close()
    p50, p99 = units["max_p50_ratio"], units["max_p99_ratio"]
    # the paired test has no secondary latencies in these pairs: primary, said so
    assert p50.details["baseline"] == "primary" and p50.verdict == "fail"
    assert f"against primary (0 of {len(p)} latency pairs have the secondary's latency" \
        in p50.reason, p50.reason
    # the sketches have the secondary's latencies: p99 is judged against it
    assert p99.details["baseline"] == "secondary" and p99.verdict != "fail", p99.reason
    assert "against the secondary" in p99.reason

    # written after the upgrade: pairs with the secondary's latency again
    store = open_store(store_url)
    store.write_results(_results(600, T0 + 600, 2))
    store.close()
    store = open_store(store_url, readonly=True)
    try:
        new = [bytes(d) for (d,) in store._read(
            "SELECT data FROM rollup_blobs WHERE kind = 'pairs' AND minute >= ?",
            (T0 + 600,))]
        assert new and all(b[0] & PAIRS_V2 for b in new)
        old = [bytes(d) for (d,) in store._read(
            "SELECT data FROM rollup_blobs WHERE kind = 'pairs' AND minute < ?", (T0 + 600,))]
        assert old and all(b[0] in (PAIRS_V1, PAIRS_V1 | 1) for b in old)
        _p, _c, s = store.latency_triples_of([EP], T0 + 600, T0 + 780)
        assert len(s) >= 128 and not any(math.isnan(x) for x in s)
        units = _speed(store, T0 + 600, T0 + 780)
        assert units["max_p50_ratio"].details["baseline"] == "secondary"
        assert units["max_p50_ratio"].verdict == "pass", units["max_p50_ratio"].reason
        # both together: the old minutes' pairs without, the new ones with
        _p, _c, s = store.latency_triples_of([EP], T0, T0 + 780)
        assert 0 < sum(not math.isnan(x) for x in s) < len(s)
    finally:
        store.close()
    monkeypatch.setattr(reads, "PAIR_ROWS", 50_000)
    # read from the rows (a window of few pairs), the old minutes have the secondary too
    store = open_store(store_url, readonly=True)
    try:
        _p, _c, s = store.latency_triples_of([EP], T0, T0 + 180)
        assert len(s) == 600 and not any(math.isnan(x) for x in s)
        units = _speed(store, T0, T0 + 180)
        assert units["max_p50_ratio"].details["baseline"] == "secondary"
        assert units["max_p50_ratio"].verdict == "pass", units["max_p50_ratio"].reason
    finally:
        store.close()
