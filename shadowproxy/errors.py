"""One exception tree for everything shadowproxy raises on purpose."""

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
    """The result store cannot be opened, read or written."""


class UpstreamError(ShadowProxyError):
    """An upstream could not be reached or answered with something that is not HTTP."""
