"""``shadowproxy check`` against real SQLite stores written through the real StoreWriter,
directly (:func:`shadowproxy.checks.run`) and through the CLI (exit codes, JSON, JUnit)."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadowproxy.checks import FAIL, INCONCLUSIVE, PASS, glob_escape, run
from shadowproxy.cli import main as cli_main
from shadowproxy.compare.noise import NoiseEvidence
from shadowproxy.config import StoreConfig, load
from shadowproxy.models import (
    Difference,
    Exchange,
    RequestRecord,
    ResponseRecord,
    Result,
)
from shadowproxy.store import StoreWriter, open_store

NOW = time.time()
USERS = "GET /api/users/{id}"
ITEMS = "GET /api/items"
_ids = itertools.count(1)


# ------------------------------------------------------------------ building stores


def resp(status: int = 200, latency: float = 0.05, error: str | None = None,
         body: bytes = b'{"id": 1}') -> ResponseRecord:
    return ResponseRecord(status=status, reason="", headers=(("Content-Type",
                                                              "application/json"),),
                          body=body, size=len(body), sha256=hashlib.sha256(body).hexdigest(),
                          latency=latency, error=error)


def res(endpoint: str = USERS, verdict: str = "match", *, ago: float = 60.0,
        primary: ResponseRecord | None = None, candidate: ResponseRecord | None = None,
        diffs: list[Difference] | None = None, noise: frozenset[str] = frozenset(),
        id: str | None = None) -> Result:
    ex = Exchange(id=id or f"x{next(_ids):07d}", started=NOW - ago, endpoint=endpoint,
                  route=None, request=RequestRecord("GET", "/api/users/1", "", (), b""),
                  primary=primary or resp(), candidate=candidate or resp())
    return Result(ex, verdict, list(diffs or []), noise, [])  # type: ignore[arg-type]


def changed(path: str, kind: str = "changed") -> Difference:
    return Difference("body", path, kind, 1, 2)  # type: ignore[arg-type]


def write(path: Path, results: list[Result], noise: list[NoiseEvidence] = ()) -> str:
    url = f"sqlite:///{path}"
    w = StoreWriter(url, StoreConfig(url=url))
    for r in results:
        assert w.submit(r)
    if noise:
        w.save_noise(list(noise))
    assert w.flush(30)
    assert w.close(30)
    assert w.acknowledged == len(results) and w.failed == 0
    return url


def matches(n: int, endpoint: str = USERS, *, lat: tuple[float, float] = (0.05, 0.05),
            seed: int = 1, ago: float = 60.0) -> list[Result]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        p = lat[0] * rnd.uniform(0.8, 1.2)
        c = lat[1] * rnd.uniform(0.8, 1.2)
        out.append(res(endpoint, primary=resp(latency=p), candidate=resp(latency=c),
                       ago=ago + i * 0.01))
    return out


def diffs(n: int, endpoint: str = USERS, path: str = "$.price", kind: str = "changed",
          noise: bool = False) -> list[Result]:
    return [res(endpoint, "noise" if noise else "diff", diffs=[changed(path, kind)],
                noise=frozenset({path}) if noise else frozenset(), ago=30.0 + i * 0.01)
            for i in range(n)]


def config(tmp_path: Path, url: str, checks: list[dict[str, Any]]) -> Path:
    path = tmp_path / "shadowproxy.yaml"
    path.write_text(yaml.safe_dump({
        "upstreams": {"primary": "http://127.0.0.1:9000",
                      "candidate": "http://127.0.0.1:9001"},
        "store": {"url": url},
        "checks": checks,
    }))
    return path


def evaluate_store(tmp_path: Path, results: list[Result], checks: list[dict[str, Any]],
                   noise: list[NoiseEvidence] = (), **kw: Any):
    url = write(tmp_path / "results.db", results, noise)
    cfg = load(config(tmp_path, url, checks))
    return run(cfg, since=None, until=NOW + 1, **kw)


def only_sub(report):
    (check,) = report.checks
    (sub,) = check.subchecks
    return check, sub


# ------------------------------------------------------------------ max_diff_rate


def test_diff_rate_pass(tmp_path):
    report = evaluate_store(tmp_path, matches(1000),
                            [{"name": "diffs", "max_diff_rate": 0.01}])
    check, sub = only_sub(report)
    assert report.verdict == PASS and check.verdict == PASS and sub.verdict == PASS
    agg = sub.aggregate
    assert agg.samples == 1000 and agg.value == 0.0 and agg.lo == 0.0
    assert 0 < agg.hi < 0.01
    assert [u.endpoint for u in sub.endpoints] == [USERS]
    assert "below the threshold" in agg.reason


def test_diff_rate_fail_names_fields_and_an_example(tmp_path):
    report = evaluate_store(tmp_path, matches(900) + diffs(100, path="$.user.email"),
                            [{"name": "diffs", "max_diff_rate": 0.01}])
    _check, sub = only_sub(report)
    assert report.verdict == FAIL and report.exit_code == 1
    agg = sub.aggregate
    assert agg.verdict == FAIL and agg.value == pytest.approx(0.1)
    assert agg.lo > 0.01 and agg.lo < 0.1 < agg.hi
    ep = sub.endpoints[0]
    assert ep.verdict == FAIL
    (field,) = ep.details["fields"]
    assert field["field"] == "$.user.email" and field["kinds"] == {"changed": 100}
    assert field["example_id"] and "$.user.email" in ep.reason
    assert field["example_id"] in ep.reason
    assert agg.details["endpoints"][0]["endpoint"] == USERS


def test_diff_rate_inconclusive_below_min_samples_even_with_no_diffs(tmp_path):
    report = evaluate_store(tmp_path, matches(60),
                            [{"name": "diffs", "max_diff_rate": 0.2, "min_samples": 100}])
    _check, sub = only_sub(report)
    assert report.verdict == INCONCLUSIVE and report.exit_code == 3
    assert sub.aggregate.hi < 0.2           # the interval alone would pass...
    assert "fewer than min_samples 100" in sub.aggregate.reason   # ...but too few samples


def test_diff_rate_straddling_is_inconclusive_even_when_critical(tmp_path):
    """An undecided always-valid interval is inconclusive: doubt is no longer a failure
    for a critical check (a gate polled until it decides would fail every healthy
    candidate still gathering data)."""
    results = matches(297) + diffs(3)
    plain = evaluate_store(tmp_path, results, [{"name": "diffs", "max_diff_rate": 0.01}])
    _c, sub = only_sub(plain)
    assert sub.verdict == INCONCLUSIVE
    assert sub.aggregate.lo < 0.01 < sub.aggregate.hi
    url = f"sqlite:///{tmp_path / 'results.db'}"
    cfg = load(config(tmp_path, url, [{"name": "diffs", "max_diff_rate": 0.01,
                                       "critical": True}]))
    critical = run(cfg, since=None, until=NOW + 1)
    _c, sub = only_sub(critical)
    assert sub.verdict == INCONCLUSIVE and critical.exit_code == 3
    assert "more samples needed" in sub.aggregate.reason


def test_diff_rate_one_bad_endpoint_fails_the_check_while_the_aggregate_passes(tmp_path):
    results = matches(5000, ITEMS) + matches(150, USERS) + diffs(50, USERS, "$.name")
    report = evaluate_store(tmp_path, results, [{"name": "diffs", "max_diff_rate": 0.02}])
    _c, sub = only_sub(report)
    assert sub.aggregate.verdict != FAIL          # 50 / 5200 < 2 % overall
    by_ep = {u.endpoint: u for u in sub.endpoints}
    assert by_ep[USERS].verdict == FAIL and by_ep[ITEMS].verdict == PASS
    assert sub.verdict == FAIL and report.verdict == FAIL
    assert USERS in sub.summary


def test_diff_rate_forgives_diffs_on_fields_since_learned_as_noise(tmp_path):
    """30 exchanges were judged diff on $.ts before the learner had seen enough; the
    noise table now says $.ts is noise: they are forgiven. $.price stays a diff."""
    results = (matches(1000) + diffs(30, path="$.ts")
               + [res(USERS, "diff", diffs=[changed("$.ts"), changed("$.price")], ago=20)])
    ev = [NoiseEvidence(USERS, "$.ts", 1031, 1031, 1000, 0.9, True, False, NOW)]
    report = evaluate_store(tmp_path, results, [{"name": "diffs", "max_diff_rate": 0.01}],
                            noise=ev)
    _c, sub = only_sub(report)
    agg = sub.aggregate
    assert agg.details["forgiven"] == 30 and agg.details["diffs"] == 1
    assert agg.samples == 1031 and sub.verdict == PASS
    assert "30 more on fields learned as noise since" in agg.reason


def test_diff_rate_counts_only_compared_exchanges(tmp_path):
    errors = [res(USERS, "error", candidate=resp(0, 5.0, "timeout", b"")) for _ in range(50)]
    report = evaluate_store(tmp_path, matches(500) + errors,
                            [{"name": "diffs", "max_diff_rate": 0.01}])
    _c, sub = only_sub(report)
    assert sub.aggregate.samples == 500
    assert sub.aggregate.details == {"diffs": 0, "compared": 500, "exchanges": 550,
                                     "forgiven": 0, "uncertain": 0}


# ------------------------------------------------------------------ max_error_rate_increase


def test_error_rate_pass(tmp_path):
    report = evaluate_store(tmp_path, matches(2000),
                            [{"name": "errors", "max_error_rate_increase": 0.01}])
    _c, sub = only_sub(report)
    assert sub.verdict == PASS
    assert sub.aggregate.lo < 0 < sub.aggregate.hi < 0.01


def test_error_rate_fail_with_examples(tmp_path):
    bad = [res(USERS, "diff", diffs=[Difference("status", "status", "changed", 200, 503)],
               candidate=resp(503)) for _ in range(80)]
    gone = [res(USERS, "error", candidate=resp(0, 5.0, "connect", b"")) for _ in range(20)]
    both = [res(USERS, "match", primary=resp(500), candidate=resp(500)) for _ in range(10)]
    report = evaluate_store(tmp_path, matches(890) + bad + gone + both,
                            [{"name": "errors", "max_error_rate_increase": 0.01}])
    _c, sub = only_sub(report)
    agg = sub.aggregate
    assert sub.verdict == FAIL and agg.lo > 0.01
    d = agg.details
    assert (d["exchanges"], d["candidate_only"], d["primary_only"], d["both_failed"]) == \
        (1000, 100, 0, 10)
    assert agg.value == pytest.approx(0.1)
    assert d["candidate_error_rate"] == pytest.approx(0.11)
    assert d["primary_error_rate"] == pytest.approx(0.01)
    assert d["mcnemar_exact_p"] < 1e-20
    assert len(d["examples"]) == 3 and d["examples"][0] in agg.reason


def test_error_rate_sparse_errors_are_not_a_pass(tmp_path):
    """150 exchanges, 2 candidate transport errors, none on the primary."""
    gone = [res(USERS, "error", candidate=resp(0, 5.0, "reset", b"")) for _ in range(2)]
    report = evaluate_store(tmp_path, matches(148) + gone,
                            [{"name": "errors", "max_error_rate_increase": 0.01}])
    _c, sub = only_sub(report)
    assert sub.verdict == INCONCLUSIVE
    assert sub.aggregate.hi > 0.01 and sub.aggregate.lo < 0.01


# ------------------------------------------------------------------ latency ratios


def test_latency_pass(tmp_path):
    report = evaluate_store(tmp_path, matches(3000, lat=(0.05, 0.05)),
                            [{"name": "latency", "max_p50_ratio": 1.2, "max_p99_ratio": 1.5}])
    (check,) = report.checks
    assert [s.metric for s in check.subchecks] == ["max_p50_ratio", "max_p99_ratio"]
    assert all(s.verdict == PASS for s in check.subchecks) and report.verdict == PASS
    p50 = check.subchecks[0].aggregate
    assert p50.lo < 1.0 < p50.hi < 1.2 and p50.samples == 3000


def test_latency_fail_names_a_slow_exchange(tmp_path):
    report = evaluate_store(tmp_path, matches(600, lat=(0.05, 0.1)),
                            [{"name": "latency", "max_p50_ratio": 1.2}])
    _c, sub = only_sub(report)
    assert sub.verdict == FAIL
    assert sub.aggregate.lo > 1.2 and sub.aggregate.value == pytest.approx(2.0, rel=0.1)
    ep = sub.endpoints[0]
    assert ep.verdict == FAIL and ep.details["example_id"] in ep.reason


def test_latency_inconclusive_with_few_pairs_and_errors_excluded(tmp_path):
    gone = [res(USERS, "error", candidate=resp(0, 5.0, "timeout", b"")) for _ in range(100)]
    report = evaluate_store(tmp_path, matches(60, lat=(0.05, 0.2)) + gone,
                            [{"name": "latency", "max_p99_ratio": 1.2}])
    _c, sub = only_sub(report)
    assert sub.verdict == INCONCLUSIVE
    assert sub.aggregate.samples == 60          # the timeouts are not latency pairs
    assert sub.aggregate.value > 1.2 and "fewer than min_samples" in sub.aggregate.reason


# ------------------------------------------------------------------ forbid_kinds


def test_forbid_kinds_pass(tmp_path):
    report = evaluate_store(tmp_path, matches(200) + diffs(5, kind="changed"),
                            [{"name": "shape", "forbid_kinds": ["removed", "type_changed"]}])
    _c, sub = only_sub(report)
    assert sub.verdict == PASS and sub.aggregate.value == 0


def test_forbid_kinds_fail_lists_field_and_example(tmp_path):
    gone = [res(USERS, "diff", diffs=[changed("$.user.email", "removed")], id="gone-1")]
    report = evaluate_store(tmp_path, matches(200) + gone,
                            [{"name": "shape", "forbid_kinds": ["removed"]}])
    _c, sub = only_sub(report)
    assert sub.verdict == FAIL
    (hit,) = sub.aggregate.details["hits"]
    assert hit == {"endpoint": USERS, "field": "$.user.email", "kind": "removed", "count": 1,
                   "example_id": "gone-1"}
    assert "$.user.email" in sub.aggregate.reason and "gone-1" in sub.aggregate.reason


def test_forbid_kinds_ignores_noise(tmp_path):
    """Removed fields that were noise when written, or learned as noise since, pass."""
    results = matches(200) + diffs(5, path="$.debug", kind="removed", noise=True) + \
        [res(USERS, "diff", diffs=[changed("$.ts", "removed")], ago=10)]
    ev = [NoiseEvidence(USERS, "$.ts", 206, 100, 100, 0.5, True, False, NOW)]
    report = evaluate_store(tmp_path, results, [{"name": "shape", "forbid_kinds": ["removed"]}],
                            noise=ev)
    _c, sub = only_sub(report)
    assert sub.verdict == PASS, sub.summary


def test_forbid_kinds_mixed_noise_rows_are_inspected(tmp_path):
    """$.tags has 3 noise rows and 1 real 'removed' row: the counts alone cannot tell,
    the exchanges are inspected and the real one found."""
    results = matches(200) + diffs(3, path="$.tags", kind="removed", noise=True) + \
        [res(USERS, "diff", diffs=[changed("$.tags", "removed")], id="real-removed", ago=5)]
    report = evaluate_store(tmp_path, results, [{"name": "shape", "forbid_kinds": ["removed"]}])
    _c, sub = only_sub(report)
    assert sub.verdict == FAIL
    assert sub.aggregate.details["hits"][0]["example_id"] == "real-removed"


def test_forbid_kinds_inconclusive_with_few_samples(tmp_path):
    report = evaluate_store(tmp_path, matches(40),
                            [{"name": "shape", "forbid_kinds": ["removed"]}])
    assert only_sub(report)[1].verdict == INCONCLUSIVE


# ------------------------------------------------------------------ several thresholds


def test_each_threshold_is_a_subcheck_and_the_worst_decides(tmp_path):
    results = matches(1000, lat=(0.05, 0.05)) + \
        [res(USERS, "diff", diffs=[changed("$.a", "removed")], ago=3)]
    report = evaluate_store(tmp_path, results, [
        {"name": "all", "max_diff_rate": 0.05, "max_error_rate_increase": 0.02,
         "max_p50_ratio": 1.3, "forbid_kinds": ["removed"]}])
    (check,) = report.checks
    got = {s.metric: s.verdict for s in check.subchecks}
    assert got == {"max_diff_rate": PASS, "max_error_rate_increase": PASS,
                   "max_p50_ratio": PASS, "forbid_kinds": FAIL}
    assert check.verdict == FAIL


def test_glob_escape_matches_exactly():
    import fnmatch
    for name in ("GET /a/[id]", "GET /a/*", "GET /what?", "plain"):
        assert fnmatch.fnmatchcase(name, glob_escape(name))
    assert not fnmatch.fnmatchcase("GET /a/x", glob_escape("GET /a/*"))


def test_endpoint_names_with_glob_characters(tmp_path):
    odd = "GET /files/[name]*"
    report = evaluate_store(tmp_path, matches(300, odd) + diffs(60, odd) + matches(300, ITEMS),
                            [{"name": "diffs", "max_diff_rate": 0.05}])
    _c, sub = only_sub(report)
    by_ep = {u.endpoint: u for u in sub.endpoints}
    assert by_ep[odd].samples == 360 and by_ep[odd].verdict == FAIL
    assert by_ep[ITEMS].samples == 300 and by_ep[ITEMS].verdict == PASS


# ------------------------------------------------------------------ the CLI


@pytest.fixture()
def store_url(tmp_path: Path) -> str:
    results = (matches(1000, USERS, lat=(0.05, 0.05)) + matches(1000, ITEMS, seed=2)
               + diffs(60, ITEMS, "$.items[*].price")
               + [res(ITEMS, "match", ago=4 * 3600.0) for _ in range(500)])   # old
    return write(tmp_path / "results.db", results)


def cli(tmp_path: Path, url: str, checks: list[dict[str, Any]], *args: str,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    cfg = config(tmp_path, url, checks)
    code = cli_main(["check", "-c", str(cfg), *args])
    out, err = capsys.readouterr()
    return code, out, err


PASSING = {"name": "users-ok", "endpoints": "GET /api/users/*", "max_diff_rate": 0.01,
           "max_p50_ratio": 1.2}
FAILING = {"name": "items-diffs", "endpoints": "GET /api/items*", "max_diff_rate": 0.01,
           "critical": True}
UNSURE = {"name": "needs-more", "endpoints": "GET /api/users/*", "max_diff_rate": 0.01,
          "min_samples": 100000}    # no diff at all: cannot fail, and too few to pass


def test_cli_pass_exit_0_text(tmp_path, store_url, capsys):
    code, out, err = cli(tmp_path, store_url, [PASSING], capsys=capsys)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("shadowproxy check: window")
    assert any(line.startswith("PASS") and "users-ok" in line for line in lines)
    assert any("max_diff_rate < 1.00%" in line for line in lines)
    assert lines[-1].startswith("verdict: PASS")


def test_cli_fail_exit_1_json(tmp_path, store_url, capsys):
    code, out, _err = cli(tmp_path, store_url, [PASSING, FAILING], "--format", "json",
                          capsys=capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["verdict"] == "fail" and doc["exit_code"] == 1
    assert doc["counts"] == {"pass": 1, "fail": 1, "inconclusive": 0}
    by_name = {c["name"]: c for c in doc["checks"]}
    items = by_name["items-diffs"]
    assert items["verdict"] == "fail" and items["critical"] is True
    (sub,) = items["subchecks"]
    agg = sub["aggregate"]
    assert sub["metric"] == "max_diff_rate" and sub["threshold"] == 0.01
    assert agg["scope"] == "aggregate" and agg["endpoint"] is None
    assert agg["samples"] == 1560 and agg["value"] == pytest.approx(60 / 1560)
    assert agg["interval"]["confidence"] == 0.95
    assert agg["interval"]["lo"] > 0.01
    (field,) = agg["details"]["fields"]
    assert field["field"] == "$.items[*].price" and field["example_id"]
    assert [u["endpoint"] for u in sub["endpoints"]] == [ITEMS]
    users = by_name["users-ok"]
    assert [s["metric"] for s in users["subchecks"]] == ["max_diff_rate", "max_p50_ratio"]


def test_cli_inconclusive_exit_3_junit(tmp_path, store_url, capsys):
    out_file = tmp_path / "reports" / "checks.xml"
    code, out, _err = cli(tmp_path, store_url, [PASSING, FAILING, UNSURE],
                          "--format", "junit", "-o", str(out_file), capsys=capsys)
    assert code == 1                           # a fail outranks the inconclusive
    assert out.count("\n") == 1 and "FAIL (1 of 3 checks failed, 1 inconclusive, 1 passed)" \
        in out and str(out_file) in out
    root = ET.parse(out_file).getroot()
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"users-ok", "items-diffs", "needs-more"}
    cases = root.findall("testsuite/testcase")
    assert root.get("tests") == str(len(cases))
    # one testcase per sub-check and endpoint (plus the aggregate)
    names = [c.get("name") for c in suites["users-ok"].findall("testcase")]
    assert names == ["max_diff_rate [all endpoints]", f"max_diff_rate [{USERS}]",
                     "max_p50_ratio [all endpoints]", f"max_p50_ratio [{USERS}]"]
    fails = suites["items-diffs"].findall("testcase/failure")
    assert len(fails) == 2 and suites["items-diffs"].get("failures") == "2"
    assert "$.items[*].price" in fails[0].text and fails[0].get("type") == "max_diff_rate"
    skipped = suites["needs-more"].findall("testcase/skipped")
    assert len(skipped) == 2 and suites["needs-more"].get("skipped") == "2"
    assert skipped[0].get("message").startswith("inconclusive: ")
    assert root.get("failures") == "2" and root.get("skipped") == "2"
    props = {p.get("name"): p.get("value")
             for p in suites["items-diffs"].findall("properties/property")}
    assert props["critical"] == "true" and props["verdict"] == "fail"


def test_cli_inconclusive_only_exit_3(tmp_path, store_url, capsys):
    code, out, _err = cli(tmp_path, store_url, [PASSING, UNSURE], "--format", "json",
                          capsys=capsys)
    assert code == 3 and json.loads(out)["verdict"] == "inconclusive"


def test_cli_says_where_the_shadow_traffic_went(tmp_path, capsys):
    """A candidate that refused every connection: nothing was compared, and the check's
    output says why (its outcome accounting), in text, JSON and JUnit alike."""
    import time as _time

    from shadowproxy.store import open_store
    url = f"sqlite:///{tmp_path / 'down.db'}"
    store = open_store(url)
    now = _time.time() - 60
    store.add_outcomes([(now, USERS, "mirrored", "", 30),
                        (now, USERS, "candidate_error", "connect", 10),
                        (now, USERS, "dropped", "candidate_down", 20),
                        (now, USERS, "sampled_out", "", 5)])
    store.close()
    check = {"name": "diffs", "max_diff_rate": 0.01}
    code, out, _err = cli(tmp_path, url, [check], capsys=capsys)
    assert code == 3, out
    assert out.splitlines()[1] == ("shadow traffic: mirrored 30: candidate_error{connect} 10, "
                                   "dropped{candidate_down} 20"), out
    assert "no compared exchanges" in out
    code, out, _err = cli(tmp_path, url, [check], "--format", "json", capsys=capsys)
    assert json.loads(out)["shadow"] == {"mirrored": 30, "candidate_error{connect}": 10,
                                         "dropped{candidate_down}": 20}
    code, out, _err = cli(tmp_path, url, [check], "--format", "junit", capsys=capsys)
    props = {p.get("name"): p.get("value")
             for p in ET.fromstring(out).findall("testsuite/properties/property")}
    assert "dropped{candidate_down} 20" in props["shadow_traffic"]


def test_cli_endpoint_filter_and_window(tmp_path, store_url, capsys):
    # only the users endpoint: the failing items endpoint is filtered out
    code, out, _ = cli(tmp_path, store_url, [FAILING | {"endpoints": "*"}],
                       "--endpoint", "GET /api/users/*", "--format", "json", capsys=capsys)
    assert code == 0
    sub = json.loads(out)["checks"][0]["subchecks"][0]
    assert [u["endpoint"] for u in sub["endpoints"]] == [USERS]
    # --since 1h leaves out the 500 old matches of the items endpoint
    code, out, _ = cli(tmp_path, store_url, [FAILING], "--since", "1h", "--format", "json",
                       capsys=capsys)
    doc = json.loads(out)
    assert doc["checks"][0]["subchecks"][0]["aggregate"]["samples"] == 1060
    assert doc["window"]["until"] - doc["window"]["since"] == pytest.approx(3600)
    # --from/--to around the old exchanges only
    code, out, _ = cli(tmp_path, store_url, [FAILING], "--from", "5h", "--to", "3h",
                       "--format", "json", capsys=capsys)
    assert code == 0
    agg = json.loads(out)["checks"][0]["subchecks"][0]["aggregate"]
    assert agg["samples"] == 500 and agg["value"] == 0


def test_cli_from_to_iso_and_epoch(tmp_path, store_url, capsys):
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 2 * 3600))
    code, out, err = cli(tmp_path, store_url, [PASSING], "--from", start, "--to",
                         str(int(NOW) + 5), "--format", "json", capsys=capsys)
    assert code == 0, err
    w = json.loads(out)["window"]
    assert w["since_iso"] == start and w["until"] == int(NOW) + 5


@pytest.mark.parametrize("args, message", [
    (["--since", "soon"], "bad --since"),
    (["--since", "1h", "--from", "2h"], "either --since or --from/--to"),
    (["--from", "yesterday-ish"], "bad time"),
    (["--from", "1h", "--to", "2h"], "must be before"),
])
def test_cli_usage_errors_exit_2(tmp_path, store_url, capsys, args, message):
    code, out, err = cli(tmp_path, store_url, [PASSING], *args, capsys=capsys)
    assert code == 2 and out == "" and message in err


def test_cli_no_checks_exit_2(tmp_path, store_url, capsys):
    code, _out, err = cli(tmp_path, store_url, [], capsys=capsys)
    assert code == 2 and "no checks configured" in err


def test_cli_missing_store_exit_2(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'nowhere.db'}"
    code, _out, err = cli(tmp_path, url, [PASSING], capsys=capsys)
    assert code == 2 and "cannot read the result store" in err and "nowhere.db" in err
    assert not (tmp_path / "nowhere.db").exists()       # opened read-only: not created


def test_cli_not_a_store_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    code, _out, err = cli(tmp_path, f"sqlite:///{junk}", [PASSING], capsys=capsys)
    assert code == 2 and "junk.db" in err


def test_cli_empty_store_is_inconclusive(tmp_path, capsys):
    url = write(tmp_path / "empty.db", [])
    code, out, _ = cli(tmp_path, url, [PASSING], "--format", "json", capsys=capsys)
    assert code == 3
    agg = json.loads(out)["checks"][0]["subchecks"][0]["aggregate"]
    assert agg["samples"] == 0 and "no compared exchanges" in agg["reason"]


def test_cli_output_file_unwritable_exit_2(tmp_path, store_url, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _out, err = cli(tmp_path, store_url, [PASSING], "-o", str(blocker / "out.xml"),
                          capsys=capsys)
    assert code == 2 and "cannot write" in err


def test_junit_is_valid_xml_with_awkward_names(tmp_path, capsys):
    odd = "GET /x/\x01<&>\"'"
    url = write(tmp_path / "results.db", matches(200, odd) + diffs(50, odd, "$.\x02b"))
    code, out, _ = cli(tmp_path, url, [{"name": "odd <&>", "max_diff_rate": 0.01}],
                       "--format", "junit", capsys=capsys)
    assert code == 1
    root = ET.fromstring(out)
    names = [c.get("name") for c in root.findall("testsuite/testcase")]
    assert names[0] == "max_diff_rate [all endpoints]"
    assert names[1] == "max_diff_rate [GET /x/\ufffd<&>\"']"     # control character replaced
    assert root.find("testsuite").get("name") == "odd <&>"
    assert "$.\ufffdb" in root.find("testsuite/testcase/failure").text


def test_cli_json_with_a_zero_primary_latency_stays_valid_json(tmp_path, capsys):
    results = [res(USERS, primary=resp(latency=0.0), candidate=resp(latency=0.05))
               for _ in range(150)]
    url = write(tmp_path / "results.db", results)
    code, out, _ = cli(tmp_path, url, [{"name": "lat", "max_p99_ratio": 2.0}],
                       "--format", "json", capsys=capsys)
    doc = json.loads(out)              # no NaN / Infinity tokens
    agg = doc["checks"][0]["subchecks"][0]["aggregate"]
    # the sketches hold a zero latency as their lowest value, 1 µs
    assert agg["value"] > 1000 and code in (1, 3)


def test_store_is_opened_read_only(tmp_path, store_url, capsys):
    path = store_url[len("sqlite:///"):]
    before = Path(path).stat().st_mtime_ns
    code, _out, _err = cli(tmp_path, store_url, [PASSING], capsys=capsys)
    assert code == 0
    s = open_store(store_url, readonly=True)
    try:
        assert s.info().exchanges == 2560
    finally:
        s.close()
    assert Path(path).stat().st_mtime_ns == before
