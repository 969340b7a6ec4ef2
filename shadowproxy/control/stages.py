"""The control process's stages: the channel's server end, the comparator, the store
writer and the counters (the admin server reads them)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any

from ..compare.stage import CompareStage
from ..config import Config
from ..errors import StoreError
from ..models import Exchange
from ..stats import Stats
from ..store.runs import RUN_PREFIX
from .channel import ChannelServer

log = logging.getLogger("shadowproxy")

COUNTS_INTERVAL = 0.5    # the control process hands its counts to the store writer
TRAFFIC_STATS_IDLE = 600.0  # a sidecar's counts unused this long are forgotten (sent)


class Control:
    """Comparator, store writer and counter totals; fed in-process or by the channel."""

    def __init__(self, cfg: Config, *, on_result: Any = None, redact_key: bytes | None = None
                 ) -> None:
        from ..redact import Redactor
        from ..store.retry import open_or_retry
        from ..store.writer import StoreWriter

        self.cfg = cfg
        self.stats = Stats()
        # a fleet's comparator: the outcomes of each sidecar's traffic, counted and
        # stored under that sidecar's instance (stats_for), with when each last counted
        self.traffic_stats: dict[str, tuple[Stats, float]] = {}
        self.gauges: dict[int, dict[str, float]] = {}          # by worker
        self.shadow_gauges: dict[int, dict[str, float]] = {}   # by shadow process
        # a store that cannot be opened now never keeps primary from serving: retried
        from ..store.open import store_options

        opts = store_options(cfg)
        self.store = open_or_retry(cfg.store.url, samples_per_field=cfg.store.samples_per_field,
                                   instance=opts["instance"], password=opts["password"])
        self.writer = StoreWriter(self.store, cfg.store)
        self.redactor = Redactor(cfg.redact, redact_key) if redact_key is not None \
            else Redactor.from_config(cfg.redact)
        self.stage = CompareStage(cfg, self.stats, writer=self.writer, redactor=self.redactor,
                                  on_result=on_result)
        self.channel: ChannelServer | None = None
        self._tick: asyncio.Task[None] | None = None
        self.mirror_state: tuple[bool, float] = (cfg.mirror.enabled, cfg.mirror.sample)
        self.mirror_overridden = False   # mirror_state was set through the admin API
        # in-process proxies (InProcess) register here; workers get it over the channel
        self.local_mirrors: list[Any] = []
        self.ready_workers: set[int] = set()   # workers listening now
        self.ready_shadows: set[int] = set()   # shadow processes taking shadows
        self._run_open = False                 # open_run() recorded a start
        # a sidecar of a fleet (transport.url): the stream's state, read every second
        self.transport_info: dict[str, Any] | None = None
        self._transport_tasks: list[asyncio.Task[None]] = []
        # this process's noise learner in the store's noise_counts: a name of its own, so
        # the learners of a fleet (and of this instance's earlier runs) add up
        self.learner_name = f"{opts['instance']}/{os.getpid()}/{time.time_ns():x}"

    async def start(self, channel_path: str | None = None) -> None:
        self.stage.after_burst = self._flush_counts
        self.stage.start()
        if channel_path is not None:
            self.channel = ChannelServer(channel_path, self.on_message)
            await self.channel.start()
            if self.cfg.transport.url is not None:
                self._start_transport()
        self._tick = asyncio.create_task(self._persist_counts(), name="persist-counts")

    def _start_transport(self) -> None:
        """A sidecar of a fleet: its shadow processes write to the stream; here the
        stream's state is read for the admin API and the fleet's mirror switch watched."""
        from ..transport.info import info_forever
        from ..transport.switch import watch

        if not self.cfg.redact.key_env:
            log.warning("transport.url without redact.key_env: this sidecar masks with a key "
                        "of its own, so masks and digests do not compare across the fleet's "
                        "instances (set redact.key_env to one secret shared by all)")
        self.transport_info = {}
        self._transport_tasks = [
            asyncio.create_task(info_forever(self.cfg.transport, self.transport_info),
                                name="transport-info"),
            asyncio.create_task(watch(self.cfg.transport, self.set_mirror),
                                name="transport-mirror-switch")]

    def on_message(self, msg: tuple[Any, ...]) -> Any:
        kind = msg[0]
        if kind == "xs":
            return self._put_all(msg[1])
        if kind == "x":
            return self.stage.put(msg[1])
        if kind == "s":
            self.stats.merge(msg[1])
        elif kind == "g":
            self.gauges[msg[1]] = msg[2]
        elif kind == "gs":
            self.shadow_gauges[msg[1]] = msg[2]
        elif kind == "shadow_ready":
            self.ready_shadows.add(msg[1])
        elif kind == "ready":
            self.ready_workers.add(msg[1])
            if self.mirror_overridden and self.channel is not None:
                # a worker (re)started with the file's config: the switch holds for it too
                self.channel.broadcast(("mirror", *self.mirror_state))
        elif kind == "bye":
            self.ready_workers.discard(msg[1])
        return None

    async def _put_all(self, exchanges: list[Exchange]) -> None:
        """A worker's batch: each exchange waits for room, as one a frame did (handed
        on at once while there is room)."""
        offer, put = self.stage.offer, self.stage.put
        for ex in exchanges:
            if not offer(ex):
                await put(ex)

    def shadow_lost(self, index: int) -> int:
        """A shadow process died: what it held at its last report (at most
        ``channel.REPORT_INTERVAL`` old) is counted ``dropped{shadow_crash}``, so that the shadows
        it had counted ``mirrored`` end counted, not hidden."""
        g = self.shadow_gauges.pop(index, {})
        n = int(g.get("mirror_queue_depth", 0) + g.get("mirror_in_flight", 0)
                + g.get("mirror_pending", 0))
        if n:
            self.stats.add("dropped", "shadow_crash", "", n)
        return n

    def reload(self, cfg: Config) -> None:
        """A new config for every stage. Mirroring switched at run time (the admin API)
        stays as switched unless the new file changes ``mirror.enabled`` or
        ``mirror.sample`` itself: the latest decision wins, and a kept switch is logged."""
        before = (self.cfg.mirror.enabled, self.cfg.mirror.sample)
        after = (cfg.mirror.enabled, cfg.mirror.sample)
        self.cfg = cfg
        # the reloaded redaction rules with the run's key (drawn once: masks compare
        # across a reload, and the workers' access logs use the same)
        from ..redact import Redactor
        self.redactor = self.stage.redactor = Redactor(cfg.redact, self.redactor.key)
        self.stage.configure(cfg)
        keep = self.mirror_overridden and after == before
        if self.channel is not None:
            self.channel.broadcast(("cfg", cfg))
        if keep:
            log.warning("reload keeps mirroring enabled=%s sample=%s as switched through the "
                        "admin API (the file's mirror.enabled and mirror.sample did not "
                        "change); PUT /api/v1/mirror to change it", *self.mirror_state)
            self.set_mirror(*self.mirror_state)   # over the config the workers just got
        else:
            self.mirror_state = after
            self.mirror_overridden = False

    def set_mirror(self, enabled: bool | None = None, sample: float | None = None) -> None:
        """Run-time switch: mirroring on/off and the sample rate, in every worker."""
        self.mirror_overridden = True
        en, rate = self.mirror_state
        en = en if enabled is None else enabled
        rate = rate if sample is None else sample
        self.mirror_state = (en, rate)
        for m in self.local_mirrors:
            m.enabled = en and m.candidate is not None
            m.sample = rate
        if self.channel is not None:
            self.channel.broadcast(("mirror", en, rate))

    def stats_for(self, instance: str | None) -> Stats:
        """The counts of ``instance``'s traffic (a sidecar's, judged by a fleet's
        comparator): stored under its name. None: this process's own :attr:`stats`."""
        if instance is None:
            return self.stats
        got = self.traffic_stats.get(instance)
        st = Stats() if got is None else got[0]
        self.traffic_stats[instance] = (st, time.monotonic())
        return st

    def total(self, outcome: str, reason: str | None = None) -> int:
        """:meth:`Stats.total` over this process's own counts and every sidecar's."""
        return self.stats.total(outcome, reason) + sum(
            st.total(outcome, reason) for st, _t in self.traffic_stats.values())

    def _flush_counts(self) -> None:
        minute = float(int(time.time() // 60 * 60))
        rows = [(minute, ep, o, r, n) for (o, r, ep), n in self.stats.take_delta()]
        if rows:
            self.writer.add_outcomes(rows)
        idle = time.monotonic() - TRAFFIC_STATS_IDLE
        for inst, (st, used) in list(self.traffic_stats.items()):
            rows = [(minute, ep, o, r, n) for (o, r, ep), n in st.take_delta()]
            if rows:
                self.writer.add_outcomes(rows, inst)
            elif used < idle:     # all handed over, and quiet: a sidecar that went
                del self.traffic_stats[inst]

    async def _persist_counts(self) -> None:
        """Counts every ``COUNTS_INTERVAL`` (the writer commits them with the next batch
        of results: what a crash leaves of one and the other differs by at most that
        and a batch), noise evidence every 5 s."""
        ticks = 0
        await self.share_noise()
        while True:
            await asyncio.sleep(COUNTS_INTERVAL)
            self._flush_counts()
            ticks += 1
            if ticks % 10 == 0:
                await self.share_noise()
                self.writer.save_noise(self.stage.learner.evidence())

    async def share_noise(self) -> None:
        """Save this learner's own counts and learn the others' sums from the store:
        noise learned by any comparator of a fleet, or by this instance before a
        restart, counts here too (:mod:`shadowproxy.compare.noise`)."""
        learner = self.stage.learner
        self.writer.save_noise_counts(self.learner_name, learner.own_counts())
        inst = self.learner_name.split("/", 1)[0]
        run = inst[len(RUN_PREFIX):] if inst.startswith(RUN_PREFIX) else None
        try:
            others = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(self.store.noise_counts, self.learner_name, run=run))
        except StoreError as exc:
            log.debug("noise counts not read: %s", exc)
            return
        learner.set_others(others)

    async def open_run(self) -> None:
        """Record this run's start in the store, and an ``incident{unclean_stop}`` when
        the run before it ended without a clean stop (killed, or the machine went
        down): its last second of results and counts may be missing, and readers
        (reports, ``check``) show that it happened instead of hiding it."""
        def previous() -> int:
            """This instance's runs started, less those stopped and those already
            recorded unclean. Only its own: in a fleet's PostgreSQL store the other
            sidecars' runs are open while they serve, and are not this one's crash."""
            try:
                counts = self._own_counts()
            except StoreError:
                return 0
            runs = counts.get("run", {})
            return runs.get("started", 0) - runs.get("stopped", 0) - \
                counts.get("incident", {}).get("unclean_stop", 0)
        unclean = await asyncio.get_running_loop().run_in_executor(None, previous)
        now = float(int(time.time() // 60 * 60))
        rows = [(now, "", "run", "started", 1)]
        if unclean > 0:
            log.warning("the store says %d run(s) before this one ended without a clean "
                        "stop: up to %gs of results and counts before each may be missing "
                        "(recorded as incident{unclean_stop})", unclean, COUNTS_INTERVAL * 2)
            rows.append((now, "", "incident", "unclean_stop", unclean))
        self.writer.add_outcomes(rows)
        self._run_open = True

    def _own_counts(self) -> dict[str, dict[str, int]]:
        """This instance's outcome counts (an SQLite store holds only its own)."""
        from ..store.open import POSTGRES_SCHEMES, open_store, store_options

        url = self.cfg.store.url
        if not url.startswith(POSTGRES_SCHEMES):
            return self.store.outcome_counts()
        from ..config import default_instance

        opts = store_options(self.cfg)
        mine = opts["instance"] or default_instance()    # the name the writer uses
        own = open_store(url, readonly=True, read_instance=mine, password=opts["password"])
        try:
            return own.outcome_counts()
        finally:
            own.close()

    async def stop(self, timeout: float) -> None:
        for task in self._transport_tasks:
            task.cancel()
        if self.channel is not None:
            await self.channel.wait_closed(timeout)
            await self.channel.close()
        await self.stage.stop(timeout)
        if self._tick is not None:
            self._tick.cancel()
        self._flush_counts()
        self.writer.save_noise_counts(self.learner_name, self.stage.learner.own_counts())
        self.writer.save_noise(self.stage.learner.evidence())
        if self._run_open:
            self.writer.add_outcomes([(float(int(time.time() // 60 * 60)), "", "run",
                                       "stopped", 1)])
        await asyncio.get_running_loop().run_in_executor(None, self.writer.close, timeout)
