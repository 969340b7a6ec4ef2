"""A fixed, seeded corpus of ~5 KB JSON response pairs for the comparator benchmark.

Kinds of pair:

* ``identical``: same body bytes; ``Date`` and ``X-Request-Id`` headers differ
  (ignored by default);
* ``small``: a few fields changed (a price, a name, a flag, a tag appended);
* ``noisy``: only ``meta.generated_at`` (timestamp) and ``meta.request_id``
  (random id) differ.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import orjson

from shadowproxy.models import ResponseRecord

_WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
          "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
          "sierra", "tango", "uniform", "victor", "whiskey"]


def _ts(rng: random.Random) -> str:
    return (f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
            f"{rng.randint(0, 999):03d}Z")


def document(rng: random.Random, items: int = 21) -> dict[str, Any]:
    """One ~5 KB API response."""
    return {
        "meta": {
            "generated_at": _ts(rng),
            "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "version": "2.3.1", "page": 1, "per_page": items, "total": rng.randint(100, 5000),
        },
        "user": {
            "id": rng.randint(1, 10**6), "name": " ".join(rng.sample(_WORDS, 2)).title(),
            "email": f"{rng.choice(_WORDS)}@example.com", "active": True,
            "roles": rng.sample(["admin", "editor", "viewer", "billing"], 2),
            "score": round(rng.uniform(0, 100), 2), "created_at": _ts(rng),
        },
        "items": [
            {
                "id": rng.randint(1, 10**7),
                "sku": f"SKU-{rng.getrandbits(32):08X}",
                "name": " ".join(rng.sample(_WORDS, 3)),
                "price": round(rng.uniform(1, 500), 2),
                "qty": rng.randint(0, 20),
                "in_stock": rng.random() > 0.2,
                "tags": rng.sample(_WORDS, 3),
                "etag": f"{rng.getrandbits(64):016x}",
                "attrs": {"color": rng.choice(_WORDS), "size": rng.choice("SMLX"),
                          "weight_g": rng.randint(10, 5000)},
            }
            for _ in range(items)
        ],
        "links": {"self": "/api/v2/items?page=1", "next": "/api/v2/items?page=2"},
    }


def _headers(rng: random.Random, size: int) -> tuple[tuple[str, str], ...]:
    return (
        ("Content-Type", "application/json; charset=utf-8"),
        ("Content-Length", str(size)),
        ("Date", f"Tue, 0{rng.randint(1, 9)} Jan 2024 10:{rng.randint(10, 59)}:00 GMT"),
        ("Server", "nginx"),
        ("X-Request-Id", str(uuid.UUID(int=rng.getrandbits(128)))),
        ("Cache-Control", "private, max-age=0"),
        ("Vary", "Accept-Encoding"),
    )


def record(rng: random.Random, value: Any) -> ResponseRecord:
    body = orjson.dumps(value)
    return ResponseRecord(200, "OK", _headers(rng, len(body)), body, len(body))


def _small_change(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    new = orjson.loads(orjson.dumps(doc))
    items = new["items"]
    items[rng.randrange(len(items))]["price"] = round(rng.uniform(1, 500), 2)
    items[rng.randrange(len(items))]["name"] += " v2"
    it = items[rng.randrange(len(items))]
    it["in_stock"] = not it["in_stock"]
    items[rng.randrange(len(items))]["tags"].append("new")
    return new


def _noisy_change(rng: random.Random, doc: dict[str, Any]) -> dict[str, Any]:
    new = orjson.loads(orjson.dumps(doc))
    new["meta"]["generated_at"] = _ts(rng)
    new["meta"]["request_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
    return new


def corpus(kind: str, n: int = 200,
           seed: int = 1234) -> list[tuple[ResponseRecord, ResponseRecord]]:
    """``n`` pairs of ``kind`` (identical, small, noisy)."""
    rng = random.Random(f"{seed}-{kind}")
    pairs = []
    for _ in range(n):
        doc = document(rng)
        if kind == "identical":
            other = doc
        elif kind == "small":
            other = _small_change(rng, doc)
        elif kind == "noisy":
            other = _noisy_change(rng, doc)
        else:
            raise ValueError(f"unknown corpus kind {kind!r}")
        pairs.append((record(rng, doc), record(rng, other)))
    return pairs
