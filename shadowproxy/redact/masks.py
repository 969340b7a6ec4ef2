"""The mask format and the keyed digests: what a secret is replaced by.

A secret becomes ``[redacted:<12 hex of HMAC-SHA256(key, value)>]``; a body's digest
becomes ``HMAC-SHA256(digest key, SHA-256 of the body)``, the digest key derived from
the run's key with :data:`DIGEST_KEY_LABEL`. :class:`Masker` holds the key and makes
both (the :class:`~shadowproxy.redact.redactor.Redactor` is a Masker), and keeps the
masks of the last :data:`MASK_CACHE` short values it masked and the keyed digests of
as many body digests (the same ones come back).
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import orjson

MASK_PREFIX = "[redacted:"
MASK_SUFFIX = "]"
DIGEST_KEY_LABEL = b"shadowproxy body digest"   # derives the key of body digests
# the masks of short values kept (a token, a cookie, a password come back with every
# request): values of at most MASK_CACHED_LEN characters, MASK_CACHE of them at most
MASK_CACHE = 4096
MASK_CACHED_LEN = 256


class Masker:
    """Masks and keyed body digests under one key. Thread-safe; cheap to share."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the redaction key must not be empty")
        self._key = bytes(key)
        self._hmac = hmac.new(self._key, digestmod="sha256")
        self._masks: dict[str, str] = {}
        self._digests: dict[bytes, str] = {}     # keyed digests of the last bodies' digests
        # body digests under a key of their own (derived from the run's key): a mask,
        # which anyone can have made of a value they send, never helps guess a digest
        self._digest_hmac = hmac.new(
            hmac.new(self._key, DIGEST_KEY_LABEL, "sha256").digest(), digestmod="sha256")

    # -- the key

    @staticmethod
    def generate_key() -> bytes:
        """A fresh random 32-byte key (what a run uses when ``redact.key_env`` is unset)."""
        return os.urandom(32)

    @property
    def key(self) -> bytes:
        return self._key

    # -- the mask

    def mask(self, value: str) -> str:
        """``[redacted:<12 hex of HMAC-SHA256(key, value)>]``; equal values, equal masks."""
        m = self._masks.get(value)
        if m is not None:
            return m
        # a copy of the keyed HMAC: no re-keying, and unlike hmac.digest() it keeps the
        # GIL (releasing it on every mask hands the store writer's thread the core)
        h = self._hmac.copy()
        h.update(value.encode("utf-8", "surrogatepass"))
        m = MASK_PREFIX + h.digest()[:6].hex() + MASK_SUFFIX
        if len(value) <= MASK_CACHED_LEN:
            masks = self._masks
            if len(masks) >= MASK_CACHE:
                masks.clear()
            masks[value] = m
        return m

    def body_digest(self, sha256: str) -> str:
        """The stored form of a body's digest: ``HMAC-SHA256(digest key, digest)`` in hex,
        where ``sha256`` is the hex SHA-256 of the whole body ("" stays ""). Equal bodies,
        equal keyed digests; without the key a guessed body cannot be checked."""
        if not sha256:
            return sha256
        try:
            raw = bytes.fromhex(sha256)
        except ValueError:       # not a hex digest: keyed all the same
            raw = sha256.encode("utf-8", "surrogatepass")
        keyed = self._digests.get(raw)
        if keyed is None:
            h = self._digest_hmac.copy()
            h.update(raw)
            keyed = h.hexdigest()
            if len(self._digests) >= MASK_CACHE:
                self._digests.clear()
            self._digests[raw] = keyed
        return keyed

    def _fingerprint(self, value: dict[str, Any]) -> dict[str, Any]:
        """A ``body.bytes`` difference's ``{"size", "sha256", "truncated"}`` with the
        digest keyed."""
        digest = value.get("sha256")
        if isinstance(digest, str) and digest:
            return {**value, "sha256": self.body_digest(digest)}
        return value

    def _mask_any(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, bytes):
            return self.mask(value.decode("utf-8", "replace"))
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                                default=str).decode()
        except TypeError:
            text = repr(value)
        return self.mask(text)

    @staticmethod
    def is_mask(value: Any) -> bool:
        return isinstance(value, str) and value.startswith(MASK_PREFIX) and \
            value.endswith(MASK_SUFFIX) and len(value) == len(MASK_PREFIX) + 12 + 1

