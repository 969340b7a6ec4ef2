"""The proxy stage, run by each worker process (``shadowproxy-wN``).

``server`` accepts clients, ``handler`` sends each request to primary and streams
its answer back, ``tee`` hands mirrored requests and primary's answers to a shadow
process, ``policy`` and ``routes`` decide what is eligible and which endpoint it is.
The shadow process runs ``mirror`` (with ``capture``, ``breaker``), which is why it
lives here beside the request path it copies.
"""
