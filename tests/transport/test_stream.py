"""The transport against a real redis-server on loopback (started by the test) and a
real SQLite store: the sidecar's publisher, the comparator's consumer group, claims,
dead letters, the lag bound, trimmed entries, Redis going away, the fleet's switch."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from shadowproxy.config import Config, RedactConfig
from shadowproxy.redact import Redactor
from shadowproxy.stats import Stats
from shadowproxy.store.open import open_store
from shadowproxy.transport import wire
from shadowproxy.transport.consumer import Consumer
from shadowproxy.transport.publisher import Publisher
from shadowproxy.transport.switch import set_switch, watch
from tests.redis_server import RedisServer
from tests.support import config
from tests.transport.exchanges import exchange, item, response

pytestmark = pytest.mark.server

KEY = b"k" * 32


def _cfg(redis: RedisServer, tmp_path: Path, **transport: Any) -> Config:
    return config("http://127.0.0.1:1", "http://127.0.0.1:2",
                  store={"url": f"sqlite:///{tmp_path / 'results.db'}", "flush_interval": "50ms"},
                  timeouts={"shutdown": "5s"},
                  transport={"url": redis.url, "claim_after": "1s", **transport})


async def _until(cond: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out: {what}")


async def _publish(cfg: Config, n: int, stats: Stats | None = None) -> Publisher:
    pub = Publisher(cfg, stats or Stats(), Redactor(RedactConfig(), KEY))
    pub.start()
    await _until(lambda: pub.down is None, what="publisher connected")
    for i in range(n):
        pub.offer(exchange(response(item(10)), response(item(10 + i % 2))))
    await _until(lambda: not pub.buffer, what="buffer drained")
    await asyncio.sleep(0.1)
    return pub


def _stored_ids(cfg: Config) -> list[str]:
    store = open_store(cfg.store.url, readonly=True)
    try:
        return [r.id for r in store.exchanges(limit=100_000)]
    finally:
        store.close()


async def _group(r: aioredis.Redis, cfg: Config) -> dict[str, Any]:
    groups = await r.xinfo_groups(cfg.transport.stream)
    return next(g for g in groups if g["name"] in (b"comparators", "comparators"))


async def test_published_exchanges_are_compared_stored_and_acknowledged(
        redis: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis, tmp_path)
    stats = Stats()
    pub = await _publish(cfg, 60, stats)
    await pub.close(2.0)
    assert pub.added == 60 and stats.total("dropped") == 0
    c = Consumer(cfg)
    task = asyncio.create_task(c.run())
    await _until(lambda: c.writer.acknowledged >= 60, what="stored")
    r = aioredis.Redis.from_url(redis.url)
    await _until(lambda: _pending_is(r, cfg, 0), what="acknowledged")
    c.stop.set()
    await task
    ids = _stored_ids(cfg)
    assert len(ids) == 60 and len(set(ids)) == 60
    assert c.control.total("compared") == 60
    # counted as the sidecar's traffic (the instance its entries carry), not the
    # comparator's own
    assert c.stats.total("compared") == 0
    assert c.control.stats_for(cfg.instance).total("compared") == 60
    await r.aclose()


async def _pending_is(r: aioredis.Redis, cfg: Config, n: int) -> bool:
    return int((await _group(r, cfg))["pending"]) == n


async def test_a_dead_comparators_entries_are_claimed_and_not_stored_twice(
        redis: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis, tmp_path)
    pub = await _publish(cfg, 30)
    await pub.close(2.0)
    r = aioredis.Redis.from_url(redis.url)
    from shadowproxy.transport.client import ensure_group
    await ensure_group(r, cfg.transport)
    # a comparator that read 10 entries and died before acknowledging them
    got = await r.xreadgroup(cfg.transport.group, "dead-one", {cfg.transport.stream: ">"},
                             count=10)
    assert len(got[0][1]) == 10
    c = Consumer(cfg)
    task = asyncio.create_task(c.run())
    await _until(lambda: c.writer.acknowledged >= 30, what="all stored after claim")
    await _until(lambda: _pending_is(r, cfg, 0), what="all acknowledged")
    assert c.claimed == 10
    c.stop.set()
    await task
    ids = _stored_ids(cfg)
    assert len(ids) == 30 and len(set(ids)) == 30
    await r.aclose()


async def test_a_redelivered_stored_exchange_is_acknowledged_not_counted_again(
        redis: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis, tmp_path)
    pub = await _publish(cfg, 5)
    await pub.close(2.0)
    c = Consumer(cfg)
    task = asyncio.create_task(c.run())
    await _until(lambda: c.writer.acknowledged >= 5, what="stored")
    c.stop.set()
    await task
    # the same entries once more, as if their acknowledgement had been lost
    r = aioredis.Redis.from_url(redis.url)
    entries = await r.xrange(cfg.transport.stream)
    for _id, fields in entries:
        await r.xadd(cfg.transport.stream + ":again", fields)
    await r.delete(cfg.transport.stream)
    await r.rename(cfg.transport.stream + ":again", cfg.transport.stream)
    await r.xgroup_create(cfg.transport.stream, cfg.transport.group, id="0")
    await r.xreadgroup(cfg.transport.group, "died", {cfg.transport.stream: ">"})
    c2 = Consumer(cfg)
    task = asyncio.create_task(c2.run())
    await _until(lambda: _pending_is(r, cfg, 0), what="acknowledged")
    c2.stop.set()
    await task
    assert c2.redelivered == 5 and c2.control.total("compared") == 0
    assert len(_stored_ids(cfg)) == 5
    await r.aclose()


async def test_unknown_versions_and_poison_entries_become_counted_dead_letters(
        redis: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis, tmp_path, max_deliveries=3)
    r = aioredis.Redis.from_url(redis.url)
    from shadowproxy.transport.client import ensure_group
    await ensure_group(r, cfg.transport)
    stream, group = cfg.transport.stream, cfg.transport.group
    ex = exchange(response(item(1)), response(item(1)))
    await r.xadd(stream, {b"v": b"9", b"x": wire.pack(ex)})          # a future version
    poison = await r.xadd(stream, {b"v": wire.VERSION, b"x": wire.pack(ex)})
    # the second one was delivered three times to comparators that never acknowledged it
    await r.xreadgroup(group, "a", {stream: ">"}, count=10)
    for name in ("b", "c"):
        await r.xclaim(stream, group, name, 0, [poison])
    c = Consumer(cfg)
    task = asyncio.create_task(c.run())
    await _until(lambda: c.control.total("dropped", "dead_letter") == 1, what="dead letter")
    await _until(lambda: _pending_is(r, cfg, 0), what="acknowledged")
    c.stop.set()
    await task
    assert c.control.total("dropped", "transport_refused") == 1
    dead = await r.xrange(stream + ":dead")
    assert sorted(f[b"reason"].split(b":")[0].split(b" ")[0] for _i, f in dead) == \
        [b"delivered", b"refused"]
    assert _stored_ids(cfg) == []
    await r.aclose()


async def test_a_comparison_that_raises_is_one_dead_letter_not_a_count_per_delivery(
        redis: RedisServer, tmp_path: Path) -> None:
    """An exchange whose comparison raises is delivered again, then dead-lettered: one
    outcome (dropped{dead_letter}, the cause in the dead letter), not one more per
    delivery. The fault is injected into the comparator stage of a real consumer."""
    cfg = _cfg(redis, tmp_path, max_deliveries=3)
    pub = await _publish(cfg, 1)
    await pub.close(2.0)
    c = Consumer(cfg)

    def boom(ex: Any, stats: Any = None) -> None:
        raise RuntimeError("a comparator bug")

    c.control.stage.process = boom  # type: ignore[method-assign]
    task = asyncio.create_task(c.run())
    await _until(lambda: c.control.total("dropped", "dead_letter") == 1, timeout=30,
                 what="dead letter")
    c.stop.set()
    await task
    assert c.control.total("compare_failed") == 0
    assert c.control.total("compared") == 0
    r = aioredis.Redis.from_url(redis.url)
    (_id, fields), = await r.xrange(cfg.transport.stream + ":dead")
    assert b"comparison failed: RuntimeError: a comparator bug" in fields[b"reason"]
    assert await _pending_is(r, cfg, 0)
    await r.aclose()


async def test_sidecars_stop_adding_at_the_lag_bound(redis: RedisServer, tmp_path: Path
                                                       ) -> None:
    cfg = _cfg(redis, tmp_path, max_len=25)
    stats = Stats()
    pub = await _publish(cfg, 60, stats)
    await pub.close(2.0)
    assert pub.added == 25
    assert stats.total("dropped", "compare_full") == 35
    r = aioredis.Redis.from_url(redis.url)
    assert await r.xlen(cfg.transport.stream) == 25
    await r.aclose()


async def test_entries_trimmed_unread_are_counted(redis: RedisServer, tmp_path: Path) -> None:
    cfg = _cfg(redis, tmp_path)
    r = aioredis.Redis.from_url(redis.url)
    from shadowproxy.transport.client import ensure_group
    await ensure_group(r, cfg.transport)
    for _ in range(40):       # another writer trims the stream past the group: 30 unread lost
        ex = exchange(response(item(1)), response(item(1)))
        await r.xadd(cfg.transport.stream, wire.fields(ex), maxlen=10, approximate=False)
    c = Consumer(cfg)
    task = asyncio.create_task(c.run())
    await _until(lambda: c.control.total("dropped", "transport_trimmed") == 30, what="counted")
    await _until(lambda: c.writer.acknowledged >= 10, what="the rest stored")
    await asyncio.sleep(1.2)      # another round of the check: counted once
    c.stop.set()
    await task
    assert c.control.total("dropped", "transport_trimmed") == 30
    await r.aclose()


async def test_redis_down_sheds_at_once_and_resumes_by_itself(redis: RedisServer,
                                                              tmp_path: Path) -> None:
    cfg = _cfg(redis, tmp_path)
    stats = Stats()
    pub = await _publish(cfg, 10, stats)
    redis.halt()
    ex = exchange(response(item(1)), response(item(1)))
    t0 = time.perf_counter()
    for _ in range(200):
        assert pub.offer(ex)        # never waits: taken or dropped and counted
    spent = time.perf_counter() - t0
    await _until(lambda: pub.down is not None, what="seen down")
    for _ in range(50):
        pub.offer(ex)
    dropped = stats.total("dropped", "transport_down")
    assert dropped >= 50
    # a batch sent as Redis went is neither, until Redis says whether it took it
    assert pub.added + dropped + pub.unsettled == 260, (pub.added, dropped, pub.unsettled)
    assert spent < 5.0
    redis.resume()
    await _until(lambda: pub.down is None, what="reconnected")
    assert pub.unsettled == 0
    assert pub.added + stats.total("dropped", "transport_down") == 260
    before = pub.added
    for _ in range(20):
        pub.offer(ex)
    await _until(lambda: pub.added == before + 20, what="writing again")
    await pub.close(2.0)
    assert pub.added + stats.total("dropped") == 280


async def test_a_batch_whose_reply_was_lost_is_counted_once_by_what_redis_took(
        redis: RedisServer, tmp_path: Path) -> None:
    """Redis may run a batch's script and lose the connection before the reply: the
    sidecar then reads the batch number Redis recorded with the entries. Taken: counted
    added (the comparators judge its entries: one outcome each). Not taken: counted
    dropped{transport_down}. Here the script is run by hand, as Redis would have run
    the publisher's call, then the publisher settles the batch as on reconnecting."""
    from shadowproxy.transport.scripts import ADD

    cfg = _cfg(redis, tmp_path)
    stats = Stats()
    pub = await _publish(cfg, 5, stats)
    r = aioredis.Redis.from_url(redis.url)
    data = [wire.pack(exchange(response(item(i)), response(item(i)))) for i in range(3)]
    batch = [("GET /x", d) for d in data]
    try:
        seq = pub._seq + 1
        await r.register_script(ADD)(keys=[cfg.transport.stream, pub._seq_key],
                                     args=[cfg.transport.group, cfg.transport.max_len,
                                           wire.VERSION, seq, *data])
        pub._seq, pub._unsure = seq, (seq, batch)     # its reply never came
        await pub._settle(r)
        assert pub.added == 5 + 3 and pub.unsettled == 0
        assert stats.total("dropped") == 0
        assert await r.xlen(cfg.transport.stream) == 8
        pub._seq += 1
        pub._unsure = (pub._seq, batch)                # this one Redis never ran
        await pub._settle(r)
        assert pub.added == 8 and stats.total("dropped", "transport_down") == 3
    finally:
        await r.aclose()
        await pub.close(2.0)


async def test_the_fleet_switch_reaches_a_watcher_within_a_second(redis: RedisServer,
                                                                  tmp_path: Path) -> None:
    cfg = _cfg(redis, tmp_path)
    seen: list[tuple[bool, float | None]] = []
    task = asyncio.create_task(watch(cfg.transport, lambda en, s: seen.append((en, s))))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    await set_switch(cfg.transport, False, None)
    await _until(lambda: seen == [(False, None)], timeout=1.0, what="off")
    await set_switch(cfg.transport, True, 0.25)
    await _until(lambda: seen[-1] == (True, 0.25), timeout=1.0, what="on at 0.25")
    assert time.monotonic() - t0 < 2.0
    task.cancel()


async def test_a_full_redis_is_said_once_and_the_recovery_once(
        redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At maxmemory (noeviction) Redis refuses the sidecar's writes: each batch is
    dropped and counted dropped{transport_oom} (Redis is up: no reconnect), the cause
    logged once, and once the recovery."""
    cfg = _cfg(redis, tmp_path)
    stats = Stats()
    pub = await _publish(cfg, 1, stats)
    r = aioredis.Redis.from_url(redis.url)
    caplog.set_level("INFO", logger="shadowproxy.transport")
    caplog.clear()
    ex = exchange(response(item(1)), response(item(1)))
    try:
        await r.config_set("maxmemory", "1")
        for i in range(4):
            pub.offer(ex)
            await _until(lambda i=i: stats.total("dropped", "transport_oom") == i + 1,
                         what="the batch refused and counted")
        assert pub.full is not None and pub.down is None
        await r.config_set("maxmemory", "0")
        before = pub.added
        pub.offer(ex)
        await _until(lambda: pub.added == before + 1, what="written again")
        assert pub.full is None
    finally:
        await r.config_set("maxmemory", "0")
        await r.aclose()
        await pub.close(2.0)
    said = [rec.getMessage() for rec in caplog.records]
    assert len([m for m in said if "is full" in m and "maxmemory" in m]) == 1, said
    assert len([m for m in said if m.endswith(" again")]) == 1, said
    assert stats.total("dropped", "transport_down") == 0


async def test_comparators_trim_what_they_are_done_with_and_free_a_full_redis(
        redis: RedisServer, tmp_path: Path) -> None:
    """The stream keeps only what is not yet acknowledged: a Redis filled to its
    maxmemory by a backlog is freed by the comparators reading, acknowledging and
    trimming (the read and the trim run although Redis is full), and the sidecar
    writes again."""
    cfg = _cfg(redis, tmp_path)
    stats = Stats()
    pub = await _publish(cfg, 400, stats)
    r = aioredis.Redis.from_url(redis.url)
    try:
        assert await r.xlen(cfg.transport.stream) == 400
        used = int((await r.info("memory"))["used_memory"])
        await r.config_set("maxmemory", str(used - 1024))        # full now
        pub.offer(exchange(response(item(1)), response(item(1))))
        await _until(lambda: stats.total("dropped", "transport_oom") == 1, what="refused")
        c = Consumer(cfg)
        task = asyncio.create_task(c.run())
        await _until(lambda: c.writer.acknowledged >= 400, what="stored although full")
        await _until(lambda: c.trimmed_read >= 399, timeout=30, what="trimmed")
        assert await r.xlen(cfg.transport.stream) <= 1
        assert int((await r.info("memory"))["used_memory"]) < used - 1024
        before = pub.added
        pub.offer(exchange(response(item(2)), response(item(2))))
        await _until(lambda: pub.added == before + 1, what="the sidecar writes again")
        await _until(lambda: c.writer.acknowledged >= 401, what="and it is compared")
        c.stop.set()
        await task
        assert c.control.total("dropped", "transport_trimmed") == 0   # none went unread
        assert sorted(set(_stored_ids(cfg))) == sorted(_stored_ids(cfg))
        assert len(_stored_ids(cfg)) == 401
    finally:
        await r.config_set("maxmemory", "0")
        await r.aclose()
        await pub.close(2.0)


async def test_many_dead_letters_of_one_cause_are_each_counted_and_logged_once(
        redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(redis, tmp_path)
    r = aioredis.Redis.from_url(redis.url)
    from shadowproxy.transport.client import ensure_group
    await ensure_group(r, cfg.transport)
    ex = exchange(response(item(1)), response(item(1)))
    for _ in range(20):                             # a newer sidecar's entries
        await r.xadd(cfg.transport.stream, {b"v": b"9", b"x": wire.pack(ex)})
    await r.xadd(cfg.transport.stream, {b"v": wire.VERSION, b"x": b"\xc1"})   # garbage
    caplog.set_level("WARNING", logger="shadowproxy.comparator")
    c = Consumer(cfg)
    task = asyncio.create_task(c.run())
    await _until(lambda: c.control.total("dropped", "transport_refused") == 21,
                 what="refused and counted")
    c.stop.set()
    await task
    await r.aclose()
    said = [rec.getMessage() for rec in caplog.records if "moved to" in rec.getMessage()]
    assert len([m for m in said if "version '9'" in m]) == 1, said
    assert len([m for m in said if "not MessagePack" in m]) == 1, said
