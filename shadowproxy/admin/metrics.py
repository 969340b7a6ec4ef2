"""Prometheus metrics of the control process (served by the admin server at ``/metrics``).

Everything is computed from what the control process already has, so ``/metrics`` on
one admin listener gives the totals of every worker:

* counters from :attr:`Control.stats` (the merged outcome counters of all workers):
  ``shadowproxy_requests_total{endpoint,outcome,reason}`` (final outcomes only, so
  their sum is the number of requests), ``shadowproxy_mirrored_total{endpoint}``,
  ``shadowproxy_dropped_total{reason}``, ``shadowproxy_primary_errors_total{kind}``;
* from every judged result, through a listener on ``control.stage.listeners``
  (:class:`ResultObserver`; it keeps numbers only, never values from a response):
  ``shadowproxy_verdicts_total{endpoint,verdict}`` and the
  ``shadowproxy_upstream_latency_seconds{upstream,endpoint}`` histogram of complete
  responses (``upstream`` ∈ primary, candidate, secondary; a failed or timed-out
  upstream is not observed: its failure is counted in the outcomes);
* gauges read at scrape time: ``shadowproxy_mirror_queue_depth``,
  ``shadowproxy_compare_queue_depth``, ``shadowproxy_store_write_lag_seconds``,
  ``shadowproxy_store_queue_depth``, ``shadowproxy_mirror_enabled``,
  ``shadowproxy_mirror_sample_ratio``; and ``shadowproxy_store_results_total{status}``
  (written, failed, rejected) from the store writer, ``shadowproxy_store_down`` and
  ``shadowproxy_store_retries_total`` (a store that cannot be reached).

Label values are bounded: endpoints are the router's bounded keys (a cap plus the
``(other)`` overflow), verdicts, outcomes, reasons and kinds are fixed sets.

The registry is private to each :class:`Metrics` (no global state), so several
control stages can live in one process (tests).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from ..stats import FINAL

if TYPE_CHECKING:
    from ..control.stages import Control
    from ..models import Result

__all__ = ["LATENCY_BUCKETS", "Metrics", "ResultObserver"]

# seconds; upper bounds of the latency histogram (+Inf is implied)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
                   1.0, 2.5, 5.0, 10.0, 30.0)
_BUCKET_LABELS = tuple(repr(b) for b in LATENCY_BUCKETS) + ("+Inf",)
UPSTREAMS = ("primary", "candidate", "secondary")


class _Histogram:
    """One histogram series: per-bucket counts (non-cumulative), sum and count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bucket "le" semantics: value <= bound
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for label, n in zip(_BUCKET_LABELS, self.counts, strict=True):
            acc += n
            out.append((label, float(acc)))
        return out


class ResultObserver:
    """A ``CompareStage`` listener: verdict counts and upstream latencies.

    Called on the comparator's loop for every judged result; it is plain dict and
    list arithmetic (no locks: the scrape runs on the same loop)."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, str], int] = {}
        self.latency: dict[tuple[str, str], _Histogram] = {}

    def __call__(self, result: Result) -> None:
        ex = result.exchange
        endpoint = ex.endpoint
        key = (endpoint, result.verdict)
        self.verdicts[key] = self.verdicts.get(key, 0) + 1
        for upstream, r in (("primary", ex.primary), ("candidate", ex.candidate),
                            ("secondary", ex.secondary)):
            if r is None or r.error is not None or r.status <= 0:
                continue
            h = self.latency.get((upstream, endpoint))
            if h is None:
                h = self.latency[(upstream, endpoint)] = _Histogram()
            h.observe(r.latency)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        return self.m.collect()


class Metrics:
    """The control process's metrics; attach with :meth:`attach`, expose with
    :meth:`render`."""

    def __init__(self, control: Control) -> None:
        self.control = control
        self.observer = ResultObserver()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._attached = False

    def attach(self) -> None:
        """Start observing judged results (idempotent)."""
        if not self._attached:
            self.control.stage.listeners.append(self.observer)
            self._attached = True

    def detach(self) -> None:
        if self._attached:
            try:
                self.control.stage.listeners.remove(self.observer)
            except ValueError:
                pass
            self._attached = False

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """→ (body, content type) in the format the ``Accept`` header asks for
        (Prometheus text by default, OpenMetrics when asked)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # ------------------------------------------------------------ collection

    def collect(self) -> Iterator[Metric]:
        control = self.control
        req = CounterMetricFamily(
            "shadowproxy_requests", "Requests by final shadow outcome (they add up to all "
            "requests)", labels=["endpoint", "outcome", "reason"])
        mirrored = CounterMetricFamily(
            "shadowproxy_mirrored", "Requests accepted by the mirror queue",
            labels=["endpoint"])
        dropped = CounterMetricFamily(
            "shadowproxy_dropped", "Shadows dropped, by reason", labels=["reason"])
        perr = CounterMetricFamily(
            "shadowproxy_primary_errors", "Primary failures (answered 502/504 or cut short)",
            labels=["kind"])
        recorded = CounterMetricFamily(
            "shadowproxy_recorded", "Exchanges written to recordings (record:)")
        rdropped = CounterMetricFamily(
            "shadowproxy_record_dropped", "Exchanges sampled for recording and not written, "
            "by reason", labels=["reason"])
        drops: dict[str, int] = {}
        rdrops: dict[str, int] = {}
        nrec = 0
        for (outcome, reason, endpoint), n in sorted(control.stats.counts.items()):
            if outcome == "mirrored":
                mirrored.add_metric([endpoint], n)
            elif outcome == "recorded":
                nrec += n
            elif outcome == "record_dropped":
                rdrops[reason] = rdrops.get(reason, 0) + n
            elif outcome == "primary_error":
                perr.add_metric([reason], n)
            elif outcome in FINAL:
                req.add_metric([endpoint, outcome, reason], n)
                if outcome == "dropped":
                    drops[reason] = drops.get(reason, 0) + n
        for reason, n in sorted(drops.items()):
            dropped.add_metric([reason], n)
        yield req
        yield mirrored
        yield dropped
        yield perr
        if nrec or rdrops:
            recorded.add_metric([], nrec)
            for reason, n in sorted(rdrops.items()):
                rdropped.add_metric([reason], n)
            yield recorded
            yield rdropped

        obs = self.observer
        verdicts = CounterMetricFamily(
            "shadowproxy_verdicts", "Judged exchanges by verdict (match, diff, noise, error)",
            labels=["endpoint", "verdict"])
        for (endpoint, verdict), n in sorted(obs.verdicts.items()):
            verdicts.add_metric([endpoint, verdict], n)
        yield verdicts
        lat = HistogramMetricFamily(
            "shadowproxy_upstream_latency_seconds",
            "Latency of complete upstream responses of mirrored requests, from dispatch to "
            "the last body byte", labels=["upstream", "endpoint"])
        for (upstream, endpoint), h in sorted(obs.latency.items()):
            lat.add_metric([upstream, endpoint], h.cumulative(), h.sum)
        yield lat

        yield _gauge("shadowproxy_mirror_queue_depth",
                     "Shadows waiting in the mirror queues of all shadow processes",
                     mirror_queue_depth(control))
        skew = GaugeMetricFamily(
            "shadowproxy_shadow_send_skew_seconds",
            "From a mirrored request's arrival at a worker to its shadow's send by a shadow "
            "process, over the shadows of the last half second (worst shadow process)",
            labels=["quantile"])
        for q, key in (("0.5", "shadow_skew_p50"), ("0.99", "shadow_skew_p99"),
                       ("1", "shadow_skew_max")):
            values = [g[key] for g in getattr(control, "shadow_gauges", {}).values() if key in g]
            if values:
                skew.add_metric([q], max(values))
        if skew.samples:
            yield skew
        yield _gauge("shadowproxy_compare_queue_depth",
                     "Exchanges waiting for the comparator", control.stage.queue.qsize())
        writer = control.writer
        yield _gauge("shadowproxy_store_write_lag_seconds",
                     "Age of the oldest result not yet committed by the store writer",
                     float(getattr(writer, "lag", 0.0)))
        yield _gauge("shadowproxy_store_queue_depth",
                     "Results waiting for the store writer", float(getattr(writer, "depth", 0)))
        results = CounterMetricFamily(
            "shadowproxy_store_results", "Results handed to the store writer, by what became "
            "of them (written, failed: the store failed, rejected: its queue was full)",
            labels=["status"])
        for status, attr in (("written", "acknowledged"), ("failed", "failed"),
                             ("rejected", "rejected")):
            results.add_metric([status], float(getattr(writer, attr, 0)))
        yield results
        yield _gauge("shadowproxy_store_down",
                     "1 while the store cannot be reached (the writer holds its batch and "
                     "retries; what does not fit is counted store_dropped{store_down})",
                     1.0 if getattr(writer, "down", None) is not None else 0.0)
        retries = CounterMetricFamily(
            "shadowproxy_store_retries", "Batches written again after the store was down")
        retries.add_metric([], float(getattr(writer, "retries", 0)))
        yield retries
        yield from _transport_gauges(getattr(control, "transport_info", None))
        enabled, sample = control.mirror_state
        yield _gauge("shadowproxy_mirror_enabled",
                     "1 when mirroring is switched on (config or PUT /api/v1/mirror)",
                     1.0 if enabled else 0.0)
        yield _gauge("shadowproxy_mirror_sample_ratio",
                     "The global mirror sample rate (0..1)", float(sample))


_TRANSPORT_GAUGES = (
    ("lag", "shadowproxy_transport_lag", "Stream entries not yet delivered to a comparator "
     "(the fleet's comparators scale on it)"),
    ("pending", "shadowproxy_transport_pending",
     "Stream entries delivered to a comparator and not yet acknowledged"),
    ("length", "shadowproxy_transport_length", "Entries the stream holds"),
    ("dead_letters", "shadowproxy_transport_dead_letters",
     "Entries in the dead-letter stream (refused, or failed transport.max_deliveries times)"),
    ("consumers", "shadowproxy_transport_consumers", "Comparators in the consumer group"),
)


def _transport_gauges(info: Any) -> Iterator[Metric]:
    """The fleet's stream (a sidecar with a transport.url reads it every second)."""
    if info is None:
        return
    yield _gauge("shadowproxy_transport_up", "1 while Redis answers the sidecar",
                 1.0 if info.get("up") else 0.0)
    for key, name, doc in _TRANSPORT_GAUGES:
        if key in info:
            yield _gauge(name, doc, float(info[key]))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], float(value))
    return g


def mirror_queue_depth(control: Any) -> float:
    """Queued shadows: the workers' last reports plus in-process mirrors."""
    total = sum(g.get("mirror_queue_depth", 0) for g in control.gauges.values())
    total += sum(g.get("mirror_queue_depth", 0)
                 for g in getattr(control, "shadow_gauges", {}).values())
    total += sum(getattr(m, "depth", 0) for m in getattr(control, "local_mirrors", ()))
    return float(total)
