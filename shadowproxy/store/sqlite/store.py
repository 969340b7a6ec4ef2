"""The SQLite result store (the default).

URL: ``sqlite:///PATH`` (``sqlite:///./results.db`` and ``sqlite:///results.db`` are
relative to the working directory, ``sqlite:////var/lib/sp.db`` is absolute, as in
SQLAlchemy), ``sqlite:///file:PATH?mode=ro`` passes an SQLite URI through, and
``sqlite:///:memory:`` is a private in-memory store (one connection; tests).

Durability
    The database runs in WAL mode with ``synchronous=NORMAL``: a transaction is
    durable against a crash of the process (even ``kill -9``) as soon as it has
    committed, because the WAL is written before the commit returns; only a power
    loss or OS crash can lose the last transactions before a checkpoint (the file
    itself stays consistent). This trades a little of the durability of
    ``synchronous=FULL`` for much faster commits, which is right for shadow results.
    Readers never block the writer and the writer never blocks readers.

Concurrency
    One writer (:class:`~shadowproxy.store.writer.StoreWriter`) per process;
    several processes may write the same file (a 5 s busy timeout serialises them).
    A :class:`SqliteStore` object is thread-safe (one lock around its connection);
    readers in other threads or processes should open their own (``readonly=True``).

Schema (version 5; the ``schema_version`` table holds the versions a store has been
through; :mod:`.migrations` brings an older store forward when it is opened for writing)
    ``exchanges``    one row per judged exchange: the endpoint, the redacted query,
                     status/latency/size/error of each upstream, the verdict and the
                     difference counts. No headers, no bodies.
    ``differences``  one row per primary-vs-candidate difference: section, path, field
                     (indexes folded), kind, the redacted values ``a``/``b`` as short
                     JSON text (at most
                     :data:`~shadowproxy.store.documents.DIFF_VALUE_MAX` bytes),
                     ``noise``.
    ``samples``      the whole redacted exchange (orjson blob: request, every response
                     with headers and decoded text body (base64 when not UTF-8, at most
                     :data:`~shadowproxy.store.documents.SAMPLE_BODY_MAX` bytes each)
                     and ``sha256``, the body's digest keyed with the run's redaction
                     key (HMAC-SHA256, see
                     :meth:`~shadowproxy.redact.redactor.Redactor.body_digest`;
                     never a plain SHA-256), the differences, the secondary
                     differences) for the first ``samples_per_field`` exchanges of every
                     (endpoint, field); also the first K ``match`` and ``error``
                     exchanges of every endpoint (pseudo-fields ``#match``, ``#error``).
                     Never for a ``summary_only`` result (redacted only as far as the
                     summary needs, when :meth:`SqliteStore.keeps_sample` said no).
    ``sample_keys``  which (endpoint, field) each sample was kept for.
    ``rollups``      per minute and endpoint (:mod:`shadowproxy.store.rollup`):
                     exchanges, verdict counts, 5xx and error counts, failures of both
                     sides on the same exchange, latency sums, a latency sketch per
                     side and a bottom-k sample of latency pairs. Kept by age only (not
                     by the size limit), so the figures of a window outlive its rows.
    ``field_rollups`` per minute, endpoint, field and kind: difference rows, rows
                     judged noise, exchanges.
    ``diff_sets``    per minute and endpoint: diff exchanges per set of real fields.
                     Readers (:mod:`.reads`, :mod:`.rollups`) answer from these three,
                     plus the rows of a window's ragged ends (under a minute each).
    ``hours``, ``hour_rollups``, ``hour_rollup_blobs``, ``hour_field_rollups``,
    ``hour_diff_sets``   the same aggregates per hour, for the hours that are over,
                     compacted by the writer from their minutes; a window's whole hours
                     are read from them (:mod:`shadowproxy.store.hours`).
    ``outcomes``     per minute, endpoint, outcome and reason: the proxy's request
                     outcome counters (upserted by adding).
    ``noise``        the noise learner's evidence per (endpoint, field).

Retention (:meth:`SqliteStore.cleanup`, details in :mod:`.retention`)
    Deletes the oldest exchanges (with their differences and samples) older than the
    age limit, and the per-minute aggregates and outcome counters whose minute is all
    older (by age only); then, once the used size
    (``(page_count - freelist_count) * page_size``) is above the size limit, the
    oldest exchanges down to 90 % of it, carrying on across calls until there (a full
    store is trimmed once by a tenth, not a little every minute); in transactions of
    ``chunk`` (500) exchanges so the write lock is never held long. Then it gives the
    freed pages back (``auto_vacuum=INCREMENTAL``, ``PRAGMA incremental_vacuum`` in
    8 MiB transactions, leaving 2 % of the pages free for the writes) so the file
    shrinks, and resets the WAL (``wal_checkpoint(TRUNCATE)``, never waiting on a
    reader). The file stays within about the size limit + 2 % + what is written
    between two cleanups; the WAL within 64 MiB + what is written during the longest
    read transaction (a reader's snapshot keeps the WAL from being reset until it
    ends; the writer resets it within a second after). Stores made before incremental
    vacuum are switched by a one-time VACUUM when opened for writing under 256 MiB,
    larger ones by :meth:`SqliteStore.vacuum` (``shadowproxy store vacuum``): see
    :mod:`.connection`.
"""

from __future__ import annotations

from typing import Any

from .reads import ReadsMixin
from .retention import RetentionMixin
from .writes import WritesMixin


class SqliteStore(WritesMixin, RetentionMixin, ReadsMixin):
    """A result store in one SQLite file. See the module docstring.

    The connection and its plumbing are in :mod:`.connection`, the writes in
    :mod:`.writes`, the retention in :mod:`.retention`, the reads in :mod:`.reads`."""

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
