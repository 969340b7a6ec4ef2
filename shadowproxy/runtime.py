"""Processes: the supervisor, the control process's stages and the proxy workers.

``shadowproxy run`` starts one control process (this one), ``shadow.processes``
shadow processes (at a lower CPU priority) and ``workers`` proxy processes that
share the listening socket::

    clients ──► worker 1..N (proxy + tee) ──► shadow 1..M (mirror) ──channel──► control:
                                                  └─► candidate, secondary     comparator ─► store
                                                                               stats, admin

* SIGTERM/SIGINT: workers stop accepting, finish in-flight requests, hand on
  primary's last answers and flush their counters; then the shadow processes drain
  their mirror queues up to ``timeouts.shutdown``; then the control process compares
  what is queued, flushes the store and exits 0.
* SIGHUP: the config file is read again; a valid one is applied to the control
  stages and sent to every worker (routes, sampling, rules); an invalid one is
  logged and the old one kept. Connections are not dropped.
* A worker or a shadow process that dies is started again.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from typing import Any

from . import config as config_mod
from .channel import ChannelClient, ChannelServer, report_forever
from .compare.stage import CompareStage
from .config import Config
from .errors import ConfigError, ShadowProxyError, StoreError
from .limits import raise_nofile
from .models import Exchange, Result
from .server import ProxyServer, bind
from .shadow import lower_priority, shadow_entry
from .stats import Stats
from .tee import Tee

log = logging.getLogger("shadowproxy")

COUNTS_INTERVAL = 0.5    # the control process hands its counts to the store writer


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def setup_logging(cfg: Config) -> None:
    from .logs import setup_logging as _setup

    _setup(cfg.log.level)


# ---------------------------------------------------------------- control stages


class Control:
    """Comparator, store writer and counter totals; fed in-process or by the channel."""

    def __init__(self, cfg: Config, *, on_result: Any = None, redact_key: bytes | None = None
                 ) -> None:
        from .redact import Redactor
        from .store.retry import open_or_retry
        from .store.writer import StoreWriter

        self.cfg = cfg
        self.stats = Stats()
        self.gauges: dict[int, dict[str, float]] = {}          # by worker
        self.shadow_gauges: dict[int, dict[str, float]] = {}   # by shadow process
        # a store that cannot be opened now never keeps primary from serving: retried
        self.store = open_or_retry(cfg.store.url, samples_per_field=cfg.store.samples_per_field)
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

    async def start(self, channel_path: str | None = None) -> None:
        self.stage.after_burst = self._flush_counts
        self.stage.start()
        if channel_path is not None:
            self.channel = ChannelServer(channel_path, self.on_message)
            await self.channel.start()
        self._tick = asyncio.create_task(self._persist_counts(), name="persist-counts")

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
        from .redact import Redactor
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

    def _flush_counts(self) -> None:
        minute = int(time.time() // 60 * 60)
        rows = [(float(minute), ep, o, r, n) for (o, r, ep), n in self.stats.take_delta()]
        if rows:
            self.writer.add_outcomes(rows)

    async def _persist_counts(self) -> None:
        """Counts every ``COUNTS_INTERVAL`` (the writer commits them with the next batch
        of results: what a crash leaves of one and the other differs by at most that
        and a batch), noise evidence every 5 s."""
        ticks = 0
        while True:
            await asyncio.sleep(COUNTS_INTERVAL)
            self._flush_counts()
            ticks += 1
            if ticks % 10 == 0:
                self.writer.save_noise(self.stage.learner.evidence())

    async def open_run(self) -> None:
        """Record this run's start in the store, and an ``incident{unclean_stop}`` when
        the run before it ended without a clean stop (killed, or the machine went
        down): its last second of results and counts may be missing, and readers
        (reports, ``check``) show that it happened instead of hiding it."""
        def previous() -> int:
            """Runs started, less those stopped and those already recorded unclean."""
            try:
                counts = self.store.outcome_counts()
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

    async def stop(self, timeout: float) -> None:
        if self.channel is not None:
            await self.channel.wait_closed(timeout)
            await self.channel.close()
        await self.stage.stop(timeout)
        if self._tick is not None:
            self._tick.cancel()
        self._flush_counts()
        self.writer.save_noise(self.stage.learner.evidence())
        if self._run_open:
            self.writer.add_outcomes([(float(int(time.time() // 60 * 60)), "", "run",
                                       "stopped", 1)])
        await asyncio.get_running_loop().run_in_executor(None, self.writer.close, timeout)


# ---------------------------------------------------------------- workers


REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def name_process(name: str) -> None:
    """The name ``ps``, ``top`` and /proc/PID/comm show for this process (Linux; at most
    15 bytes), so that workers and shadow processes can be told apart."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def worker_entry(cfg: Config, sock: socket.socket | str, channel_path: str, index: int,
                 redact_key: bytes | None = None, shadow_paths: list[str] | None = None
                 ) -> None:
    """A proxy worker process. ``redact_key``: the run's (the control process's), so
    that what a worker masks (the access log) masks as the store does. ``shadow_paths``:
    the shadow processes' sockets."""
    name_process(f"shadowproxy-w{index}")
    setup_logging(cfg)
    install_uvloop()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides
    try:
        asyncio.run(_worker(cfg, sock, channel_path, index, redact_key, shadow_paths or []))
    except KeyboardInterrupt:  # pragma: no cover
        pass


async def _worker(cfg: Config, sock: socket.socket | str, channel_path: str, index: int,
                  redact_key: bytes | None, shadow_paths: list[str]) -> None:
    """``sock`` is the shared listening socket, or the address to bind with SO_REUSEPORT.
    The worker does the primary path and the tee: each mirrored request leaves it at
    once for a shadow process (:mod:`shadowproxy.tee`)."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    stop = asyncio.Event()
    server: ProxyServer | None = None

    def on_message(msg: tuple[Any, ...]) -> None:
        if msg[0] == "cfg" and server is not None:
            server.reload(msg[1])
        elif msg[0] == "mirror" and server is not None:
            server.mirror.enabled = bool(msg[1]) and server.mirror.candidate is not None
            if msg[2] is not None:
                server.mirror.sample = float(msg[2])

    client = ChannelClient(channel_path, on_message=on_message, on_close=stop.set)
    await client.connect()
    tee = Tee(cfg, stats, shadow_paths)
    await tee.start(wait=5.0)
    server = ProxyServer(cfg, stats, None, redact_key=redact_key, tee=tee)
    if isinstance(sock, str):
        sock = bind(sock, reuse_port=True)
    sock.setblocking(False)
    await server.start(sock)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor reloads
    settle_heap()

    def gauges() -> dict[str, float]:
        return {"tee_waiting_primary": tee.open, "tee_buffered_bytes": tee.budget.used,
                "shadow_link_buffered_bytes": tee.buffered}

    reporter = asyncio.create_task(report_forever(client, stats.take_delta,
                                                  lambda: ("g", index, gauges())))
    client.send(("ready", index), force=True)
    await stop.wait()
    client.send(("bye", index), force=True)
    await server.stop()
    reporter.cancel()
    client.send(("s", stats.take_delta()), force=True)
    await client.close()


# ---------------------------------------------------------------- supervisor


def settle_heap() -> None:
    """Once a worker has started: what it has built so far (modules, config, pools,
    ~40,000 objects) lives as long as the process, so the cyclic collector stops
    walking it (``gc.freeze``). A full collection then walks only what requests made:
    with 1,000 shadows queued behind a slow candidate, 2 ms instead of 29 ms, a pause
    every request on the worker would otherwise wait out. (Not in the control process:
    its pauses never reach a client, and frozen cycles are never finalized, so a
    store connection held in one would not be closed at exit.)"""
    gc.collect()
    gc.freeze()


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def run(cfg: Config, workers: int | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    setup_logging(cfg)
    install_uvloop()
    raise_nofile()          # before any process is started: they all inherit it
    n = workers or cfg.workers or default_workers()
    try:
        return asyncio.run(_supervise(cfg, n))
    except StoreError as exc:
        log.error("%s", exc)
        return 1


def _cannot_listen(cfg: Config, key: str, exc: OSError) -> str:
    address = cfg.listen if key == "listen" else cfg.admin.listen
    why = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        why += " (another process, or another shadowproxy, listens there)"
    return f"{cfg.where(key)}: cannot listen on {address}: {why}"


def claim_listen(cfg: Config) -> socket.socket:
    """The supervisor's socket on ``listen``: with SO_REUSEPORT bound but never
    listening (it holds the port while the workers bind their own), else the one
    listening socket the workers share. Raises :class:`ShadowProxyError` naming the
    config's file, line and key when the port cannot be had. With SO_REUSEPORT a
    second instance could otherwise join the port and take part of the traffic:
    a bind without it first fails while anything listens on the port."""
    try:
        if REUSE_PORT and config_mod.split_address(cfg.listen)[1]:
            bind(cfg.listen, listen=False).close()
        return bind(cfg.listen, reuse_port=REUSE_PORT, listen=not REUSE_PORT)
    except OSError as exc:
        raise ShadowProxyError(_cannot_listen(cfg, "listen", exc)) from None


async def _supervise(cfg: Config, n: int) -> int:
    loop = asyncio.get_running_loop()
    # With SO_REUSEPORT every worker binds its own socket and the kernel balances
    # connections among them; this one only holds the port (it never listens).
    # Without it, the workers share one listening socket.
    sock = claim_listen(cfg)
    host, port = sock.getsockname()[:2]
    target: socket.socket | str = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not REUSE_PORT:
        target = sock
    tmp = tempfile.mkdtemp(prefix="shadowproxy-")
    os.chmod(tmp, 0o700)
    path = os.path.join(tmp, "channel.sock")
    control = Control(cfg)
    await control.start(path)
    await control.open_run()
    from .admin import AdminServer
    admin = AdminServer(cfg, control)
    try:
        await admin.start()
    except OSError as exc:
        await admin.stop()
        await control.stop(cfg.timeouts.shutdown)
        sock.close()
        raise ShadowProxyError(_cannot_listen(cfg, "admin.listen", exc)) from None
    # Workers and shadow processes are forked by a fork server started now, at this
    # process's priority, before this process lowers its own (the comparator and the
    # store writer run at the shadow stage's priority too): a worker started again
    # later still gets the priority the workers started with.
    ctx = _context()
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    shadows: dict[int, multiprocessing.process.BaseProcess] = {}
    shadow_paths = [os.path.join(tmp, f"shadow-{i}.sock") for i in range(cfg.shadow.processes)]
    stopping = asyncio.Event()

    def spawn(i: int) -> None:
        p = ctx.Process(target=worker_entry,
                        args=(control.cfg, target, path, i, control.redactor.key,
                              shadow_paths),
                        name=f"shadowproxy-worker-{i}", daemon=False)
        p.start()
        procs[i] = p

    def spawn_shadow(i: int) -> None:
        control.ready_shadows.discard(i)
        p = ctx.Process(target=shadow_entry, args=(control.cfg, shadow_paths[i], path, i),
                        name=f"shadowproxy-shadow-{i}", daemon=False)
        p.start()
        shadows[i] = p

    # the shadow stage first: a worker's first mirrored request finds it listening
    for i in range(len(shadow_paths)):
        spawn_shadow(i)
    t0 = loop.time()
    while len(control.ready_shadows) < len(shadow_paths) and loop.time() - t0 < 15.0:
        await asyncio.sleep(0.02)
    for i in range(n):
        spawn(i)
    nice = lower_priority(cfg.shadow.nice) if ctx.get_start_method() == "forkserver" else 0
    log.info("control process (comparator, store writer, admin) at nice %d", nice)
    log.info("listening on %s:%d with %d worker(s); admin on %s", host, port, n,
             admin.address)
    print(f"shadowproxy listening on {host}:{port} ({n} workers), admin {admin.address}",
          flush=True)

    def reload() -> None:
        try:
            new = config_mod.load(cfg.source or "")
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        if new.listen != control.cfg.listen:
            log.warning("listen changed; it takes effect on restart only")
        if (new.shadow.processes, new.shadow.nice) != (control.cfg.shadow.processes,
                                                       control.cfg.shadow.nice):
            log.warning("shadow.processes and shadow.nice take effect on restart only")
        control.reload(new)
        admin.reload(new)
        log.info("configuration reloaded from %s", cfg.source)

    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    if cfg.source:
        loop.add_signal_handler(signal.SIGHUP, reload)

    announced = False
    while not stopping.is_set():
        if not announced and len(control.ready_workers) >= n:
            announced = True
            log.info("all %d workers ready", n)
            print(f"ready: {n} workers", flush=True)
        try:
            await asyncio.wait_for(stopping.wait(), 0.1 if not announced else 1.0)
        except TimeoutError:
            pass
        for i, p in list(procs.items()):
            if not p.is_alive() and not stopping.is_set():
                log.error("worker %d exited with %s; starting it again", i, p.exitcode)
                spawn(i)
        for i, p in list(shadows.items()):
            if not p.is_alive() and not stopping.is_set():
                lost = control.shadow_lost(i)
                log.error("shadow process %d exited with %s; starting it again (about %d "
                          "shadows it held are counted dropped{shadow_crash}, from its last "
                          "report)", i, p.exitcode, lost)
                spawn_shadow(i)

    log.info("stopping: draining workers, then the shadow stage")
    deadline = cfg.timeouts.shutdown + 5.0
    await _stop_processes(procs, deadline, "worker")
    sock.close()
    await _stop_processes(shadows, deadline, "shadow process")
    await control.stop(cfg.timeouts.shutdown)
    await admin.stop()
    for leftover in (path, *shadow_paths):
        try:
            os.unlink(leftover)
        except OSError:
            pass
    try:
        os.rmdir(tmp)
    except OSError:
        pass
    totals = control.stats.by_outcome()
    log.info("stopped; outcomes: %s", totals)
    return 0


def _context() -> multiprocessing.context.ForkServerContext | \
        multiprocessing.context.SpawnContext:
    """A fork server where there is one (Linux), else spawn. The fork server loads
    nothing of the package (children import what they run): preloaded, it held
    another ~35 MB of resident memory for the run's lifetime."""
    try:
        return multiprocessing.get_context("forkserver")
    except ValueError:  # pragma: no cover - no fork server on this platform
        return multiprocessing.get_context("spawn")


async def _stop_processes(procs: dict[int, multiprocessing.process.BaseProcess],
                          deadline: float, what: str) -> None:
    """SIGTERM each, wait until they exit (up to ``deadline`` s), kill the rest."""
    loop = asyncio.get_running_loop()
    for p in procs.values():
        if p.pid is not None and p.is_alive():
            os.kill(p.pid, signal.SIGTERM)
    t0 = loop.time()
    while any(p.is_alive() for p in procs.values()) and loop.time() - t0 < deadline:
        await asyncio.sleep(0.05)
    for p in procs.values():
        if p.is_alive():
            log.error("%s %s did not stop in time; killing it", what, p.pid)
            p.kill()


# ---------------------------------------------------------------- in one process


class InProcess:
    """Everything in one event loop: for tests and embedding (not for production,
    where comparisons must not share the proxy's loop)."""

    def __init__(self, cfg: Config, *, on_result: Any = None) -> None:
        self.results: list[Result] = []
        self.control = Control(cfg, on_result=on_result or self.results.append)
        self.stats = self.control.stats
        self.server = ProxyServer(cfg, self.stats, self.control.stage.offer,
                                  redact_key=self.control.redactor.key)
        self.control.local_mirrors.append(self.server.mirror)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> InProcess:
        await self.control.start()
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop()
        await self.control.stop(self.control.cfg.timeouts.shutdown)
