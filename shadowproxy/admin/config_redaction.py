"""The configuration as served by ``/api/v1/config`` and ``/api/v1/status``: secrets
(tokens, ``*_env`` values, URL user info, credential headers) replaced by
``<redacted>``."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from ..config import DEFAULT_REDACTED_HEADERS, Config

REDACTED = "<redacted>"

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s?#]*@")
_SECRET_KEYS = frozenset({"token", "password", "passwd", "secret", "api_key", "apikey"})
_SECRET_ENV = re.compile(r"(?i)token|secret|passw|pwd|api_?key|private|credential|auth|_key$")
_SENSITIVE_HEADER = re.compile(r"(?i)auth|token|secret|passw|api[-_]?key|cookie|session")


def redact_config(cfg: Config, env: Any = None) -> dict[str, Any]:
    """The configuration as JSON-able data with secrets replaced by ``<redacted>``:
    ``admin.token`` and any key named like a secret, the values of every ``*_env``
    variable wherever they appear (``${VAR}`` substitution puts them in strings), the
    user info of URLs, and added headers that carry credentials. Values of environment
    variables named like secrets (``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*_KEY``…)
    are redacted wherever they appear, since the loader does not record which
    ``${VAR}`` it substituted."""
    env = os.environ if env is None else env
    doc = dataclasses.asdict(cfg)
    secrets: set[str] = set()
    if cfg.admin.token:
        secrets.add(cfg.admin.token)

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and k.endswith("_env") and isinstance(v, str) and v:
                    val = env.get(v)
                    if val:
                        secrets.add(val)
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(doc)
    # values that ${VAR} substitution may have put anywhere: variables named like secrets
    for name, val in env.items():
        if val and len(val) >= 6 and _SECRET_ENV.search(name):
            secrets.add(val)
    long_secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
    sensitive = {h.lower() for h in DEFAULT_REDACTED_HEADERS} | \
        {h.lower() for h in cfg.redact.headers}

    def scrub(text: str) -> str:
        if text in secrets:
            return REDACTED
        for s in long_secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if isinstance(k, str) and k.lower() in _SECRET_KEYS and v not in (None, ""):
                    out[k] = REDACTED
                else:
                    out[k] = walk(v, k)
            return out
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return scrub(node)
        return node

    out: dict[str, Any] = walk(doc)
    headers = out.get("mirror", {}).get("add_headers") or {}
    for name in list(headers):
        if name.lower() in sensitive or _SENSITIVE_HEADER.search(name):
            headers[name] = REDACTED
    return out


def redact_url(url: str | None) -> str | None:
    return None if url is None else _URL_USERINFO.sub(lambda m: m.group(1) + REDACTED + "@",
                                                      url)
