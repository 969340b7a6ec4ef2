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
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from typing import Any

from .. import config as config_mod
from ..admin.server import AdminServer
from ..config import Config
from ..errors import ConfigError, ShadowProxyError, StoreError
from ..limits import raise_nofile
from ..models import Result
from ..process import install_uvloop, lower_priority, setup_logging
from ..proxy.server import ProxyServer, bind
from ..proxy.worker import worker_entry
from .shadow import shadow_entry
from .stages import Control

log = logging.getLogger("shadowproxy")

REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


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
        p = ctx.Process(target=shadow_entry, args=(control.cfg, shadow_paths[i], path, i,
                                                   control.redactor.key),
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
