"""Secrets out of everything stored or logged: keyed masks, field and header redaction.

:class:`Redactor` (:mod:`.redactor`) redacts requests, responses, exchanges and results;
it builds on :mod:`.values` (single values: headers, queries, text, JSON, bodies),
:mod:`.masks` (the mask format and keyed digests), :mod:`.names` (which names are
secret), :mod:`.headers` (header values), :mod:`.bodies` (decoding bodies to redact),
:mod:`.jsontext` (a JSON document redacted on its text) and :mod:`.echo` (a secret's
value echoed elsewhere).
"""

from .bodies import MAX_DECODED
from .echo import MIN_ECHO_LEN
from .masks import DIGEST_KEY_LABEL, MASK_PREFIX, MASK_SUFFIX
from .names import concrete_path, name_words
from .redactor import Redactor

__all__ = [
    "DIGEST_KEY_LABEL",
    "MASK_PREFIX",
    "MASK_SUFFIX",
    "MAX_DECODED",
    "MIN_ECHO_LEN",
    "Redactor",
    "concrete_path",
    "name_words",
]
