"""The ``replay`` subcommand's options, without importing what it runs (every other
command builds the same parser, and the sender pulls in aiohttp: ~0.3 s).
"""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    rp = sub.add_parser("replay", help="send recorded traffic (GoReplay files, HAR) to a "
                        "candidate, compare and store the results under a run name")
    rp.add_argument("-c", "--config", required=True, metavar="FILE")
    rp.add_argument("recordings", nargs="+", metavar="RECORDING",
                    help="GoReplay files (.gor, .gor.gz) or HAR 1.2 files (.har)")
    rp.add_argument("--candidate", default=None, metavar="URL",
                    help="default: upstreams.candidate")
    rp.add_argument("--primary", default=None, metavar="URL", help="a live primary to "
                    "compare with (default: the recorded answers)")
    rp.add_argument("--secondary", default=None, metavar="URL",
                    help="a second live copy of primary, to learn noise")
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", default=None, metavar="FACTOR",
                      help="keep the recorded spacing, sped up by FACTOR (2x)")
    pace.add_argument("--rate", default=None, metavar="N/s",
                      help="a fixed rate (500/s); default: as fast as --concurrency allows")
    rp.add_argument("--concurrency", type=int, default=None, metavar="N",
                    help="requests in flight at most (default: mirror.concurrency)")
    rp.add_argument("--run", default=None, metavar="NAME",
                    help="the run's name, for check/report --run (default: replay-TIME)")
    rp.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="a credential put where the recording has a mask; ${VAR} is "
                         "read from the environment (repeatable)")
