"""Redacting in the sidecar, before the stream: nothing secret is sent, and the
comparator's verdicts and differing fields on the redacted exchange are those of the
exchange before redaction (equal values mask equal; bodies it cannot keep are compared
by size and keyed digest)."""

from __future__ import annotations

import gzip

from shadowproxy.compare.stage import CompareStage
from shadowproxy.config import RedactConfig
from shadowproxy.redact import Redactor
from shadowproxy.redact.fleet import Redacted, redact_for_transport
from shadowproxy.stats import Stats
from shadowproxy.transport import wire
from tests.support import config
from tests.transport.exchanges import SECRET, corpus

KEY = b"k" * 32


def _judge(stage: CompareStage, ex: object) -> tuple[str, list[str]]:
    r = stage.judge(ex)  # type: ignore[arg-type]
    return r.verdict, sorted(d.field for d in r.differences)


async def test_verdicts_equal_before_and_after_redaction() -> None:
    cfg = config("http://127.0.0.1:1", "http://127.0.0.1:2")
    redactor = Redactor(RedactConfig(), KEY)
    raw_stage, red_stage = CompareStage(cfg, Stats()), CompareStage(cfg, Stats())
    seen = set()
    for ex in corpus():
        before = _judge(raw_stage, ex)
        sent = wire.read_entry(wire.fields(redact_for_transport(redactor, ex)))
        after = _judge(red_stage, sent)
        assert after == before, (ex.id, before, after)
        seen.add(before[0])
    assert {"match", "diff", "error"} <= seen          # the corpus covers the verdicts
    assert raw_stage.stats.by_outcome() == red_stage.stats.by_outcome()


async def test_nothing_secret_is_sent() -> None:
    redactor = Redactor(RedactConfig(), KEY)
    for ex in corpus():
        data = wire.pack(redact_for_transport(redactor, ex))
        assert SECRET.encode() not in data, ex.id
        assert SECRET.encode() not in gzip.compress(data)   # nor compressed by accident


async def test_each_instance_masks_alike_with_the_shared_key() -> None:
    ex = corpus()[4]          # the same X-Api-Key on both sides
    a = redact_for_transport(Redactor(RedactConfig(), KEY), ex)
    b = redact_for_transport(Redactor(RedactConfig(), KEY), ex)
    assert a == b
    assert dict(a.primary.headers)["X-Api-Key"].startswith("[redacted:")


async def test_the_comparator_stores_what_it_was_sent_without_masking_again() -> None:
    redactor = Redactor(RedactConfig(), KEY)
    ex = redact_for_transport(redactor, corpus()[3])
    stage = CompareStage(config("http://127.0.0.1:1", "http://127.0.0.1:2"), Stats())
    result = stage.judge(ex)
    kept = Redacted().redact_result(result, whole=True)
    assert kept.exchange.primary.headers == ex.primary.headers     # masks unchanged
    small = Redacted().redact_result(result, whole=False)
    assert small.summary_only and small.exchange.primary.body == b""
    assert small.exchange.request.headers == () and small.exchange.primary.headers == ()
    assert small.exchange.primary.sha256 == ex.primary.sha256
