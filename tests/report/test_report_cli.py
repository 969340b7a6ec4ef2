"""``shadowproxy report`` end to end: the CLI and its exit codes, the webhook POST to a
real aiohttp server on loopback, SMTP delivery to a small SMTP server written here,
and the deploy files."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import subprocess
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from shadowproxy.cli import main as cli_main
from shadowproxy.report import main as report_main
from shadowproxy.report.deliver import (
    DeliveryError,
    ReportConfig,
    SmtpConfig,
    post_webhook,
    safe_url,
    send_email,
)
from shadowproxy.store import open_store
from tests.report.test_report import SECRETS, Built, assert_self_contained, build_store, parse
from tests.support import Upstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours *_proxy variables: the loopback tests must go direct
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_store(tmp_path_factory.mktemp("report-cli"))


def write_config(dir: Path, url: str) -> Path:
    path = dir / "config.yaml"
    path.write_text(yaml.safe_dump({
        "upstreams": {"primary": "http://127.0.0.1:9000", "candidate": "http://127.0.0.1:9001"},
        "store": {"url": url}}))
    return path


# ------------------------------------------------------------------ CLI exit codes


def test_cli_writes_each_format(built: Built, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, built.url)
    for fmt in ("html", "md", "json"):
        out = tmp_path / f"report.{fmt}"
        assert cli_main(["report", "-c", str(cfg), "--since", "24h", "--format", fmt,
                         "-o", str(out)]) == 0
        text = out.read_text()
        for s in SECRETS:
            assert s not in text
        if fmt == "html":
            assert_self_contained(text)
            assert parse(text).value("exchanges", "/users/{id}") == 40
        elif fmt == "md":
            assert "| `/users/{id}` | 40 |" in text
        else:
            doc = json.loads(text)
            assert doc["window"]["label"] == "24h"
            assert doc["window"]["seconds"] == pytest.approx(86400)
            assert {e["endpoint"]: e["exchanges"] for e in doc["endpoints"]} == \
                {"/users/{id}": 40, "/orders": 30, "/static/**": 20}
    assert not list(tmp_path.glob(".report-*"))        # no temporary file left behind


def test_cli_writes_to_stdout_without_o(built: Built, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, built.url)
    assert cli_main(["report", "-c", str(cfg), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### ❌ shadowproxy:") and "| endpoint |" in out
    assert out.endswith("\n") and not out.endswith("\n\n\n")
    assert cli_main(["report", "-c", str(cfg), "--format", "markdown"]) == 0   # the same
    again = capsys.readouterr().out
    assert again.startswith("### ❌ shadowproxy:") and again.count("\n") == out.count("\n")


def test_cli_window_limits_the_data(built: Built, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, built.url)
    # the newest exchange is 20 minutes old: a 5 minute window has nothing
    assert cli_main(["report", "-c", str(cfg), "--since", "5m", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["exchanges"] == 0 and doc["verdict"]["status"] == "no_data"


@pytest.mark.parametrize("since", ["yesterday", "-1h", "0", "5x"])
def test_cli_bad_since_is_a_usage_error(built: Built, tmp_path: Path, since: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, built.url)
    out = tmp_path / "r.html"
    assert cli_main(["report", "-c", str(cfg), f"--since={since}", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--since" in err and since in err
    assert not out.exists()


def test_cli_missing_store_is_a_usage_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope" / "results.db"
    cfg = write_config(tmp_path, f"sqlite:///{missing}")
    assert cli_main(["report", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "cannot open the store" in err and str(missing) in err
    assert not missing.exists()                    # read-only: nothing was created


def test_cli_not_a_store_is_a_usage_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    cfg = write_config(tmp_path, f"sqlite:///{bogus}")
    assert cli_main(["report", "-c", str(cfg)]) == 2
    assert "not an SQLite database" in capsys.readouterr().err


def test_cli_output_directory_must_exist(built: Built, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, built.url)
    assert cli_main(["report", "-c", str(cfg), "-o", str(tmp_path / "no" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_bad_webhook_url_is_a_usage_error(built: Built, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, built.url)
    assert cli_main(["report", "-c", str(cfg), "--webhook", "ftp://x/y"]) == 2
    assert "webhook" in capsys.readouterr().err


# ------------------------------------------------------------------ webhook


class Hook:
    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.posts: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = status
        self.delay = delay
        app = web.Application()
        app.router.add_post("/hooks/T000/B000/SECRETPART", self.handle)
        app.router.add_get("/hooks/T000/B000/SECRETPART", self.handle)
        self.server = Upstream(app)

    async def handle(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.headers.append(dict(request.headers))
        self.posts.append({"method": request.method, "body": await request.read()})
        return web.Response(status=self.status, text="ok" if self.status < 300 else "nope")

    @property
    def url(self) -> str:
        return f"{self.server.url}/hooks/T000/B000/SECRETPART"


async def test_webhook_post_reaches_a_real_server(built: Built, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    hook = Hook()
    await hook.server.start()
    try:
        cfg = write_config(tmp_path, built.url)
        out = tmp_path / "r.html"
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, cli_main, [
            "report", "-c", str(cfg), "--since", "24h", "-o", str(out), "--webhook", hook.url])
    finally:
        await hook.server.stop()
    assert code == 0, capsys.readouterr().err
    assert len(hook.posts) == 1 and hook.posts[0]["method"] == "POST"
    assert hook.headers[0]["Content-Type"].startswith("application/json")
    payload = json.loads(hook.posts[0]["body"])
    assert set(payload) == {"text", "report"}
    text = payload["text"]
    assert text.startswith("### ❌ shadowproxy: 3 of 3 endpoints with differences")
    assert "| `/users/{id}` | 40 |" in text and len(text.splitlines()) <= 60
    rep = payload["report"]
    assert rep["schema"] == "shadowproxy.report/1"
    store = open_store(built.url, readonly=True)
    try:
        w = rep["window"]
        stats = {s.endpoint: s for s in store.endpoint_stats(w["since"], w["until"])}
    finally:
        store.close()
    for e in rep["endpoints"]:
        s = stats[e["endpoint"]]
        assert (e["exchanges"], e["diffs"], e["latency"]["p99"]["candidate"]) == \
            (s.exchanges, s.diffs, s.candidate_p99)
    assert rep["fields"]["/users/{id}"][0]["field"] in ("$.name", "$.token")
    body = hook.posts[0]["body"].decode()
    assert '"body"' not in body                    # the summary carries no bodies
    for s in SECRETS:
        assert s not in body
    assert out.exists()                            # the file was written as well


async def test_webhook_failure_exits_1_after_writing_the_file(
        built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hook = Hook(status=500)
    await hook.server.start()
    try:
        cfg = write_config(tmp_path, built.url)
        out = tmp_path / "r.md"
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, cli_main, [
            "report", "-c", str(cfg), "--format", "md", "-o", str(out), "--webhook", hook.url])
    finally:
        await hook.server.stop()
    assert code == 1
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "nope" in err
    assert "SECRETPART" not in err                 # the URL's secret path is not printed
    assert out.read_text().startswith("### ")


def test_webhook_connection_refused_exits_1(built: Built, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support import free_port
    cfg = write_config(tmp_path, built.url)
    url = f"http://127.0.0.1:{free_port()}/hook/SECRETPART"
    assert cli_main(["report", "-c", str(cfg), "-o", str(tmp_path / "r.html"),
                     "--webhook", url]) == 1
    err = capsys.readouterr().err
    assert "webhook http://127.0.0.1:" in err and "SECRETPART" not in err


async def test_webhook_timeout_and_redirects(tmp_path: Path) -> None:
    slow = Hook(delay=1.0)
    await slow.server.start()
    loop = asyncio.get_running_loop()
    try:
        t0 = time.monotonic()
        with pytest.raises(DeliveryError, match=r"no answer within 0\.3s"):
            await loop.run_in_executor(None, lambda: post_webhook(
                slow.url, {"text": "x"}, timeout=0.3))
        assert time.monotonic() - t0 < 1.5
    finally:
        await slow.server.stop()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_post("/r", redirect)
    seen: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.Response(text="ok")

    app.router.add_route("*", "/elsewhere", elsewhere)
    srv = Upstream(app)
    await srv.start()
    try:
        with pytest.raises(DeliveryError, match="HTTP 302"):
            await loop.run_in_executor(None, lambda: post_webhook(f"{srv.url}/r", {"text": "x"}))
    finally:
        await srv.stop()
    assert seen == []                              # a POST is never turned into a GET


def test_safe_url_hides_the_secret_path() -> None:
    assert safe_url("https://hooks.slack.com/services/T/B/XYZ") == "https://hooks.slack.com/…"
    assert safe_url("http://127.0.0.1:8065/") == "http://127.0.0.1:8065"


# ------------------------------------------------------------------ SMTP


class SmtpServer:
    """Just enough ESMTP for smtplib: EHLO, optional STARTTLS, AUTH PLAIN/LOGIN, MAIL,
    RCPT, DATA, RSET, NOOP, QUIT. Keeps what it received."""

    def __init__(self, *, user: str = "reports", password: str = "pw",
                 tls: ssl.SSLContext | None = None, implicit_tls: bool = False) -> None:
        self.user, self.password = user, password
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.messages: list[dict[str, Any]] = []
        self.commands: list[str] = []
        self.port = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> SmtpServer:
        self.server = await asyncio.start_server(
            self.session, "127.0.0.1", 0, ssl=self.tls if self.implicit_tls else None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        secure = self.implicit_tls
        authed = False
        mail: dict[str, Any] = {}
        send("220 test.local ESMTP")
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode().rstrip("\r\n")
                verb = line.split(" ", 1)[0].upper()
                self.commands.append(verb)
                if verb in ("EHLO", "HELO"):
                    ext = ["8BITMIME", "SMTPUTF8"]
                    if self.tls is not None and not secure:
                        ext.append("STARTTLS")
                    if secure or self.tls is None:
                        ext.append("AUTH PLAIN LOGIN")
                    lines = ["test.local"] + ext
                    for i, x in enumerate(lines):
                        send(("250 " if i == len(lines) - 1 else "250-") + x)
                elif verb == "STARTTLS" and self.tls is not None:
                    send("220 go ahead")
                    await writer.drain()
                    await writer.start_tls(self.tls)
                    secure = True
                elif verb == "AUTH":
                    parts = line.split(" ")
                    if parts[1].upper() == "PLAIN":
                        blob = parts[2] if len(parts) > 2 else None
                        if blob is None:
                            send("334 ")
                            await writer.drain()
                            blob = (await reader.readline()).decode().strip()
                        _z, u, p = base64.b64decode(blob).decode().split("\0")
                    else:
                        send("334 VXNlcm5hbWU6")
                        await writer.drain()
                        u = base64.b64decode(await reader.readline()).decode()
                        send("334 UGFzc3dvcmQ6")
                        await writer.drain()
                        p = base64.b64decode(await reader.readline()).decode()
                    if (u, p) == (self.user, self.password):
                        authed = True
                        send("235 2.7.0 authenticated")
                    else:
                        send("535 5.7.8 bad credentials")
                elif verb == "MAIL":
                    if not authed:
                        send("530 5.7.0 authentication required")
                    else:
                        mail = {"from": line[10:].strip(), "to": [], "secure": secure}
                        send("250 ok")
                elif verb == "RCPT":
                    mail["to"].append(line[8:].strip())
                    send("250 ok")
                elif verb == "DATA":
                    send("354 end with .")
                    await writer.drain()
                    data = b""
                    while True:
                        chunk = await reader.readline()
                        if chunk in (b".\r\n", b""):
                            break
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    mail["data"] = data
                    self.messages.append(mail)
                    send("250 queued")
                elif verb in ("RSET", "NOOP"):
                    send("250 ok")
                elif verb == "QUIT":
                    send("221 bye")
                    await writer.drain()
                    break
                else:
                    send("502 not implemented")
                await writer.drain()
        finally:
            writer.close()


def _cert(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    key, crt = tmp_path / "key.pem", tmp_path / "crt.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(crt, key)
    client = ssl.create_default_context(cafile=str(crt))
    return server, client


def _smtp(port: int, **kw: Any) -> SmtpConfig:
    base: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "user": "reports", "password_env": "SP_SMTP_PW",
        "sender": "shadowproxy@example.org", "to": ("team@example.org", "lead@example.org"),
        "timeout": 5.0}
    base.update(kw)
    return SmtpConfig(**base)


def _parsed(server: SmtpServer):
    assert len(server.messages) == 1
    return message_from_bytes(server.messages[0]["data"], policy=policy.default)


async def test_smtp_with_login_sends_markdown_and_the_html_attached(tmp_path: Path) -> None:
    server = await SmtpServer().start()
    loop = asyncio.get_running_loop()
    try:
        smtp = _smtp(server.port, security="none", allow_plain_login=True)
        await loop.run_in_executor(None, lambda: send_email(
            smtp, "shadowproxy report: ok", "### hello\n| a |\n", "<!DOCTYPE html><p>x</p>",
            env={"SP_SMTP_PW": "pw"}))
    finally:
        await server.stop()
    msg = _parsed(server)
    assert msg["Subject"] == "shadowproxy report: ok"
    assert msg["To"] == "team@example.org, lead@example.org"
    assert server.messages[0]["to"] == ["<team@example.org>", "<lead@example.org>"]
    parts = list(msg.iter_parts())
    assert parts[0].get_content().startswith("### hello")
    att = parts[1]
    assert att.get_filename() == "shadowproxy-report.html"
    assert att.get_content().startswith("<!DOCTYPE html>")


async def test_smtp_starttls_and_ssl(tmp_path: Path) -> None:
    server_ctx, client_ctx = _cert(tmp_path)
    loop = asyncio.get_running_loop()
    for implicit in (False, True):
        server = await SmtpServer(tls=server_ctx, implicit_tls=implicit).start()
        try:
            smtp = _smtp(server.port, security="ssl" if implicit else "starttls")
            await loop.run_in_executor(None, lambda smtp=smtp: send_email(
                smtp, "s", "text", None, env={"SP_SMTP_PW": "pw"}, ssl_context=client_ctx))
        finally:
            await server.stop()
        assert server.messages[0]["secure"] is True
        if not implicit:
            assert server.commands[:3] == ["EHLO", "STARTTLS", "EHLO"]


async def test_smtp_failures_are_clear(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    server = await SmtpServer().start()       # no STARTTLS offered
    try:
        with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
            await loop.run_in_executor(None, lambda: send_email(
                _smtp(server.port), "s", "t", env={"SP_SMTP_PW": "pw"}))
        assert "AUTH" not in server.commands   # the password was never sent in clear
        with pytest.raises(DeliveryError, match="login failed"):
            await loop.run_in_executor(None, lambda: send_email(
                _smtp(server.port, security="none", allow_plain_login=True), "s", "t",
                env={"SP_SMTP_PW": "wrong"}))
    finally:
        await server.stop()
    assert server.messages == []
    with pytest.raises(DeliveryError, match="SP_SMTP_PW"):
        send_email(_smtp(1), "s", "t", env={})
    with pytest.raises(DeliveryError, match="plain connection"):
        send_email(_smtp(1, security="none"), "s", "t", env={"SP_SMTP_PW": "pw"})
    with pytest.raises(DeliveryError, match=r"127\.0\.0\.1"):
        from tests.support import free_port
        send_email(_smtp(free_port(), user=None, password_env=None, security="none"),
                   "s", "t", env={})


async def test_report_main_mails_when_smtp_is_configured(built: Built, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """report.smtp (the proposed config section) drives main(); until config.py has it,
    any cfg object with a ``report`` attribute does."""
    from types import SimpleNamespace

    from shadowproxy.config import loads
    server = await SmtpServer().start()
    monkeypatch.setenv("SP_SMTP_PW", "pw")
    base = loads(yaml.safe_dump({"upstreams": {"primary": "http://127.0.0.1:9000"},
                                 "store": {"url": built.url}}))
    cfg = SimpleNamespace(store=base.store, upstreams=base.upstreams, checks=(),
                          report=ReportConfig(smtp=_smtp(
                              server.port, security="none", allow_plain_login=True)))
    args = SimpleNamespace(since="24h", format="json", output=str(tmp_path / "r.json"),
                           webhook=None)
    loop = asyncio.get_running_loop()
    try:
        code = await loop.run_in_executor(None, report_main, cfg, args)
    finally:
        await server.stop()
    assert code == 0
    msg = _parsed(server)
    assert msg["Subject"].startswith("shadowproxy report: 3 of 3 endpoints with differences")
    text, att = list(msg.iter_parts())
    assert "| `/users/{id}` | 40 |" in text.get_content()
    html = att.get_content()
    assert_self_contained(html)
    for s in SECRETS:
        assert s not in html and s not in text.get_content()


# ------------------------------------------------------------------ deploy files


def test_cronjob_runs_the_report_nightly() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/kubernetes/report-cronjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "CronJob")
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    minute, hour, *rest = spec["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"]
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    c = pod["containers"][0]
    script = " ".join(c["command"] + c.get("args", []))
    assert "shadowproxy report -c /etc/shadowproxy/config.yaml --since 24h --format html" in script
    assert "-o /reports/" in script and "$(date" in script and "--webhook" in script
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    # the config and the reports; the store is the fleet's PostgreSQL, not a volume
    assert {"/etc/shadowproxy", "/reports"} <= mounts
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["SHADOWPROXY_REPORT_WEBHOOK"]["valueFrom"]
    assert "secretKeyRef" in env["SHADOWPROXY_DB_PASSWORD"]["valueFrom"]


def test_cron_line_file() -> None:
    lines = [line for line in (ROOT / "deploy/cron/shadowproxy-report").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")
             and "=" not in line.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)
    assert fields[0].isdigit() and fields[1].isdigit() and fields[2:5] == ["*", "*", "*"]
    user, command = fields[5], fields[6]
    assert user == "shadowproxy"
    assert "shadowproxy report -c /etc/shadowproxy/config.yaml --since 24h" in command
    assert "\\%" in command and "%" not in command.replace("\\%", "")   # cron eats bare %
