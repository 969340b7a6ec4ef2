"""``shadowproxy report``: what the shadow saw, as HTML, Markdown or JSON.

``main(cfg, args)`` opens the configured store read-only, builds one report data
structure (:func:`shadowproxy.report.data.build_report`) over the last ``--since``,
renders it in ``--format`` (``html`` one self-contained file, ``md`` compact for a
pull request or chat, ``json`` the data itself) to ``-o FILE`` (written atomically)
or stdout, then delivers it: ``--webhook URL`` (or ``report.webhook``) POSTs
``{"text": markdown, "report": summary}``; ``report.smtp`` mails the Markdown with
the HTML attached.

Exit codes: 0 done; 2 usage (a bad ``--since``, no store, a bad webhook URL, an output
directory that does not exist); 1 the report could not be written or delivered (it
is still written to ``-o`` before a delivery fails).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from ..config import parse_duration
from ..errors import StoreError
from .data import build_report, dumps, summary
from .deliver import (
    DeliveryError,
    ReportConfig,
    SmtpConfig,
    check_webhook_url,
    post_webhook,
    report_config,
    send_email,
)
from .html import render_html
from .markdown import render_markdown

__all__ = ["DeliveryError", "ReportConfig", "SmtpConfig", "build_report", "main",
           "render", "render_html", "render_markdown"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"shadowproxy report: {msg}", file=sys.stderr)


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "html":
        return render_html(report)
    if fmt in ("md", "markdown"):
        text = render_markdown(report)
        return text if text.endswith("\n") else text + "\n"
    if fmt == "json":
        return dumps(report).decode("utf-8") + "\n"
    raise ValueError(f"unknown report format {fmt!r}")


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, so a
    reader (a web server publishing the reports) never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".report-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _open_store(cfg: Any, instance: str | None = None) -> Any:
    from ..store.open import open_configured
    if not hasattr(cfg, "instance") or not hasattr(cfg.store, "password_env"):
        from ..store import open_store  # a stand-in config (tests)
        return open_store(cfg.store.url, readonly=True, read_instance=instance)
    return open_configured(cfg, readonly=True, read_instance=instance)


def main(cfg: Any, args: Any) -> int:
    fmt = getattr(args, "format", "html") or "html"
    output = getattr(args, "output", None)
    rc: ReportConfig = report_config(cfg)

    # -- usage checks, before touching the store
    since_arg = getattr(args, "since", None) or "24h"
    try:
        window = parse_duration(since_arg)
    except ValueError as exc:
        _err(f"bad --since {since_arg!r}: {exc}")
        return EXIT_USAGE
    if window <= 0:
        _err(f"bad --since {since_arg!r}: the window must be longer than 0")
        return EXIT_USAGE
    webhook = getattr(args, "webhook", None) or rc.webhook
    if not webhook and rc.webhook_env:
        webhook = os.environ.get(rc.webhook_env) or None
        if webhook is None:
            _err(f"report.webhook_env: environment variable {rc.webhook_env} is not set; "
                 "not posting to a webhook")
    if webhook:
        problem = check_webhook_url(webhook)
        if problem:
            _err(problem)
            return EXIT_USAGE
    if output and output != "-":
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            _err(f"cannot write {output}: directory {parent} does not exist")
            return EXIT_USAGE

    # -- the store
    try:
        store = _open_store(cfg, getattr(args, "instance", None))
    except StoreError as exc:
        _err(f"cannot open the store: {exc}")
        return EXIT_USAGE
    try:
        until = time.time()
        run = getattr(args, "run", None)
        if run and not getattr(args, "since", None):
            # a run is read whole: a replay reported days later still has its results
            span = store.time_range()
            if span is not None and until - span[0] >= window:
                window = until - span[0] + 60.0
                since_arg = f"run {run}"
        with store.snapshot():        # the report and its checks from one state of the store
            report = build_report(store, since=until - window, until=until, cfg=cfg,
                                  label=since_arg, top_fields=rc.top_fields)
    finally:
        store.close()
    checks = report.get("checks") or {}
    if checks.get("verdict") == "error":
        _err(f"the canary checks could not be evaluated ({checks.get('error')}); "
             "the report says so and goes on without them")

    # -- the output
    text = render(report, fmt)
    if output and output != "-":
        try:
            write_atomic(output, text)
        except OSError as exc:
            _err(f"cannot write {output}: {exc.strerror or exc}")
            return EXIT_FAIL
    else:
        sys.stdout.write(text)
        sys.stdout.flush()

    # -- delivery
    status = EXIT_OK
    markdown = text if fmt == "md" else None
    if webhook:
        markdown = markdown or render_markdown(report)
        try:
            post_webhook(webhook, {"text": markdown, "report": summary(report)},
                         timeout=rc.webhook_timeout)
        except DeliveryError as exc:
            _err(str(exc))
            status = EXIT_FAIL
    if rc.smtp is not None:
        markdown = markdown or render_markdown(report)
        html = text if fmt == "html" else render_html(report)
        subject = (rc.smtp.subject.replace("{headline}", report["verdict"]["headline"])
                   .replace("{status}", report["verdict"]["status"]))
        subject = " ".join(subject.split())
        try:
            send_email(rc.smtp, subject, markdown, html)
        except DeliveryError as exc:
            _err(str(exc))
            status = EXIT_FAIL
    return status
