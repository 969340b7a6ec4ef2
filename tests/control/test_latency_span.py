"""An equal candidate reads as fast as primary under load.

The shadow processes run below the workers' priority (``shadow.nice``). When the latency
of the candidate was read where its shadow process's loop got to it, a loaded machine
added that process's wait for a core to every candidate latency: an equal candidate read
several times slower than primary (docs/performance.md, "Latency of an equal candidate").
Both sides are now timed over the same span, from the request written to the answer's
last bytes arrived, by the kernel's receive stamp (:mod:`shadowproxy.http.timed`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from shadowproxy.config import load
from shadowproxy.store.open import open_configured
from tests.control.test_process import Running, _write_config
from tests.delayed_upstream import DelayedUpstream
from tests.support import free_port

DELAY = 0.005
BODY = b'{"id": 7, "name": "widget"}'
CLIENTS = 24
SECONDS = 6.0


async def _load(port: int, seconds: float) -> int:
    """``CLIENTS`` keep-alive clients, each one request after another, for ``seconds``."""
    end = time.monotonic() + seconds
    done = 0

    async def client(s: aiohttp.ClientSession, k: int) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < end:
            async with s.get(f"http://127.0.0.1:{port}/api/users/{k}-{i}") as r:
                assert r.status == 200 and await r.read() == BODY
            done += 1
            i += 1

    conn = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=conn) as s:
        await asyncio.gather(*(client(s, k) for k in range(CLIENTS)))
    return done


async def test_an_equal_candidate_reads_as_fast_as_primary_under_load(tmp_path: Path):
    """One upstream process is primary, candidate and secondary (equal by
    construction), 5 ms a request; ``shadowproxy run`` mirrors all of it while clients
    keep both cores busy (24 clients in this process, two workers, the shadow process at
    nice 10, the control process). The stored p50 of the candidate is 0.75-1.3x
    primary's (0.85-0.93x in 6 runs on a 2-core VM: the upstream, woken from idle by
    each of primary's requests, gets the shadows' in bunches while awake) and
    0.8-1.25x the secondary's (sent with it: 0.99-1.01x).

    Why the bound holds on any machine: what the old reading added, the shadow
    process's wait for a core, grows with the load (tens of ms here: 8.5x, 61.7 ms
    against 7.2 ms, before both sides were timed alike); what is left is the
    upstream's own time over the shadows' bunches, a few µs a request for this one,
    against its 5 ms."""
    up = DelayedUpstream(DELAY, BODY)
    listen, admin = free_port(), free_port()
    cfg_path = tmp_path / "c.yaml"
    _write_config(cfg_path, {"primary": up, "candidate": up, "secondary": up},  # type: ignore[dict-item]
                  tmp_path / "r.db", listen, admin, extra="log: {level: warning}\n")
    run = Running(cfg_path, listen, admin, tmp_path / "log")
    try:
        await run.ready()
        sent = await _load(listen, SECONDS)
        live = await run.wait_total(sent)
        assert live["requests"] == sent
    finally:
        code = run.stop()
        up.stop()
    assert code == 0
    store = open_configured(load(cfg_path), readonly=True)
    try:
        sketches = store.latency_sketches(secondary=True)
    finally:
        store.close()
    (prim, cand, sec), = sketches.values()
    # at saturation shadows are dropped (shadow_full, queue_full): hundreds stay
    assert prim.count == cand.count == sec.count >= 500
    p, c, s = (sk.quantile(0.5) for sk in (prim, cand, sec))
    assert p is not None and c is not None and s is not None
    assert p >= DELAY and c >= DELAY          # the upstream's own 5 ms is in every one
    print(f"p50 primary {p * 1e3:.2f} ms, candidate {c * 1e3:.2f} ms, secondary "
          f"{s * 1e3:.2f} ms; {prim.count} of {sent} stored")
    assert 0.75 < c / p < 1.3, f"candidate p50 {c * 1e3:.2f} ms, primary {p * 1e3:.2f} ms"
    assert 0.8 < c / s < 1.25, f"candidate p50 {c * 1e3:.2f} ms, secondary {s * 1e3:.2f} ms"
