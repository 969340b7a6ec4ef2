"""The result store interface and the rows its reads return.

The interface is deliberately narrow (plain values in, plain dataclasses out) so that
a PostgreSQL store can follow the SQLite one. Times are unix seconds (float); every
``since`` is inclusive and every ``until`` exclusive; ``None`` means unbounded.
Endpoint globs use :func:`fnmatch.fnmatchcase` semantics (``*``, ``?``, ``[seq]``).

Writes take results whose exchanges are **already redacted** (see
:mod:`shadowproxy.redact.redactor`); a store never writes request or response bodies anywhere
but the ``samples`` it keeps, and never keeps a result marked ``summary_only`` (redacted
only as far as the summary rows need) as a sample. A store that can tell which results
it will not keep as samples offers ``keeps_sample(result) -> bool`` (see
:meth:`SqliteStore.keeps_sample <shadowproxy.store.sqlite.store.SqliteStore.keeps_sample>`);
the comparator then redacts only what the summary needs of the others.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..models import Result
from .sketch import Sketch

# (minute start, endpoint, outcome, reason, count): the proxy's request outcome counters
NoiseCounts = tuple[str, str, int, int, int]    # (endpoint, field or "", N, R, S)
OutcomeRow = tuple[float, str, str, str, int]

# pseudo-fields under which the first K exchanges with these verdicts are sampled
MATCH_SAMPLE = "#match"
ERROR_SAMPLE = "#error"


@dataclass(frozen=True, slots=True)
class EndpointStats:
    endpoint: str
    exchanges: int
    matches: int
    diffs: int                 # verdict diff
    noise: int                 # verdict noise (only noise differences)
    errors: int                # verdict error
    candidate_5xx: int
    primary_5xx: int
    candidate_errors: int      # candidate gave no complete response (connect, timeout, ...)
    primary_errors: int
    latency_samples: int       # exchanges where both answered: the latency pairs below
    primary_p50: float | None
    primary_p95: float | None
    primary_p99: float | None
    candidate_p50: float | None
    candidate_p95: float | None
    candidate_p99: float | None

    @property
    def diff_rate(self) -> float:
        """Share of compared exchanges (candidate answered) with a non-noise difference:
        the one definition the checks, reports and UI use. Errors are their own rate."""
        compared = self.exchanges - self.errors
        return self.diffs / compared if compared > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.exchanges if self.exchanges else 0.0


@dataclass(frozen=True, slots=True)
class FieldStats:
    endpoint: str | None       # None when several endpoints were aggregated
    field: str
    count: int                 # difference rows on this field
    exchanges: int             # distinct exchanges with a difference on this field
    kinds: dict[str, int]      # kind → count
    noise_count: int           # rows that were judged noise when written
    noise: bool                # learned noise now (noise table), else all rows were noise
    example_id: str | None     # an exchange to look at, preferring one with a sample
    kinds_noise: dict[str, int] = dataclasses.field(default_factory=dict)  # kind → noise rows


@dataclass(frozen=True, slots=True)
class ExchangeRow:
    id: str
    time: float
    endpoint: str
    route: str | None
    method: str
    path: str
    query: str
    verdict: str
    primary_status: int
    candidate_status: int
    secondary_status: int | None
    primary_latency: float
    candidate_latency: float
    secondary_latency: float | None
    primary_size: int
    candidate_size: int
    primary_error: str | None
    candidate_error: str | None
    diff_count: int
    noise_count: int
    sampled: bool


@dataclass(frozen=True, slots=True)
class NoiseRow:
    endpoint: str
    field: str
    n: int
    r: int
    s: int
    p_value: float
    noise: bool
    provisional: bool
    decided_at: float
    updated: float


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    time: float                # bucket start
    exchanges: int
    diffs: int
    noise: int
    errors: int

    @property
    def diff_rate(self) -> float:
        compared = self.exchanges - self.errors
        return self.diffs / compared if compared > 0 else 0.0


@dataclass(frozen=True, slots=True)
class StoreInfo:
    url: str
    schema_version: int
    size_bytes: int            # used pages (page_count - freelist_count) * page_size
    file_bytes: int            # database file + WAL on disk
    exchanges: int
    samples: int
    extra: dict[str, Any] = field(default_factory=dict)


def with_quantiles(s: EndpointStats, primary: Sketch | None, candidate: Sketch | None
                   ) -> EndpointStats:
    """``s`` with its latency quantiles read off the window's sketches."""
    qs = (0.50, 0.95, 0.99)
    p = primary.quantiles(qs) if primary is not None else [None] * 3
    c = candidate.quantiles(qs) if candidate is not None else [None] * 3
    return dataclasses.replace(s, primary_p50=p[0], primary_p95=p[1], primary_p99=p[2],
                               candidate_p50=c[0], candidate_p95=c[1], candidate_p99=c[2])


def glob_escape(name: str) -> str:
    """An endpoint glob (fnmatch) that matches exactly ``name`` (names may hold ``*``)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Percentile ``q`` (0..100) of ascending values, linear interpolation between
    closest ranks (numpy's default); None for no values."""
    n = len(sorted_values)
    if n == 0:
        return None
    if n == 1:
        return float(sorted_values[0])
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo]) + (float(sorted_values[hi]) - float(sorted_values[lo])) * frac


@runtime_checkable
class Store(Protocol):
    """What the proxy, the checks, the reports and the admin API need of a store."""

    url: str
    readonly: bool

    # -- writes (one writer: see StoreWriter)
    def write_results(self, results: Sequence[Result]) -> int:
        """Write a batch in one transaction; → results written (duplicates ids skipped)."""
        ...

    def add_outcomes(self, rows: Sequence[OutcomeRow], instance: str | None = None) -> None:
        """Add request outcome counts (upsert by minute, endpoint, outcome, reason) of
        ``instance``'s traffic (None: the store's own instance; a fleet's comparator
        counts each sidecar's under its name). A store of one instance (SQLite)
        ignores it."""
        ...

    def save_noise(self, evidence: Sequence[Any]) -> None:
        """Upsert noise evidence (:class:`shadowproxy.compare.noise.NoiseEvidence`)."""
        ...

    def save_noise_counts(self, learner: str, rows: Sequence[NoiseCounts]) -> None:
        """Replace noise learner ``learner``'s own counts (``(endpoint, field or "", N,
        R, S)``, :meth:`shadowproxy.compare.noise.NoiseLearner.own_counts`)."""
        ...

    def noise_counts(self, exclude: str | None = None, *, run: str | None = None
                     ) -> list[NoiseCounts]:
        """The live traffic's noise learners' counts (or ``run``'s) summed per
        (endpoint, field), but ``exclude``'s (a learner reads the others')."""
        ...

    def cleanup(self, now: float, max_age: float | None, max_bytes: int | None, *,
                chunk: int = 500, max_chunks: int | None = None) -> int:
        """Delete the oldest exchanges beyond the age and size limits, in small
        transactions; → exchange rows deleted."""
        ...

    def close(self) -> None:
        ...

    # -- reads
    def endpoint_stats(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*", *, quantiles: bool = True
                       ) -> list[EndpointStats]: ...

    def latencies(self, endpoint_glob: str = "*", since: float | None = None,
                  until: float | None = None) -> tuple[list[float], list[float]]:
        """Latency pairs where both answered: all, or a uniform sample of
        :data:`~shadowproxy.store.rollup.PAIR_WINDOW` (the pairs of smallest key)."""
        ...

    def latencies_of(self, endpoints: Sequence[str] | None, since: float | None = None,
                     until: float | None = None, *, pairs: int | None = None
                     ) -> tuple[list[float], list[float]]:
        """:meth:`latencies` of exact endpoint names together (one sample of them all)."""
        ...

    def latency_triples_of(self, endpoints: Sequence[str] | None, since: float | None = None,
                           until: float | None = None, *, pairs: int | None = None
                           ) -> tuple[list[float], list[float], list[float]]:
        """:meth:`latencies_of` with each pair's secondary latency (NaN where none)."""
        ...

    def latency_sketches(self, since: float | None = None, until: float | None = None,
                         endpoint_glob: str = "*", *, secondary: bool = True
                         ) -> dict[str, tuple[Sketch, Sketch, Sketch]]:
        """endpoint → (primary, candidate, secondary) latency sketches of the window."""
        ...

    def error_pairs(self, since: float | None = None, until: float | None = None,
                    endpoint_glob: str = "*") -> dict[str, tuple[int, int, int, int]]:
        """endpoint → (exchanges, both failed, only the candidate, only the primary)."""
        ...

    def candidate_failures(self, endpoint: str, since: float | None = None,
                           until: float | None = None, limit: int = 5) -> list[str]: ...

    def difference_example(self, endpoint: str, field: str, kind: str | None = None,
                           since: float | None = None, until: float | None = None
                           ) -> str | None: ...

    def diff_sets(self, since: float | None = None, until: float | None = None,
                  endpoint_glob: str = "*") -> dict[str, dict[str, int]]:
        """endpoint → set of real fields → diff exchanges (see store.rollup)."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """Reads inside see one consistent state of the store."""
        ...

    def field_stats(self, endpoint: str | None = None, since: float | None = None,
                    until: float | None = None, limit: int | None = None
                    ) -> list[FieldStats]: ...

    def exchange(self, id: str) -> dict[str, Any] | None: ...

    def exchanges(self, endpoint: str | None = None, verdict: str | None = None,
                  since: float | None = None, until: float | None = None, limit: int = 100,
                  *, field: str | None = None, offset: int = 0) -> list[ExchangeRow]: ...

    def noise(self, endpoint: str | None = None, *, include_not_noise: bool = False
              ) -> list[NoiseRow]: ...

    def outcome_counts(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*") -> dict[str, dict[str, int]]: ...

    def secondary_endpoints(self, since: float | None = None, until: float | None = None
                            ) -> set[str]: ...

    def outcome_counts_by_endpoint(self, since: float | None = None,
                                   until: float | None = None, endpoint_glob: str = "*"
                                   ) -> dict[str, dict[str, int]]: ...

    def diff_rate_series(self, since: float | None = None, until: float | None = None,
                         bucket_seconds: int = 60, endpoint_glob: str = "*"
                         ) -> dict[str, list[SeriesPoint]]: ...

    def verdict_counts(self, since: float | None = None, until: float | None = None,
                       endpoint_glob: str = "*") -> dict[str, int]: ...

    def time_range(self) -> tuple[float, float] | None: ...

    def endpoints(self, since: float | None = None, until: float | None = None
                  ) -> list[str]: ...

    def info(self) -> StoreInfo: ...
