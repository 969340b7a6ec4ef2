"""Delivering a report: a webhook POST (Slack/Mattermost-compatible) and SMTP mail.

Webhook
    One POST of ``{"text": <markdown>, "report": <summary dict>}`` as JSON. Slack and
    Mattermost incoming webhooks show ``text`` and ignore the rest; other receivers
    get the numbers in ``report``. Redirects are not followed (a redirected POST would
    silently turn into a GET); any answer but 2xx, a connection error or the timeout
    is a :class:`DeliveryError`. Error messages show only the scheme and host of the
    URL, because webhook URLs carry their secret in the path.

SMTP
    A ``multipart/mixed`` message: the Markdown as the text body and the HTML report
    attached as ``shadowproxy-report.html`` (mail clients strip inline styles and
    SVG, so the file is attached rather than inlined). ``security`` is ``starttls``
    (default, port 587; the server must offer STARTTLS, else nothing is sent),
    ``ssl`` (implicit TLS, port 465) or ``none`` (port 25; no login is attempted over
    a plain connection unless ``allow_plain_login``). The password is read from the
    environment variable ``password_env`` at send time, never from the config file.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from ..errors import ShadowProxyError

WEBHOOK_TIMEOUT = 10.0
USER_AGENT = "shadowproxy-report"


class DeliveryError(ShadowProxyError):
    """A report could not be delivered (webhook or mail)."""


# -------------------------------------------------- the config (proposed for config.py)


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int | None = None                   # None: 587 starttls, 465 ssl, 25 none
    security: Literal["starttls", "ssl", "none"] = "starttls"
    user: str | None = None
    password_env: str | None = None           # environment variable holding the password
    sender: str = "shadowproxy@localhost"     # From: ("from" is a Python keyword)
    to: tuple[str, ...] = ()
    subject: str = "shadowproxy report: {headline}"
    timeout: float = 30.0
    allow_plain_login: bool = False           # log in without TLS (security: none)


@dataclass(frozen=True)
class ReportConfig:
    webhook: str | None = None                # --webhook overrides
    webhook_env: str | None = None            # or the URL from this environment variable
    webhook_timeout: float = WEBHOOK_TIMEOUT
    smtp: SmtpConfig | None = None
    top_fields: int = 10


def report_config(cfg: Any) -> ReportConfig:
    """``cfg.report`` when the config has the section, else the defaults."""
    rc = getattr(cfg, "report", None)
    return rc if rc is not None else ReportConfig()


# ------------------------------------------------------------------ the webhook


def safe_url(url: str) -> str:
    """scheme://host[:port]/… : enough to recognise, nothing of a secret path."""
    try:
        p = urlsplit(url)
        host = p.hostname or "?"
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "<bad URL>"
    return f"{p.scheme}://{host}{port}" + ("/…" if p.path not in ("", "/") or p.query else "")


def check_webhook_url(url: str) -> str | None:
    """None when ``url`` is usable, else what is wrong with it."""
    try:
        p = urlsplit(url)
        _ = p.port            # raises ValueError for a bad port
    except ValueError as exc:
        return f"bad webhook URL: {exc}"
    if p.scheme not in ("http", "https") or not p.hostname:
        return "the webhook URL must be an http:// or https:// URL with a host"
    return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_webhook(url: str, payload: Mapping[str, Any], *, timeout: float = WEBHOOK_TIMEOUT
                 ) -> int:
    """POST ``payload`` as JSON; → the HTTP status (2xx), else :class:`DeliveryError`."""
    problem = check_webhook_url(url)
    if problem:
        raise DeliveryError(problem)
    body = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS)
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT})
    opener = urllib.request.build_opener(_NoRedirect())
    where = safe_url(url)
    try:
        with opener.open(req, timeout=timeout) as resp:
            status: int = resp.status
            resp.read(65536)
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            detail = exc.read(300).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the status alone is enough
            pass
        raise DeliveryError(f"webhook {where} answered HTTP {exc.code}"
                            + (f": {detail}" if detail else "")) from None
    except TimeoutError:
        raise DeliveryError(f"webhook {where}: no answer within {timeout:g}s") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise DeliveryError(f"webhook {where}: no answer within {timeout:g}s") from None
        raise DeliveryError(f"webhook {where}: {reason}") from None
    except OSError as exc:
        raise DeliveryError(f"webhook {where}: {exc}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook {where} answered HTTP {status}")
    return status


# ------------------------------------------------------------------ mail


def build_message(smtp: SmtpConfig, subject: str, text: str, html: str | None = None
                  ) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = smtp.sender
    msg["To"] = ", ".join(smtp.to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=smtp.sender.rpartition("@")[2] or None)
    msg.set_content(text, subtype="plain", charset="utf-8")
    if html is not None:
        msg.add_attachment(html.encode("utf-8"), maintype="text", subtype="html",
                           filename="shadowproxy-report.html")
    return msg


def send_email(smtp: SmtpConfig, subject: str, text: str, html: str | None = None, *,
               env: Mapping[str, str] | None = None,
               ssl_context: ssl.SSLContext | None = None) -> None:
    """Send the report by mail; :class:`DeliveryError` on any failure."""
    env = os.environ if env is None else env
    if not smtp.to:
        raise DeliveryError("smtp: no recipients (report.smtp.to is empty)")
    password = None
    if smtp.password_env:
        password = env.get(smtp.password_env)
        if not password:
            raise DeliveryError(f"smtp: environment variable {smtp.password_env} "
                                "(report.smtp.password_env) is not set")
    if smtp.user and password is None:
        raise DeliveryError("smtp: a user is set but no password_env")
    if smtp.user and smtp.security == "none" and not smtp.allow_plain_login:
        raise DeliveryError("smtp: refusing to send the password over a plain connection "
                            "(use security: starttls or ssl, or allow_plain_login: true)")
    port = smtp.port or {"starttls": 587, "ssl": 465, "none": 25}[smtp.security]
    ctx = ssl_context or ssl.create_default_context()
    msg = build_message(smtp, subject, text, html)
    where = f"{smtp.host}:{port}"
    try:
        if smtp.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, port, timeout=smtp.timeout,
                                                    context=ctx)
        else:
            client = smtplib.SMTP(smtp.host, port, timeout=smtp.timeout)
        with client:
            client.ehlo()
            if smtp.security == "starttls":
                if not client.has_extn("starttls"):
                    raise DeliveryError(f"smtp {where} does not offer STARTTLS "
                                        "(set security: ssl or none)")
                client.starttls(context=ctx)
                client.ehlo()
            if smtp.user:
                client.login(smtp.user, password or "")
            refused = client.send_message(msg)
            if refused:
                raise DeliveryError(f"smtp {where} refused recipients: "
                                    f"{', '.join(sorted(refused))}")
    except DeliveryError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"smtp {where}: login failed ({exc.smtp_code})") from None
    except smtplib.SMTPException as exc:
        raise DeliveryError(f"smtp {where}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"smtp {where}: {exc}") from None
