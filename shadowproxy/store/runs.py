"""Named runs: a replay's results kept apart from the live traffic's, read back by name.

``shadowproxy replay --run NAME`` writes and ``check``/``report --run NAME`` read the
run's own results. A run is a writer of its own, which both engines already keep
apart without a schema change: an SQLite store holds one writer's results, so a run
gets a file of its own beside the configured one (``results.db`` →
``results.run-NAME.db``); a PostgreSQL store labels every row and aggregate with its
writer's instance name, so a run writes and is read as the instance ``run:NAME``. No
pod or host name has a colon, and the reads of a PostgreSQL store leave the ``run:``
instances out unless asked for one (:data:`RUN_PREFIX`): a fleet's ``check`` never
counts a replay's results with the live traffic's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config

_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RUN_PREFIX = "run:"    # the instance label of a run in a PostgreSQL store
_POSTGRES = ("postgresql://", "postgres://")


def run_url(url: str, run: str) -> str:
    """The SQLite store URL of ``run`` beside ``url``'s file."""
    if url.startswith(_POSTGRES):
        return url
    if not url.startswith("sqlite:///") or url.startswith(("sqlite:///:memory:",
                                                            "sqlite:///file:")):
        raise ConfigError(f"--run needs a store file or PostgreSQL (store.url is {url!r})")
    base = url[len("sqlite:///"):]
    stem, dot, ext = base.rpartition(".")
    if not dot or "/" in ext:
        stem, ext = base, "db"
    return f"sqlite:///{stem}.run-{run}.{ext}"


def for_run(cfg: Config, run: str) -> tuple[Config, str | None]:
    """The configuration whose store is ``run``'s, and the instance to read (PostgreSQL;
    None for SQLite, whose run file holds the run alone)."""
    if not _RUN.fullmatch(run):
        raise ConfigError(f"{run!r} is not a run name (letters, digits and ._- , at most "
                          "100, starting with a letter or digit)")
    if cfg.store.url.startswith(_POSTGRES):
        return cfg.replace(instance=RUN_PREFIX + run), RUN_PREFIX + run
    store = dataclasses.replace(cfg.store, url=run_url(cfg.store.url, run))
    return cfg.replace(store=store), None

