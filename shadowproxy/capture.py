"""A bounded copy of a response body: the first ``cap`` bytes, the size and a running sha256."""

from __future__ import annotations

import hashlib


class Capture:
    __slots__ = ("cap", "_parts", "_kept", "size", "_hash")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self._kept = 0
        self.size = 0
        self._hash = hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._hash.update(chunk)
        room = self.cap - self._kept
        if room > 0:
            part = chunk if len(chunk) <= room else chunk[:room]
            self._parts.append(part)
            self._kept += len(part)

    @property
    def body(self) -> bytes:
        return b"".join(self._parts)

    @property
    def truncated(self) -> bool:
        return self.size > self._kept

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()
