"""Two real `shadowproxy run` instances sharing one PostgreSQL store (issue 13): both
mirror into the same database under their own ``instance:``; after SIGTERM (which
flushes the store) `check` and `report` read the fleet together, or one instance with
``--instance``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.control.test_process import ROOT, Running
from tests.support import Upstream, free_port

pytestmark = pytest.mark.server

N = 150      # requests through each instance


def _app(price: int) -> web.Application:
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": int(request.match_info["id"]), "price": price})
    app = web.Application()
    app.router.add_get("/api/items/{id}", item)
    return app


def _config(path: Path, name: str, pg_url: str, primary: Upstream,
            candidate: Upstream) -> Running:
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
mirror:
  sample: 1.0
  timeout: 5s
routes:
  - name: item
    match: /api/items/{{id}}
store:
  url: '{pg_url}'
checks:
  - name: diff-rate
    max_diff_rate: 0.01
    min_samples: 10
""")
    return Running(path, listen, admin, path.with_suffix(".log"))


async def _send(port: int, n: int) -> int:
    ok = 0
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> None:
            nonlocal ok
            async with sem, s.get(f"http://127.0.0.1:{port}/api/items/{i % 50}") as r:
                body = await r.json()
                ok += r.status == 200 and body["price"] == 10    # primary answers
        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shadowproxy", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_two_instances_share_a_postgres_store(pg_url: str, tmp_path: Path) -> None:
    primary = await Upstream(_app(10)).start()
    candidate = await Upstream(_app(12)).start()
    procs = [_config(tmp_path / f"{name}.yaml", name, pg_url, primary, candidate)
             for name in ("pod-a", "pod-b")]
    try:
        await asyncio.gather(*(p.ready() for p in procs))
        sent = await asyncio.gather(*(_send(p.listen, N) for p in procs))
        assert sent == [N, N]
        for p in procs:
            await p.wait_total(N)          # the supervisor counted every request
        codes = [p.stop() for p in procs]  # SIGTERM: drain the mirrors, flush the store
        assert codes == [0, 0], [p.log.read_text()[-3000:] for p in procs]
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        await primary.stop()
        await candidate.stop()

    cfg = str(procs[0].cfg)
    check = _cli("check", "-c", cfg, "--since", "1h")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "$.price" in check.stdout and "FAIL" in check.stdout, check.stdout + check.stderr

    totals = {}
    for label, extra in (("all", []), ("pod-a", ["--instance", "pod-a"]),
                         ("pod-b", ["--instance", "pod-b"])):
        out = tmp_path / f"report-{label}.json"
        rep = _cli("report", "-c", cfg, "--since", "1h", "--format", "json", "-o", str(out),
                   *extra)
        assert rep.returncode in (0, 1), rep.stdout + rep.stderr
        totals[label] = json.loads(out.read_text())["totals"]
    # compared exchanges: about 2 x N (a few may be counted drops, never more than sent)
    every, a, b = (totals[k]["exchanges"] for k in ("all", "pod-a", "pod-b"))
    assert 2 * N - 20 <= every <= 2 * N, totals
    assert N - 20 <= a <= N and N - 20 <= b <= N, totals
    assert a + b == every, totals
    # every request was counted (mirrored or dropped), per instance and together
    assert [totals[k]["requests"] for k in ("all", "pod-a", "pod-b")] == [2 * N, N, N], totals
