"""The latency checks judge the candidate against the secondary where there is one, on
a real ``shadowproxy run`` with real upstreams over loopback.

Primary answers in ~1 ms; the candidate and the secondary, sent from the same shadow
process at the same moments, in ~20 ms each: an equal candidate against the like-with-
like reference passes, and the same store judged against primary fails (what every
busy machine did to an equal candidate, made large). A candidate at ~40 ms against a
~20 ms secondary fails. Each verdict line says which baseline it used.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.control.test_process import Running, _write_config
from tests.delayed_upstream import DelayedUpstream
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
BODY = b'{"id": 7, "name": "widget"}'
REQUESTS = 600
CLIENTS = 6

def _checks(baseline: str | None) -> str:
    extra = f"    latency_baseline: {baseline}\n" if baseline else ""
    return ("checks:\n  - name: speed\n    min_samples: 100\n    max_p50_ratio: 1.25\n"
            + extra)


async def _run(tmp_path: Path, candidate_delay: float) -> Path:
    """Mirror REQUESTS requests through ``shadowproxy run`` (primary 1 ms, secondary
    20 ms, the candidate ``candidate_delay``) into a store; → the config's path."""
    ups = {"primary": DelayedUpstream(0.001), "candidate": DelayedUpstream(candidate_delay),
           "secondary": DelayedUpstream(0.020)}
    listen, admin = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, ups, tmp_path / "r.db", listen, admin,  # type: ignore[arg-type]
                  extra="log: {level: warning}\n")
    run = Running(cfg, listen, admin, tmp_path / "log")
    try:
        await run.ready()
        sent = 0
        async with aiohttp.ClientSession() as s:
            async def client(k: int) -> None:
                nonlocal sent
                for i in range(REQUESTS // CLIENTS):
                    async with s.get(f"http://127.0.0.1:{listen}/api/users/{k}-{i}") as r:
                        assert r.status == 200 and await r.read() == BODY
                    sent += 1

            await asyncio.gather(*(client(k) for k in range(CLIENTS)))
        live = await run.wait_total(sent)
        assert live["requests"] == sent
    finally:
        code = run.stop()
        for u in ups.values():
            u.stop()
    assert code == 0
    return cfg


def _check(cfg: Path, baseline: str | None) -> tuple[int, str]:
    text = cfg.read_text()
    path = cfg.with_name(f"check-{baseline}.yaml")
    path.write_text(text + _checks(baseline))
    done = subprocess.run([sys.executable, "-m", "shadowproxy", "check", "-c", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def _unit_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "p50 ratio" in line]


async def test_an_equal_candidate_passes_against_the_secondary_and_fails_against_primary(
        tmp_path: Path) -> None:
    cfg = await _run(tmp_path, 0.020)
    code, out = _check(cfg, None)                     # the default: secondary
    assert code == 0, out
    lines = _unit_lines(out)
    assert len(lines) == 2 and all("against the secondary" in line for line in lines), out
    code, out = _check(cfg, "primary")
    assert code == 1, out
    lines = _unit_lines(out)
    assert lines and all("against primary (latency_baseline: primary)" in line
                         for line in lines), out
    print(out)


async def test_a_candidate_slower_than_the_secondary_fails(tmp_path: Path) -> None:
    cfg = await _run(tmp_path, 0.040)
    code, out = _check(cfg, "secondary")
    assert code == 1, out
    fails = [line for line in _unit_lines(out) if line.lstrip().startswith("FAIL")]
    assert fails and all("against the secondary" in line for line in fails), out
    print(out)


# ------------------------------------------------------------------ the rule, on its own


def _lat(n: int, seed: int, primary: float, candidate: float, secondary: float | None,
         answered: float = 1.0) -> tuple[list[float], ...]:
    """n pairs: each side its latency with 2 % jitter; the secondary's where it answered
    (a share ``answered`` of the exchanges), NaN elsewhere."""
    import random

    rnd = random.Random(seed)
    p = [primary * rnd.uniform(0.98, 1.02) for _ in range(n)]
    c = [candidate * rnd.uniform(0.98, 1.02) for _ in range(n)]
    if secondary is None:
        return p, c
    s = [secondary * rnd.uniform(0.98, 1.02) if rnd.random() < answered else math.nan
         for _ in range(n)]
    return p, c, s


def _units(lats: dict[str, tuple[list[float], ...]], **kw: object) -> dict[str, object]:
    from shadowproxy.checks import MemorySource, evaluate
    from shadowproxy.config import CheckConfig

    check = CheckConfig(name="speed", min_samples=100, max_p50_ratio=1.25,
                        max_p99_ratio=1.5, **kw)  # type: ignore[arg-type]
    rep = evaluate([check], MemorySource(latencies_by_endpoint=lats))
    return {s.metric: s for s in rep.checks[0].subchecks}


def test_the_baseline_is_the_secondary_only_where_it_answered_enough() -> None:
    subs = _units({"A": _lat(800, 1, 0.001, 0.02, 0.02),            # secondary everywhere
                   "B": _lat(800, 2, 0.001, 0.02, None),            # none configured
                   "C": _lat(800, 3, 0.001, 0.02, 0.02, answered=0.3)})
    for metric in ("max_p50_ratio", "max_p99_ratio"):
        by = {u.endpoint: u for u in subs[metric].endpoints}
        assert by["A"].details["baseline"] == "secondary" and by["A"].verdict != "fail"
        assert "against the secondary" in by["A"].reason
        assert by["B"].details["baseline"] == "primary" and by["B"].verdict == "fail"
        assert "against primary (no secondary latencies in the window)" in by["B"].reason
        assert by["C"].details["baseline"] == "primary"
        assert "too few to compare with" in by["C"].reason
        # the aggregate: primary, as not every endpoint in it has the secondary
        agg = subs[metric].aggregate
        assert agg.details["baseline"] == "primary" and "2 endpoints judged against " \
            "primary" in agg.reason
    assert subs["max_p50_ratio"].endpoints[0].verdict == "pass"


def test_latency_baseline_primary_is_todays_judgement() -> None:
    lats = {"A": _lat(800, 1, 0.001, 0.02, 0.02), "B": _lat(800, 4, 0.001, 0.02, 0.02)}
    subs = _units(lats, latency_baseline="primary")
    for sub in subs.values():
        assert sub.verdict == "fail"
        for u in sub.units:
            assert u.details["baseline"] == "primary"
            assert "against primary (latency_baseline: primary)" in u.reason
    subs = _units(lats)
    assert subs["max_p50_ratio"].verdict == "pass"
    assert all(u.details["baseline"] == "secondary"
               for s in subs.values() for u in s.units)
    # a candidate slower than the secondary fails against it, on every endpoint
    subs = _units({"A": _lat(800, 1, 0.001, 0.03, 0.02), "B": _lat(800, 4, 0.001, 0.02, 0.02)})
    p50 = subs["max_p50_ratio"]
    assert p50.verdict == "fail" and p50.endpoints[0].verdict == "fail"
    assert p50.endpoints[1].verdict == "pass"
