"""``make demo-fleet``: a fleet on loopback, from a checkout.

It starts Debian's ``redis-server`` and a PostgreSQL (``postgresql``) in
``out/demo-fleet/`` (saying which packages to install when they are missing), the
demo's primary, candidate and secondary, two sidecars (``shadowproxy run`` with
``config/demo-fleet.yaml``: ``transport.url`` set, so they ship exchanges to the
stream and compare nothing) and a comparator pool (``shadowproxy compare
--processes 2``); sends the demo's traffic through both sidecars, stops the sidecars,
waits until the comparators have acknowledged every entry, stops them, and runs
``check`` and ``report`` on the fleet's PostgreSQL store. The servers are started
with the tests' harness (``tests/redis_server.py``, ``tests/pg_server.py``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from .__main__ import (
    ROOT,
    _free_port,
    _plan,
    _send,
    _start,
    _wait_ready,
    print_outcomes,
    print_summary,
)
from .upstreams import make_app

REQUESTS = 1000          # through each sidecar
PACKAGES = {"redis-server": "redis-server", "postgres": "postgresql"}


def _harness() -> tuple[Any, Any] | None:
    """The tests' RedisServer and PgServer classes; None (after saying what to install)
    when Debian's servers are not there."""
    sys.path.insert(0, str(ROOT))
    pg = importlib.import_module("tests.pg_server")
    missing = []
    if not (shutil.which("redis-server") or os.path.exists("/usr/bin/redis-server")):
        missing.append(PACKAGES["redis-server"])
    if pg.find_bindir() is None:
        missing.append(PACKAGES["postgres"])
    if missing:
        print(f"make demo-fleet needs Redis and PostgreSQL on this machine: "
              f"apt-get install {' '.join(missing)}", file=sys.stderr)
        return None
    return importlib.import_module("tests.redis_server").RedisServer, pg.PgServer


async def _drained(url: str, stream: str, timeout: float = 120.0) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await r.xinfo_stream(stream)
            group = (await r.xinfo_groups(stream))[0]
            if group["last-delivered-id"] == info["last-generated-id"] and \
                    group["pending"] == 0:
                return
            await asyncio.sleep(0.2)
        raise SystemExit("the comparators did not drain the stream in time")
    finally:
        await r.aclose()


async def _run(redis_cls: Any, pg_cls: Any, out: Path) -> int:
    redis = redis_cls(out / "redis").start()
    pg = pg_cls(out / "pg").start()
    procs: list[subprocess.Popen[bytes]] = []
    runners = []
    try:
        urls = {}
        for role in ("primary", "candidate", "secondary"):
            runner, url = await _start(make_app(role))
            runners.append(runner)
            urls[role] = url
        base = dict(os.environ, DEMO_PRIMARY=urls["primary"], DEMO_CANDIDATE=urls["candidate"],
                    DEMO_SECONDARY=urls["secondary"], DEMO_REDIS_URL=redis.url,
                    DEMO_STORE_URL=pg.url, DEMO_REDACT_KEY="demo-fleet-shared-key",
                    DEMO_DIR=str(out))
        cfg_path = ROOT / "config" / "demo-fleet.yaml"
        print(f"redis-server on {redis.url}, PostgreSQL on {pg.url}")
        sidecars = []
        for name in ("sidecar-a", "sidecar-b"):
            listen, admin = _free_port(), _free_port()
            env = dict(base, DEMO_INSTANCE=name, DEMO_LISTEN_PORT=str(listen),
                       DEMO_ADMIN_PORT=str(admin))
            print(f"$ shadowproxy run -c config/demo-fleet.yaml      # {name} on :{listen}")
            log = (out / f"{name}.log").open("wb")
            p = subprocess.Popen([sys.executable, "-m", "shadowproxy", "run", "-c",
                                  str(cfg_path)], env=env, cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT)
            procs.append(p)
            sidecars.append((name, p, listen, admin))
        print("$ shadowproxy compare -c config/demo-fleet.yaml --processes 2")
        comparators = subprocess.Popen(
            [sys.executable, "-m", "shadowproxy", "compare", "-c", str(cfg_path),
             "--processes", "2"], env=dict(base, DEMO_INSTANCE="comparators"), cwd=ROOT,
            stdout=(out / "comparators.log").open("wb"), stderr=subprocess.STDOUT)
        procs.append(comparators)
        for _name, p, listen, admin in sidecars:
            await _wait_ready(f"http://127.0.0.1:{admin}/healthz", p, timeout=60)
            await _wait_ready(f"http://127.0.0.1:{listen}/health", p, timeout=60)
        t0 = time.monotonic()
        results = await asyncio.gather(*(_send(f"http://127.0.0.1:{listen}",
                                               _plan(REQUESTS, seed=i))
                                         for i, (_n, _p, listen, _a) in enumerate(sidecars)))
        print(f"\nsent {REQUESTS} requests through each sidecar in "
              f"{time.monotonic() - t0:.1f}s; clients saw statuses {results}")
        async with aiohttp.ClientSession() as s:
            for name, _p, _listen, admin in sidecars:
                async with s.get(f"http://127.0.0.1:{admin}/api/v1/status") as r:
                    t = (await r.json()).get("transport", {})
                print(f"  {name}: stream length {t.get('length')}, lag {t.get('lag')}, "
                      f"pending {t.get('pending')}, comparators {t.get('consumers')}, "
                      f"dead letters {t.get('dead_letters')}")
        await asyncio.sleep(1.0)      # the shadows' last answers and counts
        for _name, p, _listen, _admin in sidecars:
            p.send_signal(signal.SIGTERM)
        codes = [await asyncio.get_running_loop().run_in_executor(None, p.wait, 60)
                 for _n, p, _l, _a in sidecars]
        await _drained(redis.url, "shadowproxy:exchanges")
        comparators.send_signal(signal.SIGTERM)
        codes.append(await asyncio.get_running_loop().run_in_executor(None, comparators.wait,
                                                                      60))
        print(f"sidecars and comparators stopped with exit codes {codes}")
        final, mirrored, after = print_outcomes(pg.url)
        sent = 2 * REQUESTS + len(sidecars)     # with each sidecar's readiness probe
        print(f"  {'(sum of final outcomes)':<32} {final}  (requests sent: {sent}; "
              f"{'adds up' if final == sent else 'DOES NOT ADD UP'})")
        print(f"  mirrored {mirrored} by the sidecars, each ended in one of the above: {after} "
              f"({'adds up' if mirrored == after else 'DOES NOT ADD UP'})")
        print_summary(pg.url)
        os.environ.update({k: v for k, v in base.items() if k.startswith("DEMO_")})
        from ..cli import main as cli

        print("\n$ shadowproxy check -c config/demo-fleet.yaml      # the whole fleet")
        sys.stdout.flush()
        verdict = cli(["check", "-c", str(cfg_path)])
        report = out / "report.html"
        print(f"\n$ shadowproxy report -c config/demo-fleet.yaml --since 1h -o {report}")
        sys.stdout.flush()
        cli(["report", "-c", str(cfg_path), "--since", "1h", "--format", "html",
             "-o", str(report)])
        print(f"\nlogs in {out}; report {report}")
        ok = codes == [0, 0, 0] and final == sent and mirrored == after and verdict == 1
        return 0 if ok else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for runner in runners:
            await runner.cleanup()
        redis.stop()
        pg.stop()


def main() -> int:
    harness = _harness()
    if harness is None:
        return 2
    out = Path(os.environ.get("DEMO_OUT") or ROOT / "out" / "demo-fleet")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return asyncio.run(_run(*harness, out))


if __name__ == "__main__":
    sys.exit(main())
