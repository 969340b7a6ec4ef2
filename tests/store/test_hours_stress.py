"""PostgreSQL: writers adding to past hours while other processes' compactors compact
them, for a bounded while; at the end the hours read exactly what their results give."""

from __future__ import annotations

import random
import threading

import pytest

from shadowproxy.store import open_store
from tests.store.test_hours import LATER, SPAN, T0, WINDOWS, _compact_all, reads
from tests.store.test_reads_scale import results


@pytest.mark.server
def test_postgres_writers_and_compactors_at_once_lose_nothing(pg_url: str) -> None:
    rs = results(3000, 51, T0, SPAN)
    random.Random(5).shuffle(rs)          # every batch adds to several past hours
    writers = [open_store(pg_url, instance=n) for n in ("a", "b")]
    compactors = [open_store(pg_url, instance=n) for n in ("c", "d")]
    ref = open_store("sqlite:///:memory:")
    done = threading.Event()
    passes = [0, 0]
    errors: list[BaseException] = []

    def write(store, part) -> None:
        try:
            for i in range(0, len(part), 40):
                store.write_results(part[i:i + 40])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def compact(i: int, store) -> None:
        try:
            while not done.is_set():
                passes[i] += store.compact(LATER, None, max_hours=2)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        ref.write_results(rs)
        ts = [threading.Thread(target=write, args=(w, rs[i::2]))
              for i, w in enumerate(writers)]
        cs = [threading.Thread(target=compact, args=(i, c)) for i, c in enumerate(compactors)]
        for t in ts + cs:
            t.start()
        for t in ts:
            t.join(120)
        done.set()
        for t in cs:
            t.join(60)
        assert not errors, errors
        assert sum(passes) > 6              # hours were compacted, reopened, compacted
        _compact_all(compactors[0])
        for w in WINDOWS:
            got, want = reads(compactors[0], *w), reads(ref, *w)
            for part in ("stats", "error_pairs", "sets", "sketches"):
                assert got[part] == want[part], (w, part)
            # a field's example exchange depends on the order of the writes
            assert [f[:7] for f in got["fields"]] == [f[:7] for f in want["fields"]], w
    finally:
        for s in (*writers, *compactors, ref):
            s.close()
