"""One exception tree for everything shadowproxy raises on purpose::

    ShadowProxyError
    ├── ConfigError        a configuration file is malformed (file, line and key named)
    ├── StoreError         the result store cannot be opened, read or written
    │   └── StoreUnavailable   for now: the server is down, restarting or unreachable
    │                      (the writer keeps the batch and retries it with backoff)
    ├── DeliveryError      a report could not be delivered (report/deliver.py)
    ├── ProtocolError      bytes that are not acceptable HTTP/1.1, from either side: the
    │   │                  parser shared by requests and responses raises it; from an
    │   │                  upstream it is counted ``protocol``
    │   └── BadRequest     a client's request the server answers itself (``status``:
    │                      400, 414, 431, 501, 505; http/server.py)
    └── UpstreamError      an exchange with an upstream failed; ``kind`` is the counted
        ├── ConnectError   label (primary: 502/504; a shadow: candidate_error{kind})
        ├── ResetError
        └── TooLargeError

A handler of an upstream's failure catches ``(UpstreamError, ProtocolError)``; the
admin API's ``ApiError`` (a bad query, answered 4xx) is its own, never raised past it.
Anything else that escapes is a bug, logged with its traceback where it is caught.
"""

from __future__ import annotations


class ShadowProxyError(Exception):
    """Base of every error shadowproxy raises deliberately."""


class ConfigError(ShadowProxyError):
    """A configuration file is malformed. The message names file, line and key."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.key = key
        where = ""
        if file is not None:
            where = file
            if line is not None:
                where += f":{line}"
            where += ": "
        if key:
            where += f"{key}: "
        super().__init__(where + message)
        self.reason = message


class StoreError(ShadowProxyError):
    """The result store cannot be opened, read or written. ``cause``: what makes two
    errors "the same cause" for the writer's once-per-cause log (a database server's
    error class, e.g. ``DiskFull (SQLSTATE 53100)``, where the text names a file or a
    table that differs from one statement to the next); None: the text itself."""

    def __init__(self, *args: object, cause: str | None = None) -> None:
        super().__init__(*args)
        self.cause = cause


class StoreUnavailable(StoreError):
    """The store cannot be reached for now (a database server down, restarting or
    unreachable, its connection lost): the same write may succeed later, so the
    store writer keeps the batch and retries it, where it drops one for any other
    :class:`StoreError` (a full disk, a read-only database, bad data)."""


class ProtocolError(ShadowProxyError):
    """The bytes received are not a valid HTTP/1.x message (or exceed the limits)."""

    kind = "protocol"


class UpstreamError(ShadowProxyError):
    """A failed exchange with an upstream; ``kind`` is the counted label."""

    kind = "reset"


class ConnectError(UpstreamError):
    kind = "connect"


class ResetError(UpstreamError):
    """The connection ended before the response was complete."""

    kind = "reset"

    def __init__(self, message: str, before_response: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response   # not one byte of the answer arrived


class TooLargeError(UpstreamError):
    """A shadow's answer went beyond the bytes a shadow may read (``mirror.max_response``)."""

    kind = "too_large"
