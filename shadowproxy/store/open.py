"""``open_store(url)``: the store a URL names (the one place that knows the engines)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import StoreError
from .base import Store
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from ..config import Config

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str, *, readonly: bool = False, samples_per_field: int = 5,
               instance: str | None = None, password: str | None = None,
               read_instance: str | None = None) -> Store:
    """Open (creating when writable and missing) the store at ``url``.

    ``sqlite:///./results.db`` (relative), ``sqlite:////abs/results.db``,
    ``sqlite:///file:results.db?mode=ro`` (an SQLite URI), ``sqlite:///:memory:``;
    ``postgresql://USER@HOST:PORT/DB`` (or ``postgres://``): a PostgreSQL database,
    written as ``instance`` (default ``POD_NAME`` or the host name) with ``password``
    (else the URL's), read across all instances or only ``read_instance``.
    Raises :class:`StoreError` with a message naming the store and the cause (never the
    password)."""
    if not isinstance(url, str) or not url:
        raise StoreError(f"no store URL given (got {url!r}); expected sqlite:///PATH "
                         "or postgresql://USER@HOST:PORT/DB")
    if url.startswith(("sqlite:", "memory:")):
        if read_instance is not None:
            raise StoreError("an SQLite store holds one instance's results: filtering by "
                             "instance needs a postgresql:// store")
        return SqliteStore(url, readonly=readonly, samples_per_field=samples_per_field)
    if url.startswith(POSTGRES_SCHEMES):
        from .postgres import PostgresStore

        return PostgresStore(url, readonly=readonly, samples_per_field=samples_per_field,
                             instance=instance, password=password,
                             read_instance=read_instance)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(f"unsupported store URL {url!r}: scheme {scheme!r} is not supported "
                     "(expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB)")


def store_options(cfg: Config) -> dict[str, str | None]:
    """The :func:`open_store` keywords a configuration gives: the writing instance and
    the password from ``store.password_env`` (the environment is read here, at open)."""
    import os

    env = cfg.store.password_env
    return {"instance": cfg.instance, "password": os.environ.get(env) if env else None}


def open_configured(cfg: Config, *, readonly: bool = False,
                    read_instance: str | None = None) -> Store:
    """:func:`open_store` of a configuration's store."""
    return open_store(cfg.store.url, readonly=readonly,
                      samples_per_field=cfg.store.samples_per_field,
                      read_instance=read_instance, **store_options(cfg))


def times_started(cfg: Config, instance: str | None) -> int | None:
    """How many replays the run of ``cfg`` (:func:`~shadowproxy.store.runs.for_run`'s)
    holds: a run name used again would mix an earlier replay's results into this
    one's verdict, and a name that holds none is a typo. None when its store does
    not exist yet or cannot be read (whoever opens it next says why)."""
    url = cfg.store.url
    if not url.startswith(POSTGRES_SCHEMES) and not os.path.exists(url[len("sqlite:///"):]):
        return None
    try:
        store = open_configured(cfg, readonly=True, read_instance=instance)
    except StoreError:
        return None
    try:
        return store.outcome_counts().get("run", {}).get("started", 0)
    except StoreError:
        return None
    finally:
        store.close()
