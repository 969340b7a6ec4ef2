"""Fixtures shared by the suites."""

from __future__ import annotations

import pytest

from shadowproxy.demo.upstreams import make_app
from tests.support import Upstream


@pytest.fixture
async def upstreams():
    """The demo's primary, candidate and secondary on loopback (see demo_upstreams)."""
    ups = {role: await Upstream(make_app(role)).start()
           for role in ("primary", "candidate", "secondary")}
    yield ups
    for u in ups.values():
        await u.stop()


# a PostgreSQL for the session (started on first use) and a fresh database per test
from tests.pg_server import pg_url, postgres  # noqa: E402, F401

# a redis-server of each test's own (the fleet's transport)
from tests.redis_server import redis  # noqa: E402, F401


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.server)])
def store_url(request, tmp_path) -> str:
    """A new store's URL on each engine: an SQLite file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.db'}"
    return request.getfixturevalue("pg_url")
