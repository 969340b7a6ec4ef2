"""Command line: ``shadowproxy run|compare|mirror|validate|check|report|store|replay``
(also ``python -m shadowproxy``).

Exit codes: 0 success; 1 failure (a failed check, a runtime error); 2 usage or
config error; 3 inconclusive check.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import __version__
from .config import Config, load
from .errors import ConfigError, ShadowProxyError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shadowproxy",
                                description="A production traffic shadowing proxy.")
    p.add_argument("--version", action="version", version=f"shadowproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True, metavar="FILE")
    run.add_argument("--workers", type=int, default=None,
                     help="proxy processes (default: workers: in the config, else one per core)")

    cmp_ = sub.add_parser("compare", help="run comparators for a fleet: read the exchanges "
                          "the sidecars put on transport.url's stream, compare, store")
    cmp_.add_argument("-c", "--config", required=True, metavar="FILE")
    cmp_.add_argument("--processes", type=int, default=1, metavar="N",
                      help="comparator processes (default 1)")

    mir = sub.add_parser("mirror", help="switch mirroring on or off for every sidecar that "
                         "shares transport.url (within a second)")
    mir.add_argument("state", choices=("on", "off"))
    mir.add_argument("--sample", type=float, default=None, metavar="R",
                     help="the sample rate 0..1 (default: each sidecar keeps its own)")
    mir.add_argument("-c", "--config", required=True, metavar="FILE")

    val = sub.add_parser("validate", help="check a config file (exit 0 valid, 2 invalid)")
    val.add_argument("-c", "--config", required=True, metavar="FILE")

    chk = sub.add_parser("check", help="evaluate the config's canary checks against the store")
    chk.add_argument("-c", "--config", required=True, metavar="FILE")
    chk.add_argument("--since", default=None, help="window such as 1h (default: all)")
    chk.add_argument("--from", dest="from_", default=None, metavar="T")
    chk.add_argument("--to", default=None, metavar="T")
    chk.add_argument("--endpoint", default="*", metavar="GLOB")
    chk.add_argument("--instance", default=None, metavar="NAME",
                     help="only this instance's traffic (a fleet's: a sidecar's; PostgreSQL "
                          "store; default: all instances together)")
    chk.add_argument("--format", choices=("text", "json", "junit"), default="text")
    chk.add_argument("-o", "--output", default=None, metavar="FILE")
    chk.add_argument("--watch", action="store_true",
                     help="look again every --interval until decided: exit 1 the moment a "
                          "regression is shown, 0 the moment every check passes, 3 at "
                          "--timeout")
    chk.add_argument("--interval", default="10s", metavar="DURATION",
                     help="between looks with --watch (default 10s)")
    chk.add_argument("--timeout", default="30m", metavar="DURATION",
                     help="give up with exit 3 after this long with --watch (default 30m)")

    rep = sub.add_parser("report", help="write a report of what the shadow saw")
    rep.add_argument("-c", "--config", required=True, metavar="FILE")
    rep.add_argument("--since", default=None, help="window such as 6h (default: 24h; "
                     "with --run: the whole run)")
    rep.add_argument("--format", choices=("html", "md", "markdown", "json"), default="html",
                     help="md and markdown are the same")
    rep.add_argument("-o", "--output", default=None, metavar="FILE")
    rep.add_argument("--webhook", default=None, metavar="URL")
    rep.add_argument("--instance", default=None, metavar="NAME",
                     help="only this instance's traffic (a fleet's: a sidecar's; PostgreSQL "
                          "store; default: all instances together)")

    from .replay.args import add_parser as add_replay
    add_replay(sub)
    for sp in (chk, rep):
        sp.add_argument("--run", default=None, metavar="NAME",
                        help="only the results `shadowproxy replay --run NAME` stored")

    sto = sub.add_parser("store", help="store maintenance: migrate (upgrade the schema to "
                         "this version's, keeping every result), vacuum (rewrite the file "
                         "without its free pages; switches an old store to incremental "
                         "vacuum), compact (the hours of the aggregates that are over, now; "
                         "the writer of `shadowproxy run` does it as it goes)")
    sto.add_argument("action", choices=("migrate", "vacuum", "compact"))
    sto.add_argument("-c", "--config", required=True, metavar="FILE")
    return p


def _store_main(cfg: Config, action: str) -> int:
    from .store.open import open_configured
    store = open_configured(cfg)            # opened for writing: migrations apply here
    try:
        if action == "migrate":
            print(f"{store.url}: schema version {store.info().schema_version}")
            return EXIT_OK
        if action == "compact":
            return _compact(cfg, store)
        vacuum = getattr(store, "vacuum", None)
        if vacuum is None:
            print(f"shadowproxy: the store {cfg.store.url} has no vacuum", file=sys.stderr)
            return EXIT_USAGE
        before, after = vacuum()
    finally:
        store.close()
    print(f"{cfg.store.url}: vacuumed, file and WAL {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    return EXIT_OK


def _compact(cfg: Config, store: Any) -> int:
    import time
    age = cfg.store.retention_age
    t0, n = time.monotonic(), 0
    while True:
        now = time.time()
        n += store.compact(now, now - age if age else None, max_hours=24)
        if not store.compact_pending:
            break
    print(f"{store.url}: {n} hours compacted in {time.monotonic() - t0:.1f} s")
    return EXIT_OK


def _mirror_main(cfg: Config, enabled: bool, sample: float | None) -> int:
    if sample is not None and not 0.0 <= sample <= 1.0:
        print("shadowproxy: --sample must be between 0 and 1", file=sys.stderr)
        return EXIT_USAGE
    if cfg.transport.url is None:
        print(f"shadowproxy: {cfg.where('transport.url')}: not set; switch one instance "
              "with PUT /api/v1/mirror on its admin server", file=sys.stderr)
        return EXIT_USAGE
    import asyncio

    from redis.exceptions import RedisError

    from .transport.client import Keys, safe_url
    from .transport.switch import set_switch
    try:
        asyncio.run(set_switch(cfg.transport, enabled, sample))
    except (RedisError, OSError) as exc:
        print(f"shadowproxy: {safe_url(cfg.transport.url)}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    rate = "" if sample is None else f" at sample {sample:g}"
    print(f"mirroring {'on' if enabled else 'off'}{rate} for every sidecar on "
          f"{Keys.of(cfg.transport).mirror}")
    return EXIT_OK


def _load(path: str) -> Config:
    return load(path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        print(f"shadowproxy: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "validate":
        print(f"{args.config}: ok")
        return EXIT_OK
    if args.command in ("check", "report") and args.run is not None:
        if args.instance is not None:
            print("shadowproxy: --run and --instance cannot be given together",
                  file=sys.stderr)
            return EXIT_USAGE
        from .store.open import times_started
        from .store.runs import for_run
        try:
            cfg, args.instance = for_run(cfg, args.run)
        except ConfigError as exc:
            print(f"shadowproxy: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if times_started(cfg, args.instance) == 0:     # a store without that run
            print(f"shadowproxy {args.command}: no run {args.run} in the store (see "
                  "`shadowproxy replay --run NAME`)", file=sys.stderr)
            return EXIT_USAGE
    try:
        if args.command == "run":
            from .control.supervisor import run
            if args.workers is not None and args.workers < 1:
                print("shadowproxy: --workers must be at least 1", file=sys.stderr)
                return EXIT_USAGE
            return run(cfg, args.workers)
        if args.command == "compare":
            if args.processes < 1:
                print("shadowproxy: --processes must be at least 1", file=sys.stderr)
                return EXIT_USAGE
            from .transport.pool import run_pool
            return run_pool(cfg, args.processes)
        if args.command == "mirror":
            return _mirror_main(cfg, args.state == "on", args.sample)
        if args.command == "check":
            from .checks import main as check_main
            return check_main(cfg, args)
        if args.command == "report":
            from .report import main as report_main
            return report_main(cfg, args)
        if args.command == "store":
            return _store_main(cfg, args.action)
        if args.command == "replay":
            from .replay.command import main as replay_main
            return replay_main(cfg, args)
    except ConfigError as exc:
        print(f"shadowproxy: invalid config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShadowProxyError as exc:
        print(f"shadowproxy: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_USAGE  # pragma: no cover
