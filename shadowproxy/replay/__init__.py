"""``shadowproxy replay``: recorded production traffic sent to a candidate and compared.

The recordings (:mod:`shadowproxy.record.source`) are sent to the candidate (and to a
live primary and secondary when given; otherwise the recorded answer is primary's) by
the same :class:`~shadowproxy.proxy.mirror.Mirror` that live shadows go through, and
compared, masked and stored by the same control-process stages, under a run's name
(:mod:`shadowproxy.store.runs`), so that ``check --run NAME`` and ``report --run NAME``
read them as they read live results. ``pacing`` decides when each request goes,
``progress`` shows how far it is, ``sender`` does the sending.
"""
