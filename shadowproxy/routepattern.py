"""The grammar of a route's ``match``: a path template.

``{name}`` and ``*`` match one segment, ``**`` any number of segments (none
included); every other segment matches itself. The configuration checks templates
with it when it loads; the router matches requests with it.
"""

from __future__ import annotations

import re

_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")


class RoutePattern:
    def __init__(self, template: str) -> None:
        if not template.startswith("/"):
            raise ValueError(f"a route template starts with '/', got {template!r}")
        parts = template.strip("/").split("/") if template.strip("/") else []
        regex = ""
        for part in parts:
            if part == "**":
                regex += "(?:/.*)?"
                continue
            if part == "*" or _PARAM.match(part):
                regex += "/[^/]+"
                continue
            if "{" in part or "}" in part or "*" in part:
                raise ValueError(f"bad segment {part!r} in route template {template!r}")
            regex += "/" + re.escape(part)
        self.template = template
        self._re = re.compile("^" + (regex or "/?") + "/?$" if regex else r"^/?$")

    def matches(self, path: str) -> bool:
        return self._re.match(path) is not None
