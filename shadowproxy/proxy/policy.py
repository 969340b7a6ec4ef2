"""Which requests are shadowed: eligibility and sampling, shared by the proxy workers'
:class:`~shadowproxy.proxy.tee.Tee` and the in-process :class:`~shadowproxy.proxy.mirror.Mirror`.

These decisions are made on the request path, in the worker, before the body is read;
everything after them (sending, reading, comparing) happens in the shadow stage.
"""

from __future__ import annotations

import hashlib
import random
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl

from ..config import Config, Route


class Sampler:
    """Random sampling, or consistent by the hash of a header, cookie or query key.

    With ``sample_by`` a given key value is always in or always out for a given
    rate; requests without the key fall back to random sampling.
    """

    def __init__(self, sample_by: str | None) -> None:
        self.where: str | None = None
        self.name = ""
        if sample_by:
            self.where, self.name = sample_by.split(":", 1)
        self.lname = self.name.lower()
        self._rand = random.random

    def key(self, headers: list[tuple[str, str]], query: str) -> str | None:
        if self.where == "header":
            for k, v in headers:
                if k.lower() == self.lname:
                    return v
        elif self.where == "cookie":
            for k, v in headers:
                if k.lower() == "cookie":
                    try:
                        jar = SimpleCookie(v)
                    except Exception:  # noqa: BLE001 - a malformed cookie is just no key
                        continue
                    if self.name in jar:
                        return jar[self.name].value
        elif self.where == "query" and query:
            for k, v in parse_qsl(query, keep_blank_values=True):
                if k == self.name:
                    return v
        return None

    def sampled(self, rate: float, headers: list[tuple[str, str]], query: str) -> bool:
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        if self.where is not None:
            key = self.key(headers, query)
            if key is not None:
                h = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8)
                return int.from_bytes(h.digest(), "big") / 2.0**64 < rate
        return self._rand() < rate


class Policy:
    """``enabled``, ``sample`` and ``candidate`` may be switched at run time (the admin
    API's mirror switch reaches every process that decides)."""

    def configure_policy(self, cfg: Config) -> None:
        m = cfg.mirror
        self.enabled = m.enabled and cfg.upstreams.candidate is not None
        self.candidate = cfg.upstreams.candidate
        self.sample = m.sample
        self.methods = frozenset(m.methods)
        self.sampler = Sampler(m.sample_by)

    def eligible(self, method: str, route: Route | None) -> str | None:
        """None when the request may be shadowed, else the ``not_eligible`` reason."""
        if self.candidate is None:
            return "no_candidate"
        if not self.enabled:
            return "disabled"
        if route is not None and not route.mirror:
            return "route"
        if method not in self.methods and not (route is not None and route.mirror_unsafe):
            return "method"
        return None

    def sampled(self, route: Route | None, headers: list[tuple[str, str]], query: str) -> bool:
        rate = route.sample if route is not None and route.sample is not None else self.sample
        return self.sampler.sampled(rate, headers, query)
