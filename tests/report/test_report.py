"""shadowproxy report: HTML / Markdown / JSON built from a real SQLite store written
through the StoreWriter, checked against the store's own read API."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from shadowproxy.compare.comparator import compare_responses
from shadowproxy.compare.noise import NoiseEvidence
from shadowproxy.config import RedactConfig, StoreConfig, loads
from shadowproxy.models import Exchange, RequestRecord, ResponseRecord, Result
from shadowproxy.redact import Redactor
from shadowproxy.report import build_report, render_html, render_markdown
from shadowproxy.report.data import dumps, summary
from shadowproxy.store import StoreWriter, open_store
from shadowproxy.store.base import glob_escape

# secrets planted in what the proxy saw; the redactor masks them before storage
SECRETS = ("PLANTED-BEARER-7f3k2", "PLANTED-QUERY-9x8w7", "PLANTED-PASSWORD-4q4q",
           "PLANTED-TOKEN-A-1a1a", "PLANTED-TOKEN-B-2b2b", "PLANTED-COOKIE-5c5c",
           "PLANTED-SETCOOKIE-6d6d")
STAR_EP = "/static/**"           # an endpoint key with glob characters
XSS = "<script>alert('x')</script>"


# ------------------------------------------------------------------ test data


def _resp(status: int, doc: Any = None, *, latency: float, error: str | None = None,
          headers: tuple[tuple[str, str], ...] = (), text: bytes | None = None
          ) -> ResponseRecord:
    if text is not None:
        body = text
        hdrs = (("Content-Type", "text/plain"),) + headers
    elif doc is not None:
        body = orjson.dumps(doc)
        hdrs = (("Content-Type", "application/json"),) + headers
    else:
        body, hdrs = b"", headers
    return ResponseRecord(status=status, reason="", headers=hdrs, body=body, size=len(body),
                          latency=latency, error=error)


@dataclass
class Built:
    url: str
    path: Path
    base: float
    secondary: bool


def _exchange(i: int, endpoint: str, t: float, path: str, primary: ResponseRecord,
              candidate: ResponseRecord, secondary: ResponseRecord | None = None,
              query: str = "") -> Exchange:
    req = RequestRecord("GET", path, query, (
        ("Authorization", f"Bearer {SECRETS[0]}"), ("Cookie", f"sid={SECRETS[5]}"),
        ("Accept", "application/json")), b"")
    return Exchange(id=f"{endpoint}-{i:04d}-{uuid.uuid4().hex[:6]}", started=t,
                    endpoint=endpoint, route=endpoint, request=req, primary=primary,
                    candidate=candidate, secondary=secondary)


def build_store(dir: Path, *, secondary: bool = False) -> Built:
    """A store with known content, written the way the proxy writes it:
    compare_responses → Redactor.redact_result → StoreWriter."""
    path = dir / "results.db"
    url = f"sqlite:///{path}"
    base = time.time() - 3 * 3600           # 2h40m of data, the newest 20 minutes old
    redactor = Redactor(RedactConfig(), b"k" * 32)
    writer = StoreWriter(url, StoreConfig(url=url, samples_per_field=3))
    results: list[Result] = []

    def judge(ex: Exchange, noise_fields: frozenset[str] = frozenset()) -> Result:
        diffs = compare_responses(ex.primary, ex.candidate)
        real = [d for d in diffs if d.field not in noise_fields]
        verdict = ("error" if ex.candidate.error or ex.primary.error else
                   "diff" if real else "noise" if diffs else "match")
        sdiffs = compare_responses(ex.primary, ex.secondary) if ex.secondary else []
        return Result(ex, verdict, diffs, frozenset(d.field for d in diffs
                                                    if d.field in noise_fields), sdiffs)

    # /users/{id}: 40 exchanges; 10 differ on $.name (and the token), 5 only on $.ts (noise)
    for i in range(40):
        t = base + i * 240
        user = {"id": i, "name": "Ann", "tags": ["a", "b"], "ts": 1000,
                "password": SECRETS[2], "homepage": "https://example.com/ann",
                "bio": XSS}
        cand = dict(user)
        if i < 10:
            cand["name"] = "Anne"
            cand["token"] = SECRETS[4]
            user = dict(user, token=SECRETS[3])
        elif i < 15:
            cand["ts"] = 2000
        sec = dict(user, ts=3000) if secondary else None
        p = _resp(200, user, latency=0.010 + i * 0.001,
                  headers=(("Set-Cookie", f"sid={SECRETS[6]}; Path=/"),))
        c = _resp(200, cand, latency=0.020 + i * 0.002,
                  headers=(("Set-Cookie", f"sid={SECRETS[6]}; Path=/"),))
        s = _resp(200, sec, latency=0.011) if sec is not None else None
        ex = _exchange(i, "/users/{id}", t, f"/users/{i}", p, c, s,
                       query=f"token={SECRETS[1]}&page=1")
        results.append(judge(ex, frozenset({"$.ts"})))

    # /orders: 30 exchanges, all equal but for 2 candidate timeouts and 1 candidate 503
    for i in range(30):
        t = base + 30 + i * 300
        doc = {"orders": [{"id": 1}], "n": i}
        p = _resp(200, doc, latency=0.050 + i * 0.001)
        if i < 2:
            c = ResponseRecord(status=0, latency=5.0, error="timeout")
        elif i == 2:
            c = _resp(503, {"error": "unavailable"}, latency=0.004)
        else:
            c = _resp(200, doc, latency=0.040 + i * 0.001)
        results.append(judge(_exchange(i, "/orders", t, "/orders", p, c)))

    # /static/**: 20 exchanges, text bodies; 4 differ on a header
    for i in range(20):
        t = base + 60 + i * 500
        p = _resp(200, text=b"hello\n", latency=0.002,
                  headers=(("X-Version", "1"),))
        c = _resp(200, text=b"hello\n", latency=0.003,
                  headers=(("X-Version", "2" if i < 4 else "1"),))
        results.append(judge(_exchange(i, STAR_EP, t, f"/static/{i}.txt", p, c)))

    for r in results:
        assert writer.submit(redactor.redact_result(r))
    minute = base + 600
    writer.add_outcomes([
        (minute, "/users/{id}", "compared", "", 40),
        (minute, "/orders", "compared", "", 27),
        (minute, "/orders", "candidate_timeout", "", 2),
        (minute, STAR_EP, "compared", "", 20),
        (minute, "/users/{id}", "sampled_out", "", 500),
        (minute + 60, "/users/{id}", "sampled_out", "", 25),
        (minute, "", "not_eligible", "method", 40),
        (minute, "/orders", "dropped", "queue_full", 3),
        (minute, "/orders", "candidate_error", "connect", 1),
        (minute, "/orders", "mirrored", "", 33),
    ])
    now = time.time()
    writer.save_noise([
        NoiseEvidence("/users/{id}", "$.ts", 100, 30, 28, 0.41, True, False, now - 50),
        NoiseEvidence("/users/{id}", "$.name", 100, 25, 0, 1.5e-9, False, False, now - 40),
        NoiseEvidence("/orders", "header.x-request-id", 12, 3, 2, 0.5, True, True, now - 30),
    ])
    assert writer.flush(10)
    assert writer.close(10)
    return Built(url, path, base, secondary)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_store(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def store(built: Built):
    s = open_store(built.url, readonly=True)
    yield s
    s.close()


def _cfg(url: str, secondary: bool = False) -> Any:
    doc = {"upstreams": {"primary": "http://127.0.0.1:9000",
                         "candidate": "http://127.0.0.1:9001"},
           "store": {"url": url}}
    if secondary:
        doc["upstreams"]["secondary"] = "http://127.0.0.1:9002"
    return loads(json.dumps(doc), file="<test>")


@pytest.fixture(scope="module")
def report(built: Built, store) -> dict[str, Any]:
    now = time.time()
    return build_report(store, since=now - 86400, until=now, cfg=_cfg(built.url), label="24h")


# ------------------------------------------------------------------ HTML parsing


class Cells(HTMLParser):
    """Collects data-metric elements, ids, tags and every URL-bearing attribute."""

    URL_ATTRS = frozenset({"src", "href", "action", "formaction", "poster", "data", "xlink:href",
                 "srcset", "background", "manifest", "codebase", "cite"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.metrics: dict[tuple[str, str | None], list[str]] = {}
        self.attrs_of: list[tuple[str, dict[str, str | None]]] = []
        self.ids: set[str] = set()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.style_text: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        self.attrs_of.append((tag, a))
        if tag == "style":
            self._in_style = True
        if a.get("id"):
            self.ids.add(a["id"])
        if "data-metric" in a:
            key = (a["data-metric"] or "", a.get("data-endpoint"))
            self.metrics.setdefault(key, []).append(a.get("data-value") or "")
        for k, v in attrs:
            if k in self.URL_ATTRS and v is not None:
                self.urls.append((tag, k, v))

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.style_text if self._in_style else self.text).append(data)

    def value(self, metric: str, endpoint: str | None = None) -> float | None:
        vals = self.metrics[(metric, endpoint)]
        assert len(vals) == 1, (metric, endpoint, vals)
        return None if vals[0] == "" else float(vals[0])


def parse(html: str) -> Cells:
    p = Cells()
    p.feed(html)
    p.close()
    return p


def assert_self_contained(html: str) -> None:
    cells = parse(html)
    for tag, attr, value in cells.urls:
        assert value.startswith("#"), f"<{tag} {attr}={value!r}> points outside the file"
    assert "link" not in cells.tags
    for tag, a in cells.attrs_of:
        if tag == "script":
            assert "src" not in a
        assert tag not in ("iframe", "img", "object", "embed", "link", "base")
        style = a.get("style") or ""
        assert "url(" not in style
    css = "".join(cells.style_text)
    assert "url(" not in css and "@import" not in css and "http" not in css
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", html, re.IGNORECASE)
    # raw http(s) addresses only appear escaped inside text (a stored body), never in markup
    for m in re.finditer(r"https?://", html):
        before = html[max(0, m.start() - 6):m.start()]
        assert not re.search(r"(src|href)=[\"']?$", before), before


# ------------------------------------------------------------------ tests: the data


def test_report_data_matches_the_store(report: dict[str, Any], store) -> None:
    stats = {s.endpoint: s for s in store.endpoint_stats(report["window"]["since"],
                                                          report["window"]["until"])}
    assert {e["endpoint"] for e in report["endpoints"]} == set(stats) == \
        {"/users/{id}", "/orders", STAR_EP}
    eps = {e["endpoint"]: e for e in report["endpoints"]}
    assert eps["/users/{id}"]["exchanges"] == 40
    assert eps["/users/{id}"]["diffs"] == 10
    assert eps["/users/{id}"]["noise"] == 5
    assert eps["/users/{id}"]["diff_rate"] == pytest.approx(0.25)
    assert eps["/orders"]["errors"] == 2 and eps["/orders"]["candidate_errors"] == 2
    assert eps["/orders"]["candidate_5xx"] == 1 and eps["/orders"]["diffs"] == 1
    assert eps["/orders"]["candidate_error_rate"] == pytest.approx(3 / 30)
    assert eps[STAR_EP]["diffs"] == 4
    for name, s in stats.items():
        e = eps[name]
        assert e["latency"]["p99"]["primary"] == s.primary_p99
        assert e["latency"]["p99"]["candidate"] == s.candidate_p99
        # the latency section (from latencies()) agrees with endpoint_stats
        assert report["latency"][name]["primary"]["p99"] == pytest.approx(s.primary_p99)
        assert report["latency"][name]["samples"] == s.latency_samples
    # most differences first
    assert report["endpoints"][0]["endpoint"] == "/users/{id}"
    t = report["totals"]
    assert t["exchanges"] == 90 and t["diffs"] == 15
    assert report["verdict"]["status"] == "diffs"
    assert "/users/{id}" in report["verdict"]["headline"]
    assert report["setup"]["noise_mode"] == "rules only"


def test_fields_with_redacted_examples(report: dict[str, Any]) -> None:
    users = {f["field"]: f for f in report["fields"]["/users/{id}"]}
    assert users["$.name"]["count"] == 10
    assert users["$.name"]["kinds"] == {"changed": 10}
    assert users["$.name"]["share"] == pytest.approx(10 / 40)
    ex = users["$.name"]["example"]
    assert (ex["a"], ex["b"]) == ("Ann", "Anne")
    assert '"name": "Ann"' in ex["primary"]["body"]
    assert '"name": "Anne"' in ex["candidate"]["body"]
    assert users["$.ts"]["noise"] is True
    # a secret field is shown, but only as its mask
    tok = users["$.token"]["example"]
    assert str(tok["a"]).startswith("[redacted:") or tok["a"] is None
    assert str(tok["b"]).startswith("[redacted:")
    static = report["fields"][STAR_EP]
    assert static[0]["field"] == "header.x-version" and static[0]["count"] == 4


def test_noise_outcomes_and_series(report: dict[str, Any], store) -> None:
    noise = {(n["endpoint"], n["field"]): n for n in report["noise"]}
    ts = noise[("/users/{id}", "$.ts")]
    assert (ts["n"], ts["r"], ts["s"], ts["p_value"], ts["noise"]) == (100, 30, 28, 0.41, True)
    assert noise[("/users/{id}", "$.name")]["noise"] is False
    w = report["window"]
    assert report["outcomes"] == store.outcome_counts(w["since"], w["until"])
    assert report["outcomes"]["dropped"] == {"queue_full": 3}
    assert report["outcome_totals"]["sampled_out"] == 525
    assert report["totals"]["requests"] == 40 + 27 + 2 + 20 + 525 + 40 + 3 + 1  # no mirrored
    series = report["series"]["endpoints"]
    assert sum(p["exchanges"] for p in series["/users/{id}"]) == 40
    assert sum(p["diffs"] for p in series["/users/{id}"]) == 10
    assert report["series"]["bucket_seconds"] == 900


def test_glob_characters_in_endpoint_names(store) -> None:
    assert glob_escape("/a/**?[x]") == "/a/[*][*][?][[]x]"
    p, _c = store.latencies(glob_escape(STAR_EP))
    assert len(p) == 20
    p, _c = store.latencies(glob_escape("/users/{id}"))
    assert len(p) == 40


# ------------------------------------------------------------------ tests: HTML


def test_html_numbers_match_the_store(report: dict[str, Any], store) -> None:
    html = render_html(report)
    cells = parse(html)
    w = report["window"]
    for s in store.endpoint_stats(w["since"], w["until"]):
        ep = s.endpoint
        assert cells.value("exchanges", ep) == s.exchanges
        assert cells.value("diff_rate", ep) == s.diff_rate
        assert cells.value("p99_primary", ep) == s.primary_p99
        assert cells.value("p99_candidate", ep) == s.candidate_p99
        assert cells.value("p50_candidate", ep) == s.candidate_p50
        assert cells.value("noise_rate", ep) == s.noise / s.exchanges
    assert cells.value("exchanges", "/users/{id}") == 40
    assert cells.value("diff_rate", "/users/{id}") == 0.25
    assert cells.value("total_exchanges") == 90
    assert cells.value("candidate_error_rate", "/orders") == pytest.approx(0.1)
    # outcomes: every (outcome, reason) with its count
    oc = store.outcome_counts(w["since"], w["until"])
    rows = [a for t, a in cells.attrs_of if a.get("data-metric") == "outcome_count"]
    got = {(a["data-outcome"], a["data-reason"]): int(a["data-value"]) for a in rows}
    assert got == {(o, r): n for o, d in oc.items() for r, n in d.items()}
    # noise evidence
    noise = {(a["data-endpoint"], a["data-field"], a["data-metric"]): a["data-value"]
             for t, a in cells.attrs_of
             if a.get("data-metric") in ("noise_n", "noise_r", "noise_s", "noise_p")}
    assert noise[("/users/{id}", "$.ts", "noise_n")] == "100"
    assert noise[("/users/{id}", "$.ts", "noise_r")] == "30"
    assert noise[("/users/{id}", "$.ts", "noise_s")] == "28"
    assert float(noise[("/users/{id}", "$.name", "noise_p")]) == 1.5e-9
    # sections and charts
    assert {"summary", "verdict", "checks", "endpoints", "diff-rate", "latency", "fields",
            "noise", "outcomes", "noise-mode"} <= cells.ids
    charts = [a for t, a in cells.attrs_of if a.get("data-chart") == "diff_rate"]
    assert {a["data-endpoint"] for a in charts} == {"/users/{id}", "/orders", STAR_EP}
    assert cells.tags.count("svg") == 6          # a diff-rate and a latency chart each
    assert cells.tags.count("polyline") >= 6
    verdict = next(a for t, a in cells.attrs_of if a.get("id") == "verdict")
    assert verdict["data-status"] == "diffs"
    mode = next(a for t, a in cells.attrs_of if a.get("id") == "noise-mode")
    assert mode["data-noise-mode"] == "rules only"
    assert "Noise: rules only" in html


def test_html_field_examples_side_by_side(report: dict[str, Any]) -> None:
    html = render_html(report)
    cells = parse(html)
    field = [a for t, a in cells.attrs_of if a.get("data-field") == "$.name"
             and a.get("class") == "field"]
    assert len(field) == 1 and field[0]["data-endpoint"] == "/users/{id}"
    i = html.index('<tr class="field" data-endpoint="/users/{id}" data-field="$.name"')
    card = html[i:html.index('<tr class="field"', i + 20)]
    # the field's values side by side, then the whole bodies, collapsed
    assert re.search(r'<td class="l val"><pre>&quot;Ann&quot;</pre></td>'
                     r'<td class="l val"><pre>&quot;Anne&quot;</pre></td></tr>', card)
    assert "<details id=" in card and "&quot;name&quot;: &quot;Anne&quot;" in card
    assert card.index("&quot;name&quot;: &quot;Ann&quot;") < \
        card.index("&quot;name&quot;: &quot;Anne&quot;")       # primary body, then candidate
    shares = {a.get("data-value") for t, a in cells.attrs_of
              if a.get("data-metric") == "field_share"}
    assert repr(10 / 40) in shares
    # an exchange that is the example of several fields is shown once, then linked
    users = {f["field"]: f["example"]["id"] for f in report["fields"]["/users/{id}"]}
    assert users["$.name"] == users["$.token"]
    i = html.index('<tr class="field" data-endpoint="/users/{id}" data-field="$.token"')
    token = html[i:html.index('<tr class="field"', i + 20)]
    assert "<details" not in token and 'href="#x-' in token
    anchors = {a["href"][1:] for t, a in cells.attrs_of if t == "a" and "href" in a}
    assert anchors <= cells.ids                  # every internal link has its target


def test_example_bodies_are_capped(built: Built, store, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    from shadowproxy.report import data
    monkeypatch.setattr(data, "EXAMPLES_WITH_BODIES", 1)
    now = time.time()
    r = build_report(store, since=now - 86400, until=now, cfg=_cfg(built.url))
    examples = [f["example"] for rows in r["fields"].values() for f in rows if f["example"]]
    with_bodies = {x["id"] for x in examples if not x["bodies_omitted"]}
    assert len(with_bodies) == 1
    omitted = [x for x in examples if x["bodies_omitted"]]
    assert omitted and all(x["primary"] is None and "a" in x for x in omitted)
    html = render_html(r)
    assert "bodies left out of this report" in html
    assert_self_contained(html)


def test_html_is_self_contained_and_escaped(report: dict[str, Any]) -> None:
    html = render_html(report)
    assert_self_contained(html)
    assert "<script" not in html.lower()        # the body's <script> is only text
    assert "&lt;script&gt;alert(" in html
    assert "https://example.com/ann" in html    # stored body text, escaped, not a link
    assert html.startswith("<!DOCTYPE html>")
    assert 'charset="utf-8"' in html


def test_html_with_a_secondary_says_noise_is_learned(tmp_path: Path) -> None:
    b = build_store(tmp_path, secondary=True)
    s = open_store(b.url, readonly=True)
    try:
        now = time.time()
        r = build_report(s, since=now - 86400, until=now, cfg=_cfg(b.url, secondary=True))
    finally:
        s.close()
    assert r["setup"] == {"candidate": True, "secondary": True, "noise_mode": "learned"}
    cells = parse(render_html(r))
    mode = next(a for t, a in cells.attrs_of if a.get("id") == "noise-mode")
    assert mode["data-noise-mode"] == "learned"
    ex = next(f for f in r["fields"]["/users/{id}"] if f["field"] == "$.name")["example"]
    assert ex["secondary"] is not None and '"ts": 3000' in ex["secondary"]["body"]
    # the secondary's latency beside the candidate's: the like-with-like reference
    lat = r["latency"]["/users/{id}"]
    assert lat["secondary"]["p50"] == pytest.approx(0.011, rel=1 / 128)
    assert cells.value("latency_p50_secondary", "/users/{id}") == lat["secondary"]["p50"]
    c50 = lat["candidate"]["p50"]
    assert cells.value("latency_p50_ratio_secondary", "/users/{id}") == \
        pytest.approx(c50 / lat["secondary"]["p50"])
    assert summary(r)["latency"]["/users/{id}"]["secondary"] == lat["secondary"]


def _judged_cells(cells: Any, endpoint: str, q: str) -> dict[str, str]:
    """The latency card's ratio cells of ``q`` → their data-judged mark."""
    out = {}
    for _t, a in cells.attrs_of:
        if a.get("data-endpoint") == endpoint and a.get("data-metric") in (
                f"latency_{q}_ratio", f"latency_{q}_ratio_secondary"):
            out[a["data-metric"]] = a.get("data-judged")
    return out


@pytest.mark.parametrize("baseline", [None, "secondary", "primary"])
def test_the_ratio_the_latency_check_judges_is_the_one_marked(
        tmp_path: Path, baseline: str | None) -> None:
    """The report marks, per endpoint and quantile, the ratio the latency checks judge:
    candidate ÷ secondary where there is one (the checks' default, and the report's
    rule without checks), candidate ÷ primary with ``latency_baseline: primary``."""
    b = build_store(tmp_path, secondary=True)
    cfg = _cfg(b.url, secondary=True)
    if baseline is not None:
        doc = {"upstreams": {"primary": "http://127.0.0.1:9000",
                             "candidate": "http://127.0.0.1:9001",
                             "secondary": "http://127.0.0.1:9002"},
               "store": {"url": b.url},
               "checks": [{"name": "speed", "endpoints": "/users/*", "min_samples": 5,
                           "max_p50_ratio": 100.0, "max_p99_ratio": 100.0,
                           "latency_baseline": baseline}]}
        cfg = loads(json.dumps(doc), file="<test>")
    s = open_store(b.url, readonly=True)
    try:
        now = time.time()
        r = build_report(s, since=now - 86400, until=now, cfg=cfg)
    finally:
        s.close()
    want = baseline or "secondary"
    ep = "/users/{id}"
    lat = r["latency"][ep]
    assert lat["baseline"]["p50"] == lat["baseline"]["p99"] == want
    row = next(e for e in r["endpoints"] if e["endpoint"] == ep)["latency"]["p50"]
    assert row["baseline"] == want
    assert row["judged_ratio"] == (row["ratio_secondary"] if want == "secondary"
                                   else row["ratio"])
    assert row["ratio_secondary"] == pytest.approx(row["candidate"] / row["secondary"])
    if baseline is not None:            # the check judged against the same baseline
        units = [u for c in r["checks"]["checks"] for sub in c["subchecks"]
                 for u in sub["endpoints"]]
        assert units and all(u["details"]["baseline"] == want for u in units)
    cells = parse(render_html(r))
    for q in ("p50", "p99"):
        marks = _judged_cells(cells, ep, q)
        assert marks == ({"latency_" + q + "_ratio": "no",
                          "latency_" + q + "_ratio_secondary": "yes"} if want == "secondary"
                         else {"latency_" + q + "_ratio": "yes",
                               "latency_" + q + "_ratio_secondary": "no"}), marks
    ratio_cell = next(a for _t, a in cells.attrs_of if a.get("data-metric") == "p50_ratio"
                      and a.get("data-endpoint") == ep)
    assert ratio_cell["data-baseline"] == want
    assert float(ratio_cell["data-value"]) == pytest.approx(row["judged_ratio"])
    # an endpoint without a secondary: primary, marked so
    orders = r["latency"]["/orders"]
    assert orders["secondary"] is None and orders["baseline"]["p50"] == "primary"


def test_without_a_secondary_the_latency_has_no_secondary_column(report: dict[str, Any]) -> None:
    assert report["latency"] and all(v["secondary"] is None for v in report["latency"].values())
    assert "latency_p50_secondary" not in render_html(report)


def test_empty_store_renders_every_format(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    w = StoreWriter(url, StoreConfig(url=url))
    w.close()
    s = open_store(url, readonly=True)
    try:
        now = time.time()
        r = build_report(s, since=now - 3600, until=now, cfg=_cfg(url))
    finally:
        s.close()
    assert r["verdict"]["status"] == "no_data"
    assert r["endpoints"] == [] and r["totals"]["exchanges"] == 0
    html = render_html(r)
    assert_self_contained(html)
    assert parse(html).value("total_exchanges") == 0
    assert "no exchanges" in render_markdown(r)
    assert json.loads(dumps(r))["schema"] == "shadowproxy.report/1"


# ------------------------------------------------------------------ tests: Markdown, JSON


def test_markdown_is_compact_with_verdict_table_fields_and_drops(report: dict[str, Any]
                                                                 ) -> None:
    md = render_markdown(report)
    lines = md.splitlines()
    assert len(lines) <= 60
    assert lines[0].startswith("### ❌ shadowproxy: 3 of 3 endpoints with differences")
    assert "| endpoint | exchanges | diff |" in md
    assert "|:--|--:|" in md
    row = next(line for line in lines if line.startswith("| `/users/{id}`"))
    assert "| 40 |" in row and "**25.00%**" in row
    assert any("`/static/**`" in line and "| 20 |" in line for line in lines)
    assert "`$.name`: 10 (changed 10) in 25.00% of exchanges" in md
    assert '`"Ann"` → `"Anne"`' in md
    assert "$.ts" not in md.split("**Top differing fields**")[1].split("\n\n")[0]
    assert "dropped (queue_full) 3" in md and "sampled_out 525" in md
    assert "noise: rules only" in md


def test_markdown_stays_short_with_many_endpoints() -> None:
    eps = [{"endpoint": f"/e{i}", "exchanges": 10, "diffs": 1, "noise": 0, "errors": 0,
            "diff_rate": 0.1, "noise_rate": 0.0, "error_rate": 0.0,
            "candidate_error_rate": 0.0, "primary_error_rate": 0.0,
            "latency": {q: {"primary": 0.01, "candidate": 0.02, "ratio": 2.0}
                        for q in ("p50", "p95", "p99")}} for i in range(200)]
    fields = {f"/e{i}": [{"field": f"$.f{j}", "count": 3, "exchanges": 3, "share": 0.3,
                          "kinds": {"changed": 3}, "noise": False, "example": None}
                         for j in range(10)] for i in range(200)}
    r = {"verdict": {"status": "diffs", "headline": "200 of 200 endpoints"},
         "totals": {"exchanges": 2000, "endpoints": 200, "diff_rate": 0.1, "error_rate": 0,
                    "requests": 3000},
         "window": {"since": 0.0, "until": 86400.0, "seconds": 86400.0, "label": "24h"},
         "setup": {"secondary": False}, "checks": None, "endpoints": eps, "fields": fields,
         "noise": [], "outcomes": {"dropped": {f"r{i}": i for i in range(40)}}}
    md = render_markdown(r)
    assert len(md.splitlines()) <= 60
    assert "… and 185 more endpoints" in md


def test_markdown_cannot_be_broken_by_names() -> None:
    from shadowproxy.report.markdown import _code
    assert _code("a`b|c\nd") == "`a\u02cbb\\|c d`"


def test_json_round_trips_and_matches_the_store(report: dict[str, Any], store) -> None:
    text = dumps(report)
    back = json.loads(text)
    assert back == json.loads(orjson.dumps(report))
    assert set(back) >= {"window", "endpoints", "fields", "noise", "outcomes", "series",
                         "latency", "checks", "totals", "verdict"}
    w = back["window"]
    stats = {s.endpoint: s for s in store.endpoint_stats(w["since"], w["until"])}
    for e in back["endpoints"]:
        s = stats[e["endpoint"]]
        assert e["exchanges"] == s.exchanges
        assert e["diffs"] == s.diffs
        assert e["latency"]["p99"]["primary"] == s.primary_p99
        assert e["latency"]["p99"]["candidate"] == s.candidate_p99
    assert back["outcomes"] == store.outcome_counts(w["since"], w["until"])
    assert back["noise"][0]["field"] in ("$.ts", "header.x-request-id")
    small = json.loads(orjson.dumps(summary(report)))
    assert "series" not in small and "body" not in orjson.dumps(small).decode()
    assert small["endpoints"] == back["endpoints"]


# ------------------------------------------------------------------ tests: secrets


def test_planted_secrets_appear_in_no_output(report: dict[str, Any], built: Built) -> None:
    raw = built.path.read_bytes()
    for s in SECRETS:                     # the store never had them ...
        assert s.encode() not in raw
    outputs = {"html": render_html(report), "md": render_markdown(report),
               "json": dumps(report).decode(),
               "webhook": orjson.dumps({"text": render_markdown(report),
                                        "report": summary(report)}).decode()}
    for name, text in outputs.items():   # ... and no output shows them
        for s in SECRETS:
            assert s not in text, (name, s)
    # what was there is visible as masks
    assert "[redacted:" in outputs["html"] and "Bearer [redacted:" in outputs["html"]


# ------------------------------------------------------------------ tests: checks hook


def test_checks_hook_uses_a_given_verdict(built: Built, store) -> None:
    now = time.time()
    checks = {"verdict": "fail", "exit_code": 1,
              "counts": {"pass": 1, "fail": 1, "inconclusive": 0}, "checks": [
                  {"name": "diff-rate", "verdict": "fail", "critical": True, "subchecks": [
                      {"metric": "max_diff_rate", "threshold": 0.01, "verdict": "fail",
                       "summary": "diff rate 25% > 1%", "method": "Clopper-Pearson",
                       "endpoints": [{"endpoint": "/users/{id}", "verdict": "fail",
                                      "reason": "25% of 40"}]}]},
                  {"name": "latency", "verdict": "pass", "subchecks": []}]}
    r = build_report(store, since=now - 86400, until=now, cfg=_cfg(built.url), checks=checks)
    assert r["verdict"] == {"status": "fail", "headline": "checks failed: diff-rate",
                            "source": "checks"}
    html = render_html(r)
    cells = parse(html)
    rows = {a["data-check"]: a["data-status"] for t, a in cells.attrs_of
            if "data-check" in a}
    assert rows == {"diff-rate": "fail", "latency": "pass"}
    sub = next(a for t, a in cells.attrs_of if a.get("data-subcheck") == "max_diff_rate")
    assert sub["data-parent"] == "diff-rate" and sub["data-status"] == "fail"
    assert "1.00%" in html and "25% of 40" in html
    md = render_markdown(r)
    assert "- ❌ `diff-rate` fail — max_diff_rate: diff rate 25% > 1%" in md
    assert "- ✅ `latency` pass" in md
    r2 = build_report(store, since=now - 86400, until=now, cfg=_cfg(built.url), checks=None)
    assert r2["checks"] is None and r2["verdict"]["source"] == "summary"
    assert parse(render_html(r2)).ids >= {"checks"}
    r3 = build_report(store, since=now - 86400, until=now, cfg=_cfg(built.url),
                      checks={"verdict": "error", "error": "boom", "checks": []})
    assert r3["verdict"]["source"] == "summary"
    assert "could not be evaluated: boom" in render_html(r3)
    assert "could not be evaluated: boom" in render_markdown(r3)


def test_configured_checks_are_evaluated_like_shadowproxy_check(built: Built, store) -> None:
    checks_mod = pytest.importorskip("shadowproxy.checks")
    cfg = loads(json.dumps({
        "upstreams": {"primary": "http://127.0.0.1:9000"}, "store": {"url": built.url},
        "checks": [{"name": "diff-rate", "max_diff_rate": 0.01, "min_samples": 10},
                   {"name": "static-latency", "endpoints": "/static/*",
                    "max_p50_ratio": 100.0, "min_samples": 5}]}), file="<test>")
    now = time.time()
    r = build_report(store, since=now - 86400, until=now, cfg=cfg)
    expected = checks_mod.evaluate(cfg.checks,
                                   checks_mod.StoreSource(store, now - 86400, now))
    assert r["checks"]["verdict"] == expected.verdict == "fail"
    assert [(c["name"], c["verdict"]) for c in r["checks"]["checks"]] == \
        [(c.name, c.verdict) for c in expected.checks]
    assert r["verdict"]["source"] == "checks" and r["verdict"]["status"] == "fail"
    assert "diff-rate" in r["verdict"]["headline"]
    html = render_html(r)
    assert_self_contained(html)
    cells = parse(html)
    assert next(a for t, a in cells.attrs_of if a.get("id") == "checks")["data-status"] == \
        "fail"
    md = render_markdown(r)
    assert "**Checks: fail**" in md and "- ❌ `diff-rate` fail" in md
    json.loads(dumps(r))                         # JSON-clean (no NaN)


def test_checks_auto_without_configured_checks_is_none(built: Built, store) -> None:
    now = time.time()
    r = build_report(store, since=now - 86400, until=now, cfg=_cfg(built.url))
    assert r["checks"] is None
    r = build_report(store, since=now - 86400, until=now,
                     cfg=SimpleNamespace(checks=(), upstreams=None))
    assert r["checks"] is None
