"""The one typed, frozen configuration object, loaded from YAML.

Every section is a frozen dataclass. The loader walks the YAML node tree (so it
knows the line of every key), substitutes ``${ENV_VAR}`` in scalars, converts
durations and sizes, and rejects unknown keys, wrong types and bad values with
a :class:`~shadowproxy.errors.ConfigError` naming file, line and key path.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError
from .routepattern import RoutePattern

# ---------------------------------------------------------------- value kinds


class _Kind:
    """Marker used in ``Annotated`` to give a field a special parser."""

    def __init__(self, name: str, parse: typing.Callable[[Any], Any]) -> None:
        self.name = name
        self.parse = parse


_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``250ms``, ``5s``, ``1m``, ``2h``, ``7d`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms or 5s")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 250ms or 5s, got {value!r}")


_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}


def parse_size(value: Any) -> int:
    """``64KiB``, ``1MiB``, ``10MB`` or a number of bytes → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 1MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "b").lower()
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size such as 64KiB or 1MiB, got {value!r}")


def parse_address(value: Any) -> str:
    """``host:port`` (``[::1]:8080`` for IPv6); the port must be 0..65535."""
    if not isinstance(value, str):
        raise ValueError("expected host:port")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


def parse_url(value: Any) -> str:
    """An absolute http:// or https:// URL with a host and no query."""
    if not isinstance(value, str):
        raise ValueError("expected a URL such as http://127.0.0.1:9001")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"an upstream URL takes no query or fragment, got {value!r}")
    try:
        _ = parts.port          # the property raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    return value.rstrip("/")


def parse_ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number between 0 and 1, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"expected a number between 0 and 1, got {value!r}")
    return float(value)


def parse_method(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z]+", value):
        raise ValueError(f"expected an HTTP method, got {value!r}")
    return value.upper()


def parse_sample_by(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"(header|cookie|query):.+", value):
        raise ValueError(f"expected header:NAME, cookie:NAME or query:NAME, got {value!r}")
    return value


def parse_regex(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a regular expression")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regular expression {value!r}: {exc}") from exc
    return value


def parse_jsonpath(value: Any) -> str:
    """A JSONPath in the project's one grammar (:mod:`shadowproxy.jsonpath`), the one the
    comparator's rules and the redactor parse it with: what passes here, both can use."""
    if not isinstance(value, str) or not value.startswith("$"):
        raise ValueError(f"expected a JSONPath starting with $, got {value!r}")
    from .jsonpath import parse  # imports nothing of shadowproxy: no cycle

    parse(value)   # JSONPathError (a ValueError) naming the position and the reason
    return value


def parse_network(value: Any) -> str:
    """An IP network (``10.0.0.0/8``, ``2001:db8::/32``) or one address (``192.0.2.7``),
    written the standard way."""
    if not isinstance(value, str):
        raise ValueError(f"expected an IP network such as 10.0.0.0/8 or an address, "
                         f"got {value!r}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as exc:
        raise ValueError(f"expected an IP network such as 10.0.0.0/8 or an address, "
                         f"got {value!r} ({exc})") from None


Duration = Annotated[float, _Kind("duration", parse_duration)]
Size = Annotated[int, _Kind("size", parse_size)]
Address = Annotated[str, _Kind("address", parse_address)]
Url = Annotated[str, _Kind("url", parse_url)]
Ratio = Annotated[float, _Kind("ratio", parse_ratio)]
Method = Annotated[str, _Kind("method", parse_method)]
SampleBy = Annotated[str, _Kind("sample_by", parse_sample_by)]
Regex = Annotated[str, _Kind("regex", parse_regex)]
JsonPath = Annotated[str, _Kind("jsonpath", parse_jsonpath)]
Network = Annotated[str, _Kind("network", parse_network)]

# ---------------------------------------------------------------- the schema

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

DEFAULT_IGNORED_HEADERS = (
    "date", "server", "x-request-id", "x-trace-id", "x-correlation-id", "x-amzn-trace-id",
    "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
    "x-b3-sampled", "age", "via", "expires", "last-modified", "etag", "x-runtime",
    "x-response-time", "server-timing", "content-length", "transfer-encoding", "connection",
    "keep-alive", "x-served-by", "x-cache", "x-cache-hits", "x-timer", "cf-ray", "report-to",
    "nel", "alt-svc",
)
DEFAULT_REDACTED_HEADERS = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
    "x-auth-token", "x-csrf-token", "x-xsrf-token",
)
DEFAULT_REDACTED_FIELDS = ("$..password", "$..token", "$..secret", "$..api_key")


@dataclass(frozen=True)
class AdminConfig:
    listen: Address = "127.0.0.1:8081"
    token: str | None = None
    token_env: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Upstreams:
    primary: Url
    candidate: Url | None = None
    secondary: Url | None = None


@dataclass(frozen=True)
class Timeouts:
    connect: Duration = 5.0        # primary connect
    primary: Duration = 60.0       # primary: no byte for this long → 504
    shutdown: Duration = 15.0      # SIGTERM: in-flight requests and mirror drain deadline


@dataclass(frozen=True)
class ForwardedConfig:
    # peers (the TCP client's address) whose X-Forwarded-For/-Proto/-Host are extended;
    # any other's are replaced by the proxy's own values
    trust: tuple[Network, ...] = ()


@dataclass(frozen=True)
class MirrorConfig:
    enabled: bool = True
    sample: Ratio = 1.0
    sample_by: SampleBy | None = None
    methods: tuple[Method, ...] = SAFE_METHODS
    max_body: Size = 1024 * 1024
    queue: int = 2000   # per worker: bursts beyond concurrency; more only waits to expire
    concurrency: int = 64
    timeout: Duration = 5.0
    capture_max: Size = 1024 * 1024   # bytes of each response kept for comparison
    max_response: Size = 16 * 1024 * 1024   # a shadow answer beyond this: candidate_error
    buffer_limit: Size = 256 * 1024 * 1024   # bytes all queued/in-flight shadows may hold
    breaker_failures: int = 5         # consecutive connect errors that open the breaker; 0: off
    breaker_cooldown: Duration = 1.0  # first pause before a probe (doubles up to 30 s)
    add_headers: dict[str, str] = field(default_factory=lambda: {"X-Shadow-Request": "1"})
    remove_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tolerance:
    path: JsonPath
    abs: float = 0.0
    rel: float = 0.0


@dataclass(frozen=True)
class ArrayRule:
    path: JsonPath
    mode: Literal["ordered", "unordered", "keyed"] = "ordered"
    key: str | None = None


@dataclass(frozen=True)
class Scrubber:
    pattern: Regex
    replace: str = "<scrubbed>"


@dataclass(frozen=True)
class CompareRules:
    """Comparison rules, global (``compare:``) or per route (``routes[].compare:``).

    Lists add to the global ones; a per-route tolerance or array rule for the
    same path overrides the global one.
    """

    headers: bool = True                       # compare headers at all
    ignore_headers: tuple[str, ...] = ()      # added to DEFAULT_IGNORED_HEADERS
    ignore: tuple[JsonPath, ...] = ()         # body fields never compared
    tolerance: tuple[Tolerance, ...] = ()
    arrays: tuple[ArrayRule, ...] = ()
    # builtin names (timestamp, uuid, hex, number) or {pattern, replace}
    scrubbers: tuple[Literal["timestamp", "uuid", "hex", "number"] | Scrubber, ...] = ()


@dataclass(frozen=True)
class Route:
    match: str
    name: str | None = None
    methods: tuple[Method, ...] | None = None   # None: any method
    mirror: bool = True
    mirror_unsafe: bool = False
    sample: Ratio | None = None
    compare: CompareRules | None = None

    @property
    def key(self) -> str:
        return self.name or self.match


@dataclass(frozen=True)
class RedactConfig:
    headers: tuple[str, ...] = ()            # added to DEFAULT_REDACTED_HEADERS
    fields: tuple[JsonPath, ...] = ()         # added to DEFAULT_REDACTED_FIELDS
    key_env: str | None = None               # HMAC key; random per run when unset
    query: tuple[str, ...] = ("token", "access_token", "api_key", "apikey", "password", "secret")


@dataclass(frozen=True)
class NoiseConfig:
    min_samples: int = 50           # exchanges with a secondary before a field can be judged
    alpha: Ratio = 0.05             # significance of the two-proportion test
    relative: Ratio = 0.20          # Diffy's relative threshold, as effect size
    absolute: Ratio = 0.0003        # Diffy's absolute threshold, as effect size


@dataclass(frozen=True)
class ShadowConfig:
    processes: int = 1               # shadow processes: send to the candidate, read, hand on
    nice: int = 10                   # CPU priority below the workers' (0: the same, 19: lowest)
    buffer: Size = 4 * 1024 * 1024   # bytes a worker's link to a shadow process may hold


@dataclass(frozen=True)
class ComparatorConfig:
    queue: int = 10000              # exchanges waiting for comparison (per comparator)
    buffer_limit: Size = 256 * 1024 * 1024   # bytes of the exchanges waiting
    samples_detail: bool = True     # deepdiff detail for stored samples (never per request)


@dataclass(frozen=True)
class TransportConfig:
    """The fleet's network transport (Redis Streams, see docs/fleet.md). Without a
    ``url`` the sidecar compares in its own control process over the local channel."""

    # redis://[USER[:PASSWORD]@]HOST:PORT/DB or rediss:// (TLS); None: the local channel
    url: str | None = None
    password_env: str | None = None   # the variable holding the password (not in the file)
    stream: str = "shadowproxy:exchanges"
    group: str = "comparators"        # the comparators' consumer group
    max_len: int = 1_000_000          # entries kept at most; sidecars stop adding at this lag
    claim_after: Duration = 30.0      # a comparator's unacknowledged entries go to another
    max_deliveries: int = 5           # deliveries of an entry before the dead-letter stream
    buffer: Size = 16 * 1024 * 1024   # bytes a shadow process holds for the stream
    batch: int = 64                   # entries in one pipelined write (and one read)


@dataclass(frozen=True)
class EndpointsConfig:
    max: int = 200                   # distinct endpoint keys before the overflow bucket


@dataclass(frozen=True)
class StoreConfig:
    # sqlite:///PATH, or postgresql://USER@HOST:PORT/DB[?sslmode=...] (also postgres://)
    url: str = "sqlite:///./shadowproxy.db"
    password_env: str | None = None     # PostgreSQL: the variable holding the password
    batch: int = 1000                   # results a transaction waits for ...
    flush_interval: Duration = 1.0      # ... or this long after the oldest of them
    max_batch: int = 5000               # results a transaction takes when a backlog built
    queue: int = 10000
    samples_per_field: int = 5
    retention_age: Duration = 7 * 86400.0
    retention_size: Size = 1024**3


@dataclass(frozen=True)
class RotateConfig:
    size: Size = 256 * 1024**2      # a recording file is closed at this size ...
    age: Duration = 3600.0          # ... or this age, whichever comes first
    compress: bool = False          # gzip a file once it is closed (name.gor.gz)


@dataclass(frozen=True)
class KeepConfig:
    age: Duration = 7 * 86400.0     # closed files older than this are deleted
    size: Size = 10 * 1024**3       # and the oldest while all of them together exceed this


@dataclass(frozen=True)
class RecordConfig:
    """``record:``: production exchanges written to GoReplay-format files, off the
    primary path (a worker hands each over; a shadow process's thread writes)."""

    dir: str
    sample: Ratio = 0.05
    sample_by: SampleBy | None = None
    queue: int = 10000              # exchanges waiting for the writer thread
    rotate: RotateConfig = field(default_factory=RotateConfig)
    keep: KeepConfig = field(default_factory=KeepConfig)


@dataclass(frozen=True)
class CheckConfig:
    name: str
    endpoints: str = "*"
    min_samples: int = 100
    critical: bool = False
    confidence: Ratio = 0.95
    max_diff_rate: Ratio | None = None
    max_error_rate_increase: Ratio | None = None
    max_p99_ratio: float | None = None
    max_p50_ratio: float | None = None
    forbid_kinds: tuple[
        Literal["changed", "type_changed", "added", "removed", "length_changed"], ...
    ] | None = None
    # endpoints with too little traffic to be judged alone: judged inside the aggregate,
    # make the check inconclusive, or are left out (docs/checks.md)
    low_traffic: Literal["aggregate", "inconclusive", "ignore"] = "aggregate"
    # what the latency ratios compare the candidate with: the secondary where the window
    # has one for the endpoint (else primary), or always primary (docs/checks.md)
    latency_baseline: Literal["secondary", "primary"] = "secondary"


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int | None = None                  # 587 starttls / 465 ssl / 25 none
    security: Literal["starttls", "ssl", "none"] = "starttls"
    user: str | None = None
    password_env: str | None = None
    sender: str = "shadowproxy@localhost"
    to: tuple[str, ...] = ()
    subject: str = "shadowproxy report: {headline}"   # also {status}
    timeout: Duration = 30.0
    allow_plain_login: bool = False


@dataclass(frozen=True)
class ReportConfig:
    webhook: str | None = None        # may carry its secret in the path or query
    webhook_env: str | None = None    # environment variable holding the webhook URL
    webhook_timeout: Duration = 10.0
    smtp: SmtpConfig | None = None
    top_fields: int = 10


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    access: bool = False


def default_instance() -> str:
    """The name this process writes its results under (``instance:``): ``POD_NAME``,
    else the host name."""
    import socket

    return os.environ.get("POD_NAME") or socket.gethostname() or "shadowproxy"


INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


@dataclass(frozen=True)
class Config:
    upstreams: Upstreams
    listen: Address = "127.0.0.1:8080"
    # the writing instance: labels every stored row (several sidecars, one PostgreSQL)
    instance: str = field(default_factory=default_instance)
    # proxy: in front of primary; receiver: the target of a mirror that exists (nginx
    # mirror, Istio/Envoy): answer 202 at once, then send to primary, candidate, secondary
    mode: Literal["proxy", "receiver"] = "proxy"
    workers: int | None = None
    preserve_host: bool = False
    forwarded: ForwardedConfig = field(default_factory=ForwardedConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    admin: AdminConfig = field(default_factory=AdminConfig)
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    routes: tuple[Route, ...] = ()
    compare: CompareRules = field(default_factory=CompareRules)
    comparator: ComparatorConfig = field(default_factory=ComparatorConfig)
    redact: RedactConfig = field(default_factory=RedactConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    checks: tuple[CheckConfig, ...] = ()
    report: ReportConfig = field(default_factory=ReportConfig)
    log: LogConfig = field(default_factory=LogConfig)
    record: RecordConfig | None = None
    source: str | None = field(default=None, compare=False)   # file it came from
    # key path → line in ``source``, so that errors found later still point at the line
    lines: typing.Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def where(self, key: str) -> str:
        """``file:line: key`` for messages about a value found wrong at run time."""
        place = self.source or "<config>"
        line = self.lines.get(key)
        return f"{place}:{line}: {key}" if line else f"{place}: {key}"


# ---------------------------------------------------------------- validation beyond types

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# headers a shadow's framing, destination or connection depend on: never added
_NOT_ADDABLE = frozenset({
    "content-length", "transfer-encoding", "host", "connection", "keep-alive",
    "proxy-connection", "te", "trailer", "upgrade", "expect",
})


def _check_semantics(cfg: Config, pos: _Positions, env: typing.Mapping[str, str]) -> None:
    def fail(key: str, msg: str) -> typing.NoReturn:
        raise pos.error(key, msg)

    m = cfg.mirror
    if m.queue < 1:
        fail("mirror.queue", "must be at least 1")
    if m.concurrency < 1:
        fail("mirror.concurrency", "must be at least 1")
    if m.timeout <= 0:
        fail("mirror.timeout", "must be greater than 0")
    if m.max_response < m.capture_max:
        fail("mirror.max_response", f"must be at least mirror.capture_max ({m.capture_max})")
    if m.breaker_failures < 0:
        fail("mirror.breaker_failures", "must be 0 (off) or more")
    for name, value in m.add_headers.items():
        if not _HEADER_NAME.fullmatch(name):
            fail("mirror.add_headers", f"{name!r} is not a header name")
        if name.lower() in _NOT_ADDABLE:
            fail("mirror.add_headers", f"{name!r} is the proxy's to set (framing, Host or "
                 "hop-by-hop), not a header to add")
        if not isinstance(value, str) or _HEADER_VALUE_BAD.search(value) or \
                not value.isascii():
            fail("mirror.add_headers", f"the value of {name!r} must be printable ASCII "
                 "(no control characters)")
    if cfg.workers is not None and cfg.workers < 1:
        fail("workers", "must be at least 1")
    if cfg.record is not None:
        if not cfg.record.dir:
            fail("record.dir", "names no directory")
        if cfg.record.queue < 1:
            fail("record.queue", "must be at least 1")
        if cfg.record.rotate.size < 1024 or cfg.record.rotate.age <= 0:
            fail("record.rotate", "size must be at least 1KiB and age greater than 0")
    if cfg.shadow.processes < 1:
        fail("shadow.processes", "must be at least 1")
    if not 0 <= cfg.shadow.nice <= 19:
        fail("shadow.nice", "must be between 0 (the workers' priority) and 19 (the lowest)")
    if cfg.comparator.queue < 1:
        fail("comparator.queue", "must be at least 1")
    if cfg.endpoints.max < 1:
        fail("endpoints.max", "must be at least 1")
    if cfg.store.batch < 1:
        fail("store.batch", "must be at least 1")
    if cfg.store.max_batch < 1:
        fail("store.max_batch", "must be at least 1")
    postgres = cfg.store.url.startswith(("postgresql://", "postgres://"))
    if postgres:
        try:
            parts = urlsplit(cfg.store.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            fail("store.url", f"not a valid postgresql:// URL ({exc})")
        if not parts.path.strip("/") and "dbname=" not in parts.query:
            fail("store.url", "names no database: expected postgresql://USER@HOST:PORT/DB")
    elif not re.match(r"^(sqlite:///|sqlite://:memory:|memory:)", cfg.store.url):
        fail("store.url", "unsupported store URL (expected sqlite:///PATH or "
             "postgresql://USER@HOST:PORT/DB)")
    if cfg.store.password_env:
        if not postgres:
            fail("store.password_env", "is for a postgresql:// store (SQLite has no password)")
        if cfg.store.password_env not in env:
            fail("store.password_env",
                 f"environment variable {cfg.store.password_env} is not set")
    _check_transport(cfg.transport, fail, env)
    if not INSTANCE_NAME.fullmatch(cfg.instance):
        fail("instance", f"{cfg.instance!r} is not an instance name (letters, digits and "
             "._:@- , at most 128, starting with a letter or digit)")
    keys: dict[str, int] = {}
    for i, r in enumerate(cfg.routes):
        try:
            RoutePattern(r.match)
        except ValueError as exc:
            fail(f"routes[{i}].match", str(exc))
        # the key names the endpoint and selects the route's compare rules: two routes
        # with one key would share (and silently lose) rules and statistics
        if r.key in keys:
            fail(f"routes[{i}]", f"route key {r.key!r} is also routes[{keys[r.key]}]'s; "
                 "give one of them a distinct name")
        keys[r.key] = i
        for j, a in enumerate(r.compare.arrays if r.compare else ()):
            if a.mode == "keyed" and not a.key:
                fail(f"routes[{i}].compare.arrays[{j}].key", "mode keyed needs a key")
    for j, a in enumerate(cfg.compare.arrays):
        if a.mode == "keyed" and not a.key:
            fail(f"compare.arrays[{j}].key", "mode keyed needs a key")
    names = set()
    for i, c in enumerate(cfg.checks):
        if c.name in names:
            fail(f"checks[{i}].name", f"duplicate check name {c.name!r}")
        names.add(c.name)
        for attr in ("max_p50_ratio", "max_p99_ratio"):
            v = getattr(c, attr)
            if v is not None and v <= 0:
                fail(f"checks[{i}].{attr}", "must be greater than 0")
        if not 0.0 < c.confidence < 1.0:
            fail(f"checks[{i}].confidence", "must be strictly between 0 and 1")
        if not any(v is not None for v in (c.max_diff_rate, c.max_error_rate_increase,
                                           c.max_p99_ratio, c.max_p50_ratio, c.forbid_kinds)):
            fail(f"checks[{i}]", "a check needs at least one of max_diff_rate, "
                 "max_error_rate_increase, max_p99_ratio, max_p50_ratio, forbid_kinds")
    rep = cfg.report
    if rep.webhook is not None and not re.match(r"^https?://[^/\s]+", rep.webhook):
        fail("report.webhook", "expected an http:// or https:// URL")
    if rep.top_fields < 1:
        fail("report.top_fields", "must be at least 1")
    if rep.smtp is not None:
        if not rep.smtp.to:
            fail("report.smtp.to", "needs at least one recipient")
        if rep.smtp.port is not None and not 1 <= rep.smtp.port <= 65535:
            fail("report.smtp.port", "must be between 1 and 65535")
        if rep.smtp.user and not rep.smtp.password_env:
            fail("report.smtp.password_env", "a user needs password_env (the password is "
                 "never written in the file)")
    if cfg.admin.token_env and cfg.admin.token is None and cfg.admin.token_env not in env:
        fail("admin.token_env", f"environment variable {cfg.admin.token_env} is not set")
    token = cfg.admin.token or (env.get(cfg.admin.token_env) if cfg.admin.token_env else None)
    if not token and not is_loopback(split_address(cfg.admin.listen)[0]):
        fail("admin.listen", "listens beyond loopback without a token: set admin.token or "
             "admin.token_env (to a variable that is set and not empty)")
    t = cfg.timeouts
    for name in ("connect", "primary"):
        if getattr(t, name) <= 0:
            fail(f"timeouts.{name}", "must be greater than 0")
    if t.shutdown < 0:
        fail("timeouts.shutdown", "must be 0 or more")


def _check_transport(tr: TransportConfig, fail: typing.Callable[[str, str], typing.NoReturn],
                     env: typing.Mapping[str, str]) -> None:
    if tr.url is not None:
        if not re.match(r"^rediss?://[^/\s]", tr.url):
            fail("transport.url", "expected redis://HOST:PORT/DB or rediss:// (TLS)")
        try:
            parts = urlsplit(tr.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            fail("transport.url", f"not a valid redis:// URL ({exc})")
        if not re.fullmatch(r"/?|/\d+", parts.path):    # redis-py would use DB 0 silently
            fail("transport.url", f"the database {parts.path[1:]!r} is not a number "
                 "(redis://HOST:PORT/DB)")
    if tr.password_env and tr.password_env not in env:
        fail("transport.password_env", f"environment variable {tr.password_env} is not set")
    if not tr.stream:
        fail("transport.stream", "must not be empty")
    if not tr.group:
        fail("transport.group", "must not be empty")
    if tr.max_len < 1:
        fail("transport.max_len", "must be at least 1")
    if tr.max_deliveries < 1:
        fail("transport.max_deliveries", "must be at least 1")
    if tr.claim_after <= 0:
        fail("transport.claim_after", "must be greater than 0")
    if tr.batch < 1:
        fail("transport.batch", "must be at least 1")


# ---------------------------------------------------------------- the loader


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class _Positions:
    """Remembers the line of every key path so later checks can point at it."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}

    def error(self, key: str, msg: str) -> ConfigError:
        probe = key
        while probe and probe not in self.lines:
            shorter = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)
            if shorter == probe:
                break
            probe = shorter
        return ConfigError(msg, file=self.file, line=self.lines.get(probe), key=key)


class _Loader:
    def __init__(self, file: str, env: typing.Mapping[str, str]) -> None:
        self.pos = _Positions(file)
        self.env = env
        self.file = file
        self._resolver = yaml.SafeLoader("")

    def err(self, node: yaml.Node | None, key: str, msg: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else self.pos.lines.get(key)
        return ConfigError(msg, file=self.file, line=line, key=key or None)

    # -- scalars

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.err(node, key, "expected a single value, got a "
                           + ("list" if isinstance(node, yaml.SequenceNode) else "mapping"))
        value = node.value
        tag = node.tag
        if "${" in value:
            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if name in self.env:
                    return self.env[name]
                if default is not None:
                    return default
                raise self.err(node, key, f"environment variable {name} is not set")

            value = _ENV_RE.sub(sub, value)
            if node.style is None:  # plain scalar: resolve its type again after substitution
                tag = self._resolver.resolve(yaml.ScalarNode, value, (True, False))
        new = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, node.style)
        return self._resolver.construct_object(new, deep=True)

    # -- typed build

    def build(self, tp: Any, node: yaml.Node, key: str) -> Any:
        self.pos.lines.setdefault(key, node.start_mark.line + 1)
        origin = typing.get_origin(tp)
        if origin is Annotated:
            base, *meta = typing.get_args(tp)
            kind = next((m for m in meta if isinstance(m, _Kind)), None)
            if kind is None:
                return self.build(base, node, key)
            raw = self.scalar(node, key)
            try:
                return kind.parse(raw)
            except ValueError as exc:
                raise self.err(node, key, str(exc)) from None
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null") and \
                    type(None) in args:
                return None
            arms = [a for a in args if a is not type(None)]
            if len(arms) == 1:      # X | None: X's own error, naming its key and line
                return self.build(arms[0], node, key)
            errors = []
            for arg in args:
                if arg is type(None):
                    continue
                try:
                    return self.build(arg, node, key)
                except ConfigError as exc:
                    errors.append(exc.reason)
            raise self.err(node, key, " or ".join(dict.fromkeys(errors)))
        if origin is Literal:
            value = self.scalar(node, key)
            allowed = typing.get_args(tp)
            if value not in allowed:
                raise self.err(node, key, f"expected one of {', '.join(map(str, allowed))}, "
                               f"got {value!r}")
            return value
        if origin is tuple:
            (item_tp, _ellipsis) = typing.get_args(tp)
            if isinstance(node, yaml.ScalarNode) and not node.tag.endswith(":null"):
                # a single value where a list is expected: accept as a list of one
                return (self.build(item_tp, node, f"{key}[0]"),)
            if not isinstance(node, yaml.SequenceNode):
                raise self.err(node, key, "expected a list")
            return tuple(self.build(item_tp, n, f"{key}[{i}]") for i, n in enumerate(node.value))
        if origin is dict:
            _, v_tp = typing.get_args(tp)
            if not isinstance(node, yaml.MappingNode):
                raise self.err(node, key, "expected a mapping")
            out = {}
            for k_node, v_node in node.value:
                k = self.scalar(k_node, key)
                sub = f"{key}.{k}" if key else str(k)
                out[str(k)] = self.build(v_tp, v_node, sub)
            return out
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, node, key)
        # plain scalar types
        value = self.scalar(node, key)
        if tp is bool:
            if not isinstance(value, bool):
                raise self.err(node, key, f"expected true or false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.err(node, key, f"expected an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.err(node, key, f"expected a number, got {value!r}")
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)) or value is None:
                raise self.err(node, key, f"expected a string, got {value!r}")
            if isinstance(value, bool):
                raise self.err(node, key, f"expected a string, got {value!r} "
                               "(quote it if you mean the text)")
            return str(value)
        raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover

    def dataclass(self, cls: Any, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, f"expected a mapping for {key or 'the configuration'}")
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls)
                  if f.init and not (cls is Config and f.name in ("source", "lines"))}
        kwargs: dict[str, Any] = {}
        for k_node, v_node in node.value:
            name = self.scalar(k_node, key)
            sub = f"{key}.{name}" if key else str(name)
            if name not in fields:
                known = ", ".join(sorted(fields))
                raise self.err(k_node, sub, f"unknown key (known keys: {known})")
            if name in kwargs:
                raise self.err(k_node, sub, "key given twice")
            self.pos.lines[sub] = k_node.start_mark.line + 1
            kwargs[name] = self.build(hints[name], v_node, sub)
        for name, f in fields.items():
            if name not in kwargs and f.default is dataclasses.MISSING and \
                    f.default_factory is dataclasses.MISSING:
                sub = f"{key}.{name}" if key else name
                raise self.err(node, sub, "required key is missing")
        return cls(**kwargs)


def loads(text: str, *, file: str = "<config>", env: typing.Mapping[str, str] | None = None
          ) -> Config:
    """Parse YAML text into a validated :class:`Config`."""
    loader = _Loader(file, os.environ if env is None else env)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"not valid YAML: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=file) from None
    if node is None:
        raise ConfigError("the file is empty", file=file)
    cfg: Config = loader.dataclass(Config, node, "")
    cfg = dataclasses.replace(cfg, source=file, lines=dict(loader.pos.lines))
    _check_semantics(cfg, loader.pos, loader.env)
    return cfg


def load(path: str | os.PathLike[str], *, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read and validate a configuration file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    return loads(text, file=path, env=env)


def is_loopback(host: str) -> bool:
    """Is ``host`` (a name or an address, IPv6 with or without brackets) loopback?"""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)
