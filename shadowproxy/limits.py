"""File descriptor limits: how many a process may open, and how many of them the
client-facing server keeps for client connections.

Every client connection is a descriptor, and so is each upstream connection a request
in flight holds (plus the pooled idle ones), the channel and shadow sockets, log files
and, in the control process, the store. The common default soft limit, 1,024, is far
below what keep-alive clients hold open: :func:`raise_nofile` lifts the soft limit to
the hard one at start (children inherit it), and :func:`connection_limit` says how many
client connections a server keeps before it closes its oldest idle keep-alive ones
(:class:`~shadowproxy.http.server.Server`).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("shadowproxy")

NOFILE_CAP = 1_048_576        # never ask for more than this (an unlimited hard limit)
RESERVE_MIN = 64              # descriptors kept from client connections, at least


def raise_nofile(cap: int = NOFILE_CAP) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most ``cap``); → (old soft,
    new soft). Never lowers it; where the system refuses, the old one stays (logged)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:     # macOS caps it below an unlimited hard limit
        log.warning("cannot raise the open file limit from %d to %d: %s", soft, want, exc)
        return soft, soft
    log.info("open file limit raised from %d to %d", soft, want)
    return soft, want


def nofile() -> int:
    """The soft RLIMIT_NOFILE now (``NOFILE_CAP`` when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return NOFILE_CAP if soft == resource.RLIM_INFINITY else soft


def connection_limit(soft: int | None = None) -> int:
    """Client connections a server holds before it closes idle keep-alive ones to make
    room: the soft limit less a reserve of a quarter of it (at least ``RESERVE_MIN``)
    for everything else, above all the upstream connection each request in flight
    holds. 1,024 → 768; 65,536 → 49,152. A reserve cannot cover every connection
    being busy at once at a low limit: :func:`raise_nofile` is what gives room."""
    soft = nofile() if soft is None else soft
    return max(16, soft - max(RESERVE_MIN, soft // 4))
