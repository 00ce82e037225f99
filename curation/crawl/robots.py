"""``X-Robots-Tag`` directives that forbid using an image (noai, noimageai, ...)."""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_DISALLOWED = ("noai", "noimageai", "noindex", "noimageindex")

# Directives written "name: value"; a header starting with one of these is not UA-scoped.
_VALUED = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
_SCOPED = re.compile(r"^\s*([A-Za-z0-9_*-]+)\s*:\s*(.*)$", re.S)


def forbidding_directive(
    header_values: Iterable[str], user_agent_token: str, disallowed: Iterable[str]
) -> str | None:
    """The first disallowed directive that applies to our user agent, or None.

    A value may be scoped to one crawler (``otherbot: noai``); such a value applies only
    if the scope is our token or ``*``.
    """
    token = user_agent_token.lower()
    banned = {d.lower() for d in disallowed}
    for value in header_values:
        m = _SCOPED.match(value)
        if m and m.group(1).lower() not in _VALUED:
            scope, value = m.group(1).lower(), m.group(2)
            if scope not in (token, "*"):
                continue
        for directive in value.split(","):
            name = directive.strip().lower()
            if name in banned:
                return name
    return None
