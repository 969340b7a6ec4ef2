"""The real `shadowproxy run`: several worker processes, totals, SIGTERM, SIGHUP, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.support import Upstream, free_port, wait_logged

ROOT = Path(__file__).resolve().parents[2]


def _write_config(path: Path, ups: dict[str, Upstream], db: Path, listen: int, admin: int,
                  sample: str = "1.0", extra: str = "",
                  routes: str = "  - name: user\n    match: /api/users/{id}\n") -> None:
    path.write_text(f"""\
listen: 127.0.0.1:{listen}
workers: 2
admin: {{listen: 127.0.0.1:{admin}}}
upstreams:
  primary: {ups['primary'].url}
  candidate: {ups['candidate'].url}
  secondary: {ups['secondary'].url}
timeouts: {{shutdown: 5s}}
mirror:
  sample: {sample}
  timeout: 2s
routes:
{routes}store:
  url: sqlite:///{db}
{extra}""")


class Running:
    def __init__(self, cfg: Path, listen: int, admin: int, log: Path) -> None:
        self.cfg = cfg
        self.listen, self.admin = listen, admin
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shadowproxy", "run", "-c", str(cfg)],
            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with s.get(f"http://127.0.0.1:{self.admin}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        # the supervisor says so once every worker listens
        await wait_logged(self.proc, self.log)

    async def outcomes(self) -> dict:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{self.admin}/api/v1/outcomes") as r:
                return await r.json()

    async def wait_total(self, n: int, timeout: float = 15.0) -> dict:
        t0 = time.monotonic()
        while True:
            live = await self.outcomes()
            if live["requests"] >= n or time.monotonic() - t0 > timeout:
                # workers send their counters every 0.5 s: one more round for the rest
                await asyncio.sleep(1.0)
                return await self.outcomes()
            await asyncio.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids = [int(x) for x in fh.read().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *_descendants(kid)]
    return out


def _named(supervisor: int, prefix: str) -> list[int]:
    """The supervisor's processes whose name starts with ``prefix`` (workers are
    ``shadowproxy-wN``, shadow processes ``shadowproxy-sN``; a fork server starts both)."""
    out = []
    for pid in _descendants(supervisor):
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().startswith(prefix):
                    out.append(pid)
        except OSError:
            pass
    return out


def _worker_pids(supervisor: int) -> list[int]:
    return _named(supervisor, "shadowproxy-w")


def _start(upstreams, tmp_path: Path) -> Running:
    """A `shadowproxy run` at 100% mirroring on free ports, its store ``r.db``."""
    listen, admin = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, upstreams, tmp_path / "r.db", listen, admin)
    return Running(cfg, listen, admin, tmp_path / "log")


async def _load(port: int, n: int, conc: int = 16, refused_ok: bool = False) -> int:
    """Send ``n`` requests; → how many got a 200. With ``refused_ok`` a refused
    connection (the proxy stopped accepting) is not an error."""
    ok = 0
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> None:
            nonlocal ok
            try:
                async with sem, s.get(f"http://127.0.0.1:{port}/api/users/{i % 200}") as r:
                    await r.read()
                    ok += r.status == 200
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError):
                # refused, reset while waiting to be accepted when the listener closed,
                # or an idle keep-alive connection closed by the drain
                if not refused_ok:
                    raise
        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


async def test_workers_serve_mirror_compare_store_and_totals_add_up(upstreams, tmp_path: Path
                                                                     ) -> None:
    run = _start(upstreams, tmp_path)
    listen, db = run.listen, tmp_path / "r.db"
    try:
        await run.ready()
        n = 600
        assert await _load(listen, n) == n
        live = await run.wait_total(n)
    finally:
        code = run.stop()
    assert code == 0, run.log.read_text()
    # totals across processes add up (the readiness probe is a bare TCP connect, no request)
    assert live["requests"] == n, live
    assert live["outcomes"].get("compared") == live["mirrored"] == n, live
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select id from exchanges").fetchall()
        assert len(rows) == n
        pids = {r[0].split("-")[1] for r in rows}
        assert len(pids) == 2, "both workers served and mirrored"
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


async def test_a_port_in_use_is_refused_by_name_and_never_shared(upstreams, tmp_path: Path
                                                                 ) -> None:
    """A second instance on the same `listen` must not join the first's SO_REUSEPORT
    group (it would take part of the traffic); a port held by anything else, or an
    admin port in use, is refused the same way: file, line and key, exit 1."""
    run = _start(upstreams, tmp_path)
    listen, admin = run.listen, run.admin
    try:
        await run.ready()
        second = tmp_path / "second.yaml"
        _write_config(second, upstreams, tmp_path / "2.db", listen, free_port())
        out = subprocess.run([sys.executable, "-m", "shadowproxy", "run", "-c", str(second)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"{second}:1: listen: cannot listen on 127.0.0.1:{listen}" in out.stderr
        assert "in use" in out.stderr and "Traceback" not in out.stderr
        # the admin port of the running instance: named as admin.listen (line 3)
        third = tmp_path / "third.yaml"
        _write_config(third, upstreams, tmp_path / "3.db", free_port(), admin)
        out = subprocess.run([sys.executable, "-m", "shadowproxy", "run", "-c", str(third)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"{third}:3: admin.listen: cannot listen on 127.0.0.1:{admin}" in out.stderr
        assert "Traceback" not in out.stderr
        # every request still reaches the first instance's store
        assert await _load(listen, 40) == 40
        live = await run.wait_total(40)
        assert live["requests"] == 40, live
    finally:
        assert run.stop() == 0, run.log.read_text()
    assert not (tmp_path / "2.db").exists() or sqlite3.connect(tmp_path / "2.db").execute(
        "select count(*) from exchanges").fetchone()[0] == 0


async def test_sigterm_drains_every_worker(upstreams, tmp_path: Path) -> None:
    """In-flight requests finish and queued shadows are compared before exit 0."""
    listen, admin, db = free_port(), free_port(), tmp_path / "r.db"
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, upstreams, db, listen, admin)
    run = Running(cfg, listen, admin, tmp_path / "log")
    await run.ready()
    n = 300
    load = asyncio.create_task(_load(listen, n, conc=30, refused_ok=True))
    await asyncio.sleep(0.15)           # requests in flight
    run.proc.send_signal(signal.SIGTERM)
    ok = await load
    code = await asyncio.get_running_loop().run_in_executor(None, run.proc.wait, 30)
    assert code == 0, run.log.read_text()
    con = sqlite3.connect(db)
    stored = con.execute("select count(*) from exchanges").fetchone()[0]
    counted = dict(con.execute("select outcome, sum(count) from outcomes group by outcome"))
    con.close()
    # every request the proxy accepted was answered and ended in a counted outcome
    accepted = sum(v for k, v in counted.items() if k in (
        "not_eligible", "sampled_out", "dropped", "compared", "candidate_error",
        "candidate_timeout"))
    assert ok <= accepted <= n
    assert stored == counted.get("compared", 0) + counted.get("candidate_error", 0) + \
        counted.get("candidate_timeout", 0)
    assert ok > 0


async def test_sighup_reloads_and_keeps_old_config_when_invalid(upstreams, tmp_path: Path
                                                                 ) -> None:
    run = _start(upstreams, tmp_path)
    listen, cfg = run.listen, run.cfg
    try:
        await run.ready()
        # a keep-alive connection opened before the reload must survive it
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{listen}/api/users/1") as r:
                assert r.status == 200
            cfg.write_text(cfg.read_text().replace("sample: 1.0", "sample: 0.0"))
            run.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            async with s.get(f"http://127.0.0.1:{listen}/api/users/2") as r:
                assert r.status == 200
        assert await _load(listen, 50) == 50
        live = await run.wait_total(51)
        assert live["outcomes"].get("sampled_out", 0) >= 50, live
        # an invalid config is refused; the running one (sample 0) stays
        cfg.write_text(cfg.read_text().replace("sample: 0.0", "sample: 7"))
        run.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        assert await _load(listen, 20) == 20
        live = await run.wait_total(72)
        assert live["outcomes"].get("sampled_out", 0) >= 70, live
    finally:
        code = run.stop()
    log = run.log.read_text()
    assert code == 0
    assert "reload refused" in log and "mirror.sample" in log


async def test_a_reload_keeps_mirroring_switched_off_through_the_admin_api(upstreams,
                                                                            tmp_path: Path
                                                                            ) -> None:
    """Mirroring switched off at run time stays off across a SIGHUP that does not touch
    the file's mirror settings (and says so in the log); a file that changes them wins."""
    run = _start(upstreams, tmp_path)
    listen, admin, cfg = run.listen, run.admin, run.cfg
    try:
        await run.ready()
        async with aiohttp.ClientSession() as s:
            async with s.put(f"http://127.0.0.1:{admin}/api/v1/mirror",
                             json={"enabled": False}) as r:
                assert r.status == 200 and (await r.json())["enabled"] is False
        # a worker that dies is started again with the file's config: the switch holds
        worker = _worker_pids(run.proc.pid)[0]
        os.kill(worker, signal.SIGKILL)
        for _ in range(200):
            pids = _worker_pids(run.proc.pid)
            if len(pids) == 2 and worker not in pids and \
                    run.log.read_text().count("ready: 2 workers") >= 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)             # its "ready", and the switch sent to it

        async def reload_and_load(old: str, new: str, n: int, total: int) -> dict:
            if old:
                cfg.write_text(cfg.read_text().replace(old, new))
                run.proc.send_signal(signal.SIGHUP)
                await asyncio.sleep(1.0)
            assert await _load(listen, n) == n
            return await run.wait_total(total)

        live = await reload_and_load("", "", 60, 60)      # over both workers
        assert live["outcomes"].get("not_eligible{disabled}") == 60, live
        assert live["mirrored"] == 0, live
        # a reload that leaves the file's mirror settings alone keeps the switch too
        live = await reload_and_load("timeout: 2s", "timeout: 3s", 30, 90)
        assert live["outcomes"].get("not_eligible{disabled}") == 90, live
        assert live["mirrored"] == 0, live
        # the file now changes the sample rate: its settings apply, mirroring is back
        live = await reload_and_load("sample: 1.0", "sample: 0.999", 30, 120)
        assert live["mirrored"] >= 25, live
    finally:
        code = run.stop()
    assert code == 0
    assert "reload keeps mirroring enabled=False" in run.log.read_text()


async def test_kill_9_under_load_loses_nothing_acknowledged(upstreams, tmp_path: Path) -> None:
    listen, admin, db = free_port(), free_port(), tmp_path / "r.db"
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, upstreams, db, listen, admin)
    run = Running(cfg, listen, admin, tmp_path / "log")
    await run.ready()
    load = asyncio.create_task(_load(listen, 3000, conc=20))
    acked = 0
    for _ in range(100):
        await asyncio.sleep(0.05)
        acked = (await run.outcomes())["stored"]
        if acked > 200:
            break
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait(10)
    await asyncio.gather(load, return_exceptions=True)
    assert acked > 0
    con = sqlite3.connect(db)
    try:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert con.execute("select count(*) from exchanges").fetchone()[0] >= acked
    finally:
        con.close()


async def test_planted_secrets_reach_no_disk_log_or_output(upstreams, tmp_path: Path) -> None:
    """Through the real multi-process run at debug level: credentials in headers, the
    query and a JSON body never appear in the store files, the logs, the admin API, the
    report (HTML, Markdown, JSON) or the check output."""
    from shadowproxy.cli import main as cli

    secrets = ["bearer-planted-7f3a", "cookie-planted-91bc", "query-planted-55de",
               "apikey-planted-c0de", "password-planted-beef"]
    listen, admin, db = free_port(), free_port(), tmp_path / "r.db"
    cfg = tmp_path / "c.yaml"
    _write_config(cfg, upstreams, db, listen, admin,
                  routes="  - name: user\n    match: /api/users/{id}\n"
                         "  - match: /api/orders\n    mirror_unsafe: true\n",
                  extra="log: {level: debug}\nchecks:\n  - name: diffs\n"
                        "    max_diff_rate: 0.5\n    min_samples: 1\n")
    run = Running(cfg, listen, admin, tmp_path / "log")
    try:
        await run.ready()
        async with aiohttp.ClientSession() as s:
            for i in range(40):
                headers = {"Authorization": f"Bearer {secrets[0]}",
                           "Cookie": f"session={secrets[1]}", "X-Api-Key": secrets[3]}
                async with s.get(f"http://127.0.0.1:{listen}/api/users/{i}?token={secrets[2]}",
                                 headers=headers) as r:
                    assert r.status == 200
                async with s.post(f"http://127.0.0.1:{listen}/api/orders", headers=headers,
                                  json={"items": [1], "password": secrets[4]}) as r:
                    assert r.status == 201
        await run.wait_total(80)
        async with aiohttp.ClientSession() as s:
            api = b""
            async with s.get(f"http://127.0.0.1:{admin}/api/v1/exchanges?limit=100") as r:
                listing = await r.json()
                api += await r.read()
            for row in listing["exchanges"][:20]:
                async with s.get(f"http://127.0.0.1:{admin}/api/v1/exchanges/{row['id']}") as r:
                    api += await r.read()
            for path in ("endpoints", "noise", "config", "outcomes"):
                async with s.get(f"http://127.0.0.1:{admin}/api/v1/{path}") as r:
                    api += await r.read()
    finally:
        assert run.stop() == 0
    outputs = [api, run.log.read_bytes()]
    for fmt in ("html", "md", "json"):
        out = tmp_path / f"report.{fmt}"
        assert cli(["report", "-c", str(cfg), "--since", "1h", "--format", fmt,
                    "-o", str(out)]) == 0
        outputs.append(out.read_bytes())
    out = tmp_path / "check.json"
    assert cli(["check", "-c", str(cfg), "--format", "json", "-o", str(out)]) in (0, 1, 3)
    outputs.append(out.read_bytes())
    outputs += [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("r.db")]
    # the redactor did run on what was stored and served (masks, not absences)
    assert len(listing["exchanges"]) > 0
    assert b"[redacted:" in db.read_bytes() and b"[redacted:" in api
    for secret in secrets:
        for blob in outputs:
            assert secret.encode() not in blob, secret
