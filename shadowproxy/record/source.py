"""Recorded exchanges read from files: GoReplay files (plain or ``.gz``) and HAR 1.2.

Each :class:`Recorded` is a request and, when the file has it, the answer production
gave then (the reference a replay compares the candidate with when no live primary is
given). Replayed-response payloads (GoReplay's type 3) are not references and are
skipped. The items come sorted by the time the request started, so a replay can keep
the recorded spacing.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterable

from ..errors import ShadowProxyError
from ..models import ResponseRecord
from . import goreplay
from .har import read_har
from .recorded import Recorded

log = logging.getLogger("shadowproxy.record")


def _goreplay(path: str) -> list[Recorded]:
    out: dict[str, Recorded] = {}
    answers: dict[str, ResponseRecord] = {}
    problems: list[str] = []
    payloads = 0
    with goreplay.open_recording(path) as fh:
        try:
            for p in goreplay.read_payloads(fh, problems):
                payloads += 1
                try:
                    if p.kind == goreplay.REQUEST:
                        req, target = goreplay.parse_request(p.data)
                        out[p.id] = Recorded(p.id, p.timestamp / 1e9, req, target, None)
                    elif p.kind == goreplay.RESPONSE:
                        answers[p.id] = goreplay.parse_response(p.data, p.latency)
                except ValueError as exc:
                    problems.append(f"payload {payloads} (id {p.id}): {exc}; skipped")
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            if not payloads:
                raise ShadowProxyError(f"{path}: not a readable gzip file ({exc})") from None
            problems.append(f"after payload {payloads}: the compressed file is cut short "
                            f"({exc}); what follows is lost")
    if not payloads and problems:
        raise ShadowProxyError(f"{path}: not a GoReplay file ({problems[0]})")
    for problem in problems:
        log.warning("%s: %s", path, problem)
    for id_, rec in out.items():
        rec.response = answers.get(id_)
    return list(out.values())


def is_har(path: str) -> bool:
    if path.endswith(".har"):
        return True
    if path.endswith((".gor", ".gz", ".log")):
        return False
    with open(path, "rb") as fh:
        return fh.read(64).lstrip().startswith(b"{")


def load(paths: Iterable[str]) -> list[Recorded]:
    """Every recorded exchange of ``paths``, sorted by start time."""
    items: list[Recorded] = []
    for path in paths:
        try:
            if is_har(path):
                items.extend(read_har(path))
            else:
                items.extend(_goreplay(path))
        except OSError as exc:
            raise ShadowProxyError(f"cannot read recording {path}: {exc.strerror or exc}") \
                from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ShadowProxyError(f"{path}: not a HAR 1.2 file ({exc})") from None
    items.sort(key=lambda r: r.started)
    return items
