"""A bounded copy of a response body: the first ``cap`` bytes, its size, its sha256 once cut.

Captures of one worker draw on a shared :class:`Budget`: when it is spent a capture
keeps no more bytes (the body is then compared by size and digest, marked
truncated) instead of the shadow being dropped. Memory stays bounded either way.
"""

from __future__ import annotations

import hashlib
from typing import Any


class Budget:
    """Bytes that the queued and in-flight shadows of one worker may hold together."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> int:
        """Up to ``n`` bytes; → how many were granted."""
        grant = min(n, self.limit - self.used)
        if grant <= 0:
            return 0
        self.used += grant
        return grant

    def take_all(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


MAX_PARTS = 16   # pieces kept as they came; beyond, one buffer (a trickle of tiny reads
                 # would otherwise hold ~40 bytes of object per byte of body)


class Capture:
    __slots__ = ("cap", "_parts", "_joined", "_kept", "size", "_hash", "_budget")

    def __init__(self, cap: int, budget: Budget | None = None) -> None:
        self.cap = cap
        self._parts: list[bytes | bytearray] = []
        self._joined: bytearray | None = None   # _parts[0] once they were joined
        self._kept = 0
        self.size = 0
        self._hash: Any = None     # started only once bytes go unkept (see sha256)
        self._budget = budget

    def feed(self, chunk: bytes | bytearray) -> None:
        self.size += len(chunk)
        h = self._hash
        if h is not None:
            h.update(chunk)
        room = self.cap - self._kept
        if room > 0:
            want = len(chunk) if len(chunk) <= room else room
            if self._budget is not None:
                got = self._budget.take(want)
                if got < want:
                    self.cap = self._kept + got   # the prefix must stay contiguous: stop here
                want = got
            if want:
                piece = chunk if want == len(chunk) else chunk[:want]
                joined = self._joined
                if joined is not None:
                    joined += piece
                elif len(self._parts) < MAX_PARTS:
                    self._parts.append(piece)
                else:
                    joined = self._joined = bytearray(b"".join(self._parts))
                    joined += piece
                    self._parts = [joined]
                self._kept += want
        if h is None and self.size > self._kept:
            # the first bytes not kept: from here on the digest is all that stays of
            # the whole body, so it is computed over everything seen
            h = self._hash = hashlib.sha256()
            for part in self._parts:
                h.update(part)
            h.update(chunk[want:] if room > 0 else chunk)

    @property
    def kept(self) -> int:
        return self._kept

    def release(self) -> None:
        """Give the kept bytes back to the budget (the capture is not handed on)."""
        if self._budget is not None and self._kept:
            self._budget.give(self._kept)
        self._kept = 0
        self._parts = []
        self._joined = None

    @property
    def body(self) -> bytes:
        return b"".join(self._parts)

    @property
    def truncated(self) -> bool:
        return self.size > self._kept

    @property
    def sha256(self) -> str:
        """Hex digest of the whole body when it was truncated; "" when :attr:`body` is
        the whole body (whoever needs its digest hashes it: most never do)."""
        return self._hash.hexdigest() if self._hash is not None else ""
