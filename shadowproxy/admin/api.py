"""The JSON API's handlers (``/api/v1/...``): status and outcomes, endpoints and their
fields, exchanges, noise decisions, the redacted config and the mirror switch."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from .. import __version__
from ..checks.judge import sketch_baseline
from ..checks.source import against_candidate
from ..config import Config
from ..store.base import glob_escape, with_quantiles
from ..store.sketch import Sketch
from .config_redaction import redact_config, redact_url
from .documents import _detail, _evidence_doc, _section
from .metrics import mirror_queue_depth
from .params import API, MAX_LIMIT, VERDICTS, ApiError, _int_param, _json, _ratio, parse_window
from .store_access import StoreAccess

log = logging.getLogger("shadowproxy.admin")


class ApiHandlers(StoreAccess):
    """The ``/api/v1`` routes of :class:`~shadowproxy.admin.server.AdminServer` (a base
    class: the server sets ``cfg``, ``control`` and ``started``)."""

    cfg: Config
    started: float

    # ------------------------------------------------------------ API: live state

    def _mirror_state(self) -> dict[str, Any]:
        enabled, sample = self.control.mirror_state
        has_candidate = self.cfg.upstreams.candidate is not None
        return {"enabled": bool(enabled), "sample": float(sample),
                "candidate_configured": has_candidate,
                "effective": bool(enabled) and has_candidate}

    async def status(self, request: web.Request) -> web.Response:
        c = self.control
        writer = c.writer
        ws = writer.stats() if hasattr(writer, "stats") else {}
        ups = self.cfg.upstreams
        body = {
            "version": __version__,
            "started": self.started,
            "uptime_seconds": round(time.time() - self.started, 3),
            "upstreams": {"primary": redact_url(ups.primary),
                          "candidate": redact_url(ups.candidate),
                          "secondary": redact_url(ups.secondary)},
            "mirror": self._mirror_state(),
            "requests": c.stats.final_total(),
            "outcomes": c.stats.by_outcome(),
            "queues": {"mirror": mirror_queue_depth(c),
                       "compare": c.stage.queue.qsize(),
                       "store": int(getattr(writer, "depth", 0))},
            "store": {"url": redact_url(getattr(c.store, "url", None)), **ws},
            "workers": len(c.gauges),
        }
        transport = getattr(c, "transport_info", None)
        if transport is not None:   # the fleet's stream, lag and dead letters
            body["transport"] = dict(transport)
        return _json(body)

    async def outcomes(self, request: web.Request) -> web.Response:
        stats = self.control.stats
        body: dict[str, Any] = {
            "outcomes": stats.by_outcome(), "requests": stats.final_total(),
            "mirrored": stats.total("mirrored"), "stored": self.control.writer.acknowledged}
        if "since" in request.query or "from" in request.query:
            since, until = parse_window(request.query)
            body["window"] = {"since": since, "until": until,
                              "outcomes": await self._store_read("outcome_counts",
                                                               since, until)}
        return _json(body)

    # ------------------------------------------------------------ API: endpoints

    def _live_by_endpoint(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (outcome, reason, endpoint), n in list(self.control.stats.counts.items()):
            if not endpoint:
                continue
            name = f"{outcome}{{{reason}}}" if reason else outcome
            d = out.setdefault(endpoint, {})
            d[name] = d.get(name, 0) + n
        return out

    def _latency_baseline(self, pairs: int, secondary: int) -> str:
        """What the latency checks judge the candidate against on an endpoint with
        ``pairs`` latency pairs and ``secondary`` secondary latencies in the window:
        the secondary where it answered enough (``checks.judge.choose_baseline``),
        unless every latency check of the config asks for primary."""
        latency_checks = [c for c in self.cfg.checks
                          if c.max_p50_ratio is not None or c.max_p99_ratio is not None]
        if latency_checks and all(c.latency_baseline == "primary" for c in latency_checks):
            return "primary"
        return sketch_baseline(pairs, secondary)

    def _endpoint_doc(self, st: Any, secondary: Sketch | None = None) -> dict[str, Any]:
        """``secondary``: the secondary's latency sketch of the window (the UI shows it
        beside the candidate's, and marks the side the latency checks judge against)."""
        sq = secondary.quantiles((0.5, 0.95, 0.99)) if secondary is not None and \
            secondary.count else [None, None, None]
        n_sec = secondary.count if secondary is not None else 0
        return {
            "endpoint": st.endpoint, "exchanges": st.exchanges, "matches": st.matches,
            "diffs": st.diffs, "noise": st.noise, "errors": st.errors,
            "diff_rate": st.diff_rate,   # among compared exchanges, as everywhere
            "noise_rate": _ratio(st.noise, st.exchanges),
            "error_rate": _ratio(st.errors, st.exchanges),
            "candidate_5xx": st.candidate_5xx, "primary_5xx": st.primary_5xx,
            "candidate_errors": st.candidate_errors, "primary_errors": st.primary_errors,
            "latency": {
                "samples": st.latency_samples,
                "primary": {"p50": st.primary_p50, "p95": st.primary_p95,
                            "p99": st.primary_p99},
                "candidate": {"p50": st.candidate_p50, "p95": st.candidate_p95,
                              "p99": st.candidate_p99},
                "secondary": dict(zip(("p50", "p95", "p99"), sq, strict=True))
                if n_sec else None,
                "secondary_samples": n_sec,
                "baseline": self._latency_baseline(st.latency_samples, n_sec),
            },
        }

    def _empty_endpoint(self, name: str) -> dict[str, Any]:
        none = {"p50": None, "p95": None, "p99": None}
        return {"endpoint": name, "exchanges": 0, "matches": 0, "diffs": 0, "noise": 0,
                "errors": 0, "diff_rate": 0.0, "noise_rate": 0.0, "error_rate": 0.0,
                "candidate_5xx": 0, "primary_5xx": 0, "candidate_errors": 0,
                "primary_errors": 0,
                "latency": {"samples": 0, "primary": dict(none), "candidate": dict(none),
                            "secondary": None, "secondary_samples": 0,
                            "baseline": "primary"}}

    def _endpoints_report(self, live: dict[str, dict[str, int]], since: float | None,
                          until: float | None, glob: str = "*") -> dict[str, Any]:
        """Runs in a thread: ``live`` (the counters) is snapshotted on the loop."""
        store = self._store()
        # the diffs check counts against the candidate: one diff rate everywhere
        # the quantiles from the window's sketches, read once with the secondary's
        sketches = store.latency_sketches(since, until, glob)
        none = (None, None, None)
        stats = against_candidate(store, [
            with_quantiles(st, *sketches.get(st.endpoint, none)[:2])
            for st in store.endpoint_stats(since, until, glob, quantiles=False)], since,
            until)
        fields = store.field_stats(None if glob == "*" else glob, since, until)
        now = time.time()
        lo = since if since is not None else (store.time_range() or (now, now))[0]
        hi = until if until is not None else now
        bucket = max(60, math.ceil(max(hi - lo, 60) / 30 / 60.0) * 60)
        series = store.diff_rate_series(since, until, bucket, glob)
        docs: dict[str, dict[str, Any]] = {
            st.endpoint: self._endpoint_doc(st, sketches.get(st.endpoint, none)[2])
            for st in stats}
        # the window's request accounting, from the store like the compared counts
        # beside it (the live counters cover this process's life, not the window)
        counted = store.outcome_counts_by_endpoint(since, until, glob)
        if glob == "*":
            for name in [*counted, *live]:
                docs.setdefault(name, self._empty_endpoint(name))
        top: dict[str, list[dict[str, Any]]] = {}
        for f in fields:
            if f.endpoint is None or f.noise:
                continue
            lst = top.setdefault(f.endpoint, [])
            if len(lst) < 3:
                lst.append({"field": f.field, "exchanges": f.exchanges, "count": f.count})
        for name, d in docs.items():
            d["top_fields"] = top.get(name, [])
            d["series"] = [[p.time, p.exchanges, p.diffs, p.noise, p.errors]
                           for p in series.get(name, [])]
            d["counters"] = counted.get(name, {})
            d["live_counters"] = live.get(name, {})
        ordered = sorted(docs.values(), key=lambda d: (-d["diff_rate"], -d["exchanges"],
                                                       d["endpoint"]))
        return {"window": {"since": since, "until": until, "bucket_seconds": bucket},
                "endpoints": ordered}

    async def endpoints(self, request: web.Request) -> web.Response:
        since, until = parse_window(request.query)
        return _json(await self._read(self._endpoints_report, self._live_by_endpoint(),
                                      since, until))

    async def endpoint_dispatch(self, request: web.Request) -> web.Response:
        # match on the raw path: names are percent-encoded and may contain '/'
        raw = request.raw_path.split("?", 1)[0]
        rest = raw[len(f"{API}/endpoints/"):]
        parts = rest.split("/")
        if len(parts) == 1 and parts[0]:
            return await self.endpoint(request, unquote(parts[0]))
        if len(parts) == 2 and parts[0] and parts[1] == "fields":
            return await self.fields(request, unquote(parts[0]))
        raise web.HTTPNotFound(reason="not found (percent-encode the endpoint name, "
                                      "'/' as %2F)")

    async def endpoint(self, request: web.Request, name: str) -> web.Response:
        since, until = parse_window(request.query)
        live = self._live_by_endpoint()
        report = await self._read(self._endpoints_report, live, since, until,
                                  glob_escape(name))
        eps = [e for e in report["endpoints"] if e["endpoint"] == name]
        if not eps:
            if name not in live:
                raise ApiError(f"no data for endpoint {name!r}", status=404)
            doc = self._empty_endpoint(name)
            doc.update(top_fields=[], series=[], counters={}, live_counters=live[name])
        else:
            doc = eps[0]
        return _json({"window": report["window"], **doc})

    def _fields_report(self, name: str, since: float | None, until: float | None
                       ) -> dict[str, Any]:
        store = self._store()
        glob = glob_escape(name)
        stats = store.endpoint_stats(since, until, glob)
        total = stats[0].exchanges if stats else 0
        learner = self.control.stage.learner
        live_ev = {(e.endpoint, e.field): e for e in learner.evidence(include_not_noise=True)}
        stored_ev = {(e.endpoint, e.field): e for e in
                     store.noise(glob, include_not_noise=True)}
        out = []
        for f in store.field_stats(glob, since, until):
            if f.endpoint != name:
                continue
            ev = live_ev.get((name, f.field)) or stored_ev.get((name, f.field))
            evidence = None
            if ev is not None:
                evidence = _evidence_doc(ev, "live" if (name, f.field) in live_ev else "store")
            else:
                n, r, s = learner.counts(name, f.field)
                if n:
                    evidence = {"n": n, "r": r, "s": s, "p_value": None, "noise": False,
                                "provisional": n < learner.cfg.min_samples,
                                "decided_at": None, "source": "live"}
            out.append({
                "field": f.field, "count": f.count, "exchanges": f.exchanges,
                "diff_rate": _ratio(f.exchanges, total),
                "noise_count": f.noise_count, "noise_rate": _ratio(f.noise_count, f.count),
                "kinds": f.kinds, "noise": f.noise, "example_id": f.example_id,
                "section": _section(f.field), "evidence": evidence,
            })
        out.sort(key=lambda d: (d["noise"], -d["exchanges"], d["field"]))
        return {"endpoint": name, "window": {"since": since, "until": until},
                "exchanges": total, "fields": out}

    async def fields(self, request: web.Request, name: str) -> web.Response:
        since, until = parse_window(request.query)
        return _json(await self._read(self._fields_report, name, since, until))

    # ------------------------------------------------------------ API: exchanges

    async def exchanges(self, request: web.Request) -> web.Response:
        q = request.query
        since, until = parse_window(q)
        verdict = q.get("verdict") or None
        if verdict is not None and verdict not in VERDICTS:
            raise ApiError(f"verdict: expected one of {', '.join(VERDICTS)}, got {verdict!r}")
        limit = _int_param(q, "limit", 50, 1, MAX_LIMIT)
        offset = _int_param(q, "offset", 0, 0, 10**9)
        endpoint = q.get("endpoint") or None
        field = q.get("field") or None
        rows = await self._store_read("exchanges",
                                glob_escape(endpoint) if endpoint else None, verdict,
                                since, until, limit, field=field, offset=offset)
        return _json({"exchanges": [dataclasses.asdict(r) for r in rows], "limit": limit,
                      "offset": offset, "window": {"since": since, "until": until}})

    async def exchange(self, request: web.Request) -> web.Response:
        xid = request.match_info["id"]
        doc = await self._read(self._exchange_doc, xid)
        if doc is None:
            raise ApiError(f"no exchange {xid!r} (it may have been removed by retention)",
                             status=404)
        return _json(doc)

    def _exchange_doc(self, xid: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self._store().exchange(xid)
        if doc is None:
            return None
        doc["detail"] = None
        doc["secondary_detail"] = None
        if doc.get("sampled") and self.cfg.comparator.samples_detail:
            doc["detail"] = _detail(doc.get("primary"), doc.get("candidate"))
            doc["secondary_detail"] = _detail(doc.get("primary"), doc.get("secondary"))
        return doc

    # ------------------------------------------------------------ API: noise, config

    async def noise(self, request: web.Request) -> web.Response:
        endpoint = request.query.get("endpoint") or None
        everything = request.query.get("all", "") in ("1", "true", "yes")
        glob = glob_escape(endpoint) if endpoint else None
        stored = await self._store_read("noise", glob, include_not_noise=everything)
        rows: dict[tuple[str, str], dict[str, Any]] = {
            (e.endpoint, e.field): _evidence_doc(e, "store") for e in stored}
        for e in self.control.stage.learner.evidence(include_not_noise=everything):
            if endpoint is None or e.endpoint == endpoint:
                rows[(e.endpoint, e.field)] = _evidence_doc(e, "live")
        items = [{"endpoint": k[0], "field": k[1], **v} for k, v in sorted(rows.items())]
        return _json({"noise": items, "min_samples": self.cfg.noise.min_samples,
                      "alpha": self.cfg.noise.alpha})

    async def config(self, request: web.Request) -> web.Response:
        return _json(redact_config(self.cfg))

    # ------------------------------------------------------------ API: mirror switch

    async def get_mirror(self, request: web.Request) -> web.Response:
        return _json(self._mirror_state())

    async def put_mirror(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise ApiError(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError('expected a JSON object such as {"enabled": true, "sample": 0.1}')
        unknown = set(body) - {"enabled", "sample"}
        if unknown:
            raise ApiError(f"unknown key(s) {', '.join(sorted(unknown))}; "
                             "expected enabled and/or sample")
        if not body:
            raise ApiError("give enabled and/or sample")
        enabled = body.get("enabled")
        sample = body.get("sample")
        if "enabled" in body and not isinstance(enabled, bool):
            raise ApiError(f"enabled: expected true or false, got {enabled!r}")
        if "sample" in body:
            if isinstance(sample, bool) or not isinstance(sample, (int, float)) or \
                    not math.isfinite(sample) or not 0.0 <= sample <= 1.0:
                raise ApiError(f"sample: expected a number between 0 and 1, got {sample!r}")
            sample = float(sample)
        if enabled and self.cfg.upstreams.candidate is None:
            raise ApiError("cannot enable mirroring: no upstreams.candidate is configured",
                             status=409)
        before = self._mirror_state()
        self.control.set_mirror(enabled, sample)
        after = self._mirror_state()
        log.warning("admin: mirroring switched from enabled=%s sample=%s to enabled=%s "
                    "sample=%s by %s", before["enabled"], before["sample"], after["enabled"],
                    after["sample"], request.remote)
        return _json(after)
