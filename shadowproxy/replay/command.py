"""The ``replay`` subcommand: options to a configured :class:`~shadowproxy.replay.sender.Replayer`.

Exit codes: 0 the replay ran (the verdict is ``check --run``'s to give), 1 a recording
could not be read, or nothing could be sent, or nothing sent was compared, or the
candidate answered none of it, 2 usage,
130 interrupted (SIGINT or SIGTERM: no more requests were sent; those sent were
awaited, compared and stored).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import sys
import time
from typing import Any

from ..config import Config, parse_url
from ..errors import ConfigError, ShadowProxyError
from ..record import source
from ..store.open import times_started
from ..store.runs import for_run
from .pacing import pacer, parse_rate, parse_speed
from .progress import Progress
from .sender import Replayer

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130    # SIGINT/SIGTERM: stopped early, what was sent is stored
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _err(msg: str) -> None:
    print(f"shadowproxy replay: {msg}", file=sys.stderr)


def credentials(specs: list[str], env: Any = None) -> dict[str, str]:
    """``--header 'Authorization: Bearer ${TOKEN}'`` → {"authorization": "Bearer …"}."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for spec in specs:
        name, colon, value = spec.partition(":")
        name = name.strip()
        if not colon or not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ValueError(f"--header {spec!r}: expected 'Name: value'")

        missing = [v for v in _VAR.findall(value) if v not in env]
        if missing:
            raise ValueError(f"--header {name}: environment variable {missing[0]} is not set")
        value = _VAR.sub(lambda m: str(env[m.group(1)]), value.strip())
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"--header {name}: the value has a line break")
        out[name.lower()] = value
    return out


def configure(cfg: Config, args: Any) -> Config:
    """The replay's config: upstreams from the options, every request mirrored."""
    up = cfg.upstreams
    changes: dict[str, Any] = {}
    for name in ("candidate", "primary", "secondary"):
        value = getattr(args, name, None)
        if value is not None:
            try:
                changes[name] = parse_url(value)
            except ValueError as exc:
                raise ConfigError(f"--{name}: {exc}") from None
    up = dataclasses.replace(up, **changes)
    if up.candidate is None:
        raise ConfigError("no candidate: give --candidate URL or upstreams.candidate")
    conc = args.concurrency if args.concurrency is not None else cfg.mirror.concurrency
    if conc < 1:
        raise ConfigError("--concurrency must be at least 1")
    mirror = dataclasses.replace(cfg.mirror, enabled=True, sample=1.0, concurrency=conc,
                                 queue=max(cfg.mirror.queue, conc))
    return cfg.replace(upstreams=up, mirror=mirror)


def main(cfg: Config, args: Any) -> int:
    try:
        run = args.run or time.strftime("replay-%Y%m%dT%H%M%SZ", time.gmtime())
        cfg = configure(cfg, args)
        cfg, instance = for_run(cfg, run)
        creds = credentials(args.header)
        speed = parse_speed(args.speed) if args.speed else None
        rate = parse_rate(args.rate) if args.rate else None
    except (ConfigError, ValueError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    earlier = times_started(cfg, instance)
    if earlier:
        _err(f"run {run} already holds the results of {earlier} earlier replay(s), which "
             "check and report --run would count with this one's: give another --run name")
        return EXIT_USAGE
    try:
        items = source.Recordings(args.recordings)     # counted and checked: streamed below
    except ShadowProxyError as exc:
        _err(str(exc))
        return EXIT_FAIL
    if not items.total:
        _err("the recordings hold no request")
        return EXIT_FAIL
    if args.primary is None and not cfg.redact.key_env and items.masked:
        _err("warning: the recorded answers hold masks, and redact.key_env is not set: "
             "this replay masks the candidate's answers with a random key, so every "
             "masked field differs; set redact.key_env to the recording's key")
    progress = Progress(items.total)
    replayer = Replayer(cfg, items, live_primary=args.primary is not None, creds=creds,
                        offsets=pacer(speed=speed, rate=rate), total=items.total,
                        on_progress=lambda done, diffs, final: progress.update(
                            done, diffs, final=final))
    handlers = logging.getLogger().handlers
    for h in handlers:          # warnings start a line of their own, not the bar's end
        h.addFilter(progress)
    try:
        summary = asyncio.run(replayer.run())
    finally:
        for h in handlers:
            h.removeFilter(progress)
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(summary.verdicts.items())) or "none"
    print(f"run {run}: {summary.sent} of {summary.total} requests sent in "
          f"{summary.elapsed:.1f}s; verdicts: {verdicts}")
    print(f"outcomes: {', '.join(f'{k} {v}' for k, v in summary.outcomes.items())}")
    if summary.interrupted:
        print(f"interrupted: {summary.total - summary.done} of {summary.total} requests "
              f"were not sent; the results of those sent are stored under run {run}")
    print(f"check it: shadowproxy check -c {args.config} --run {run}")
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.sent and not summary.verdicts:
        _err("no request sent was compared (a live primary that cannot be reached? see "
             "the outcomes above)")
        return EXIT_FAIL
    failed = sum(n for k, n in summary.outcomes.items() if k.startswith("candidate_error"))
    if summary.sent and failed >= summary.sent:
        _err(f"the candidate answered none of the {summary.sent} requests sent (a candidate "
             "that cannot be reached? see the outcomes above)")
        return EXIT_FAIL
    return EXIT_OK if summary.sent else EXIT_FAIL
