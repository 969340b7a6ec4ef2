"""The fleet's transport: sidecars hand exchanges to comparators over Redis Streams.

:mod:`.wire` (the versioned, documented encoding of an exchange; never pickle),
:mod:`.client` (the connection and the key names), :mod:`.scripts` (what runs
atomically in Redis), :mod:`.publisher` (a sidecar's shadow process: redacted
exchanges onto the stream, never waiting), :mod:`.consumer` and :mod:`.pool`
(``shadowproxy compare``: the consumer group, acknowledging after the store commits),
:mod:`.switch` (``shadowproxy mirror on|off`` for every sidecar), :mod:`.info` (the
stream's state for the admin API and metrics). See docs/fleet.md.
"""
