"""The fleet end to end (issue 14): real `shadowproxy run` sidecars with a
``transport:``, real `shadowproxy compare` pools, a redis-server and a PostgreSQL
started by the tests on loopback.

* two sidecars and two comparator pools compare and store everything, a kill -9 of
  a comparator mid-stream loses nothing (its entries are claimed by the others) and
  stores nothing twice, a planted secret appears nowhere in Redis (the stream, its AOF
  and RDB files), and `shadowproxy mirror off|on` switches both sidecars within a
  second;
* a Redis restart under load leaves primary answering with no error and every shadow
  counted;
* each sidecar's traffic is stored, aggregated and counted under its instance whichever
  comparator judged it, and `check`/`report --instance` read one sidecar's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from shadowproxy.store.open import open_store
from tests.control.test_process import ROOT, Running, _named
from tests.redis_server import RedisServer
from tests.support import Upstream, free_port

pytestmark = pytest.mark.server

SECRET = "Planted-Secret-4d6f2a9b1c"
KEY_ENV = "SP_FLEET_TEST_KEY"
ENV = {**os.environ, KEY_ENV: "a shared redaction key for every instance"}


def _app(price: int) -> web.Application:
    async def item(request: web.Request) -> web.Response:
        seen = request.headers.get("Authorization", "")
        return web.json_response({"id": int(request.match_info["id"]), "price": price,
                                  "token": SECRET, "echo": seen},
                                 headers={"X-Session": SECRET})
    app = web.Application()
    app.router.add_get("/api/items/{id}", item)
    return app


def _sidecar(path: Path, name: str, pg_url: str, redis_url: str, primary: Upstream,
             candidate: Upstream, **more: Any) -> Running:
    listen, admin = free_port(), free_port()
    path.write_text(f"""\
instance: {name}
listen: 127.0.0.1:{listen}
workers: 2
admin: {{listen: 127.0.0.1:{admin}}}
upstreams:
  primary: {primary.url}
  candidate: {candidate.url}
timeouts: {{shutdown: 10s}}
mirror: {{sample: 1.0, timeout: 5s}}
routes:
  - name: item
    match: /api/items/{{id}}
redact:
  key_env: {KEY_ENV}
  headers: [X-Session]
store:
  url: '{pg_url}'
  flush_interval: 50ms
transport:
  url: {redis_url}
  claim_after: 1s
checks:
  - name: diff-rate
    max_diff_rate: 0.01
    min_samples: 10
""")
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = ENV[KEY_ENV]       # Running starts it with this process's env
    try:
        return Running(path, listen, admin, path.with_suffix(".log"))
    finally:
        if old is None:
            del os.environ[KEY_ENV]


class Pool:
    """`shadowproxy compare -c FILE --processes N`."""

    def __init__(self, cfg: Path, processes: int, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shadowproxy", "compare", "-c", str(cfg),
             "--processes", str(processes)],
            cwd=ROOT, env=ENV, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def comparators(self) -> list[int]:
        return _named(self.proc.pid, "shadowproxy-c")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


async def _send(port: int, n: int, pause: float = 0.0, car: str = "") -> int:
    """GETs with a secret in the Authorization header and the query (and ``car=`` the
    sidecar sent through, when given); → primary's answers (status 200, primary's
    price)."""
    ok = 0
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                async with s.get(f"http://127.0.0.1:{port}/api/items/{i % 50}",
                                 params={"token": SECRET, **({"car": car} if car else {})},
                                 headers={"Authorization": f"Bearer {SECRET}"}) as r:
                    body = await r.json()
                    ok += r.status == 200 and body["price"] == 10
                if pause:
                    await asyncio.sleep(pause)
        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


def _total(live: dict[str, Any]) -> int:
    """Requests a sidecar counted: mirrored, or ended before the mirror."""
    return live["mirrored"] + live["requests"] - _after_mirror_drops(live["outcomes"])


async def _counted(car: Running, n: int, timeout: float = 20.0) -> dict[str, Any]:
    """The sidecar's live counts once all ``n`` requests are counted: in a fleet a
    mirrored request's final outcome (compared, candidate_error, ...) is the
    comparator's to count, so a sidecar's own are ``mirrored`` and the rest."""
    deadline = time.monotonic() + timeout
    while True:
        live = await car.outcomes()
        if _total(live) >= n or time.monotonic() > deadline:
            await asyncio.sleep(1.0)    # one more report of the shadow processes' counts
            return await car.outcomes()
        await asyncio.sleep(0.1)


async def _drained(redis_url: str, timeout: float = 60.0) -> None:
    """Until the group has read and acknowledged every entry."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            groups = await r.xinfo_groups("shadowproxy:exchanges")
            last = (await r.xinfo_stream("shadowproxy:exchanges"))["last-generated-id"]
            g = groups[0] if groups else {}
            if g and g["last-delivered-id"] == last and g["pending"] == 0:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"not drained: {groups}")
    finally:
        await r.aclose()


def _stored(pg_url: str) -> list[str]:
    store = open_store(pg_url, readonly=True)
    try:
        return [x.id for x in store.exchanges(limit=100_000)]
    finally:
        store.close()


def _aggregates_hold_every_exchange(pg_url: str, n: int) -> None:
    """The aggregates are labelled with the sidecars whose traffic they hold, each
    comparator process writing rows of its own (writer NAME-cN), so that no minute's
    sketches are lost to two of them merging at once: the latency sketches hold as many
    values as the counters count."""
    import psycopg

    from shadowproxy.store.sketch import Sketch
    with psycopg.connect(pg_url) as c:
        insts = {r[0] for r in c.execute("SELECT DISTINCT instance FROM rollups")}
        writers = {r[0] for r in c.execute("SELECT DISTINCT writer FROM rollups")}
        pairs = c.execute("SELECT coalesce(sum(exchanges), 0), "
                          "coalesce(sum(latency_pairs), 0) FROM rollups").fetchone()
        blobs = [bytes(r[0]) for r in c.execute(
            "SELECT data FROM rollup_blobs WHERE kind = 'primary'")]
    assert insts == {"pod-a", "pod-b"}, insts
    assert writers and all(w.rsplit("-", 1)[-1].startswith("c") for w in writers), writers
    assert pairs is not None and int(pairs[0]) == n
    assert sum(Sketch.from_bytes(b).count for b in blobs) == int(pairs[1]) > 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shadowproxy", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120, check=False)


def _after_mirror_drops(outcomes: dict[str, int]) -> int:
    from shadowproxy.stats import AFTER_MIRROR_DROPS
    return sum(n for k, n in outcomes.items()
               if k.startswith("dropped{") and k[8:-1] in AFTER_MIRROR_DROPS)


async def _secret_nowhere_in(redis: RedisServer) -> None:
    r = aioredis.Redis.from_url(redis.url)
    entries = await r.xrange("shadowproxy:exchanges")
    assert entries, "the stream is empty: nothing was checked"
    for _id, fields in entries:
        assert SECRET.encode() not in b"".join(fields.values())
    await r.bgsave()
    for _ in range(100):
        if (redis.root / "dump.rdb").exists():
            break
        await asyncio.sleep(0.05)
    await r.aclose()
    files = redis.files()
    assert any("aof" in p.name for p in files) and any(p.name == "dump.rdb" for p in files)
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p


async def _mirror_states(cars: list[Running]) -> list[tuple[bool, float]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for c in cars:
            async with s.get(f"http://127.0.0.1:{c.admin}/api/v1/mirror") as r:
                doc = await r.json()
            out.append((doc["enabled"], doc["sample"]))
    return out


async def _switch_reaches_every_sidecar(cars: list[Running]) -> None:
    """`shadowproxy mirror off|on` switches both sidecars within a second of returning."""
    for args, want in ((["off"], (False, 1.0)), (["on", "--sample", "0.5"], (True, 0.5))):
        done = _cli("mirror", *args, "-c", str(cars[0].cfg))
        assert done.returncode == 0, done.stdout + done.stderr
        t0 = time.monotonic()
        while await _mirror_states(cars) != [want, want]:
            assert time.monotonic() - t0 < 1.0, await _mirror_states(cars)
            await asyncio.sleep(0.05)


async def _stream_state_is_shown(car: Running) -> None:
    """The admin API and /metrics show the stream: drained, two comparator pools (and
    the one the pool started again), no dead letters."""
    await asyncio.sleep(1.2)       # read every second
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{car.admin}/api/v1/status") as r:
            t = (await r.json())["transport"]
        async with s.get(f"http://127.0.0.1:{car.admin}/metrics") as r:
            metrics = await r.text()
    assert t["up"] and t["lag"] == 0 and t["pending"] == 0 and t["dead_letters"] == 0, t
    assert t["consumers"] >= 2 and t["length"] > 0, t
    assert "shadowproxy_transport_lag 0.0" in metrics
    assert "shadowproxy_transport_dead_letters 0.0" in metrics
    assert "shadowproxy_transport_up 1.0" in metrics


async def test_two_sidecars_two_comparators_kill_9_loses_nothing(
        pg_url: str, redis: RedisServer, tmp_path: Path) -> None:
    primary = await Upstream(_app(10)).start()
    candidate = await Upstream(_app(12)).start()
    cars = [_sidecar(tmp_path / f"{name}.yaml", name, pg_url, redis.url, primary, candidate)
            for name in ("pod-a", "pod-b")]
    pools = [Pool(cars[0].cfg, 1, tmp_path / f"compare-{i}.log") for i in range(2)]
    n = 150
    try:
        await asyncio.gather(*(c.ready() for c in cars))
        first = asyncio.gather(*(_send(c.listen, n, pause=0.01) for c in cars))
        await asyncio.sleep(1.0)
        victims = pools[0].comparators()
        assert victims, pools[0].log.read_text()
        os.kill(victims[0], signal.SIGKILL)            # a comparator dies mid-stream
        assert await first == [n, n]
        outcomes = [await _counted(c, n) for c in cars]
        assert [_total(o) for o in outcomes] == [n, n]
        await _drained(redis.url)
        await _secret_nowhere_in(redis)
        await _switch_reaches_every_sidecar(cars)
        await _stream_state_is_shown(cars[0])
        codes = [c.stop() for c in cars]
        assert codes == [0, 0], [c.log.read_text()[-3000:] for c in cars]
        assert [p.stop() for p in pools] == [0, 0]
    finally:
        await _teardown([*cars, *pools], primary, candidate)
    logs = "".join(p.log.read_text() for p in pools)
    assert "starting it again" in logs, logs[-3000:]    # the pool replaced the dead one
    mirrored = sum(o["mirrored"] for o in outcomes)
    lost = sum(_after_mirror_drops(o["outcomes"]) for o in outcomes)
    assert mirrored == 2 * n and lost == 0, outcomes
    ids = _stored(pg_url)
    assert len(ids) == mirrored and len(set(ids)) == len(ids)
    import psycopg
    with psycopg.connect(pg_url) as c:        # each under the sidecar that mirrored it
        by_car = dict(c.execute("SELECT instance, count(*) FROM exchanges "
                                "GROUP BY 1").fetchall())
    assert by_car == {"pod-a": outcomes[0]["mirrored"], "pod-b": outcomes[1]["mirrored"]}
    _aggregates_hold_every_exchange(pg_url, len(ids))
    for o in outcomes:
        assert o["outcomes"].get("compared", 0) == 0     # sidecars compare nothing
    check = _cli("check", "-c", str(cars[0].cfg), "--since", "1h")
    assert check.returncode == 1 and "$.price" in check.stdout, check.stdout + check.stderr


async def test_a_redis_restart_under_load(pg_url: str, redis: RedisServer,
                                          tmp_path: Path) -> None:
    primary = await Upstream(_app(10)).start()
    candidate = await Upstream(_app(12)).start()
    car = _sidecar(tmp_path / "pod.yaml", "pod", pg_url, redis.url, primary, candidate)
    pool = Pool(car.cfg, 1, tmp_path / "compare.log")
    n = 400
    try:
        await car.ready()
        load = asyncio.create_task(_send(car.listen, n, pause=0.02))
        await asyncio.sleep(1.0)
        redis.halt()
        await asyncio.sleep(1.5)
        redis.resume()
        assert await load == n                 # primary answered every request, no error
        outcomes = await _counted(car, n)
        await _drained(redis.url)
        assert car.stop() == 0, car.log.read_text()[-3000:]
        assert pool.stop() == 0, pool.log.read_text()[-3000:]
    finally:
        await _teardown([car, pool], primary, candidate)
    o = outcomes["outcomes"]
    assert _total(outcomes) == n
    assert o.get("dropped{transport_down}", 0) > 0, o       # Redis was away: counted
    ids = _stored(pg_url)
    assert len(set(ids)) == len(ids)
    # every shadow counted: stored, or dropped with its reason
    assert len(ids) + _after_mirror_drops(o) == outcomes["mirrored"], (len(ids), o)


async def _teardown(procs: list[Any], *upstreams: Upstream) -> None:
    """Kill what did not stop by itself (a failed assertion on the way), then stop the
    upstreams."""
    for r in procs:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()
    for up in upstreams:
        await up.stop()


def _comparators_config(car: Running, name: str) -> Path:
    """The sidecars' config, but for its instance: a comparator pool's own name."""
    path = car.cfg.with_name(f"{name}.yaml")
    text = car.cfg.read_text()
    first, rest = text.split("\n", 1)
    assert first.startswith("instance: ")
    path.write_text(f"instance: {name}\n{rest}")
    return path


async def test_each_sidecars_traffic_is_stored_and_read_under_its_name(
        pg_url: str, redis: RedisServer, tmp_path: Path) -> None:
    """Two sidecars, two comparator pools of their own names: every stored exchange,
    per-endpoint aggregate and outcome count of a sidecar's traffic carries the
    sidecar's instance, whichever comparator judged it; reading one sidecar's gives
    its traffic only, and the two add up to the whole, nothing counted twice."""
    import json

    primary = await Upstream(_app(10)).start()
    candidate = await Upstream(_app(12)).start()
    names = ("pod-a", "pod-b")
    cars = [_sidecar(tmp_path / f"{name}.yaml", name, pg_url, redis.url, primary, candidate)
            for name in names]
    pools = [Pool(_comparators_config(cars[0], f"cmp-{x}"), 1, tmp_path / f"cmp-{x}.log")
             for x in "xy"]
    sent = {"pod-a": 120, "pod-b": 80}
    try:
        await asyncio.gather(*(c.ready() for c in cars))
        assert await asyncio.gather(*(_send(c.listen, sent[name], pause=0.01, car=name)
                                      for c, name in zip(cars, names, strict=True))) == \
            [sent[name] for name in names]
        outcomes = {name: await _counted(c, sent[name]) for c, name in zip(cars, names,
                                                                            strict=True)}
        await _drained(redis.url)
        await asyncio.sleep(1.5)        # the comparators' counts: handed over every 0.5 s
        assert [c.stop() for c in cars] == [0, 0], [c.log.read_text()[-3000:] for c in cars]
        assert [p.stop() for p in pools] == [0, 0], [p.log.read_text()[-3000:] for p in pools]
    finally:
        await _teardown([*cars, *pools], primary, candidate)
    mirrored = {name: outcomes[name]["mirrored"] for name in names}
    assert mirrored == sent, outcomes
    import psycopg
    with psycopg.connect(pg_url) as c:
        by_car = dict(c.execute("SELECT instance, count(*) FROM exchanges GROUP BY 1").fetchall())
        wrong = c.execute("SELECT count(*) FROM exchanges WHERE "
                          "query NOT LIKE '%car=' || instance || '%'").fetchone()
        writers = c.execute("SELECT instance, writer, sum(exchanges) FROM rollups "
                            "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        differences = dict(c.execute("SELECT instance, count(DISTINCT exchange_id) FROM "
                                     "differences GROUP BY 1").fetchall())
    assert by_car == sent                                   # every exchange stored once,
    assert wrong == (0,)                                    # under the sidecar it came by
    assert differences == sent                              # each differs on $.price
    # both comparators judged some of each sidecar's traffic, each into its own rows
    assert {(i, w) for i, w, _n in writers} == {(i, f"cmp-{x}-c0") for i in names
                                                for x in "xy"}, writers
    for name in names:
        assert sum(n for i, _w, n in writers if i == name) == sent[name]
    # read one sidecar's: the store, then the commands a user runs
    for name in names:
        one = open_store(pg_url, readonly=True, read_instance=name)
        try:
            (stats,) = one.endpoint_stats()
            assert (stats.exchanges, stats.diffs) == (sent[name], sent[name])
            assert len(one.exchanges(limit=1000)) == sent[name]
            counts = one.outcome_counts()
        finally:
            one.close()
        # the accounting holds per sidecar: mirrored there, compared by the comparators
        assert counts["mirrored"] == {"": sent[name]}, counts
        assert counts["compared"] == {"": sent[name]}, counts
        assert "candidate_error" not in counts and "dropped" not in counts, counts
        out = tmp_path / f"report-{name}.json"
        done = _cli("report", "-c", str(cars[0].cfg), "--since", "1h", "--instance", name,
                    "--format", "json", "-o", str(out))
        assert done.returncode in (0, 1), done.stdout + done.stderr
        doc = json.loads(out.read_text())
        assert doc["totals"]["exchanges"] == sent[name], doc["totals"]
        done = _cli("check", "-c", str(cars[0].cfg), "--since", "1h", "--instance", name,
                    "--format", "json")
        assert done.returncode == 1 and "$.price" in done.stdout, done.stdout + done.stderr
    whole = open_store(pg_url, readonly=True)
    try:
        (stats,) = whole.endpoint_stats()
        assert stats.exchanges == sum(sent.values())
        assert whole.outcome_counts()["compared"] == {"": sum(sent.values())}
    finally:
        whole.close()
