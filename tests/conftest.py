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
