from __future__ import annotations

import dataclasses
import gzip
import hashlib
import hmac
import os
import re
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.config import RedactConfig
from shadowproxy.errors import ConfigError
from shadowproxy.jsonpath import ANY, DESC
from shadowproxy.jsonpath import parse as parse_jsonpath
from shadowproxy.models import Difference, RequestRecord, Result
from shadowproxy.redact import Redactor
from tests.store_helpers import SECRETS, exchange, response, secret_result

KEY = b"k" * 32
MASK = re.compile(r"\[redacted:[0-9a-f]{12}\]")


def dump(obj) -> str:
    return orjson.dumps(obj, default=lambda v: v.decode("latin-1") if isinstance(v, bytes)
                        else sorted(v) if isinstance(v, frozenset) else str(v)).decode()


def headers(rec) -> dict[str, str]:
    return {k.lower(): v for k, v in rec.headers}


@pytest.fixture
def red() -> Redactor:
    return Redactor(RedactConfig(), KEY)


def test_mask_is_deterministic_keyed_and_unreadable(red):
    m = red.mask("s3cr3t-value")
    assert MASK.fullmatch(m)
    assert red.mask("s3cr3t-value") == m
    assert red.mask("other") != m
    assert Redactor(RedactConfig(), b"x" * 32).mask("s3cr3t-value") != m
    assert "s3cr3t" not in m


def test_from_config_key_from_env_or_random():
    cfg = RedactConfig(key_env="SP_TEST_KEY")
    a = Redactor.from_config(cfg, {"SP_TEST_KEY": "abc"})
    b = Redactor.from_config(cfg, {"SP_TEST_KEY": "abc"})
    assert a.mask("v") == b.mask("v") and a.key == b"abc"
    r1 = Redactor.from_config(RedactConfig(), {})
    r2 = Redactor.from_config(RedactConfig(), {})
    assert len(r1.key) == 32 and r1.mask("v") != r2.mask("v")
    # a master passes its key to workers
    assert Redactor.from_config(RedactConfig(), {}, key=r1.key).mask("v") == r1.mask("v")


def test_planted_secrets_never_survive(red):
    res = red.redact_result(secret_result())
    text = dump(res)
    for name, secret in SECRETS.items():
        assert secret not in text, name
    # and nothing of them in the bodies either (they are bytes)
    ex = res.exchange
    for rec in (ex.request, ex.primary, ex.candidate, ex.secondary):
        for secret in SECRETS.values():
            assert secret.encode() not in rec.body


def test_equal_secrets_equal_masks_and_structure_kept(red):
    s = SECRETS
    ex = red.redact_result(secret_result()).exchange
    req = ex.request
    h = headers(req)
    assert h["authorization"] == "Bearer " + red.mask(s["bearer"])
    assert h["cookie"] == f"session={red.mask(s['cookie'])}; theme={red.mask('dark')}"
    assert h["x-api-key"] == red.mask(s["apikey"])
    assert h["host"] == "example"
    assert req.query == f"page=2&token={red.mask(s['query'])}"
    body = orjson.loads(req.body)
    assert body["user"] == {"name": "bob", "password": red.mask(s["password"])}
    assert [i["token"] for i in body["items"]] == [red.mask(s["token"])] * 2
    assert [i["id"] for i in body["items"]] == [1, 2]
    # primary: gzip decoded for the stored copy, Content-Encoding gone, size/sha kept
    p = ex.primary
    assert "content-encoding" not in headers(p)
    pb = orjson.loads(p.body)
    assert pb["password"] == red.mask(s["gzpassword"])
    assert pb["name"] == "alice"
    assert MASK.fullmatch(pb["data"][0]["secret"])        # an object masked as a whole
    assert pb["echo"] == "Bearer " + red.mask(s["bearer"])  # echo of the request's token
    assert headers(p)["set-cookie"] == f"session={red.mask(s['setcookie'])}; Path=/; HttpOnly"
    orig = secret_result().exchange.primary
    assert p.size == orig.size and p.sha256 == red.body_digest(orig.sha256)
    # text and form bodies
    assert ex.candidate.body.decode() == \
        f"ok\npassword={red.mask(s['text'])}&token={red.mask(s['token'])}\n"
    assert ex.secondary.body.decode() == f"user=bob&password={red.mask(s['form'])}"


def test_differences_masked_by_path(red):
    s = SECRETS
    res = red.redact_result(secret_result())
    by_path = {d.path: d for d in res.differences}
    assert by_path["header.set-cookie"].a == f"session={red.mask(s['setcookie'])}; Path=/"
    assert by_path["header.set-cookie"].b == f"session={red.mask('other')}; Path=/"
    assert by_path["$.password"].a == red.mask(s["gzpassword"])
    assert by_path["$.password"].b is None
    assert MASK.fullmatch(by_path["$.data[0].secret"].a)
    assert MASK.fullmatch(by_path["$.data[0]"].a["secret"]) and by_path["$.data[0]"].b == 3
    assert by_path["$.echo"].a == "Bearer " + red.mask(s["bearer"])
    assert by_path["header.x-api-key"].b == red.mask("other-key-value")
    assert by_path["body.line[1]"].a == f"password={red.mask(s['text'])}"
    assert res.secondary_differences[0].a == by_path["header.set-cookie"].a


def test_differences_alone(red):
    diffs = [Difference("header", "header.authorization", "changed", "Bearer abcdefgh", "Bearer x"),
             Difference("body", "$.users[3].profile.password", "changed", "pw-one", "pw-two"),
             Difference("body", "$.users[3]", "added", None, {"password": "pw-three"}),
             Difference("body", "body.form.password", "changed", "f1", "f2"),
             Difference("body", "$.name", "changed", "ann", "bob"),
             Difference("status", "status", "changed", 200, 500)]
    out = red.redact_differences(diffs)
    assert out[0].a == "Bearer " + red.mask("abcdefgh")
    assert (out[1].a, out[1].b) == (red.mask("pw-one"), red.mask("pw-two"))
    assert out[2].b == {"password": red.mask("pw-three")}
    assert (out[3].a, out[3].b) == (red.mask("f1"), red.mask("f2"))
    assert out[4] == diffs[4] and out[5] == diffs[5]
    assert out[1].field == diffs[1].field


def test_configured_headers_fields_and_query():
    cfg = RedactConfig(headers=("X-Internal-Sig",), fields=("$.profile.ssn", "$.cards[*].number"),
                       query=("sig",))
    red = Redactor(cfg, KEY)
    body = {"profile": {"ssn": "123-45-6789", "name": "ann"},
            "cards": [{"number": "4111111111111111", "exp": "12/30"}],
            "other": {"ssn": "kept"}}
    ex = exchange(query="a=1&sig=abcdef&SIG=zz", req_headers=(("X-Internal-Sig", "sig-value"),),
                  primary=response(200, body))
    out = red.redact_exchange(ex)
    assert out.request.query == f"a=1&sig={red.mask('abcdef')}&SIG={red.mask('zz')}"
    assert out.request.headers == (("X-Internal-Sig", red.mask("sig-value")),)
    pb = orjson.loads(out.primary.body)
    assert pb["profile"] == {"ssn": red.mask("123-45-6789"), "name": "ann"}
    assert pb["cards"] == [{"number": red.mask("4111111111111111"), "exp": "12/30"}]
    assert pb["other"] == {"ssn": "kept"}       # $.profile.ssn is not $..ssn


def test_names_match_by_their_last_words_in_json_query_and_forms(red):
    """``$..token`` masks ``accessToken`` and ``refresh_token`` too, ``$..secret``
    ``client_secret``, ``$..api_key`` ``apiKey``: the same names in JSON keys, query
    parameters and form bodies; ``token_type`` and ``tokens`` are not secrets."""
    body = {"accessToken": "CAMEL171", "client_secret": "CS191", "token_type": "Bearer",
            "tokens": 3, "nested": [{"apiKey": "AK-1", "Refresh-Token": "RT-2"}],
            "passwordHash": "kept-by-name"}
    ex = exchange(query="client_secret=QS-1&refreshToken=QS-2&page=2",
                  primary=response(200, body))
    out = red.redact_exchange(ex)
    pb = orjson.loads(out.primary.body)
    assert pb["accessToken"] == red.mask("CAMEL171")
    assert pb["client_secret"] == red.mask("CS191")
    assert pb["nested"] == [{"apiKey": red.mask("AK-1"), "Refresh-Token": red.mask("RT-2")}]
    assert pb["token_type"] == "Bearer" and pb["tokens"] == 3
    assert pb["passwordHash"] == "kept-by-name"
    assert out.request.query == (f"client_secret={red.mask('QS-1')}&"
                                 f"refreshToken={red.mask('QS-2')}&page=2")
    diffs = red.redact_differences([
        Difference("body", "$.nested[0].apiKey", "changed", "AK-1", "AK-2"),
        Difference("body", "$.user", "changed", {"accessToken": "T-1"}, None)])
    assert [(d.a, d.b) for d in diffs] == [(red.mask("AK-1"), red.mask("AK-2")),
                                           ({"accessToken": red.mask("T-1")}, None)]
    form = exchange(method="POST", req_body=b"user=ann&accessToken=F-1",
                    req_headers=(("Content-Type", "application/x-www-form-urlencoded"),))
    assert (red.redact_exchange(form).request.body
            == f"user=ann&accessToken={red.mask('F-1')}".encode())


def test_short_names_still_mask_run_together_names():
    red = Redactor(RedactConfig(query=("code", "pin")), KEY)
    assert red.redact_query("passcode=S1&userpin=1234&auth_code=S2&page=2") == (
        f"passcode={red.mask('S1')}&userpin={red.mask('1234')}&auth_code={red.mask('S2')}"
        "&page=2")


def test_secrets_echoed_percent_encoded_are_masked(red):
    """A header's secret echoed in the query percent-encoded (either case of the hex,
    + for space) is masked like the plain echo."""
    target = "/cb?state=abc%2Fdef%2Bghi%3D%3D&low=abc%2fdef%2bghi%3d%3d&plain=abc/def+ghi=="
    out = red.redact_target(target, (("Authorization", "Bearer abc/def+ghi=="),))
    m = red.mask("abc/def+ghi==")
    assert out == f"/cb?state={m}&low={m}&plain={m}"


def test_echoes_found_alike_when_spellings_were_kept(red):
    """A secret's other spellings are kept between exchanges: the second exchange with
    the same token masks its echoes as the first did, in every text."""
    token = "tok/en+v\u00e4lue=="
    query = "q=tok%2Fen%2Bv%C3%A4lue%3D%3D&r=tok%2fen%2bv%c3%a4lue%3d%3d"
    ex = exchange(path=f"/u/{token}", query=query,
                  req_headers=(("Authorization", f"Bearer {token}"),),
                  primary=response(200, {"echo": token}, headers=(("X-Echo", token),)),
                  candidate=response(0, error=f"bad {token}"))
    first, second = red.redact_exchange(ex), red.redact_exchange(ex)
    assert first == second
    text = dump(second)
    assert token not in text and "tok%2" not in text and "tok/en" not in text
    m = red.mask(token)
    assert second.request.path == f"/u/{m}" and second.request.query == f"q={m}&r={m}"


def test_bad_field_path_is_a_config_error():
    with pytest.raises(ConfigError, match=r"redact\.fields\[0\]"):
        Redactor(RedactConfig(fields=("$.a[",)), KEY)


def test_field_paths_are_parsed_by_the_one_grammar():
    """The redactor has no parser of its own: its patterns are :mod:`shadowproxy.jsonpath`'s,
    with member names folded to lower case."""
    red = Redactor(RedactConfig(fields=("$.a['B c'][2][*].*", "$..[2].Token")), KEY)
    assert red.matcher.patterns[0] == parse_jsonpath("$..password") == (DESC, ("key", "password"))
    assert red.matcher.patterns[-2] == (("key", "a"), ("key", "b c"), ("index", 2), ANY, ANY)
    assert red.matcher.patterns[-1] == (DESC, ("index", 2), ("key", "token"))


@pytest.mark.parametrize("fields, raw", [
    ((), b'{"p\\u0061ssword": "hunter2xyz"}'),            # an escaped letter in the key
    ((), b'{"user": {"T\\u006FKEN": "hunter2xyz"}}'),
    (("$['a\\\"b']",), b'{"a\\"b": "hunter2xyz"}'),       # names JSON spells escaped
    (("$['a/b']",), b'{"a\\/b": "hunter2xyz"}'),
    (("$['caf\u00e9']",), b'{"caf\\u00e9": "hunter2xyz"}'),
])
def test_json_keys_spelled_with_escapes_are_masked(fields, raw):
    """The shortcut that skips JSON bodies mentioning no sensitive name must not skip one
    whose key spells the name with JSON escapes."""
    red = Redactor(RedactConfig(fields=fields), KEY)
    ex = exchange(primary=response(200, raw=raw,
                                   headers=(("Content-Type", "application/json"),)))
    body = red.redact_exchange(ex).primary.body
    assert b"hunter2xyz" not in body and red.mask("hunter2xyz").encode() in body


def test_binary_and_undecodable_bodies_are_dropped(red):
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(200)
    ex = exchange(primary=response(200, raw=png, headers=(("Content-Type", "image/png"),)),
                  candidate=response(200, raw=b"\xff\xfe\x00garbage\x00",
                                     headers=(("Content-Type", "application/unknown"),)))
    out = red.redact_exchange(ex)
    assert out.primary.body == b"" and out.primary.size == len(png)
    assert out.primary.sha256 == red.body_digest(hashlib.sha256(png).hexdigest())
    assert out.candidate.body == b""
    # an encoding we cannot undo: dropped, header kept
    zstd = exchange(primary=response(200, raw=b"\x28\xb5\x2f\xfdgarbage",
                                     headers=(("Content-Encoding", "zstd"),)))
    p = red.redact_exchange(zstd).primary
    assert p.body == b"" and headers(p)["content-encoding"] == "zstd"


def test_text_formats(red):
    text = ("line one\npassword: hunter22\nAuthorization: Bearer abc.def.ghi\n"
            "<user><password>xml-secret</password><name>n</name></user>\n"
            "url=/cb?x=1&access_token=tok-abcdef&y=2\n"
            "{\"token\": \"json-ish secret\", broken\n")
    ex = exchange(primary=response(200, raw=text.encode(),
                                   headers=(("Content-Type", "text/plain"),)))
    body = red.redact_exchange(ex).primary.body.decode()
    for secret in ("hunter22", "abc.def.ghi", "xml-secret", "tok-abcdef", "json-ish secret"):
        assert secret not in body
    assert "line one" in body and "<name>n</name>" in body and "x=1" in body and "y=2" in body
    assert f"password: {red.mask('hunter22')}" in body


def test_multipart_body(red):
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nbob\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nmp-secret-1\r\n"
            b"--XyZ--\r\n")
    ex = exchange(req_headers=(("Content-Type", "multipart/form-data; boundary=XyZ"),),
                  req_body=body)
    out = red.redact_exchange(ex).request.body
    assert b"mp-secret-1" not in out and b"bob" in out


def test_deflate_brotli_and_truncated_gzip(red):
    doc = orjson.dumps({"password": "deflated-secret", "pad": "x" * 5000})
    ex = exchange(primary=response(200, raw=zlib.compress(doc),
                                   headers=(("Content-Type", "application/json"),
                                            ("Content-Encoding", "deflate"))))
    p = red.redact_exchange(ex).primary
    assert b"deflated-secret" not in p.body and b'"pad"' in p.body
    # a capture cut short: gzip decodes what it can, the text pass still masks
    gz = gzip.compress(orjson.dumps({"a": "b", "token": "cut-secret-1",
                                      "pad": os.urandom(5000).hex()}))
    rec = dataclasses.replace(response(200, raw=gz[:len(gz) // 2],
                                       headers=(("Content-Type", "application/json"),
                                                ("Content-Encoding", "gzip"))), truncated=True)
    p = red.redact_exchange(exchange(primary=rec)).primary
    assert p.body.startswith(b'{"a":"b","token":"[redacted:') and b"cut-secret-1" not in p.body
    brotli = pytest.importorskip("brotli")
    ex = exchange(primary=response(200, raw=brotli.compress(b'{"secret":"br-secret-9"}'),
                                   headers=(("Content-Type", "application/json"),
                                            ("Content-Encoding", "br"))))
    p = red.redact_exchange(ex).primary
    assert orjson.loads(p.body) == {"secret": red.mask("br-secret-9")}


@pytest.mark.parametrize("raw", [b'{"api.key": "abcdef"}', b'{"API Key": "abcdef"}',
                                 b'{"a": [{"Refresh.Token": "abcdef"}]}'])
def test_keys_named_by_words_alone_are_masked_in_a_body_naming_nothing_else(red, raw):
    """A key that names a field by its words in a spelling of its own (``api.key`` for
    ``$..api_key``) is masked whether or not the body mentions a name otherwise: the
    shortcut that skips bodies without a name looks for the names' last words too."""
    ex = exchange(primary=response(200, raw=raw, headers=(("Content-Type", "application/json"),)))
    body = red.redact_exchange(ex).primary.body
    assert b"abcdef" not in body and red.mask("abcdef").encode() in body


def test_json_without_sensitive_names_is_kept_byte_for_byte(red):
    raw = b'{ "a" : 1,\n  "b": [1, 2] }'
    ex = exchange(primary=response(200, raw=raw, headers=(("Content-Type", "application/json"),)))
    assert red.redact_exchange(ex).primary.body == raw


def test_original_not_modified(red):
    res = secret_result()
    before = dump(res)
    red.redact_result(res)
    assert dump(res) == before


def test_echoes_in_path_and_other_headers(red):
    ex = exchange(path="/reset/ECHOsecret-123", query="token=ECHOsecret-123",
                  req_headers=(("X-Forwarded-Auth", "ECHOsecret-123"),))
    out = red.redact_exchange(ex)
    assert "ECHOsecret-123" not in dump(out)
    assert out.request.path == "/reset/" + red.mask("ECHOsecret-123")


_names = st.sampled_from(["password", "Password", "token", "secret", "api_key", "name", "id",
                          "items", "data"])
_leaf = st.one_of(st.integers(-5, 5), st.booleans(), st.none(),
                  st.text(alphabet="abcxyz", max_size=4))
_json = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_names, inner, max_size=4)), max_leaves=25)


def _plant(doc, counter=[0]):  # noqa: B006 - a counter for unique secrets
    """Plant a unique secret under every sensitive key; → (doc, planted secrets)."""
    planted = []

    def walk(v):
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k.lower() in ("password", "token", "secret", "api_key"):
                    counter[0] += 1
                    s = f"PLANTED{counter[0]:06d}qq"
                    planted.append(s)
                    out[k] = s if not isinstance(x, (dict, list)) else {"inner": s, "x": x}
                else:
                    out[k] = walk(x)
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(doc), planted


@settings(max_examples=150, deadline=None)
@given(_json, st.booleans())
def test_property_no_planted_secret_survives(doc, compress):
    red = Redactor(RedactConfig(), KEY)
    doc, planted = _plant({"root": doc})
    raw = orjson.dumps(doc)
    ex = exchange(req_headers=(("Content-Type", "application/json"),), req_body=raw,
                  primary=response(200, doc, gzip_body=compress))
    out = red.redact_exchange(ex)
    text = dump(out)
    for s in planted:
        assert s not in text
    # the structure is still JSON and other values are untouched
    assert isinstance(orjson.loads(out.request.body), dict)


def test_request_record_fields_preserved(red):
    ex = exchange(method="PUT", path="/a/b", query="x=1")
    out = red.redact_exchange(ex)
    assert isinstance(out.request, RequestRecord)
    assert (out.request.method, out.request.path, out.request.query) == ("PUT", "/a/b", "x=1")
    assert out.id == ex.id and out.endpoint == ex.endpoint and out.started == ex.started


def test_other_header_values_get_the_text_pass(red):
    ex = exchange(primary=response(302, None, headers=(
        ("Location", "https://app/cb?state=ok&access_token=loc-secret-77"),
        ("Content-Type", "text/html; charset=utf-8"),
        ("Vary", "Cookie, Authorization"))),
        req_headers=(("Cookie", "a=1; bare-cookie-secret"),))
    out = red.redact_exchange(ex)
    h = headers(out.primary)
    assert h["location"] == f"https://app/cb?state=ok&access_token={red.mask('loc-secret-77')}"
    assert h["content-type"] == "text/html; charset=utf-8"
    assert h["vary"] == "Cookie, Authorization"
    assert "bare-cookie-secret" not in headers(out.request)["cookie"]


def test_keyed_array_difference_paths_are_redacted_by_field_not_wholesale() -> None:
    from shadowproxy.config import RedactConfig
    from shadowproxy.models import Difference
    from shadowproxy.redact import Redactor

    r = Redactor(RedactConfig(), b"k" * 32)
    out = r.redact_differences([
        Difference("body", "$.users[id=7].password", "changed", "hunter2-secret", "x"),
        Difference("body", "$.users[id=7].name", "changed", "bob", "al"),
    ])
    assert "hunter2-secret" not in repr(out) and out[0].a.startswith("[redacted:")
    assert (out[1].a, out[1].b) == ("bob", "al")


def test_mask_is_hmac_sha256_of_the_value(red):
    value = "s3cr3t-värde"
    digest = hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()
    assert red.mask(value) == f"[redacted:{digest[:12]}]"


def test_masks_kept_for_reuse_are_the_hmac_and_bounded(red):
    from shadowproxy.redact import masks

    def hmac_mask(v: str) -> str:
        return f"[redacted:{hmac.new(KEY, v.encode(), hashlib.sha256).hexdigest()[:12]}]"

    values = [f"token-{i}" for i in range(masks.MASK_CACHE + 10)] + ["x" * 5000]
    for _ in range(2):      # masked afresh, then (most) from what was kept
        for v in values:
            assert red.mask(v) == hmac_mask(v)
    assert 0 < len(red._masks) <= masks.MASK_CACHE
    assert "x" * 5000 not in red._masks          # long values are not kept
    other = Redactor(RedactConfig(), b"x" * 32)   # another key masks apart
    assert other.mask("token-1") != red.mask("token-1")


ECHO = "ECHOtoken-secret-42"
PASSWORD = "PWsecret-in-both-bodies"


def echoing_result() -> Result:
    """A request token echoed where no rule but the echo pass finds it: the path, a
    query parameter, an upstream's error, a body value and a difference; primary and
    candidate answer the same body (with a password field)."""
    body = {"owner": ECHO, "password": PASSWORD, "n": 1}
    ex = exchange(path=f"/users/{ECHO}/orders", query=f"page=2&q={ECHO}&token=QUERYsecret-9",
                  req_headers=(("Authorization", f"Bearer {ECHO}"), ("Accept", "*/*")),
                  primary=response(200, body, headers=(("Set-Cookie", "sid=COOKIEsecret-1"),)),
                  candidate=response(200, body),
                  secondary=response(0, error=f"protocol: bad header near {ECHO}"))
    diffs = [Difference("body", "$.owner", "changed", ECHO, "someone"),
             Difference("header", "header.set-cookie", "removed", "sid=COOKIEsecret-1", None)]
    return Result(ex, "diff", diffs, frozenset(), [diffs[0]])


@pytest.mark.parametrize("make", [echoing_result, secret_result])
def test_summary_redaction_is_the_whole_one_without_headers_and_bodies(red, make):
    res = make()
    whole = red.redact_result(res)
    summ = red.redact_result(res, whole=False)
    assert summ.summary_only and not whole.summary_only
    # what the summary rows store is exactly the whole copy's: echoes masked alike
    assert summ.differences == whole.differences
    assert summ.verdict == whole.verdict and summ.noise_fields == whole.noise_fields
    s, w = summ.exchange, whole.exchange
    assert (s.id, s.started, s.endpoint, s.route) == (w.id, w.started, w.endpoint, w.route)
    assert (s.request.method, s.request.path, s.request.query) == \
        (w.request.method, w.request.path, w.request.query)
    for a, b in ((s.primary, w.primary), (s.candidate, w.candidate), (s.secondary, w.secondary)):
        assert (a.status, a.size, a.sha256, a.latency, a.error) == \
            (b.status, b.size, b.sha256, b.latency, b.error)
    # and nothing else: no headers, bodies, reason phrases or secondary differences
    for rec in (s.request, s.primary, s.candidate, s.secondary):
        assert rec.headers == () and rec.body == b""
    assert (s.primary.reason, s.candidate.reason) == ("", "")
    assert summ.secondary_differences == []
    text = dump(summ) + dump(whole)
    for secret in (ECHO, PASSWORD, "COOKIEsecret-1", "QUERYsecret-9", *SECRETS.values()):
        assert secret not in text


def test_echoes_in_what_the_summary_keeps(red):
    summ = red.redact_result(echoing_result(), whole=False)
    m = red.mask(ECHO)
    req = summ.exchange.request
    assert req.path == f"/users/{m}/orders"
    assert req.query == f"page=2&q={m}&token={red.mask('QUERYsecret-9')}"
    assert summ.exchange.secondary.error == f"protocol: bad header near {m}"
    by_path = {d.path: d for d in summ.differences}
    assert by_path["$.owner"].a == m
    assert by_path["header.set-cookie"].a == f"sid={red.mask('COOKIEsecret-1')}"


def test_an_answer_equal_to_primary_is_redacted_once_and_alike(red):
    ex = red.redact_result(echoing_result()).exchange
    assert ex.candidate.body == ex.primary.body
    doc = orjson.loads(ex.primary.body)
    assert doc == {"owner": red.mask(ECHO), "password": red.mask(PASSWORD), "n": 1}


def test_header_values_left_alone_are_remembered_secrets_never(red):
    loc = "https://app/cb?state=ok&access_token=loc-secret-77"
    for _ in range(2):      # the second time, plain values come from the cache
        ex = exchange(path="/cb/loc-secret-77", primary=response(302, None, headers=(
            ("Location", loc), ("Content-Type", "text/html; charset=utf-8"))))
        out = red.redact_exchange(ex)
        h = headers(out.primary)
        assert h["location"] == \
            f"https://app/cb?state=ok&access_token={red.mask('loc-secret-77')}"
        assert out.request.path == "/cb/" + red.mask("loc-secret-77")   # found: echoed
        assert h["content-type"] == "text/html; charset=utf-8"
    assert "text/html; charset=utf-8" in red._plain and loc not in red._plain


def test_a_sample_keeps_the_digest_of_a_body_it_does_not_store(red):
    """A capture hashes only a body it cut; a whole body arrives with no digest. In a
    sample (whole redaction) the digest of the body as received is filled in (keyed),
    so a binary body stored empty is still identified; a summary carries none."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    raw = dataclasses.replace(response(200, raw=png, headers=(("Content-Type", "image/png"),)),
                              sha256="")
    res = Result(exchange(primary=raw, candidate=raw), "match")
    stored = red.redact_result(res).exchange.primary
    assert stored.body == b"" and stored.size == len(png)
    assert stored.sha256 == red.body_digest(hashlib.sha256(png).hexdigest())
    assert red.redact_result(res, whole=False).exchange.primary.sha256 == ""


def test_body_digests_are_keyed(red):
    """No stored digest is a plain SHA-256 (a short secret in a known body would be
    brute-forced from it): records and body.bytes fingerprints carry HMAC-SHA256 under
    a key derived from the run's key; equal bodies keep equal digests."""
    plain = hashlib.sha256(b'{"token": "ab12"}').hexdigest()
    sub = hmac.new(KEY, b"shadowproxy body digest", hashlib.sha256).digest()
    keyed = hmac.new(sub, bytes.fromhex(plain), hashlib.sha256).hexdigest()
    assert red.body_digest(plain) == keyed != plain and red.body_digest("") == ""
    assert red.body_digest(plain) == keyed          # kept, and kept right
    from shadowproxy.redact.masks import MASK_CACHE
    for i in range(MASK_CACHE + 5):
        d = hashlib.sha256(str(i).encode()).hexdigest()
        assert red.body_digest(d) == hmac.new(sub, bytes.fromhex(d), hashlib.sha256).hexdigest()
    assert len(red._digests) <= MASK_CACHE and red.body_digest(plain) == keyed
    other = Redactor(RedactConfig(), b"o" * 32)
    assert other.body_digest(plain) != keyed             # a different key, another digest
    cut = dataclasses.replace(response(200, raw=b'{"token": "ab12", "pad": "'),
                              size=40, sha256=plain, truncated=True)
    fp = {"size": 40, "sha256": plain, "truncated": True}
    res = Result(exchange(primary=cut, candidate=cut), "diff",
                 [Difference("body", "body.bytes", "changed", fp, dict(fp))])
    for whole in (True, False):
        out = red.redact_result(res, whole=whole)
        assert out.exchange.primary.sha256 == out.exchange.candidate.sha256 == keyed
        (d,) = out.differences
        assert d.a == d.b == {"size": 40, "sha256": keyed, "truncated": True}
        assert plain not in dump(out)


def test_query_names_spelled_encoded_are_masked(red):
    out = red.redact_query("to%6Ben=abc123&refresh+token=def456&page=2&Token=ghi789")
    assert out == (f"to%6Ben={red.mask('abc123')}&refresh+token={red.mask('def456')}"
                   f"&page=2&Token={red.mask('ghi789')}")
