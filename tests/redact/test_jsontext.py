"""JSON bodies redacted on their text (shadowproxy/redact/jsontext.py) give what the
walk of the parsed document gives: the same bytes and the same secrets, for every key
spelling, escape and non-ASCII text, and nothing of a planted secret."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowproxy.config import RedactConfig
from shadowproxy.redact import Redactor
from shadowproxy.redact.echo import _Secrets

KEY = b"k" * 32

# keys: secret fields in their spellings, near misses, escapes and non-ASCII look-alikes
_KEYS = st.sampled_from([
    "id", "name", "token", "Token", "accessToken", "ACCESS_TOKEN", "access-token",
    "refresh.token", "api.key", "apiKey", "x_api_key", "API KEY", "monkey", "keys",
    "tokens", "token_type", "password_hint", "oldPassword", "passcode", "secret",
    "client_secret", "secrets", "to\u212aen", "pa\u017fsword", "caf\u00e9", "a\"b",
    "back\\slash", "line\nbreak", "authorization", "cookie", "",
])
_TEXTS = st.sampled_from([
    "plain words", "s3cr3t-value-1", "s3cr3t-value-1 again", "call me with token=abc123xyz",
    "password: hunter2xyz", "Authorization: Bearer abcdef123\nnext line",
    "<secret>inner-value-9</secret>", "a \"quoted\" token=q-value-77 \\ back",
    "PA\u017fSWORD=l\u00f6ngwert99", "\u65e5\u672c\u8a9e token=\u5bc6\u7801\u5bc6\u7801\u5bc6",
    "x" * 40, "abc", "tok", "key=v", "monkey=banana1", "api_key='k-v-55'", "\u0001ctl",
])
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False), _TEXTS,
                    st.text(max_size=12))
_DOCS = st.recursive(_LEAVES, lambda kids: st.one_of(
    st.lists(kids, max_size=5), st.dictionaries(_KEYS, kids, max_size=6)), max_leaves=30)


def both(red: Redactor, doc: object) -> tuple[tuple[bytes, dict[str, str]],
                                                tuple[bytes, dict[str, str]]]:
    """(the walk's body and secrets, the text pass's)."""
    walked, by_text = _Secrets(), _Secrets()
    a = orjson.dumps(red.redact_json(doc, walked), option=orjson.OPT_NON_STR_KEYS)
    assert red._text_json is not None
    b = red._text_json.redact(orjson.dumps(doc), by_text)
    return (a, walked.values), (b, by_text.values)


@settings(max_examples=400, deadline=None)
@given(_DOCS)
def test_text_pass_equals_the_walk(doc):
    red = Redactor(RedactConfig(), KEY)
    walked, by_text = both(red, doc)
    assert by_text == walked


@settings(max_examples=100, deadline=None)
@given(_DOCS)
def test_text_pass_equals_the_walk_with_configured_names(doc):
    red = Redactor(RedactConfig(fields=("$..name", "$..['API KEY']"), headers=("x-session",),
                                query=("sig",)), KEY)
    walked, by_text = both(red, doc)
    assert by_text == walked


@pytest.mark.parametrize("doc", [
    {"token": "t-value-123", "n": 1},
    {"a\"b": {"password": ["s3cr3t-one", {"x": "s3cr3t-two"}]}, "k\\": "\\"},
    {"user": {"to\u212aen": "kelvin-secret-1"}, "pa\u017fsword": "long-s-secret"},
    {"note": "PA\u017fSWORD=long-s-value", "list": [{"apiKey": None}, {"api.key": 12345}]},
    ["token=first-one-1", {"secret": {"deep": [1, 2, {"token": "x"}]}}, "after"],
    "password=a-root-string",
    {"escaped \"token\"": "v \"token\"=quoted-1", "nl": "Authorization: Basic Zm9vOmJhcg==\n"},
])
def test_planted_secrets_masked_as_the_walk_masks_them(doc):
    red = Redactor(RedactConfig(), KEY)
    walked, by_text = both(red, doc)
    assert by_text == walked
    out = by_text[0].decode()
    for secret in by_text[1]:
        assert secret not in out and orjson.dumps(secret).decode()[1:-1] not in out
        assert red.mask(secret) in out or red.mask(secret) in by_text[1].values()
    assert by_text[1], "secrets found"


def test_a_document_without_a_secret_is_returned_as_it_is():
    red = Redactor(RedactConfig(), KEY)
    norm = orjson.dumps({"monkey": "keys of the token_type", "tokens": [1, 2]})
    assert red._text_json is not None
    assert red._text_json.redact(norm, _Secrets()) is norm


def test_other_field_paths_are_walked():
    """A path that is not ``$..name`` depends on where a key is: the walk does it."""
    red = Redactor(RedactConfig(fields=("$.user.ssn",)), KEY)
    assert red._text_json is None
    body = red.redact_body(b'{"user": {"ssn": "123-45-6789"}, "ssn": "kept"}',
                           (("Content-Type", "application/json"),), False, _Secrets())[0]
    assert orjson.loads(body) == {"user": {"ssn": red.mask("123-45-6789")}, "ssn": "kept"}


def test_the_lookalikes_are_every_character_that_reads_as_ascii():
    """The characters beyond ASCII that ``str.lower`` (or ``upper``) turns into an ASCII
    letter or digit, or that a case-insensitive regex matches to one: a string holding
    none of them mentions a name only in its ASCII letters."""
    import re
    import sys

    from shadowproxy.redact.jsontext import LOOKALIKES

    chars = "".join(chr(c) for c in range(128, sys.maxunicode + 1)
                    if not 0xD800 <= c <= 0xDFFF)
    found = set(re.findall(r"[a-z0-9_-]", chars, re.I))
    found |= {c for c in chars if re.search(r"[A-Za-z0-9_-]", c.lower() + c.upper())}
    assert found == set(LOOKALIKES)


def test_names_beyond_ascii_are_walked():
    red = Redactor(RedactConfig(fields=("$..['caf\u00e9']",)), KEY)
    assert red._text_json is None
    body = red.redact_body('{"CAF\u00c9": "au lait-1"}'.encode(),
                           (("Content-Type", "application/json"),), False, _Secrets())[0]
    assert orjson.loads(body) == {"CAF\u00c9": red.mask("au lait-1")}
