"""File descriptor limits over real sockets: the soft limit raised at start, and a
proxy at its limit closing its longest idle keep-alive connections so that new
clients are still served. The low limits are set in child processes only."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from shadowproxy.limits import NOFILE_CAP, connection_limit
from tests.rawhttp import RawConn, request
from tests.support import Upstream, free_port, wait_logged

ROOT = Path(__file__).resolve().parents[2]
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
LOW = 256


def lowered(soft: int):
    """A preexec_fn: the child starts with this soft limit (the hard one unchanged)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, HARD))


def run_child(code: str, soft: int) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, preexec_fn=lowered(soft))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(HARD != resource.RLIM_INFINITY and HARD < 1024, reason="hard limit low")
def test_raise_nofile_raises_the_soft_limit_to_the_hard_one() -> None:
    got = run_child("""if 1:
        import json, resource
        from shadowproxy.limits import raise_nofile
        old, new = raise_nofile()
        print(json.dumps({"old": old, "new": new,
                          "now": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))""", LOW)
    want = NOFILE_CAP if HARD == resource.RLIM_INFINITY else min(HARD, NOFILE_CAP)
    assert got == {"old": LOW, "new": want, "now": want}
    # a cap below the hard limit; and never lower than it was
    got = run_child("""if 1:
        import json, resource
        from shadowproxy.limits import raise_nofile
        a = raise_nofile(cap=300)
        b = raise_nofile(cap=280)
        print(json.dumps({"a": a, "b": b,
                          "now": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))""", LOW)
    assert got == {"a": [LOW, 300], "b": [300, 300], "now": 300}


def test_connection_limit_keeps_a_reserve() -> None:
    assert connection_limit(1024) == 768
    assert connection_limit(256) == 192           # the reserve is 64 at least
    assert connection_limit(65_536) == 49_152
    assert connection_limit(40) == 16


# A proxy (ProxyServer, as in a worker) in a child with a soft limit of LOW. It prints
# its port, then serves until its stdin closes. ``eat``: descriptors it opens first,
# so that accept fails with EMFILE before the connection limit is reached.
PROXY = """if 1:
    import asyncio, logging, os, sys
    import uvloop
    from tests.support import config, start_proxy

    async def main() -> None:
        proxy = await start_proxy(config(sys.argv[1]))
        eaten = [open(os.devnull) for _ in range(int(sys.argv[3]))]
        print(proxy.port, proxy._server.max_connections, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await proxy.stop()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    new_loop = uvloop.new_event_loop if sys.argv[2] == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("trigger", ["connection-limit", "emfile"])
async def test_new_clients_are_served_past_the_descriptor_limit(tmp_path: Path, loop: str,
                                                                trigger: str) -> None:
    """300 clients one after the other, each served and then kept idle, against a
    proxy allowed 256 descriptors; then one more. Each is answered in full: the
    longest idle connections were closed to make room, the newest kept."""
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    up = await Upstream(app).start()
    eat = "150" if trigger == "emfile" else "0"
    err = (tmp_path / "stderr").open("w+")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROXY, up.url, loop, eat, cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=err, preexec_fn=lowered(LOW))
    conns: list[RawConn] = []
    try:
        assert child.stdout is not None and child.stdin is not None
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        assert line, (tmp_path / "stderr").read_text()
        port, limit = map(int, line.split())
        assert limit == connection_limit(LOW)
        for i in range(300):
            conn = await asyncio.wait_for(RawConn.open(port), 5)
            conns.append(conn)
            await conn.send(request("GET", "/"))
            resp = await conn.read_response(timeout=5)
            assert (resp.status, resp.body, resp.get("Connection")) == \
                (200, b"hello", None), i
        await asyncio.sleep(0.2)
        closed = [i for i, c in enumerate(conns) if c.reader.at_eof()]
        assert 50 <= len(closed) <= 300 - 50
        assert closed == list(range(len(closed)))      # the longest idle first
        async with await RawConn.open(port) as new:
            await new.send(request("GET", "/"))
            resp = await new.read_response(timeout=5)
            assert (resp.status, resp.body) == (200, b"hello")
        # the newest idle ones are still served on their connection
        await conns[-1].send(request("GET", "/"))
        assert (await conns[-1].read_response(timeout=5)).body == b"hello"
    finally:
        for c in conns:
            c.close()
        if child.stdin is not None:
            child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 20)
        except TimeoutError:
            child.kill()
            await child.wait()
        await up.stop()
    log = (tmp_path / "stderr").read_text()
    assert "closing the longest idle connections to serve new ones" in log, log
    assert len(log.splitlines()) < 10, log[:3000]        # a line a minute, not a storm
    assert child.returncode == 0, log


def _limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as fh:
        line = next(x for x in fh if x.startswith("Max open files"))
    return int(line.split()[3])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as fh:
            for kid in map(int, fh.read().split()):
                out += [kid, *_children(kid)]
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/limits"), reason="Linux /proc")
@pytest.mark.skipif(HARD != resource.RLIM_INFINITY and HARD <= LOW, reason="hard limit low")
async def test_shadowproxy_run_raises_the_limit_for_every_process(tmp_path: Path) -> None:
    """Started with a soft limit of 256, the supervisor raises it before it starts any
    process: workers and shadow processes have it too."""
    want = NOFILE_CAP if HARD == resource.RLIM_INFINITY else min(HARD, NOFILE_CAP)
    cfg, log = tmp_path / "c.yaml", tmp_path / "log"
    cfg.write_text(f"""\
listen: 127.0.0.1:{free_port()}
workers: 2
admin: {{listen: 127.0.0.1:{free_port()}}}
upstreams: {{primary: "http://127.0.0.1:{free_port()}"}}
store: {{url: "sqlite:///{tmp_path / 'r.db'}"}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "shadowproxy", "run", "-c", str(cfg)],
                            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            preexec_fn=lowered(LOW))
    try:
        await wait_logged(proc, log)
        names = {}
        for pid in _children(proc.pid):
            with open(f"/proc/{pid}/comm") as fh:
                names[pid] = fh.read().strip()
        workers = [p for p, n in names.items() if n.startswith("shadowproxy-w")]
        shadows = [p for p, n in names.items() if n.startswith("shadowproxy-s")]
        assert len(workers) == 2 and shadows, names
        assert {pid: _limit(pid) for pid in [proc.pid, *workers, *shadows]} == \
            dict.fromkeys([proc.pid, *workers, *shadows], want)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
