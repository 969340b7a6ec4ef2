"""``make demo``: a self-contained run of the whole pipeline on loopback.

It starts a demo primary, secondary and candidate (see ``demo_upstreams``), runs
the real ``shadowproxy run`` (two workers and the control process) with
``config/demo.yaml``, sends a few hundred requests through it, stops it with
SIGTERM, and prints what was mirrored and how it compared, from the store.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from .upstreams import make_app

ROOT = Path(__file__).resolve().parents[2]      # the checkout: shadowproxy/demo/ is two below
REQUESTS = 2000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _plan(n: int, seed: int = 7) -> list[tuple[str, str, bytes | None]]:
    rnd = random.Random(seed)
    out: list[tuple[str, str, bytes | None]] = []
    for _ in range(n):
        r = rnd.random()
        if r < 0.55:
            out.append(("GET", f"/api/users/{rnd.randrange(1, 400)}", None))
        elif r < 0.75:
            out.append(("GET", f"/api/products?category={rnd.choice(['books', 'games', 'tea'])}",
                        None))
        elif r < 0.87:
            out.append(("GET", f"/api/search?q={rnd.choice(['tea', 'green+tea', 'caf%C3%A9'])}",
                        None))
        elif r < 0.92:
            out.append(("GET", "/health", None))
        elif r < 0.96:
            out.append(("POST", "/api/orders", b'{"items": [1, 2]}'))
        else:
            out.append(("GET", "/admin/stats", None))
    return out


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """Poll ``url`` until it answers 200; → the number of requests it took."""
    t0 = time.monotonic()
    tries = 0
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"shadowproxy exited early with {proc.returncode}")
            tries += 1
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return tries
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("shadowproxy did not become ready")


async def _send(base: str, plan: list[tuple[str, str, bytes | None]]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(auto_decompress=True) as s:
        async def one(i: int, method: str, path: str, body: bytes | None) -> None:
            async with sem:
                headers = {"Accept-Encoding": "gzip", "X-User-Id": str(i % 97),
                           "Authorization": "Bearer demo-secret-token"}
                if body:
                    headers["Content-Type"] = "application/json"
                async with s.request(method, base + path, data=body, headers=headers) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
        await asyncio.gather(*(one(i, *p) for i, p in enumerate(plan)))
    return statuses


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"


def print_outcomes(db_url: str) -> tuple[int, int, int]:
    """The final outcome counts as stored after the drain. → (sum of final outcomes,
    mirrored, the final outcomes a mirrored request can end in)."""
    from ..stats import AFTER_MIRROR_DROPS, FINAL
    from ..store import open_store

    store = open_store(db_url, readonly=True)
    try:
        counts = store.outcome_counts()
    finally:
        store.close()
    print("\nEvery request ends in exactly one counted outcome (the store, after the drain):")
    final = after = 0
    for outcome in FINAL:
        for reason, n in sorted(counts.get(outcome, {}).items()):
            print(f"  {outcome + (f'{{{reason}}}' if reason else ''):<32} {n}")
            final += n
            if outcome != "dropped" or reason in AFTER_MIRROR_DROPS:
                after += n if outcome not in ("not_eligible", "sampled_out") else 0
    return final, sum(counts.get("mirrored", {}).values()), after


def print_summary(db_url: str) -> None:
    from ..store import open_store

    store = open_store(db_url, readonly=True)
    stats = store.endpoint_stats(0, time.time() + 60, "*")
    noise = store.noise()
    print("\nPer endpoint (candidate vs primary):")
    head = (f"{'endpoint':<10} {'exch':>5} {'diff%':>6} {'noise%':>7} {'err':>4}  "
            f"{'p50 pri/cand ms':>16} {'p99 pri/cand ms':>16}  top differing fields")
    print(head)
    print("-" * len(head))
    for st in stats:
        fields = store.field_stats(st.endpoint, 0, time.time() + 60)
        real = [f for f in fields if not f.noise][:3]
        top = ", ".join(f"{f.field} ({f.count})" for f in real) or "none"
        print(f"{st.endpoint:<10} {st.exchanges:>5} {_pct(st.diff_rate):>6} "
              f"{_pct(st.noise / st.exchanges if st.exchanges else 0.0):>7} {st.errors:>4}  "
              f"{_ms(st.primary_p50) + '/' + _ms(st.candidate_p50):>16} "
              f"{_ms(st.primary_p99) + '/' + _ms(st.candidate_p99):>16}  {top}")
    print("\nNoise learned from the secondary (field: N, R=primary≠candidate, "
          "S=primary≠secondary, p):")
    for ev in noise:
        print(f"  {ev.endpoint:<10} {ev.field:<28} N={ev.n:<4} R={ev.r:<4} S={ev.s:<4} "
              f"p={ev.p_value:.3f}")
    if not noise:
        print("  none")
    store.close()


def _shown(path: Path) -> Path:
    """``path`` relative to the checkout when it lies inside it (as a user types it)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


async def _main() -> int:
    out = Path(os.environ.get("DEMO_OUT") or ROOT / "out" / "demo")   # tests: a temp dir
    out.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        (out / f"shadowproxy.db{suffix}").unlink(missing_ok=True)
    runners = []
    urls = {}
    for role in ("primary", "candidate", "secondary"):
        runner, url = await _start(make_app(role))
        runners.append(runner)
        urls[role] = url
    listen, admin = _free_port(), _free_port()
    env = dict(os.environ, DEMO_PRIMARY=urls["primary"], DEMO_CANDIDATE=urls["candidate"],
               DEMO_SECONDARY=urls["secondary"], DEMO_LISTEN_PORT=str(listen),
               DEMO_ADMIN_PORT=str(admin), DEMO_DIR=str(out))
    cfg_path = ROOT / "config" / "demo.yaml"
    print(f"demo upstreams: primary {urls['primary']}, candidate {urls['candidate']}, "
          f"secondary {urls['secondary']}")
    print(f"$ shadowproxy run -c {cfg_path.relative_to(ROOT)}")
    proc = subprocess.Popen([sys.executable, "-m", "shadowproxy", "run", "-c", str(cfg_path)],
                            env=env, cwd=ROOT)
    try:
        await _wait_ready(f"http://127.0.0.1:{admin}/healthz", proc)
        # only probes that reached the proxy count as requests (refused ones never arrived)
        probes = 1 if await _wait_ready(f"http://127.0.0.1:{listen}/health", proc) else 0
        plan = _plan(REQUESTS)
        t0 = time.monotonic()
        statuses = await _send(f"http://127.0.0.1:{listen}", plan)
        took = time.monotonic() - t0
        print(f"\nsent {len(plan)} requests in {took:.1f}s; client saw statuses {statuses}")
        # counters reach the control process every 0.5 s; shadows finish shortly after
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                async with s.get(f"http://127.0.0.1:{admin}/api/v1/outcomes") as r:
                    live = await r.json()
                if live["requests"] >= len(plan) + probes:
                    break
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        for runner in runners:
            await runner.cleanup()
    print(f"shadowproxy stopped with exit code {code} after SIGTERM")
    db_url = f"sqlite:///{out}/shadowproxy.db"
    final, mirrored, after = print_outcomes(db_url)
    sent = len(plan) + probes
    health = statuses.get(200, 0) + statuses.get(201, 0)
    print(f"  {'(sum of final outcomes)':<32} {final}  (requests sent: {sent}, with the "
          f"readiness probe; {'adds up' if final == sent else 'DOES NOT ADD UP'})")
    print(f"  successful client responses: {health} of {len(plan)}")
    print(f"  mirrored {mirrored} on the way, each ended in one of the above: {after} "
          f"({'adds up' if mirrored == after else 'DOES NOT ADD UP'})")
    print_summary(db_url)
    verdict = _check_and_report(cfg_path, env, out)
    print(f"""
store:  {out / 'shadowproxy.db'}
report: {out / 'report.html'}   (one self-contained file: open it in any browser)
UI:     make demo-ui   then open http://127.0.0.1:8081/  (serves the stored results of this run)""")
    # the demo succeeds when the pipeline worked; the check is expected to fail
    return 0 if code == 0 and final == sent and mirrored == after and verdict == 1 else 1


def _check_and_report(cfg_path: Path, env: dict[str, str], out: Path) -> int:
    """``shadowproxy check`` and ``shadowproxy report`` on the demo's store."""
    from ..cli import main as cli

    os.environ.update({k: v for k, v in env.items() if k.startswith("DEMO_")})
    print(f"\n$ shadowproxy check -c {cfg_path.relative_to(ROOT)}")
    sys.stdout.flush()
    verdict = cli(["check", "-c", str(cfg_path)])
    meaning = {0: "pass", 1: "FAIL", 3: "inconclusive"}.get(verdict, f"error {verdict}")
    print(f"exit code {verdict} ({meaning}): the demo candidate has a regression on "
          "user/$.plan and is slower on products, so the gate must not pass")
    report = out / "report.html"
    print(f"\n$ shadowproxy report -c {cfg_path.relative_to(ROOT)} --since 1h --format html "
          f"-o {_shown(report)}")
    sys.stdout.flush()
    if cli(["report", "-c", str(cfg_path), "--since", "1h", "--format", "html",
            "-o", str(report)]) != 0:
        print("report failed")
        return -1
    return verdict


def main() -> int:
    return asyncio.run(_main())


if __name__ == "__main__":
    sys.exit(main())
