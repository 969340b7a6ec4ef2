"""``mode: receiver`` behind a real nginx ``mirror`` (Debian's nginx, started here):
nginx's clients get primary's answers, nginx's mirror copies go to shadowproxy, which
answers them 202 at once, sends each to a replica of primary and to the candidate, and
compares: `check` fails naming the planted difference."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from shadowproxy.proxy.receiver import unshadow_host
from tests.control.test_process import ROOT, Running
from tests.record.apps import SECRET, item_app
from tests.servers import Nginx
from tests.support import Upstream, free_port

N = 40


def test_shadow_suffix_taken_off() -> None:
    assert unshadow_host("reviews-shadow:9080") == "reviews:9080"
    assert unshadow_host("reviews.prod.svc.cluster.local-shadow") == \
        "reviews.prod.svc.cluster.local"
    assert unshadow_host("reviews:9080-shadow") == "reviews:9080"
    assert unshadow_host("shadowed:80") == "shadowed:80"
    assert unshadow_host("[::1]:80") == "[::1]:80"


def nginx_mirror_server(primary: str, receiver: str) -> str:
    """The server block of docs/receiver.md's nginx example."""
    return f"""
        location / {{
            mirror /shadowproxy-mirror;
            mirror_request_body on;
            proxy_pass {primary};
        }}
        location = /shadowproxy-mirror {{
            internal;
            proxy_pass {receiver}$request_uri;
            proxy_set_header Host $http_host-shadow;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_connect_timeout 1s;
            proxy_read_timeout 2s;
        }}
"""


@pytest.mark.server
async def test_receiver_behind_nginx_mirror(tmp_path: Path) -> None:
    production = await Upstream(item_app(10)).start()
    replica = await Upstream(item_app(10)).start()
    candidate = await Upstream(item_app(12)).start()
    listen, admin = free_port(), free_port()
    cfg = tmp_path / "receiver.yaml"
    cfg.write_text(f"""\
mode: receiver
listen: 127.0.0.1:{listen}
workers: 2
admin: {{listen: 127.0.0.1:{admin}}}
upstreams:
  primary: {replica.url}
  candidate: {candidate.url}
timeouts: {{shutdown: 10s}}
routes:
  - name: item
    match: /api/items/{{id}}
store:
  url: sqlite:///{tmp_path}/receiver.db
checks:
  - name: diff-rate
    max_diff_rate: 0.10
    min_samples: 10
""")
    run = Running(cfg, listen, admin, tmp_path / "receiver.log")
    ng = Nginx(tmp_path / "nginx", nginx_mirror_server(production.url,
                                                       f"http://127.0.0.1:{listen}"))
    try:
        await run.ready()
        ng.start()
        async with aiohttp.ClientSession() as s:
            for i in range(N):
                async with s.get(f"{ng.url}/api/items/{i}",
                                 headers={"Authorization": f"Bearer {SECRET}"}) as r:
                    # nginx's client gets production's answer, never the candidate's
                    assert r.status == 200
                    assert (await r.json())["price"] == 10
        live = await run.wait_total(N)
        assert live["requests"] == N, live
        assert run.stop() == 0, run.log.read_text()[-3000:]
    finally:
        ng.stop()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        await production.stop()
        await replica.stop()
        await candidate.stop()
    check = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "shadowproxy", "check", "-c", str(cfg)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ))
    assert check.returncode == 1, check.stdout + check.stderr
    assert "$.price" in check.stdout and "FAIL" in check.stdout, check.stdout
    assert f"compared {N}" in check.stdout, check.stdout
